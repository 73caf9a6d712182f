#pragma once
// Gradient-compression kernels (raw pointers, float32 gradients), the CPU
// side of agentcomm's compressed collectives; CUDA twins implement the same
// contracts.
//
// Error feedback is fused into every encoder: callers pass the residual as
// `data` and the fresh gradient as `add`; one pass computes
// data += add, encodes data, and (with error feedback) leaves in `data` what
// was not sent, so that sent + data == old data + add (mass is conserved).
// Without error feedback, pass the gradient itself as `data` and add = null.
#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace agentcomm::kernels {

// ---- Sparsification -------------------------------------------------------

// Exact top-k by magnitude (radix selection on the float bits: two passes over
// the data, no sort). Writes min(k, n) pairs with indices ascending; among
// equal magnitudes at the boundary the lower indices win, so the result equals
// a stable sort-based top-k. NaNs rank above +-inf. Returns the count.
// With add: data += add first (fused into the first pass). With
// zeroSelected: data[idx] = 0 afterwards (error feedback: the residual keeps
// what was not sent). n must be < 2^32.
size_t topkExact(float* data, const float* add, size_t n, size_t k, uint32_t* idx, float* val, bool zeroSelected);

// DGC's sampled top-k: the k-th magnitude is estimated from a stratified
// random sample of the data, one pass collects everything above the estimate,
// and an exact selection among those trims to k. When the estimate misses
// (fewer than k above it, or too many to hold) it falls back to topkExact, so
// the result always equals topkExact's; the saving is one pass over the data.
size_t topkSampled(float* data, const float* add, size_t n, size_t k, uint32_t* idx, float* val, bool zeroSelected,
                   uint64_t seed);

// Random-k with a seed shared by all ranks: k strata of [0, n), one index drawn
// in each, so indices are distinct, ascending and never need to be sent.
uint32_t randomkIndex(uint64_t seed, size_t n, size_t k, size_t j);
// val[j] = data[randomkIndex(j)] for j < k (after data += add; zeroSelected as above).
void randomkGather(float* data, const float* add, size_t n, size_t k, uint64_t seed, float* val, bool zeroSelected);
// out[randomkIndex(j)] = val[j] * scale; other elements of out are left alone.
void randomkScatter(const float* val, size_t n, size_t k, uint64_t seed, float scale, float* out);

// ---- Quantization ---------------------------------------------------------
// Blocks of `block` elements share one float scale; a partial last block is
// allowed. bits:
//   8, 4: QSGD-style stochastic rounding, unbiased: with s = max|x| in the
//         block and L = 127 (8) or 7 (4), q = floor(x / s * L + u), u ~ U[0,1),
//         decoded as q * s / L. 4-bit codes are packed two per byte.
//   1:    scaled sign: s = mean|x| in the block, decoded as +-s (biased; meant
//         for error feedback, as in 1-bit Adam).
// `block` must be a positive multiple of 8. The random stream is a hash of
// (seed, element index): encoding is deterministic for a given seed.
bool validQuantBits(int bits);
// Bytes of codes for `count` elements (blocks padded to whole bytes).
size_t quantCodeBytes(size_t count, int bits, size_t block);
inline size_t quantBlocks(size_t count, size_t block) { return (count + block - 1) / block; }

// Encodes data (after data += add) into codes/scales. With errorFeedback,
// data -= decode(codes) in the same pass.
void quantize(float* data, const float* add, size_t n, int bits, size_t block, uint64_t seed, uint8_t* codes,
              float* scales, bool errorFeedback);
// out = decode * alpha, or out += decode * alpha when accumulate.
void dequantize(const uint8_t* codes, const float* scales, size_t n, int bits, size_t block, float alpha,
                bool accumulate, float* out);

// ---- Casts ----------------------------------------------------------------
// dst (float16 / bfloat16) = src * scale, round to nearest even: the
// pre-divide by the world size is fused in so sums cannot overflow float16.
void castFromFloat(const float* src, void* dst, size_t n, DataType dt, float scale);
// dst (float32) = src (float16 / bfloat16) * scale.
void castToFloat(const void* src, DataType dt, float* dst, size_t n, float scale);

}  // namespace agentcomm::kernels
