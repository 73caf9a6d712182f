// Torch side of gradient compression: the backend's compressed all-reduces
// (run on the worker like every collective, so a DDP hook only enqueues and
// returns a Future). The kernels' Python entry points are in kernel_ops.cc.
#include <ATen/Functions.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>

#include "algorithms/compressed.h"
#include "core/env.h"
#include "kernels/compress.h"
#include "kernels/cuda/kernels_cuda.h"
#include "torch/backend.h"

namespace agentcomm::torch_adapter {

using algorithms::CollectiveKind;
using transport::Deadline;

namespace {

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

// With AGENTCOMM_CUDA_ENCODE=0, CUDA tensors given to a compressed all-reduce
// run on pinned host mirrors staged on the backend's stream (the residuals
// are outputs too); by default they are encoded on the device (below). Replaces
// the CUDA tensors by their mirrors and returns the stage, or null when none
// is on CUDA (cuda() is then never asked for: CPU builds have none).
StagePtr stageOnHost(AgentBackend& backend, at::Tensor& tensor,
                                       std::initializer_list<std::optional<at::Tensor>*> residuals, const char* op) {
  std::vector<at::Tensor*> ptrs = {&tensor};
  for (auto* r : residuals)
    if (*r && (*r)->defined()) ptrs.push_back(&**r);
  if (std::none_of(ptrs.begin(), ptrs.end(), [](const at::Tensor* t) { return t->is_cuda(); })) return nullptr;
  auto stage = backend.cuda().stage(ptrs, op);
  for (size_t i = 1; i < ptrs.size(); ++i) stage->keepOutput(*ptrs[i]);
  return stage;
}

}  // namespace

c10::intrusive_ptr<c10d::Work> AgentBackend::sparseAllreduce(at::Tensor tensor, std::optional<at::Tensor> residual,
                                                             int64_t k, const std::string& method, int64_t seed,
                                                             double scale, std::optional<at::Tensor> stats) {
  const char* op = "sparse_all_reduce";
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
#ifdef AGENTCOMM_WITH_CUDA
  if (tensor.is_cuda() && envFlag("AGENTCOMM_CUDA_ENCODE", true))
    return sparseAllreduceOnDevice(tensor, residual, k, m, seed, scale, stats);
#endif
  StagePtr stage = stageOnHost(*this, tensor, {&residual}, op);
  return sparseAllreduceOnHost(tensor, residual, k, m, seed, scale, stats, stage);
}

c10::intrusive_ptr<c10d::Work> AgentBackend::sparseAllreduceOnHost(at::Tensor tensor,
                                                                   std::optional<at::Tensor> residual, int64_t k,
                                                                   algorithms::SparseMethod m, int64_t seed,
                                                                   double scale, std::optional<at::Tensor> stats,
                                                                   const StagePtr& stage) {
  const char* op = "sparse_all_reduce";
  checkFloatBuffer(tensor, op, "the tensor");
  TORCH_CHECK_VALUE(static_cast<size_t>(tensor.numel()) <= kMaxElems, "agentcomm ", op, ": at most 2^31 - 1 elements");
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
                             auto ctx = comm_->context(CollectiveKind::CompressedAllReduce, DataType::Float32, ReduceOp::Sum, signature, d);
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
                           },
                           false, stage);
}

#ifdef AGENTCOMM_WITH_CUDA
namespace {
// Nanoseconds since t (the device paths' encode / decode accounting).
uint64_t nsSince(std::chrono::steady_clock::time_point t) {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t).count());
}
}  // namespace

