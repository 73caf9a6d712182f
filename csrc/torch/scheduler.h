#pragma once
// The order in which one group's ops run, and on which thread. Torch-free (it
// sees an op as two closures), so it compiles fast and could serve any binding.
//
// Collectives run one at a time on the worker, in an order every rank agrees
// on even when future callbacks issue collectives from other threads (torch's
// PowerSGD hook does, and even waits for them inside the callback). Each op
// is a node; an op issued while the completion of op P runs (its future
// callbacks, on a completion thread) becomes a child of P. The worker runs
// the forest depth-first: after P, P's children in issue order, then P's next
// sibling, and it moves past P only once P's completion returned. Completions
// run on a small pool that grows when every thread is blocked (a callback
// waiting on a child's future must not stop that child's own completion).
//
// A small op (or one its caller waits for at once) may run inline on the
// calling thread when nothing is queued or running: it completes before the
// caller can attach a callback, so the ordering above is unchanged.
//
// Point-to-point sends have their own lane (a send never waits behind a
// collective or a large send behind a small one's thread), and completions
// that must not run on a transport reader (receives' copy-backs and futures)
// a lane of their own.
#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "core/lane.h"

namespace agentcomm::torch_adapter {

// Ops (and sends) up to this size may run on the calling thread.
constexpr size_t kInlineMaxBytes = 64 * 1024;

// One op as the scheduler sees it. run: the op itself (its error returned,
// never thrown; empty: nothing to run). complete: finishes its Work with that
// error; future callbacks run inside it (empty: completed elsewhere, e.g. a
// rendezvous send by the receiver's answer).
struct ScheduledOp {
  std::function<std::exception_ptr()> run;
  std::function<void(std::exception_ptr)> complete;
};

class Scheduler {
 public:
  // shutdownError: the error of an op that never ran because the group shut down.
  explicit Scheduler(std::function<std::exception_ptr()> shutdownError);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // The group's op counter (c10d's sequence number), taken at issue time.
  uint64_t nextSequenceNumber() { return ++sequence_; }
  uint64_t sequenceNumber() const { return sequence_.load(); }
  void resetSequenceNumber() { sequence_.store(0); }

  // A collective; throws shutdownError() once stopIssuing() began.
  void collective(ScheduledOp op, bool mayInline);
  // A point-to-point send, on the send lane.
  void send(ScheduledOp op);
  // Runs `attempt` on the calling thread if the send lane is idle (see Lane).
  bool sendInlineIfIdle(const std::function<bool()>& attempt);
  // A completion that must not run where it was noticed (op.complete(nullptr) on the completion lane).
  void completion(ScheduledOp op);

  // Stops the worker (queued collectives fail with shutdownError), the
  // completion pool and the send lane (queued sends fail). Completions keep
  // running until stopCompleting(), which drains them.
  void stopIssuing();
  void stopCompleting();

 private:
  struct Node {
    ScheduledOp op;
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

  std::function<std::exception_ptr()> shutdownError_;
  std::atomic<uint64_t> sequence_{0};
  std::mutex mu_;                 // everything below up to worker_
  std::condition_variable cv_;
  Node root_;
  std::vector<std::shared_ptr<Node>> nodesInFlight_;  // frames on the worker's stack
  bool stopping_ = false;
  bool workerBusy_ = false;     // the worker runs a node or waits on its subtree
  bool inlineRunning_ = false;  // a caller is running an op inline
  std::thread worker_;  // started (under mu_) by the first op queued for it
  CompletionPool completionPool_;
  Lane<ScheduledOp> sends_;
  Lane<ScheduledOp> completions_;
};

}  // namespace agentcomm::torch_adapter
