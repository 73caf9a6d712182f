// The kernels' entry points for Python (agentcomm._C: reduce_into, pack_into,
// unpack_from, topk, quantize, ...): tests, microbenchmarks and the
// compression hooks call the CPU kernels, or their CUDA twins on the current
// stream, directly on tensors. No communication happens here.
#include "torch/kernel_ops.h"

#include <ATen/Functions.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/Exception.h>

#include <map>

#include "algorithms/compressed.h"
#include "kernels/compress.h"
#include "kernels/cpu/reduce_simd.h"
#include "kernels/cuda/kernels_cuda.h"
#include "kernels/kernels.h"
#include "torch/cuda_support.h"
#include "torch/tensor_views.h"

namespace agentcomm::torch_adapter {

namespace {
// Runs `onDevice(stream)` for CUDA tensors (with their device current), `onHost()` otherwise.
template <typename D, typename H>
auto dispatch(const at::Tensor& t, D&& onDevice, H&& onHost) {
#ifdef AGENTCOMM_WITH_CUDA
  if (t.is_cuda()) {
    c10::DeviceGuard guard(t.device());
    return onDevice(currentCudaStream(t));
  }
#else
  (void)onDevice;
#endif
  return onHost();
}
}  // namespace

void reduceInto(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const std::string& op,
                const std::string& simdLevel) {
  TORCH_CHECK_VALUE(out.device() == a.device() && a.device() == b.device(), "reduce_into: tensors on ", out.device(),
                    ", ", a.device(), " and ", b.device(), "; pass them on one device");
  TORCH_CHECK_VALUE(out.is_cpu() || (out.is_cuda() && cudaBuilt()),
                    "reduce_into: CPU tensors, or CUDA tensors in a build with CUDA, expected; got ", out.device());
  TORCH_CHECK_VALUE(out.is_contiguous() && a.is_contiguous() && b.is_contiguous(), "reduce_into: contiguous tensors only");
  TORCH_CHECK_VALUE(out.numel() == a.numel() && a.numel() == b.numel(), "reduce_into: sizes differ (", out.numel(), ", ",
                    a.numel(), ", ", b.numel(), ")");
  TORCH_CHECK_VALUE(out.scalar_type() == a.scalar_type() && a.scalar_type() == b.scalar_type(),
                    "reduce_into: dtypes differ");
  auto dt = mapDtype(a.scalar_type());
  TORCH_CHECK_TYPE(dt.has_value(), "reduce_into: unsupported dtype ", a.scalar_type());
  static const std::map<std::string, ReduceOp> ops = {
      {"sum", ReduceOp::Sum}, {"prod", ReduceOp::Product}, {"min", ReduceOp::Min}, {"max", ReduceOp::Max}};
  auto it = ops.find(op);
  TORCH_CHECK_VALUE(it != ops.end(), "reduce_into: op must be sum, prod, min or max, got '", op, "'");
  const size_t n = static_cast<size_t>(a.numel());
#ifdef AGENTCOMM_WITH_CUDA
  if (out.is_cuda()) {  // the CUDA twin: float types only, on the current stream
    TORCH_CHECK_TYPE(*dt == DataType::Float32 || *dt == DataType::Float64 || *dt == DataType::Float16 ||
                         *dt == DataType::BFloat16,
                     "reduce_into: CUDA tensors must be float32, float64, float16 or bfloat16, got ", a.scalar_type());
    c10::DeviceGuard guard(out.device());
    return kernels::cuda::reduce(out.data_ptr(), a.data_ptr(), b.data_ptr(), n, *dt, it->second, FinalScale::none(),
                                 currentCudaStream(out));
  }
#endif
  using kernels::simd::Level;
  const Level saved = kernels::simd::level();
  if (simdLevel != "auto") {
    TORCH_CHECK_VALUE(simdLevel == "scalar" || simdLevel == "avx2" || simdLevel == "avx512",
                      "reduce_into: simd must be auto, scalar, avx2 or avx512");
    kernels::simd::setLevel(simdLevel == "avx512" ? Level::Avx512 : simdLevel == "avx2" ? Level::Avx2 : Level::Scalar);
  }
  kernels::reduce(out.data_ptr(), a.data_ptr(), b.data_ptr(), n, *dt, it->second);
  kernels::simd::setLevel(saved);
}

std::string simdLevelName() { return kernels::simd::levelName(kernels::simd::level()); }

namespace {
FinalScale scaleFrom(double divideBy, double multiplyBy) {
  TORCH_CHECK_VALUE(divideBy == 1.0 || multiplyBy == 1.0, "agentcomm: give divide_by or multiply_by, not both");
  if (divideBy != 1.0) return FinalScale{FinalScale::Kind::Divide, divideBy};
  if (multiplyBy != 1.0) return FinalScale{FinalScale::Kind::Multiply, multiplyBy};
  return FinalScale::none();
}

// Checks a flat buffer against a tensor list; returns the element counts.
std::vector<size_t> multiTensorCounts(const std::vector<at::Tensor>& tensors, const at::Tensor& flat, const char* what) {
  TORCH_CHECK_VALUE((flat.is_cpu() || (flat.is_cuda() && cudaBuilt())) && flat.is_contiguous(), "agentcomm ", what,
                    ": the flat buffer must be a contiguous CPU tensor (or CUDA tensor, in a build with CUDA)");
  auto dt = mapDtype(flat.scalar_type());
  TORCH_CHECK_TYPE(dt.has_value() && *dt != DataType::Bool, "agentcomm ", what, ": unsupported dtype ", flat.scalar_type());
  std::vector<size_t> counts;
  size_t total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK_VALUE(t.device() == flat.device() && t.is_contiguous() && (t.is_cpu() || (t.is_cuda() && cudaBuilt())),
                      "agentcomm ", what, ": tensor ", i, " is not a contiguous tensor on the flat buffer's device (",
                      flat.device(), "; CPU, or CUDA in a build with CUDA)");
    TORCH_CHECK_TYPE(t.scalar_type() == flat.scalar_type(), "agentcomm ", what, ": tensor ", i, " is ",
                     t.scalar_type(), " but the flat buffer is ", flat.scalar_type());
    counts.push_back(static_cast<size_t>(t.numel()));
    total += counts.back();
  }
  TORCH_CHECK_VALUE(static_cast<size_t>(flat.numel()) >= total, "agentcomm ", what, ": the flat buffer has ",
                    flat.numel(), " elements, the tensors ", total);
  return counts;
}
}  // namespace

