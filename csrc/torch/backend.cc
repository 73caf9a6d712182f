#include "torch/backend.h"

#include "transport/host.h"

#include <map>

#include "kernels/cpu/reduce_simd.h"
#include "kernels/cuda/kernels_cuda.h"
#include "kernels/kernels.h"

#include <Python.h>

#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <numeric>

#include "algorithms/algorithms.h"
#include "algorithms/shm_common.h"
#include "core/cpu_budget.h"
#include "core/error.h"
#include "core/env.h"
#include "core/logging.h"
#include "transport/tcp/tcp_transport.h"

namespace agentcomm::torch_adapter {

using transport::Clock;
using transport::CollectiveKind;
using transport::Deadline;

namespace {

constexpr const char* kVersion = "0.1.0";
// The error of an op issued after its group failed (agentcomm.debug skips such records).
constexpr const char* kUnusable = "agentcomm: the communicator is unusable after an earlier error: ";
// Ops up to this size may run on the calling thread (see enqueueCollective).
constexpr size_t kInlineMaxBytes = 64 * 1024;

// Whether an op may run on the calling thread (enqueueCollective's mayInline):
// a small one always, one of any size when its caller waits for it at once
// (torch sets opts.asyncOp = false for async_op=False calls). Either way the
// thread that would only wait does the work, which saves the two hand-offs
// (to the worker, back from the completion pool) that each cost a wake-up on
// a busy CPU; async ops keep the worker so that they overlap the caller's compute.
template <typename Options>
bool mayRunInline(size_t bytes, const Options& opts) {
  return bytes <= kInlineMaxBytes || !opts.asyncOp;
}

// A staged all_reduce of a CUDA tensor at least this large pipelines its copies.
constexpr size_t kPipelineMinBytes = size_t{8} << 20;

c10::SourceLocation here(const char* func) { return c10::SourceLocation{func, __FILE__, __LINE__}; }

// The header of a point-to-point frame: a payload, a rendezvous offer, or an answer to one.
transport::Header p2pHeader(DataType dt, uint64_t tag, uint64_t count, uint64_t nbytes, uint8_t op = 0) {
  transport::Header h;
  h.kind = static_cast<uint8_t>(transport::MsgKind::P2P);
  h.collective = static_cast<uint8_t>(transport::CollectiveKind::Send);
  h.dtype = static_cast<uint8_t>(dt);
  h.op = op;
  h.tag = tag;
  h.count = count;
  h.nbytes = nbytes;
  return h;
}

std::exception_ptr toTorchError(const std::exception& e) {
  if (dynamic_cast<const InvalidArgument*>(&e) != nullptr)
    return std::make_exception_ptr(c10::ValueError(here(__func__), e.what()));
  return std::make_exception_ptr(c10::DistBackendError(here(__func__), e.what()));
}

// c10d::Store as the core's rendezvous store.
class StoreAdapter : public transport::Store {
 public:
  explicit StoreAdapter(c10::intrusive_ptr<c10d::Store> store) : store_(std::move(store)) {}
  void set(const std::string& key, const std::vector<uint8_t>& value) override { store_->set(key, value); }
  std::vector<uint8_t> get(const std::string& key, std::chrono::milliseconds timeout) override {
    try {
      store_->wait({key}, timeout);
    } catch (const c10::Error& e) {
      throw TimeoutError(strCat("agentcomm: rendezvous timed out waiting for store key '", key,
                                "' (did every rank start and call init_process_group?): ", e.what_without_backtrace()));
    }
    return store_->get(key);
  }

 private:
  c10::intrusive_ptr<c10d::Store> store_;
};

std::optional<DataType> mapDtype(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return DataType::Float32;
    case at::kDouble: return DataType::Float64;
    case at::kHalf: return DataType::Float16;
    case at::kBFloat16: return DataType::BFloat16;
    case at::kChar: return DataType::Int8;
    case at::kShort: return DataType::Int16;
    case at::kInt: return DataType::Int32;
    case at::kLong: return DataType::Int64;
    case at::kByte: return DataType::UInt8;
    case at::kBool: return DataType::Bool;
    case at::kComplexFloat: return DataType::Complex64;
    case at::kComplexDouble: return DataType::Complex128;
    default: return std::nullopt;
  }
}

}  // namespace

void checkTensor(const at::Tensor& t, const char* op) {
  TORCH_CHECK_VALUE(t.defined(), "agentcomm ", op, ": got an undefined tensor");
  TORCH_CHECK_VALUE(t.layout() == at::kStrided, "agentcomm ", op,
                    ": sparse and other non-strided tensors are not supported (got layout ", t.layout(), ")");
  // CUDA tensors never get here: the ops stage them first (cuda_support.h).
  TORCH_CHECK_VALUE(t.device().is_cpu(), "agentcomm ", op, ": tensors must be on the CPU or a CUDA device, got a "
                    "tensor on ", t.device());
}

namespace {

// (dtype, count) as the core sees a tensor.
struct View {
  DataType dt;
  size_t count;
};

// For reductions: the dtype must be one the kernels know, and support the op.
View reduceView(const at::Tensor& t, const char* op, ReduceOp rop) {
  checkTensor(t, op);
  auto dt = mapDtype(t.scalar_type());
  TORCH_CHECK_TYPE(dt.has_value(), "agentcomm ", op, ": unsupported dtype ", t.scalar_type(),
                   " for a reduction (supported: float32, float64, float16, bfloat16, int8, int16, int32, int64, "
                   "uint8, bool, complex64, complex128)");
  std::string why = checkReduceSupported(*dt, rop);
  TORCH_CHECK_TYPE(why.empty(), "agentcomm ", op, ": ", why);
  return {*dt, static_cast<size_t>(t.numel())};
}

// For data movement any dtype works: unknown ones travel as bytes.
View moveView(const at::Tensor& t, const char* op) {
  checkTensor(t, op);
  if (auto dt = mapDtype(t.scalar_type())) return {*dt, static_cast<size_t>(t.numel())};
  return {DataType::UInt8, static_cast<size_t>(t.numel()) * t.element_size()};
}

// Core elements per tensor element: 1, or the element size for dtypes that travel as bytes.
size_t unitOf(const at::Tensor& t) { return mapDtype(t.scalar_type()) ? 1 : t.element_size(); }

void checkSameDtype(const at::Tensor& a, const at::Tensor& b, const char* op) {
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), "agentcomm ", op, ": all tensors must have the same dtype, got ",
                   a.scalar_type(), " and ", b.scalar_type());
}

// The root's per-rank list (gather's outputs, scatter's inputs): checked and staged on
// the root; every other rank must pass none.
std::vector<at::Tensor> stageRootList(const std::vector<std::vector<at::Tensor>>& lists, const at::Tensor& like,
                                      bool isRoot, int size, const char* op, const char* what) {
  std::vector<at::Tensor> staged_;
  if (!isRoot) {
    TORCH_CHECK_VALUE(lists.empty() || (lists.size() == 1 && lists[0].empty()), "agentcomm ", op,
                      ": only the root rank may pass ", what, " tensors");
    return staged_;
  }
  TORCH_CHECK_VALUE(lists.size() == 1 && static_cast<int>(lists[0].size()) == size, "agentcomm ", op,
                    ": the root needs a list of ", size, " ", what, " tensors");
  for (const auto& t : lists[0]) {
    moveView(t, op);
    checkSameDtype(t, like, op);
    staged_.push_back(t.is_contiguous() ? t : t.contiguous());
  }
  return staged_;
}

std::pair<ReduceOp, double> mapReduceOp(const c10d::ReduceOp& op, const char* name) {
  TORCH_CHECK_VALUE(static_cast<int>(op.op_) < static_cast<int>(kNumReduceOps), "agentcomm ", name,
                    ": unsupported reduce op ", static_cast<int>(op.op_));
  double factor = 1.0;
  if (op.op_ == c10d::ReduceOp::PREMUL_SUM) {
    auto* s = dynamic_cast<c10d::NCCLPreMulSumSupplement*>(op.supplement_.get());
    TORCH_CHECK_VALUE(s != nullptr, "agentcomm ", name, ": PREMUL_SUM without a factor");
    factor = s->tensor_factor.defined() ? s->tensor_factor.item<double>() : s->double_factor;
  }
  return {static_cast<ReduceOp>(op.op_), factor};
}

// torch's PREMUL_SUM multiplies each rank's input by that rank's own factor
// before summing (factors may differ between ranks); the core's premulFactor
// is one factor applied once at the end. So the adapter scales the input
// itself and reduces with SUM. Returns whether `rop` was PREMUL_SUM.
bool takePremul(ReduceOp& rop) {
  if (rop != ReduceOp::PremulSum) return false;
  rop = ReduceOp::Sum;
  return true;
}

// Non-contiguous tensors are staged through a contiguous copy at issue time.
at::Tensor staged(const at::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }
void unstage(const at::Tensor& orig, const at::Tensor& buf) {
  // A contiguous tensor was used in place (possibly through a reshaped view): nothing to copy.
  if (orig.data_ptr() != buf.data_ptr()) const_cast<at::Tensor&>(orig).copy_(buf);
}

size_t envChunkBytes() {
  if (const char* env = std::getenv("AGENTCOMM_CHUNK_BYTES")) {
    long long v = std::atoll(env);
    if (v > 0) return static_cast<size_t>(v);
  }
  return size_t{1} << 20;
}

// The prefix of every key this group's bootstrap puts in torch's store. Under
// torchrun the store outlives a restart (TORCHELASTIC_USE_AGENT_STORE: the
// agent's store, the same keys for every attempt), so a restarted rank could
// read what the previous attempt published (a dead peer's address, an old job
// token) before its peers overwrite it, and dial a closed port or wait for a
// hello that never comes. The restart count, equal on every worker of an
// attempt, gives each attempt its own keys.
std::string storeKeyPrefix() {
  const char* restart = envText("TORCHELASTIC_RESTART_COUNT");
  if (restart == nullptr) return "agentcomm/";
  char* end = nullptr;
  const unsigned long long n = std::strtoull(restart, &end, 10);
  AC_CHECK(end != restart && *end == 0, InvalidArgument, "TORCHELASTIC_RESTART_COUNT=", restart,
           " is not a restart count (torchrun sets 0, 1, ...)");
  return strCat("agentcomm/attempt", n, "/");
}

// Once per process, on the first group with several ranks on this host: fewer
// intra-op threads when the host's ranks would oversubscribe its CPUs
// (core/cpu_budget.h says why). Runs on the thread that creates the group,
// which is the one whose OpenMP team torch's ops use (the count is per thread).
void applyIntraOpThreadBudget(int localRanks, bool lowestLocalRank) {
  static std::once_flag once;
  if (localRanks < 2) return;
  std::call_once(once, [&] {
    const int current = at::get_num_threads();
    auto advice = adviseIntraOpThreads(localRanks, current, usableCpus(), userChoseThreads(), intraOpThreadsSetting());
    if (!advice) return;
    at::set_num_threads(advice->threads);
    const std::string line = strCat("agentcomm: torch runs ", advice->threads, " intra-op thread(s) per rank instead of ",
                                    current, ": ", advice->reason);
    if (lowestLocalRank) {
      AC_LOG(Warn, line);
    } else {
      AC_LOG(Info, line);
    }
  });
}

}  // namespace

