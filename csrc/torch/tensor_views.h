#pragma once
// Tensors as the communicator sees them: the checks every op makes at issue
// time (raising ValueError / TypeError naming the op), (dtype, count) views,
// the contiguous buffer an op runs on, and torch's reduce ops mapped to the
// core's. A "contiguous buffer" is the tensor itself when it is contiguous,
// else a contiguous copy that copyBack writes into the tensor after the op;
// "stage" means only the CUDA host mirrors of cuda_support.h.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/Types.hpp>

#include <exception>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/reduce_op.h"

namespace agentcomm::torch_adapter {

using Tensors = std::vector<at::Tensor>;
using TensorLists = std::vector<Tensors>;

std::optional<DataType> mapDtype(at::ScalarType st);

// Raises ValueError unless t is a defined, strided CPU tensor ("agentcomm <op>: ...").
void checkTensor(const at::Tensor& t, const char* op);

// (dtype, count) as the core sees a tensor.
struct View {
  DataType dt;
  size_t count;
};
// For reductions: the dtype must be one the kernels know, and support the op.
View reduceView(const at::Tensor& t, const char* op, ReduceOp rop);
// For data movement any dtype works: unknown ones travel as bytes.
View moveView(const at::Tensor& t, const char* op);
// Core elements per tensor element: 1, or the element size for dtypes that travel as bytes.
size_t unitOf(const at::Tensor& t);
void checkSameDtype(const at::Tensor& a, const at::Tensor& b, const char* op);

// The tensor if contiguous, else a contiguous copy (made at issue time).
at::Tensor contiguousBuffer(const at::Tensor& t);
// Writes an op's result from its contiguous buffer into the tensor (nothing
// to do when the buffer is the tensor, possibly through a reshaped view).
void copyBack(const at::Tensor& tensor, const at::Tensor& buffer);
// The root's per-rank list (gather's outputs, scatter's inputs) as contiguous
// buffers, checked on the root; every other rank must pass none.
Tensors rootListBuffers(const TensorLists& lists, const at::Tensor& like, bool isRoot, int size, const char* op,
                        const char* what);

// torch's reduce op as the core's, with PREMUL_SUM's factor.
std::pair<ReduceOp, double> mapReduceOp(const c10d::ReduceOp& op, const char* name);
// torch's PREMUL_SUM multiplies each rank's input by that rank's own factor
// before summing (factors may differ between ranks); the core's premulFactor
// is one factor applied once at the end. So the adapter scales the input
// itself and reduces with SUM. Returns whether `rop` was PREMUL_SUM.
bool takePremul(ReduceOp& rop);

// A core error as torch's: InvalidArgument -> ValueError, others -> DistBackendError;
// a torch error is kept. Call inside the catch block (it may rethrow the current one).
std::exception_ptr torchErrorOf(const std::exception& e);
// The error's text without torch's backtrace.
std::string errorText(const std::exception& e);
// A DistBackendError with this text, as an exception_ptr.
std::exception_ptr backendError(const std::string& what);

// Float buffers of the compression ops and kernels. The kernel entry points
// take CPU tensors, or (in a build with CUDA) CUDA tensors all on one device.
constexpr size_t kMaxElems = (size_t{1} << 31) - 1;  // indices travel as int32 in Python
void checkKernelDevice(const at::Tensor& t, const at::Tensor& like, const char* op);
// A contiguous float32 tensor (on like's device when given, else on the CPU).
void checkFloatBuffer(const at::Tensor& t, const char* op, const char* what, const at::Tensor* like = nullptr);
// The optional buffer's data (null when absent), checked to hold numel floats.
float* optionalBuffer(const std::optional<at::Tensor>& t, int64_t numel, const char* op, const char* what,
                      const at::Tensor* like = nullptr);

// Whether any of the tensors (or lists of them) is a CUDA tensor.
bool isCuda(const at::Tensor& t);
bool isCuda(const Tensors& v);
bool isCuda(const TensorLists& v);
template <typename... A>
bool anyCuda(const A&... a) {
  return (isCuda(a) || ...);
}
// Pointers to every tensor of the arguments (for CudaContext::stage).
void collectTensors(std::vector<at::Tensor*>& out, at::Tensor& t);
void collectTensors(std::vector<at::Tensor*>& out, Tensors& v);
void collectTensors(std::vector<at::Tensor*>& out, TensorLists& v);

}  // namespace agentcomm::torch_adapter
