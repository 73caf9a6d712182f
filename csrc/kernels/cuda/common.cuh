#pragma once
// Shared by the .cu files: error checks, launch geometry, the hash streams
// (bit-identical to the CPU's in kernels/cpu/compress.cc), 16-bit float I/O.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/error.h"

#define AC_CUDA_CHECK(expr)                                                                                    \
  do {                                                                                                         \
    cudaError_t err_ = (expr);                                                                                 \
    if (err_ != cudaSuccess)                                                                                   \
      throw ::agentcomm::Error(::agentcomm::strCat("CUDA: ", #expr, ": ", cudaGetErrorString(err_)));          \
  } while (0)

// After a launch: configuration errors surface here, not at the next call.
#define AC_CUDA_LAUNCHED() AC_CUDA_CHECK(cudaGetLastError())

namespace agentcomm::kernels::cuda::detail {

inline cudaStream_t asStream(void* s) { return static_cast<cudaStream_t>(s); }

constexpr int kThreads = 256;

// Enough blocks to fill the device for a grid-stride loop over `work` items.
inline unsigned gridFor(size_t work, int threads = kThreads) {
  const size_t blocks = (work + threads - 1) / threads;
  const size_t cap = 65535;  // grid-stride loops cover the rest
  return static_cast<unsigned>(blocks == 0 ? 1 : (blocks < cap ? blocks : cap));
}

__host__ __device__ inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

__host__ __device__ inline uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

inline uint32_t seed32(uint64_t seed) { return static_cast<uint32_t>(mix64(seed ^ 0x9e3779b97f4a7c15ull)); }

__device__ inline uint32_t magnitudeKey(float f) { return __float_as_uint(f) & 0x7fffffffu; }

// randomkIndex of kernels/cpu/compress.cc.
__host__ __device__ inline uint32_t randomkIndex(uint64_t seed, uint64_t n, uint64_t k, uint64_t j) {
  const uint64_t lo = j * n / k;
  const uint64_t hi = (j + 1) * n / k;
  const uint64_t r = mix64(seed * 0x9e3779b97f4a7c15ull + j + 1);
  return static_cast<uint32_t>(lo + (((r >> 32) * (hi - lo)) >> 32));
}

}  // namespace agentcomm::kernels::cuda::detail
