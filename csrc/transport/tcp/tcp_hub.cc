#include "transport/tcp/tcp_hub.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <random>

#include "core/error.h"
#include "core/logging.h"

namespace agentcomm::transport {
namespace {

constexpr uint32_t kHelloMagic = 0x41434832;  // "ACH2"
constexpr std::chrono::milliseconds kHelloTimeout{2000};
// Accepted connections whose hello is still outstanding, at most: a flood
// beyond this evicts the oldest (whose time is nearly up).
constexpr size_t kMaxPendingHellos = 1024;
// Event-loop tags: links by their slot index, below kPendingTag.
constexpr uint32_t kPendingTag = 0x40000000;  // | a handshake's id
constexpr uint32_t kListenTag = 0x7fffffff;   // the listener

#pragma pack(push, 1)
struct Hello {
  uint32_t magic;
  uint32_t reserved;
  uint64_t process;      // the sender's hub id
  uint8_t token[16];     // a group both processes are in (dialer: the one it dials for)
};
#pragma pack(pop)

int remainingMs(Deadline deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  if (left <= 0) return 0;
  return left > 1000000 ? 1000000 : static_cast<int>(left);
}

// Writes the iovecs fully with non-blocking sends and poll, so a dead or
// stopped peer cannot hold us past the deadline. Returns 0, or an errno
// (ETIMEDOUT when the deadline passed).
int writeAll(int fd, iovec* iov, int iovcnt, Deadline deadline) {
  while (iovcnt > 0) {
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<size_t>(iovcnt);
    ssize_t w = ::sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return errno;
      pollfd pfd{fd, POLLOUT, 0};
      int pr = ::poll(&pfd, 1, remainingMs(deadline));
      if (pr == 0) return ETIMEDOUT;
      if (pr < 0 && errno != EINTR) return errno;
      continue;
    }
    size_t written = static_cast<size_t>(w);
    while (iovcnt > 0 && written >= iov->iov_len) {
      written -= iov->iov_len;
      ++iov;
      --iovcnt;
    }
    if (iovcnt > 0) {
      iov->iov_base = static_cast<uint8_t*>(iov->iov_base) + written;
      iov->iov_len -= written;
    }
  }
  return 0;
}

// IPv4 address of `ifname`, or (empty ifname) of the first up, non-loopback
// interface; "127.0.0.1" if there is none.
std::string pickAddress(const std::string& ifname) {
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) {
    AC_CHECK(ifname.empty(), CommError, "agentcomm: getifaddrs failed: ", errnoText(errno));
    return "127.0.0.1";
  }
  std::string found;
  for (ifaddrs* it = list; it != nullptr; it = it->ifa_next) {
    if (it->ifa_addr == nullptr || it->ifa_addr->sa_family != AF_INET) continue;
    if (!(it->ifa_flags & IFF_UP)) continue;
    if (!ifname.empty()) {
      if (ifname != it->ifa_name) continue;
    } else if (it->ifa_flags & IFF_LOOPBACK) {
      continue;
    }
    char buf[INET_ADDRSTRLEN];
    ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(it->ifa_addr)->sin_addr, buf, sizeof(buf));
    found = buf;
    break;
  }
  ::freeifaddrs(list);
  if (found.empty()) {
    AC_CHECK(ifname.empty(), InvalidArgument, "agentcomm: AGENTCOMM_SOCKET_IFNAME=", ifname,
             " names no up interface with an IPv4 address");
    return "127.0.0.1";
  }
  return found;
}

void setNoDelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

uint64_t groupId(const uint8_t* token) {
  uint64_t id = 0;
  std::memcpy(&id, token, sizeof id);
  return id;
}

}  // namespace

TcpLink::~TcpLink() { ::close(fd); }

// A link being read (loop thread, under the dispatch lock): a route and a
// header, then the payload where the group's mailbox says, or into the sink.
struct TcpHub::Slot {
  std::shared_ptr<TcpLink> link;
  uint8_t head[sizeof(TcpRoute) + sizeof(Header)]{};
  size_t headGot = 0;
  TcpRoute route{};
  Header h{};
  bool inBody = false;
  enum class Body { Data, Text, Drain } body = Body::Drain;
  Group* group = nullptr;  // the frame's group (null: drained)
  Mailbox::Delivery d;
  uint8_t* dst = nullptr;  // null in a body: drain
  uint64_t left = 0;
  std::string text;
  bool done = false;
};