// ---------------------------------------------------------------- AgentWork

AgentWork::AgentWork(int rank, c10d::OpType type, const char* title, std::vector<at::Tensor> outputs,
                     std::chrono::milliseconds defaultWait, std::shared_ptr<CudaStage> cuda)
    : c10d::Work(rank, type, title),
      title_(title),
      outputs_(std::move(outputs)),
      future_(c10::make_intrusive<c10::ivalue::Future>(c10::ListType::create(c10::TensorType::get()),
                                                       cuda ? cuda->devices() : std::vector<c10::Device>{})),
      defaultWait_(defaultWait),
      cuda_(std::move(cuda)) {}

void AgentWork::record(const std::shared_ptr<FlightRecorder>& recorder, uint64_t seq, bool p2p, int peer) {
  if (!recorder || recorder->capacity() == 0) return;
  recorder_ = recorder;
  std::string_view op = title_;
  if (op.starts_with("agentcomm:")) op.remove_prefix(10);
  const char* dtype = "";
  uint64_t count = 0;
  for (const auto& t : outputs_) {
    if (!t.defined()) continue;
    if (*dtype == 0) dtype = c10::toString(t.scalar_type());
    count += static_cast<uint64_t>(t.numel());
  }
  recordId_ = recorder_->scheduled(seq, op.data(), p2p, peer, dtype, count);
}

void AgentWork::recordStarted() {
  if (recorder_) recorder_->started(recordId_);
}

void AgentWork::recordEnded(const std::exception_ptr& eptr) {
  if (!recorder_ || recordEnded_.exchange(true)) return;
  std::string error;
  if (eptr) {
    try {
      std::rethrow_exception(eptr);
    } catch (const c10::Error& e) {
      error = e.what_without_backtrace();
    } catch (const std::exception& e) {
      error = e.what();
    } catch (...) {
      error = "unknown error";
    }
  }
  recorder_->ended(recordId_, algorithm_, error);
}

void AgentWork::complete(std::exception_ptr eptr) {
  recordEnded(eptr);
  finish(eptr);
  // Future callbacks (DDP's, comm hooks') run here, on the completing thread.
  if (eptr) {
    future_->setError(eptr);
  } else if (cuda_) {
    cuda_->markCompleted(*future_, c10::IValue(outputs_));  // callbacks' streams wait for the result
  } else {
    future_->markCompleted(c10::IValue(outputs_));
  }
}

bool AgentWork::completeWithoutCallbacks(std::exception_ptr eptr) {
  {
    std::lock_guard<std::mutex> lock(futureMu_);
    if (futureTaken_) return false;
    futurePending_ = true;
    pendingError_ = eptr;
  }
  recordEnded(eptr);
  finish(eptr);
  return true;
}

c10::intrusive_ptr<c10::ivalue::Future> AgentWork::getFuture() {
  std::exception_ptr eptr;
  bool mark = false;
  {
    std::lock_guard<std::mutex> lock(futureMu_);
    futureTaken_ = true;
    std::swap(mark, futurePending_);
    eptr = pendingError_;
  }
  if (mark) {  // no callback can be attached yet: marking here runs none
    if (eptr)
      future_->setError(eptr);
    else
      future_->markCompleted(c10::IValue(outputs_));
  }
  return future_;
}

void AgentWork::synchronize() {
  if (cuda_) cuda_->blockCurrentStream();
}

bool AgentWork::wait(std::chrono::milliseconds timeout) {
  if (timeout != ::kNoTimeout || !onWaitTimeout) {
    const bool done = c10d::Work::wait(timeout);
    if (cuda_) cuda_->blockCurrentStream();  // the host waited for the op to be queued, not run
    return done;
  }
  // A receive has no worker enforcing a deadline: bound the wait by the group's timeout.
  std::unique_lock<std::mutex> lock(mutex_);
  if (!cv_.wait_for(lock, defaultWait_, [&] { return completed_; })) {
    lock.unlock();
    onWaitTimeout(strCat("agentcomm: recv timed out after ", defaultWait_.count(), " ms"));
    lock.lock();
    cv_.wait(lock, [&] { return completed_; });
  }
  if (exception_) std::rethrow_exception(exception_);
  if (cuda_) cuda_->blockCurrentStream();
  return true;
}

// ---------------------------------------------------------------- Lane

void AgentBackend::Lane::start(std::function<void(Job&)> exec) {
  exec_ = std::move(exec);
  thread_ = std::thread([this] {
    while (true) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return !busy_ && (stopping_ || !queue_.empty()); });
        if (queue_.empty()) return;  // stopping, and nothing (left) to drain
        job = std::move(queue_.front());
        queue_.pop_front();
        busy_ = true;
      }
      exec_(job);
      std::lock_guard<std::mutex> lock(mu_);
      busy_ = false;
    }
  });
}

bool AgentBackend::Lane::runInlineIfIdle(const std::function<bool()>& fn) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ || busy_ || !queue_.empty()) return false;
    busy_ = true;
  }
  const bool done = fn();
  {
    std::lock_guard<std::mutex> lock(mu_);
    busy_ = false;
  }
  cv_.notify_all();  // jobs pushed meanwhile waited for us
  return done;
}

void AgentBackend::Lane::push(Job job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      queue_.push_back(std::move(job));
      cv_.notify_one();
      return;
    }
  }
  if (!job.work || job.deferred) return;  // internal, or completed by its rendezvous answer (failed at shutdown)
  job.work->complete(std::make_exception_ptr(
      c10::DistBackendError(here(__func__), "agentcomm: the process group was shut down before this operation ran")));
}

void AgentBackend::Lane::stop(bool drain) {
  std::deque<Job> left;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    if (!drain) left.swap(queue_);
    cv_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
  for (auto& job : left) {
    if (!job.work || job.deferred) continue;
    job.work->complete(std::make_exception_ptr(c10::DistBackendError(
        here(__func__), "agentcomm: the process group was shut down before this operation ran")));
  }
}

// ---------------------------------------------------------------- AgentBackend

AgentBackend::AgentBackend(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                           std::chrono::milliseconds timeout, std::string groupName)
    : c10d::Backend(rank, size), timeout_(timeout), groupName_(std::move(groupName)), chunkBytes_(envChunkBytes()) {
  static std::once_flag logRankOnce;  // the first group created is (nearly always) the default one
  std::call_once(logRankOnce, [rank] { setLogRank(rank); });
  StoreAdapter adapter(store);
  transport::TcpOptions opts;
  opts.timeout = timeout;
  try {
    opts.keyPrefix = storeKeyPrefix();
    recorder_ = makeFlightRecorder(FlightRecorder::capacityFromEnv(), groupName_, rank, size);
    faults_ = transport::FaultPlan::fromEnv();
    transport_ = std::make_unique<transport::TcpTransport>(adapter, rank, size, opts);
  } catch (const TimeoutError& e) {
    C10_THROW_ERROR(DistBackendError, e.what());
  } catch (const Error& e) {
    C10_THROW_ERROR(DistBackendError, e.what());
  }
  // Peers may offer large sends as soon as their constructors are done, which
  // can be before ours is: the pull waits until we know whether shm_ exists.
  {
    transport::RendezvousHooks hooks;
    hooks.pull = [this](int src, uint64_t addr, void* dst, size_t bytes) {
      std::unique_lock<std::mutex> lock(rendezvousMu_);
      rendezvousCv_.wait(lock, [&] { return rendezvousSettled_; });
      const int index = rendezvousIndex_.empty() ? -1 : rendezvousIndex_[static_cast<size_t>(src)];
      AC_CHECK(index >= 0, CommError, "agentcomm: rank ", src, " offered a message by rendezvous, which rank ",
               rank_, " cannot read (no cross-memory attach to it)");
      lock.unlock();
      shm_->readPeer(index, addr, dst, bytes);
    };
    hooks.acknowledge = [this](int src, uint64_t id, bool taken) {
      answers_.push(Job{nullptr,
                        [this, src, id, taken](Deadline d) {
                          const uint64_t word = taken ? 1 : 0;
                          transport_->send(
                              src, p2pHeader(DataType::UInt8, transport::kOfferAckTag | id, 1, sizeof word), &word, d);
                        },
                        timeout_});
    };
    transport_->mailbox().setRendezvous(std::move(hooks));
  }
  // The first failure of the group, whoever saw it (an op here, a peer's
  // Abort frame on a reader, abort()): the flight recorder's dump when
  // AGENTCOMM_TRACE_DIR names a directory.
  transport_->mailbox().setAbortListener([this](const std::string& reason) {
    if (dumpOnAbort_.load()) writeFlightRecords(reason);
  });
  auto settleRendezvous = [this](const std::vector<int>& members) {
    std::lock_guard<std::mutex> lock(rendezvousMu_);
    if (shm_ && shm_->cma()) {
      rendezvousIndex_.assign(static_cast<size_t>(size_), -1);
      for (size_t i = 0; i < members.size(); ++i)
        if (members[i] != rank_) rendezvousIndex_[static_cast<size_t>(members[i])] = static_cast<int>(i);
    }
    rendezvousSettled_ = true;
    rendezvousCv_.notify_all();
  };
  std::vector<int> localMembers;
  try {
    // Shared memory among the ranks of each host; a hierarchy when the group
    // spans hosts and some host runs several ranks.
    const transport::HostMap hosts = transport::exchangeHosts(adapter, rank, size, opts.keyPrefix, timeout);
    transport::ShmOptions shmOpts;
    shmOpts.timeout = timeout;
    shmOpts.keyPrefix = opts.keyPrefix;
    const std::vector<int> members = hosts.membersOf(rank);
    localMembers = members;
    shm_ = transport::ShmDomain::create(adapter, rank, members, shmOpts,
                                        [t = transport_.get()](int peer) -> std::optional<std::string> {
                                          if (auto why = t->mailbox().abortReason()) return why;
                                          return t->mailbox().peerFailure(peer);
                                        });
    wholeGroupShm_ = shm_ != nullptr && static_cast<int>(members.size()) == size;
    const std::vector<int> leaders = hosts.leaders();
    if (leaders.size() > 1 && static_cast<int>(leaders.size()) < size) {
      topo_ = std::make_unique<algorithms::Topology>();
      topo_->local = shm_.get();
      topo_->localRanks = members;
      topo_->leaders = leaders;
      topo_->localRank = static_cast<int>(std::find(members.begin(), members.end(), rank) - members.begin());
      for (size_t i = 0; i < leaders.size(); ++i)
        if (leaders[i] == rank) topo_->leaderIndex = static_cast<int>(i);
    }
    applyIntraOpThreadBudget(static_cast<int>(members.size()), members[0] == rank);
  } catch (const Error& e) {
    settleRendezvous({});
    // No destructor runs for a constructor that throws: the transport's readers
    // (which call the abort listener and the rendezvous hooks, both using this
    // object) stop now, while the members they use still exist.
    dumpOnAbort_.store(false);
    topo_.reset();
    shm_.reset();
    transport_.reset();
    C10_THROW_ERROR(DistBackendError, e.what());
  }
  settleRendezvous(localMembers);
  const std::string shmName = shm_ ? (shm_->cma() ? "shm+cma" : "shm") : "";
  transportName_ = wholeGroupShm_ ? shmName + "/tcp"
                   : topo_        ? strCat("hierarchical(", shmName.empty() ? "tcp" : shmName, ")/tcp")
                                  : transport_->name();
  AC_LOG(Info, "agentcomm ", kVersion, ": group '", groupName_, "' rank ", rank, "/", size, ", transport ",
         transportName_, ", chunk ", chunkBytes_, " bytes, timeout ", timeout.count(), " ms");
  worker_ = std::thread([this] { workerLoop(); });
  sends_.start([this](Job& job) {
    std::exception_ptr eptr = execute(job);
    if (!job.deferred) job.work->complete(eptr);  // deferred: a failure aborted the mailbox, failing the answer's slot
  });
  completions_.start([](Job& job) { job.run(Deadline::max()); });
  answers_.start([](Job& job) {
    try {
      job.run(Clock::now() + job.timeout);
    } catch (const std::exception& e) {  // the offering peer is gone or the group failed: it learns that way
      AC_LOG(Info, "agentcomm: could not answer a rendezvous offer: ", e.what());
    }
  });
}

