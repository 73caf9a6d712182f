#pragma once
// The torch adapter's c10d::Backend: thin. Per op it validates the tensors
// (tensor_views.h; errors raise at once, naming the op), makes contiguous
// buffers or, for CUDA tensors, a CUDA stage (cuda_support.h), creates the
// Work (work.h), and hands the scheduler (scheduler.h) a closure that calls
// the communicator (algorithms/communicator.h), which owns everything below:
// bootstrap, paths, algorithms, protocol, failure.
//
// A collective passes through three phases (as in ProcessGroupGloo):
//   1. on the calling thread: checks that raise at once (ValueError/TypeError),
//      contiguous buffers, and enqueueing;
//   2. on the worker thread, in issue order (or inline, scheduler.h): the
//      communicator call under the op's deadline; any failure aborts the
//      communicator and tells the peers;
//   3. completion: results copied back, Work finished, Future marked (its
//      callbacks, e.g. DDP's, run on a completion thread, never under our locks).
// Point-to-point (p2p.cc): sends run on their own lane and receives are
// posted at once, so send/recv pairs never wait behind each other or a collective.
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "algorithms/communicator.h"
#include "algorithms/compressed.h"
#include "torch/cuda_support.h"
#include "torch/scheduler.h"
#include "torch/tensor_views.h"
#include "torch/work.h"

namespace agentcomm::torch_adapter {

using transport::Deadline;

class AgentBackend : public c10d::Backend {
 public:
  // keyPrefix: the bootstrap's store keys (empty: storeKeyPrefix(); a shrunk
  // group uses its own, beside its parent's keys in the same store).
  AgentBackend(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size, std::chrono::milliseconds timeout,
               std::string groupName, std::string keyPrefix = "");
  ~AgentBackend() override;

  const std::string getBackendName() const override { return "agentcomm"; }
  void setTimeout(std::chrono::milliseconds timeout) override { timeout_ = timeout; }
  c10::intrusive_ptr<Options> getBackendOptions() override;

  // torch's split_group / ProcessGroup.split_group: a new group of `ranks`
  // (this group's ranks; null when this rank is not among them), bootstrapped
  // through `store` as any new group (the parent stays usable).
  bool supportsSplitting() const override { return true; }
  c10::intrusive_ptr<c10d::Backend> split(const c10::intrusive_ptr<c10d::Store>& store, const std::vector<int>& ranks,
                                          const c10::intrusive_ptr<Options>& opts) override;
  // torch's shrink_group: the group without `ranksToExclude` (e.g. dead
  // ranks), called by every remaining rank only. The new group bootstraps
  // through this group's store under its own keys (the n-th shrink and the
  // excluded ranks name them, so survivors that disagree time out instead of
  // mixing); a store hosted by an excluded rank cannot serve it (TCPStore on
  // rank 0: use torchrun's agent store). shrinkFlags & 1 (SHRINK_ABORT):
  // abort this group first, failing its ops still blocked.
  bool supportsShrinking() const override { return true; }
  c10::intrusive_ptr<c10d::Backend> shrink(const std::vector<int64_t>& ranksToExclude, int shrinkFlags,
                                           const c10::intrusive_ptr<Options>& optsOverride) override;

