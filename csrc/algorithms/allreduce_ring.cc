// Chunked, pipelined ring all-reduce: a ring reduce-scatter whose last pass
// applies AVG / PREMUL_SUM scaling, fused with a ring all-gather that starts
// forwarding each owned chunk the moment it is final.
#include "algorithms/algorithms.h"
#include "algorithms/ring_primitives.h"

namespace agentcomm::algorithms {

void allReduceRing(Context& ctx, const AllReduceOptions& opts) {
  const int n = ctx.size();
  const int r = ctx.rank();
  auto* base = static_cast<uint8_t*>(opts.data);
  std::vector<uint8_t*> blocks;
  detail::RingBlocks rb = detail::inPlaceRingBlocks(ctx, base, opts.count, blocks);
  const FinalScale scale = allReduceScale(ctx, opts);
  // All-gather receives go straight into their final blocks. A block is only
  // overwritten after this rank has forwarded its own partial sum of it, which
  // causally precedes the owner finishing it.
  auto agHandles = detail::postAllGather(ctx, blocks, rb.counts);
  detail::ringReduceScatter(ctx, rb, scale, [&](size_t chunk, const Span&) {
    if (n > 1) detail::sendAllGatherChunk(ctx, blocks, rb.counts, 0, r, chunk);
  });
  detail::finishAllGather(ctx, blocks, rb.counts, agHandles);
}

}  // namespace agentcomm::algorithms
