#include "algorithms/ring_primitives.h"

#include <algorithm>
#include <cstring>

#include "kernels/kernels.h"

namespace agentcomm::algorithms::detail {

RingBlocks inPlaceRingBlocks(const Context& ctx, uint8_t* base, size_t count, std::vector<uint8_t*>& blocks) {
  const int n = ctx.size();
  RingBlocks rb;
  blocks.assign(static_cast<size_t>(n), nullptr);
  for (int k = 0; k < n; ++k) {
    Span sp = blockSpan(count, n, k);
    rb.counts.push_back(sp.count);
    blocks[k] = base + sp.offset * ctx.elemSize();
    rb.inputs.push_back(blocks[k]);
    rb.partials.push_back(blocks[k]);  // in place
  }
  rb.output = blocks[ctx.rank()];
  return rb;
}

void ringReduceScatter(const Context& ctx, const RingBlocks& b, FinalScale scale,
                       const std::function<void(size_t, const Span&)>& onOwnChunk) {
  const int n = ctx.size();
  const int r = ctx.rank();
  const size_t es = ctx.elemSize();
  const size_t ce = ctx.chunkElems();
  const ReduceOp op = combiningOp(ctx.op);
  if (n == 1) {
    kernels::applyScale(b.output, b.inputs[0], b.counts[0], ctx.dtype, scale);
    for (size_t c = 0; c < numChunks(b.counts[0], ce); ++c) onOwnChunk(c, chunkSpan(b.counts[0], ce, c));
    return;
  }
  const int left = (r - 1 + n) % n;
  const int right = (r + 1) % n;
  const size_t maxCount = *std::max_element(b.counts.begin(), b.counts.end());
  // Two receive buffers, alternating by step: step s+1's receives are posted
  // while step s's chunks are still being reduced. Buffer (s+1)%2 is free then
  // because every chunk of step s-1 was reduced and forwarded (blocking send)
  // before step s began.
  uint8_t* tmp[2] = {Context::scratch(0, maxCount * es), Context::scratch(1, maxCount * es)};
  std::vector<RecvHandle> handles[2];

  auto post = [&](int s) {
    const int rb = reduceScatterStep(r, n, s).recvBlock;
    auto& hs = handles[s % 2];
    hs.clear();
    for (size_t c = 0; c < numChunks(b.counts[rb], ce); ++c) {
      Span sp = chunkSpan(b.counts[rb], ce, c);
      hs.push_back(ctx.postRecv(left, makeTag(kPhaseReduceScatter, s, c), tmp[s % 2] + sp.offset * es,
                                sp.count * es));
    }
  };

  post(0);
  {
    // Step 0: our raw contribution to block r-1 starts its trip around the ring.
    const int sb = reduceScatterStep(r, n, 0).sendBlock;
    for (size_t c = 0; c < numChunks(b.counts[sb], ce); ++c) {
      Span sp = chunkSpan(b.counts[sb], ce, c);
      ctx.send(right, makeTag(kPhaseReduceScatter, 0, c), b.inputs[sb] + sp.offset * es, sp.count * es);
    }
  }
  for (int s = 0; s < n - 1; ++s) {
    const bool last = s == n - 2;
    const int rb = reduceScatterStep(r, n, s).recvBlock;
    if (!last) post(s + 1);
    for (size_t c = 0; c < numChunks(b.counts[rb], ce); ++c) {
      Span sp = chunkSpan(b.counts[rb], ce, c);
      ctx.wait(handles[s % 2][c]);
      uint8_t* incoming = tmp[s % 2] + sp.offset * es;
      uint8_t* dst = last ? b.output + sp.offset * es
                          : (b.partials[rb] != nullptr ? b.partials[rb] + sp.offset * es : incoming);
      kernels::reduce(dst, b.inputs[rb] + sp.offset * es, incoming, sp.count, ctx.dtype, op,
                      last ? scale : FinalScale::none());
      if (!last) {
        // Forward the partial sum at once: step s+1 sends exactly the block step s received.
        ctx.send(right, makeTag(kPhaseReduceScatter, s + 1, c), dst, sp.count * es);
      } else {
        onOwnChunk(c, sp);
      }
    }
  }
}

std::vector<std::vector<RecvHandle>> postAllGather(const Context& ctx, const std::vector<uint8_t*>& blocks,
                                                   const std::vector<size_t>& counts) {
  const int n = ctx.size();
  const int r = ctx.rank();
  const size_t es = ctx.elemSize();
  const size_t ce = ctx.chunkElems();
  const int left = (r - 1 + n) % n;
  std::vector<std::vector<RecvHandle>> handles(n > 1 ? n - 1 : 0);
  // Every step receives a different block, so all receives can be posted up
  // front, straight into their final place.
  for (int s = 0; s + 1 < n; ++s) {
    const int rb = allGatherStep(r, n, s).recvBlock;
    for (size_t c = 0; c < numChunks(counts[rb], ce); ++c) {
      Span sp = chunkSpan(counts[rb], ce, c);
      handles[s].push_back(ctx.postRecv(left, makeTag(kPhaseAllGather, s, c), blocks[rb] + sp.offset * es,
                                        sp.count * es));
    }
  }
  return handles;
}

void sendAllGatherChunk(const Context& ctx, const std::vector<uint8_t*>& blocks, const std::vector<size_t>& counts,
                        int step, int block, size_t chunk) {
  const size_t es = ctx.elemSize();
  Span sp = chunkSpan(counts[block], ctx.chunkElems(), chunk);
  ctx.send((ctx.rank() + 1) % ctx.size(), makeTag(kPhaseAllGather, step, chunk), blocks[block] + sp.offset * es,
           sp.count * es);
}

void finishAllGather(const Context& ctx, const std::vector<uint8_t*>& blocks, const std::vector<size_t>& counts,
                     std::vector<std::vector<RecvHandle>>& handles) {
  const int n = ctx.size();
  const int r = ctx.rank();
  for (int s = 0; s + 1 < n; ++s) {
    const int rb = allGatherStep(r, n, s).recvBlock;
    for (size_t c = 0; c < handles[s].size(); ++c) {
      ctx.wait(handles[s][c]);
      if (s + 1 < n - 1) sendAllGatherChunk(ctx, blocks, counts, s + 1, rb, c);
    }
  }
}

}  // namespace agentcomm::algorithms::detail
