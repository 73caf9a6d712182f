// All-to-all with arbitrary splits: post every receive into its final place,
// copy the local block, then send to r+1, r+2, ... so no two ranks hammer the
// same peer at once.
#include <cstring>
#include <vector>

#include "algorithms/algorithms.h"
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
  auto* out = static_cast<uint8_t*>(opts.output);
  auto* in = static_cast<const uint8_t*>(opts.input);
  std::vector<RecvHandle> handles;
  for (int k = 1; k < n; ++k) {
    const int p = (r - k + n) % n;
    handles.push_back(ctx.postRecv(p, makeTag(kPhaseAllToAll, 0, 0), out + opts.outOffsets[p] * es,
                                   opts.outCounts[p] * es));
  }
  if (opts.inCounts[r] > 0)
    std::memmove(out + opts.outOffsets[r] * es, in + opts.inOffsets[r] * es, opts.inCounts[r] * es);
  for (int k = 1; k < n; ++k) {
    const int p = (r + k) % n;
    ctx.send(p, makeTag(kPhaseAllToAll, 0, 0), in + opts.inOffsets[p] * es, opts.inCounts[p] * es);
  }
  for (auto& h : handles) ctx.wait(h);
}

}  // namespace agentcomm::algorithms
