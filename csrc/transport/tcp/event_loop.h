#pragma once
// One reader thread per process for every TCP connection of every group
// (epoll, level-triggered), instead of one per group: a process's reading
// threads stay at one whatever its world size and number of groups (as Gloo's
// loop per device). Transports register their sockets with a handler; the
// loop calls handler->onReadable(tag) when a socket has data or hung up.
//
// Invariants:
//   - Handlers run on the loop's thread only, one at a time, holding
//     dispatchMu_; a handler must never block on another delivery (it would
//     stall every group's reading), as the per-group readers before it.
//   - After detach(handler) returns, no call into that handler runs or will
//     run: detach removes its sockets under dispatchMu_, and an event fetched
//     before for a removed socket finds no registration (ids, not pointers,
//     travel through epoll) and is skipped. The lock is re-entrant: a handler
//     (on the loop's thread, holding it) may add and remove sockets.
//   - The loop lives while any transport holds it (shared()); the last one
//     joins the thread. A child process after fork() gets a fresh loop.
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>

namespace agentcomm::transport {

class EventLoop {
 public:
  class Handler {
   public:
    virtual ~Handler() = default;
    // The socket registered with `tag` is readable (or closed): read what is
    // there without blocking, then return.
    virtual void onReadable(uint32_t tag) = 0;
  };

  // The process's loop (started on first use).
  static std::shared_ptr<EventLoop> shared();
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Starts watching fd for h (tag: h's name for it). Throws CommError.
  void add(int fd, Handler* h, uint32_t tag);
  // Stops watching fd. From the loop's thread (inside a handler) or any other.
  void remove(int fd);
  // Stops watching every socket of h, then runs `last` (if any) under the
  // dispatch lock: no handler call of h runs concurrently or afterwards.
  void detach(Handler* h, const std::function<void()>& last = {});
  // Runs fn under the dispatch lock (no handler runs meanwhile); fn may call
  // add and remove. Handlers may call it too (the lock is re-entrant).
  void locked(const std::function<void()>& fn);

 private:
  EventLoop();
  void loop();
  bool onLoopThread() const { return std::this_thread::get_id() == threadId_.load(); }

  struct Registration {
    Handler* handler;
    uint32_t tag;
    int fd;
  };
  const int ep_;
  const int wake_;  // eventfd: stop
  std::atomic<bool> stopping_{false};
  // Held by the loop while it calls handlers; regs_, byFd_, nextId_.
  // Re-entrant: a handler (or locked()'s fn) may add and remove sockets.
  std::recursive_mutex dispatchMu_;
  std::unordered_map<uint64_t, Registration> regs_;
  std::unordered_map<int, uint64_t> byFd_;
  uint64_t nextId_ = 1;
  std::atomic<std::thread::id> threadId_{};
  std::thread thread_;
};

}  // namespace agentcomm::transport
