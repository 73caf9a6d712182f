#pragma once
// The torch adapter: the only code that includes torch. It validates tensors,
// turns them into (pointer, count, DataType), and runs the core's algorithms.
//
// A collective passes through three phases (as in ProcessGroupGloo):
//   1. on the calling thread: checks that raise at once (ValueError/TypeError),
//      contiguous staging, and enqueueing;
//   2. on the worker thread, in issue order: the algorithm, under the op's
//      deadline; any failure aborts the communicator and tells the peers;
//   3. completion: staged results copied back, Work finished, Future marked
//      (its callbacks, e.g. DDP's, run on the worker, never under our locks).
// Point-to-point sends run on their own thread and receives are posted at
// once, so send/recv pairs never wait behind each other or a collective.
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "algorithms/compressed.h"
#include "algorithms/context.h"
#include "algorithms/topology.h"
#include "core/flight_recorder.h"
#include "torch/cuda_support.h"
#include "transport/fault.h"
#include "transport/mailbox.h"
#include "transport/shm/shm_domain.h"
#include "transport/transport.h"

namespace agentcomm::torch_adapter {

class AgentWork : public c10d::Work {
 public:
  // cuda: the stream side of an op on CUDA tensors (null for CPU ones); its
  // future is then a CUDA future and wait() blocks the caller's stream, not the host.
  AgentWork(int rank, c10d::OpType type, const char* title, std::vector<at::Tensor> outputs,
            std::chrono::milliseconds defaultWait, std::shared_ptr<CudaStage> cuda = nullptr);
  std::vector<at::Tensor> result() override { return outputs_; }
  c10::intrusive_ptr<c10::ivalue::Future> getFuture() override;
  bool wait(std::chrono::milliseconds timeout) override;
  void synchronize() override;
  int sourceRank() const override { return sourceRank_.load(); }
  uint64_t getSequencenumber() const override { return seq_; }

  // Finishes the work and its future; eptr null on success. Call with no lock held.
  void complete(std::exception_ptr eptr);
  // Finishes the work for a thread that must not run user callbacks (the
  // transport's reader): only when nobody has asked for the future yet, whose
  // marking getFuture() then does (callbacks can only be attached after it,
  // so none runs here). False, and nothing done, when the future is out.
  bool completeWithoutCallbacks(std::exception_ptr eptr);
  void setSourceRank(int r) { sourceRank_.store(r); }
  void setSequenceNumber(uint64_t s) { seq_ = s; }
  // Set for receives: waiting past the default timeout aborts the communicator.
  std::function<void(const std::string&)> onWaitTimeout;
  // The flight recorder's entry of this op: scheduled now; started by
  // recordStarted (the thread that runs it); ended by complete*, with the
  // algorithm noted by the thread that ran it.
  void record(const std::shared_ptr<FlightRecorder>& recorder, uint64_t seq, bool p2p, int peer);
  void recordStarted();
  void setAlgorithm(const char* name) { algorithm_ = name; }
  // Once per op (later calls do nothing); complete* call it too.
  void recordEnded(const std::exception_ptr& eptr);

 private:

  const char* title_;  // static text, e.g. "agentcomm:all_reduce"
  std::vector<at::Tensor> outputs_;
  c10::intrusive_ptr<c10::ivalue::Future> future_;
  std::chrono::milliseconds defaultWait_;
  std::atomic<int> sourceRank_{-1};
  uint64_t seq_ = 0;
  std::shared_ptr<CudaStage> cuda_;
  std::mutex futureMu_;           // futureTaken_, futurePending_, pendingError_
  bool futureTaken_ = false;      // getFuture() was called
  bool futurePending_ = false;    // finished by completeWithoutCallbacks; the future not yet marked
  std::exception_ptr pendingError_;
  std::shared_ptr<FlightRecorder> recorder_;
  uint64_t recordId_ = 0;
  std::atomic<bool> recordEnded_{false};
  const char* algorithm_ = "";  // written by the running thread before complete*, read there
};

class AgentBackend : public c10d::Backend {
 public:
  AgentBackend(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size, std::chrono::milliseconds timeout,
               std::string groupName);
  ~AgentBackend() override;

  const std::string getBackendName() const override { return "agentcomm"; }
  void setTimeout(std::chrono::milliseconds timeout) override { timeout_ = timeout; }

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

