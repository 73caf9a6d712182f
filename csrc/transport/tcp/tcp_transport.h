#pragma once
// TCP transport: a full mesh of connections, one per pair of ranks, set up
// through the rendezvous Store.
//
// Setup: every rank listens (on AGENTCOMM_SOCKET_IFNAME's address if set,
// otherwise on all addresses) and publishes "host-id address port". Then,
// with AGENTCOMM_EAGER_CONNECT=1, it connects to every lower rank and accepts
// every higher one (a full mesh). By default (rank 0's setting decides for the
// group) it connects at setup only to the ranks of its own host (cheap, and
// their connections are the liveness and abort channel of the shared-memory
// paths); a rank of another host is dialed the first time this rank sends to
// it, and the listener stays open for the peers that dial it, so a ring across
// hosts touches 2 peers, a tree log n, a hierarchical job only its leaders.
// On demand, the first frame to a peer waits for a handshake (one round
// trip), a peer of another host that never connected is not seen to die until
// a receive from it times out, and an abort reaches the ranks of other hosts
// through the connections that exist (passed on rank to rank). Rank 0 draws a random
// 128-bit job token and publishes it; a connection that does not present the
// token (or says nothing within the hello timeout) is dropped and setup goes
// on; handshakes run side by side, so a silent connection holds only its own
// slot. Ranks whose host-id (boot id + network namespace) matches connect over
// loopback.
//
// Progress: the process's one TCP event loop (event_loop.h), shared by every
// group, reads each peer's frames: a header, then the payload where the
// Mailbox says (a posted user buffer, or a parking buffer). Senders write
// under a per-peer mutex so frames never interleave.
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "transport/store.h"
#include "transport/tcp/event_loop.h"
#include "transport/transport.h"

namespace agentcomm::transport {

struct TcpOptions {
  std::string ifname;  // empty: AGENTCOMM_SOCKET_IFNAME, else all interfaces
  // Connect every pair at setup (nullopt: AGENTCOMM_EAGER_CONNECT, default
  // false); rank 0's choice is the group's.
  std::optional<bool> eager;
  // On demand: still connect to the ranks of this host at setup (tests of
  // the on-demand machinery on one host turn it off).
  bool localAtSetup = true;
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};  // for the whole setup
  std::string keyPrefix = "agentcomm/";
};

class TcpTransport : public Transport, private EventLoop::Handler {
 public:
  // Blocks until the mesh is up; throws TimeoutError/CommError.
  TcpTransport(Store& store, int rank, int size, const TcpOptions& options);
  ~TcpTransport() override;

  const char* name() const override { return "tcp"; }
  Mailbox& mailbox() override { return mailbox_; }
  void send(int dst, const Header& h, const void* data, Deadline deadline) override;
  bool trySend(int dst, const Header& h, const void* data, Deadline deadline) override;
  void abort(const std::string& reason) override;
  void cut(const std::string& reason) override;
  // Whether every pair connected at setup (else on demand: the header).
  bool eager() const { return eager_; }
  // Connections made so far, both directions (tests, benches).
  size_t connectionCount() const { return connCount_.load(); }

 private:
  struct Peer {
    std::atomic<int> fd{-1};  // the connection frames to this peer go on (the first one made)
    std::timed_mutex sendMutex;
    std::timed_mutex dialMutex;  // one dial at a time (lazy)
  };
  // A connection being read: one per peer (eager), one or, when two ranks
  // dialed each other at once, two (lazy: each side keeps sending on the
  // first it had; frames of one direction never mix connections).
  struct Conn;

  // A peer's frame being read (event loop thread only, or detach's last call).
  struct Reading {
    Header h{};
    size_t headerGot = 0;
    bool inBody = false;
    bool abortText = false;
    Mailbox::Delivery d;
    uint8_t* dst = nullptr;  // null in a body: drain (nothing may take it)
    uint64_t left = 0;
    std::string text;
    bool done = false;
  };
  // The event loop: connection `tag` (or the listener, or a handshake) has data.
  void onReadable(uint32_t tag) override;
  // The connection's reading ends (lost: it broke, not our closing).
  void finishConn(Conn& c, bool lost);
  // A frame's last byte arrived. False when the connection is finished (an Abort frame).
  bool completeFrame(Conn& c);
  // Starts reading fd, a connection to peer (made by either side).
  void install(int peer, int fd);
  // Lazy: accepts what the listener has, reads handshakes.
  void acceptPending();
  void readHandshake(uint32_t id);
  void dropPending(size_t i, const std::string& why);  // closes the i-th handshake, saying why
  // The connection frames to dst go on, dialing it first (lazy) unless mayDial is false (-1 then).
  int connectionTo(int dst, Deadline deadline, bool mayDial);
  void dial(int dst, Deadline deadline);
  template <typename Fn>
  void forEachConn(const Fn& fn);
  void writeFrame(int dst, const Header& h, const void* data, Deadline deadline, bool bestEffort);
  // writeFrame with dst's send mutex already held (released on return).
  void writeLocked(int dst, const Header& h, const void* data, Deadline deadline, bool bestEffort);

  Mailbox mailbox_;
  std::vector<std::unique_ptr<Peer>> peers_;
  std::atomic<bool> closing_{false};
  std::atomic<bool> aborted_{false};
  std::shared_ptr<EventLoop> loop_;  // null for a world of one
  std::vector<uint8_t> sink_;         // drains a payload nothing may take
  bool eager_ = true;
  // Connections, by tag (their index); appended under connMu_, read by the loop
  // (a tag is registered only after its slot is set). Capacity fixed at setup.
  std::mutex connMu_;
  std::vector<std::unique_ptr<Conn>> conns_;
  std::atomic<size_t> connCount_{0};
  // Lazy: the listener (kept open), every peer's address, the job token, and
  // the accepted connections that still owe their hello (loop thread only).
  struct Pending;
  int listenFd_ = -1;
  std::vector<std::string> peerAddr_;  // "a.b.c.d port" per rank
  std::vector<uint8_t> helloBytes_;     // this rank's hello
  std::vector<std::unique_ptr<Pending>> pending_;
  uint32_t nextPending_ = 0;
  std::string listenAddr_;
  int listenPort_ = 0;
};

}  // namespace agentcomm::transport
