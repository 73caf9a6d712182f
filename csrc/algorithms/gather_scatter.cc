// Gather and scatter: direct messages between the root and every rank, the
// root posting all its receives before anyone can send; over shared memory
// (collectives_shm.cc) when AGENTCOMM_ALGO forces it.
#include <cstring>
#include <vector>

#include "algorithms/algorithms.h"
#include "algorithms/shm_common.h"
#include "algorithms/ring_schedule.h"
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
  if (r != opts.root) {
    ctx.send(opts.root, makeTag(kPhaseGather, 0, 0), opts.input, opts.count * es);
    return;
  }
  AC_CHECK(static_cast<int>(opts.outputs.size()) == n && static_cast<int>(opts.counts.size()) == n, InvalidArgument,
           "gather: the root needs one output per rank");
  std::vector<RecvHandle> handles;
  for (int p = 0; p < n; ++p)
    if (p != r) handles.push_back(ctx.postRecv(p, makeTag(kPhaseGather, 0, 0), opts.outputs[p], opts.counts[p] * es));
  AC_CHECK(opts.counts[r] == opts.count, InvalidArgument, "gather: the root's output for itself has ",
           opts.counts[r], " elements but its input has ", opts.count);
  if (opts.count > 0 && opts.outputs[r] != opts.input) std::memmove(opts.outputs[r], opts.input, opts.count * es);
  for (auto& h : handles) ctx.wait(h);
}

void scatter(Context& ctx, const ScatterOptions& opts) {
  const int n = ctx.size();
  const int r = ctx.rank();
  const size_t es = ctx.elemSize();
  if (!forcedAlgo("scatter").empty())  // as gather: shared memory only when asked for
    if (Path p = choosePath(ctx, "scatter", kCmaMinBytes); p != Path::Tcp) return scatterShm(ctx, opts, p);
  if (r != opts.root) {
    auto h = ctx.postRecv(opts.root, makeTag(kPhaseScatter, 0, 0), opts.output, opts.count * es);
    ctx.wait(h);
    return;
  }
  AC_CHECK(static_cast<int>(opts.inputs.size()) == n && static_cast<int>(opts.counts.size()) == n, InvalidArgument,
           "scatter: the root needs one input per rank");
  AC_CHECK(opts.counts[r] == opts.count, InvalidArgument, "scatter: the root's input for itself has ", opts.counts[r],
           " elements but its output has ", opts.count);
  for (int k = 1; k < n; ++k) {
    const int p = (r + k) % n;
    ctx.send(p, makeTag(kPhaseScatter, 0, 0), opts.inputs[p], opts.counts[p] * es);
  }
  if (opts.count > 0 && opts.output != opts.inputs[r]) std::memmove(opts.output, opts.inputs[r], opts.count * es);
}

}  // namespace agentcomm::algorithms
