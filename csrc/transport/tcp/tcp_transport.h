#pragma once
// TCP transport: one group's ranks over the process's TCP endpoint (tcp_hub.h),
// set up through the rendezvous Store.
//
// Setup: rank 0 draws a random 128-bit job token (the group's id on the wire
// and its handshake secret) and decides eager or on-demand connections; every
// rank attaches the group to its process's endpoint, then publishes
// "host-id address port pinned process-id" and reads everyone's. Processes
// share one connection whatever the number of groups they share: a group
// uses a link to a peer process if one exists (made by any group), else makes
// one. With AGENTCOMM_EAGER_CONNECT=1 every pair is linked at setup (lower
// ranks dial, higher ones are awaited), so setup errors come up front. By
// default (rank 0's setting decides for the group) only the ranks of this
// host are linked at setup (cheap, and their links are the liveness and abort
// channel of the shared-memory paths); a rank of another host is dialed the
// first time this rank sends to it, so a ring across hosts touches 2 peers, a
// tree log n, a hierarchical job only its leaders. On demand, the first frame
// to a peer waits for a handshake (one round trip), and a peer of another host
// that no group of this process is linked to is not seen to die until a
// receive from it times out. An abort goes (as an Abort frame of this group)
// over every link this process has to the group's ranks, and is passed on by
// each. Ranks whose host-id (boot id + network namespace) matches connect over
// loopback.
//
// Progress: the process's one TCP event loop reads every link and hands each
// frame to its group's Mailbox (a posted user buffer, or a parking buffer).
// Senders write whole frames under the link's send mutex.
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "transport/store.h"
#include "transport/tcp/tcp_hub.h"
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
  // The endpoint (null: the process's, TcpHub::forProcess). Ranks run as
  // threads of one process (tests) each need their own.
  std::shared_ptr<TcpHub> hub;
};

class TcpTransport : public Transport, private TcpHub::Group {
 public:
  // Blocks until the links setup needs are up; throws TimeoutError/CommError.
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
  // Links the process's endpoint made so far, both directions, for every
  // group (tests, benches).
  size_t connectionCount() const { return hub_ ? hub_->linkCount() : 0; }

 private:
  struct Peer {
    uint64_t process = 0;  // its endpoint's id
    std::string target;    // where to dial it
    int port = 0;
    std::mutex mu;                  // link
    std::shared_ptr<TcpLink> link;  // the link this group sends to it on, for good (null: none yet)
    std::atomic<bool> gone{false};  // it left the group, or its link broke: sends to it fail
  };
  // TcpHub::Group (under the event loop's dispatch lock).
  int groupSize() const override { return size_; }
  int groupRank() const override { return rank_; }
  Mailbox& groupMailbox() override { return mailbox_; }
  void onAbortFrame(int src, const std::string& text) override;
  void onLeave(int src) override;
  void onLinkLost(const TcpLink& link, bool others) override;
  void onLinkUp(const std::shared_ptr<TcpLink>& link) override;

  // The link frames to dst go on: the one this group took, else the
  // endpoint's (dialing unless !mayDial: null then).
  std::shared_ptr<TcpLink> linkTo(int dst, Deadline deadline, bool mayDial);
  // Pins `link` as the one this group sends to dst on, unless one already is; returns the pinned one.
  std::shared_ptr<TcpLink> adopt(int dst, std::shared_ptr<TcpLink> link);
  // dst's rank from a process id (-1: not in this group).
  int rankOf(uint64_t process) const;
  // Writes a frame of this group; the caller holds link.sendMutex (released on return).
  void writeLocked(int dst, TcpLink& link, const Header& h, const void* data, Deadline deadline, bool bestEffort);
  // Best effort: a frame of `kind` with `text` to every rank this process has a link to.
  void tellPeers(MsgKind kind, const std::string& text);

  Mailbox mailbox_;
  std::shared_ptr<TcpHub> hub_;  // null for a world of one
  JobToken token_{};
  uint64_t groupId_ = 0;
  std::vector<std::unique_ptr<Peer>> peers_;
  std::unordered_map<uint64_t, int> rankByProcess_;  // set during setup, then read only
  std::atomic<bool> ready_{false};                  // rankByProcess_ is complete
  std::atomic<bool> closing_{false};
  std::atomic<bool> aborted_{false};
  bool eager_ = true;
};

}  // namespace agentcomm::transport
