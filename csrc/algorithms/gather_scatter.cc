// Gather and scatter: direct messages between the root and every rank, the
// root posting all its receives before anyone can send; over shared memory
// (collectives_shm.cc) when AGENTCOMM_ALGO forces it.
//
// Large pieces between ranks of one host go by rendezvous (rendezvous.h).
#include <cstring>
#include <vector>

#include "algorithms/algorithms.h"
#include "algorithms/rendezvous.h"
#include "algorithms/ring_schedule.h"
#include "algorithms/shm_common.h"
#include "core/error.h"

namespace agentcomm::algorithms {

namespace {
constexpr uint64_t kPhaseGather = 6;
constexpr uint64_t kPhaseScatter = 7;
}  // namespace

void gather(Context& ctx, const GatherOptions& opts) {
  const int n = ctx.size();
  const int r = ctx.rank();
  const size_t es = ctx.elemSize();
  // Shared memory only when AGENTCOMM_ALGO asks for it: only the root knows
  // every count, so ranks cannot pick a path by size without talking first,
  // and TCP lets the non-roots send and move on (measured, 4 ranks on 2 cores:
  // 64 KiB back to back, TCP 0.4 ms vs staged slots 2.4 ms; the slots win from
  // a few MiB on: 16 MiB 7-18 ms vs 23 ms). Inside, the staged-or-CMA choice
  // follows the largest count once every rank published its own.
  if (!forcedAlgo("gather").empty())
    if (Path p = choosePath(ctx, "gather", kCmaMinBytes); p != Path::Tcp) return gatherShm(ctx, opts, p);
  const uint64_t tag = makeTag(kPhaseGather, 0, 0);
  if (r != opts.root) {
    if (!byRendezvous(ctx, opts.root, opts.count * es)) return ctx.send(opts.root, tag, opts.input, opts.count * es);
    uint64_t ack = 0;
    Rendezvous d{};
    ctx.wait(offer(ctx, opts.root, tag, opts.input, opts.count * es, d, ack));  // the root has read our input
    return;
  }
  AC_CHECK(static_cast<int>(opts.outputs.size()) == n && static_cast<int>(opts.counts.size()) == n, InvalidArgument,
           "gather: the root needs one output per rank");
  std::vector<RecvHandle> handles(static_cast<size_t>(n));
  std::vector<Rendezvous> offers(static_cast<size_t>(n));
  for (int p = 0; p < n; ++p) {
    if (p == r) continue;
    const size_t bytes = opts.counts[p] * es;
    handles[p] = byRendezvous(ctx, p, bytes) ? ctx.postRecv(p, tag, &offers[p], sizeof(Rendezvous))
                                          : ctx.postRecv(p, tag, opts.outputs[p], bytes);
  }
  AC_CHECK(opts.counts[r] == opts.count, InvalidArgument, "gather: the root's output for itself has ",
           opts.counts[r], " elements but its input has ", opts.count);
  if (opts.count > 0 && opts.outputs[r] != opts.input) std::memmove(opts.outputs[r], opts.input, opts.count * es);
  for (int k = 1; k < n; ++k) {  // in the order the scatter sends in: rank r+1 first
    const int p = (r + k) % n;
    ctx.wait(handles[p]);
    if (byRendezvous(ctx, p, opts.counts[p] * es)) take(ctx, p, offers[p], opts.outputs[p], opts.counts[p] * es, "gather");
  }
}

void scatter(Context& ctx, const ScatterOptions& opts) {
  const int n = ctx.size();
  const int r = ctx.rank();
  const size_t es = ctx.elemSize();
  if (!forcedAlgo("scatter").empty())  // as gather: shared memory only when asked for
    if (Path p = choosePath(ctx, "scatter", kCmaMinBytes); p != Path::Tcp) return scatterShm(ctx, opts, p);
  const uint64_t tag = makeTag(kPhaseScatter, 0, 0);
  if (r != opts.root) {
    if (!byRendezvous(ctx, opts.root, opts.count * es))
      return ctx.wait(ctx.postRecv(opts.root, tag, opts.output, opts.count * es));
    Rendezvous d{};
    ctx.wait(ctx.postRecv(opts.root, tag, &d, sizeof d));
    take(ctx, opts.root, d, opts.output, opts.count * es, "scatter");
    return;
  }
  AC_CHECK(static_cast<int>(opts.inputs.size()) == n && static_cast<int>(opts.counts.size()) == n, InvalidArgument,
           "scatter: the root needs one input per rank");
  AC_CHECK(opts.counts[r] == opts.count, InvalidArgument, "scatter: the root's input for itself has ", opts.counts[r],
           " elements but its output has ", opts.count);
  // Offers first (every reader starts copying at once), then the eager
  // pieces, then our own piece while the readers copy.
  std::vector<RecvHandle> acks;
  std::vector<Rendezvous> offers(static_cast<size_t>(n));
  std::vector<uint64_t> ackWords(static_cast<size_t>(n));
  for (int k = 1; k < n; ++k) {
    const int p = (r + k) % n;
    if (!byRendezvous(ctx, p, opts.counts[p] * es)) continue;
    acks.push_back(offer(ctx, p, tag, opts.inputs[p], opts.counts[p] * es, offers[p], ackWords[p]));
  }
  for (int k = 1; k < n; ++k) {
    const int p = (r + k) % n;
    if (!byRendezvous(ctx, p, opts.counts[p] * es)) ctx.send(p, tag, opts.inputs[p], opts.counts[p] * es);
  }
  if (opts.count > 0 && opts.output != opts.inputs[r]) std::memmove(opts.output, opts.inputs[r], opts.count * es);
  for (auto& h : acks) ctx.wait(h);  // every reader is done with our inputs
}

}  // namespace agentcomm::algorithms
