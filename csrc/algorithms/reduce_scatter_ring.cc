// Ring reduce-scatter of blocks that may differ in size; inputs stay intact
// (partial sums live in the receive buffers).
#include "algorithms/algorithms.h"
#include "algorithms/shm_common.h"
#include "algorithms/ring_primitives.h"
#include "core/error.h"

namespace agentcomm::algorithms {

void reduceScatter(Context& ctx, const ReduceScatterOptions& opts) {
  const int n = ctx.size();
  AC_CHECK(static_cast<int>(opts.inputs.size()) == n && static_cast<int>(opts.counts.size()) == n, InvalidArgument,
           "reduce_scatter: need one input block per rank");
  size_t total = 0;
  for (size_t c : opts.counts) total += c;
  if (Path p = choosePath(ctx, "reduce_scatter", total * ctx.elemSize()); p != Path::Tcp) {
    return reduceScatterShm(ctx, opts, p);
  }
  detail::RingBlocks rb;
  rb.counts = opts.counts;
  for (int k = 0; k < n; ++k) rb.inputs.push_back(static_cast<const uint8_t*>(opts.inputs[k]));
  rb.partials.assign(n, nullptr);
  rb.output = static_cast<uint8_t*>(opts.output);
  detail::ringReduceScatter(ctx, rb, finalScaleFor(ctx.op, n, opts.premulFactor), [](size_t, const Span&) {});
}

}  // namespace agentcomm::algorithms
