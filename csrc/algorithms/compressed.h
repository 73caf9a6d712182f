#pragma once
// Compressed all-reduces of float32 gradients (gradient compression for DDP
// comm hooks). Each one encodes on the calling thread (error feedback fused,
// kernels/compress.h), moves only the compressed form over ctx.transport, and
// leaves the dense reduced result in `data` (in place). Every rank must call
// with the same count (and the same k for random-k, the same bits/block for
// quantization): these go into ctx.signature, so a mismatch is reported as a
// collective mismatch instead of corrupting data.
//
// Byte counts and cost model: docs/algorithms.md, "Compressed all-reduce".
#include <cstddef>
#include <cstdint>

#include "algorithms/context.h"

namespace agentcomm::algorithms {

// What one call did, for the hooks' accounting (added to, never reset).
struct CompressionStats {
  uint64_t rawBytes = 0;   // the dense gradient's bytes (count * 4)
  uint64_t sentBytes = 0;  // bytes this rank put on the wire (payloads + size headers)
  uint64_t encodeNs = 0;   // selection / quantization (incl. error feedback)
  uint64_t decodeNs = 0;   // scatter-add, dequantize, re-encode on the owner, final decode
};

enum class SparseMethod { TopK, TopKSampled, RandomK };

struct SparseAllReduceOptions {
  float* data = nullptr;      // in: this rank's gradient; out: the reduced dense result
  size_t count = 0;
  float* residual = nullptr;  // error feedback (count elements), or null for none
  size_t k = 0;               // elements each rank sends (top-k may differ per rank; random-k may not)
  SparseMethod method = SparseMethod::TopK;
  uint64_t seed = 0;          // random-k: equal on every rank (it picks the indices); sampled top-k: any
  float scale = 1.0f;         // multiplies the result (1 / world size for an average)
  // Owners send their reduced slice dense once its non-zeros would cost more
  // than this fraction of the dense slice's bytes.
  double denseSwitch = 1.0;
  CompressionStats* stats = nullptr;
  // Encoded elsewhere (a GPU selects, the host moves and sums the pairs):
  // set encodedVal (and, for top-k, encodedIdx: encodedCount pairs, indices
  // ascending, each < count) in place of step 1; residual must be null and
  // data is output only (its input is not read). Random-k: encodedVal holds
  // the k gathered values; they are all-reduced (summed) in place and the
  // caller scatters them (data is not touched).
  const uint32_t* encodedIdx = nullptr;
  float* encodedVal = nullptr;
  size_t encodedCount = 0;
};
// Top-k: a sparse reduce-scatter (each (index, value) pair goes to the rank
// owning its index range; the owner scatter-adds them, in rank order) then an
// all-gather of the reduced slices, each sent sparse or dense, whichever is
// smaller. No rank ever holds more than its own slice plus what was sent to
// it: no world-size-times-k all-gather blow-up. Random-k: the indices follow
// from the shared seed, so the k values are all-reduced densely.
void sparseAllReduce(Context& ctx, const SparseAllReduceOptions& opts);

struct QuantizedAllReduceOptions {
  float* data = nullptr;            // in: gradient; out: reduced result
  size_t count = 0;
  float* residual = nullptr;        // worker error feedback (count elements) or null
  float* serverResidual = nullptr;  // the second round's (server-side) error feedback: quantSlice(...).count elements, or null
  int bits = 8;                     // 8, 4 (stochastic, unbiased) or 1 (scaled sign)
  size_t block = 256;               // elements per scale; a multiple of 8
  uint64_t seed = 0;
  float scale = 1.0f;               // applied to the sum before the second quantization
  CompressionStats* stats = nullptr;
  // Encoded and decoded elsewhere (a GPU quantizes; the host moves the
  // codes and reduces its slice): encodedCodes/encodedScales hold step 1's
  // output for the whole gradient (residual must be null); the all-gathered
  // second-round codes and scales land in decodedCodes/decodedScales (the
  // same layout, whole gradient) for the caller to dequantize, and data is
  // not used. serverResidual still applies (a host buffer).
  const uint8_t* encodedCodes = nullptr;
  const float* encodedScales = nullptr;
  uint8_t* decodedCodes = nullptr;
  float* decodedScales = nullptr;
};
// Compressed reduce-scatter + all-gather (DeepSpeed's compressed allreduce):
// each rank quantizes its gradient, sends block-aligned slice p to rank p,
// rank p dequantizes and sums its slice from every rank (rank order),
// re-quantizes it (with its own error feedback), and all ranks all-gather
// and decode the quantized slices. Per rank 2 (n-1)/n * S * bits/32 bytes
// plus one float per block, versus 2 (n-1)/n * S for a dense ring.
void quantizedAllReduce(Context& ctx, const QuantizedAllReduceOptions& opts);

struct Slice {
  size_t offset = 0;
  size_t count = 0;
};
// The block-aligned slice rank `rank` owns (its server residual's size).
Slice quantSlice(size_t count, size_t block, int rank, int size);

}  // namespace agentcomm::algorithms
