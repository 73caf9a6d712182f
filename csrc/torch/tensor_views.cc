#include "torch/tensor_views.h"

#include <torch/csrc/distributed/c10d/Types.hpp>

#include "core/error.h"
#include "torch/cuda_support.h"

namespace agentcomm::torch_adapter {

namespace {
c10::SourceLocation here(const char* func) { return c10::SourceLocation{func, __FILE__, __LINE__}; }
}  // namespace

std::optional<DataType> mapDtype(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return DataType::Float32;
    case at::kDouble: return DataType::Float64;
    case at::kHalf: return DataType::Float16;
    case at::kBFloat16: return DataType::BFloat16;
    case at::kChar: return DataType::Int8;
    case at::kShort: return DataType::Int16;
    case at::kInt: return DataType::Int32;
    case at::kLong: return DataType::Int64;
    case at::kByte: return DataType::UInt8;
    case at::kBool: return DataType::Bool;
    case at::kComplexFloat: return DataType::Complex64;
    case at::kComplexDouble: return DataType::Complex128;
    default: return std::nullopt;
  }
}

void checkTensor(const at::Tensor& t, const char* op) {
  TORCH_CHECK_VALUE(t.defined(), "agentcomm ", op, ": got an undefined tensor");
  TORCH_CHECK_VALUE(t.layout() == at::kStrided, "agentcomm ", op,
                    ": sparse and other non-strided tensors are not supported (got layout ", t.layout(), ")");
  // CUDA tensors never get here: the ops stage them first (cuda_support.h).
  TORCH_CHECK_VALUE(t.device().is_cpu(), "agentcomm ", op, ": tensors must be on the CPU or a CUDA device, got a "
                    "tensor on ", t.device());
}

View reduceView(const at::Tensor& t, const char* op, ReduceOp rop) {
  checkTensor(t, op);
  auto dt = mapDtype(t.scalar_type());
  TORCH_CHECK_TYPE(dt.has_value(), "agentcomm ", op, ": unsupported dtype ", t.scalar_type(),
                   " for a reduction (supported: float32, float64, float16, bfloat16, int8, int16, int32, int64, "
                   "uint8, bool, complex64, complex128)");
  std::string why = checkReduceSupported(*dt, rop);
  TORCH_CHECK_TYPE(why.empty(), "agentcomm ", op, ": ", why);
  return {*dt, static_cast<size_t>(t.numel())};
}

View moveView(const at::Tensor& t, const char* op) {
  checkTensor(t, op);
  if (auto dt = mapDtype(t.scalar_type())) return {*dt, static_cast<size_t>(t.numel())};
  return {DataType::UInt8, static_cast<size_t>(t.numel()) * t.element_size()};
}

size_t unitOf(const at::Tensor& t) { return mapDtype(t.scalar_type()) ? 1 : t.element_size(); }

void checkSameDtype(const at::Tensor& a, const at::Tensor& b, const char* op) {
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), "agentcomm ", op, ": all tensors must have the same dtype, got ",
                   a.scalar_type(), " and ", b.scalar_type());
}

at::Tensor contiguousBuffer(const at::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }

void copyBack(const at::Tensor& tensor, const at::Tensor& buffer) {
  if (tensor.data_ptr() != buffer.data_ptr()) const_cast<at::Tensor&>(tensor).copy_(buffer);
}

Tensors rootListBuffers(const TensorLists& lists, const at::Tensor& like, bool isRoot, int size, const char* op,
                        const char* what) {
  Tensors buffers;
  if (!isRoot) {
    TORCH_CHECK_VALUE(lists.empty() || (lists.size() == 1 && lists[0].empty()), "agentcomm ", op,
                      ": only the root rank may pass ", what, " tensors");
    return buffers;
  }
  TORCH_CHECK_VALUE(lists.size() == 1 && static_cast<int>(lists[0].size()) == size, "agentcomm ", op,
                    ": the root needs a list of ", size, " ", what, " tensors");
  for (const auto& t : lists[0]) {
    moveView(t, op);
    checkSameDtype(t, like, op);
    buffers.push_back(contiguousBuffer(t));
  }
  return buffers;
}

