#pragma once
// Rendezvous between ranks of one host for the TCP-path collectives (gather,
// scatter, all_to_all): large pieces between ranks of one host (the whole
// group, or the same-host ranks of a group over several hosts) are not sent;
// the rank holding the data sends only its address (a Rendezvous message),
// the other one reads the piece straight from that rank's memory with one
// process_vm_readv copy and acknowledges.
//
// Invariant: the holder's buffer is not touched by anyone and stays valid
// until the ack arrived, so the holder waits for it before returning. Each
// side decides from the piece size it knows itself, so both agree whenever
// their counts do; when they do not, one side expects an offer where the other
// sends data (or the converse) and the receive fails on the message size, or
// the offer's size differs from the reader's count: a mismatch either way,
// never a hang. (send/recv has its own, in the mailbox: transport/mailbox.h.)
#include <cstddef>
#include <cstdint>
#include <utility>

#include "algorithms/context.h"

namespace agentcomm::algorithms {

struct Rendezvous {
  uint64_t addr = 0;
  uint64_t bytes = 0;
};

// The tag of the acknowledgement a reader sends back (one per pair and collective).
uint64_t rendezvousAckTag();

// Where `peer` is in a shared-memory domain with cross-memory attach that this
// rank shares with it: the whole group's, or this host's part of a group over
// several hosts. The domain and the peer's index in it, or {null, -1}.
std::pair<transport::ShmDomain*, int> sameHost(const Context& ctx, int peer);

// Whether a piece of `bytes` between this rank and `peer` goes by rendezvous
// (every rank decides from what it knows itself: the peer's place, the size).
bool byRendezvous(const Context& ctx, int peer, size_t bytes);

// The holder's side: posts the receive of `peer`'s acknowledgement into
// `ack`, then publishes `bytes` at `data` to `peer` through `d`. Returns the
// acknowledgement's handle: `data` stays untouched until it was waited for;
// `d` and `ack` outlive that wait.
RecvHandle offer(Context& ctx, int peer, uint64_t tag, const void* data, size_t bytes, Rendezvous& d, uint64_t& ack);

// The reader's side: checks the offer against the `bytes` expected, copies it
// into dst, then releases the holder. `op` names the collective in errors.
void take(Context& ctx, int peer, const Rendezvous& d, void* dst, size_t bytes, const char* op);

}  // namespace agentcomm::algorithms
