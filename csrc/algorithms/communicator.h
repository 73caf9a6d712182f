#pragma once
// The communicator: one process group's ranks, torch-free. It owns
//   - the bootstrap over a Store: the TCP mesh, which ranks share a host, the
//     shared-memory domain among them (with cross-memory attach), and the
//     topology when the group spans hosts;
//   - the sequence numbers of collectives and the path each one takes (the
//     algorithms' ordered tables read the Context it makes);
//   - both halves of the point-to-point rendezvous protocol (a large send to
//     a rank of this host is offered and pulled, mailbox.h);
//   - failure: abort (sticky, tells peers), injected faults (AGENTCOMM_FAULT),
//     the flight recorder and its dump (AGENTCOMM_TRACE_DIR).
// It offers pointer-level collectives and send/recv over raw buffers. An
// adapter (csrc/torch, or any other binding) validates its tensors, keeps
// them alive and calls it; it never sees a socket or a segment.
//
// Threads: collectives run one at a time, in the same order on every rank (the
// caller serializes them: the torch adapter's worker, or one inline caller);
// send/trySend/offer/postRecv from any thread; abort/failure from any thread.
// The transport's readers run the rendezvous pulls; answers go out from the
// communicator's own answer lane, never from a reader.
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "algorithms/algorithms.h"
#include "algorithms/topology.h"
#include "core/flight_recorder.h"
#include "core/lane.h"
#include "transport/fault.h"
#include "transport/shm/shm_domain.h"
#include "transport/store.h"
#include "transport/transport.h"

namespace agentcomm::transport {
class TcpHub;
}  // namespace agentcomm::transport

namespace agentcomm::algorithms {

struct CommunicatorOptions {
  // Bootstrap limit, and the default deadline of an op.
  std::chrono::milliseconds timeout{std::chrono::minutes(30)};
  // Names the group in logs, the flight recorder and AGENTCOMM_FAULT's group=.
  std::string groupName;
  // Pipelining chunk of the TCP algorithms; 0: AGENTCOMM_CHUNK_BYTES, else 1 MiB.
  size_t chunkBytes = 0;
  // Prefix of every store key of the bootstrap; empty: storeKeyPrefix().
  std::string keyPrefix;
  // The TCP endpoint (null: the process's). Tests that run ranks as threads
  // of one process give each rank its own (transport::TcpHub::create).
  std::shared_ptr<transport::TcpHub> tcpHub;
};

// The prefix of this process's bootstrap keys: "agentcomm/", or under torchrun
// "agentcomm/attempt<TORCHELASTIC_RESTART_COUNT>/" (a restarted attempt must not
// read what the previous one published in the agent's store, which outlives it).
std::string storeKeyPrefix();

// What the group's first failure was, as seen here (an adapter maps it to its
// own error kinds): none yet; an op here ran out of time; another failure here
// (an op's error, abort()); or nothing here failed first (a peer did).
enum class FailureKind { None, Timeout, Local, Remote };

class Communicator {
 public:
  // Bootstrap over `store` (every rank of the group calls it; throws
  // TimeoutError / CommError naming what is missing).
  Communicator(transport::Store& store, int rank, int size, CommunicatorOptions options);
  // Over a transport made elsewhere (tests: the in-process one): no shared
  // memory, no rendezvous.
  Communicator(std::unique_ptr<transport::Transport> transport, CommunicatorOptions options);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  const std::string& groupName() const { return options_.groupName; }
  std::chrono::milliseconds timeout() const { return options_.timeout; }
  // The prefix of this group's bootstrap keys in its store.
  const std::string& keyPrefix() const { return options_.keyPrefix; }
  size_t chunkBytes() const { return options_.chunkBytes; }
  // "shm+cma/tcp", "hierarchical(shm)/tcp", "tcp", "inproc", ...
  const std::string& pathName() const { return pathName_; }
  // This host's ranks of the group (global ranks, ascending; just this rank when alone).
  const std::vector<int>& localRanks() const { return localRanks_; }
  // Every rank of the group shares this host's shared-memory domain.
  bool wholeGroupShm() const { return wholeGroupShm_; }
  const std::shared_ptr<FlightRecorder>& recorder() const { return recorder_; }

  // ---- collectives: one at a time, same order on every rank (see above).
  // Buffers hold counts of `dt` elements and stay valid until the call
  // returns; it throws (after aborting the group) on any failure.
  void allReduce(const AllReduceOptions& o, DataType dt, ReduceOp op, Deadline d);
  void broadcast(const BroadcastOptions& o, DataType dt, Deadline d);
  void reduce(const ReduceOptions& o, DataType dt, ReduceOp op, Deadline d);
  void allGather(const AllGatherOptions& o, DataType dt, Deadline d);
  void reduceScatter(const ReduceScatterOptions& o, DataType dt, ReduceOp op, Deadline d);
  void gather(const GatherOptions& o, DataType dt, Deadline d);
  void scatter(const ScatterOptions& o, DataType dt, Deadline d);
  void allToAll(const AllToAllOptions& o, DataType dt, Deadline d);
  void barrier(Deadline d);
  // The next collective's Context, for algorithms without a method here
  // (compressed all-reduces, the CUDA IPC exchange). Same threading rule.
  Context context(CollectiveKind kind, DataType dt, ReduceOp op, uint64_t signature, Deadline d);

