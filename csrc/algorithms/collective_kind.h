#pragma once
// Which collective a message or a shared-memory round belongs to. The
// transport carries these bytes without reading them (transport/header.h:
// Signature); this layer fills them on every message and says what they mean
// when sender and receiver disagree, so a mismatch error names both calls.
#include <cstdint>
#include <string>

#include "transport/header.h"
#include "transport/shm/shm_domain.h"

namespace agentcomm::algorithms {

enum class CollectiveKind : uint8_t {
  None = 0,
  AllReduce,
  Broadcast,
  Reduce,
  AllGather,
  ReduceScatter,
  Gather,
  Scatter,
  AllToAll,
  Barrier,
  CompressedAllReduce,  // algorithms/compressed.h
};

const char* collectiveName(CollectiveKind k);
// Whether ranks must also agree on the reduce op (all_reduce, reduce, reduce_scatter);
// the others carry op 0 so that a Sum placeholder never tells two calls apart.
bool carriesReduceOp(CollectiveKind k);

// "all_reduce of 8 elements of float32 (op sum), 32 bytes in this message"
// (transport::DescribeSignature, set on every receive the algorithms post).
std::string describeSignature(const transport::Signature& s, uint64_t nbytes);
// "all_reduce (sequence number 3, 8 elements, dtype float32, op sum, root 0,
// shm algorithm 2)" (ShmOptions::describe, set by the communicator).
std::string describeShmRound(const transport::ShmOpDesc& d);

}  // namespace agentcomm::algorithms
