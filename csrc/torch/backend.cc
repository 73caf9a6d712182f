// AgentBackend's life: construction (the communicator's bootstrap through
// torch's store), scheduling and running an op, errors, shutdown, the CUDA
// context. The collectives are in collectives.cc, send/recv in p2p.cc.
#include "torch/backend.h"

#include <Python.h>

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

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
      std::string missing = keys.front();
      for (const auto& k : keys) {
        if (!store_->check({k})) {
          missing = k;
          break;
        }
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
                           std::chrono::milliseconds timeout, std::string groupName)
    : c10d::Backend(rank, size), timeout_(timeout) {
  static std::once_flag logRankOnce;  // the first group created is (nearly always) the default one
  std::call_once(logRankOnce, [rank] { setLogRank(rank); });
  StoreAdapter adapter(store);
  algorithms::CommunicatorOptions options;
  options.timeout = timeout;
  options.groupName = std::move(groupName);
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
    // Fails receives still posted (their completions drain below), without
    // telling peers: they see our sockets close.
    comm_->shutdown();
    scheduler_->stopCompleting();
    comm_->release();
  });
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

}  // namespace agentcomm::torch_adapter