void packInto(const std::vector<at::Tensor>& tensors, at::Tensor& flat, double divideBy, double multiplyBy) {
  const auto counts = multiTensorCounts(tensors, flat, "pack");
  std::vector<const void*> ptrs;
  for (const auto& t : tensors) ptrs.push_back(t.data_ptr());
  const DataType dt = *mapDtype(flat.scalar_type());
#ifdef AGENTCOMM_WITH_CUDA
  if (flat.is_cuda()) {  // one launch for the whole list, on the current stream
    c10::DeviceGuard guard(flat.device());
    return kernels::cuda::packScaled(ptrs.data(), counts.data(), counts.size(), flat.data_ptr(), dt,
                                     scaleFrom(divideBy, multiplyBy), currentCudaStream(flat));
  }
#endif
  kernels::packScaled(ptrs.data(), counts.data(), counts.size(), flat.data_ptr(), dt, scaleFrom(divideBy, multiplyBy));
}

void unpackFrom(const at::Tensor& flat, std::vector<at::Tensor>& tensors, double divideBy, double multiplyBy) {
  const auto counts = multiTensorCounts(tensors, flat, "unpack");
  std::vector<void*> ptrs;
  for (auto& t : tensors) ptrs.push_back(t.data_ptr());
  const DataType dt = *mapDtype(flat.scalar_type());
#ifdef AGENTCOMM_WITH_CUDA
  if (flat.is_cuda()) {
    c10::DeviceGuard guard(flat.device());
    return kernels::cuda::unpackScaled(flat.data_ptr(), ptrs.data(), counts.data(), counts.size(), dt,
                                       scaleFrom(divideBy, multiplyBy), currentCudaStream(flat));
  }
#endif
  kernels::unpackScaled(flat.data_ptr(), ptrs.data(), counts.data(), counts.size(), dt, scaleFrom(divideBy, multiplyBy));
}

