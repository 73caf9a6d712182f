#pragma once
// What every algorithm receives: the transport plus the identity of this
// collective (sequence number, kind, dtype, op, signature) stamped into every
// header, and the deadline every wait honours.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/reduce_op.h"
#include "algorithms/collective_kind.h"
#include "transport/transport.h"

namespace agentcomm::transport {
class ShmDomain;
}

namespace agentcomm::algorithms {

using transport::Deadline;
using transport::RecvHandle;

struct Context {
  transport::Transport& transport;
  uint64_t seq = 0;
  CollectiveKind collective = CollectiveKind::None;
  DataType dtype = DataType::Float32;
  ReduceOp op = ReduceOp::Sum;
  // A number every rank must agree on (e.g. numel of an all_reduce); checked
  // on every message. 0 where ranks legitimately differ (all_to_all splits).
  uint64_t signature = 0;
  Deadline deadline = Deadline::max();
  size_t chunkBytes = size_t{1} << 20;
  // Set when every rank of the group shares this host's shared-memory domain;
  // the shm algorithms run over it, p2p and the TCP algorithms over transport.
  transport::ShmDomain* shm = nullptr;
  // A sub-group view (hierarchical algorithms): when set, rank()/size() and
  // the peers of send/postRecv are positions in `members` (global ranks).
  const std::vector<int>* members = nullptr;
  int memberRank = -1;
  // Set when the group spans several hosts and at least one host has several
  // ranks (see algorithms/topology.h); null otherwise.
  const struct Topology* topo = nullptr;

  Context(transport::Transport& t, uint64_t sequence, CollectiveKind kind, DataType dt)
      : transport(t), seq(sequence), collective(kind), dtype(dt) {}

  int rank() const { return members ? memberRank : transport.rank(); }
  int size() const { return members ? static_cast<int>(members->size()) : transport.size(); }
  int globalRank(int peer) const { return members ? (*members)[peer] : peer; }
  size_t elemSize() const { return elementSize(dtype); }
  size_t chunkElems() const {
    size_t e = chunkBytes / elemSize();
    return e == 0 ? 1 : e;
  }
  // The op byte on the wire: the op where ranks must agree on it, else 0.
  uint8_t wireOp() const { return carriesReduceOp(collective) ? static_cast<uint8_t>(op) : 0; }

  // Scratch memory for algorithms, reused across calls on the same thread
  // (allocating and faulting in fresh pages for every large collective costs
  // as much as the reduction itself). Contents are undefined. Slot 0..3.
  static uint8_t* scratch(int slot, size_t bytes);

  void send(int peer, uint64_t tag, const void* data, size_t nbytes) const;
  RecvHandle postRecv(int peer, uint64_t tag, void* data, size_t nbytes) const;
  void wait(const RecvHandle& h) const;
};

// The algorithm the last collective on this thread chose, for the flight
// recorder: the dispatchers that choose (all_reduce, choosePath) note a static
// name; takeAlgorithm returns it ("" if none) and clears it.
void noteAlgorithm(const char* name);
const char* takeAlgorithm();

}  // namespace agentcomm::algorithms
