#include "transport/tcp/event_loop.h"

#include <errno.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <vector>

#include "core/error.h"
#include "core/logging.h"
#include "core/thread_name.h"

namespace agentcomm::transport {

std::shared_ptr<EventLoop> EventLoop::shared() {
  static std::mutex mu;
  static std::weak_ptr<EventLoop> current;
  static pid_t owner = 0;
  std::lock_guard<std::mutex> lock(mu);
  if (owner == ::getpid()) {
    if (auto loop = current.lock()) return loop;
  }
  // First use, the last user gone, or a child after fork() (the parent's
  // loop thread does not exist here): a new loop.
  std::shared_ptr<EventLoop> loop(new EventLoop());
  current = loop;
  owner = ::getpid();
  return loop;
}

EventLoop::EventLoop()
    : ep_(::epoll_create1(EPOLL_CLOEXEC)), wake_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
  AC_CHECK(ep_ >= 0 && wake_ >= 0, CommError, "agentcomm: cannot create the TCP event loop: ", errnoText(errno));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = 0;  // the wake-up
  AC_CHECK(::epoll_ctl(ep_, EPOLL_CTL_ADD, wake_, &ev) == 0, CommError,
           "agentcomm: cannot watch the event loop's wake-up: ", errnoText(errno));
  thread_ = std::thread([this] { loop(); });
}

EventLoop::~EventLoop() {
  stopping_.store(true);
  const uint64_t one = 1;
  [[maybe_unused]] const ssize_t w = ::write(wake_, &one, sizeof one);
  if (thread_.joinable()) {
    if (onLoopThread()) {
      thread_.detach();  // the last user let go from inside a handler: the loop ends after it returns
    } else {
      thread_.join();
    }
  }
  ::close(wake_);
  ::close(ep_);
}

void EventLoop::add(int fd, Handler* h, uint32_t tag) {
  std::lock_guard<std::recursive_mutex> lock(dispatchMu_);
  const uint64_t id = nextId_++;
  regs_.emplace(id, Registration{h, tag, fd});
  byFd_[fd] = id;
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP;
  ev.data.u64 = id;
  if (::epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev) != 0) {
    const int err = errno;
    regs_.erase(id);
    byFd_.erase(fd);
    throw CommError(strCat("agentcomm: cannot watch a TCP connection (epoll_ctl): ", errnoText(err)));
  }
}

void EventLoop::remove(int fd) {
  std::lock_guard<std::recursive_mutex> lock(dispatchMu_);
  auto it = byFd_.find(fd);
  if (it == byFd_.end()) return;
  ::epoll_ctl(ep_, EPOLL_CTL_DEL, fd, nullptr);
  regs_.erase(it->second);
  byFd_.erase(it);
}

void EventLoop::detach(Handler* h, const std::function<void()>& last) {
  std::lock_guard<std::recursive_mutex> lock(dispatchMu_);
  std::vector<int> fds;
  for (const auto& [id, reg] : regs_)
    if (reg.handler == h) fds.push_back(reg.fd);
  for (int fd : fds) remove(fd);
  if (last) last();
}

void EventLoop::locked(const std::function<void()>& fn) {
  std::lock_guard<std::recursive_mutex> lock(dispatchMu_);
  fn();
}

void EventLoop::loop() {
  threadId_.store(std::this_thread::get_id());
  nameThisThread("ac_tcp_events");
  std::vector<epoll_event> events(256);
  while (!stopping_.load()) {
    const int n = ::epoll_wait(ep_, events.data(), static_cast<int>(events.size()), -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      AC_LOG(Warn, "agentcomm: the TCP event loop stopped: epoll_wait: ", errnoText(errno));
      return;
    }
    std::lock_guard<std::recursive_mutex> lock(dispatchMu_);
    for (int i = 0; i < n; ++i) {
      const uint64_t id = events[static_cast<size_t>(i)].data.u64;
      if (id == 0) continue;  // woken to stop
      auto it = regs_.find(id);
      if (it == regs_.end()) continue;  // removed after this batch was fetched
      const Registration reg = it->second;  // the handler may remove it
      reg.handler->onReadable(reg.tag);
    }
  }
}

}  // namespace agentcomm::transport