std::tuple<at::Tensor, at::Tensor> topkKernel(at::Tensor data, int64_t k, std::optional<at::Tensor> add,
                                              bool errorFeedback, bool sampled, int64_t seed) {
  checkFloatBuffer(data, "topk", "data", &data);
  TORCH_CHECK_VALUE(static_cast<size_t>(data.numel()) <= kMaxElems, "topk: at most 2^31 - 1 elements");
  TORCH_CHECK_VALUE(k >= 0, "topk: k must be >= 0");
  const float* a = optionalBuffer(add, data.numel(), "topk", "add", &data);
  const size_t n = static_cast<size_t>(data.numel());
  const size_t kk = std::min(static_cast<size_t>(k), n);
  at::Tensor idx = at::empty({static_cast<int64_t>(kk)}, data.options().dtype(at::kInt));
  at::Tensor val = at::empty({static_cast<int64_t>(kk)}, data.options());
  auto* ip = reinterpret_cast<uint32_t*>(idx.data_ptr<int32_t>());
  float* d = data.data_ptr<float>();
  float* v = val.data_ptr<float>();
  const auto s = static_cast<uint64_t>(seed);
  const size_t got = dispatch(
      data,
      [&](void* st) {
        return sampled ? kernels::cuda::topkSampled(d, a, n, kk, ip, v, errorFeedback, s, st)
                       : kernels::cuda::topkExact(d, a, n, kk, ip, v, errorFeedback, st);
      },
      [&] {
        return sampled ? kernels::topkSampled(d, a, n, kk, ip, v, errorFeedback, s)
                       : kernels::topkExact(d, a, n, kk, ip, v, errorFeedback);
      });
  return {idx.narrow(0, 0, static_cast<int64_t>(got)), val.narrow(0, 0, static_cast<int64_t>(got))};
}

std::tuple<at::Tensor, at::Tensor> quantizeKernel(at::Tensor data, int64_t bits, int64_t block, int64_t seed,
                                                  std::optional<at::Tensor> add, bool errorFeedback,
                                                  std::optional<at::Tensor> codesOut,
                                                  std::optional<at::Tensor> scalesOut) {
  checkFloatBuffer(data, "quantize", "data", &data);
  TORCH_CHECK_VALUE(kernels::validQuantBits(static_cast<int>(bits)), "quantize: bits must be 8, 4 or 1, got ", bits);
  TORCH_CHECK_VALUE(block > 0 && block % 8 == 0, "quantize: block must be a positive multiple of 8, got ", block);
  const float* a = optionalBuffer(add, data.numel(), "quantize", "add", &data);
  const size_t n = static_cast<size_t>(data.numel());
  const auto codeBytes =
      static_cast<int64_t>(kernels::quantCodeBytes(n, static_cast<int>(bits), static_cast<size_t>(block)));
  const auto blocks = static_cast<int64_t>(kernels::quantBlocks(n, static_cast<size_t>(block)));
  // Reusable outputs (benchmarks: fresh pages would be timed as page faults).
  at::Tensor codes =
      codesOut && codesOut->defined() ? *codesOut : at::empty({codeBytes}, data.options().dtype(at::kByte));
  at::Tensor scales = scalesOut && scalesOut->defined() ? *scalesOut : at::empty({blocks}, data.options());
  TORCH_CHECK_VALUE(codes.scalar_type() == at::kByte && codes.is_contiguous() && codes.numel() == codeBytes &&
                        codes.device() == data.device(),
                    "quantize: codes must be a contiguous uint8 tensor of ", codeBytes, " bytes on ", data.device());
  TORCH_CHECK_VALUE(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.numel() == blocks &&
                        scales.device() == data.device(),
                    "quantize: scales must be a contiguous float32 tensor of ", blocks, " elements on ",
                    data.device());
  const int b = static_cast<int>(bits);
  const auto blk = static_cast<size_t>(block);
  const auto s = static_cast<uint64_t>(seed);
  dispatch(
      data,
      [&](void* st) {
        kernels::cuda::quantize(data.data_ptr<float>(), a, n, b, blk, s, codes.data_ptr<uint8_t>(),
                                scales.data_ptr<float>(), errorFeedback, st);
      },
      [&] {
        kernels::quantize(data.data_ptr<float>(), a, n, b, blk, s, codes.data_ptr<uint8_t>(), scales.data_ptr<float>(),
                          errorFeedback);
      });
  return {codes, scales};
}

