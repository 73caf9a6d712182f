// Torch side of gradient compression: the backend's compressed all-reduces
// (run on the worker like every collective, so a DDP hook only enqueues and
// returns a Future) and the kernel entry points for tests and benchmarks.
#include <ATen/Functions.h>
#include <c10/util/Exception.h>

#include <chrono>

#include "algorithms/compressed.h"
#include "kernels/compress.h"
#include "torch/backend.h"

namespace agentcomm::torch_adapter {

using transport::CollectiveKind;
using transport::Deadline;

namespace {

void checkFloatBuffer(const at::Tensor& t, const char* op, const char* what) {
  checkTensor(t, op);
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, "agentcomm ", op, ": ", what,
                   " must be float32 (compress float16/bfloat16 gradients through a float32 copy), got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.is_contiguous(), "agentcomm ", op, ": ", what, " must be contiguous");
}

float* optionalBuffer(const std::optional<at::Tensor>& t, int64_t numel, const char* op, const char* what) {
  if (!t || !t->defined()) return nullptr;
  checkFloatBuffer(*t, op, what);
  TORCH_CHECK_VALUE(t->numel() == numel, "agentcomm ", op, ": ", what, " has ", t->numel(), " elements, expected ",
                    numel);
  return t->data_ptr<float>();
}

int64_t* statsBuffer(const std::optional<at::Tensor>& stats, const char* op) {
  if (!stats || !stats->defined()) return nullptr;
  TORCH_CHECK_VALUE(stats->scalar_type() == at::kLong && stats->numel() == 4 && stats->is_contiguous() &&
                        stats->device().is_cpu(),
                    "agentcomm ", op, ": stats must be a contiguous CPU int64 tensor of 4 elements");
  return stats->data_ptr<int64_t>();
}

void addStats(int64_t* out, const algorithms::CompressionStats& s) {
  if (!out) return;
  out[0] += static_cast<int64_t>(s.rawBytes);
  out[1] += static_cast<int64_t>(s.sentBytes);
  out[2] += static_cast<int64_t>(s.encodeNs);
  out[3] += static_cast<int64_t>(s.decodeNs);
}

constexpr size_t kMaxElems = (size_t{1} << 31) - 1;  // indices travel as int32 in Python

}  // namespace

c10::intrusive_ptr<c10d::Work> AgentBackend::sparseAllreduce(at::Tensor tensor, std::optional<at::Tensor> residual,
                                                             int64_t k, const std::string& method, int64_t seed,
                                                             double scale, std::optional<at::Tensor> stats) {
  const char* op = "sparse_all_reduce";
  checkFloatBuffer(tensor, op, "the tensor");
  TORCH_CHECK_VALUE(static_cast<size_t>(tensor.numel()) <= kMaxElems, "agentcomm ", op, ": at most 2^31 - 1 elements");
  TORCH_CHECK_VALUE(k >= 0, "agentcomm ", op, ": k must be >= 0, got ", k);
  algorithms::SparseMethod m;
  if (method == "topk")
    m = algorithms::SparseMethod::TopK;
  else if (method == "dgc")
    m = algorithms::SparseMethod::TopKSampled;
  else if (method == "randomk")
    m = algorithms::SparseMethod::RandomK;
  else
    TORCH_CHECK_VALUE(false, "agentcomm ", op, ": method must be 'topk', 'dgc' or 'randomk', got '", method, "'");
  float* res = optionalBuffer(residual, tensor.numel(), op, "residual");
  int64_t* st = statsBuffer(stats, op);
  const size_t count = static_cast<size_t>(tensor.numel());
  // Random-k all-reduces k values densely: every rank must agree on k.
  const uint64_t signature = m == algorithms::SparseMethod::RandomK ? count ^ (static_cast<uint64_t>(k) << 32) : count;
  std::vector<at::Tensor> keep = {tensor};
  if (residual && residual->defined()) keep.push_back(*residual);
  if (stats && stats->defined()) keep.push_back(*stats);
  return enqueueCollective(c10d::OpType::ALLREDUCE, "agentcomm:sparse_all_reduce", {tensor}, c10d::kUnsetTimeout,
                           [=, this](Deadline d) {
                             (void)keep;  // the buffers stay alive until the op ran
                             auto ctx = makeContext(CollectiveKind::CompressedAllReduce, DataType::Float32,
                                                    ReduceOp::Sum, signature, d);
                             algorithms::CompressionStats s;
                             algorithms::SparseAllReduceOptions o;
                             o.data = tensor.data_ptr<float>();
                             o.count = count;
                             o.residual = res;
                             o.k = static_cast<size_t>(k);
                             o.method = m;
                             o.seed = static_cast<uint64_t>(seed);
                             o.scale = static_cast<float>(scale);
                             o.stats = &s;
                             algorithms::sparseAllReduce(ctx, o);
                             addStats(st, s);
                           });
}

c10::intrusive_ptr<c10d::Work> AgentBackend::quantizedAllreduce(at::Tensor tensor, std::optional<at::Tensor> residual,
                                                                std::optional<at::Tensor> serverResidual, int64_t bits,
                                                                int64_t block, int64_t seed, double scale,
                                                                std::optional<at::Tensor> stats) {
  const char* op = "quantized_all_reduce";
  checkFloatBuffer(tensor, op, "the tensor");
  TORCH_CHECK_VALUE(kernels::validQuantBits(static_cast<int>(bits)), "agentcomm ", op,
                    ": bits must be 8, 4 or 1, got ", bits);
  TORCH_CHECK_VALUE(block > 0 && block % 8 == 0, "agentcomm ", op, ": block must be a positive multiple of 8, got ",
                    block);
  const size_t count = static_cast<size_t>(tensor.numel());
  float* res = optionalBuffer(residual, tensor.numel(), op, "residual");
  const auto slice = algorithms::quantSlice(count, static_cast<size_t>(block), getRank(), getSize());
  float* server = optionalBuffer(serverResidual, static_cast<int64_t>(slice.count), op, "server_residual");
  int64_t* st = statsBuffer(stats, op);
  const uint64_t signature = count ^ (static_cast<uint64_t>(bits) << 56) ^ (static_cast<uint64_t>(block) << 36);
  std::vector<at::Tensor> keep = {tensor};
  for (const auto* t : {&residual, &serverResidual, &stats})
    if (*t && (*t)->defined()) keep.push_back(**t);
  return enqueueCollective(c10d::OpType::ALLREDUCE, "agentcomm:quantized_all_reduce", {tensor}, c10d::kUnsetTimeout,
                           [=, this](Deadline d) {
                             (void)keep;
                             auto ctx = makeContext(CollectiveKind::CompressedAllReduce, DataType::Float32,
                                                    ReduceOp::Sum, signature, d);
                             algorithms::CompressionStats s;
                             algorithms::QuantizedAllReduceOptions o;
                             o.data = tensor.data_ptr<float>();
                             o.count = count;
                             o.residual = res;
                             o.serverResidual = server;
                             o.bits = static_cast<int>(bits);
                             o.block = static_cast<size_t>(block);
                             o.seed = static_cast<uint64_t>(seed);
                             o.scale = static_cast<float>(scale);
                             o.stats = &s;
                             algorithms::quantizedAllReduce(ctx, o);
                             addStats(st, s);
                           });
}

// ------------------------------------------------------------ kernel entry points

std::tuple<at::Tensor, at::Tensor> topkKernel(at::Tensor data, int64_t k, std::optional<at::Tensor> add,
                                              bool errorFeedback, bool sampled, int64_t seed) {
  checkFloatBuffer(data, "topk", "data");
  TORCH_CHECK_VALUE(static_cast<size_t>(data.numel()) <= kMaxElems, "topk: at most 2^31 - 1 elements");
  TORCH_CHECK_VALUE(k >= 0, "topk: k must be >= 0");
  const float* a = optionalBuffer(add, data.numel(), "topk", "add");
  const size_t n = static_cast<size_t>(data.numel());
  const size_t kk = std::min(static_cast<size_t>(k), n);
  at::Tensor idx = at::empty({static_cast<int64_t>(kk)}, at::kInt);
  at::Tensor val = at::empty({static_cast<int64_t>(kk)}, at::kFloat);
  auto* ip = reinterpret_cast<uint32_t*>(idx.data_ptr<int32_t>());
  const size_t got = sampled ? kernels::topkSampled(data.data_ptr<float>(), a, n, kk, ip, val.data_ptr<float>(),
                                                    errorFeedback, static_cast<uint64_t>(seed))
                             : kernels::topkExact(data.data_ptr<float>(), a, n, kk, ip, val.data_ptr<float>(),
                                                  errorFeedback);
  return {idx.narrow(0, 0, static_cast<int64_t>(got)), val.narrow(0, 0, static_cast<int64_t>(got))};
}

std::tuple<at::Tensor, at::Tensor> quantizeKernel(at::Tensor data, int64_t bits, int64_t block, int64_t seed,
                                                  std::optional<at::Tensor> add, bool errorFeedback,
                                                  std::optional<at::Tensor> codesOut,
                                                  std::optional<at::Tensor> scalesOut) {
  checkFloatBuffer(data, "quantize", "data");
  TORCH_CHECK_VALUE(kernels::validQuantBits(static_cast<int>(bits)), "quantize: bits must be 8, 4 or 1, got ", bits);
  TORCH_CHECK_VALUE(block > 0 && block % 8 == 0, "quantize: block must be a positive multiple of 8, got ", block);
  const float* a = optionalBuffer(add, data.numel(), "quantize", "add");
  const size_t n = static_cast<size_t>(data.numel());
  const auto codeBytes =
      static_cast<int64_t>(kernels::quantCodeBytes(n, static_cast<int>(bits), static_cast<size_t>(block)));
  const auto blocks = static_cast<int64_t>(kernels::quantBlocks(n, static_cast<size_t>(block)));
  // Reusable outputs (benchmarks: fresh pages would be timed as page faults).
  at::Tensor codes = codesOut && codesOut->defined() ? *codesOut : at::empty({codeBytes}, at::kByte);
  at::Tensor scales = scalesOut && scalesOut->defined() ? *scalesOut : at::empty({blocks}, at::kFloat);
  TORCH_CHECK_VALUE(codes.scalar_type() == at::kByte && codes.is_contiguous() && codes.numel() == codeBytes,
                    "quantize: codes must be a contiguous uint8 tensor of ", codeBytes, " bytes");
  TORCH_CHECK_VALUE(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.numel() == blocks,
                    "quantize: scales must be a contiguous float32 tensor of ", blocks, " elements");
  kernels::quantize(data.data_ptr<float>(), a, n, static_cast<int>(bits), static_cast<size_t>(block),
                    static_cast<uint64_t>(seed), codes.data_ptr<uint8_t>(), scales.data_ptr<float>(), errorFeedback);
  return {codes, scales};
}

void dequantizeKernel(const at::Tensor& codes, const at::Tensor& scales, at::Tensor& out, int64_t bits, int64_t block,
                      double alpha, bool accumulate) {
  checkFloatBuffer(out, "dequantize", "out");
  TORCH_CHECK_VALUE(kernels::validQuantBits(static_cast<int>(bits)), "dequantize: bits must be 8, 4 or 1");
  TORCH_CHECK_VALUE(block > 0 && block % 8 == 0, "dequantize: block must be a positive multiple of 8");
  const size_t n = static_cast<size_t>(out.numel());
  TORCH_CHECK_VALUE(codes.scalar_type() == at::kByte && codes.is_contiguous() &&
                        static_cast<size_t>(codes.numel()) ==
                            kernels::quantCodeBytes(n, static_cast<int>(bits), static_cast<size_t>(block)),
                    "dequantize: codes do not match ", n, " elements at ", bits, " bits");
  TORCH_CHECK_VALUE(scales.scalar_type() == at::kFloat && scales.is_contiguous() &&
                        static_cast<size_t>(scales.numel()) == kernels::quantBlocks(n, static_cast<size_t>(block)),
                    "dequantize: scales do not match ", n, " elements in blocks of ", block);
  kernels::dequantize(codes.data_ptr<uint8_t>(), scales.data_ptr<float>(), n, static_cast<int>(bits),
                      static_cast<size_t>(block), static_cast<float>(alpha), accumulate, out.data_ptr<float>());
}

void castKernel(const at::Tensor& src, at::Tensor& dst, double scale) {
  TORCH_CHECK_VALUE(src.is_contiguous() && dst.is_contiguous() && src.numel() == dst.numel() && src.is_cpu() &&
                        dst.is_cpu(),
                    "cast_into: contiguous CPU tensors of equal size expected");
  const auto half = [](at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; };
  const auto dtOf = [](at::ScalarType t) { return t == at::kHalf ? DataType::Float16 : DataType::BFloat16; };
  const size_t n = static_cast<size_t>(src.numel());
  if (src.scalar_type() == at::kFloat && half(dst.scalar_type()))
    kernels::castFromFloat(src.data_ptr<float>(), dst.data_ptr(), n, dtOf(dst.scalar_type()), static_cast<float>(scale));
  else if (half(src.scalar_type()) && dst.scalar_type() == at::kFloat)
    kernels::castToFloat(src.data_ptr(), dtOf(src.scalar_type()), dst.data_ptr<float>(), n, static_cast<float>(scale));
  else
    TORCH_CHECK_TYPE(false, "cast_into: float32 <-> float16/bfloat16 only, got ", src.scalar_type(), " -> ",
                     dst.scalar_type());
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

}  // namespace agentcomm::torch_adapter
