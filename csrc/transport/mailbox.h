#pragma once
// Matches incoming messages with posted receives, for every transport.
//
// A receive is posted with its destination buffer before (ideally) the message
// arrives; the transport's delivery path then writes the payload straight into
// that buffer. A message that arrives first is parked as "unexpected" and
// copied when the matching receive is posted.
//
// Buffer ownership invariant: from post() until the slot is Done or Failed, the
// destination buffer belongs to the mailbox and the delivering thread; the
// owner must not free or reuse it before wait() returns, and wait() never
// returns while a delivery into the buffer is in flight.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "transport/header.h"

namespace agentcomm::transport {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

struct RecvSpec {
  MsgKind kind = MsgKind::Collective;
  int src = -1;  // -1: any source (P2P only)
  uint64_t seq = 0;
  uint64_t tag = 0;
  void* buffer = nullptr;
  uint64_t nbytes = 0;
  // What the sender must agree on (collective messages: header.h's Signature,
  // described in a mismatch error by `describe`; P2P: dtype and bytes).
  uint8_t collective = 0;
  uint8_t dtype = 0;
  uint8_t op = 0;
  uint64_t count = 0;
  DescribeSignature describe = nullptr;
  // Runs once, on whichever thread completes (or fails) the slot, with no lock held.
  std::function<void(const class RecvSlot&)> onComplete;
};

class RecvSlot {
 public:
  enum class State { Posted, Delivering, Done, Failed };
  enum class FailKind { None, Mismatch, Comm };

  const RecvSpec& spec() const { return spec_; }
  int source() const { return source_; }
  // Valid once the slot has completed (inside onComplete, or after wait()).
  bool failed() const { return state_ == State::Failed; }
  FailKind failKind() const { return failKind_; }
  const std::string& error() const { return error_; }

 private:
  friend class Mailbox;
  explicit RecvSlot(RecvSpec spec) : spec_(std::move(spec)) {}
  RecvSpec spec_;
  State state_ = State::Posted;
  FailKind failKind_ = FailKind::None;
  std::string error_;
  int source_ = -1;
  uint64_t order_ = 0;
  std::condition_variable cv_;
};

using RecvHandle = std::shared_ptr<RecvSlot>;

// Rendezvous for large P2P messages between processes that can read each
// other's memory (header.h: Offer). An offer is pulled as soon as it arrives,
// whether or not a receive is posted: into the posted receive's buffer, or
// into a parked copy that a later receive takes, exactly as an eager message
// would be parked. So a send completes without waiting for the receiver's
// program to post anything, and send-before-receive patterns cannot
// deadlock. Both hooks run on the delivering thread (the transport's reader
// of that peer): `pull` copies (and throws on failure), `acknowledge` must
// only enqueue the answer, never send from the reader (two readers each
// blocked in a send to the other would deadlock).
struct RendezvousHooks {
  std::function<void(int src, uint64_t addr, void* dst, size_t bytes)> pull;
  std::function<void(int src, uint64_t id, bool taken)> acknowledge;
};

class Mailbox {
 public:
  explicit Mailbox(int rank) : rank_(rank) {}
  Mailbox(const Mailbox&) = delete;
  Mailbox& operator=(const Mailbox&) = delete;

  // Registers a receive. Completes at once if a matching message already arrived.
  RecvHandle post(RecvSpec spec);

  // Blocks until the slot is Done (returns true) or the deadline passes
  // (returns false; the slot may still be Posted). Throws MismatchError or
  // CommError if it failed. Never returns while a delivery is in flight.
  bool wait(const RecvHandle& slot, Deadline deadline);
  // Blocks (without deadline) until no delivery into the slot is in flight.
  void waitQuiescent(const RecvHandle& slot);

  // Set before any peer may send offers (the transport's peers are told by
  // the backend's own choice to offer, made under the same condition).
  void setRendezvous(RendezvousHooks hooks);

  // Delivery side, used by a transport's receive path.
  struct Delivery {
    bool accepted = false;  // false: read the payload and drop it
    void* dst = nullptr;    // where to write the payload (may be null for 0 bytes)
    RecvHandle slot;
    struct Unexpected* parked = nullptr;
    std::shared_ptr<struct Unexpected> parkedRef;
    // Offers: the Offer lands here; the payload is pulled in endDelivery.
    int src = -1;
    Header header;
    std::shared_ptr<Offer> offer;
    std::shared_ptr<struct Unexpected> pendingOffer;  // no receive matched at begin: parked at end
    std::string refusal;                              // matched a receive that disagrees: answer "refused"
  };
  Delivery beginDelivery(int src, const Header& h);
  void endDelivery(Delivery& d, bool ok);

  // Fails every posted and future receive with `reason` (first reason wins).
  void abort(const std::string& reason);
  // Called once, with the first abort reason, on the aborting thread after the
  // receives failed (no lock held). Set before traffic, like setRendezvous.
  void setAbortListener(std::function<void(const std::string&)> listener);
  std::optional<std::string> abortReason();

  // A peer's connection is gone (it exited, crashed, or destroyed its group).
  // Fails the receives posted for that source, and later ones that no parked
  // message satisfies; others go on: a peer that finished and left must not
  // fail a collective still waiting on the remaining ranks.
  void failPeer(int src, const std::string& reason);
  std::optional<std::string> peerFailure(int src);

 private:
  using Key = std::tuple<uint8_t, int, uint64_t, uint64_t>;  // kind, src, seq, tag
  std::string checkMatch(const RecvSpec& spec, int src, const Header& h, bool compareBytes = true) const;
  // The posted receive a message from src matches (the earliest posted of the
  // exact-source and any-source ones), removed from the posted lists; or null.
  RecvHandle takePostedLocked(int src, const Header& h);
  void endOffer(Delivery& d, bool ok);
  void failLocked(const RecvHandle& slot, RecvSlot::FailKind kind, const std::string& why,
                  std::vector<RecvHandle>& completed);
  static void runCallbacks(std::vector<RecvHandle>& completed);
  // Under the lock: a delivery into `slot` ended (Done, or Failed with `why`).
  void finishLocked(const RecvHandle& slot, bool ok, const std::string& why, std::vector<RecvHandle>& completed);
  // Under the lock: a parked message's payload is complete (ok) or lost; returns
  // the receive that claimed it meanwhile and now needs copyParked, if any.
  RecvHandle settleParkedLocked(struct Unexpected& m, bool ok, const std::string& why,
                                std::vector<RecvHandle>& completed);
  // Without the lock: copies a complete parked payload into the receive that took it and finishes it.
  void copyParked(const RecvHandle& slot, const struct Unexpected& m, std::vector<RecvHandle>& completed);

  const int rank_;
  std::mutex mutex_;
  uint64_t nextOrder_ = 0;
  std::optional<std::string> abortReason_;
  std::map<int, std::string> deadPeers_;
  std::map<Key, std::deque<RecvHandle>> posted_;
  std::map<uint64_t, std::deque<RecvHandle>> postedAny_;  // P2P any-source, by tag
  std::map<Key, std::deque<std::shared_ptr<Unexpected>>> unexpected_;
  RendezvousHooks rendezvous_;  // set once, before traffic
  std::function<void(const std::string&)> abortListener_;  // set once, before traffic
};

struct Unexpected {
  Header header;
  int src = -1;
  uint64_t order = 0;
  std::vector<uint8_t> data;
  bool complete = false;
  bool failed = false;
  RecvHandle claimedBy;  // set when a receive matched it before its payload finished arriving
};

}  // namespace agentcomm::transport
