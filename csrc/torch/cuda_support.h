#pragma once
// CUDA tensors in the backend (cuda_support.cc, compiled only against a torch
// with CUDA; without it these entry points say CUDA is unavailable). No CUDA
// header is needed here: the adapter includes this in every build.
//
// Stream semantics are NCCL's. On the calling thread a collective records an
// event on the caller's current stream (none if that stream had finished
// everything: the inputs are final then); on the worker, the backend's
// internal stream (one per device) waits for it, so the collective is ordered
// after the work already queued when it was called. The result is written on the
// internal stream, where a "done" event is recorded; the Work completes once
// that is queued, not once it ran. Work.wait() then makes the caller's current
// stream wait for "done" and returns without blocking the host on the device;
// the Work's Future is a CUDA future (callbacks' streams wait too).
//
// Two ways to move the data:
//   - staged (every collective, any transport, across hosts): pinned host
//     mirrors of the CUDA tensors; device-to-host copies on the internal
//     stream, the CPU algorithm on the mirrors, host-to-device copies back
//     (a large all_reduce pipelines them chunk by chunk: setPipelined);
//   - peers (all_reduce when the whole group is on this host): CUDA IPC
//     mappings of every rank's tensor, exchanged per op through the group's
//     host transport and cached; the lowest rank on each GPU reduces that
//     GPU's share of the elements over all of them on the device and writes
//     it into every rank's tensor. Several ranks may share one GPU (NCCL
//     refuses that): one kernel per GPU, so they do not time-slice it.
// A third, for the compressed all-reduces (compression.cc): a stage without
// mirrors; the CUDA kernels encode and decode on the internal stream and only
// the compressed form goes through host memory (copy / synchronize).
#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/reduce_op.h"

namespace agentcomm::torch_adapter {

// Whether this extension was built with CUDA support.
bool cudaBuilt();

// One collective's CUDA side (see above). Created on the calling thread.
class CudaStage {
 public:
  virtual ~CudaStage() = default;
  // Worker: the internal stream waits for the caller's stream.
  virtual void waitCaller() = 0;
  // Worker, before the algorithm: waitCaller(), device-to-host copies into
  // the mirrors, then a host wait for them.
  virtual void copyIn() = 0;
  // Worker, after: host-to-device copies of the outputs' mirrors (all mirrors
  // when `outputs` holds a tensor that is not one), then the "done" event.
  virtual void copyOut() = 0;
  // The CUDA tensor a mirror stands for (the tensor itself if it is none).
  virtual at::Tensor original(const at::Tensor& t) const = 0;
  // Sets which mirrors are outputs (enqueue time).
  virtual void setOutputs(const std::vector<at::Tensor>& outputs) = 0;
  // Marks one more mirror as an output (e.g. an error-feedback residual).
  virtual void keepOutput(const at::Tensor& mirror) = 0;
  virtual std::vector<c10::Device> devices() const = 0;
  // Marks the future with the internal stream current (its event lands after "done").
  virtual void markCompleted(c10::ivalue::Future& future, const c10::IValue& value) = 0;
  // The caller's current stream waits for "done" (Work.wait / synchronize).
  virtual void blockCurrentStream() = 0;
  // The internal stream (a cudaStream_t), for work queued between copyIn and copyOut.
  virtual void* stream() const = 0;
  // Whether the caller's stream had completed everything queued on it when
  // the stage was made (the inputs were final then: no device wait needed).
  virtual bool callerIdle() const = 0;
  // Worker, for device-side paths: queues dst.copy_(src) on the internal
  // stream (pinned host memory is recorded as used by it), and waits on the
  // host for everything queued there so far.
  virtual void copy(const at::Tensor& dst, const at::Tensor& src) = 0;
  virtual void synchronize() = 0;

