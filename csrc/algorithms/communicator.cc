#include "algorithms/communicator.h"

#include <algorithm>
#include <cstdlib>
#include <thread>

#include "algorithms/collective_kind.h"
#include "algorithms/shm_common.h"
#include "core/env.h"
#include "core/error.h"
#include "core/logging.h"
#include "core/version.h"
#include "transport/host.h"
#include "transport/tcp/tcp_transport.h"

namespace agentcomm::algorithms {

using transport::Clock;

namespace {

// The error of an op issued after its group failed (agentcomm.debug skips such records).
constexpr const char* kUnusable = "agentcomm: the communicator is unusable after an earlier error: ";

// The header of a point-to-point frame: a payload, a rendezvous offer, or an answer to one.
transport::Header p2pHeader(DataType dt, uint64_t tag, uint64_t count, uint64_t nbytes, uint8_t op = 0) {
  transport::Header h;
  h.kind = static_cast<uint8_t>(transport::MsgKind::P2P);
  h.dtype = static_cast<uint8_t>(dt);
  h.op = op;
  h.tag = tag;
  h.count = count;
  h.nbytes = nbytes;
  return h;
}

CommunicatorOptions resolved(CommunicatorOptions o) {
  if (o.chunkBytes == 0) o.chunkBytes = envSize("AGENTCOMM_CHUNK_BYTES", size_t{1} << 20);
  if (o.keyPrefix.empty()) o.keyPrefix = storeKeyPrefix();
  return o;
}

}  // namespace

std::string storeKeyPrefix() {
  const char* restart = envText("TORCHELASTIC_RESTART_COUNT");
  if (restart == nullptr) return "agentcomm/";
  char* end = nullptr;
  const unsigned long long n = std::strtoull(restart, &end, 10);
  AC_CHECK(end != restart && *end == 0, InvalidArgument, "TORCHELASTIC_RESTART_COUNT=", restart,
           " is not a restart count (torchrun sets 0, 1, ...)");
  return strCat("agentcomm/attempt", n, "/");
}

// ---------------------------------------------------------------- bootstrap

Communicator::Communicator(transport::Store& store, int rank, int size, CommunicatorOptions options)
    : rank_(rank), size_(size), options_(resolved(std::move(options))) {
  recorder_ = makeFlightRecorder(FlightRecorder::capacityFromEnv(), options_.groupName, rank, size);
  faults_ = transport::FaultPlan::fromEnv();
  transport::TcpOptions tcp;
  tcp.timeout = options_.timeout;
  tcp.keyPrefix = options_.keyPrefix;
  tcp.hub = options_.tcpHub;
  transport_ = std::make_unique<transport::TcpTransport>(store, rank, size, tcp);
  startRendezvous();
  try {
    bootstrap(store);
  } catch (...) {
    settleRendezvous({});
    // No destructor runs for a constructor that throws: the transport's readers
    // (which call the abort listener and the rendezvous hooks, both using this
    // object) and the answer lane stop now, while the members they use exist.
    dumpOnAbort_.store(false);
    answers_.stop(false);
    topo_.reset();
    shm_.reset();
    transport_.reset();
    throw;
  }
  settleRendezvous(localRanks_);
  const std::string shmName = shm_ ? (shm_->cma() ? "shm+cma" : "shm") : "";
  pathName_ = wholeGroupShm_ ? shmName + "/tcp"
              : topo_        ? strCat("hierarchical(", shmName.empty() ? "tcp" : shmName, ")/tcp")
                             : transport_->name();
  AC_LOG(Info, "agentcomm ", kVersion, ": group '", options_.groupName, "' rank ", rank, "/", size, ", transport ",
         pathName_, ", chunk ", options_.chunkBytes, " bytes, timeout ", options_.timeout.count(), " ms");
}

Communicator::Communicator(std::unique_ptr<transport::Transport> transport, CommunicatorOptions options)
    : rank_(transport->rank()), size_(transport->size()), options_(resolved(std::move(options))),
      transport_(std::move(transport)) {
  recorder_ = makeFlightRecorder(FlightRecorder::capacityFromEnv(), options_.groupName, rank_, size_);
  faults_ = transport::FaultPlan::fromEnv();
  localRanks_ = {rank_};
  startRendezvous();
  settleRendezvous(localRanks_);
  pathName_ = transport_->name();
}

Communicator::~Communicator() { release(); }

// Shared memory among the ranks of each host; a hierarchy when the group
// spans hosts and some host runs several ranks.
void Communicator::bootstrap(transport::Store& store) {
  const transport::HostMap hosts =
      transport::exchangeHosts(store, rank_, size_, options_.keyPrefix, options_.timeout);
  transport::ShmOptions shmOpts;
  shmOpts.timeout = options_.timeout;
  shmOpts.keyPrefix = options_.keyPrefix;
  shmOpts.describe = describeShmRound;
  localRanks_ = hosts.membersOf(rank_);
  shm_ = transport::ShmDomain::create(store, rank_, localRanks_, shmOpts,
                                      [t = transport_.get()](int peer) -> std::optional<std::string> {
                                        if (auto why = t->mailbox().abortReason()) return why;
                                        return t->mailbox().peerFailure(peer);
                                      });
  wholeGroupShm_ = shm_ != nullptr && static_cast<int>(localRanks_.size()) == size_;
  const std::vector<int> leaders = hosts.leaders();
  if (leaders.size() > 1 && static_cast<int>(leaders.size()) < size_) {
    topo_ = std::make_unique<Topology>();
    topo_->local = shm_.get();
    topo_->localRanks = localRanks_;
    topo_->leaders = leaders;
    for (int leader : leaders) topo_->hosts.push_back(hosts.membersOf(leader));
    topo_->localRank = static_cast<int>(std::find(localRanks_.begin(), localRanks_.end(), rank_) - localRanks_.begin());
    for (size_t i = 0; i < leaders.size(); ++i)
      if (leaders[i] == rank_) topo_->leaderIndex = static_cast<int>(i);
  }
}

// The receiving half of the rendezvous protocol, and the failure listener:
// set before the first peer can send anything our way.
void Communicator::startRendezvous() {
  answers_.start("ac_answers", [this](std::function<void()>& answer) {
    try {
      answer();
    } catch (const std::exception& e) {  // the offering peer is gone or the group failed: it learns that way
      AC_LOG(Info, "agentcomm: could not answer a rendezvous offer: ", e.what());
    }
  });
  transport::RendezvousHooks hooks;
  hooks.pull = [this](int src, uint64_t addr, void* dst, size_t bytes) {
    std::unique_lock<std::mutex> lock(rendezvousMu_);
    rendezvousCv_.wait(lock, [&] { return rendezvousSettled_; });
    const int index = rendezvousIndex_.empty() ? -1 : rendezvousIndex_[static_cast<size_t>(src)];
    AC_CHECK(index >= 0, CommError, "agentcomm: rank ", src, " offered a message by rendezvous, which rank ", rank_,
             " cannot read (no cross-memory attach to it)");
    lock.unlock();
    shm_->readPeer(index, addr, dst, bytes);
  };
  hooks.acknowledge = [this](int src, uint64_t id, bool taken) {
    answers_.push([this, src, id, taken] {
      const uint64_t word = taken ? 1 : 0;
      transport_->send(src, p2pHeader(DataType::UInt8, transport::kOfferAckTag | id, 1, sizeof word), &word,
                       Clock::now() + options_.timeout);
    });
  };
  transport_->mailbox().setRendezvous(std::move(hooks));
  // The first failure of the group, whoever saw it (an op here, a peer's
  // Abort frame on a reader, abort()): the flight recorder's dump when
  // AGENTCOMM_TRACE_DIR names a directory.
  transport_->mailbox().setAbortListener([this](const std::string& reason) {
    if (dumpOnAbort_.load()) writeFlightRecords(reason);
  });
}

void Communicator::settleRendezvous(const std::vector<int>& members) {
  std::lock_guard<std::mutex> lock(rendezvousMu_);
  if (shm_ && shm_->cma()) {
    rendezvousIndex_.assign(static_cast<size_t>(size_), -1);
    for (size_t i = 0; i < members.size(); ++i)
      if (members[i] != rank_) rendezvousIndex_[static_cast<size_t>(members[i])] = static_cast<int>(i);
  }
  rendezvousSettled_ = true;
  rendezvousCv_.notify_all();
}

void Communicator::shutdown() {
  std::call_once(shutdownOnce_, [this] {
    dumpOnAbort_.store(false);
    answers_.stop(false);
    if (transport_) transport_->mailbox().abort("agentcomm: the process group was shut down");
  });
}

void Communicator::release() {
  shutdown();
  topo_.reset();
  shm_.reset();
  transport_.reset();
}

// ---------------------------------------------------------------- collectives

transport::Transport& Communicator::live() const {
  AC_CHECK(transport_ != nullptr, CommError, "agentcomm: the process group was shut down");
  return *transport_;
}

Context Communicator::context(CollectiveKind kind, DataType dt, ReduceOp op, uint64_t signature, Deadline d) {
  Context ctx(live(), ++collectiveSeq_, kind, dt);
  ctx.op = op;
  ctx.signature = signature;
  ctx.deadline = d;
  ctx.chunkBytes = options_.chunkBytes;
  ctx.shm = wholeGroupShm_ ? shm_.get() : nullptr;
  ctx.topo = topo_.get();
  return ctx;
}

namespace {
size_t total(const std::vector<size_t>& counts) {
  size_t n = 0;
  for (size_t c : counts) n += c;
  return n;
}
}  // namespace

void Communicator::allReduce(const AllReduceOptions& o, DataType dt, ReduceOp op, Deadline d) {
  Context ctx = context(CollectiveKind::AllReduce, dt, op, o.count, d);
  algorithms::allReduce(ctx, o);
}

void Communicator::broadcast(const BroadcastOptions& o, DataType dt, Deadline d) {
  Context ctx = context(CollectiveKind::Broadcast, dt, ReduceOp::Sum, o.count, d);
  algorithms::broadcast(ctx, o);
}

void Communicator::reduce(const ReduceOptions& o, DataType dt, ReduceOp op, Deadline d) {
  Context ctx = context(CollectiveKind::Reduce, dt, op, o.count, d);
  algorithms::reduce(ctx, o);
}

void Communicator::allGather(const AllGatherOptions& o, DataType dt, Deadline d) {
  Context ctx = context(CollectiveKind::AllGather, dt, ReduceOp::Sum, total(o.counts), d);
  algorithms::allGather(ctx, o);
}

void Communicator::reduceScatter(const ReduceScatterOptions& o, DataType dt, ReduceOp op, Deadline d) {
  Context ctx = context(CollectiveKind::ReduceScatter, dt, op, total(o.counts), d);
  algorithms::reduceScatter(ctx, o);
}

// gather, scatter and all_to_all: ranks pass different counts legitimately (signature 0).
void Communicator::gather(const GatherOptions& o, DataType dt, Deadline d) {
  Context ctx = context(CollectiveKind::Gather, dt, ReduceOp::Sum, 0, d);
  algorithms::gather(ctx, o);
}

void Communicator::scatter(const ScatterOptions& o, DataType dt, Deadline d) {
  Context ctx = context(CollectiveKind::Scatter, dt, ReduceOp::Sum, 0, d);
  algorithms::scatter(ctx, o);
}

void Communicator::allToAll(const AllToAllOptions& o, DataType dt, Deadline d) {
  Context ctx = context(CollectiveKind::AllToAll, dt, ReduceOp::Sum, 0, d);
  algorithms::allToAll(ctx, o);
}

void Communicator::barrier(Deadline d) {
  Context ctx = context(CollectiveKind::Barrier, DataType::UInt8, ReduceOp::Sum, 0, d);
  algorithms::barrier(ctx);
}

// ---------------------------------------------------------------- point to point

void Communicator::send(int dst, uint32_t tag, const void* data, size_t nbytes, DataType dt, size_t count,
                        Deadline d) {
  live().send(dst, p2pHeader(dt, tag, count, nbytes), data, d);
}

bool Communicator::trySend(int dst, uint32_t tag, const void* data, size_t nbytes, DataType dt, size_t count,
                           Deadline d) {
  return live().trySend(dst, p2pHeader(dt, tag, count, nbytes), data, d);
}

// A large send to a rank of this host (of this group, or of its host's part in
// a group over several hosts) goes by rendezvous: an Offer (address, size)
// instead of the payload; the receiver pulls it with one process_vm_readv as
// soon as the offer arrives (posted receive or not) and answers.
bool Communicator::offersTo(int dst, size_t nbytes) const {
  return !rendezvousIndex_.empty() && rendezvousIndex_[static_cast<size_t>(dst)] >= 0 &&
         nbytes >= rendezvousMinBytes();
}

std::function<void(Deadline)> Communicator::offer(int dst, uint32_t tag, const void* data, size_t nbytes,
                                                  DataType dt, size_t count,
                                                  std::function<void(const std::string&)> onAnswer) {
  const uint64_t id = nextOfferId_.fetch_add(1);
  auto word = std::make_shared<uint64_t>(0);
  transport::RecvSpec answer;
  answer.kind = transport::MsgKind::P2P;
  answer.src = dst;
  answer.tag = transport::kOfferAckTag | id;
  answer.buffer = word.get();
  answer.nbytes = sizeof(uint64_t);
  answer.dtype = static_cast<uint8_t>(DataType::UInt8);
  answer.count = 1;
  answer.onComplete = [word, dst, tag, nbytes, onAnswer = std::move(onAnswer)](const transport::RecvSlot& slot) {
    if (slot.failed()) return onAnswer(slot.error());
    if (*word != 1)
      return onAnswer(strCat("agentcomm send: rank ", dst, " refused this message (tag ", tag, ", ", nbytes,
                             " bytes): its receive has another size or dtype (its error says which), or it ",
                             "could not read this rank's memory"));
    onAnswer("");
  };
  live().post(std::move(answer));  // before the offer can be answered
  const transport::Offer offer{reinterpret_cast<uint64_t>(data), static_cast<uint64_t>(nbytes), id};
  return [this, dst, tag, dt, count, offer](Deadline d) {
    live().send(dst, p2pHeader(dt, tag, count, sizeof offer, transport::kP2POffer), &offer, d);
  };
}

transport::RecvHandle Communicator::postRecv(int src, uint32_t tag, void* data, size_t nbytes, DataType dt,
                                             size_t count,
                                             std::function<void(const transport::RecvSlot&)> onComplete) {
  transport::RecvSpec spec;
  spec.kind = transport::MsgKind::P2P;
  spec.src = src;
  spec.tag = tag;
  spec.buffer = data;
  spec.nbytes = nbytes;
  spec.dtype = static_cast<uint8_t>(dt);
  spec.count = count;
  spec.onComplete = std::move(onComplete);
  return live().post(std::move(spec));
}

// ---------------------------------------------------------------- failure

void Communicator::run(uint64_t op, std::chrono::milliseconds timeout, const std::function<void(Deadline)>& fn,
                       const std::function<std::string(const std::exception&)>& onFailure) {
  const auto start = Clock::now();
  bool failedBefore = false;  // the group had failed before this op: nothing new to record or dump
  auto fail = [&](const std::exception& e, FailureKind kind) {
    const std::string reason = onFailure(e);  // recorded as failed before the abort, whose listener may dump
    noteFailure(kind);
    abort(reason);
    // The transport may have aborted (and dumped) before this op knew it had
    // failed: once a dump exists, it is rewritten with this failure in it.
    if (flightDumped_.load() && !failedBefore) writeFlightRecords(reason);
  };
  try {
    if (auto why = failure()) {
      failedBefore = true;
      throw CommError(strCat(kUnusable, *why));
    }
    if (!faults_.empty() && op > 0) injectFaults(op, start + 2 * timeout);
    fn(start + timeout);
    transport::takeCorruption();  // a corruption this op never sent must not leak into the next
  } catch (const TimeoutError& e) {
    fail(e, FailureKind::Timeout);
    throw;
  } catch (const std::exception& e) {
    fail(e, FailureKind::Local);
    throw;
  }
}

void Communicator::injectFaults(uint64_t op, Deadline stallLimit) {
  for (const transport::Fault& f : faults_.at(options_.groupName, rank_, op)) {
    const std::string what = strCat("agentcomm: injected fault ", transport::faultKindName(f.kind), " at op ", op,
                                    " of group '", options_.groupName, "' on rank ", rank_, " (AGENTCOMM_FAULT)");
    AC_LOG(Warn, what);
    switch (f.kind) {
      case transport::Fault::Kind::Delay:
        std::this_thread::sleep_for(std::chrono::milliseconds(f.ms));
        break;
      case transport::Fault::Kind::Corrupt:
        transport::armCorruption();
        break;
      case transport::Fault::Kind::Drop:
        // The op fails here; run()'s abort then tells the shared-memory peers
        // (over TCP they only see the connection end).
        transport_->cut(what);
        throw CommError(strCat(what, ": this rank's connections are gone"));
      case transport::Fault::Kind::Stall:
        // A hung rank: nothing happens here until the peers give up on it (their
        // timeout is the same as this op's: the limit of twice that only keeps a
        // group without peers, or whose peers hang too, from stalling forever).
        while (!failure() && Clock::now() < stallLimit) std::this_thread::sleep_for(std::chrono::milliseconds(5));
        if (auto why = failure()) throw CommError(strCat(kUnusable, *why));
        throw TimeoutError(strCat(what, ": stalled for twice the op's timeout"));
    }
  }
}

void Communicator::abort(const std::string& reason) {
  if (transport_) transport_->abort(reason);
  if (shm_) shm_->abort(reason);  // wakes local peers blocked in shared-memory waits at once
}

std::optional<std::string> Communicator::failure() const {
  return transport_ ? transport_->mailbox().abortReason() : std::nullopt;
}

FailureKind Communicator::failureKind() const {
  if (!failure()) return FailureKind::None;
  // Nothing here noted a kind: the failure came from a peer (its Abort frame or its loss).
  const auto k = static_cast<FailureKind>(failureKind_.load());
  return k == FailureKind::None ? FailureKind::Remote : k;
}

void Communicator::noteFailure(FailureKind kind) {
  int none = static_cast<int>(FailureKind::None);
  failureKind_.compare_exchange_strong(none, static_cast<int>(kind));
}

void Communicator::writeFlightRecords(const std::string& reason) {
  const char* dir = envText("AGENTCOMM_TRACE_DIR");
  if (dir == nullptr) return;
  std::lock_guard<std::mutex> lock(flightDumpMu_);
  try {
    const std::string path = FlightRecorder::writeAll(dir, reason, logRank());
    if (!flightDumped_.exchange(true))
      AC_LOG(Warn, "agentcomm: group '", options_.groupName, "' failed; its last operations are in ", path);
  } catch (const std::exception& e) {
    AC_LOG(Warn, "agentcomm: could not write the flight recorder's dump: ", e.what());
  }
}

}  // namespace agentcomm::algorithms
