// AgentBackend's life: construction (the communicator's bootstrap through
// torch's store), scheduling and running an op, errors, shutdown, the CUDA
// context. The collectives are in collectives.cc, send/recv in p2p.cc.
#include "torch/backend.h"

#include <Python.h>

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>

#include "core/cpu_budget.h"
#include "core/error.h"
#include "core/logging.h"

namespace agentcomm::torch_adapter {

using transport::Clock;

namespace {

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
  std::vector<std::vector<uint8_t>> multiGet(const std::vector<std::string>& keys,
                                             std::chrono::milliseconds timeout) override {
    if (keys.empty()) return {};
    try {
      store_->wait(keys, timeout);
    } catch (const c10::Error& e) {
      // Name the first key still missing, if the store still answers (its
      // host may have given up and left: then the range of keys waited for).
      std::string missing = keys.size() == 1 ? keys.front() : strCat(keys.front(), "' .. '", keys.back());
      try {
        for (const auto& k : keys) {
          if (!store_->check({k})) {
            missing = k;
            break;
          }
        }
      } catch (const c10::Error&) {
      }
      throw TimeoutError(strCat("agentcomm: rendezvous timed out waiting for store key '", missing,
                                "' (did every rank start and call init_process_group?): ", e.what_without_backtrace()));
    }
    return store_->multiGet(keys);
  }

 private:
  c10::intrusive_ptr<c10d::Store> store_;
};

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

// Runs fn with the GIL released when this thread holds it: never block while
// holding it (the worker may be inside a Python future callback that needs it).
template <typename Fn>
void withoutGil(const Fn& fn) {
  if (Py_IsInitialized() && PyGILState_Check()) {
    PyThreadState* state = PyEval_SaveThread();
    fn();
    PyEval_RestoreThread(state);
  } else {
    fn();
  }
}

}  // namespace

AgentBackend::AgentBackend(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                           std::chrono::milliseconds timeout, std::string groupName, std::string keyPrefix)
    : c10d::Backend(rank, size), store_(store), groupName_(groupName), timeout_(timeout) {
  static std::once_flag logRankOnce;  // the first group created is (nearly always) the default one
  std::call_once(logRankOnce, [rank] { setLogRank(rank); });
  StoreAdapter adapter(store);
  algorithms::CommunicatorOptions options;
  options.timeout = timeout;
  options.groupName = std::move(groupName);
  options.keyPrefix = std::move(keyPrefix);
  try {
    comm_ = std::make_unique<algorithms::Communicator>(adapter, rank, size, std::move(options));
  } catch (const Error& e) {
    C10_THROW_ERROR(DistBackendError, e.what());
  }
  const auto& local = comm_->localRanks();
  applyIntraOpThreadBudget(static_cast<int>(local.size()), local.front() == rank);
  scheduler_ = std::make_unique<Scheduler>(
      [] { return backendError("agentcomm: the process group was shut down before this operation ran"); });
}

AgentBackend::~AgentBackend() {
  withoutGil([this] { shutdownNoGil(); });
}

void AgentBackend::shutdown() {
  withoutGil([this] { shutdownNoGil(); });
}

void AgentBackend::shutdownNoGil() {
  std::call_once(shutdownOnce_, [this] {
    scheduler_->stopIssuing();
    if (cudaMade_.load()) cuda_->stopWatching();  // before the group it would fail goes
    // Fails receives still posted (their completions drain below), without
    // telling peers: they see our sockets close.
    comm_->shutdown();
    scheduler_->stopCompleting();
    comm_->release();
  });
}

c10::intrusive_ptr<c10d::Backend::Options> AgentBackend::getBackendOptions() {
  auto opts = c10::make_intrusive<Options>("agentcomm", timeout_);
  opts->group_name = groupName_;
  return opts;
}

c10::intrusive_ptr<c10d::Backend> AgentBackend::split(const c10::intrusive_ptr<c10d::Store>& store,
                                                      const std::vector<int>& ranks,
                                                      const c10::intrusive_ptr<Options>& opts) {
  for (int r : ranks)
    TORCH_CHECK_VALUE(r >= 0 && r < size_, "agentcomm split: rank ", r, " is not in this group of ", size_, " ranks");
  const auto me = std::find(ranks.begin(), ranks.end(), rank_);
  if (me == ranks.end()) return nullptr;
  const auto timeout = opts ? opts->timeout : timeout_;
  std::string name = opts && !opts->group_name.empty() ? opts->group_name : groupName_ + ":split";
  // torch (2.13 and before) calls split once per device type this backend
  // serves (cpu and cuda), with the same store: a second bootstrap there
  // would read the first child's keys. The same split gets the same child.
  std::string key = name;
  for (int r : ranks) key += strCat(",", r);
  std::lock_guard<std::mutex> lock(splitMu_);
  auto it = splitChildren_.find(key);
  if (it != splitChildren_.end()) {
    if (auto alive = it->second.lock()) return alive;
  }
  c10::intrusive_ptr<AgentBackend> child;
  withoutGil([&] {
    child = c10::make_intrusive<AgentBackend>(store, static_cast<int>(me - ranks.begin()),
                                              static_cast<int>(ranks.size()), timeout, std::move(name));
  });
  splitChildren_.insert_or_assign(key, c10::weak_intrusive_ptr<AgentBackend>(child));
  return child;
}

