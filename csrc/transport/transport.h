#pragma once
// The one small interface algorithms see: rank, size, send a framed message,
// post/wait receives through the Mailbox, and abort.
//
// Progress: receives progress in the background (the transport's own threads
// or, in-process, the sender's thread), so a blocking send() never waits for
// the peer's algorithm to post a receive. That is what lets a ring send to the
// right while its left neighbour is still sending to it.
#include <memory>
#include <string>

#include "transport/header.h"
#include "transport/mailbox.h"

namespace agentcomm::transport {

class Transport {
 public:
  Transport(int rank, int size) : rank_(rank), size_(size) {}
  virtual ~Transport() = default;
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  virtual const char* name() const = 0;
  virtual Mailbox& mailbox() = 0;

  // Sends h (h.nbytes payload bytes from data) to dst != rank(). Returns once
  // `data` may be reused. Throws CommError (aborted, peer lost) or TimeoutError.
  virtual void send(int dst, const Header& h, const void* data, Deadline deadline) = 0;
  // send(), but only if no other thread is sending to dst at this moment (a
  // small message must not queue behind a large one on the caller's thread);
  // false, and nothing sent, otherwise. Transports without the notion say false.
  virtual bool trySend(int dst, const Header& h, const void* data, Deadline deadline) {
    (void)dst, (void)h, (void)data, (void)deadline;
    return false;
  }

  // Sticky failure: fails every pending and future receive with `reason`,
  // tells the peers (best effort) and stops progress. Idempotent.
  virtual void abort(const std::string& reason) = 0;
  // Fault injection (fault.h, drop): loses every connection at once, as a
  // network failure would: peers are not told why; this rank's own receives
  // fail with `reason`. Default: abort.
  virtual void cut(const std::string& reason) { abort(reason); }

  // Waits for a posted receive. On deadline: aborts with a timeout message
  // naming `what`, then throws TimeoutError.
  void wait(const RecvHandle& slot, Deadline deadline, const std::string& what);

  RecvHandle post(RecvSpec spec) { return mailbox().post(std::move(spec)); }

 protected:
  const int rank_;
  const int size_;
};

}  // namespace agentcomm::transport