  void setSequenceNumberForGroup() override { opSeq_.store(0); }
  uint64_t getSequenceNumberForGroup() override { return opSeq_.load(); }
  void abort() override;
  // SUCCESS until the group fails; then TIMEOUT (an op ran out of time here),
  // COMM_ERROR (another failure of an op here, or abort()), or REMOTE_ERROR
  // (nothing here failed first: a peer aborted or was lost).
  c10d::ErrorType getError() override;
  // The first failure's text once the group is unusable (torchft's errored()).
  std::optional<std::string> errorReason();
  // Records the kind of the group's first failure (later ones keep the first).
  void noteError(c10d::ErrorType type);
  // Runs the AGENTCOMM_FAULT faults of op `op` (transport/fault.h) on the thread that runs it;
  // a stall ends by stallLimit at the latest.
  void injectFaults(uint64_t op, transport::Deadline stallLimit);
  // Writes every group's flight records to AGENTCOMM_TRACE_DIR, if set (never throws).
  void writeFlightRecords(const std::string& reason);
  // Aborts the TCP transport and the shared-memory domain (sticky, tells peers).
  void abortComm(const std::string& reason);
  void shutdown() override;

  const std::string& transportName() const { return transportName_; }
  // The CUDA side (cuda_support.h), made on first use; raises without CUDA support.
  CudaContext& cuda();

  // Compressed all-reduces of a contiguous float32 CPU tensor, in place
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
  // A sparse all-reduce of a CUDA tensor encoded on its device (compression.cc).
  c10::intrusive_ptr<c10d::Work> sparseAllreduceOnDevice(at::Tensor tensor, std::optional<at::Tensor> residual,
                                                         int64_t k, algorithms::SparseMethod m, int64_t seed,
                                                         double scale, std::optional<at::Tensor> stats);
  // A quantized all-reduce of a CUDA tensor, (de)quantized on its device (compression.cc).
  c10::intrusive_ptr<c10d::Work> quantizedAllreduceOnDevice(at::Tensor tensor, std::optional<at::Tensor> residual,
                                                            std::optional<at::Tensor> serverResidual, int64_t bits,
                                                            int64_t block, int64_t seed, double scale,
                                                            std::optional<at::Tensor> stats);
  // A large CUDA tensor's staged all_reduce, copies overlapped (backend.cc).
  c10::intrusive_ptr<c10d::Work> allreducePipelined(const at::Tensor& ct, ReduceOp rop, double factor,
                                                    const c10d::AllreduceOptions& opts);

  struct Job {
    c10::intrusive_ptr<AgentWork> work;  // null for internal jobs (rendezvous answers)
    std::function<void(transport::Deadline)> run;
    std::chrono::milliseconds timeout;
    // The work completes elsewhere (a rendezvous send: when the receiver's
    // answer arrives, or fails with the communicator), never by the lane.
    bool deferred = false;
  };
  // A single-thread executor: jobs run one at a time in the order enqueued.
  class Lane {
   public:
    void start(std::function<void(Job&)> exec);
    void push(Job job);
    // Runs fn on the calling thread when nothing is queued or running (order
    // is kept: the lane's thread waits for it). True if fn ran and returned
    // true (it did the job); false otherwise (queue the job instead).
    bool runInlineIfIdle(const std::function<bool()>& fn);
    // Joins the thread; jobs still queued run first (drain) or fail.
    void stop(bool drain);

   private:
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<Job> queue_;
    bool stopping_ = false;
    bool busy_ = false;  // a job runs (on the lane's thread or inline)
    std::thread thread_;
    std::function<void(Job&)> exec_;
  };

  // Collective scheduling. Collectives run one at a time on the worker, in an
  // order every rank agrees on even when future callbacks issue collectives
  // from other threads (torch's PowerSGD hook does, and even waits for them
  // inside the callback). Each op is a node; an op issued while the callbacks
  // of op P run (on a completion thread) becomes a child of P. The worker
  // runs the forest depth-first: after P, P's children in issue order, then
  // P's next sibling, and it moves past P only once P's callbacks returned.
  // Completions run on a small pool so a callback blocked on a child's
  // future cannot stop that child's own completion.
  struct Node {
    Job job;
    std::exception_ptr error;
    std::deque<std::shared_ptr<Node>> children;
    bool closed = false;  // its completion (future callbacks included) finished
  };
  class CompletionPool {
   public:
    void submit(std::function<void()> task);
    void stop();  // runs what is queued, then joins
   private:
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::function<void()>> tasks_;
    std::vector<std::thread> threads_;
    int idle_ = 0;
    bool stopping_ = false;
  };
  void workerLoop();
  void stopWorker();