c10::intrusive_ptr<c10d::Backend> AgentBackend::shrink(const std::vector<int64_t>& ranksToExclude, int shrinkFlags,
                                                       const c10::intrusive_ptr<Options>& optsOverride) {
  TORCH_CHECK_VALUE(!ranksToExclude.empty(), "agentcomm shrink: ranks_to_exclude is empty");
  std::vector<bool> excluded(static_cast<size_t>(size_), false);
  std::string names;
  for (int64_t r : ranksToExclude) {
    TORCH_CHECK_VALUE(r >= 0 && r < size_, "agentcomm shrink: rank ", r, " is not in this group of ", size_, " ranks");
    TORCH_CHECK_VALUE(r != rank_, "agentcomm shrink: rank ", r,
                      " excludes itself; only the remaining ranks call shrink_group");
    TORCH_CHECK_VALUE(!excluded[static_cast<size_t>(r)], "agentcomm shrink: rank ", r, " is excluded twice");
    excluded[static_cast<size_t>(r)] = true;
    names += strCat(names.empty() ? "" : ",", r);
  }
  int newRank = 0;
  for (int r = 0; r < rank_; ++r) newRank += excluded[static_cast<size_t>(r)] ? 0 : 1;
  const int newSize = size_ - static_cast<int>(ranksToExclude.size());
  if (shrinkFlags & 1) {  // SHRINK_ABORT
    comm_->noteFailure(algorithms::FailureKind::Local);
    comm_->abort("agentcomm: the process group was shrunk with SHRINK_ABORT");
  }
  const auto timeout = optsOverride ? optsOverride->timeout : timeout_;
  std::string name = optsOverride && !optsOverride->group_name.empty() ? optsOverride->group_name
                                                                       : groupName_ + ":shrunk";
  const std::string prefix = strCat(comm_->keyPrefix(), "shrink", shrinks_.fetch_add(1) + 1, "-", names, "/");
  c10::intrusive_ptr<AgentBackend> child;
  withoutGil([&] {
    child = c10::make_intrusive<AgentBackend>(store_, newRank, newSize, timeout, std::move(name), prefix);
  });
  return child;
}

void AgentBackend::abort() {
  comm_->noteFailure(algorithms::FailureKind::Local);
  comm_->abort("agentcomm: the process group was aborted by the user");
}

c10d::ErrorType AgentBackend::getError() {
  switch (comm_->failureKind()) {
    case algorithms::FailureKind::None: return c10d::ErrorType::SUCCESS;
    case algorithms::FailureKind::Timeout: return c10d::ErrorType::TIMEOUT;
    case algorithms::FailureKind::Local: return c10d::ErrorType::COMM_ERROR;
    case algorithms::FailureKind::Remote: return c10d::ErrorType::REMOTE_ERROR;
  }
  return c10d::ErrorType::COMM_ERROR;
}

std::exception_ptr AgentBackend::execute(AgentWork& work, const std::function<void(Deadline)>& run,
                                         std::chrono::milliseconds timeout) {
  const auto start = Clock::now();
  work.recordStarted();
  algorithms::takeAlgorithm();  // nothing left from an op that failed before it noted its own
  std::exception_ptr eptr;
  try {
    comm_->run(work.getSequencenumber(), timeout, run, [&](const std::exception& e) {
      // Recorded as failed before the communicator aborts: its listener may dump the recorder.
      eptr = torchErrorOf(e);
      work.setAlgorithm(algorithms::takeAlgorithm());
      work.recordEnded(eptr);
      return errorText(e);
    });
    work.setAlgorithm(algorithms::takeAlgorithm());
  } catch (const std::exception& e) {
    if (!eptr) eptr = torchErrorOf(e);
  } catch (...) {
    if (!eptr) eptr = std::current_exception();
  }
  AC_LOG(Trace, "op #", work.getSequencenumber(), " ", c10d::opTypeToString(work.retrieveOpType()),
         eptr ? " failed" : " done", " in ",
         std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count(), " us");
  return eptr;
}

c10::intrusive_ptr<AgentWork> AgentBackend::enqueueCollective(c10d::OpType type, const char* title, Tensors outputs,
                                                              std::chrono::milliseconds optTimeout,
                                                              std::function<void(Deadline)> run, bool mayInline,
                                                              StagePtr stage) {
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
  work->setSequenceNumber(scheduler_->nextSequenceNumber());
  work->record(comm_->recorder(), work->getSequencenumber(), false, -1);
  const auto timeout = optTimeout == c10d::kUnsetTimeout ? timeout_ : optTimeout;
  scheduler_->collective(ScheduledOp{[this, work, run = std::move(run), timeout] { return execute(*work, run, timeout); },
                                     [work](std::exception_ptr e) { work->complete(e); }},
                         mayInline);
  return work;
}

// ---------------------------------------------------------------- CUDA tensors

#ifndef AGENTCOMM_WITH_CUDA
bool cudaBuilt() { return false; }
void* currentCudaStream(const at::Tensor&) { return nullptr; }
std::unique_ptr<CudaContext> makeCudaContext(int, int, GroupLink) {
  TORCH_CHECK(false, "agentcomm was built without CUDA support (against a torch without CUDA): reinstall it "
                     "with `pip install --no-build-isolation .` under a CUDA build of torch, or move the tensors "
                     "to the CPU");
}
#endif

CudaContext& AgentBackend::cuda() {
  std::call_once(cudaOnce_, [&] {
    GroupLink group{[this] { return comm_->failure(); },
                    [this](const std::string& why) {
                      comm_->noteFailure(algorithms::FailureKind::Timeout);
                      comm_->abort(why);
                    }};
    cuda_ = makeCudaContext(rank_, size_, std::move(group));
    cudaMade_.store(true);
  });
  return *cuda_;
}

}  // namespace agentcomm::torch_adapter