// A sparse all-reduce of a CUDA tensor encodes and decodes on its device
// (the CUDA twins, bitwise equal to the CPU's: the same result as staging):
// only the compressed form crosses PCIe (top-k: the k pairs down, the dense
// result up; random-k: k values each way) and the host moves and sums it.
// The residual stays on the device. AGENTCOMM_CUDA_ENCODE=0 stages instead.
c10::intrusive_ptr<c10d::Work> AgentBackend::sparseAllreduceOnDevice(at::Tensor tensor,
                                                                     std::optional<at::Tensor> residual, int64_t k,
                                                                     algorithms::SparseMethod m, int64_t seed,
                                                                     double scale, std::optional<at::Tensor> stats) {
  const char* op = "sparse_all_reduce";
  checkFloatBuffer(tensor, op, "the tensor", &tensor);
  TORCH_CHECK_VALUE(static_cast<size_t>(tensor.numel()) <= kMaxElems, "agentcomm ", op, ": at most 2^31 - 1 elements");
  float* res = optionalBuffer(residual, tensor.numel(), op, "residual", &tensor);
  int64_t* st = statsBuffer(stats, op);
  const size_t count = static_cast<size_t>(tensor.numel());
  const size_t kk = std::min(static_cast<size_t>(k), count);
  const uint64_t signature =
      m == algorithms::SparseMethod::RandomK ? count ^ (static_cast<uint64_t>(k) << 32) : count;
  std::vector<at::Tensor> keep = {tensor};
  if (residual && residual->defined()) keep.push_back(*residual);
  if (stats && stats->defined()) keep.push_back(*stats);
  StagePtr stage = cuda().streamStage(tensor);
  return enqueueCollective(
      c10d::OpType::ALLREDUCE, "agentcomm:sparse_all_reduce", {tensor}, c10d::kUnsetTimeout, [=, this](Deadline d) {
        (void)keep;
        c10::DeviceGuard guard(tensor.device());
        void* stream = stage->stream();
        float* data = tensor.data_ptr<float>();
        const bool ef = res != nullptr;
        float* src = ef ? res : data;
        const float* add = ef ? data : nullptr;
        const auto pinned = at::TensorOptions().dtype(at::kFloat).pinned_memory(true);
        auto ctx = comm_->context(CollectiveKind::CompressedAllReduce, DataType::Float32, ReduceOp::Sum, signature, d);
        algorithms::CompressionStats s;
        algorithms::SparseAllReduceOptions o;
        o.count = count;
        o.k = kk;
        o.method = m;
        o.seed = static_cast<uint64_t>(seed);
        o.scale = static_cast<float>(scale);
        o.stats = &s;
        const auto t0 = std::chrono::steady_clock::now();
        // At least one element: a non-null encodedVal marks the input as encoded.
        const int64_t cap = static_cast<int64_t>(std::max<size_t>(kk, 1));
        at::Tensor valD = at::empty({cap}, tensor.options());
        at::Tensor valH = at::empty({cap}, pinned);
        if (m == algorithms::SparseMethod::RandomK) {
          kernels::cuda::randomkGather(src, add, count, kk, o.seed, valD.data_ptr<float>(), ef, stream);
          stage->copy(valH, valD);
          stage->synchronize();
          s.encodeNs += nsSince(t0);
          o.encodedVal = valH.data_ptr<float>();
          o.encodedCount = kk;
          algorithms::sparseAllReduce(ctx, o);  // sums valH in place
          const auto t1 = std::chrono::steady_clock::now();
          stage->copy(valD, valH);
          kernels::cuda::zero(data, count * sizeof(float), stream);
          kernels::cuda::randomkScatter(valD.data_ptr<float>(), count, kk, o.seed, o.scale, data, stream);
          stage->synchronize();  // valD may go once the scatter ran
          s.decodeNs += nsSince(t1);
        } else {
          at::Tensor idxD = at::empty({cap}, tensor.options().dtype(at::kInt));
          auto* idx = reinterpret_cast<uint32_t*>(idxD.data_ptr<int32_t>());
          const size_t got =  // these synchronize the stream
              m == algorithms::SparseMethod::TopKSampled
                  ? kernels::cuda::topkSampled(src, add, count, kk, idx, valD.data_ptr<float>(), ef, o.seed, stream)
                  : kernels::cuda::topkExact(src, add, count, kk, idx, valD.data_ptr<float>(), ef, stream);
          at::Tensor idxH = at::empty({cap}, pinned.dtype(at::kInt));
          const auto g = static_cast<int64_t>(got);
          stage->copy(idxH.narrow(0, 0, g), idxD.narrow(0, 0, g));
          stage->copy(valH.narrow(0, 0, g), valD.narrow(0, 0, g));
          stage->synchronize();
          s.encodeNs += nsSince(t0);
          at::Tensor out = at::empty({static_cast<int64_t>(count)}, pinned);
          o.data = out.data_ptr<float>();
          o.encodedIdx = reinterpret_cast<const uint32_t*>(idxH.data_ptr<int32_t>());
          o.encodedVal = valH.data_ptr<float>();
          o.encodedCount = got;
          algorithms::sparseAllReduce(ctx, o);
          stage->copy(tensor, out.view(tensor.sizes()));  // the caller's wait covers it ("done" follows)
        }
        addStats(st, s);
      },
      false, stage);
}
#endif

