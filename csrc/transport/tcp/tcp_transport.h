#pragma once
// TCP transport: a full mesh of connections, one per pair of ranks, set up
// through the rendezvous Store.
//
// Setup: every rank listens (on AGENTCOMM_SOCKET_IFNAME's address if set,
// otherwise on all addresses), publishes "host-id address port", then connects
// to every lower rank and accepts every higher one. Rank 0 draws a random
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
#include <string>
#include <thread>
#include <vector>

#include "transport/store.h"
#include "transport/tcp/event_loop.h"
#include "transport/transport.h"

namespace agentcomm::transport {

struct TcpOptions {
  std::string ifname;  // empty: AGENTCOMM_SOCKET_IFNAME, else all interfaces
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

 private:
  struct Peer {
    int fd = -1;
    std::timed_mutex sendMutex;
  };

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
  // The event loop: peer `tag` has data (or hung up).
  void onReadable(uint32_t tag) override;
  // The peer's reading ends (lost: its connection broke, not our closing).
  void finishPeer(int src, bool lost);
  // A frame's last byte arrived. False when the peer is finished (an Abort frame).
  bool completeFrame(int src);
  void writeFrame(int dst, const Header& h, const void* data, Deadline deadline, bool bestEffort);
  // writeFrame with dst's send mutex already held (released on return).
  void writeLocked(int dst, const Header& h, const void* data, Deadline deadline, bool bestEffort);

  Mailbox mailbox_;
  std::vector<std::unique_ptr<Peer>> peers_;
  std::atomic<bool> closing_{false};
  std::atomic<bool> aborted_{false};
  std::shared_ptr<EventLoop> loop_;  // null for a world of one
  std::vector<Reading> reading_;      // by peer
  std::vector<uint8_t> sink_;         // drains a payload nothing may take
  std::string listenAddr_;
  int listenPort_ = 0;
};

}  // namespace agentcomm::transport
