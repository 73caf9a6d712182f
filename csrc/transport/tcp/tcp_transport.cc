#include "transport/tcp/tcp_transport.h"

#include <errno.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <sstream>
#include <thread>

#include "core/env.h"
#include "core/error.h"
#include "core/logging.h"
#include "transport/fault.h"
#include "transport/host.h"

namespace agentcomm::transport {
namespace {

constexpr size_t kMaxReasonBytes = 65536;  // an Abort frame's text, at most

// A peer's published "host-id address port pinned process", and where to
// dial it from host `myHost`: loopback when it is on this host and nobody
// pinned an interface (loopback always works there), else its published
// address.
struct PeerAddress {
  std::string host;
  std::string target;
  int port = 0;
  uint64_t process = 0;
};
PeerAddress parsePeerAddress(const std::vector<uint8_t>& published, const std::string& myHost,
                             const std::string& ifname) {
  std::istringstream in(fromBytes(published));
  PeerAddress a;
  std::string addr;
  int pinned = 0;
  in >> a.host >> addr >> a.port >> pinned >> a.process;
  AC_CHECK(!in.fail(), CommError, "agentcomm: malformed peer address in the store: '", fromBytes(published), "'");
  a.target = (a.host == myHost && !pinned && ifname.empty()) ? "127.0.0.1" : addr;
  return a;
}

std::string lostText(int rank) {
  return strCat("agentcomm: lost the connection to rank ", rank,
                " (it exited, crashed, or destroyed its process group)");
}

}  // namespace

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
  hub_ = options.hub ? options.hub : TcpHub::forProcess(ifname);
  const std::string myHost = hostId();

  // Rank 0 draws the job token (the group's name on the wire) and decides
  // eager or on-demand links for the group (a rank setting up eagerly waits
  // for dials an on-demand one never makes).
  const std::string tokenKey = options.keyPrefix + "token";
  if (rank == 0) {
    std::random_device rd;
    for (auto& b : token_) b = static_cast<uint8_t>(rd());
    eager_ = options.eager.value_or(envFlag("AGENTCOMM_EAGER_CONNECT", false));
    std::vector<uint8_t> value(token_.begin(), token_.end());
    value.push_back(eager_ ? 1 : 0);
    store.set(tokenKey, value);
  } else {
    auto tok = store.get(tokenKey, options.timeout);
    AC_CHECK(tok.size() == token_.size() + 1, CommError, "agentcomm: malformed job token in store");
    std::memcpy(token_.data(), tok.data(), token_.size());
    eager_ = tok.back() != 0;
  }
  std::memcpy(&groupId_, token_.data(), sizeof groupId_);
  // Attached before the address is published: no peer can dial for, or send
  // a frame of, this group before the endpoint knows it.
  hub_->attach(token_, this);
  try {
    store.set(strCat(options.keyPrefix, "addr/", rank),
              toBytes(strCat(myHost, " ", hub_->address(), " ", hub_->port(), " ", ifname.empty() ? 0 : 1, " ",
                             hub_->id())));
    AC_LOG(Info, "tcp transport: rank ", rank, "/", size, " on ", hub_->address(), ":", hub_->port(),
           eager_ ? "" : " (connections on demand)");
    std::vector<std::string> keys;
    std::vector<int> ranks;
    for (int r = 0; r < size; ++r) {
      if (r == rank) continue;
      keys.push_back(strCat(options.keyPrefix, "addr/", r));
      ranks.push_back(r);
    }
    const std::vector<std::vector<uint8_t>> values = store.multiGet(keys, options.timeout);
    std::vector<bool> local(static_cast<size_t>(size), false);
    for (size_t i = 0; i < ranks.size(); ++i) {
      const PeerAddress a = parsePeerAddress(values[i], myHost, ifname);
      Peer& p = *peers_[ranks[i]];
      p.process = a.process;
      p.target = a.target;
      p.port = a.port;
      AC_CHECK(a.process != hub_->id(), InvalidArgument, "agentcomm: ranks ", rank, " and ", ranks[i],
               " of one group are in this very process on one TCP endpoint (each rank of a process group "
               "must be its own process; tests running ranks as threads give each its own TcpOptions::hub)");
      rankByProcess_[a.process] = ranks[i];
      local[static_cast<size_t>(ranks[i])] = a.host == myHost;
    }
    ready_.store(true);
    // Eager: a link to every rank (lower ones dialed, higher ones awaited:
    // they dial us). On demand: the lower ranks of this host now (each
    // higher one dials us). A link any group of the process made serves.
    for (int r = 0; r < size; ++r) {
      if (r == rank || !(eager_ || (options.localAtSetup && local[static_cast<size_t>(r)]))) continue;
      if (r < rank) {
        linkTo(r, deadline, true);
      } else if (eager_) {
        auto link = hub_->awaitLink(peers_[r]->process, deadline);
        if (!link)
          throw TimeoutError(strCat("agentcomm: timed out during setup waiting for rank ", r,
                                    " to connect to rank ", rank));
        adopt(r, std::move(link));
      }
    }
  } catch (...) {
    closing_.store(true);
    hub_->detach(token_);  // no destructor runs for a constructor that throws
    throw;
  }
  if (eager_) AC_LOG(Info, "tcp transport: rank ", rank, " connected to ", size - 1, " peer(s)");
}

