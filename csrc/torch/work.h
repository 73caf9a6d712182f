#pragma once
// The Work (and Future) of one op: what torch's callers wait on. Finished by
// the thread that ran the op, by a transport reader for receives nobody
// holds the future of yet, or by the completion lane; future callbacks run
// on the completing thread, never under a lock of ours.
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/flight_recorder.h"
#include "torch/cuda_support.h"

namespace agentcomm::torch_adapter {

class AgentWork : public c10d::Work {
 public:
  // cuda: the stream side of an op on CUDA tensors (null for CPU ones); its
  // future is then a CUDA future and wait() blocks the caller's stream, not the host.
  AgentWork(int rank, c10d::OpType type, const char* title, std::vector<at::Tensor> outputs,
            std::chrono::milliseconds defaultWait, StagePtr cuda = nullptr);
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
  StagePtr cuda_;
  std::mutex futureMu_;           // futureTaken_, futurePending_, pendingError_
  bool futureTaken_ = false;      // getFuture() was called
  bool futurePending_ = false;    // finished by completeWithoutCallbacks; the future not yet marked
  std::exception_ptr pendingError_;
  std::shared_ptr<FlightRecorder> recorder_;
  uint64_t recordId_ = 0;
  std::atomic<bool> recordEnded_{false};
  const char* algorithm_ = "";  // written by the running thread before complete*, read there
};

}  // namespace agentcomm::torch_adapter
