#pragma once
// Shared by the .cu files: error checks, launch geometry, and the hash
// streams of kernels/hash.h (the CPU kernels' own).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/error.h"
#include "kernels/hash.h"

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

using hash::seed32;

__device__ inline uint32_t magnitudeKey(float f) { return __float_as_uint(f) & 0x7fffffffu; }

}  // namespace agentcomm::kernels::cuda::detail