c10::intrusive_ptr<c10d::Work> AgentBackend::quantizedAllreduce(at::Tensor tensor, std::optional<at::Tensor> residual,
                                                                std::optional<at::Tensor> serverResidual, int64_t bits,
                                                                int64_t block, int64_t seed, double scale,
                                                                std::optional<at::Tensor> stats) {
  const char* op = "quantized_all_reduce";
#ifdef AGENTCOMM_WITH_CUDA
  if (tensor.is_cuda() && envFlag("AGENTCOMM_CUDA_ENCODE", true))
    return quantizedAllreduceOnDevice(tensor, residual, serverResidual, bits, block, seed, scale, stats);
#endif
  StagePtr stage = stageOnHost(*this, tensor, {&residual, &serverResidual}, op);
  return quantizedAllreduceOnHost(tensor, residual, serverResidual, bits, block, seed, scale, stats, stage);
}

c10::intrusive_ptr<c10d::Work> AgentBackend::quantizedAllreduceOnHost(at::Tensor tensor,
                                                                      std::optional<at::Tensor> residual,
                                                                      std::optional<at::Tensor> serverResidual,
                                                                      int64_t bits, int64_t block, int64_t seed,
                                                                      double scale, std::optional<at::Tensor> stats,
                                                                      const StagePtr& stage) {
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
                             auto ctx = comm_->context(CollectiveKind::CompressedAllReduce, DataType::Float32, ReduceOp::Sum, signature, d);
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
                           },
                           false, stage);
}