struct TcpHub::Pending {
  uint32_t id = 0;
  int fd = -1;
  std::string from;
  Hello hello{};
  size_t got = 0;  // hello bytes read so far
  Deadline until;
};

std::shared_ptr<TcpHub> TcpHub::forProcess(const std::string& ifname) {
  static std::mutex mu;
  static std::map<std::string, std::weak_ptr<TcpHub>> current;
  static pid_t owner = 0;
  std::lock_guard<std::mutex> lock(mu);
  if (owner != ::getpid()) {
    // A child after fork(): the parent's endpoints are not ours (their
    // sockets are shared with the parent; they are left alone, not closed).
    for (auto& [name, weak] : current) new std::shared_ptr<TcpHub>(weak.lock());  // never released
    current.clear();
    owner = ::getpid();
  }
  if (auto hub = current[ifname].lock()) return hub;
  auto hub = create(ifname);
  current[ifname] = hub;
  return hub;
}

std::shared_ptr<TcpHub> TcpHub::create(const std::string& ifname) {
  return std::shared_ptr<TcpHub>(new TcpHub(ifname));
}

TcpHub::TcpHub(const std::string& ifname) : ifname_(ifname) {
  std::random_device rd;
  id_ = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  address_ = pickAddress(ifname);
  // Listen first, publish second (the groups do): a peer that reads our
  // address can connect at once.
  int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  AC_CHECK(lfd >= 0, CommError, "agentcomm: socket() failed: ", errnoText(errno));
  int one = 1;
  ::setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = 0;
  if (ifname.empty()) {
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
  } else {
    ::inet_pton(AF_INET, address_.c_str(), &addr.sin_addr);
  }
  if (::bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || ::listen(lfd, SOMAXCONN) != 0) {
    int err = errno;
    ::close(lfd);
    throw CommError(strCat("agentcomm: cannot listen on ", address_, ": ", errnoText(err)));
  }
  socklen_t len = sizeof(addr);
  ::getsockname(lfd, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
  listenFd_ = lfd;
  sink_.resize(65536);
  loop_ = EventLoop::shared();
  try {
    loop_->add(listenFd_, this, kListenTag);
  } catch (...) {
    ::close(lfd);
    throw;
  }
  AC_LOG(Info, "tcp endpoint: listening on ", address_, ":", port_, ifname.empty() ? "" : strCat(" (", ifname, ")"));
}

TcpHub::~TcpHub() {
  closing_.store(true);
  // Every group has detached (each holds the hub): nothing more is delivered.
  loop_->detach(this, [this] {
    for (auto& p : pending_) ::close(p->fd);
    pending_.clear();
    for (auto& s : slots_)
      if (s && s->link) cut(*s->link);
    slots_.clear();
  });
  ::close(listenFd_);
}

bool TcpHub::knownToken(const JobToken& token) {
  std::lock_guard<std::mutex> lock(mu_);
  return std::find(tokens_.begin(), tokens_.end(), token) != tokens_.end();
}

void TcpHub::attach(const JobToken& token, Group* group) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    tokens_.push_back(token);
  }
  loop_->locked([&] { groups_[groupId(token.data())] = group; });
}

void TcpHub::detach(const JobToken& token) {
  const uint64_t gid = groupId(token.data());
  loop_->locked([&] {
    auto it = groups_.find(gid);
    if (it == groups_.end()) return;
    Group* g = it->second;
    groups_.erase(it);
    // A frame of this group half read: the rest is drained.
    for (auto& s : slots_) {
      if (!s || s->group != g) continue;
      if (s->inBody && s->body == Slot::Body::Data && s->d.accepted) g->groupMailbox().endDelivery(s->d, false);
      s->group = nullptr;
      s->body = Slot::Body::Drain;
      s->dst = nullptr;
      s->d = Mailbox::Delivery{};
    }
  });
  std::lock_guard<std::mutex> lock(mu_);
  auto it = std::find(tokens_.begin(), tokens_.end(), token);
  if (it != tokens_.end()) tokens_.erase(it);
}

TcpHub::Remote& TcpHub::remote(uint64_t peer) {
  auto& r = remotes_[peer];
  if (!r) r = std::make_unique<Remote>();
  return *r;
}

void TcpHub::cut(TcpLink& link) {
  link.alive.store(false);
  ::shutdown(link.fd, SHUT_RDWR);
}

