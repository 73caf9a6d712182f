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
// Progress: one reader thread per peer reads a header, asks the Mailbox where
// the payload goes (a posted user buffer, or a parking buffer), and reads it
// there. Senders write under a per-peer mutex so frames never interleave.
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "transport/store.h"
#include "transport/transport.h"

namespace agentcomm::transport {

struct TcpOptions {
  std::string ifname;  // empty: AGENTCOMM_SOCKET_IFNAME, else all interfaces
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};  // for the whole setup
  std::string keyPrefix = "agentcomm/";
};

class TcpTransport : public Transport {
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

  // Reads every peer's frames on one thread (events_), whatever the world size.
  void eventLoop();
  void writeFrame(int dst, const Header& h, const void* data, Deadline deadline, bool bestEffort);
  // writeFrame with dst's send mutex already held (released on return).
  void writeLocked(int dst, const Header& h, const void* data, Deadline deadline, bool bestEffort);

  Mailbox mailbox_;
  std::vector<std::unique_ptr<Peer>> peers_;
  std::atomic<bool> closing_{false};
  std::atomic<bool> aborted_{false};
  std::thread events_;
  std::string listenAddr_;
  int listenPort_ = 0;
};

}  // namespace agentcomm::transport