#ifdef AGENTCOMM_WITH_CUDA
// A quantized all-reduce of a CUDA tensor quantizes (worker error feedback
// fused) and finally dequantizes on its device: the codes and scales cross
// PCIe (8-bit: about a quarter of the tensor each way), the host exchanges
// them and reduces its slice (the server residual is copied down and up:
// one slice). Bitwise the result of staging. AGENTCOMM_CUDA_ENCODE=0 stages.
c10::intrusive_ptr<c10d::Work> AgentBackend::quantizedAllreduceOnDevice(
    at::Tensor tensor, std::optional<at::Tensor> residual, std::optional<at::Tensor> serverResidual, int64_t bits,
    int64_t block, int64_t seed, double scale, std::optional<at::Tensor> stats) {
  const char* op = "quantized_all_reduce";
  checkFloatBuffer(tensor, op, "the tensor", &tensor);
  TORCH_CHECK_VALUE(kernels::validQuantBits(static_cast<int>(bits)), "agentcomm ", op,
                    ": bits must be 8, 4 or 1, got ", bits);
  TORCH_CHECK_VALUE(block > 0 && block % 8 == 0, "agentcomm ", op, ": block must be a positive multiple of 8, got ",
                    block);
  const size_t count = static_cast<size_t>(tensor.numel());
  float* res = optionalBuffer(residual, tensor.numel(), op, "residual", &tensor);
  const auto slice = algorithms::quantSlice(count, static_cast<size_t>(block), getRank(), getSize());
  const bool server =
      optionalBuffer(serverResidual, static_cast<int64_t>(slice.count), op, "server_residual", &tensor) != nullptr;
  int64_t* st = statsBuffer(stats, op);
  const uint64_t signature = count ^ (static_cast<uint64_t>(bits) << 56) ^ (static_cast<uint64_t>(block) << 36);
  std::vector<at::Tensor> keep = {tensor};
  for (const auto* t : {&residual, &serverResidual, &stats})
    if (*t && (*t)->defined()) keep.push_back(**t);
  const at::Tensor serverDev = server ? *serverResidual : at::Tensor();
  StagePtr stage = cuda().streamStage(tensor);
  return enqueueCollective(
      c10d::OpType::ALLREDUCE, "agentcomm:quantized_all_reduce", {tensor}, c10d::kUnsetTimeout,
      [=, this](Deadline d) {
        (void)keep;
        c10::DeviceGuard guard(tensor.device());
        void* stream = stage->stream();
        float* data = tensor.data_ptr<float>();
        const int b = static_cast<int>(bits);
        const size_t blk = static_cast<size_t>(block);
        const auto codeBytes = static_cast<int64_t>(std::max<size_t>(kernels::quantCodeBytes(count, b, blk), 1));
        const auto nb = static_cast<int64_t>(std::max<size_t>(kernels::quantBlocks(count, blk), 1));
        const auto bytesOpt = tensor.options().dtype(at::kByte);
        const auto pinned = at::TensorOptions().pinned_memory(true);
        at::Tensor codesD = at::empty({codeBytes}, bytesOpt), scalesD = at::empty({nb}, tensor.options());
        at::Tensor codesH = at::empty({codeBytes}, pinned.dtype(at::kByte));
        at::Tensor scalesH = at::empty({nb}, pinned.dtype(at::kFloat));
        at::Tensor codes2H = at::empty({codeBytes}, pinned.dtype(at::kByte));
        at::Tensor scales2H = at::empty({nb}, pinned.dtype(at::kFloat));
        at::Tensor serverH;
        algorithms::CompressionStats s;
        const auto t0 = std::chrono::steady_clock::now();
        kernels::cuda::quantize(res ? res : data, res ? data : nullptr, count, b, blk, static_cast<uint64_t>(seed),
                                codesD.data_ptr<uint8_t>(), scalesD.data_ptr<float>(), res != nullptr, stream);
        stage->copy(codesH, codesD);
        stage->copy(scalesH, scalesD);
        if (server) {
          serverH = at::empty(serverDev.sizes(), pinned.dtype(at::kFloat));
          stage->copy(serverH, serverDev);
        }
        stage->synchronize();
        s.encodeNs += nsSince(t0);
        auto ctx = comm_->context(CollectiveKind::CompressedAllReduce, DataType::Float32, ReduceOp::Sum, signature, d);
        algorithms::QuantizedAllReduceOptions o;
        o.count = count;
        o.serverResidual = server ? serverH.data_ptr<float>() : nullptr;
        o.bits = b;
        o.block = blk;
        o.seed = static_cast<uint64_t>(seed);
        o.scale = static_cast<float>(scale);
        o.stats = &s;
        o.encodedCodes = codesH.data_ptr<uint8_t>();
        o.encodedScales = scalesH.data_ptr<float>();
        o.decodedCodes = codes2H.data_ptr<uint8_t>();
        o.decodedScales = scales2H.data_ptr<float>();
        algorithms::quantizedAllReduce(ctx, o);
        const auto t1 = std::chrono::steady_clock::now();
        stage->copy(codesD, codes2H);
        stage->copy(scalesD, scales2H);
        if (server) stage->copy(serverDev, serverH);
        kernels::cuda::dequantize(codesD.data_ptr<uint8_t>(), scalesD.data_ptr<float>(), count, b, blk, 1.0f, false,
                                  data, stream);
        stage->synchronize();  // codesD and scalesD may go once the decode ran
        s.decodeNs += nsSince(t1);
        addStats(st, s);
      },
      false, stage);
}
#endif

}  // namespace agentcomm::torch_adapter
