#pragma once
// A process's TCP endpoint, shared by every group of the process: one
// listener, and one connection (a link) per pair of processes whatever the
// number of groups they share, read by the process's event loop. A DeviceMesh
// job with 3 groups holds one socket to each peer process it talks to, not 3.
//
// Wire: every frame on a link is a Route (which group, from which of its
// ranks), then the Header and payload the group's transport sends. The group
// is the first 8 bytes of its job token (drawn by the group's rank 0, read by
// every member from the store), so both ends name it alike.
//
// Handshake: the dialer sends a Hello (its process id and the token of the
// group it dials for); the acceptor answers with its own only if the token is
// one of an attached group's (so a stray or foreign connection never becomes
// a link), before any frame. Accepted sockets owe their hello within 2 s and
// are read side by side on the loop: a silent one holds only its own slot.
//
// Invariants:
//   - A group attaches (its token known to the hub) before it publishes its
//     address, so no peer can dial for, or send a frame of, a group the hub
//     does not know; frames of a group detached here (destroyed) are drained.
//   - Group callbacks run under the event loop's dispatch lock (on the loop's
//     thread, or on a dialing thread installing a link); after detach()
//     returns none runs or will run for that group.
//   - A link's frames are whole: senders hold its sendMutex for a frame, and a
//     failed or timed-out write cuts the link (a partial frame would corrupt
//     it for every group). Its fd is closed only when the last holder lets go,
//     so a number is never reused under a sender.
//   - Two processes dialing each other at once keep both links; each group
//     sends to a peer on the first link it took, for good (one direction of
//     one group never mixes links, so frames stay in order).
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "transport/header.h"
#include "transport/mailbox.h"
#include "transport/tcp/event_loop.h"

namespace agentcomm::transport {

using JobToken = std::array<uint8_t, 16>;

// A connection to another process.
struct TcpLink {
  explicit TcpLink(int fd_, uint64_t peer_) : fd(fd_), peer(peer_) {}
  ~TcpLink();
  TcpLink(const TcpLink&) = delete;
  TcpLink& operator=(const TcpLink&) = delete;
  const int fd;
  const uint64_t peer;          // the other process's id
  std::timed_mutex sendMutex;   // held for a whole frame
  std::atomic<bool> alive{true};  // false once cut or lost: nothing more goes on it
};

#pragma pack(push, 1)
struct TcpRoute {
  uint64_t group = 0;  // the group's id (its token's first 8 bytes)
  int32_t src = 0;     // the sender's rank in that group
  uint32_t reserved = 0;
};
#pragma pack(pop)
static_assert(sizeof(TcpRoute) == 16, "route layout");

class TcpHub : private EventLoop::Handler {
 public:
  // What the hub asks of a group (its TCP transport). Called under the event
  // loop's dispatch lock; none may block on a delivery.
  class Group {
   public:
    virtual ~Group() = default;
    virtual int groupSize() const = 0;
    virtual int groupRank() const = 0;
    virtual Mailbox& groupMailbox() = 0;
    // Rank src sent an Abort frame (the text: its reason).
    virtual void onAbortFrame(int src, const std::string& text) = 0;
    // Rank src destroyed its end of the group.
    virtual void onLeave(int src) = 0;
    // `link` broke (the peer process exited or crashed, or the network cut
    // it); `others`: another live link to that process remains.
    virtual void onLinkLost(const TcpLink& link, bool others) = 0;
    // A new link to process link->peer (an aborted group tells it why).
    virtual void onLinkUp(const std::shared_ptr<TcpLink>& link) = 0;
  };

  // The process's endpoint for `ifname` (empty: all interfaces), made on
  // first use, gone with its last group, fresh in a child after fork().
  static std::shared_ptr<TcpHub> forProcess(const std::string& ifname);
  // An endpoint of its own (tests that run several ranks in one process give
  // each its own: a process is one rank of each of its groups).
  static std::shared_ptr<TcpHub> create(const std::string& ifname);
  ~TcpHub() override;
  TcpHub(const TcpHub&) = delete;
  TcpHub& operator=(const TcpHub&) = delete;

  uint64_t id() const { return id_; }                        // this process's (random) id
  const std::string& address() const { return address_; }  // what peers dial
  int port() const { return port_; }
  const std::string& ifname() const { return ifname_; }

  void attach(const JobToken& token, Group* group);
  void detach(const JobToken& token);  // afterwards no call into the group

  // The link frames to process `peer` go on: the first live one, else (mayDial)
  // a new one dialed at target:port presenting `token`; null if none and
  // !mayDial. `who` names the peer in errors ("rank 3"). Throws CommError
  // (refused, wrong job) or TimeoutError.
  std::shared_ptr<TcpLink> linkTo(uint64_t peer, const std::string& target, int port, const JobToken& token,
                                  const std::string& who, Deadline deadline, bool mayDial);
  // Waits for a link to `peer` (it dials us); null at the deadline.
  std::shared_ptr<TcpLink> awaitLink(uint64_t peer, Deadline deadline);
  // Writes one frame; the caller holds link.sendMutex. 0, or an errno
  // (ETIMEDOUT at the deadline, EPIPE on a link already cut); on any failure
  // the link is cut.
  int write(TcpLink& link, const TcpRoute& route, const Header& h, const void* data, Deadline deadline);
  // Cuts the link (shutdown both ways); its reader then reports it lost.
  static void cut(TcpLink& link);
  // Cuts every link to process `peer` (fault injection: a network failure).
  void cutLinksTo(uint64_t peer);
  // Links made so far, both directions (tests, benches).
  size_t linkCount() const { return linkCount_.load(); }

 private:
  explicit TcpHub(const std::string& ifname);
  struct Slot;
  struct Pending;
  struct Remote {
    std::shared_ptr<TcpLink> first;  // live, or null
    std::timed_mutex dialMutex;      // one dial at a time
  };
  void onReadable(uint32_t tag) override;
  void acceptPending();
  void readHandshake(uint32_t id);
  void dropPending(size_t i, const std::string& why);
  // Takes fd (handshake done) as a link to process peer and starts reading it.
  std::shared_ptr<TcpLink> install(uint64_t peer, int fd, bool holdSendLock);
  // Tells the groups of a new link (after its handshake reply went out).
  void announce(const std::shared_ptr<TcpLink>& link);
  void finishSlot(Slot& s, bool lost);
  bool completeFrame(Slot& s);
  Remote& remote(uint64_t peer);  // under mu_
  bool knownToken(const JobToken& token);

  const std::string ifname_;
  uint64_t id_ = 0;
  std::string address_;
  int port_ = 0;
  int listenFd_ = -1;
  std::shared_ptr<EventLoop> loop_;
  std::vector<uint8_t> sink_;  // drains a payload nothing may take
  // Under the loop's dispatch lock: the groups by id, the links being read
  // (by tag: index), the handshakes owed.
  std::unordered_map<uint64_t, Group*> groups_;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::vector<std::unique_ptr<Pending>> pending_;
  uint32_t nextPending_ = 0;
  // Under mu_: links by peer process, attached tokens.
  std::mutex mu_;
  std::condition_variable linked_;
  std::unordered_map<uint64_t, std::unique_ptr<Remote>> remotes_;
  std::vector<JobToken> tokens_;
  std::atomic<size_t> linkCount_{0};
  std::atomic<bool> closing_{false};
};

}  // namespace agentcomm::transport
