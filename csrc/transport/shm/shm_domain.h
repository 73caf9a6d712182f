#pragma once
// Shared-memory domain: the ranks of one process group that live on the same
// host (same hostId()) share one POSIX shared-memory segment, and, where the
// kernel permits it, read each other's buffers directly (Cross Memory Attach,
// process_vm_readv: one copy, no staging).
//
// Segment: created 0600 under an unguessable name (/agentcomm-<128 random
// bits>) by the lowest rank, and unlinked as soon as every rank reported that
// it attached (or failed to), so a crash afterwards leaves nothing in
// /dev/shm. Layout: a header, one control block per rank (its sync counter,
// pid, and two parity-indexed descriptor areas), then two parity-indexed data
// slots of slotBytes per rank.
//
// Synchronisation model (the invariant every shm algorithm relies on):
//   - Every rank passes through the same sequence of sync points. A sync
//     point bumps this rank's counter (who has arrived, for errors), adds 1 to
//     the domain's shared arrival count, and waits until that count says every
//     rank arrived. Waiting spins briefly (never when the host's ranks
//     outnumber its CPUs), yields, then blocks on a futex on the arrival
//     count; the last rank to arrive wakes all sleepers with one call, so a
//     sync point costs each rank at most one sleep and one wake-up.
//   - arrive() is the sync point that starts a "round". It first writes this
//     rank's descriptor (+ published words, e.g. buffer addresses) into
//     parity p = round % 2, then syncs, then checks that every peer's
//     descriptor equals its own (same collective, dtype, op, size, algorithm):
//     a mismatch throws MismatchError before any data moves.
//   - A rank may write its parity-p slot/descriptor for round t only after it
//     passed arrive() of round t-1; every peer reached that point only after
//     finishing all reads of round t-2 (the previous use of parity p). So one
//     arrive per round is enough for double buffering.
//   - A rank that exposes its own user buffer to peers (CMA) must not return
//     before a final sync(): peers may still be reading it.
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "transport/mailbox.h"
#include "transport/store.h"

namespace agentcomm::transport {

// What every rank of one round must agree on (checked by arrive()).
struct ShmOpDesc {
  uint64_t seq = 0;        // the collective's sequence number
  uint64_t signature = 0;  // e.g. element count; 0 where ranks differ legitimately
  uint32_t algo = 0;       // which shm algorithm (ranks must run the same one)
  uint8_t collective = 0, dtype = 0, op = 0, root = 0;
  bool operator==(const ShmOpDesc&) const = default;
};

// "<what the round was>" for a mismatch error (the algorithms layer says
// what the descriptor's bytes mean: algorithms/collective_kind.h).
using DescribeRound = std::string (*)(const ShmOpDesc& desc);

struct ShmOptions {
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};  // setup
  std::string keyPrefix = "agentcomm/";
  // Bytes per rank per parity slot; 0: AGENTCOMM_SHM_SLOT_BYTES, else 8 MiB.
  size_t slotBytes = 0;
  // Cross Memory Attach: on when the probe succeeds, unless AGENTCOMM_SHM_CMA=0.
  bool allowCma = true;
  // Describes a descriptor in a mismatch error; null: its raw fields.
  DescribeRound describe = nullptr;
};

class ShmDomain {
 public:
  // Collective over `members` (the group's global ranks on this host,
  // ascending, including `rank`; see exchangeHosts). Returns nullptr (and
  // logs why at INFO) when there are fewer than two, or when a member cannot
  // attach; all members reach the same decision. rank()/size() below are
  // positions in `members`. `abortProbe(globalRank)` is polled while blocked
  // on that member: the transport's sticky abort reason, or why that peer's
  // connection is gone.
  static std::unique_ptr<ShmDomain> create(Store& store, int rank, const std::vector<int>& members,
                                           const ShmOptions& options,
                                           std::function<std::optional<std::string>(int)> abortProbe);
  ~ShmDomain();
  ShmDomain(const ShmDomain&) = delete;
  ShmDomain& operator=(const ShmDomain&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  size_t slotBytes() const { return slotBytes_; }
  size_t maxWords() const { return maxWords_; }
  bool cma() const { return cma_; }
  const std::string& cmaUnavailableReason() const { return cmaWhy_; }

  // Starts a round (see the invariant above). `words` (up to maxWords()) are
  // published to peers, readable with peerWord() until the next round of the
  // same parity. Returns the round's parity.
  int arrive(const ShmOpDesc& desc, const uint64_t* words, size_t nwords, Deadline deadline, const char* what);
  // Parity the next arrive() will use: a rank fills its slot(rank(), p)
  // before arrive() to hand data to its peers in that round.
  int nextParity() const { return static_cast<int>(round_ & 1); }
  // A sync point inside a round.
  void sync(Deadline deadline, const char* what);

  uint64_t peerWord(int peer, int parity, size_t i) const;
  // Data slot of `peer` for `parity`: slotBytes(), 64-byte aligned.
  uint8_t* slot(int peer, int parity) const;

  // Cross Memory Attach: copies n bytes at address `remote` in `peer`'s
  // process into dst / from src. Throws CommError (peer gone, EPERM).
  void readPeer(int peer, uint64_t remote, void* dst, size_t n) const;

  // Called on a buffer this rank is about to expose to peers' Cross Memory
  // Attach reads. process_vm_readv pins the source page by page, so a buffer
  // on 4 KiB pages is read at about half of memcpy speed, one on 2 MiB pages
  // at full speed. A large buffer seen a second time (a DDP bucket, a
  // benchmark tensor) is collapsed into transparent huge pages once
  // (madvise MADV_COLLAPSE: synchronous, contents unchanged; costs about one
  // copy of the buffer). AGENTCOMM_SHM_COLLAPSE=0 disables it.
  void preferHugePages(const void* p, size_t n);

  // Sticky: wakes and fails every waiter on this host. Idempotent.
  void abort(const std::string& reason);

 private:
  struct Header;
  struct RankCtl;
  ShmDomain(int rank, int size) : rank_(rank), size_(size) {}
  RankCtl* ctl(int r) const;
  uint64_t* words(int r, int parity) const;
  ShmOpDesc* desc(int r, int parity) const;
  void waitPeers(uint32_t target, Deadline deadline, const char* what);
  [[noreturn]] void fail(const std::string& msg, bool timeout);

  const int rank_;
  const int size_;
  size_t slotBytes_ = 0;
  size_t maxWords_ = 0;
  size_t ctlStride_ = 0;
  size_t slotsOffset_ = 0;
  size_t mapBytes_ = 0;
  uint8_t* base_ = nullptr;
  std::vector<int> pids_;
  bool cma_ = false;
  std::string cmaWhy_;
  std::map<std::pair<uintptr_t, size_t>, int> seenBuffers_;  // preferHugePages' sightings
  bool collapse_ = true;
  DescribeRound describe_ = nullptr;  // ShmOptions::describe
  std::chrono::microseconds spinFor_{1};    // AGENTCOMM_SHM_SPIN_US
  std::chrono::microseconds yieldFor_{21};   // spin + AGENTCOMM_SHM_YIELD_US
  bool crowded_ = false;  // more ranks on this host than CPUs to run them: waits never spin
  uint32_t counter_ = 0;  // sync points passed by this rank (mirrors ctl(rank_)->counter)
  uint64_t round_ = 0;
  std::function<std::optional<std::string>(int)> abortProbe_;
  std::vector<int> members_;  // global ranks, by position
};

}  // namespace agentcomm::transport