void dequantizeKernel(const at::Tensor& codes, const at::Tensor& scales, at::Tensor& out, int64_t bits, int64_t block,
                      double alpha, bool accumulate) {
  checkFloatBuffer(out, "dequantize", "out", &out);
  TORCH_CHECK_VALUE(kernels::validQuantBits(static_cast<int>(bits)), "dequantize: bits must be 8, 4 or 1");
  TORCH_CHECK_VALUE(block > 0 && block % 8 == 0, "dequantize: block must be a positive multiple of 8");
  const size_t n = static_cast<size_t>(out.numel());
  TORCH_CHECK_VALUE(codes.scalar_type() == at::kByte && codes.is_contiguous() && codes.device() == out.device() &&
                        static_cast<size_t>(codes.numel()) ==
                            kernels::quantCodeBytes(n, static_cast<int>(bits), static_cast<size_t>(block)),
                    "dequantize: codes do not match ", n, " elements at ", bits, " bits on ", out.device());
  TORCH_CHECK_VALUE(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.device() == out.device() &&
                        static_cast<size_t>(scales.numel()) == kernels::quantBlocks(n, static_cast<size_t>(block)),
                    "dequantize: scales do not match ", n, " elements in blocks of ", block, " on ", out.device());
  const int b = static_cast<int>(bits);
  const auto blk = static_cast<size_t>(block);
  const auto al = static_cast<float>(alpha);
  dispatch(
      out,
      [&](void* st) {
        kernels::cuda::dequantize(codes.data_ptr<uint8_t>(), scales.data_ptr<float>(), n, b, blk, al, accumulate,
                                  out.data_ptr<float>(), st);
      },
      [&] {
        kernels::dequantize(codes.data_ptr<uint8_t>(), scales.data_ptr<float>(), n, b, blk, al, accumulate,
                            out.data_ptr<float>());
      });
}

void castKernel(const at::Tensor& src, at::Tensor& dst, double scale) {
  TORCH_CHECK_VALUE(src.is_contiguous() && dst.is_contiguous() && src.numel() == dst.numel() &&
                        src.device() == dst.device() && (src.is_cpu() || (src.is_cuda() && cudaBuilt())),
                    "cast_into: contiguous tensors of equal size on one device (CPU, or CUDA in a CUDA build) "
                    "expected");
  const auto half = [](at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; };
  const auto dtOf = [](at::ScalarType t) { return t == at::kHalf ? DataType::Float16 : DataType::BFloat16; };
  const size_t n = static_cast<size_t>(src.numel());
  const auto sc = static_cast<float>(scale);
  if (src.scalar_type() == at::kFloat && half(dst.scalar_type())) {
    dispatch(
        src, [&](void* st) { kernels::cuda::castFromFloat(src.data_ptr<float>(), dst.data_ptr(), n, dtOf(dst.scalar_type()), sc, st); },
        [&] { kernels::castFromFloat(src.data_ptr<float>(), dst.data_ptr(), n, dtOf(dst.scalar_type()), sc); });
  } else if (half(src.scalar_type()) && dst.scalar_type() == at::kFloat) {
    dispatch(
        src, [&](void* st) { kernels::cuda::castToFloat(src.data_ptr(), dtOf(src.scalar_type()), dst.data_ptr<float>(), n, sc, st); },
        [&] { kernels::castToFloat(src.data_ptr(), dtOf(src.scalar_type()), dst.data_ptr<float>(), n, sc); });
  } else {
    TORCH_CHECK_TYPE(false, "cast_into: float32 <-> float16/bfloat16 only, got ", src.scalar_type(), " -> ",
                     dst.scalar_type());
  }
}