  // ---- point to point: any thread; tag is the user's (32 bits).
  // Sends count elements of dt (nbytes bytes) to dst; returns once data may be reused.
  void send(int dst, uint32_t tag, const void* data, size_t nbytes, DataType dt, size_t count, Deadline d);
  // send(), only if no other thread is sending to dst right now; false and nothing sent otherwise.
  bool trySend(int dst, uint32_t tag, const void* data, size_t nbytes, DataType dt, size_t count, Deadline d);
  // Whether a send of nbytes to dst goes by rendezvous (offer) instead of send.
  bool offersTo(int dst, size_t nbytes) const;
  // Rendezvous send: posts the receive of dst's answer now and returns the
  // step that sends the offer (address and size; run it on a sending
  // thread). data must stay valid until onAnswer runs, once: with "" when
  // dst took the payload, else the error (refused, or the group failed). It
  // runs on the thread that completes the answer (a reader): only hand off there.
  std::function<void(Deadline)> offer(int dst, uint32_t tag, const void* data, size_t nbytes, DataType dt,
                                      size_t count, std::function<void(const std::string& error)> onAnswer);
  // Posts a receive of count elements of dt (nbytes) from src (-1: any
  // source). onComplete runs once, on the completing thread, with no lock held.
  transport::RecvHandle postRecv(int src, uint32_t tag, void* data, size_t nbytes, DataType dt, size_t count,
                                 std::function<void(const transport::RecvSlot&)> onComplete);

  // ---- failure.
  // Runs one op on the calling thread with `timeout` to finish: refuses
  // (CommError) once the group has failed; runs AGENTCOMM_FAULT's faults of
  // collective number `op` (0: a point-to-point op, which faults never hit);
  // on any failure asks onFailure(error) for the failure's text (the caller
  // records the op there), notes its kind, aborts the group with it (the
  // peers learn it) and rethrows.
  void run(uint64_t op, std::chrono::milliseconds timeout, const std::function<void(Deadline)>& fn,
           const std::function<std::string(const std::exception&)>& onFailure);
  // Fails every op of the group and tells the peers (sticky; any thread).
  void abort(const std::string& reason);
  // The first failure's text once the group is unusable.
  std::optional<std::string> failure() const;
  FailureKind failureKind() const;
  // Records the kind of the group's first failure (later ones keep the first).
  void noteFailure(FailureKind kind);
  // Writes every group's flight records to AGENTCOMM_TRACE_DIR, if set (never throws).
  void writeFlightRecords(const std::string& reason);

  // Stops the answer lane and fails the receives still posted, without
  // telling peers (they see the sockets close). Idempotent.
  void shutdown();
  // After shutdown(), once no thread can call in any more (but failure() and
  // abort(), which then do nothing): closes the sockets and the shared
  // memory. The destructor does both.
  void release();

 private:
  void bootstrap(transport::Store& store);
  void startRendezvous();
  void settleRendezvous(const std::vector<int>& members);
  void injectFaults(uint64_t op, Deadline stallLimit);
  // The transport, or CommError once release() closed it.
  transport::Transport& live() const;

  const int rank_;
  const int size_;
  CommunicatorOptions options_;
  std::unique_ptr<transport::Transport> transport_;
  std::unique_ptr<transport::ShmDomain> shm_;   // this host's ranks of the group (null if alone)
  bool wholeGroupShm_ = false;                  // every rank of the group is in shm_
  std::unique_ptr<Topology> topo_;              // several hosts, some with several ranks
  std::vector<int> localRanks_;
  std::string pathName_;
  uint64_t collectiveSeq_ = 0;                  // the collective thread only (context())

  // Rendezvous. The readers' pulls wait until the bootstrap decided on shm_
  // (peers may offer before our constructor is done). rendezvousIndex_: per
  // group rank, its index in shm_ when large sends between us go by
  // rendezvous, else -1; fixed once settled.
  std::atomic<uint64_t> nextOfferId_{0};
  std::mutex rendezvousMu_;
  std::condition_variable rendezvousCv_;
  bool rendezvousSettled_ = false;
  std::vector<int> rendezvousIndex_;
  Lane<std::function<void()>> answers_;         // answers to peers' offers, never sent from a reader

  std::shared_ptr<FlightRecorder> recorder_;    // this group's last ops
  transport::FaultPlan faults_;                 // AGENTCOMM_FAULT; empty: none
  std::atomic<int> failureKind_{0};             // FailureKind of the first failure noted here
  std::atomic<bool> dumpOnAbort_{true};         // false once shutdown starts (its abort is no failure)
  std::mutex flightDumpMu_;                     // one writer of the dump file at a time
  std::atomic<bool> flightDumped_{false};       // this group wrote a dump
  std::once_flag shutdownOnce_;
};

}  // namespace agentcomm::algorithms