TcpTransport::~TcpTransport() {
  if (!hub_) return;
  // The peers' receives from this rank fail now (as when a connection of
  // its own closed), not at their deadline.
  if (!aborted_.load()) tellPeers(MsgKind::Leave, "");
  closing_.store(true);
  hub_->detach(token_);
}

int TcpTransport::rankOf(uint64_t process) const {
  auto it = rankByProcess_.find(process);
  return it == rankByProcess_.end() ? -1 : it->second;
}

std::shared_ptr<TcpLink> TcpTransport::linkTo(int dst, Deadline deadline, bool mayDial) {
  Peer& p = *peers_[dst];
  {
    std::lock_guard<std::mutex> lock(p.mu);
    if (p.link) return p.link;
  }
  auto link = hub_->linkTo(p.process, p.target, p.port, token_, strCat("rank ", dst), deadline, mayDial);
  return link ? adopt(dst, std::move(link)) : nullptr;
}

std::shared_ptr<TcpLink> TcpTransport::adopt(int dst, std::shared_ptr<TcpLink> link) {
  Peer& p = *peers_[dst];
  std::lock_guard<std::mutex> lock(p.mu);
  if (!p.link) p.link = std::move(link);  // this group's frames to dst go on it for good
  return p.link;
}

// ---------------------------------------------------------------- what the endpoint reports

void TcpTransport::onAbortFrame(int src, const std::string& text) {
  if (src < 0) return abort(text);  // the endpoint's own finding (a malformed frame)
  // A peer passing on another rank's abort: keep the text of the rank it
  // started on, not a chain of every rank it went through.
  const bool forwarded = text.rfind("agentcomm: rank ", 0) == 0 && text.find(" aborted: ") != std::string::npos;
  abort(forwarded ? text : strCat("agentcomm: rank ", src, " aborted: ", text));
}

void TcpTransport::onLeave(int src) {
  // As a connection of the group's own ending: not an abort of the whole
  // communicator, only what waits on this peer fails (its receives now,
  // sends to it from now on). A peer that finished its last collective and
  // left early is no error for the others.
  peers_[src]->gone.store(true);
  if (!closing_.load()) mailbox_.failPeer(src, lostText(src));
}

void TcpTransport::onLinkLost(const TcpLink& link, bool others) {
  if (!ready_.load() || closing_.load()) return;
  const int r = rankOf(link.peer);
  if (r < 0) return;
  bool ours = false;
  {
    std::lock_guard<std::mutex> lock(peers_[r]->mu);
    ours = peers_[r]->link.get() == &link || (!peers_[r]->link && !others);
  }
  if (!ours) return;
  peers_[r]->gone.store(true);
  mailbox_.failPeer(r, lostText(r));
}

void TcpTransport::onLinkUp(const std::shared_ptr<TcpLink>& link) {
  if (!aborted_.load() || closing_.load() || !ready_.load()) return;
  const int r = rankOf(link->peer);
  if (r < 0) return;
  // Made after this rank aborted (a peer dialing late, or raced the abort's
  // sweep): the peer learns why, as the linked ones did.
  const std::string reason = mailbox_.abortReason().value_or("agentcomm: communicator aborted");
  Header h;
  h.kind = static_cast<uint8_t>(MsgKind::Abort);
  h.nbytes = std::min(reason.size(), kMaxReasonBytes);
  const Deadline soon = Clock::now() + std::chrono::milliseconds(200);
  if (link->sendMutex.try_lock_until(soon)) writeLocked(r, *link, h, reason.data(), soon, true);
}

// ---------------------------------------------------------------- sending