int TcpHub::write(TcpLink& link, const TcpRoute& route, const Header& h, const void* data, Deadline deadline) {
  if (!link.alive.load()) return EPIPE;
  iovec iov[3] = {{const_cast<TcpRoute*>(&route), sizeof route},
                  {const_cast<Header*>(&h), sizeof h},
                  {const_cast<void*>(data), static_cast<size_t>(h.nbytes)}};
  const int err = writeAll(link.fd, iov, h.nbytes > 0 ? 3 : 2, deadline);
  if (err != 0) cut(link);  // part of a frame may be out: the link is unusable for every group
  return err;
}

// ---------------------------------------------------------------- links

std::shared_ptr<TcpLink> TcpHub::install(uint64_t peer, int fd, bool holdSendLock) {
  setNoDelay(fd);
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  auto link = std::make_shared<TcpLink>(fd, peer);
  if (holdSendLock) link->sendMutex.lock();  // the caller's hello goes first
  loop_->locked([&] {
    auto s = std::make_unique<Slot>();
    s->link = link;
    const auto tag = static_cast<uint32_t>(slots_.size());
    slots_.push_back(std::move(s));
    loop_->add(fd, this, tag);
    {
      std::lock_guard<std::mutex> lock(mu_);
      Remote& r = remote(peer);
      if (!r.first || !r.first->alive.load()) r.first = link;
    }
    linkCount_.fetch_add(1);
    linked_.notify_all();
  });
  return link;
}

void TcpHub::announce(const std::shared_ptr<TcpLink>& link) {
  loop_->locked([&] {
    for (auto& [gid, g] : groups_) g->onLinkUp(link);
  });
}

void TcpHub::cutLinksTo(uint64_t peer) {
  loop_->locked([&] {
    for (auto& s : slots_)
      if (s && s->link && s->link->peer == peer) cut(*s->link);
  });
}

std::shared_ptr<TcpLink> TcpHub::awaitLink(uint64_t peer, Deadline deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  Remote& r = remote(peer);
  linked_.wait_until(lock, deadline, [&] { return r.first && r.first->alive.load(); });
  return r.first && r.first->alive.load() ? r.first : nullptr;
}

std::shared_ptr<TcpLink> TcpHub::linkTo(uint64_t peer, const std::string& target, int port, const JobToken& token,
                                        const std::string& who, Deadline deadline, bool mayDial) {
  AC_CHECK(peer != id_, InvalidArgument, "agentcomm: ", who,
           " is in this very process: two ranks of one group share one TCP endpoint (each rank of a "
           "process group must be its own process; tests running ranks as threads give each its own "
           "TcpOptions::hub)");
  Remote* r = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    r = &remote(peer);
    if (r->first && r->first->alive.load()) return r->first;
  }
  if (!mayDial) return nullptr;
  if (!r->dialMutex.try_lock_until(deadline)) throw TimeoutError(strCat("agentcomm: timed out connecting to ", who));
  std::lock_guard<std::timed_mutex> dialing(r->dialMutex, std::adopt_lock);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (r->first && r->first->alive.load()) return r->first;  // dialed by another group, or the peer dialed us
  }
  auto fail = [&](int err, bool timedOut) {
    const std::string msg = strCat("agentcomm: cannot connect to ", who, " at ", target, ":", port, ": ",
                                   timedOut ? std::string("no answer in time") : errnoText(err),
                                   " (it exited, crashed, or destroyed its process group)");
    if (timedOut) throw TimeoutError(msg);
    throw CommError(msg);
  };
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(static_cast<uint16_t>(port));
  ::inet_pton(AF_INET, target.c_str(), &to.sin_addr);
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) fail(errno, false);
  auto closeAndFail = [&](int err, bool timedOut) {
    ::close(fd);
    fail(err, timedOut);
  };
  if (::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof(to)) != 0) {
    if (errno != EINPROGRESS) closeAndFail(errno, false);
    pollfd pfd{fd, POLLOUT, 0};
    int pr = 0;
    do {
      pr = ::poll(&pfd, 1, remainingMs(deadline));
    } while (pr < 0 && errno == EINTR);
    if (pr == 0) closeAndFail(0, true);
    int err = 0;
    socklen_t elen = sizeof(err);
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen);
    if (err != 0) closeAndFail(err, false);
  }
  Hello mine{kHelloMagic, 0, id_, {}};
  std::memcpy(mine.token, token.data(), sizeof mine.token);
  iovec iov{&mine, sizeof mine};
  if (int err = writeAll(fd, &iov, 1, deadline); err != 0) closeAndFail(err, err == ETIMEDOUT);
  Hello theirs{};
  size_t got = 0;
  while (got < sizeof theirs) {
    const ssize_t n = ::recv(fd, reinterpret_cast<uint8_t*>(&theirs) + got, sizeof theirs - got, MSG_DONTWAIT);
    if (n > 0) {
      got += static_cast<size_t>(n);
      continue;
    }
    if (n == 0) closeAndFail(ECONNRESET, false);
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) closeAndFail(errno, false);
    pollfd pfd{fd, POLLIN, 0};
    if (::poll(&pfd, 1, remainingMs(deadline)) == 0) closeAndFail(0, true);
  }
  if (theirs.magic != kHelloMagic || theirs.process != peer ||
      std::memcmp(theirs.token, token.data(), sizeof theirs.token) != 0) {
    ::close(fd);
    throw CommError(strCat("agentcomm: handshake with ", who, " at ", target, ":", port,
                           " failed (not part of this job)"));
  }
  auto link = install(peer, fd, false);
  announce(link);
  return link;
}