  // A staged reduction of one large contiguous tensor, its copies overlapped
  // with the host algorithm (and so with the network). Called before the
  // op is enqueued; copyIn() then only orders after the caller, copyOut()
  // only records "done", and the op calls pipeline() instead.
  virtual void setPipelined() = 0;
  // Worker: the device-to-host copies of every chunk (chunkBytes each, the
  // last shorter) are queued at once; then, chunk by chunk in order: a host
  // wait for its copy, each(byteOffset, bytes) on the mirror, and its
  // host-to-device copy queued on a second stream. The copies down, the
  // host work and the copies up overlap; the internal stream finally waits
  // for the last copy up. If `each` throws, the copies already queued finish
  // and the exception propagates.
  virtual void pipeline(size_t chunkBytes, const std::function<void(size_t, size_t)>& each) = 0;
};

using StagePtr = std::shared_ptr<CudaStage>;

// A backend's CUDA state: one internal stream per device, the IPC mappings
// and events of its peers. Created on first use of a CUDA tensor.
class CudaContext {
 public:
  using Exchange = std::function<void(const void* mine, void* all, size_t bytes)>;
  virtual ~CudaContext() = default;

  // Replaces every CUDA tensor among *tensors by a pinned host mirror and
  // returns the stage that copies between them; nullptr if none is on CUDA.
  // Raises ValueError if CUDA tensors are on different devices or mixed with
  // CPU tensors.
  virtual StagePtr stage(const std::vector<at::Tensor*>& tensors, const char* op) = 0;
  // A stage without mirrors: only the stream ordering (device-side paths).
  virtual StagePtr streamStage(const at::Tensor& like) = 0;

  // Whether the device kernels can all-reduce this dtype with this op (the
  // same answer on every rank: dtype and op are checked to agree).
  virtual bool peersCanReduce(const at::Tensor& t, ReduceOp op) const = 0;
  // All-reduce of a CUDA tensor among the ranks of this host through CUDA IPC
  // (worker thread, between stage.copyIn() and copyOut()). `exchange` is an
  // all-gather of equal-size byte blobs over the group's host transport. If
  // any rank cannot export its tensor's memory, every rank raises
  // the same clear error (set AGENTCOMM_CUDA_IPC=0 to stage through host
  // memory), so the ranks never disagree on the path.
  //
  // The leaders' kernels wait on the device for the peers' "ready" events and
  // every rank's stream for the leaders' "done" events: waits on other
  // processes that cannot be cancelled once queued. A peer that dies or stops
  // after the exchange would leave this process's stream (and every stream
  // that waits for its results) blocked for good. So each such op is watched
  // until its device part finishes: if it has not finished `timeout` after
  // it was queued, or some seconds (kStuckGrace, at most `timeout`) after the
  // group failed (a peer lost, abort()), the op is declared stuck:
  // AGENTCOMM_CUDA_STUCK=exit (the default, as NCCL's watchdog under torch)
  // logs why and ends the process (abort(): torchrun restarts it; the blocked
  // stream cannot be freed otherwise); =abort fails the group with that text
  // instead (every later op raises it) and leaves the process to the caller.
  // A CUDA error seen there is reported the same way.
  virtual void allReduce(const at::Tensor& t, ReduceOp op, FinalScale scale, CudaStage& stage,
                         const Exchange& exchange, std::chrono::milliseconds timeout) = 0;
  // Stops watching (shutdown: the group is going away; what is queued is dropped).
  virtual void stopWatching() = 0;
};

// What the CUDA side needs of its group: its failure so far (none: nullopt),
// and a way to fail it with a text (sticky; tells the peers).
struct GroupLink {
  std::function<std::optional<std::string>()> failure;
  std::function<void(const std::string&)> fail;
};

// The current CUDA stream (a cudaStream_t) of t's device, for kernels queued
// from Python-facing entry points.
void* currentCudaStream(const at::Tensor& t);

// Throws (RuntimeError naming the cause) if this build has no CUDA support.
std::unique_ptr<CudaContext> makeCudaContext(int rank, int size, GroupLink group);

}  // namespace agentcomm::torch_adapter