void TcpTransport::writeLocked(int dst, TcpLink& link, const Header& h, const void* data, Deadline deadline,
                               bool bestEffort) {
  std::unique_lock<std::timed_mutex> lock(link.sendMutex, std::adopt_lock);
  Header copy = h;
  if (h.kind == static_cast<uint8_t>(MsgKind::Collective) && takeCorruption()) copy.count ^= 0x5a5a5a5aULL;  // fault.h
  const TcpRoute route{groupId_, rank_, 0};
  const int err = peers_[dst]->gone.load() ? EPIPE : hub_->write(link, route, copy, data, deadline);
  lock.unlock();
  if (err == 0 || bestEffort) return;
  if (err != ETIMEDOUT) {
    // A peer that aborted sent us an Abort frame before it went; give the
    // reader a moment to deliver it, so every rank reports the root cause
    // instead of a bare "broken pipe".
    const Deadline grace = Clock::now() + std::chrono::milliseconds(500);
    while (!aborted_.load() && Clock::now() < grace) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    if (aborted_.load()) throw CommError(mailbox_.abortReason().value_or("agentcomm: communicator aborted"));
  }
  std::string msg = err == ETIMEDOUT
                        ? strCat("agentcomm: timed out sending ", h.nbytes, " bytes to rank ", dst,
                                 " (the peer stopped reading)")
                        : err == EPIPE ? lostText(dst)
                                       : strCat("agentcomm: lost the connection to rank ", dst,
                                                " while sending: ", errnoText(err));
  abort(msg);
  if (err == ETIMEDOUT) throw TimeoutError(msg);
  throw CommError(msg);
}

void TcpTransport::send(int dst, const Header& h, const void* data, Deadline deadline) {
  AC_CHECK(dst >= 0 && dst < size_ && dst != rank_, InvalidArgument, "tcp send: bad destination ", dst);
  if (aborted_.load()) throw CommError(mailbox_.abortReason().value_or("agentcomm: communicator aborted"));
  auto link = linkTo(dst, deadline, true);
  if (!link->sendMutex.try_lock_until(deadline)) {
    std::string msg = strCat("agentcomm: timed out sending to rank ", dst);
    abort(msg);
    throw TimeoutError(msg);
  }
  writeLocked(dst, *link, h, data, deadline, false);
}

bool TcpTransport::trySend(int dst, const Header& h, const void* data, Deadline deadline) {
  AC_CHECK(dst >= 0 && dst < size_ && dst != rank_, InvalidArgument, "tcp send: bad destination ", dst);
  if (aborted_.load()) throw CommError(mailbox_.abortReason().value_or("agentcomm: communicator aborted"));
  auto link = linkTo(dst, deadline, false);
  if (!link) return false;  // not linked yet (on demand): the caller's lane dials
  if (!link->sendMutex.try_lock()) return false;
  writeLocked(dst, *link, h, data, deadline, false);
  return true;
}

void TcpTransport::tellPeers(MsgKind kind, const std::string& text) {
  if (!ready_.load()) return;
  Header h;
  h.kind = static_cast<uint8_t>(kind);
  h.nbytes = std::min(text.size(), kMaxReasonBytes);
  const Deadline soon = Clock::now() + std::chrono::milliseconds(200);
  for (int r = 0; r < size_; ++r) {
    if (r == rank_) continue;
    auto link = linkTo(r, soon, false);
    if (!link || !link->alive.load() || !link->sendMutex.try_lock_until(soon)) continue;
    writeLocked(r, *link, h, text.data(), soon, true);
  }
}

void TcpTransport::cut(const std::string& reason) {
  AC_LOG(Warn, reason, ": cutting every connection");
  // This group's connections, not the process's links (other groups share
  // them): the peers see what a broken connection showed them (a Leave, no
  // Abort frame: the rank is lost to this group, nothing says why), and this
  // rank's own waits fail with the reason rather than blaming each peer in
  // turn.
  aborted_.store(true);
  mailbox_.abort(reason);
  tellPeers(MsgKind::Leave, "");
}

void TcpTransport::abort(const std::string& reason) {
  if (aborted_.exchange(true)) return;
  mailbox_.abort(reason);
  if (closing_.load()) return;
  AC_LOG(Info, "aborting communicator: ", reason);
  // The links stay: other groups use them. Frames of this group still
  // arriving are drained by the mailbox.
  tellPeers(MsgKind::Abort, reason);
}

}  // namespace agentcomm::transport
