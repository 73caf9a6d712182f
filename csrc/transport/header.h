#pragma once
// Wire header that precedes every payload. The receiver checks it against what
// it expects before a byte of payload lands in a user buffer.
#include <cstdint>
#include <string>

namespace agentcomm::transport {

constexpr uint32_t kHeaderMagic = 0x41434d31;  // "ACM1"

enum class MsgKind : uint8_t {
  Collective = 1,  // matched by (src, seq, tag)
  P2P = 2,         // matched by (src or any, user tag), FIFO per source
  Abort = 3,       // payload: UTF-8 reason (at most 64 KiB); the sender's communicator is gone
  Leave = 4,       // no payload: the sender destroyed its end of the group (TCP)
};

// The part of a collective message's header that its sender and receiver must
// agree on. The transport compares it and carries it without reading it: the
// algorithms layer fills it (algorithms/collective_kind.h) and, through a
// DescribeSignature set on each receive, says what it means in a mismatch error.
struct Signature {
  uint8_t collective = 0;  // the algorithms' collective kind
  uint8_t dtype = 0;       // DataType
  uint8_t op = 0;          // ReduceOp (0 where the collective reduces nothing)
  uint64_t count = 0;      // e.g. numel of an all_reduce
};
// "<what the call was>, <nbytes> bytes in this message", for errors.
using DescribeSignature = std::string (*)(const Signature& signature, uint64_t nbytes);

#pragma pack(push, 1)
struct Header {
  uint32_t magic = kHeaderMagic;
  uint8_t kind = 0;        // MsgKind
  uint8_t collective = 0;  // Signature::collective (P2P: 0)
  uint8_t dtype = 0;       // DataType
  uint8_t op = 0;          // ReduceOp (P2P: 0, or kP2POffer)
  uint64_t seq = 0;        // collective sequence number (P2P: 0)
  uint64_t tag = 0;        // step/chunk within the collective (P2P: user tag)
  uint64_t count = 0;      // signature every rank must agree on (e.g. numel of an all_reduce)
  uint64_t nbytes = 0;     // payload bytes following the header
};
#pragma pack(pop)
static_assert(sizeof(Header) == 40, "wire header layout");

// Rendezvous (mailbox.h): a P2P message whose `op` is kP2POffer carries an
// Offer instead of its payload; the receiving side pulls the payload from the
// sender's memory and answers with a P2P message tagged kOfferAckTag | id
// whose 8-byte payload is 1 (taken: the sender may reuse its buffer) or 0
// (refused: sizes differ, or the pull failed). User tags are 32-bit, so no
// receive a user posts can match an acknowledgement.
constexpr uint8_t kP2POffer = 1;
constexpr uint64_t kOfferAckTag = uint64_t{1} << 63;
struct Offer {
  uint64_t addr = 0;   // the payload's address in the sender's process
  uint64_t bytes = 0;  // the payload's size
  uint64_t id = 0;     // names the acknowledgement
};

// Largest payload a peer may announce; anything above is a corrupt stream.
constexpr uint64_t kMaxPayloadBytes = uint64_t{1} << 42;

// Empty when the header is well-formed; otherwise what is wrong with it.
std::string validateHeader(const Header& h);

}  // namespace agentcomm::transport