AgentBackend::~AgentBackend() {
  // Never block while holding the GIL: the worker may be inside a Python
  // future callback that needs it.
  if (Py_IsInitialized() && PyGILState_Check()) {
    PyThreadState* state = PyEval_SaveThread();
    shutdownNoGil();
    PyEval_RestoreThread(state);
  } else {
    shutdownNoGil();
  }
}

void AgentBackend::shutdown() {
  if (Py_IsInitialized() && PyGILState_Check()) {
    PyThreadState* state = PyEval_SaveThread();
    shutdownNoGil();
    PyEval_RestoreThread(state);
  } else {
    shutdownNoGil();
  }
}

void AgentBackend::shutdownNoGil() {
  std::call_once(shutdownOnce_, [this] {
    dumpOnAbort_.store(false);
    stopWorker();
    completionPool_.stop();
    sends_.stop(false);
    answers_.stop(false);
    // Fail receives still posted (their completions run below), without
    // telling peers: they see our sockets close.
    if (transport_) transport_->mailbox().abort("agentcomm: the process group was shut down");
    completions_.stop(true);
    topo_.reset();
    shm_.reset();
    transport_.reset();
  });
}

void AgentBackend::abort() {
  noteError(c10d::ErrorType::COMM_ERROR);
  abortComm("agentcomm: the process group was aborted by the user");
}

void AgentBackend::injectFaults(uint64_t op, Deadline stallLimit) {
  for (const transport::Fault& f : faults_.at(groupName_, rank_, op)) {
    const std::string what = strCat("agentcomm: injected fault ", transport::faultKindName(f.kind), " at op ", op,
                                    " of group '", groupName_, "' on rank ", rank_, " (AGENTCOMM_FAULT)");
    AC_LOG(Warn, what);
    switch (f.kind) {
      case transport::Fault::Kind::Delay:
        std::this_thread::sleep_for(std::chrono::milliseconds(f.ms));
        break;
      case transport::Fault::Kind::Corrupt:
        transport::armCorruption();
        break;
      case transport::Fault::Kind::Drop:
        // The op fails here; execute's abort then tells the shared-memory peers
        // (over TCP they only see the connection end).
        transport_->cut(what);
        throw CommError(strCat(what, ": this rank's connections are gone"));
      case transport::Fault::Kind::Stall:
        // A hung rank: nothing happens here until the peers give up on it (their
        // timeout is the same as this op's: the limit of twice that only keeps a
        // group without peers, or whose peers hang too, from stalling forever).
        while (!transport_->mailbox().abortReason() && Clock::now() < stallLimit)
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
        if (auto why = transport_->mailbox().abortReason())
          throw CommError(strCat(kUnusable, *why));
        throw TimeoutError(strCat(what, ": stalled for twice the op's timeout"));
    }
  }
}

void AgentBackend::writeFlightRecords(const std::string& reason) {
  const char* dir = envText("AGENTCOMM_TRACE_DIR");
  if (dir == nullptr) return;
  std::lock_guard<std::mutex> lock(flightDumpMu_);
  try {
    const std::string path = FlightRecorder::writeAll(dir, reason, logRank());
    if (!flightDumped_.exchange(true))
      AC_LOG(Warn, "agentcomm: group '", groupName_, "' failed; its last operations are in ", path);
  } catch (const std::exception& e) {
    AC_LOG(Warn, "agentcomm: could not write the flight recorder's dump: ", e.what());
  }
}

void AgentBackend::noteError(c10d::ErrorType type) {
  int none = static_cast<int>(c10d::ErrorType::SUCCESS);
  errorType_.compare_exchange_strong(none, static_cast<int>(type));
}

c10d::ErrorType AgentBackend::getError() {
  if (!errorReason()) return c10d::ErrorType::SUCCESS;
  // Nothing here noted a kind: the failure came from a peer (its Abort frame or its loss).
  const int t = errorType_.load();
  return t == static_cast<int>(c10d::ErrorType::SUCCESS) ? c10d::ErrorType::REMOTE_ERROR
                                                         : static_cast<c10d::ErrorType>(t);
}

std::optional<std::string> AgentBackend::errorReason() {
  return transport_ ? transport_->mailbox().abortReason() : std::nullopt;
}

void AgentBackend::abortComm(const std::string& reason) {
  if (transport_) transport_->abort(reason);
  if (shm_) shm_->abort(reason);  // wakes local peers blocked in shared-memory waits at once
}

std::exception_ptr AgentBackend::execute(Job& job) {
  std::exception_ptr eptr;
  const auto start = Clock::now();
  job.work->recordStarted();
  algorithms::takeAlgorithm();  // nothing left from an op that failed before it noted its own
  std::string reason;
  c10d::ErrorType type = c10d::ErrorType::COMM_ERROR;
  bool failedBefore = false;  // the group had failed before this op: nothing new to record or dump
  try {
    if (auto why = transport_->mailbox().abortReason()) {
      failedBefore = true;
      throw CommError(strCat(kUnusable, *why));
    }
    const uint64_t seq = job.work->getSequencenumber();  // 0: a send (faults hit collectives only)
    if (!faults_.empty() && seq > 0) injectFaults(seq, start + 2 * job.timeout);
    job.run(start + job.timeout);
    transport::takeCorruption();  // a corruption this op never sent must not leak into the next
  } catch (const TimeoutError& e) {
    type = c10d::ErrorType::TIMEOUT;
    reason = e.what();
    eptr = toTorchError(e);
  } catch (const Error& e) {
    reason = e.what();
    eptr = toTorchError(e);
  } catch (const c10::Error& e) {
    reason = e.what_without_backtrace();
    eptr = std::current_exception();
  } catch (const std::exception& e) {
    reason = e.what();
    eptr = toTorchError(e);
  }
  job.work->setAlgorithm(algorithms::takeAlgorithm());
  if (eptr) {
    // Recorded as failed before the abort, whose listener may dump the recorder.
    job.work->recordEnded(eptr);
    noteError(type);
    abortComm(reason);
    // The transport may have aborted (and dumped) before this op knew it had failed: once a
    // dump exists, it is rewritten with this failure in it.
    if (flightDumped_.load() && !failedBefore) writeFlightRecords(reason);
  }
  AC_LOG(Trace, "op #", job.work->getSequencenumber(), " ", c10d::opTypeToString(job.work->retrieveOpType()),
         eptr ? " failed" : " done", " in ",
         std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count(), " us");
  return eptr;
}

// ---------------------------------------------------------------- CUDA tensors

#ifndef AGENTCOMM_WITH_CUDA
bool cudaBuilt() { return false; }
void* currentCudaStream(const at::Tensor&) { return nullptr; }
std::unique_ptr<CudaContext> makeCudaContext(int, int) {
  TORCH_CHECK(false, "agentcomm was built without CUDA support (against a torch without CUDA): reinstall it "
                     "with `pip install --no-build-isolation .` under a CUDA build of torch, or move the tensors "
                     "to the CPU");
}
#endif

CudaContext& AgentBackend::cuda() {
  std::call_once(cudaOnce_, [&] { cuda_ = makeCudaContext(rank_, size_); });
  return *cuda_;
}

namespace {
// The staged CUDA side of the op being issued on this thread: set by
// viaHost() around the call on host mirrors, taken by the one
// enqueueCollective (or send / recv) that call makes.
thread_local std::shared_ptr<CudaStage> tlStage;

}  // namespace

PendingStage::PendingStage(std::shared_ptr<CudaStage> stage) { tlStage = std::move(stage); }
PendingStage::~PendingStage() { tlStage.reset(); }
using StageScope = PendingStage;

std::shared_ptr<CudaStage> takeStage() {
  std::shared_ptr<CudaStage> s = std::move(tlStage);
  tlStage.reset();
  return s;
}

namespace {
using Tensors = std::vector<at::Tensor>;
using TensorLists = std::vector<Tensors>;

bool isCuda(const at::Tensor& t) { return t.defined() && t.is_cuda(); }
bool isCuda(const std::vector<at::Tensor>& v) {
  return std::any_of(v.begin(), v.end(), [](const at::Tensor& t) { return isCuda(t); });
}
bool isCuda(const std::vector<std::vector<at::Tensor>>& v) {
  return std::any_of(v.begin(), v.end(), [](const std::vector<at::Tensor>& l) { return isCuda(l); });
}
template <typename... A>
bool anyCuda(const A&... a) {
  return (isCuda(a) || ...);
}

void collect(std::vector<at::Tensor*>& out, at::Tensor& t) { out.push_back(&t); }
void collect(std::vector<at::Tensor*>& out, std::vector<at::Tensor>& v) {
  for (auto& t : v) out.push_back(&t);
}
void collect(std::vector<at::Tensor*>& out, std::vector<std::vector<at::Tensor>>& v) {
  for (auto& l : v) collect(out, l);
}

// Runs `call` (the same op) on copies of the arguments whose CUDA tensors
// were replaced by pinned host mirrors; the op's enqueue takes the stage that
// copies between them on the backend's stream (cuda_support.h).
template <typename Call, typename... Args>
c10::intrusive_ptr<c10d::Work> viaHost(CudaContext& cuda, const char* op, const Call& call, Args... args) {
  std::vector<at::Tensor*> ptrs;
  (collect(ptrs, args), ...);
  StageScope scope(cuda.stage(ptrs, op));
  return call(args...);
}
}  // namespace

namespace {
// The collective whose completion (future callbacks) this thread is running, per backend.
thread_local const void* tlBackend = nullptr;
thread_local void* tlParent = nullptr;
}  // namespace