  // mayInline: a small op may run on the calling thread when nothing is queued
  // or running (no thread hand-offs); it completes before the caller can attach
  // a callback, so the ordering rules above are unchanged.
  c10::intrusive_ptr<AgentWork> enqueueCollective(c10d::OpType type, const char* title, std::vector<at::Tensor> outputs,
                                                  std::chrono::milliseconds optTimeout,
                                                  std::function<void(transport::Deadline)> run, bool mayInline = false);
  std::exception_ptr execute(Job& job);
  // outputs[i]: the world-size list of outputs of input i.
  c10::intrusive_ptr<c10d::Work> allgatherImpl(std::vector<std::vector<at::Tensor>>& outputs,
                                               std::vector<at::Tensor>& inputs, const c10d::AllgatherOptions& opts);
  c10::intrusive_ptr<AgentWork> postRecv(std::vector<at::Tensor>& tensors, int srcRank, int tag);
  // Worker thread only: each algorithm run takes the next sequence number,
  // identical on every rank because every rank runs the same ops in order.
  algorithms::Context makeContext(transport::CollectiveKind kind, DataType dt, ReduceOp op, uint64_t signature,
                                  transport::Deadline deadline);
  void shutdownNoGil();

  std::unique_ptr<transport::Transport> transport_;
  std::unique_ptr<transport::ShmDomain> shm_;       // this host's ranks of the group (null if alone)
  bool wholeGroupShm_ = false;                      // every rank of the group is in shm_
  std::unique_ptr<algorithms::Topology> topo_;      // several hosts, some with several ranks
  std::string transportName_;
  std::chrono::milliseconds timeout_;
  std::string groupName_;
  size_t chunkBytes_;
  std::atomic<uint64_t> opSeq_{0};
  uint64_t algoSeq_ = 0;
  std::mutex schedMu_;
  std::condition_variable schedCv_;
  Node root_;
  std::vector<std::shared_ptr<Node>> nodesInFlight_;  // frames on the worker's stack
  bool schedStopping_ = false;
  bool workerBusy_ = false;     // the worker runs a node or waits on its subtree
  bool inlineRunning_ = false;  // a caller is running an op inline
  std::thread worker_;
  CompletionPool completionPool_;
  Lane sends_;
  Lane completions_;
  // Rendezvous (mailbox.h): answers to peers' offers are sent from here, never
  // from a transport reader. The readers' pulls wait for the shared-memory
  // domain (made after the transport, whose readers already run).
  Lane answers_;
  std::atomic<uint64_t> nextOfferId_{0};
  std::mutex rendezvousMu_;
  std::condition_variable rendezvousCv_;
  bool rendezvousSettled_ = false;  // the constructor decided on shm_ (or failed)
  // Per group rank: its index in shm_ when large sends between us go by
  // rendezvous (same host, cross-memory attach), else -1. Fixed once settled.
  std::vector<int> rendezvousIndex_;
  std::once_flag shutdownOnce_;
  std::once_flag cudaOnce_;
  std::unique_ptr<CudaContext> cuda_;
  std::shared_ptr<FlightRecorder> recorder_;        // this group's last ops (core/flight_recorder.h)
  transport::FaultPlan faults_;                     // AGENTCOMM_FAULT (transport/fault.h); empty: none
  std::atomic<int> errorType_{0};                   // c10d::ErrorType of the first failure
  std::atomic<bool> dumpOnAbort_{true};             // false once shutdown starts (its abort is no failure)
  std::mutex flightDumpMu_;                         // one writer of the dump file at a time
  std::atomic<bool> flightDumped_{false};           // this group wrote a dump (AGENTCOMM_TRACE_DIR)
};

// The staged CUDA side of the next op this thread enqueues on a backend
// (cuda_support.h), for ops that stage their own arguments (compression.cc).
class PendingStage {
 public:
  explicit PendingStage(std::shared_ptr<CudaStage> stage);
  ~PendingStage();
  PendingStage(const PendingStage&) = delete;
  PendingStage& operator=(const PendingStage&) = delete;
};

// Raises ValueError unless t is a defined, strided CPU tensor ("agentcomm <op>: ...").
void checkTensor(const at::Tensor& t, const char* op);

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
