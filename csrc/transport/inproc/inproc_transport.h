#pragma once
// In-process transport: ranks are threads of one process sharing a Hub. A send
// copies straight into the receiver's posted buffer (or parks the message), on
// the sender's thread. For unit tests of the algorithms without sockets.
#include <memory>
#include <vector>

#include "transport/transport.h"

namespace agentcomm::transport {

class InProcHub : public std::enable_shared_from_this<InProcHub> {
 public:
  static std::shared_ptr<InProcHub> create(int size);
  std::unique_ptr<Transport> connect(int rank);
  int size() const { return static_cast<int>(mailboxes_.size()); }
  Mailbox& mailbox(int rank) { return *mailboxes_[rank]; }

 private:
  std::vector<std::unique_ptr<Mailbox>> mailboxes_;
};

class InProcTransport : public Transport {
 public:
  InProcTransport(std::shared_ptr<InProcHub> hub, int rank);
  const char* name() const override { return "inproc"; }
  Mailbox& mailbox() override { return hub_->mailbox(rank_); }
  void send(int dst, const Header& h, const void* data, Deadline deadline) override;
  void abort(const std::string& reason) override;

 private:
  std::shared_ptr<InProcHub> hub_;
};

}  // namespace agentcomm::transport