// ---------------------------------------------------------------- handshakes (loop thread)

void TcpHub::dropPending(size_t i, const std::string& why) {
  AC_LOG(Warn, "dropped a connection from ", pending_[i]->from, ": ", why);
  loop_->remove(pending_[i]->fd);
  ::close(pending_[i]->fd);
  pending_.erase(pending_.begin() + static_cast<std::ptrdiff_t>(i));
}

void TcpHub::acceptPending() {
  const Deadline now = Clock::now();
  // A silent socket holds its slot until its hello time is up (checked here,
  // on the next connection): it never holds up the handshakes beside it.
  for (size_t i = pending_.size(); i-- > 0;)
    if (now >= pending_[i]->until) dropPending(i, "no hello in time");
  while (true) {
    sockaddr_in from{};
    socklen_t flen = sizeof(from);
    const int fd = ::accept4(listenFd_, reinterpret_cast<sockaddr*>(&from), &flen, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;  // EAGAIN: nothing more now
    }
    if (pending_.size() >= kMaxPendingHellos) dropPending(0, "too many connections owe their hello");
    auto p = std::make_unique<Pending>();
    p->id = nextPending_++ & ~kPendingTag;
    p->fd = fd;
    char fromText[INET_ADDRSTRLEN] = "?";
    ::inet_ntop(AF_INET, &from.sin_addr, fromText, sizeof(fromText));
    p->from = fromText;
    p->until = now + kHelloTimeout;
    loop_->add(fd, this, kPendingTag | p->id);
    pending_.push_back(std::move(p));
  }
}

void TcpHub::readHandshake(uint32_t id) {
  size_t i = 0;
  while (i < pending_.size() && pending_[i]->id != id) ++i;
  if (i == pending_.size()) return;
  Pending& p = *pending_[i];
  const ssize_t n = ::recv(p.fd, reinterpret_cast<uint8_t*>(&p.hello) + p.got, sizeof(Hello) - p.got, MSG_DONTWAIT);
  if (n > 0) {
    p.got += static_cast<size_t>(n);
  } else if (n == 0 || (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)) {
    return dropPending(i, "no hello");
  }
  if (p.got < sizeof(Hello)) return;
  const Hello theirs = p.hello;
  JobToken token;
  std::memcpy(token.data(), theirs.token, token.size());
  if (theirs.magic != kHelloMagic || !knownToken(token)) return dropPending(i, "wrong job token");
  if (theirs.process == id_) return dropPending(i, "a connection from this very process");
  const int fd = p.fd;
  loop_->remove(fd);
  pending_.erase(pending_.begin() + static_cast<std::ptrdiff_t>(i));
  // Installed before the reply (so the dialer, once answered, finds the link
  // here), holding its send lock so that no frame precedes the reply.
  auto link = install(theirs.process, fd, true);
  {
    std::lock_guard<std::timed_mutex> lock(link->sendMutex, std::adopt_lock);
    Hello mine{kHelloMagic, 0, id_, {}};
    std::memcpy(mine.token, theirs.token, sizeof mine.token);
    iovec iov{&mine, sizeof mine};
    if (writeAll(fd, &iov, 1, Clock::now() + kHelloTimeout) != 0) cut(*link);
  }
  announce(link);
}

// ---------------------------------------------------------------- reading (loop thread)