void AgentBackend::CompletionPool::submit(std::function<void()> task) {
  std::lock_guard<std::mutex> lock(mu_);
  tasks_.push_back(std::move(task));
  if (idle_ == 0) {
    // Every thread is busy (possibly blocked inside a callback): add one.
    threads_.emplace_back([this] {
      std::unique_lock<std::mutex> lk(mu_);
      while (true) {
        if (tasks_.empty()) {
          if (stopping_) return;
          ++idle_;
          cv_.wait(lk, [&] { return stopping_ || !tasks_.empty(); });
          --idle_;
          continue;
        }
        auto t = std::move(tasks_.front());
        tasks_.pop_front();
        lk.unlock();
        t();
        lk.lock();
      }
    });
  } else {
    cv_.notify_one();
  }
}

void AgentBackend::CompletionPool::stop() {
  std::vector<std::thread> threads;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    cv_.notify_all();
  }
  // Threads may be added while we join (a task submitting more): loop until none are left.
  while (true) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (threads_.empty()) break;
      threads.swap(threads_);
    }
    for (auto& t : threads) t.join();
    threads.clear();
  }
}

void AgentBackend::workerLoop() {
  std::vector<Node*> stack = {&root_};
  std::unique_lock<std::mutex> lock(schedMu_);
  while (true) {
    Node* frame = stack.back();
    if (!frame->children.empty() && (frame != &root_ || (!schedStopping_ && !inlineRunning_))) {
      std::shared_ptr<Node> node = frame->children.front();
      frame->children.pop_front();
      workerBusy_ = true;
      lock.unlock();
      node->error = execute(node->job);
      completionPool_.submit([this, node] {
        tlBackend = this;
        tlParent = node.get();
        node->job.work->complete(node->error);
        tlBackend = nullptr;
        tlParent = nullptr;
        std::lock_guard<std::mutex> lk(schedMu_);
        node->closed = true;
        schedCv_.notify_all();
      });
      lock.lock();
      // Keep the node alive while it is a frame: its children hang off it.
      nodesInFlight_.push_back(node);
      stack.push_back(node.get());
      continue;
    }
    if (frame != &root_ && frame->closed && frame->children.empty()) {
      stack.pop_back();
      if (stack.size() == 1) workerBusy_ = false;
      for (auto it = nodesInFlight_.begin(); it != nodesInFlight_.end(); ++it) {
        if (it->get() == frame) {
          nodesInFlight_.erase(it);
          break;
        }
      }
      continue;
    }
    if (frame == &root_ && schedStopping_) break;
    schedCv_.wait(lock);
  }
  // Stopping: whatever is still queued at top level fails without running.
  std::deque<std::shared_ptr<Node>> left;
  left.swap(root_.children);
  lock.unlock();
  for (auto& node : left) {
    node->job.work->complete(std::make_exception_ptr(c10::DistBackendError(
        here(__func__), "agentcomm: the process group was shut down before this operation ran")));
  }
}

void AgentBackend::stopWorker() {
  {
    std::lock_guard<std::mutex> lock(schedMu_);
    schedStopping_ = true;
    schedCv_.notify_all();
  }
  if (worker_.joinable()) worker_.join();
}

c10::intrusive_ptr<AgentWork> AgentBackend::enqueueCollective(c10d::OpType type, const char* title,
                                                              std::vector<at::Tensor> outputs,
                                                              std::chrono::milliseconds optTimeout,
                                                              std::function<void(Deadline)> run, bool mayInline) {
  std::shared_ptr<CudaStage> stage = takeStage();
  if (stage) {
    // CUDA tensors: the op ran on host mirrors (or on the device, for a
    // stage without mirrors); the Work reports the CUDA tensors.
    stage->setOutputs(outputs);
    for (auto& o : outputs) o = stage->original(o);
    run = [stage, inner = std::move(run)](Deadline d) {
      stage->copyIn();
      inner(d);
      stage->copyOut();
    };
    mayInline = false;  // copyIn waits for the device: never on the caller's thread
  }
  auto work = c10::make_intrusive<AgentWork>(rank_, type, title, std::move(outputs), timeout_, std::move(stage));
  work->setSequenceNumber(++opSeq_);
  work->record(recorder_, work->getSequencenumber(), false, -1);
  const auto timeout = optTimeout == c10d::kUnsetTimeout ? timeout_ : optTimeout;
  if (mayInline && tlBackend != this) {
    std::unique_lock<std::mutex> lock(schedMu_);
    if (!schedStopping_ && !workerBusy_ && !inlineRunning_ && root_.children.empty()) {
      inlineRunning_ = true;  // the worker leaves the queue alone until we are done
      lock.unlock();
      Job job{work, std::move(run), timeout};
      std::exception_ptr error = execute(job);
      work->complete(error);  // the caller has not seen the Work yet: no callbacks to run
      lock.lock();
      inlineRunning_ = false;
      // Wake the worker only if something was queued meanwhile (it waits for
      // inlineRunning_ only then): a wake-up per op costs a context switch.
      const bool queued = !root_.children.empty();
      lock.unlock();
      if (queued) schedCv_.notify_all();
      return work;
    }
  }
  auto node = std::make_shared<Node>();
  node->job = Job{work, std::move(run), timeout};
  {
    std::lock_guard<std::mutex> lock(schedMu_);
    if (schedStopping_) {
      throw c10::DistBackendError(here(__func__), "agentcomm: the process group was shut down");
    }
    Node* parent = (tlBackend == this && tlParent != nullptr) ? static_cast<Node*>(tlParent) : &root_;
    parent->children.push_back(std::move(node));
  }
  schedCv_.notify_all();
  return work;
}

algorithms::Context AgentBackend::makeContext(CollectiveKind kind, DataType dt, ReduceOp op, uint64_t signature,
                                              Deadline deadline) {
  algorithms::Context ctx(*transport_, ++algoSeq_, kind, dt);
  ctx.op = op;
  ctx.signature = signature;
  ctx.deadline = deadline;
  ctx.chunkBytes = chunkBytes_;
  ctx.shm = wholeGroupShm_ ? shm_.get() : nullptr;
  ctx.topo = topo_.get();
  return ctx;
}

// ---------------------------------------------------------------- reductions

c10::intrusive_ptr<c10d::Work> AgentBackend::allreduce(std::vector<at::Tensor>& tensors,
                                                       const c10d::AllreduceOptions& opts) {
  TORCH_CHECK_VALUE(tensors.size() == 1, "agentcomm all_reduce: expected one tensor per rank, got ", tensors.size());
  auto [rop, factor] = mapReduceOp(opts.reduceOp, "all_reduce");
  if (anyCuda(tensors)) {
    const at::Tensor& ct = tensors[0];
    if (wholeGroupShm_ && size_ > 1 && rop != ReduceOp::PremulSum && envFlag("AGENTCOMM_CUDA_IPC", true) &&
        cuda().peersCanReduce(ct, rop)) {
      // Every rank of the group is on this host: reduce on the device over CUDA IPC.
      const FinalScale scale = rop == ReduceOp::Avg ? FinalScale::divide(size_) : FinalScale::none();
      std::shared_ptr<CudaStage> stage = cuda().streamStage(ct);
      StageScope scope(stage);
      return enqueueCollective(c10d::OpType::ALLREDUCE, "agentcomm:all_reduce", tensors, opts.timeout,
                               [=, this](Deadline d) {
                                 auto exchange = [&](const void* mine, void* all, size_t bytes) {
                                   auto ctx = makeContext(CollectiveKind::AllGather, DataType::UInt8, ReduceOp::Sum,
                                                          bytes, d);
                                   algorithms::AllGatherOptions o;
                                   o.input = mine;
                                   for (int r = 0; r < size_; ++r) {
                                     o.outputs.push_back(static_cast<uint8_t*>(all) + bytes * static_cast<size_t>(r));
                                     o.counts.push_back(bytes);
                                   }
                                   algorithms::allGather(ctx, o);
                                 };
                                 cuda().allReduce(ct, rop, scale, *stage, exchange);
                               });
    }
    const size_t bytes = static_cast<size_t>(ct.numel()) * ct.element_size();
    if (ct.is_contiguous() && bytes >= kPipelineMinBytes && envFlag("AGENTCOMM_CUDA_PIPELINE", true))
      return allreducePipelined(ct, rop, factor, opts);
    return viaHost(cuda(), "all_reduce", [&](Tensors& t) { return allreduce(t, opts); }, tensors);
  }
  const at::Tensor t = tensors[0];
  View v = reduceView(t, "all_reduce", rop);
  const bool premul = takePremul(rop);
  at::Tensor buf = staged(t);
  return enqueueCollective(c10d::OpType::ALLREDUCE, "agentcomm:all_reduce", tensors, opts.timeout,
                           [=, this](Deadline d) {
                             if (premul) buf.mul_(factor);  // in place: all_reduce overwrites it anyway
                             auto ctx = makeContext(CollectiveKind::AllReduce, v.dt, rop, v.count, d);
                             algorithms::AllReduceOptions o;
                             o.data = buf.data_ptr();
                             o.count = v.count;
                             algorithms::allReduce(ctx, o);
                             unstage(t, buf);
                           },
                           mayRunInline(v.count * elementSize(v.dt), opts));
}

// A large CUDA tensor reduced through host memory (across hosts, or with
// CUDA IPC off): chunk by chunk, so that its copies down, the host algorithm
// on the wire and its copies up overlap (CudaStage::pipeline). Every rank
// cuts the same chunks (same count, same rule), one collective each.
c10::intrusive_ptr<c10d::Work> AgentBackend::allreducePipelined(const at::Tensor& ct, ReduceOp rop, double factor,
                                                                const c10d::AllreduceOptions& opts) {
  at::Tensor host = ct;
  std::vector<at::Tensor*> ptrs{&host};
  std::shared_ptr<CudaStage> stage = cuda().stage(ptrs, "all_reduce");  // host: the pinned mirror now
  View v = reduceView(host, "all_reduce", rop);
  const bool premul = takePremul(rop);
  stage->setPipelined();
  const size_t es = elementSize(v.dt);
  TORCH_INTERNAL_ASSERT(es == static_cast<size_t>(host.element_size()));
  // About 8 chunks of 1..32 MiB, whole elements.
  const size_t chunk = std::clamp<size_t>(v.count * es / 8, size_t{1} << 20, size_t{32} << 20) / es * es;
  StageScope scope(stage);
  return enqueueCollective(c10d::OpType::ALLREDUCE, "agentcomm:all_reduce", {host}, opts.timeout,
                           [=, this](Deadline d) {
                             const at::Tensor bytes = host.reshape({-1}).view(at::kByte);
                             stage->pipeline(chunk, [&](size_t off, size_t len) {
                               if (premul)  // this chunk's elements, in place
                                 bytes.narrow(0, static_cast<int64_t>(off), static_cast<int64_t>(len))
                                     .view(host.scalar_type())
                                     .mul_(factor);
                               auto ctx = makeContext(CollectiveKind::AllReduce, v.dt, rop, len / es, d);
                               algorithms::AllReduceOptions o;
                               o.data = static_cast<uint8_t*>(host.data_ptr()) + off;
                               o.count = len / es;
                               algorithms::allReduce(ctx, o);
                             });
                           });
}

