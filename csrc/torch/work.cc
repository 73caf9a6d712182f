#include "torch/work.h"

#include <c10/util/Exception.h>

#include "core/error.h"

namespace agentcomm::torch_adapter {

AgentWork::AgentWork(int rank, c10d::OpType type, const char* title, std::vector<at::Tensor> outputs,
                     std::chrono::milliseconds defaultWait, StagePtr cuda)
    : c10d::Work(rank, type, title),
      title_(title),
      outputs_(std::move(outputs)),
      future_(c10::make_intrusive<c10::ivalue::Future>(c10::ListType::create(c10::TensorType::get()),
                                                       cuda ? cuda->devices() : std::vector<c10::Device>{})),
      defaultWait_(defaultWait),
      cuda_(std::move(cuda)) {}

void AgentWork::record(const std::shared_ptr<FlightRecorder>& recorder, uint64_t seq, bool p2p, int peer) {
  if (!recorder || recorder->capacity() == 0) return;
  recorder_ = recorder;
  std::string_view op = title_;
  if (op.starts_with("agentcomm:")) op.remove_prefix(10);
  const char* dtype = "";
  uint64_t count = 0;
  for (const auto& t : outputs_) {
    if (!t.defined()) continue;
    if (*dtype == 0) dtype = c10::toString(t.scalar_type());
    count += static_cast<uint64_t>(t.numel());
  }
  recordId_ = recorder_->scheduled(seq, op.data(), p2p, peer, dtype, count);
}

void AgentWork::recordStarted() {
  if (recorder_) recorder_->started(recordId_);
}

void AgentWork::recordEnded(const std::exception_ptr& eptr) {
  if (!recorder_ || recordEnded_.exchange(true)) return;
  std::string error;
  if (eptr) {
    try {
      std::rethrow_exception(eptr);
    } catch (const c10::Error& e) {
      error = e.what_without_backtrace();
    } catch (const std::exception& e) {
      error = e.what();
    } catch (...) {
      error = "unknown error";
    }
  }
  recorder_->ended(recordId_, algorithm_, error);
}

void AgentWork::complete(std::exception_ptr eptr) {
  recordEnded(eptr);
  finish(eptr);
  // Future callbacks (DDP's, comm hooks') run here, on the completing thread.
  if (eptr) {
    future_->setError(eptr);
  } else if (cuda_) {
    cuda_->markCompleted(*future_, c10::IValue(outputs_));  // callbacks' streams wait for the result
  } else {
    future_->markCompleted(c10::IValue(outputs_));
  }
}

bool AgentWork::completeWithoutCallbacks(std::exception_ptr eptr) {
  {
    std::lock_guard<std::mutex> lock(futureMu_);
    if (futureTaken_) return false;
    futurePending_ = true;
    pendingError_ = eptr;
  }
  recordEnded(eptr);
  finish(eptr);
  return true;
}

c10::intrusive_ptr<c10::ivalue::Future> AgentWork::getFuture() {
  std::exception_ptr eptr;
  bool mark = false;
  {
    std::lock_guard<std::mutex> lock(futureMu_);
    futureTaken_ = true;
    std::swap(mark, futurePending_);
    eptr = pendingError_;
  }
  if (mark) {  // no callback can be attached yet: marking here runs none
    if (eptr)
      future_->setError(eptr);
    else
      future_->markCompleted(c10::IValue(outputs_));
  }
  return future_;
}

void AgentWork::synchronize() {
  if (cuda_) cuda_->blockCurrentStream();
}

bool AgentWork::wait(std::chrono::milliseconds timeout) {
  if (timeout != ::kNoTimeout || !onWaitTimeout) {
    const bool done = c10d::Work::wait(timeout);
    if (cuda_) cuda_->blockCurrentStream();  // the host waited for the op to be queued, not run
    return done;
  }
  // A receive has no worker enforcing a deadline: bound the wait by the group's timeout.
  std::unique_lock<std::mutex> lock(mutex_);
  if (!cv_.wait_for(lock, defaultWait_, [&] { return completed_; })) {
    lock.unlock();
    onWaitTimeout(strCat("agentcomm: recv timed out after ", defaultWait_.count(), " ms"));
    lock.lock();
    cv_.wait(lock, [&] { return completed_; });
  }
  if (exception_) std::rethrow_exception(exception_);
  if (cuda_) cuda_->blockCurrentStream();
  return true;
}

}  // namespace agentcomm::torch_adapter