void TcpHub::finishSlot(Slot& s, bool lost) {
  if (s.inBody && s.body == Slot::Body::Data && s.d.accepted && s.group) s.group->groupMailbox().endDelivery(s.d, false);
  s.done = true;
  const std::shared_ptr<TcpLink> link = std::move(s.link);  // the fd closes with its last holder
  loop_->remove(link->fd);
  cut(*link);
  bool others = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Remote& r = remote(link->peer);
    if (r.first == link) r.first.reset();
    for (auto& other : slots_)
      if (other && other->link && other->link->peer == link->peer && other->link->alive.load()) {
        others = true;
        if (!r.first) r.first = other->link;
      }
  }
  if (lost && !closing_.load())
    for (auto& [gid, g] : groups_) g->onLinkLost(*link, others);
}

bool TcpHub::completeFrame(Slot& s) {
  s.inBody = false;
  Group* g = s.group;
  s.group = nullptr;
  if (g != nullptr && s.body == Slot::Body::Text) {
    if (s.h.kind == static_cast<uint8_t>(MsgKind::Abort)) g->onAbortFrame(s.route.src, s.text);
    else g->onLeave(s.route.src);
  } else if (g != nullptr && s.body == Slot::Body::Data && s.d.accepted) {
    g->groupMailbox().endDelivery(s.d, true);
  }
  s.d = Mailbox::Delivery{};
  return true;
}

// A link gets at most kReadBudget bytes per turn, so one large message cannot
// hold up the small ones of the others (of every group: the loop is the
// process's). Deliveries, rendezvous pulls and the mailbox's callbacks run on
// the loop's thread: none may block on another delivery.
void TcpHub::onReadable(uint32_t tag) {
  if (tag == kListenTag) return acceptPending();
  if ((tag & kPendingTag) != 0) return readHandshake(tag & ~kPendingTag);
  constexpr size_t kReadBudget = size_t{4} << 20;
  Slot& s = *slots_[tag];
  if (s.done) return;
  const int fd = s.link->fd;
  size_t budget = kReadBudget;
  while (budget > 0) {
    if (!s.inBody) {
      const ssize_t r = ::recv(fd, s.head + s.headGot, sizeof s.head - s.headGot, MSG_DONTWAIT);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      if (r <= 0) return finishSlot(s, true);
      s.headGot += static_cast<size_t>(r);
      if (s.headGot < sizeof s.head) continue;
      s.headGot = 0;
      std::memcpy(&s.route, s.head, sizeof s.route);
      std::memcpy(&s.h, s.head + sizeof s.route, sizeof s.h);
      auto it = groups_.find(s.route.group);
      Group* g = it == groups_.end() ? nullptr : it->second;
      std::string bad = validateHeader(s.h);
      if (bad.empty() && g != nullptr && (s.route.src < 0 || s.route.src >= g->groupSize() || s.route.src == g->groupRank()))
        bad = strCat("source rank ", s.route.src, " of a group of ", g->groupSize());
      if (!bad.empty()) {
        const std::string why = strCat("agentcomm: malformed frame from rank ", s.route.src, " (", bad,
                                       "); dropping the connection");
        AC_LOG(Warn, why);
        if (g != nullptr) g->onAbortFrame(-1, why);
        return finishSlot(s, true);
      }
      s.inBody = true;
      s.group = g;
      s.left = s.h.nbytes;
      const auto kind = static_cast<MsgKind>(s.h.kind);
      if (g == nullptr) {
        s.body = Slot::Body::Drain;  // a group destroyed here (or never made): drained
        s.dst = nullptr;
      } else if (kind == MsgKind::Abort || kind == MsgKind::Leave) {
        s.body = Slot::Body::Text;
        s.text.assign(static_cast<size_t>(std::min<uint64_t>(s.h.nbytes, 65536)), '\0');
        s.dst = reinterpret_cast<uint8_t*>(s.text.data());
        s.left = s.text.size();  // senders cap a reason at 64 KiB
      } else {
        s.body = Slot::Body::Data;
        s.d = g->groupMailbox().beginDelivery(s.route.src, s.h);
        s.dst = s.d.accepted ? static_cast<uint8_t*>(s.d.dst) : nullptr;
      }
      if (s.left == 0) completeFrame(s);
      continue;
    }
    const size_t want = static_cast<size_t>(std::min<uint64_t>(s.left, s.dst ? budget : sink_.size()));
    const ssize_t r = ::recv(fd, s.dst ? s.dst : sink_.data(), want, MSG_DONTWAIT);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (r <= 0) return finishSlot(s, true);
    if (s.dst) s.dst += r;
    s.left -= static_cast<uint64_t>(r);
    budget -= std::min(budget, static_cast<size_t>(r));
    if (s.left == 0) completeFrame(s);
  }
}

}  // namespace agentcomm::transport