  c10::intrusive_ptr<c10d::Work> broadcast(std::vector<at::Tensor>& tensors, const c10d::BroadcastOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> allreduce(std::vector<at::Tensor>& tensors, const c10d::AllreduceOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> allreduce_coalesced(std::vector<at::Tensor>& tensors,
                                                     const c10d::AllreduceCoalescedOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> reduce(std::vector<at::Tensor>& tensors, const c10d::ReduceOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> allgather(std::vector<std::vector<at::Tensor>>& outputs, std::vector<at::Tensor>& inputs,
                                           const c10d::AllgatherOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> _allgather_base(at::Tensor& output, at::Tensor& input,
                                                 const c10d::AllgatherOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> allgather_coalesced(std::vector<std::vector<at::Tensor>>& outputs,
                                                     std::vector<at::Tensor>& inputs,
                                                     const c10d::AllgatherOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> allgather_into_tensor_coalesced(std::vector<at::Tensor>& outputs,
                                                                 std::vector<at::Tensor>& inputs,
                                                                 const c10d::AllgatherOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> gather(std::vector<std::vector<at::Tensor>>& outputs, std::vector<at::Tensor>& inputs,
                                        const c10d::GatherOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> scatter(std::vector<at::Tensor>& outputs, std::vector<std::vector<at::Tensor>>& inputs,
                                         const c10d::ScatterOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> reduce_scatter(std::vector<at::Tensor>& outputs,
                                                std::vector<std::vector<at::Tensor>>& inputs,
                                                const c10d::ReduceScatterOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> _reduce_scatter_base(at::Tensor& output, at::Tensor& input,
                                                      const c10d::ReduceScatterOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> reduce_scatter_tensor_coalesced(std::vector<at::Tensor>& outputs,
                                                                 std::vector<at::Tensor>& inputs,
                                                                 const c10d::ReduceScatterOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> alltoall_base(at::Tensor& output, at::Tensor& input,
                                               std::vector<int64_t>& outputSplits, std::vector<int64_t>& inputSplits,
                                               const c10d::AllToAllOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> alltoall(std::vector<at::Tensor>& outputs, std::vector<at::Tensor>& inputs,
                                          const c10d::AllToAllOptions& opts) override;
  c10::intrusive_ptr<c10d::Work> send(std::vector<at::Tensor>& tensors, int dstRank, int tag) override;
  c10::intrusive_ptr<c10d::Work> recv(std::vector<at::Tensor>& tensors, int srcRank, int tag) override;
  c10::intrusive_ptr<c10d::Work> recvAnysource(std::vector<at::Tensor>& tensors, int tag) override;
  c10::intrusive_ptr<c10d::Work> barrier(const c10d::BarrierOptions& opts) override;

  void setSequenceNumberForGroup() override { scheduler_->resetSequenceNumber(); }
  uint64_t getSequenceNumberForGroup() override { return scheduler_->sequenceNumber(); }
  void abort() override;
  // SUCCESS until the group fails; then TIMEOUT (an op ran out of time here),
  // COMM_ERROR (another failure of an op here, or abort()), or REMOTE_ERROR
  // (nothing here failed first: a peer aborted or was lost).
  c10d::ErrorType getError() override;
  // The first failure's text once the group is unusable (torchft's errored()).
  std::optional<std::string> errorReason() { return comm_->failure(); }
  void shutdown() override;

  const std::string& transportName() const { return comm_->pathName(); }
  const std::vector<int>& localRanks() const { return comm_->localRanks(); }
  // The CUDA side (cuda_support.h), made on first use; raises without CUDA support.
  CudaContext& cuda();

  // Compressed all-reduces of a contiguous float32 tensor, in place
  // (compression.cc; algorithms/compressed.h has the semantics). residual /
  // serverResidual: error-feedback buffers updated in place (optional). stats:
  // an int64[4] tensor that (raw bytes, wire bytes, encode ns, decode ns) are
  // added to before the work completes.
  c10::intrusive_ptr<c10d::Work> sparseAllreduce(at::Tensor tensor, std::optional<at::Tensor> residual, int64_t k,
                                                 const std::string& method, int64_t seed, double scale,
                                                 std::optional<at::Tensor> stats);
  c10::intrusive_ptr<c10d::Work> quantizedAllreduce(at::Tensor tensor, std::optional<at::Tensor> residual,
                                                    std::optional<at::Tensor> serverResidual, int64_t bits,
                                                    int64_t block, int64_t seed, double scale,
                                                    std::optional<at::Tensor> stats);

 private:
  // The compressed all-reduces on host memory (CPU tensors, or CUDA ones
  // staged through host mirrors: stage) and on the device (compression.cc).
  c10::intrusive_ptr<c10d::Work> sparseAllreduceOnHost(at::Tensor tensor, std::optional<at::Tensor> residual,
                                                       int64_t k, algorithms::SparseMethod m, int64_t seed,
                                                       double scale, std::optional<at::Tensor> stats,
                                                       const StagePtr& stage);
  c10::intrusive_ptr<c10d::Work> quantizedAllreduceOnHost(at::Tensor tensor, std::optional<at::Tensor> residual,
                                                          std::optional<at::Tensor> serverResidual, int64_t bits,
                                                          int64_t block, int64_t seed, double scale,
                                                          std::optional<at::Tensor> stats, const StagePtr& stage);
  c10::intrusive_ptr<c10d::Work> sparseAllreduceOnDevice(at::Tensor tensor, std::optional<at::Tensor> residual,
                                                         int64_t k, algorithms::SparseMethod m, int64_t seed,
                                                         double scale, std::optional<at::Tensor> stats);
  c10::intrusive_ptr<c10d::Work> quantizedAllreduceOnDevice(at::Tensor tensor, std::optional<at::Tensor> residual,
                                                            std::optional<at::Tensor> serverResidual, int64_t bits,
                                                            int64_t block, int64_t seed, double scale,
                                                            std::optional<at::Tensor> stats);
  // all_reduce of CUDA tensors: over CUDA IPC when the whole group is on this
  // host, else a large one staged with its copies overlapped; null: neither applies.
  c10::intrusive_ptr<c10d::Work> allreduceOnDevice(const at::Tensor& ct, ReduceOp rop, double factor,
                                                   const c10d::AllreduceOptions& opts);

  // Runs `onHostMemory(stage, args...)`: with the arguments themselves and no
  // stage when no tensor is on CUDA, else with copies whose CUDA tensors were
  // replaced by pinned host mirrors and the stage that copies between them.
  template <typename Fn, typename... Args>
  c10::intrusive_ptr<c10d::Work> onHost(const char* op, const Fn& onHostMemory, Args&... args);

  // The Work of a collective, scheduled (scheduler.h); `run` calls the
  // communicator under its deadline. stage: the op's CUDA side (null for CPU
  // tensors); outputs are then host mirrors and the Work reports the CUDA tensors.
  c10::intrusive_ptr<AgentWork> enqueueCollective(c10d::OpType type, const char* title, Tensors outputs,
                                                  std::chrono::milliseconds optTimeout,
                                                  std::function<void(Deadline)> run, bool mayInline = false,
                                                  StagePtr stage = nullptr);
  // Runs an op through the communicator (communicator.h: run), recording it in
  // the flight recorder; returns its error as torch's, or null.
  std::exception_ptr execute(AgentWork& work, const std::function<void(Deadline)>& run,
                             std::chrono::milliseconds timeout);
  // outputs[i]: the world-size list of outputs of input i.
  c10::intrusive_ptr<c10d::Work> allgatherImpl(TensorLists& outputs, Tensors& inputs,
                                               const c10d::AllgatherOptions& opts);
  c10::intrusive_ptr<AgentWork> postRecv(Tensors& tensors, int srcRank, int tag);
  void shutdownNoGil();

  c10::intrusive_ptr<c10d::Store> store_;  // the bootstrap's, kept for shrink()
  std::string groupName_;
  std::atomic<int> shrinks_{0};
  std::mutex splitMu_;  // splitChildren_
  std::map<std::string, c10::weak_intrusive_ptr<AgentBackend>> splitChildren_;  // by name and ranks  // how often this group was shrunk: names the next one's keys
  std::unique_ptr<algorithms::Communicator> comm_;
  std::unique_ptr<Scheduler> scheduler_;
  std::chrono::milliseconds timeout_;
  std::once_flag cudaOnce_;
  std::unique_ptr<CudaContext> cuda_;
  std::atomic<bool> cudaMade_{false};  // cuda_ is set (shutdown may race a first CUDA op)
  std::once_flag shutdownOnce_;
};

}  // namespace agentcomm::torch_adapter

namespace agentcomm::torch_adapter {

template <typename Fn, typename... Args>
c10::intrusive_ptr<c10d::Work> AgentBackend::onHost(const char* op, const Fn& onHostMemory, Args&... args) {
  if (!anyCuda(args...)) return onHostMemory(StagePtr{}, args...);
  auto mirrors = std::make_tuple(args...);  // copies: the caller's lists keep their CUDA tensors
  return std::apply(
      [&](auto&... m) {
        std::vector<at::Tensor*> ptrs;
        (collectTensors(ptrs, m), ...);
        StagePtr stage = cuda().stage(ptrs, op);
        return onHostMemory(stage, m...);
      },
      mirrors);
}

}  // namespace agentcomm::torch_adapter