c10::intrusive_ptr<c10d::Work> AgentBackend::allreduce_coalesced(std::vector<at::Tensor>& tensors,
                                                                 const c10d::AllreduceCoalescedOptions& opts) {
  if (anyCuda(tensors)) {
    return viaHost(cuda(), "all_reduce_coalesced", [&](Tensors& t) { return allreduce_coalesced(t, opts); }, tensors);
  }
  TORCH_CHECK_VALUE(!tensors.empty(), "agentcomm all_reduce_coalesced: no tensors");
  auto [rop, factor] = mapReduceOp(opts.reduceOp, "all_reduce_coalesced");
  std::vector<at::Tensor> flatParts;
  for (auto& t : tensors) {
    reduceView(t, "all_reduce_coalesced", rop);
    checkSameDtype(t, tensors[0], "all_reduce_coalesced");
    flatParts.push_back(t.reshape({-1}));
  }
  View v = reduceView(tensors[0], "all_reduce_coalesced", rop);
  const bool premul = takePremul(rop);
  at::Tensor flat = at::cat(flatParts);  // one buffer, one collective
  std::vector<at::Tensor> outs = tensors;
  return enqueueCollective(c10d::OpType::ALLREDUCE_COALESCED, "agentcomm:all_reduce_coalesced", tensors,
                           opts.timeout, [=, this](Deadline d) {
                             if (premul) flat.mul_(factor);
                             auto ctx = makeContext(CollectiveKind::AllReduce, v.dt, rop, flat.numel(), d);
                             algorithms::AllReduceOptions o;
                             o.data = flat.data_ptr();
                             o.count = flat.numel();
                             algorithms::allReduce(ctx, o);
                             int64_t off = 0;
                             for (const auto& t : outs) {
                               const_cast<at::Tensor&>(t).copy_(flat.narrow(0, off, t.numel()).view(t.sizes()));
                               off += t.numel();
                             }
                           });
}

c10::intrusive_ptr<c10d::Work> AgentBackend::reduce(std::vector<at::Tensor>& tensors, const c10d::ReduceOptions& opts) {
  if (anyCuda(tensors)) {
    return viaHost(cuda(), "reduce", [&](Tensors& t) { return reduce(t, opts); }, tensors);
  }
  TORCH_CHECK_VALUE(tensors.size() == 1, "agentcomm reduce: expected one tensor per rank, got ", tensors.size());
  TORCH_CHECK_VALUE(opts.rootRank >= 0 && opts.rootRank < size_, "agentcomm reduce: root ", opts.rootRank,
                    " is not a rank of this group of size ", size_);
  auto [rop, factor] = mapReduceOp(opts.reduceOp, "reduce");
  const at::Tensor t = tensors[0];
  View v = reduceView(t, "reduce", rop);
  const bool premul = takePremul(rop);
  const int root = static_cast<int>(opts.rootRank);
  // A non-root's input must stay unchanged: it reduces a scaled copy.
  at::Tensor buf = premul && rank_ != root ? at::mul(t.contiguous(), factor) : staged(t);
  return enqueueCollective(c10d::OpType::REDUCE, "agentcomm:reduce", tensors, opts.timeout, [=, this](Deadline d) {
    if (premul && rank_ == root) buf.mul_(factor);  // the root's tensor receives the result anyway
    auto ctx = makeContext(CollectiveKind::Reduce, v.dt, rop, v.count, d);
    algorithms::ReduceOptions o;
    o.data = buf.data_ptr();
    o.count = v.count;
    o.root = root;
    algorithms::reduce(ctx, o);
    if (rank_ == root) unstage(t, buf);
  }, mayRunInline(v.count * elementSize(v.dt), opts));
}

namespace {
// Runs one reduce-scatter over `blocks` (this rank's contribution to each rank's block).
void runReduceScatter(algorithms::Context& ctx, const std::vector<at::Tensor>& blocks, const at::Tensor& out) {
  algorithms::ReduceScatterOptions o;
  for (const auto& b : blocks) {
    o.inputs.push_back(b.data_ptr());
    o.counts.push_back(static_cast<size_t>(b.numel()));
  }
  o.output = out.data_ptr();
  algorithms::reduceScatter(ctx, o);
}
}  // namespace

c10::intrusive_ptr<c10d::Work> AgentBackend::reduce_scatter(std::vector<at::Tensor>& outputs,
                                                            std::vector<std::vector<at::Tensor>>& inputs,
                                                            const c10d::ReduceScatterOptions& opts) {
  if (anyCuda(outputs, inputs)) {
    return viaHost(
        cuda(), "reduce_scatter",
        [&](Tensors& o, TensorLists& i) { return reduce_scatter(o, i, opts); }, outputs, inputs);
  }
  TORCH_CHECK_VALUE(outputs.size() == 1 && inputs.size() == 1, "agentcomm reduce_scatter: expected one output and one "
                    "input list per rank");
  TORCH_CHECK_VALUE(static_cast<int>(inputs[0].size()) == size_, "agentcomm reduce_scatter: the input list has ",
                    inputs[0].size(), " tensors but the group has ", size_, " ranks");
  auto [rop, factor] = mapReduceOp(opts.reduceOp, "reduce_scatter");
  const at::Tensor out = outputs[0];
  View v = reduceView(out, "reduce_scatter", rop);
  const bool premul = takePremul(rop);
  std::vector<at::Tensor> blocks;
  uint64_t total = 0;
  for (auto& t : inputs[0]) {
    reduceView(t, "reduce_scatter", rop);
    checkSameDtype(t, out, "reduce_scatter");
    blocks.push_back(premul ? at::mul(t.contiguous(), factor) : staged(t));  // inputs stay unchanged
    total += t.numel();
  }
  TORCH_CHECK_VALUE(inputs[0][rank_].numel() == out.numel(), "agentcomm reduce_scatter: the output has ", out.numel(),
                    " elements but this rank's input block has ", inputs[0][rank_].numel());
  at::Tensor obuf = staged(out);
  return enqueueCollective(c10d::OpType::REDUCE_SCATTER, "agentcomm:reduce_scatter", outputs, opts.timeout,
                           [=, this](Deadline d) {
                             auto ctx = makeContext(CollectiveKind::ReduceScatter, v.dt, rop, total, d);
                             runReduceScatter(ctx, blocks, obuf);
                             unstage(out, obuf);
                           },
                           mayRunInline(total * elementSize(v.dt), opts));
}

c10::intrusive_ptr<c10d::Work> AgentBackend::_reduce_scatter_base(at::Tensor& output, at::Tensor& input,
                                                                  const c10d::ReduceScatterOptions& opts) {
  std::vector<at::Tensor> outs = {output}, ins = {input};
  return reduce_scatter_tensor_coalesced(outs, ins, opts);
}

c10::intrusive_ptr<c10d::Work> AgentBackend::reduce_scatter_tensor_coalesced(std::vector<at::Tensor>& outputs,
                                                                             std::vector<at::Tensor>& inputs,
                                                                             const c10d::ReduceScatterOptions& opts) {
  if (anyCuda(outputs, inputs)) {
    return viaHost(
        cuda(), "reduce_scatter_tensor",
        [&](Tensors& o, Tensors& i) { return reduce_scatter_tensor_coalesced(o, i, opts); }, outputs, inputs);
  }
  TORCH_CHECK_VALUE(outputs.size() == inputs.size(), "agentcomm reduce_scatter_tensor: ", outputs.size(),
                    " outputs but ", inputs.size(), " inputs");
  auto [rop, factor] = mapReduceOp(opts.reduceOp, "reduce_scatter_tensor");
  const bool premul = takePremul(rop);
  std::vector<View> views;
  std::vector<at::Tensor> ins, outs;
  for (size_t i = 0; i < inputs.size(); ++i) {
    views.push_back(reduceView(outputs[i], "reduce_scatter_tensor", rop));
    reduceView(inputs[i], "reduce_scatter_tensor", rop);
    checkSameDtype(inputs[i], outputs[i], "reduce_scatter_tensor");
    TORCH_CHECK_VALUE(inputs[i].numel() == outputs[i].numel() * size_, "agentcomm reduce_scatter_tensor: the input has ",
                      inputs[i].numel(), " elements, expected output size ", outputs[i].numel(), " x world size ",
                      size_);
    ins.push_back((premul ? at::mul(inputs[i].contiguous(), factor) : staged(inputs[i])).reshape({-1}));
    outs.push_back(staged(outputs[i]));
  }
  std::vector<at::Tensor> originals = outputs;
  return enqueueCollective(c10d::OpType::_REDUCE_SCATTER_BASE, "agentcomm:reduce_scatter_tensor", outputs,
                           opts.timeout, [=, this](Deadline d) {
                             for (size_t i = 0; i < ins.size(); ++i) {
                               auto ctx = makeContext(CollectiveKind::ReduceScatter, views[i].dt, rop,
                                                      static_cast<uint64_t>(ins[i].numel()), d);
                               runReduceScatter(ctx, ins[i].chunk(size_), outs[i]);
                               unstage(originals[i], outs[i]);
                             }
                           },
                           mayRunInline(ins.size() == 1 ? ins[0].nbytes() : SIZE_MAX, opts));
}

// ---------------------------------------------------------------- data movement

c10::intrusive_ptr<c10d::Work> AgentBackend::broadcast(std::vector<at::Tensor>& tensors,
                                                       const c10d::BroadcastOptions& opts) {
  if (anyCuda(tensors)) {
    return viaHost(cuda(), "broadcast", [&](Tensors& t) { return broadcast(t, opts); }, tensors);
  }
  TORCH_CHECK_VALUE(tensors.size() == 1, "agentcomm broadcast: expected one tensor per rank, got ", tensors.size());
  TORCH_CHECK_VALUE(opts.rootRank >= 0 && opts.rootRank < size_, "agentcomm broadcast: root ", opts.rootRank,
                    " is not a rank of this group of size ", size_);
  TORCH_CHECK_VALUE(opts.rootTensor == 0, "agentcomm broadcast: rootTensor must be 0");
  const at::Tensor t = tensors[0];
  View v = moveView(t, "broadcast");
  at::Tensor buf = staged(t);
  const int root = static_cast<int>(opts.rootRank);
  return enqueueCollective(c10d::OpType::BROADCAST, "agentcomm:broadcast", tensors, opts.timeout,
                           [=, this](Deadline d) {
                             auto ctx = makeContext(CollectiveKind::Broadcast, v.dt, ReduceOp::Sum, v.count, d);
                             algorithms::broadcast(ctx, {buf.data_ptr(), v.count, root});
                             if (rank_ != root) unstage(t, buf);
                           },
                           mayRunInline(v.count * elementSize(v.dt), opts));
}