std::pair<ReduceOp, double> mapReduceOp(const c10d::ReduceOp& op, const char* name) {
  TORCH_CHECK_VALUE(static_cast<int>(op.op_) < static_cast<int>(kNumReduceOps), "agentcomm ", name,
                    ": unsupported reduce op ", static_cast<int>(op.op_));
  double factor = 1.0;
  if (op.op_ == c10d::ReduceOp::PREMUL_SUM) {
    auto* s = dynamic_cast<c10d::NCCLPreMulSumSupplement*>(op.supplement_.get());
    TORCH_CHECK_VALUE(s != nullptr, "agentcomm ", name, ": PREMUL_SUM without a factor");
    factor = s->tensor_factor.defined() ? s->tensor_factor.item<double>() : s->double_factor;
  }
  return {static_cast<ReduceOp>(op.op_), factor};
}

bool takePremul(ReduceOp& rop) {
  if (rop != ReduceOp::PremulSum) return false;
  rop = ReduceOp::Sum;
  return true;
}

std::exception_ptr torchErrorOf(const std::exception& e) {
  if (dynamic_cast<const c10::Error*>(&e) != nullptr) return std::current_exception();
  if (dynamic_cast<const InvalidArgument*>(&e) != nullptr)
    return std::make_exception_ptr(c10::ValueError(here(__func__), e.what()));
  return std::make_exception_ptr(c10::DistBackendError(here(__func__), e.what()));
}

std::string errorText(const std::exception& e) {
  if (const auto* c = dynamic_cast<const c10::Error*>(&e)) return c->what_without_backtrace();
  return e.what();
}

std::exception_ptr backendError(const std::string& what) {
  return std::make_exception_ptr(c10::DistBackendError(here(__func__), what));
}

// The kernel entry points take CPU tensors, or (in a build with CUDA) CUDA
// tensors all on one device, where the CUDA twins run on the current stream.
void checkKernelDevice(const at::Tensor& t, const at::Tensor& like, const char* op) {
  TORCH_CHECK_VALUE(t.defined(), "agentcomm ", op, ": got an undefined tensor");
  if (!t.is_cuda() && !like.is_cuda()) return checkTensor(t, op);
  TORCH_CHECK_VALUE(cudaBuilt(), "agentcomm ", op, ": this build has no CUDA support (it was compiled against a "
                    "torch without CUDA)");
  TORCH_CHECK_VALUE(t.device() == like.device(), "agentcomm ", op, ": tensors on ", t.device(), " and ",
                    like.device(), "; pass them on one device");
}

void checkFloatBuffer(const at::Tensor& t, const char* op, const char* what, const at::Tensor* like) {
  if (like)
    checkKernelDevice(t, *like, op);
  else
    checkTensor(t, op);
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, "agentcomm ", op, ": ", what,
                   " must be float32 (compress float16/bfloat16 gradients through a float32 copy), got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.is_contiguous(), "agentcomm ", op, ": ", what, " must be contiguous");
}

float* optionalBuffer(const std::optional<at::Tensor>& t, int64_t numel, const char* op, const char* what,
                      const at::Tensor* like) {
  if (!t || !t->defined()) return nullptr;
  checkFloatBuffer(*t, op, what, like);
  TORCH_CHECK_VALUE(t->numel() == numel, "agentcomm ", op, ": ", what, " has ", t->numel(), " elements, expected ",
                    numel);
  return t->data_ptr<float>();
}

bool isCuda(const at::Tensor& t) { return t.defined() && t.is_cuda(); }
bool isCuda(const Tensors& v) {
  return std::any_of(v.begin(), v.end(), [](const at::Tensor& t) { return isCuda(t); });
}
bool isCuda(const TensorLists& v) {
  return std::any_of(v.begin(), v.end(), [](const Tensors& l) { return isCuda(l); });
}

void collectTensors(std::vector<at::Tensor*>& out, at::Tensor& t) { out.push_back(&t); }
void collectTensors(std::vector<at::Tensor*>& out, Tensors& v) {
  for (auto& t : v) out.push_back(&t);
}
void collectTensors(std::vector<at::Tensor*>& out, TensorLists& v) {
  for (auto& l : v) collectTensors(out, l);
}

}  // namespace agentcomm::torch_adapter
