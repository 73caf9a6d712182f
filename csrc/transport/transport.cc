#include "transport/transport.h"

#include "core/error.h"
#include "core/logging.h"

namespace agentcomm::transport {

void Transport::wait(const RecvHandle& slot, Deadline deadline, const std::string& what) {
  try {
    if (mailbox().wait(slot, deadline)) return;
  } catch (const CommError& e) {
    // A receive that failed (its peer is gone) fails the communicator: the
    // caller's other receives must not land in buffers it is giving up.
    abort(e.what());
    throw;
  }
  const std::string msg = strCat("agentcomm: Timed out ", what, " (rank ", rank_, " of ", size_,
                                 "); the peer may be dead, stuck, or calling a different collective");
  AC_LOG(Warn, msg);
  abort(msg);
  mailbox().waitQuiescent(slot);
  throw TimeoutError(msg);
}

}  // namespace agentcomm::transport