namespace {
void runAllGather(algorithms::Context& ctx, const at::Tensor& input, const std::vector<at::Tensor>& outs, size_t unit) {
  algorithms::AllGatherOptions o;
  o.input = input.data_ptr();
  for (const auto& t : outs) {
    o.outputs.push_back(t.data_ptr());
    o.counts.push_back(static_cast<size_t>(t.numel()) * unit);
  }
  algorithms::allGather(ctx, o);
}
}  // namespace

c10::intrusive_ptr<c10d::Work> AgentBackend::allgather(std::vector<std::vector<at::Tensor>>& outputs,
                                                       std::vector<at::Tensor>& inputs,
                                                       const c10d::AllgatherOptions& opts) {
  TORCH_CHECK_VALUE(inputs.size() == 1 && outputs.size() == 1, "agentcomm all_gather: expected one input and one "
                    "output list per rank");
  return allgatherImpl(outputs, inputs, opts);
}

c10::intrusive_ptr<c10d::Work> AgentBackend::allgather_coalesced(std::vector<std::vector<at::Tensor>>& outputs,
                                                                 std::vector<at::Tensor>& inputs,
                                                                 const c10d::AllgatherOptions& opts) {
  // outputs[r][i] receives input i of rank r; allgatherImpl wants, per input, its list over ranks.
  TORCH_CHECK_VALUE(static_cast<int>(outputs.size()) == size_, "agentcomm all_gather_coalesced: ", outputs.size(),
                    " output lists for ", size_, " ranks");
  std::vector<std::vector<at::Tensor>> perInput(inputs.size());
  for (size_t r = 0; r < outputs.size(); ++r) {
    TORCH_CHECK_VALUE(outputs[r].size() == inputs.size(), "agentcomm all_gather_coalesced: rank ", r,
                      "'s output list has ", outputs[r].size(), " tensors but there are ", inputs.size(), " inputs");
    for (size_t i = 0; i < inputs.size(); ++i) perInput[i].push_back(outputs[r][i]);
  }
  return allgatherImpl(perInput, inputs, opts);
}

c10::intrusive_ptr<c10d::Work> AgentBackend::allgatherImpl(std::vector<std::vector<at::Tensor>>& outputs,
                                                           std::vector<at::Tensor>& inputs,
                                                           const c10d::AllgatherOptions& opts) {
  if (anyCuda(outputs, inputs)) {
    return viaHost(
        cuda(), "all_gather",
        [&](TensorLists& o, Tensors& i) { return allgatherImpl(o, i, opts); }, outputs, inputs);
  }
  TORCH_CHECK_VALUE(outputs.size() == inputs.size(), "agentcomm all_gather: ", inputs.size(), " inputs but ",
                    outputs.size(), " output lists");
  struct Item {
    View v;
    size_t unit;  // core elements per tensor element (bytes mode: element size)
    at::Tensor in;
    std::vector<at::Tensor> outs, originals;
    uint64_t total;
  };
  std::vector<Item> items;
  std::vector<at::Tensor> flatOutputs;
  for (size_t i = 0; i < inputs.size(); ++i) {
    Item it;
    it.v = moveView(inputs[i], "all_gather");
    it.unit = unitOf(inputs[i]);
    TORCH_CHECK_VALUE(static_cast<int>(outputs[i].size()) == size_, "agentcomm all_gather: the output list has ",
                      outputs[i].size(), " tensors but the group has ", size_, " ranks");
    it.total = 0;
    for (auto& o : outputs[i]) {
      moveView(o, "all_gather");
      checkSameDtype(o, inputs[i], "all_gather");
      it.outs.push_back(staged(o));
      it.originals.push_back(o);
      it.total += o.numel() * it.unit;
      flatOutputs.push_back(o);
    }
    TORCH_CHECK_VALUE(outputs[i][rank_].numel() == inputs[i].numel(), "agentcomm all_gather: this rank's output has ",
                      outputs[i][rank_].numel(), " elements but its input has ", inputs[i].numel());
    it.in = staged(inputs[i]);
    items.push_back(std::move(it));
  }
  return enqueueCollective(c10d::OpType::ALLGATHER, "agentcomm:all_gather", flatOutputs, opts.timeout,
                           [=, this](Deadline d) {
                             for (const auto& it : items) {
                               auto ctx = makeContext(CollectiveKind::AllGather, it.v.dt, ReduceOp::Sum, it.total, d);
                               runAllGather(ctx, it.in, it.outs, it.unit);
                               for (size_t k = 0; k < it.outs.size(); ++k) unstage(it.originals[k], it.outs[k]);
                             }
                           });
}

c10::intrusive_ptr<c10d::Work> AgentBackend::_allgather_base(at::Tensor& output, at::Tensor& input,
                                                             const c10d::AllgatherOptions& opts) {
  std::vector<at::Tensor> outs = {output}, ins = {input};
  return allgather_into_tensor_coalesced(outs, ins, opts);
}

c10::intrusive_ptr<c10d::Work> AgentBackend::allgather_into_tensor_coalesced(std::vector<at::Tensor>& outputs,
                                                                             std::vector<at::Tensor>& inputs,
                                                                             const c10d::AllgatherOptions& opts) {
  if (anyCuda(outputs, inputs)) {
    return viaHost(
        cuda(), "all_gather_into_tensor",
        [&](Tensors& o, Tensors& i) { return allgather_into_tensor_coalesced(o, i, opts); }, outputs, inputs);
  }
  TORCH_CHECK_VALUE(outputs.size() == inputs.size(), "agentcomm all_gather_into_tensor: ", outputs.size(),
                    " outputs but ", inputs.size(), " inputs");
  std::vector<View> views;
  std::vector<at::Tensor> ins, outs;
  for (size_t i = 0; i < inputs.size(); ++i) {
    views.push_back(moveView(inputs[i], "all_gather_into_tensor"));
    moveView(outputs[i], "all_gather_into_tensor");
    checkSameDtype(inputs[i], outputs[i], "all_gather_into_tensor");
    TORCH_CHECK_VALUE(outputs[i].numel() == inputs[i].numel() * size_, "agentcomm all_gather_into_tensor: the output "
                      "has ", outputs[i].numel(), " elements, expected input size ", inputs[i].numel(),
                      " x world size ", size_);
    ins.push_back(staged(inputs[i]));
    outs.push_back(staged(outputs[i]).reshape({-1}));
  }
  std::vector<at::Tensor> originals = outputs;
  return enqueueCollective(c10d::OpType::_ALLGATHER_BASE, "agentcomm:all_gather_into_tensor", outputs, opts.timeout,
                           [=, this](Deadline d) {
                             for (size_t i = 0; i < ins.size(); ++i) {
                               const size_t unit = unitOf(ins[i]);
                               auto ctx = makeContext(CollectiveKind::AllGather, views[i].dt, ReduceOp::Sum,
                                                      views[i].count * size_, d);
                               runAllGather(ctx, ins[i], outs[i].chunk(size_), unit);
                               unstage(originals[i], outs[i].view(originals[i].sizes()));
                             }
                           },
                           mayRunInline(outs.size() == 1 ? outs[0].nbytes() : SIZE_MAX, opts));
}

c10::intrusive_ptr<c10d::Work> AgentBackend::gather(std::vector<std::vector<at::Tensor>>& outputs,
                                                    std::vector<at::Tensor>& inputs, const c10d::GatherOptions& opts) {
  if (anyCuda(outputs, inputs)) {
    return viaHost(cuda(), "gather", [&](TensorLists& o, Tensors& i) { return gather(o, i, opts); }, outputs, inputs);
  }
  TORCH_CHECK_VALUE(inputs.size() == 1, "agentcomm gather: expected one input tensor per rank");
  TORCH_CHECK_VALUE(opts.rootRank >= 0 && opts.rootRank < size_, "agentcomm gather: root ", opts.rootRank,
                    " is not a rank of this group of size ", size_);
  const int root = static_cast<int>(opts.rootRank);
  View v = moveView(inputs[0], "gather");
  const size_t unit = unitOf(inputs[0]);
  at::Tensor in = staged(inputs[0]);
  std::vector<at::Tensor> outs = stageRootList(outputs, inputs[0], rank_ == root, size_, "gather", "output");
  std::vector<at::Tensor> originals = rank_ == root ? outputs[0] : std::vector<at::Tensor>{};
  return enqueueCollective(c10d::OpType::GATHER, "agentcomm:gather", originals, opts.timeout, [=, this](Deadline d) {
    auto ctx = makeContext(CollectiveKind::Gather, v.dt, ReduceOp::Sum, 0, d);
    algorithms::GatherOptions o;
    o.input = in.data_ptr();
    o.count = v.count;
    o.root = root;
    for (const auto& t : outs) {
      o.outputs.push_back(t.data_ptr());
      o.counts.push_back(static_cast<size_t>(t.numel()) * unit);
    }
    algorithms::gather(ctx, o);
    for (size_t k = 0; k < outs.size(); ++k) unstage(originals[k], outs[k]);
  }, mayRunInline(static_cast<size_t>(in.nbytes()) * (rank_ == root ? size_ : 1), opts));
}

c10::intrusive_ptr<c10d::Work> AgentBackend::scatter(std::vector<at::Tensor>& outputs,
                                                     std::vector<std::vector<at::Tensor>>& inputs,
                                                     const c10d::ScatterOptions& opts) {
  if (anyCuda(outputs, inputs)) {
    return viaHost(cuda(), "scatter", [&](Tensors& o, TensorLists& i) { return scatter(o, i, opts); }, outputs, inputs);
  }
  TORCH_CHECK_VALUE(outputs.size() == 1, "agentcomm scatter: expected one output tensor per rank");
  TORCH_CHECK_VALUE(opts.rootRank >= 0 && opts.rootRank < size_, "agentcomm scatter: root ", opts.rootRank,
                    " is not a rank of this group of size ", size_);
  const int root = static_cast<int>(opts.rootRank);
  const at::Tensor out = outputs[0];
  View v = moveView(out, "scatter");
  const size_t unit = unitOf(out);
  at::Tensor obuf = staged(out);
  std::vector<at::Tensor> ins = stageRootList(inputs, out, rank_ == root, size_, "scatter", "input");
  return enqueueCollective(c10d::OpType::SCATTER, "agentcomm:scatter", outputs, opts.timeout, [=, this](Deadline d) {
    auto ctx = makeContext(CollectiveKind::Scatter, v.dt, ReduceOp::Sum, 0, d);
    algorithms::ScatterOptions o;
    o.output = obuf.data_ptr();
    o.count = v.count;
    o.root = root;
    for (const auto& t : ins) {
      o.inputs.push_back(t.data_ptr());
      o.counts.push_back(static_cast<size_t>(t.numel()) * unit);
    }
    algorithms::scatter(ctx, o);
    unstage(out, obuf);
  }, mayRunInline(static_cast<size_t>(obuf.nbytes()) * (rank_ == root ? size_ : 1), opts));
}