std::tuple<int64_t, int64_t> quantSliceOf(int64_t count, int64_t block, int64_t rank, int64_t size) {
  TORCH_CHECK_VALUE(count >= 0 && block > 0 && size > 0 && rank >= 0 && rank < size, "quant_slice: bad arguments");
  auto s = algorithms::quantSlice(static_cast<size_t>(count), static_cast<size_t>(block), static_cast<int>(rank),
                                  static_cast<int>(size));
  return {static_cast<int64_t>(s.offset), static_cast<int64_t>(s.count)};
}

at::Tensor randomkIndices(int64_t seed, int64_t n, int64_t k) {
  TORCH_CHECK_VALUE(n >= 0 && k >= 0 && k <= n && static_cast<size_t>(n) <= kMaxElems,
                    "randomk_indices: need 0 <= k <= n < 2^31");
  at::Tensor out = at::empty({k}, at::kLong);
  auto* p = out.data_ptr<int64_t>();
  for (int64_t j = 0; j < k; ++j)
    p[j] = kernels::randomkIndex(static_cast<uint64_t>(seed), static_cast<size_t>(n), static_cast<size_t>(k),
                                 static_cast<size_t>(j));
  return out;
}

at::Tensor randomkKernel(at::Tensor data, int64_t k, int64_t seed, std::optional<at::Tensor> add, bool errorFeedback) {
  checkFloatBuffer(data, "randomk", "data", &data);
  TORCH_CHECK_VALUE(static_cast<size_t>(data.numel()) <= kMaxElems, "randomk: at most 2^31 - 1 elements");
  TORCH_CHECK_VALUE(k >= 0 && k <= data.numel(), "randomk: need 0 <= k <= ", data.numel(), " (the data's size), got ",
                    k);
  const float* a = optionalBuffer(add, data.numel(), "randomk", "add", &data);
  const size_t n = static_cast<size_t>(data.numel()), kk = static_cast<size_t>(k);
  at::Tensor val = at::empty({k}, data.options());
  float* d = data.data_ptr<float>();
  float* v = val.data_ptr<float>();
  const auto s = static_cast<uint64_t>(seed);
  dispatch(
      data, [&](void* st) { kernels::cuda::randomkGather(d, a, n, kk, s, v, errorFeedback, st); },
      [&] { kernels::randomkGather(d, a, n, kk, s, v, errorFeedback); });
  return val;
}

void randomkScatterKernel(const at::Tensor& values, at::Tensor& out, int64_t seed, double scale) {
  checkFloatBuffer(out, "randomk_scatter", "out", &out);
  checkFloatBuffer(values, "randomk_scatter", "values", &out);
  TORCH_CHECK_VALUE(static_cast<size_t>(out.numel()) <= kMaxElems, "randomk_scatter: at most 2^31 - 1 elements");
  TORCH_CHECK_VALUE(values.numel() <= out.numel(), "randomk_scatter: ", values.numel(),
                    " values do not fit an output of ", out.numel(), " elements");
  const size_t n = static_cast<size_t>(out.numel()), kk = static_cast<size_t>(values.numel());
  const float* v = values.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const auto s = static_cast<uint64_t>(seed);
  const auto sc = static_cast<float>(scale);
  dispatch(
      out, [&](void* st) { kernels::cuda::randomkScatter(v, n, kk, s, sc, o, st); },
      [&] { kernels::randomkScatter(v, n, kk, s, sc, o); });
}

}  // namespace agentcomm::torch_adapter
