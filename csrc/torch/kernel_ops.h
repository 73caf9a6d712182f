#pragma once
// The kernels' entry points for Python (kernel_ops.cc): tests, microbenchmarks
// and the compression hooks run agentcomm's CPU kernels (or their CUDA twins)
// on tensors directly.
#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace agentcomm::torch_adapter {

// Kernel entry points for microbenchmarks, tests and agentcomm.kernels
// (agentcomm._C.reduce_into): out = a (op) b elementwise, on the CPU with the
// vector level `simdLevel` (auto, scalar, avx2, avx512; clamped to the CPU's),
// on a CUDA device (CUDA build) on the current stream.
void reduceInto(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const std::string& op,
                const std::string& simdLevel);
std::string simdLevelName();
// Multi-tensor pack / unpack with a fused scale (agentcomm._C.pack_into /
// unpack_from): one pass over all tensors, no Python-level loop.
void packInto(const std::vector<at::Tensor>& tensors, at::Tensor& flat, double divideBy, double multiplyBy);
void unpackFrom(const at::Tensor& flat, std::vector<at::Tensor>& tensors, double divideBy, double multiplyBy);

// Compression kernels (compression.cc), exposed for tests and microbenchmarks.
std::tuple<at::Tensor, at::Tensor> topkKernel(at::Tensor data, int64_t k, std::optional<at::Tensor> add,
                                              bool errorFeedback, bool sampled, int64_t seed);
std::tuple<at::Tensor, at::Tensor> quantizeKernel(at::Tensor data, int64_t bits, int64_t block, int64_t seed,
                                                  std::optional<at::Tensor> add, bool errorFeedback,
                                                  std::optional<at::Tensor> codesOut,
                                                  std::optional<at::Tensor> scalesOut);
void dequantizeKernel(const at::Tensor& codes, const at::Tensor& scales, at::Tensor& out, int64_t bits, int64_t block,
                      double alpha, bool accumulate);
void castKernel(const at::Tensor& src, at::Tensor& dst, double scale);
std::tuple<int64_t, int64_t> quantSliceOf(int64_t count, int64_t block, int64_t rank, int64_t size);
at::Tensor randomkIndices(int64_t seed, int64_t n, int64_t k);
// Random-k: the k values at randomkIndices(seed, n, k) (after data += add;
// error feedback zeroes them in data), and the inverse (out[idx] = val * scale).
at::Tensor randomkKernel(at::Tensor data, int64_t k, int64_t seed, std::optional<at::Tensor> add, bool errorFeedback);
void randomkScatterKernel(const at::Tensor& values, at::Tensor& out, int64_t seed, double scale);

}  // namespace agentcomm::torch_adapter