c10::intrusive_ptr<c10d::Work> AgentBackend::alltoall_base(at::Tensor& output, at::Tensor& input,
                                                           std::vector<int64_t>& outputSplits,
                                                           std::vector<int64_t>& inputSplits,
                                                           const c10d::AllToAllOptions& opts) {
  if (anyCuda(output, input)) {
    return viaHost(
        cuda(), "all_to_all_single",
        [&](at::Tensor& o, at::Tensor& i) { return alltoall_base(o, i, outputSplits, inputSplits, opts); }, output,
        input);
  }
  View v = moveView(input, "all_to_all_single");
  moveView(output, "all_to_all_single");
  checkSameDtype(input, output, "all_to_all_single");
  auto rows = [&](const at::Tensor& t, std::vector<int64_t> splits, const char* which) {
    const int64_t dim0 = t.dim() > 0 ? t.size(0) : 1;
    if (splits.empty()) {
      TORCH_CHECK_VALUE(dim0 % size_ == 0, "agentcomm all_to_all_single: the ", which, " tensor's first dimension (",
                        dim0, ") is not divisible by the world size ", size_, "; pass explicit splits");
      splits.assign(size_, dim0 / size_);
    }
    TORCH_CHECK_VALUE(static_cast<int>(splits.size()) == size_, "agentcomm all_to_all_single: ", splits.size(), " ",
                      which, " splits for ", size_, " ranks");
    TORCH_CHECK_VALUE(std::accumulate(splits.begin(), splits.end(), int64_t{0}) == dim0, "agentcomm "
                      "all_to_all_single: the ", which, " splits add up to ",
                      std::accumulate(splits.begin(), splits.end(), int64_t{0}), " but the first dimension is ", dim0);
    return splits;
  };
  auto inSplits = rows(input, inputSplits, "input");
  auto outSplits = rows(output, outputSplits, "output");
  const size_t unit = unitOf(input);
  const int64_t inRow = input.dim() > 0 && input.size(0) > 0 ? input.numel() / input.size(0) : 0;
  const int64_t outRow = output.dim() > 0 && output.size(0) > 0 ? output.numel() / output.size(0) : 0;
  TORCH_CHECK_VALUE(inRow == outRow || inRow == 0 || outRow == 0, "agentcomm all_to_all_single: input rows have ",
                    inRow, " elements but output rows have ", outRow);
  algorithms::AllToAllOptions o;
  size_t off = 0;
  for (int p = 0; p < size_; ++p) {
    o.inOffsets.push_back(off);
    o.inCounts.push_back(static_cast<size_t>(inSplits[p] * inRow) * unit);
    off += o.inCounts.back();
  }
  off = 0;
  for (int p = 0; p < size_; ++p) {
    o.outOffsets.push_back(off);
    o.outCounts.push_back(static_cast<size_t>(outSplits[p] * outRow) * unit);
    off += o.outCounts.back();
  }
  at::Tensor in = staged(input), out = staged(output);
  const at::Tensor original = output;
  std::vector<at::Tensor> outs = {output};
  return enqueueCollective(c10d::OpType::ALLTOALL_BASE, "agentcomm:all_to_all_single", outs, opts.timeout,
                           [=, this](Deadline d) mutable {
                             auto ctx = makeContext(CollectiveKind::AllToAll, v.dt, ReduceOp::Sum, 0, d);
                             o.input = in.data_ptr();
                             o.output = out.data_ptr();
                             algorithms::allToAll(ctx, o);
                             unstage(original, out);
                           },
                           mayRunInline(static_cast<size_t>(in.nbytes()), opts));
}

c10::intrusive_ptr<c10d::Work> AgentBackend::alltoall(std::vector<at::Tensor>& outputs, std::vector<at::Tensor>& inputs,
                                                      const c10d::AllToAllOptions& opts) {
  if (anyCuda(outputs, inputs)) {
    return viaHost(cuda(), "all_to_all", [&](Tensors& o, Tensors& i) { return alltoall(o, i, opts); }, outputs, inputs);
  }
  TORCH_CHECK_VALUE(static_cast<int>(inputs.size()) == size_ && static_cast<int>(outputs.size()) == size_,
                    "agentcomm all_to_all: expected ", size_, " input and output tensors, got ", inputs.size(),
                    " and ", outputs.size());
  std::vector<at::Tensor> flatIn;
  for (auto& t : inputs) {
    moveView(t, "all_to_all");
    checkSameDtype(t, inputs[0], "all_to_all");
    flatIn.push_back(t.reshape({-1}));
  }
  for (auto& t : outputs) {
    moveView(t, "all_to_all");
    checkSameDtype(t, inputs[0], "all_to_all");
  }
  View v = moveView(inputs[0], "all_to_all");
  const size_t unit = unitOf(inputs[0]);
  at::Tensor in = at::cat(flatIn);
  algorithms::AllToAllOptions o;
  size_t off = 0;
  for (int p = 0; p < size_; ++p) {
    o.inOffsets.push_back(off);
    o.inCounts.push_back(static_cast<size_t>(inputs[p].numel()) * unit);
    off += o.inCounts.back();
  }
  off = 0;
  int64_t outTotal = 0;
  for (int p = 0; p < size_; ++p) {
    o.outOffsets.push_back(off);
    o.outCounts.push_back(static_cast<size_t>(outputs[p].numel()) * unit);
    off += o.outCounts.back();
    outTotal += outputs[p].numel();
  }
  at::Tensor out = at::empty({outTotal}, inputs[0].options());
  std::vector<at::Tensor> originals = outputs;
  return enqueueCollective(c10d::OpType::ALLTOALL, "agentcomm:all_to_all", outputs, opts.timeout,
                           [=, this](Deadline d) mutable {
                             auto ctx = makeContext(CollectiveKind::AllToAll, v.dt, ReduceOp::Sum, 0, d);
                             o.input = in.data_ptr();
                             o.output = out.data_ptr();
                             algorithms::allToAll(ctx, o);
                             int64_t pos = 0;
                             for (const auto& t : originals) {
                               const_cast<at::Tensor&>(t).copy_(out.narrow(0, pos, t.numel()).view(t.sizes()));
                               pos += t.numel();
                             }
                           },
                           mayRunInline(std::max(in.nbytes(), out.nbytes()), opts));
}

c10::intrusive_ptr<c10d::Work> AgentBackend::barrier(const c10d::BarrierOptions& opts) {
  return enqueueCollective(c10d::OpType::BARRIER, "agentcomm:barrier", {}, opts.timeout, [this](Deadline d) {
    auto ctx = makeContext(CollectiveKind::Barrier, DataType::UInt8, ReduceOp::Sum, 0, d);
    algorithms::barrier(ctx);
  }, true);
}

// ---------------------------------------------------------------- point to point

c10::intrusive_ptr<c10d::Work> AgentBackend::send(std::vector<at::Tensor>& tensors, int dstRank, int tag) {
  if (anyCuda(tensors)) {
    return viaHost(cuda(), "send", [&](Tensors& t) { return send(t, dstRank, tag); }, tensors);
  }
  TORCH_CHECK_VALUE(tensors.size() == 1, "agentcomm send: expected one tensor, got ", tensors.size());
  TORCH_CHECK_VALUE(dstRank >= 0 && dstRank < size_ && dstRank != rank_, "agentcomm send: bad destination rank ",
                    dstRank, " (this is rank ", rank_, " of ", size_, ")");
  View v = moveView(tensors[0], "send");
  // As with every backend, the caller must not modify the tensor before the work completes.
  at::Tensor buf = staged(tensors[0]);
  std::shared_ptr<CudaStage> stage = takeStage();  // CUDA: tensors[0] is a host mirror
  if (stage) stage->setOutputs({});
  auto work = c10::make_intrusive<AgentWork>(rank_, c10d::OpType::SEND, "agentcomm:send",
                                             std::vector<at::Tensor>{stage ? stage->original(tensors[0]) : tensors[0]},
                                             timeout_, stage);
  work->record(recorder_, 0, true, dstRank);
  const transport::Header header = p2pHeader(v.dt, static_cast<uint32_t>(tag), v.count, buf.nbytes());
  Job job{work,
          [=, this](Deadline d) {
            if (stage) stage->copyIn();
            transport_->send(dstRank, header, buf.data_ptr(), d);
            if (stage) stage->copyOut();
          },
          timeout_};
  // A large host send to a rank of this host (of this group, or of its
  // host's part in a group over several hosts) goes by rendezvous: an Offer
  // (address, size) instead of the payload; the receiver pulls it with one
  // process_vm_readv as soon as the offer arrives (posted receive or not) and
  // answers; the work completes with that answer (the tensor is read until then).
  if (!stage && !rendezvousIndex_.empty() && rendezvousIndex_[static_cast<size_t>(dstRank)] >= 0 &&
      static_cast<size_t>(buf.nbytes()) >= algorithms::rendezvousMinBytes()) {
    const uint64_t id = nextOfferId_.fetch_add(1);
    auto word = std::make_shared<uint64_t>(0);
    transport::RecvSpec answer;
    answer.kind = transport::MsgKind::P2P;
    answer.src = dstRank;
    answer.tag = transport::kOfferAckTag | id;
    answer.buffer = word.get();
    answer.nbytes = sizeof(uint64_t);
    answer.dtype = static_cast<uint8_t>(DataType::UInt8);
    answer.count = 1;
    const int64_t bytes = buf.nbytes();
    answer.onComplete = [this, work, word, buf, dstRank, tag, bytes](const transport::RecvSlot& slot) {
      std::exception_ptr eptr;
      if (slot.failed()) {
        eptr = std::make_exception_ptr(c10::DistBackendError(here("send"), slot.error()));
      } else if (*word != 1) {
        eptr = std::make_exception_ptr(c10::DistBackendError(
            here("send"), strCat("agentcomm send: rank ", dstRank, " refused this message (tag ", tag, ", ", bytes,
                                 " bytes): its receive has another size or dtype (its error says which), or it ",
                                 "could not read this rank's memory")));
      }
      if (!work->completeWithoutCallbacks(eptr))
        completions_.push(Job{work, [work, eptr](Deadline) { work->complete(eptr); }, timeout_});
    };
    transport_->post(std::move(answer));  // before the offer can be answered
    const transport::Offer offer{reinterpret_cast<uint64_t>(buf.data_ptr()), static_cast<uint64_t>(bytes), id};
    job.run = [=, this](Deadline d) {
      transport_->send(dstRank, p2pHeader(v.dt, static_cast<uint32_t>(tag), v.count, sizeof offer, transport::kP2POffer),
                       &offer, d);
    };
    job.deferred = true;
    sends_.push(std::move(job));
    return work;
  }
  // A small host send goes out from the calling thread when the lane is idle
  // and no other thread is sending to that peer (one thread hand-off less;
  // the socket takes it without waiting for the peer, whose reader drains
  // it; it never queues behind a large message). It completes before the
  // caller can attach a callback.
  const auto inlineSend = [&] {
    bool sent = false;
    Job probe{work,
              [&](Deadline d) {
                sent = transport_->trySend(dstRank, header, buf.data_ptr(), d);
              },
              timeout_};
    std::exception_ptr eptr = execute(probe);
    if (eptr || sent) work->complete(eptr);
    return eptr || sent;
  };
  if (stage || static_cast<size_t>(buf.nbytes()) > kInlineMaxBytes || !sends_.runInlineIfIdle(inlineSend))
    sends_.push(std::move(job));
  return work;
}

