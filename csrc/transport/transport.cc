#include "transport/transport.h"

#include "core/error.h"
#include "core/logging.h"

namespace agentcomm::transport {

void Transport::wait(const RecvHandle& slot, Deadline deadline, const std::string& what) {
  if (mailbox().wait(slot, deadline)) return;
  const std::string msg = strCat("agentcomm: Timed out ", what, " (rank ", rank_, " of ", size_,
                                 "); the peer may be dead, stuck, or calling a different collective");
  AC_LOG(Warn, msg);
  abort(msg);
  mailbox().waitQuiescent(slot);
  throw TimeoutError(msg);
}

}  // namespace agentcomm::transport
