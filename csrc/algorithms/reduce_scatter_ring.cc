// Ring reduce-scatter of blocks that may differ in size; inputs stay intact
// (partial sums live in the receive buffers). Small totals among many ranks run
// as a recursive-doubling all-reduce of the packed blocks (log2 n steps of the
// whole vector instead of n-1 ring steps), each rank keeping its block.
#include <cstring>

#include "algorithms/algorithms.h"
#include "algorithms/shm_common.h"
#include "algorithms/ring_primitives.h"
#include "core/error.h"

namespace agentcomm::algorithms {

namespace {
void reduceScatterByAllReduce(Context& ctx, const ReduceScatterOptions& opts, size_t total) {
  const size_t es = ctx.elemSize();
  uint8_t* packed = Context::scratch(1, total * es);  // slot 0 is recursive doubling's
  size_t offset = 0, mine = 0;
  for (int k = 0; k < ctx.size(); ++k) {
    if (k == ctx.rank()) mine = offset;
    if (opts.counts[k] > 0) std::memcpy(packed + offset, opts.inputs[k], opts.counts[k] * es);
    offset += opts.counts[k] * es;
  }
  AllReduceOptions ar;
  ar.data = packed;
  ar.count = total;
  ar.premulFactor = opts.premulFactor;
  ar.scaleWorld = opts.scaleWorld;
  allReduceRecursiveDoubling(ctx, ar);
  if (opts.counts[ctx.rank()] > 0) std::memcpy(opts.output, packed + mine, opts.counts[ctx.rank()] * es);
}
}  // namespace

void reduceScatter(Context& ctx, const ReduceScatterOptions& opts) {
  const int n = ctx.size();
  AC_CHECK(static_cast<int>(opts.inputs.size()) == n && static_cast<int>(opts.counts.size()) == n, InvalidArgument,
           "reduce_scatter: need one input block per rank");
  size_t total = 0;
  for (size_t c : opts.counts) total += c;
  if (runsHierarchical(ctx, "reduce_scatter", total * ctx.elemSize(), true)) return reduceScatterHierarchical(ctx, opts);
  if (Path p = choosePath(ctx, "reduce_scatter", total * ctx.elemSize()); p != Path::Tcp) {
    return reduceScatterShm(ctx, opts, p);
  }
  if (logStepApplies(total * ctx.elemSize(), n)) return reduceScatterByAllReduce(ctx, opts, total);  // whole input
  detail::RingBlocks rb;
  rb.counts = opts.counts;
  for (int k = 0; k < n; ++k) rb.inputs.push_back(static_cast<const uint8_t*>(opts.inputs[k]));
  rb.partials.assign(n, nullptr);
  rb.output = static_cast<uint8_t*>(opts.output);
  detail::ringReduceScatter(ctx, rb, finalScaleFor(ctx.op, opts.scaleWorld > 0 ? opts.scaleWorld : n, opts.premulFactor), [](size_t, const Span&) {});
}

}  // namespace agentcomm::algorithms
