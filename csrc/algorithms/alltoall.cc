// All-to-all with arbitrary splits: post every receive into its final place,
// copy the local block, then send to r+1, r+2, ... so no two ranks hammer the
// same peer at once.
#include <cstring>
#include <vector>

#include "algorithms/algorithms.h"
#include "algorithms/rendezvous.h"
#include "algorithms/shm_common.h"
#include "algorithms/ring_schedule.h"
#include "core/error.h"

namespace agentcomm::algorithms {

namespace {
constexpr uint64_t kPhaseAllToAll = 8;
}

void allToAll(Context& ctx, const AllToAllOptions& opts) {
  const int n = ctx.size();
  const int r = ctx.rank();
  const size_t es = ctx.elemSize();
  AC_CHECK(static_cast<int>(opts.inCounts.size()) == n && static_cast<int>(opts.outCounts.size()) == n &&
               static_cast<int>(opts.inOffsets.size()) == n && static_cast<int>(opts.outOffsets.size()) == n,
           InvalidArgument, "all_to_all: need one split per rank");
  AC_CHECK(opts.inCounts[r] == opts.outCounts[r], InvalidArgument, "all_to_all: rank ", r, " sends ",
           opts.inCounts[r], " elements to itself but expects ", opts.outCounts[r]);
  // Ranks' splits differ, so the path must not depend on this rank's byte
  // count (ranks would pick different algorithms): CMA whenever it exists
  // (one copy, no rounds), otherwise the slots.
  if (Path p = choosePath(ctx, "all_to_all", kCmaMinBytes); p != Path::Tcp) return allToAllShm(ctx, opts, p);
  // TCP (a group over several hosts, or shared memory off): large blocks
  // between ranks of one host go by rendezvous (rendezvous.h), the rest as
  // messages. All offers go out before anyone waits, so nobody waits on a
  // peer that waits on it.
  auto* out = static_cast<uint8_t*>(opts.output);
  auto* in = static_cast<const uint8_t*>(opts.input);
  const uint64_t tag = makeTag(kPhaseAllToAll, 0, 0);
  std::vector<RecvHandle> handles(static_cast<size_t>(n)), acks;
  std::vector<Rendezvous> offersIn(static_cast<size_t>(n)), offersOut(static_cast<size_t>(n));
  std::vector<uint64_t> ackWords(static_cast<size_t>(n));
  for (int k = 1; k < n; ++k) {
    const int p = (r - k + n) % n;
    const size_t bytes = opts.outCounts[p] * es;
    handles[p] = byRendezvous(ctx, p, bytes) ? ctx.postRecv(p, tag, &offersIn[p], sizeof(Rendezvous))
                                             : ctx.postRecv(p, tag, out + opts.outOffsets[p] * es, bytes);
  }
  for (int k = 1; k < n; ++k) {
    const int p = (r + k) % n;
    const size_t bytes = opts.inCounts[p] * es;
    if (!byRendezvous(ctx, p, bytes)) continue;
    acks.push_back(offer(ctx, p, tag, in + opts.inOffsets[p] * es, bytes, offersOut[p], ackWords[p]));
  }
  if (opts.inCounts[r] > 0)
    std::memmove(out + opts.outOffsets[r] * es, in + opts.inOffsets[r] * es, opts.inCounts[r] * es);
  for (int k = 1; k < n; ++k) {
    const int p = (r + k) % n;
    if (!byRendezvous(ctx, p, opts.inCounts[p] * es)) ctx.send(p, tag, in + opts.inOffsets[p] * es, opts.inCounts[p] * es);
  }
  for (int k = 1; k < n; ++k) {
    const int p = (r - k + n) % n;
    ctx.wait(handles[p]);
    const size_t bytes = opts.outCounts[p] * es;
    if (byRendezvous(ctx, p, bytes)) take(ctx, p, offersIn[p], out + opts.outOffsets[p] * es, bytes, "all_to_all");
  }
  for (auto& h : acks) ctx.wait(h);  // every reader is done with our input
}

}  // namespace agentcomm::algorithms