c10::intrusive_ptr<AgentWork> AgentBackend::postRecv(std::vector<at::Tensor>& tensors, int srcRank, int tag) {
  if (anyCuda(tensors)) {
    std::vector<at::Tensor> mirrors = tensors;
    std::vector<at::Tensor*> ptrs;
    collect(ptrs, mirrors);
    StageScope scope(cuda().stage(ptrs, "recv"));
    return postRecv(mirrors, srcRank, tag);
  }
  TORCH_CHECK_VALUE(tensors.size() == 1, "agentcomm recv: expected one tensor, got ", tensors.size());
  View v = moveView(tensors[0], "recv");
  const at::Tensor t = tensors[0];
  at::Tensor buf = staged(t);
  std::shared_ptr<CudaStage> stage = takeStage();  // CUDA: t is a host mirror, copied up on arrival
  if (stage) stage->setOutputs({t});
  auto work = c10::make_intrusive<AgentWork>(rank_, srcRank >= 0 ? c10d::OpType::RECV : c10d::OpType::RECVANYSOURCE,
                                             "agentcomm:recv",
                                             std::vector<at::Tensor>{stage ? stage->original(t) : t}, timeout_, stage);
  work->record(recorder_, 0, true, srcRank);
  work->recordStarted();  // posted: it waits for its message from now on
  transport::Transport* tp = transport_.get();
  work->onWaitTimeout = [tp](const std::string& why) { tp->abort(why); };
  transport::RecvSpec spec;
  spec.kind = transport::MsgKind::P2P;
  spec.src = srcRank;
  spec.tag = static_cast<uint32_t>(tag);
  spec.buffer = buf.data_ptr();
  spec.nbytes = buf.nbytes();
  spec.dtype = static_cast<uint8_t>(v.dt);
  spec.count = v.count;
  c10::intrusive_ptr<AgentWork> keep = work;
  spec.onComplete = [this, keep, t, buf, stage](const transport::RecvSlot& slot) {
    const bool failed = slot.failed();
    const std::string error = slot.error();
    keep->setSourceRank(slot.source());
    // Received in place with nobody holding the future: finish here, on the
    // reader (the waiter wakes one hand-off sooner; no callback runs here).
    if (!failed && !stage && t.data_ptr() == buf.data_ptr() && keep->completeWithoutCallbacks(nullptr)) return;
    // Copy-back and future callbacks run on the completion lane, not on the
    // transport's reader thread.
    completions_.push(Job{keep,
                          [keep, t, buf, failed, error, stage](Deadline) {
                            if (failed) {
                              keep->complete(std::make_exception_ptr(c10::DistBackendError(here("recv"), error)));
                              return;
                            }
                            unstage(t, buf);
                            if (stage) {
                              stage->waitCaller();
                              stage->copyOut();
                            }
                            keep->complete(nullptr);
                          },
                          timeout_});
  };
  transport_->post(std::move(spec));
  return work;
}

c10::intrusive_ptr<c10d::Work> AgentBackend::recv(std::vector<at::Tensor>& tensors, int srcRank, int tag) {
  TORCH_CHECK_VALUE(srcRank >= 0 && srcRank < size_ && srcRank != rank_, "agentcomm recv: bad source rank ", srcRank,
                    " (this is rank ", rank_, " of ", size_, ")");
  return postRecv(tensors, srcRank, tag);
}

c10::intrusive_ptr<c10d::Work> AgentBackend::recvAnysource(std::vector<at::Tensor>& tensors, int tag) {
  return postRecv(tensors, -1, tag);
}

}  // namespace agentcomm::torch_adapter

namespace agentcomm::torch_adapter {

void reduceInto(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const std::string& op,
                const std::string& simdLevel) {
  TORCH_CHECK_VALUE(out.device() == a.device() && a.device() == b.device(), "reduce_into: tensors on ", out.device(),
                    ", ", a.device(), " and ", b.device(), "; pass them on one device");
  TORCH_CHECK_VALUE(out.is_cpu() || (out.is_cuda() && cudaBuilt()),
                    "reduce_into: CPU tensors, or CUDA tensors in a build with CUDA, expected; got ", out.device());
  TORCH_CHECK_VALUE(out.is_contiguous() && a.is_contiguous() && b.is_contiguous(), "reduce_into: contiguous tensors only");
  TORCH_CHECK_VALUE(out.numel() == a.numel() && a.numel() == b.numel(), "reduce_into: sizes differ (", out.numel(), ", ",
                    a.numel(), ", ", b.numel(), ")");
  TORCH_CHECK_VALUE(out.scalar_type() == a.scalar_type() && a.scalar_type() == b.scalar_type(),
                    "reduce_into: dtypes differ");
  auto dt = mapDtype(a.scalar_type());
  TORCH_CHECK_TYPE(dt.has_value(), "reduce_into: unsupported dtype ", a.scalar_type());
  static const std::map<std::string, ReduceOp> ops = {
      {"sum", ReduceOp::Sum}, {"prod", ReduceOp::Product}, {"min", ReduceOp::Min}, {"max", ReduceOp::Max}};
  auto it = ops.find(op);
  TORCH_CHECK_VALUE(it != ops.end(), "reduce_into: op must be sum, prod, min or max, got '", op, "'");
  const size_t n = static_cast<size_t>(a.numel());
#ifdef AGENTCOMM_WITH_CUDA
  if (out.is_cuda()) {  // the CUDA twin: float types only, on the current stream
    TORCH_CHECK_TYPE(*dt == DataType::Float32 || *dt == DataType::Float64 || *dt == DataType::Float16 ||
                         *dt == DataType::BFloat16,
                     "reduce_into: CUDA tensors must be float32, float64, float16 or bfloat16, got ", a.scalar_type());
    c10::DeviceGuard guard(out.device());
    return kernels::cuda::reduce(out.data_ptr(), a.data_ptr(), b.data_ptr(), n, *dt, it->second, FinalScale::none(),
                                 currentCudaStream(out));
  }
#endif
  using kernels::simd::Level;
  const Level saved = kernels::simd::level();
  if (simdLevel != "auto") {
    TORCH_CHECK_VALUE(simdLevel == "scalar" || simdLevel == "avx2" || simdLevel == "avx512",
                      "reduce_into: simd must be auto, scalar, avx2 or avx512");
    kernels::simd::setLevel(simdLevel == "avx512" ? Level::Avx512 : simdLevel == "avx2" ? Level::Avx2 : Level::Scalar);
  }
  kernels::reduce(out.data_ptr(), a.data_ptr(), b.data_ptr(), n, *dt, it->second);
  kernels::simd::setLevel(saved);
}

std::string simdLevelName() { return kernels::simd::levelName(kernels::simd::level()); }

namespace {
FinalScale scaleFrom(double divideBy, double multiplyBy) {
  TORCH_CHECK_VALUE(divideBy == 1.0 || multiplyBy == 1.0, "agentcomm: give divide_by or multiply_by, not both");
  if (divideBy != 1.0) return FinalScale{FinalScale::Kind::Divide, divideBy};
  if (multiplyBy != 1.0) return FinalScale{FinalScale::Kind::Multiply, multiplyBy};
  return FinalScale::none();
}

// Checks a flat buffer against a tensor list; returns the element counts.
std::vector<size_t> multiTensorCounts(const std::vector<at::Tensor>& tensors, const at::Tensor& flat, const char* what) {
  TORCH_CHECK_VALUE((flat.is_cpu() || (flat.is_cuda() && cudaBuilt())) && flat.is_contiguous(), "agentcomm ", what,
                    ": the flat buffer must be a contiguous CPU tensor (or CUDA tensor, in a build with CUDA)");
  auto dt = mapDtype(flat.scalar_type());
  TORCH_CHECK_TYPE(dt.has_value() && *dt != DataType::Bool, "agentcomm ", what, ": unsupported dtype ", flat.scalar_type());
  std::vector<size_t> counts;
  size_t total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK_VALUE(t.device() == flat.device() && t.is_contiguous() && (t.is_cpu() || (t.is_cuda() && cudaBuilt())),
                      "agentcomm ", what, ": tensor ", i, " is not a contiguous tensor on the flat buffer's device (",
                      flat.device(), "; CPU, or CUDA in a build with CUDA)");
    TORCH_CHECK_TYPE(t.scalar_type() == flat.scalar_type(), "agentcomm ", what, ": tensor ", i, " is ",
                     t.scalar_type(), " but the flat buffer is ", flat.scalar_type());
    counts.push_back(static_cast<size_t>(t.numel()));
    total += counts.back();
  }
  TORCH_CHECK_VALUE(static_cast<size_t>(flat.numel()) >= total, "agentcomm ", what, ": the flat buffer has ",
                    flat.numel(), " elements, the tensors ", total);
  return counts;
}
}  // namespace

void packInto(const std::vector<at::Tensor>& tensors, at::Tensor& flat, double divideBy, double multiplyBy) {
  const auto counts = multiTensorCounts(tensors, flat, "pack");
  std::vector<const void*> ptrs;
  for (const auto& t : tensors) ptrs.push_back(t.data_ptr());
  const DataType dt = *mapDtype(flat.scalar_type());
#ifdef AGENTCOMM_WITH_CUDA
  if (flat.is_cuda()) {  // one launch for the whole list, on the current stream
    c10::DeviceGuard guard(flat.device());
    return kernels::cuda::packScaled(ptrs.data(), counts.data(), counts.size(), flat.data_ptr(), dt,
                                     scaleFrom(divideBy, multiplyBy), currentCudaStream(flat));
  }
#endif
  kernels::packScaled(ptrs.data(), counts.data(), counts.size(), flat.data_ptr(), dt, scaleFrom(divideBy, multiplyBy));
}

void unpackFrom(const at::Tensor& flat, std::vector<at::Tensor>& tensors, double divideBy, double multiplyBy) {
  const auto counts = multiTensorCounts(tensors, flat, "unpack");
  std::vector<void*> ptrs;
  for (auto& t : tensors) ptrs.push_back(t.data_ptr());
  const DataType dt = *mapDtype(flat.scalar_type());
#ifdef AGENTCOMM_WITH_CUDA
  if (flat.is_cuda()) {
    c10::DeviceGuard guard(flat.device());
    return kernels::cuda::unpackScaled(flat.data_ptr(), ptrs.data(), counts.data(), counts.size(), dt,
                                       scaleFrom(divideBy, multiplyBy), currentCudaStream(flat));
  }
#endif
  kernels::unpackScaled(flat.data_ptr(), ptrs.data(), counts.data(), counts.size(), dt, scaleFrom(divideBy, multiplyBy));
}

}  // namespace agentcomm::torch_adapter
