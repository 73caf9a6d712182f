#pragma once
// The two ring phases shared by all-reduce, reduce, reduce-scatter and
// all-gather. Internal to csrc/algorithms.
#include <functional>
#include <vector>

#include "algorithms/context.h"
#include "algorithms/ring_schedule.h"

namespace agentcomm::algorithms::detail {

constexpr uint64_t kPhaseReduceScatter = 1;
constexpr uint64_t kPhaseAllGather = 2;

struct RingBlocks {
  std::vector<size_t> counts;           // elements per block
  std::vector<const uint8_t*> inputs;   // this rank's contribution to each block
  // Where the partial sum of block k is kept before being forwarded; nullptr:
  // reduce in the receive buffer itself. Exactly equal to inputs[k] for an
  // in-place all-reduce.
  std::vector<uint8_t*> partials;
  uint8_t* output = nullptr;            // final result of block rank
};

// The blocks of an in-place ring over `count` elements at `base` (rank k owns
// blockSpan k): each block is its own input and partial sum; the output is
// this rank's block. blocks[k] points at block k.
RingBlocks inPlaceRingBlocks(const Context& ctx, uint8_t* base, size_t count, std::vector<uint8_t*>& blocks);

// Ring reduce-scatter. The final scale is fused into the last pass.
// onOwnChunk(chunk, span) runs as soon as a chunk of the owned block is final,
// so a following all-gather can start forwarding it at once.
void ringReduceScatter(const Context& ctx, const RingBlocks& blocks, FinalScale scale,
                       const std::function<void(size_t, const Span&)>& onOwnChunk);

// Ring all-gather into blocks[k] (counts[k] elements). Receives are posted by
// postAllGather (call it before anything can send to us); this rank's own
// block must be sent with sendAllGatherChunk(step 0) for each chunk.
std::vector<std::vector<RecvHandle>> postAllGather(const Context& ctx, const std::vector<uint8_t*>& blocks,
                                                   const std::vector<size_t>& counts);
void sendAllGatherChunk(const Context& ctx, const std::vector<uint8_t*>& blocks, const std::vector<size_t>& counts,
                        int step, int block, size_t chunk);
void finishAllGather(const Context& ctx, const std::vector<uint8_t*>& blocks, const std::vector<size_t>& counts,
                     std::vector<std::vector<RecvHandle>>& handles);

}  // namespace agentcomm::algorithms::detail
