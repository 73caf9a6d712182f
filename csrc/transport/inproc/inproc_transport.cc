#include "transport/inproc/inproc_transport.h"

#include <cstring>

#include "core/error.h"

namespace agentcomm::transport {

std::shared_ptr<InProcHub> InProcHub::create(int size) {
  auto hub = std::shared_ptr<InProcHub>(new InProcHub());
  for (int r = 0; r < size; ++r) hub->mailboxes_.push_back(std::make_unique<Mailbox>(r));
  return hub;
}

std::unique_ptr<Transport> InProcHub::connect(int rank) {
  return std::make_unique<InProcTransport>(shared_from_this(), rank);
}

InProcTransport::InProcTransport(std::shared_ptr<InProcHub> hub, int rank)
    : Transport(rank, hub->size()), hub_(std::move(hub)) {}

void InProcTransport::send(int dst, const Header& h, const void* data, Deadline /*deadline*/) {
  AC_CHECK(dst >= 0 && dst < size_ && dst != rank_, InvalidArgument, "inproc send: bad destination ", dst);
  if (auto why = mailbox().abortReason()) throw CommError(*why);
  Mailbox& peer = hub_->mailbox(dst);
  auto d = peer.beginDelivery(rank_, h);
  if (!d.accepted) return;
  if (h.nbytes > 0) std::memcpy(d.dst, data, h.nbytes);
  peer.endDelivery(d, true);
}

void InProcTransport::abort(const std::string& reason) {
  if (mailbox().abortReason()) return;
  mailbox().abort(reason);
  // Plays the part of the Abort frame a socket transport sends to every peer.
  for (int r = 0; r < size_; ++r) {
    if (r != rank_) hub_->mailbox(r).abort(strCat("agentcomm: rank ", rank_, " aborted: ", reason));
  }
}

}  // namespace agentcomm::transport
