#pragma once
// A single-thread executor: jobs run one at a time, in the order pushed, on
// the lane's own thread, or on a caller's thread through runInlineIfIdle when
// nothing is queued or running (the order still holds: the lane's thread
// waits for the inline job). Used for sends, completions and rendezvous
// answers, each of which must never wait behind the others.
//
// The thread starts with the first job pushed (a lane that only ever runs
// inline, or never, costs no thread: a process with many groups keeps few).
//
// Invariants: at most one job runs at a time (busy_); a job pushed after
// stop(), or left queued by stop(false), is never run: `drop` receives it
// (on the pushing or stopping thread) so that its owner can fail it.
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "core/thread_name.h"

namespace agentcomm {

template <typename Job>
class Lane {
 public:
  Lane() = default;
  Lane(const Lane&) = delete;
  Lane& operator=(const Lane&) = delete;
  ~Lane() { stop(false); }

  // exec runs each job on the lane's thread (named `name`, at most 15
  // characters); drop gets the jobs that never run. Call once, before any push.
  void start(const char* name, std::function<void(Job&)> exec, std::function<void(Job&)> drop = {}) {
    name_ = name;
    exec_ = std::move(exec);
    drop_ = std::move(drop);
  }

  void push(Job job) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!stopping_) {
        queue_.push_back(std::move(job));
        if (!thread_.joinable()) thread_ = std::thread([this] { loop(); });
        cv_.notify_one();
        return;
      }
    }
    if (drop_) drop_(job);
  }

  // Runs fn on the calling thread when nothing is queued or running. True if
  // fn ran and returned true (it did the job); false otherwise (push it instead).
  bool runInlineIfIdle(const std::function<bool()>& fn) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_ || busy_ || !queue_.empty()) return false;
      busy_ = true;
    }
    const bool done = fn();
    {
      std::lock_guard<std::mutex> lock(mu_);
      busy_ = false;
    }
    cv_.notify_all();  // jobs pushed meanwhile waited for us
    return done;
  }

  // Joins the thread; jobs still queued run first (drain) or are dropped. Idempotent.
  void stop(bool drain) {
    std::deque<Job> left;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
      if (!drain) left.swap(queue_);
      cv_.notify_all();
    }
    // thread_ is only set under mu_ before stopping_ (push): seen here.
    if (thread_.joinable()) thread_.join();
    if (drop_)
      for (auto& job : left) drop_(job);
  }

 private:
  void loop() {
    nameThisThread(name_);
    while (true) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return !busy_ && (stopping_ || !queue_.empty()); });
        if (queue_.empty()) return;  // stopping, and nothing (left) to drain
        job = std::move(queue_.front());
        queue_.pop_front();
        busy_ = true;
      }
      exec_(job);
      std::lock_guard<std::mutex> lock(mu_);
      busy_ = false;
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  bool stopping_ = false;
  bool busy_ = false;  // a job runs (on the lane's thread or inline)
  std::thread thread_;  // started by the first push (under mu_)
  const char* name_ = "ac_lane";
  std::function<void(Job&)> exec_;
  std::function<void(Job&)> drop_;
};

}  // namespace agentcomm
