#include "transport/tcp/tcp_transport.h"

#include "transport/host.h"

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
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include "core/env.h"
#include "core/error.h"
#include "core/logging.h"
#include "core/thread_name.h"
#include "transport/fault.h"

namespace agentcomm::transport {
namespace {

constexpr uint32_t kHelloMagic = 0x41434831;  // "ACH1"
constexpr std::chrono::milliseconds kHelloTimeout{2000};
// Accepted connections whose hello is still outstanding, at most (setup).
// A flood beyond this evicts the oldest; the bound grows with the world, since
// every higher rank dials at once.
constexpr size_t kMaxPendingHellos = 256;
// Event-loop tags (connections are tagged by their index, below kPendingTag).
constexpr uint32_t kPendingTag = 0x40000000;  // | a handshake's id (lazy)
constexpr uint32_t kListenTag = 0x7fffffff;   // the listener (lazy)

#pragma pack(push, 1)
struct Hello {
  uint32_t magic;
  int32_t rank;
  int32_t size;
  uint8_t token[16];
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

// A peer's published "host-id address port pinned", and where to dial it
// from host `myHost`: loopback when it is on this host and nobody pinned an
// interface (loopback always works there), else its published address.
struct PeerAddress {
  std::string host;
  std::string target;
  int port = 0;
};
PeerAddress parsePeerAddress(const std::vector<uint8_t>& published, const std::string& myHost,
                             const std::string& ifname) {
  std::istringstream in(fromBytes(published));
  PeerAddress a;
  std::string addr;
  int pinned = 0;
  in >> a.host >> addr >> a.port >> pinned;
  a.target = (a.host == myHost && !pinned && ifname.empty()) ? "127.0.0.1" : addr;
  return a;
}

void setNoDelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

}  // namespace

struct TcpTransport::Conn {
  int fd = -1;
  int peer = -1;
  Reading reading;
};

struct TcpTransport::Pending {
  uint32_t id = 0;
  int fd = -1;
  std::string from;
  Hello hello{};
  size_t got = 0;  // hello bytes read so far
  Deadline until;
};

TcpTransport::TcpTransport(Store& store, int rank, int size, const TcpOptions& options)
    : Transport(rank, size), mailbox_(rank) {
  const Deadline deadline = Clock::now() + options.timeout;
  peers_.resize(size);
  for (int r = 0; r < size; ++r) peers_[r] = std::make_unique<Peer>();
  if (size == 1) return;

  std::string ifname = options.ifname;
  if (ifname.empty()) {
    if (const char* env = envText("AGENTCOMM_SOCKET_IFNAME")) ifname = env;
  }
  const std::string myHost = hostId();
  listenAddr_ = pickAddress(ifname);

  // Listen first, publish second: a peer that reads our address can connect at once.
  int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  AC_CHECK(lfd >= 0, CommError, "agentcomm: socket() failed: ", errnoText(errno));
  int one = 1;
  ::setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = 0;
  if (ifname.empty()) {
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
  } else {
    ::inet_pton(AF_INET, listenAddr_.c_str(), &addr.sin_addr);
  }
  if (::bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || ::listen(lfd, SOMAXCONN) != 0) {
    int err = errno;
    ::close(lfd);
    throw CommError(strCat("agentcomm: cannot listen on ", listenAddr_, ": ", errnoText(err)));
  }
  socklen_t len = sizeof(addr);
  ::getsockname(lfd, reinterpret_cast<sockaddr*>(&addr), &len);
  listenPort_ = ntohs(addr.sin_port);

  Hello mine{};
  mine.magic = kHelloMagic;
  mine.rank = rank;
  mine.size = size;
  // Rank 0 draws the job token and decides eager or lazy connections for the
  // group (a rank setting up eagerly waits for dials a lazy one never makes).
  const std::string tokenKey = options.keyPrefix + "token";
  if (rank == 0) {
    std::random_device rd;
    for (auto& b : mine.token) b = static_cast<uint8_t>(rd());
    eager_ = options.eager.value_or(envFlag("AGENTCOMM_EAGER_CONNECT", false));
    std::vector<uint8_t> value(std::begin(mine.token), std::end(mine.token));
    value.push_back(eager_ ? 1 : 0);
    store.set(tokenKey, value);
  } else {
    auto tok = store.get(tokenKey, options.timeout);
    AC_CHECK(tok.size() == sizeof(mine.token) + 1, CommError, "agentcomm: malformed job token in store");
    std::memcpy(mine.token, tok.data(), sizeof(mine.token));
    eager_ = tok.back() != 0;
  }
  store.set(strCat(options.keyPrefix, "addr/", rank),
            toBytes(strCat(myHost, " ", listenAddr_, " ", listenPort_, " ", ifname.empty() ? 0 : 1)));
  AC_LOG(Info, "tcp transport: rank ", rank, "/", size, " listening on ", listenAddr_, ":", listenPort_,
         ifname.empty() ? "" : strCat(" (", ifname, ")"), eager_ ? "" : " (connections on demand)");
  sink_.resize(65536);

  if (!eager_) {
    // Every peer's address now (each listened before publishing it); no
    // connection yet. The listener stays open, watched by the event loop.
    helloBytes_.assign(reinterpret_cast<const uint8_t*>(&mine), reinterpret_cast<const uint8_t*>(&mine) + sizeof mine);
    std::vector<std::string> keys;
    std::vector<int> ranks;
    for (int r = 0; r < size; ++r) {
      if (r == rank) continue;
      keys.push_back(strCat(options.keyPrefix, "addr/", r));
      ranks.push_back(r);
    }
    std::vector<std::vector<uint8_t>> values;
    try {
      values = store.multiGet(keys, options.timeout);
    } catch (...) {
      ::close(lfd);
      throw;
    }
    peerAddr_.resize(static_cast<size_t>(size));
    std::vector<int> local;  // lower ranks of this host: dialed now
    for (size_t i = 0; i < ranks.size(); ++i) {
      const PeerAddress a = parsePeerAddress(values[i], myHost, ifname);
      peerAddr_[static_cast<size_t>(ranks[i])] = strCat(a.target, " ", a.port);
      if (options.localAtSetup && a.host == myHost && ranks[i] < rank) local.push_back(ranks[i]);
    }
    ::fcntl(lfd, F_SETFL, ::fcntl(lfd, F_GETFL) | O_NONBLOCK);
    listenFd_ = lfd;
    // Each side dials a peer at most once (a second dial only when both dial
    // at once): 2 per peer at most.
    conns_.resize(2 * static_cast<size_t>(size));
    loop_ = EventLoop::shared();
    try {
      loop_->add(listenFd_, this, kListenTag);
      // The ranks of this host: every lower one now (each higher one dials
      // us; our listener takes it on the loop). A lower rank's dial may wait
      // in its listen backlog until its loop watches the listener: no order
      // between the ranks' setups is needed.
      for (int peer : local) connectionTo(peer, deadline, true);
    } catch (...) {
      loop_->detach(this, [this] {
        for (auto& p : pending_) ::close(p->fd);
        pending_.clear();
      });
      forEachConn([](Conn& c) { ::close(c.fd); });
      ::close(lfd);
      listenFd_ = -1;
      throw;
    }
    return;
  }

  auto closeAll = [&] {
    ::close(lfd);
    for (auto& p : peers_)
      if (p->fd >= 0) {
        ::close(p->fd);
        p->fd = -1;
      }
  };

  // Accept higher ranks on a helper thread while this thread connects to lower
  // ranks. Handshakes run side by side (one poll over the listening socket and
  // every accepted connection that still owes its hello), so a silent or
  // hostile socket (a port scanner, a half-dead peer) only holds its own slot
  // until its kHelloTimeout, never the handshakes behind it.
  std::string acceptError;
  bool timedOut = false;
  std::atomic<bool> stopAccepting{false};
  std::thread acceptor([&] {
    nameThisThread("ac_tcp_accept");
    struct Pending {
      int fd = -1;
      std::string from;
      Hello hello{};
      size_t got = 0;  // hello bytes read so far
      Deadline until;
    };
    std::vector<Pending> pending;
    auto drop = [&](size_t i, const std::string& why) {
      AC_LOG(Warn, "dropped a connection from ", pending[i].from, ": ", why);
      ::close(pending[i].fd);
      pending.erase(pending.begin() + static_cast<std::ptrdiff_t>(i));
    };
    int expected = size - 1 - rank;
    std::vector<pollfd> pfds;
    while (expected > 0 && !stopAccepting.load()) {
      pfds.assign(1, pollfd{lfd, POLLIN, 0});
      Deadline wake = deadline;
      for (const Pending& p : pending) {
        pfds.push_back(pollfd{p.fd, POLLIN, 0});
        wake = std::min(wake, p.until);
      }
      if (::poll(pfds.data(), pfds.size(), remainingMs(wake)) < 0 && errno != EINTR) continue;
      const Deadline now = Clock::now();
      if (now >= deadline) {
        timedOut = true;
        acceptError = strCat("agentcomm: timed out during setup waiting for ", expected,
                             " higher rank(s) to connect to rank ", rank);
        break;
      }
      for (size_t i = pending.size(); i-- > 0;) {  // back to front: drop() erases
        Pending& p = pending[i];
        if (pfds[i + 1].revents != 0) {
          const ssize_t r = ::recv(p.fd, reinterpret_cast<uint8_t*>(&p.hello) + p.got, sizeof(Hello) - p.got,
                                   MSG_DONTWAIT);
          if (r > 0) {
            p.got += static_cast<size_t>(r);
          } else if (r == 0 || (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)) {
            drop(i, "no hello");
            continue;
          }
        }
        if (p.got < sizeof(Hello)) {
          if (now >= p.until) drop(i, "no hello");
          continue;
        }
        const Hello& theirs = p.hello;
        std::string why;
        if (theirs.magic != kHelloMagic || std::memcmp(theirs.token, mine.token, sizeof(mine.token)) != 0) {
          why = "wrong job token";
        } else if (theirs.size != size || theirs.rank <= rank || theirs.rank >= size ||
                   peers_[theirs.rank]->fd >= 0) {
          why = strCat("unexpected rank ", theirs.rank, " of ", theirs.size);
        } else {
          iovec iov{&mine, sizeof(mine)};
          if (writeAll(p.fd, &iov, 1, std::min(deadline, now + kHelloTimeout)) != 0) why = "hello reply failed";
        }
        if (!why.empty()) {
          drop(i, why);
          continue;
        }
        peers_[theirs.rank]->fd = p.fd;
        --expected;
        pending.erase(pending.begin() + static_cast<std::ptrdiff_t>(i));
      }
      if ((pfds[0].revents & POLLIN) != 0 && !stopAccepting.load()) {
        sockaddr_in from{};
        socklen_t flen = sizeof(from);
        const int fd = ::accept4(lfd, reinterpret_cast<sockaddr*>(&from), &flen, SOCK_CLOEXEC);
        if (fd >= 0) {
          char fromText[INET_ADDRSTRLEN] = "?";
          ::inet_ntop(AF_INET, &from.sin_addr, fromText, sizeof(fromText));
          // Bounded: a flood of silent connections evicts the oldest, whose time is nearly up.
          if (pending.size() >= std::max(kMaxPendingHellos, 2 * static_cast<size_t>(size)))
            drop(0, "too many connections owe their hello");
          pending.push_back(Pending{fd, fromText, Hello{}, 0, std::min(deadline, now + kHelloTimeout)});
        }
      }
    }
    for (const Pending& p : pending) ::close(p.fd);
  });

  std::string connectError;
  // Every lower rank's address in one read (one round trip to a batching store).
  std::vector<std::vector<uint8_t>> addresses;
  {
    std::vector<std::string> keys;
    for (int peer = 0; peer < rank; ++peer) keys.push_back(strCat(options.keyPrefix, "addr/", peer));
    try {
      addresses = store.multiGet(keys, options.timeout);
    } catch (const TimeoutError& e) {
      timedOut = true;
      connectError = strCat("agentcomm: a lower rank never published its address (the key names it): ", e.what());
    } catch (const std::exception& e) {
      connectError = strCat("agentcomm: could not read the lower ranks' addresses: ", e.what());
    }
  }
  // Dial every lower rank at once (non-blocking connects, hellos sent as each
  // connection completes, replies read as they come) instead of one round trip
  // after another: with many ranks on few cores each round trip waits for the
  // peer's acceptor to be scheduled.
  struct Dial {
    int peer = -1;
    std::string target;
    int port = 0;
    sockaddr_in to{};
    int fd = -1;
    bool connected = false;
    bool done = false;  // handshake complete: the fd belongs to peers_ now
    size_t wrote = 0;  // hello bytes sent
    Hello theirs{};
    size_t got = 0;  // hello bytes read
    Deadline retryAt{};
    int lastErr = 0;
  };
  std::vector<Dial> dials;
  if (connectError.empty()) {
    for (int peer = 0; peer < rank; ++peer) {
      const PeerAddress a = parsePeerAddress(addresses[peer], myHost, ifname);
      Dial d;
      d.peer = peer;
      d.target = a.target;
      d.port = a.port;
      d.to.sin_family = AF_INET;
      d.to.sin_port = htons(static_cast<uint16_t>(a.port));
      ::inet_pton(AF_INET, d.target.c_str(), &d.to.sin_addr);
      d.retryAt = Clock::now();
      dials.push_back(std::move(d));
    }
  }
  auto startDial = [](Dial& d) {
    d.fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    d.connected = false;
    d.wrote = d.got = 0;
    if (d.fd < 0) {
      d.lastErr = errno;
    } else if (::connect(d.fd, reinterpret_cast<sockaddr*>(&d.to), sizeof(d.to)) == 0) {
      d.connected = true;
      return;
    } else if (errno == EINPROGRESS) {
      return;
    } else {
      d.lastErr = errno;
      ::close(d.fd);
      d.fd = -1;
    }
    d.retryAt = Clock::now() + std::chrono::milliseconds(50);
  };
  auto retryLater = [](Dial& d, int err) {
    d.lastErr = err;
    ::close(d.fd);
    d.fd = -1;
    d.retryAt = Clock::now() + std::chrono::milliseconds(50);
  };
  size_t left = dials.size();
  std::vector<pollfd> dialPfds;
  std::vector<size_t> polled;
  while (left > 0 && connectError.empty()) {
    const Deadline now = Clock::now();
    for (size_t i = 0; i < dials.size(); ++i)
      if (!dials[i].done && dials[i].fd < 0 && now >= dials[i].retryAt) startDial(dials[i]);
    dialPfds.clear();
    polled.clear();
    Deadline wake = deadline;
    for (size_t i = 0; i < dials.size(); ++i) {
      if (dials[i].done) continue;
      Dial& d = dials[i];
      if (d.fd < 0) {
        wake = std::min(wake, d.retryAt);
        continue;
      }
      short events = !d.connected ? POLLOUT : d.wrote < sizeof(Hello) ? POLLOUT : POLLIN;
      dialPfds.push_back(pollfd{d.fd, events, 0});
      polled.push_back(i);
    }
    if (Clock::now() >= deadline) {
      for (size_t i = 0; i < dials.size(); ++i) {
        if (dials[i].done) continue;
        timedOut = true;
        connectError = strCat("agentcomm: cannot connect to rank ", dials[i].peer, " at ", dials[i].target, ":",
                              dials[i].port, ": ", dials[i].lastErr ? errnoText(dials[i].lastErr) : "no hello in time");
        break;
      }
      break;
    }
    if (::poll(dialPfds.data(), dialPfds.size(), remainingMs(wake)) < 0 && errno != EINTR) continue;
    for (size_t k = 0; k < polled.size() && connectError.empty(); ++k) {
      if (dialPfds[k].revents == 0) continue;
      const size_t i = polled[k];
      Dial& d = dials[i];
      if (!d.connected) {
        int err = 0;
        socklen_t elen = sizeof(err);
        ::getsockopt(d.fd, SOL_SOCKET, SO_ERROR, &err, &elen);
        if (err != 0) {
          retryLater(d, err);  // not listening yet, or refused: try again shortly, until the deadline
          continue;
        }
        d.connected = true;
      }
      if (d.wrote < sizeof(Hello)) {
        const ssize_t w = ::send(d.fd, reinterpret_cast<const uint8_t*>(&mine) + d.wrote, sizeof(Hello) - d.wrote,
                                 MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) d.wrote += static_cast<size_t>(w);
        else if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) retryLater(d, errno);
        continue;
      }
      const ssize_t r = ::recv(d.fd, reinterpret_cast<uint8_t*>(&d.theirs) + d.got, sizeof(Hello) - d.got,
                               MSG_DONTWAIT);
      if (r > 0) {
        d.got += static_cast<size_t>(r);
      } else if (r == 0 || (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)) {
        d.got = 0;  // the peer closed: a handshake failure, below
      } else {
        continue;
      }
      if (d.got > 0 && d.got < sizeof(Hello)) continue;
      if (d.got == 0 || d.theirs.magic != kHelloMagic || d.theirs.rank != d.peer ||
          std::memcmp(d.theirs.token, mine.token, sizeof(mine.token)) != 0) {
        connectError = strCat("agentcomm: handshake with rank ", d.peer, " at ", d.target, ":", d.port,
                              " failed (peer gone, or not part of this job)");
        break;
      }
      ::fcntl(d.fd, F_SETFL, ::fcntl(d.fd, F_GETFL) & ~O_NONBLOCK);  // the reader blocks
      peers_[d.peer]->fd = d.fd;
      d.fd = -1;
      d.done = true;
      --left;
    }
  }
  for (size_t i = 0; i < dials.size(); ++i)
    if (!dials[i].done && dials[i].fd >= 0) ::close(dials[i].fd);
  if (!connectError.empty()) {
    stopAccepting.store(true);
    ::shutdown(lfd, SHUT_RDWR);  // wakes the acceptor's poll
  }
  acceptor.join();
  if (!connectError.empty() || !acceptError.empty()) {
    closeAll();
    std::string msg = connectError.empty() ? acceptError : connectError;
    if (timedOut || Clock::now() >= deadline) throw TimeoutError(msg);
    throw CommError(msg);
  }
  ::close(lfd);
  conns_.resize(static_cast<size_t>(size));
  loop_ = EventLoop::shared();
  try {
    for (int r = 0; r < size; ++r)
      if (r != rank) install(r, peers_[r]->fd);
  } catch (...) {
    loop_->detach(this);  // no destructor runs for a constructor that throws
    for (auto& p : peers_)
      if (p->fd >= 0) ::close(p->fd);
    throw;
  }
  AC_LOG(Info, "tcp transport: rank ", rank, " connected to ", size - 1, " peer(s)");
}

TcpTransport::~TcpTransport() {
  closing_.store(true);
  forEachConn([](Conn& c) { ::shutdown(c.fd, SHUT_RDWR); });
  if (loop_) {
    loop_->detach(this, [this] {
      forEachConn([this](Conn& c) {
        Reading& s = c.reading;
        if (!s.done && s.inBody && !s.abortText && s.d.accepted) mailbox_.endDelivery(s.d, false);
      });
      for (auto& p : pending_) ::close(p->fd);
      pending_.clear();
    });
  }
  forEachConn([](Conn& c) { ::close(c.fd); });
  if (listenFd_ >= 0) ::close(listenFd_);
}

template <typename Fn>
void TcpTransport::forEachConn(const Fn& fn) {
  const size_t n = connCount_.load();  // slots below it are set (install)
  for (size_t i = 0; i < n; ++i) fn(*conns_[i]);
}

void TcpTransport::install(int peer, int fd) {
  setNoDelay(fd);
  size_t idx = 0;
  {
    std::lock_guard<std::mutex> lock(connMu_);
    idx = connCount_.load();
    if (idx >= conns_.size()) {
      AC_LOG(Warn, "tcp transport: a connection from rank ", peer, " beyond ", conns_.size(), " was dropped");
      ::close(fd);
      return;
    }
    auto c = std::make_unique<Conn>();
    c->fd = fd;
    c->peer = peer;
    conns_[idx] = std::move(c);
    connCount_.store(idx + 1);
  }
  int none = -1;
  peers_[peer]->fd.compare_exchange_strong(none, fd);  // the first connection carries our frames
  loop_->add(fd, this, static_cast<uint32_t>(idx));
  if (aborted_.load() && !closing_.load()) {
    // Made after this rank aborted (a peer dialing late, or raced the abort's
    // sweep): the peer learns why, as the connected ones did.
    const std::string reason = mailbox_.abortReason().value_or("agentcomm: communicator aborted");
    Header h;
    h.kind = static_cast<uint8_t>(MsgKind::Abort);
    h.nbytes = reason.size();
    iovec iov[2] = {{&h, sizeof h}, {const_cast<char*>(reason.data()), reason.size()}};
    writeAll(fd, iov, 2, Clock::now() + std::chrono::milliseconds(200));
  }
  if (aborted_.load() || closing_.load()) ::shutdown(fd, SHUT_RDWR);
}

// The event loop calls onReadable for a connection with data (level-triggered),
// holding a small state machine per connection: a header, then its payload
// straight into the receive the mailbox matched (or into a sink when nothing
// may take it). A connection gets at most kReadBudget bytes per turn, so one
// large message cannot hold up the small ones of the others (of every group:
// the loop is the process's). Deliveries, rendezvous pulls and the mailbox's
// callbacks run on the loop's thread: none may block on another delivery.
void TcpTransport::finishConn(Conn& c, bool lost) {
  Reading& s = c.reading;
  if (s.inBody && !s.abortText && s.d.accepted) mailbox_.endDelivery(s.d, false);
  s.done = true;
  loop_->remove(c.fd);
  if (lost && !closing_.load()) {
    // Not an abort of the whole communicator: only what still waits on this
    // peer fails (its receives; sends to it fail with EPIPE). A peer that
    // finished its last collective and left early is no error for the others.
    mailbox_.failPeer(c.peer, strCat("agentcomm: lost the connection to rank ", c.peer,
                                     " (it exited, crashed, or destroyed its process group)"));
  }
}

bool TcpTransport::completeFrame(Conn& c) {
  Reading& s = c.reading;
  s.inBody = false;
  if (s.abortText) {
    // A peer passing on another rank's abort: keep the text of the rank it
    // started on, not a chain of every rank it went through.
    const bool forwarded =
        s.text.rfind("agentcomm: rank ", 0) == 0 && s.text.find(" aborted: ") != std::string::npos;
    abort(forwarded ? s.text : strCat("agentcomm: rank ", c.peer, " aborted: ", s.text));
    finishConn(c, false);
    return false;
  }
  if (s.d.accepted) mailbox_.endDelivery(s.d, true);
  s.d = Mailbox::Delivery{};
  return true;
}

void TcpTransport::onReadable(uint32_t tag) {
  if (tag == kListenTag) return acceptPending();
  if ((tag & kPendingTag) != 0) return readHandshake(tag & ~kPendingTag);
  constexpr size_t kReadBudget = size_t{4} << 20;
  Conn& c = *conns_[tag];
  Reading& s = c.reading;
  if (s.done) return;
  const int fd = c.fd;
  const int src = c.peer;
  size_t budget = kReadBudget;
  while (budget > 0) {
    if (!s.inBody) {
      const ssize_t r = ::recv(fd, reinterpret_cast<uint8_t*>(&s.h) + s.headerGot, sizeof(Header) - s.headerGot,
                               MSG_DONTWAIT);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      if (r <= 0) return finishConn(c, true);
      s.headerGot += static_cast<size_t>(r);
      if (s.headerGot < sizeof(Header)) continue;
      s.headerGot = 0;
      const std::string bad = validateHeader(s.h);
      if (!bad.empty()) {
        abort(strCat("agentcomm: malformed frame from rank ", src, " (", bad, "); dropping the connection"));
        return finishConn(c, false);
      }
      s.inBody = true;
      s.abortText = s.h.kind == static_cast<uint8_t>(MsgKind::Abort);
      if (s.abortText) {
        s.text.assign(static_cast<size_t>(std::min<uint64_t>(s.h.nbytes, 65536)), '\0');
        s.dst = reinterpret_cast<uint8_t*>(s.text.data());
        s.left = s.text.size();
      } else {
        s.d = mailbox_.beginDelivery(src, s.h);
        s.dst = s.d.accepted ? static_cast<uint8_t*>(s.d.dst) : nullptr;
        s.left = s.h.nbytes;
      }
      if (s.left == 0 && !completeFrame(c)) return;
      continue;
    }
    const size_t want = static_cast<size_t>(std::min<uint64_t>(s.left, s.dst ? budget : sink_.size()));
    const ssize_t r = ::recv(fd, s.dst ? s.dst : sink_.data(), want, MSG_DONTWAIT);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (r <= 0) return finishConn(c, true);
    if (s.dst) s.dst += r;
    s.left -= static_cast<uint64_t>(r);
    budget -= std::min(budget, static_cast<size_t>(r));
    if (s.left == 0 && !completeFrame(c)) return;
  }
}

// ---------------------------------------------------------------- connections on demand

void TcpTransport::dropPending(size_t i, const std::string& why) {
  AC_LOG(Warn, "dropped a connection from ", pending_[i]->from, ": ", why);
  loop_->remove(pending_[i]->fd);
  ::close(pending_[i]->fd);
  pending_.erase(pending_.begin() + static_cast<std::ptrdiff_t>(i));
}

void TcpTransport::acceptPending() {
  const Deadline now = Clock::now();
  auto drop = [&](size_t i, const char* why) { dropPending(i, why); };
  // A silent socket holds its slot until its hello time is up (checked here,
  // on the next connection): it never holds up the handshakes beside it.
  for (size_t i = pending_.size(); i-- > 0;)
    if (now >= pending_[i]->until) drop(i, "no hello in time");
  while (true) {
    sockaddr_in from{};
    socklen_t flen = sizeof(from);
    const int fd = ::accept4(listenFd_, reinterpret_cast<sockaddr*>(&from), &flen, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;  // EAGAIN: nothing more now
    }
    if (closing_.load()) {  // an aborted rank still shakes hands: install() tells the peer why
      ::close(fd);
      continue;
    }
    if (pending_.size() >= std::max(kMaxPendingHellos, 2 * static_cast<size_t>(size_)))
      drop(0, "too many connections owe their hello");
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

void TcpTransport::readHandshake(uint32_t id) {
  size_t i = 0;
  while (i < pending_.size() && pending_[i]->id != id) ++i;
  if (i == pending_.size()) return;
  Pending& p = *pending_[i];
  auto drop = [&](const std::string& why) { dropPending(i, why); };
  const ssize_t r = ::recv(p.fd, reinterpret_cast<uint8_t*>(&p.hello) + p.got, sizeof(Hello) - p.got, MSG_DONTWAIT);
  if (r > 0) {
    p.got += static_cast<size_t>(r);
  } else if (r == 0 || (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)) {
    return drop("no hello");
  }
  if (p.got < sizeof(Hello)) return;
  const Hello& theirs = p.hello;
  const auto* mine = reinterpret_cast<const Hello*>(helloBytes_.data());
  if (theirs.magic != kHelloMagic || std::memcmp(theirs.token, mine->token, sizeof(mine->token)) != 0)
    return drop("wrong job token");
  if (theirs.size != size_ || theirs.rank < 0 || theirs.rank >= size_ || theirs.rank == rank_)
    return drop(strCat("unexpected rank ", theirs.rank, " of ", theirs.size));
  iovec iov{helloBytes_.data(), helloBytes_.size()};
  if (writeAll(p.fd, &iov, 1, Clock::now() + kHelloTimeout) != 0) return drop("hello reply failed");
  const int fd = p.fd;
  const int peer = theirs.rank;
  loop_->remove(fd);
  pending_.erase(pending_.begin() + static_cast<std::ptrdiff_t>(i));
  install(peer, fd);
}

void TcpTransport::dial(int dst, Deadline deadline) {
  std::istringstream in(peerAddr_[static_cast<size_t>(dst)]);
  std::string target;
  int port = 0;
  in >> target >> port;
  auto fail = [&](int err, bool timedOut) {
    const std::string msg =
        strCat("agentcomm: cannot connect to rank ", dst, " at ", target, ":", port, ": ",
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
  iovec iov{helloBytes_.data(), helloBytes_.size()};
  if (int err = writeAll(fd, &iov, 1, deadline); err != 0) closeAndFail(err, err == ETIMEDOUT);
  Hello theirs{};
  size_t got = 0;
  while (got < sizeof theirs) {
    const ssize_t r = ::recv(fd, reinterpret_cast<uint8_t*>(&theirs) + got, sizeof theirs - got, MSG_DONTWAIT);
    if (r > 0) {
      got += static_cast<size_t>(r);
      continue;
    }
    if (r == 0) closeAndFail(ECONNRESET, false);
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) closeAndFail(errno, false);
    pollfd pfd{fd, POLLIN, 0};
    if (::poll(&pfd, 1, remainingMs(deadline)) == 0) closeAndFail(0, true);
  }
  const auto* mine = reinterpret_cast<const Hello*>(helloBytes_.data());
  if (theirs.magic != kHelloMagic || theirs.rank != dst ||
      std::memcmp(theirs.token, mine->token, sizeof(mine->token)) != 0) {
    ::close(fd);
    throw CommError(strCat("agentcomm: handshake with rank ", dst, " at ", target, ":", port,
                           " failed (not part of this job)"));
  }
  install(dst, fd);
}

int TcpTransport::connectionTo(int dst, Deadline deadline, bool mayDial) {
  Peer& peer = *peers_[dst];
  int fd = peer.fd.load();
  if (fd >= 0 || eager_ || !mayDial) return fd;
  if (aborted_.load()) throw CommError(mailbox_.abortReason().value_or("agentcomm: communicator aborted"));
  if (!peer.dialMutex.try_lock_until(deadline))
    throw TimeoutError(strCat("agentcomm: timed out connecting to rank ", dst));
  std::lock_guard<std::timed_mutex> lock(peer.dialMutex, std::adopt_lock);
  fd = peer.fd.load();
  if (fd >= 0) return fd;  // dialed by another sender, or the peer dialed us
  dial(dst, deadline);
  return peer.fd.load();
}

void TcpTransport::writeFrame(int dst, const Header& h, const void* data, Deadline deadline, bool bestEffort) {
  if (connectionTo(dst, deadline, !bestEffort) < 0) return;  // best effort, never connected: nothing to tell
  Peer& peer = *peers_[dst];
  if (!peer.sendMutex.try_lock_until(deadline)) {
    if (bestEffort) return;
    std::string msg = strCat("agentcomm: timed out sending to rank ", dst);
    abort(msg);
    throw TimeoutError(msg);
  }
  writeLocked(dst, h, data, deadline, bestEffort);
}

void TcpTransport::writeLocked(int dst, const Header& h, const void* data, Deadline deadline, bool bestEffort) {
  Peer& peer = *peers_[dst];
  std::lock_guard<std::timed_mutex> lock(peer.sendMutex, std::adopt_lock);
  Header copy = h;
  if (h.kind == static_cast<uint8_t>(MsgKind::Collective) && takeCorruption()) copy.count ^= 0x5a5a5a5aULL;  // fault.h
  iovec iov[2] = {{&copy, sizeof(copy)}, {const_cast<void*>(data), static_cast<size_t>(h.nbytes)}};
  int err = writeAll(peer.fd.load(), iov, h.nbytes > 0 ? 2 : 1, deadline);
  if (err == 0 || bestEffort) return;
  if (err != ETIMEDOUT) {
    // A peer that aborted sent us an Abort frame before closing; give our
    // reader a moment to deliver it, so every rank reports the root cause
    // instead of a bare "broken pipe".
    const Deadline grace = Clock::now() + std::chrono::milliseconds(500);
    while (!aborted_.load() && Clock::now() < grace) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    if (aborted_.load()) throw CommError(mailbox_.abortReason().value_or("agentcomm: communicator aborted"));
  }
  std::string msg = err == ETIMEDOUT
                        ? strCat("agentcomm: timed out sending ", h.nbytes, " bytes to rank ", dst,
                                 " (the peer stopped reading)")
                        : strCat("agentcomm: lost the connection to rank ", dst, " while sending: ", errnoText(err));
  abort(msg);
  if (err == ETIMEDOUT) throw TimeoutError(msg);
  throw CommError(msg);
}

void TcpTransport::send(int dst, const Header& h, const void* data, Deadline deadline) {
  AC_CHECK(dst >= 0 && dst < size_ && dst != rank_, InvalidArgument, "tcp send: bad destination ", dst);
  if (aborted_.load()) throw CommError(mailbox_.abortReason().value_or("agentcomm: communicator aborted"));
  writeFrame(dst, h, data, deadline, false);
}

bool TcpTransport::trySend(int dst, const Header& h, const void* data, Deadline deadline) {
  AC_CHECK(dst >= 0 && dst < size_ && dst != rank_, InvalidArgument, "tcp send: bad destination ", dst);
  if (aborted_.load()) throw CommError(mailbox_.abortReason().value_or("agentcomm: communicator aborted"));
  if (peers_[dst]->fd.load() < 0) return false;  // not connected yet (lazy): the caller's lane dials
  if (!peers_[dst]->sendMutex.try_lock()) return false;
  writeLocked(dst, h, data, deadline, false);
  return true;
}

void TcpTransport::cut(const std::string& reason) {
  AC_LOG(Warn, reason, ": cutting every connection");
  // No Abort frame (the peers' readers just see their connection end), but this
  // rank's own waits fail with the reason rather than blaming each peer in turn.
  aborted_.store(true);
  mailbox_.abort(reason);
  forEachConn([](Conn& c) { ::shutdown(c.fd, SHUT_RDWR); });
}

void TcpTransport::abort(const std::string& reason) {
  if (aborted_.exchange(true)) return;
  mailbox_.abort(reason);
  if (!closing_.load()) {
    AC_LOG(Info, "aborting communicator: ", reason);
    Header h;
    h.kind = static_cast<uint8_t>(MsgKind::Abort);
    h.nbytes = reason.size();
    const Deadline soon = Clock::now() + std::chrono::milliseconds(200);
    for (int r = 0; r < size_; ++r) {
      if (r != rank_ && peers_[r]->fd >= 0) writeFrame(r, h, reason.data(), soon, true);
    }
  }
  // Queued data (the Abort frame included) is still delivered before the FIN.
  forEachConn([](Conn& c) { ::shutdown(c.fd, SHUT_RDWR); });
}

}  // namespace agentcomm::transport
