#include "torch/scheduler.h"

#include "core/thread_name.h"

namespace agentcomm::torch_adapter {

namespace {
// The op whose completion (future callbacks) this thread is running, per scheduler.
thread_local const void* tlScheduler = nullptr;
thread_local void* tlParent = nullptr;

void runOp(ScheduledOp& op) {
  std::exception_ptr error = op.run ? op.run() : nullptr;
  if (op.complete) op.complete(error);
}
}  // namespace

Scheduler::Scheduler(std::function<std::exception_ptr()> shutdownError) : shutdownError_(std::move(shutdownError)) {
  auto fail = [this](ScheduledOp& op) {
    if (op.complete) op.complete(shutdownError_());
  };
  sends_.start("ac_sends", runOp, fail);
  completions_.start("ac_completions", runOp, fail);
}

Scheduler::~Scheduler() {
  stopIssuing();
  stopCompleting();
}

void Scheduler::CompletionPool::submit(std::function<void()> task) {
  std::lock_guard<std::mutex> lock(mu_);
  tasks_.push_back(std::move(task));
  if (idle_ == 0) {
    // Every thread is busy (possibly blocked inside a callback): add one.
    threads_.emplace_back([this] {
      nameThisThread("ac_callbacks");
      std::unique_lock<std::mutex> lk(mu_);
      while (true) {
        if (tasks_.empty()) {
          if (stopping_) return;
          ++idle_;
          cv_.wait(lk, [&] { return stopping_ || !tasks_.empty(); });
          --idle_;
          continue;
        }
        auto t = std::move(tasks_.front());
        tasks_.pop_front();
        lk.unlock();
        t();
        lk.lock();
      }
    });
  } else {
    cv_.notify_one();
  }
}

void Scheduler::CompletionPool::stop() {
  std::vector<std::thread> threads;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    cv_.notify_all();
  }
  // Threads may be added while we join (a task submitting more): loop until none are left.
  while (true) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (threads_.empty()) break;
      threads.swap(threads_);
    }
    for (auto& t : threads) t.join();
    threads.clear();
  }
}

void Scheduler::workerLoop() {
  std::vector<Node*> stack = {&root_};
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    Node* frame = stack.back();
    if (!frame->children.empty() && (frame != &root_ || (!stopping_ && !inlineRunning_))) {
      std::shared_ptr<Node> node = frame->children.front();
      frame->children.pop_front();
      workerBusy_ = true;
      lock.unlock();
      node->error = node->op.run();
      completionPool_.submit([this, node] {
        tlScheduler = this;
        tlParent = node.get();
        node->op.complete(node->error);
        tlScheduler = nullptr;
        tlParent = nullptr;
        std::lock_guard<std::mutex> lk(mu_);
        node->closed = true;
        cv_.notify_all();
      });
      lock.lock();
      // Keep the node alive while it is a frame: its children hang off it.
      nodesInFlight_.push_back(node);
      stack.push_back(node.get());
      continue;
    }
    if (frame != &root_ && frame->closed && frame->children.empty()) {
      stack.pop_back();
      if (stack.size() == 1) workerBusy_ = false;
      for (auto it = nodesInFlight_.begin(); it != nodesInFlight_.end(); ++it) {
        if (it->get() == frame) {
          nodesInFlight_.erase(it);
          break;
        }
      }
      continue;
    }
    if (frame == &root_ && stopping_) break;
    cv_.wait(lock);
  }
  // Stopping: whatever is still queued at top level fails without running.
  std::deque<std::shared_ptr<Node>> left;
  left.swap(root_.children);
  lock.unlock();
  for (auto& node : left) node->op.complete(shutdownError_());
}

void Scheduler::collective(ScheduledOp op, bool mayInline) {
  if (mayInline && tlScheduler != this) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!stopping_ && !workerBusy_ && !inlineRunning_ && root_.children.empty()) {
      inlineRunning_ = true;  // the worker leaves the queue alone until we are done
      lock.unlock();
      std::exception_ptr error = op.run();
      op.complete(error);  // the caller has not seen the Work yet: no callbacks to run
      lock.lock();
      inlineRunning_ = false;
      // Wake the worker only if something was queued meanwhile (it waits for
      // inlineRunning_ only then): a wake-up per op costs a context switch.
      const bool queued = !root_.children.empty();
      lock.unlock();
      if (queued) cv_.notify_all();
      return;
    }
  }
  auto node = std::make_shared<Node>();
  node->op = std::move(op);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) std::rethrow_exception(shutdownError_());
    Node* parent = (tlScheduler == this && tlParent != nullptr) ? static_cast<Node*>(tlParent) : &root_;
    parent->children.push_back(std::move(node));
    // The worker starts with the first op that is not run inline (a group
    // used only by blocking calls never needs one).
    if (!worker_.joinable()) worker_ = std::thread([this] {
      nameThisThread("ac_worker");
      workerLoop();
    });
  }
  cv_.notify_all();
}

void Scheduler::send(ScheduledOp op) { sends_.push(std::move(op)); }

bool Scheduler::sendInlineIfIdle(const std::function<bool()>& attempt) { return sends_.runInlineIfIdle(attempt); }

void Scheduler::completion(ScheduledOp op) { completions_.push(std::move(op)); }

void Scheduler::stopIssuing() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    cv_.notify_all();
  }
  if (worker_.joinable()) worker_.join();  // set under mu_ before stopping_: seen here
  completionPool_.stop();
  sends_.stop(false);
}

void Scheduler::stopCompleting() { completions_.stop(true); }

}  // namespace agentcomm::torch_adapter
