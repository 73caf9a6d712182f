// CUDA tensors in the backend: staging through pinned host memory, stream
// ordering, and the in-host all-reduce over CUDA IPC (cuda_support.h has the
// semantics). Built only against a torch with CUDA (AGENTCOMM_WITH_CUDA).
#include "torch/cuda_support.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_set>

#include "algorithms/device_peers.h"
#include "core/env.h"
#include "core/error.h"
#include "core/logging.h"
#include "core/thread_name.h"
#include "kernels/cuda/kernels_cuda.h"

namespace agentcomm::torch_adapter {

bool cudaBuilt() { return true; }

namespace {

void check(cudaError_t e, const char* what) {
  TORCH_CHECK(e == cudaSuccess, "agentcomm CUDA: ", what, ": ", cudaGetErrorString(e));
}

// An event that records where a stream was (no timing: cheaper).
class Event {
 public:
  explicit Event(bool interprocess = false) {
    check(cudaEventCreateWithFlags(&ev_, cudaEventDisableTiming | (interprocess ? cudaEventInterprocess : 0)),
          "cudaEventCreate");
  }
  ~Event() {
    if (ev_) cudaEventDestroy(ev_);
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  cudaEvent_t get() const { return ev_; }

 private:
  cudaEvent_t ev_ = nullptr;
};

class Stage final : public CudaStage {
 public:
  // up: the stream of a pipelined op's copies back to the device.
  Stage(c10::Device device, c10::cuda::CUDAStream internal, c10::cuda::CUDAStream up)
      : device_(device), internal_(internal), up_(up), ready_(), done_() {
    // Ordered after what the caller queued so far on its current stream.
    c10::cuda::CUDAGuard guard(device_);
    const c10::cuda::CUDAStream caller = c10::cuda::getCurrentCUDAStream(device_.index());
    // An idle caller's stream gets no command from us: everything it queued
    // is done, and a record would itself have to wait for this process's
    // context to get the GPU (the next call would then not find it idle).
    callerIdle_ = caller.query();
    if (!callerIdle_) check(cudaEventRecord(ready_.get(), caller.stream()), "record (caller's stream)");
  }

  void addPair(const at::Tensor& original, const at::Tensor& mirror) {
    // The caching allocator must not hand the tensor's memory to someone
    // else while the internal stream may still use it.
    c10::cuda::CUDACachingAllocator::recordStream(original.storage().data_ptr(), internal_);
    pairs_.push_back({original, mirror, false});
  }

  void waitCaller() override {
    if (callerIdle_) return;  // nothing to wait for
    c10::cuda::CUDAGuard guard(device_);
    check(cudaStreamWaitEvent(internal_.stream(), ready_.get(), 0), "wait (caller's stream)");
  }

  void copyIn() override {
    waitCaller();
    if (pairs_.empty() || pipelined_) return;
    c10::cuda::CUDAGuard guard(device_);
    {
      c10::cuda::CUDAStreamGuard sg(internal_);
      for (auto& p : pairs_) p.mirror.copy_(p.original, /*non_blocking=*/true);
    }
    // The CPU algorithm reads the mirrors: wait for the copies (this thread only).
    check(cudaStreamSynchronize(internal_.stream()), "device-to-host copies");
  }

  void copyOut() override {
    c10::cuda::CUDAGuard guard(device_);
    if (!pipelined_) {
      c10::cuda::CUDAStreamGuard sg(internal_);
      for (auto& p : pairs_)
        if (p.output || !outputsKnown_) p.original.copy_(p.mirror, /*non_blocking=*/true);
    }
    check(cudaEventRecord(done_.get(), internal_.stream()), "record (done)");
  }

  void keepOutput(const at::Tensor& mirror) override {
    for (auto& p : pairs_)
      if (p.mirror.unsafeGetTensorImpl() == mirror.unsafeGetTensorImpl()) p.output = true;
  }

  at::Tensor original(const at::Tensor& t) const override {
    for (const auto& p : pairs_)
      if (p.mirror.unsafeGetTensorImpl() == t.unsafeGetTensorImpl()) return p.original;
    return t;
  }

  void setOutputs(const std::vector<at::Tensor>& outputs) override {
    outputsKnown_ = true;
    for (const auto& o : outputs) {
      bool found = false;
      for (auto& p : pairs_) {
        if (p.mirror.unsafeGetTensorImpl() == o.unsafeGetTensorImpl()) {
          p.output = true;
          found = true;
        }
      }
      // An output that is a view of a mirror: copy every mirror back.
      if (!found && o.defined() && !o.is_cuda()) outputsKnown_ = false;
    }
  }

  std::vector<c10::Device> devices() const override { return {device_}; }

  void markCompleted(c10::ivalue::Future& future, const c10::IValue& value) override {
    c10::cuda::CUDAGuard guard(device_);
    c10::cuda::CUDAStreamGuard sg(internal_);
    future.markCompleted(value);
  }

  void blockCurrentStream() override {
    c10::cuda::CUDAGuard guard(device_);
    check(cudaStreamWaitEvent(c10::cuda::getCurrentCUDAStream(device_.index()).stream(), done_.get(), 0),
          "wait (done)");
  }

  void* stream() const override { return internal_.stream(); }

  bool callerIdle() const override { return callerIdle_; }

  void copy(const at::Tensor& dst, const at::Tensor& src) override {
    c10::cuda::CUDAGuard guard(device_);
    c10::cuda::CUDAStreamGuard sg(internal_);
    const_cast<at::Tensor&>(dst).copy_(src, /*non_blocking=*/true);
  }

  void synchronize() override {
    c10::cuda::CUDAGuard guard(device_);
    check(cudaStreamSynchronize(internal_.stream()), "synchronize (internal stream)");
  }

  void setPipelined() override {
    TORCH_INTERNAL_ASSERT(pairs_.size() == 1 && pairs_[0].original.is_contiguous(),
                          "agentcomm: a pipelined stage needs one contiguous tensor");
    pipelined_ = true;
  }

  void pipeline(size_t chunkBytes, const std::function<void(size_t, size_t)>& each) override {
    TORCH_INTERNAL_ASSERT(pipelined_ && chunkBytes > 0);
    c10::cuda::CUDAGuard guard(device_);
    const Pair& p = pairs_[0];
    // Byte views, copied with torch's copy_ so that the pinned host
    // allocator records the streams using the mirror (it must not hand the
    // mirror out again before those copies ran).
    const at::Tensor dev = p.original.reshape({-1}).view(at::kByte);
    const at::Tensor host = p.mirror.reshape({-1}).view(at::kByte);
    const size_t bytes = static_cast<size_t>(dev.numel());
    const size_t parts = (bytes + chunkBytes - 1) / chunkBytes;
    auto slice = [&](const at::Tensor& t, size_t c) {
      const size_t off = c * chunkBytes;
      return t.narrow(0, static_cast<int64_t>(off), static_cast<int64_t>(std::min(chunkBytes, bytes - off)));
    };
    // The copies down wait for the caller's stream (copyIn ordered the
    // internal stream after it); each chunk's event says its copy is done.
    std::vector<std::unique_ptr<Event>> down;
    {
      c10::cuda::CUDAStreamGuard sg(internal_);
      for (size_t c = 0; c < parts; ++c) {
        slice(host, c).copy_(slice(dev, c), /*non_blocking=*/true);
        down.push_back(std::make_unique<Event>());
        check(cudaEventRecord(down.back()->get(), internal_.stream()), "record (copied down)");
      }
    }
    // A chunk's copy up needs no device-side wait: the host saw its copy
    // down finish, and that ran after everything the caller queued before.
    Event upDone;
    auto finishUp = [&] {
      check(cudaEventRecord(upDone.get(), up_.stream()), "record (copied up)");
      check(cudaStreamWaitEvent(internal_.stream(), upDone.get(), 0), "wait (copied up)");
    };
    try {
      c10::cuda::CUDAStreamGuard sg(up_);
      for (size_t c = 0; c < parts; ++c) {
        const size_t off = c * chunkBytes;
        check(cudaEventSynchronize(down[c]->get()), "device-to-host copy");
        each(off, std::min(chunkBytes, bytes - off));
        slice(dev, c).copy_(slice(host, c), /*non_blocking=*/true);
      }
    } catch (...) {
      finishUp();  // later work on the internal stream stays after the copies queued
      throw;
    }
    finishUp();
  }

 private:
  struct Pair {
    at::Tensor original, mirror;
    bool output;
  };
  c10::Device device_;
  c10::cuda::CUDAStream internal_;
  c10::cuda::CUDAStream up_;
  Event ready_, done_;
  bool callerIdle_ = false;
  std::vector<Pair> pairs_;
  bool outputsKnown_ = false;
  bool pipelined_ = false;
};

// Watches the device part of the ops that wait on other processes' events
// (cuda_support.h, CudaContext::allReduce): one event per op, recorded on the
// internal stream behind everything the op queued, polled by one thread (a
// millisecond apart; it sleeps while nothing is watched). Events of one stream
// complete in order, so only the oldest is polled.
class DeviceWatch {
 public:
  using Clock = std::chrono::steady_clock;
  // How long device work may stay queued once the group has failed (a peer
  // lost, abort()) before it is declared stuck: a peer that died after its
  // part ran lets ours finish within this.
  static constexpr std::chrono::seconds kStuckGrace{5};
  enum class OnStuck { Exit, Abort };

  DeviceWatch(GroupLink group, OnStuck onStuck) : group_(std::move(group)), onStuck_(onStuck) {}
  ~DeviceWatch() { stop(); }

  // Worker thread: watch what `stream` has queued so far (one op: `what`).
  void add(int device, cudaStream_t stream, std::chrono::milliseconds timeout, std::string what) {
    cudaEvent_t ev = nullptr;
    check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreate (watch)");
    check(cudaEventRecord(ev, stream), "record (watch)");
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) {
      cudaEventDestroy(ev);
      return;
    }
    entries_.push_back(Entry{ev, device, Clock::now() + timeout, std::min<std::chrono::milliseconds>(timeout, kStuckGrace),
                             std::move(what)});
    if (!thread_.joinable()) thread_ = std::thread([this] {
      nameThisThread("ac_cuda_watch");
      loop();
    });
    cv_.notify_one();
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopped_) return;
      stopped_ = true;
      cv_.notify_one();
    }
    if (thread_.joinable()) thread_.join();
    // Entries left are dropped; their events are not destroyed (the device
    // may still be waiting to record them; a destroy then is harmless but a
    // stuck stream gains nothing from it).
  }

 private:
  struct Entry {
    cudaEvent_t ev;
    int device;
    Clock::time_point deadline;
    std::chrono::milliseconds grace;
    std::string what;
  };

  void loop() {
    std::optional<Clock::time_point> failedAt;
    std::unique_lock<std::mutex> lock(mu_);
    while (!stopped_) {
      if (entries_.empty()) {
        cv_.wait(lock, [&] { return stopped_ || !entries_.empty(); });
        continue;
      }
      Entry& e = entries_.front();
      lock.unlock();
      cudaSetDevice(e.device);
      const cudaError_t q = cudaEventQuery(e.ev);
      const auto now = Clock::now();
      std::string why;
      if (q == cudaSuccess) {
        cudaEventDestroy(e.ev);
      } else if (q != cudaErrorNotReady) {
        why = strCat("the device reported an error (", cudaGetErrorString(q), ")");
      } else if (now > e.deadline) {
        why = "it has not finished within the op's timeout";
      } else if (auto failure = group_.failure()) {
        if (!failedAt) failedAt = now;
        if (now - *failedAt > e.grace)
          why = strCat("it has not finished ", e.grace.count(), " ms after the group failed (", *failure, ")");
      }
      if (!why.empty()) stuck(e, why);  // returns only for OnStuck::Abort
      lock.lock();
      if (q == cudaSuccess) {
        entries_.pop_front();
      } else if (!why.empty()) {
        entries_.clear();  // the group is failed now; nothing queued after it can finish either
      } else {
        cv_.wait_for(lock, std::chrono::milliseconds(1), [&] { return stopped_; });
      }
    }
  }

  void stuck(const Entry& e, const std::string& why) {
    const std::string text = strCat(
        "agentcomm: ", e.what, " on cuda:", e.device, " is stuck on the device: ", why,
        ". Its stream waits for events of the group's other processes (CUDA IPC), so a peer died or stopped "
        "after the exchange; a wait queued on the device cannot be cancelled, and every stream that waits for "
        "this result is blocked with it. ",
        onStuck_ == OnStuck::Exit ? "Ending the process (AGENTCOMM_CUDA_STUCK=exit; torchrun restarts it; "
                                    "=abort fails the group instead and leaves the process to you)"
                                  : "The group is failed (AGENTCOMM_CUDA_STUCK=abort); end this process to free the GPU");
    AC_LOG(Warn, text);
    if (onStuck_ == OnStuck::Exit) {
      std::fflush(nullptr);
      std::abort();
    }
    group_.fail(text);
  }

  const GroupLink group_;
  const OnStuck onStuck_;
  std::mutex mu_;  // entries_, stopped_, thread_ (start)
  std::condition_variable cv_;
  std::deque<Entry> entries_;
  bool stopped_ = false;
  std::thread thread_;
};

DeviceWatch::OnStuck onStuckSetting() {
  const char* v = envText("AGENTCOMM_CUDA_STUCK");
  if (v == nullptr || std::strcmp(v, "exit") == 0) return DeviceWatch::OnStuck::Exit;
  if (std::strcmp(v, "abort") == 0) return DeviceWatch::OnStuck::Abort;
  TORCH_CHECK_VALUE(false, "AGENTCOMM_CUDA_STUCK=", v, " is not a choice: exit (the default) or abort");
}

// What every rank publishes per all-reduce: where its tensor lives (an IPC
// handle of the allocation it belongs to, and the offset in it), its events,
// and what it passes, so that disagreeing ranks fail instead of corrupting.
struct PeerBlob {
  cudaIpcMemHandle_t mem;
  cudaIpcEventHandle_t ready, done;
  uint64_t offset;
  uint64_t count;
  int32_t dtype;
  int32_t ok;  // 0: this rank could not export its memory
  int32_t readyNow;  // 1: the caller's stream had finished everything when it called: no event to wait for
  char uuid[16];  // the physical GPU (indices differ under CUDA_VISIBLE_DEVICES)
};

std::string bytesKey(const void* p, size_t n) { return std::string(static_cast<const char*>(p), n); }

class Context final : public CudaContext {
 public:
  Context(int rank, int size, GroupLink group) : rank_(rank), size_(size), watch_(std::move(group), onStuckSetting()) {}

  ~Context() override {
    watch_.stop();
    for (auto& [key, ptr] : mapped_) cudaIpcCloseMemHandle(ptr);
    for (auto& [key, ev] : peerEvents_) cudaEventDestroy(ev);
    // The internal streams are never destroyed: the caching allocator keeps
    // recorded uses of them (recordStream) and records events on them when
    // those blocks are freed, possibly after this backend is gone.
  }

  StagePtr stage(const std::vector<at::Tensor*>& tensors, const char* op) override {
    std::optional<c10::Device> device;
    bool anyCpu = false;
    for (const at::Tensor* t : tensors) {
      if (!t->defined()) continue;
      if (t->is_cuda()) {
        TORCH_CHECK_VALUE(!device || *device == t->device(), "agentcomm ", op,
                          ": all CUDA tensors of one call must be on one device, got ", *device, " and ",
                          t->device());
        device = t->device();
      } else {
        anyCpu = true;
      }
    }
    if (!device) return nullptr;
    TORCH_CHECK_VALUE(!anyCpu, "agentcomm ", op, ": got CUDA and CPU tensors in one call; pass tensors on one device");
    auto st = std::make_shared<Stage>(*device, streamFor(*device), streamFor(*device, /*up=*/true));
    for (at::Tensor* t : tensors) {
      if (!t->defined()) continue;
      at::Tensor mirror = at::empty(t->sizes(), t->options().device(at::kCPU).pinned_memory(true));
      st->addPair(*t, mirror);
      *t = mirror;
    }
    return st;
  }

  StagePtr streamStage(const at::Tensor& like) override {
    const c10::cuda::CUDAStream internal = streamFor(like.device());
    c10::cuda::CUDACachingAllocator::recordStream(like.storage().data_ptr(), internal);
    return std::make_shared<Stage>(like.device(), internal, internal);
  }

  bool peersCanReduce(const at::Tensor& t, ReduceOp op) const override {
    if (size_ > kernels::cuda::kMaxPeers) return false;
    const auto s = t.scalar_type();
    const bool dt = s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16;
    const ReduceOp c = combiningOp(op);
    return dt && t.is_contiguous() &&
           (c == ReduceOp::Sum || c == ReduceOp::Product || c == ReduceOp::Min || c == ReduceOp::Max);
  }

  void stopWatching() override { watch_.stop(); }

  void allReduce(const at::Tensor& t, ReduceOp op, FinalScale scale, CudaStage& stage, const Exchange& exchange,
                 std::chrono::milliseconds timeout) override {
    c10::cuda::CUDAGuard guard(t.device());
    cudaStream_t st = static_cast<cudaStream_t>(stage.stream());
    Mine& mine = mineFor(t.device());
    PeerBlob blob{};
    blob.count = static_cast<uint64_t>(t.numel());
    blob.dtype = static_cast<int32_t>(t.scalar_type());
    std::memcpy(blob.uuid, mine.uuid, sizeof blob.uuid);
    blob.ready = mine.readyHandle;
    blob.done = mine.doneHandle;
    size_t baseSize = 0;
    void* base = t.numel() ? c10::cuda::CUDACachingAllocator::getBaseAllocation(t.data_ptr(), &baseSize) : nullptr;
    blob.ok = 1;
    if (base != nullptr) {
      blob.ok = exportHandle(base, &blob.mem) ? 1 : 0;
      blob.offset = static_cast<uint64_t>(static_cast<char*>(t.data_ptr()) - static_cast<char*>(base));
    }
    // Our input is ready (the caller's stream reached the call) once the
    // internal stream passes this point.
    // A caller whose stream had nothing left to run when it called (its
    // input is complete now) needs no event: the peers' kernels then do not
    // wait for this process's context to get the GPU and record one. Ops
    // issued back to back without a wait in between keep the device busy
    // with kernels instead of switching contexts (two switches per op cost
    // ~0.3 ms on an H100 shared by two processes).
    blob.readyNow = stage.callerIdle() ? 1 : 0;
    if (!blob.readyNow) check(cudaEventRecord(mine.ready->get(), st), "record (ready)");
    std::vector<PeerBlob> all(static_cast<size_t>(size_));
    exchange(&blob, all.data(), sizeof(PeerBlob));
    bool allOk = true;
    for (int r = 0; r < size_; ++r) {
      const PeerBlob& b = all[static_cast<size_t>(r)];
      TORCH_CHECK(b.count == blob.count && b.dtype == blob.dtype, "agentcomm all_reduce: rank ", r, " passed ",
                  b.count, " elements of dtype #", b.dtype, " where this rank passed ", blob.count,
                  " of dtype #", blob.dtype, " (every rank must pass the same shape and dtype)");
      allOk = allOk && b.ok;
    }
    TORCH_CHECK(allOk, "agentcomm all_reduce: a rank could not export its CUDA tensor's memory over CUDA IPC ",
                "(cudaIpcGetMemHandle failed, e.g. under PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync or "
                "expandable segments); set AGENTCOMM_CUDA_IPC=0 on every rank to stage through host memory");
    if (t.numel() == 0) return;
    // One kernel per GPU (algorithms/device_peers.h): who reduces which share.
    std::vector<algorithms::GpuId> gpus(static_cast<size_t>(size_));
    for (int r = 0; r < size_; ++r) std::memcpy(gpus[static_cast<size_t>(r)].data(), all[static_cast<size_t>(r)].uuid, 16);
    const algorithms::DevicePeerPlan plan =
        algorithms::planDevicePeers(gpus, rank_, static_cast<size_t>(t.numel()), static_cast<size_t>(t.element_size()));
    if (plan.leads) {
      void* ptrs[kernels::cuda::kMaxPeers];
      for (int r = 0; r < size_; ++r) {
        const PeerBlob& b = all[static_cast<size_t>(r)];
        if (r == rank_) {
          ptrs[r] = t.data_ptr();
          continue;
        }
        ptrs[r] = static_cast<char*>(open(b.mem)) + b.offset;
        if (!b.readyNow) check(cudaStreamWaitEvent(st, peerEvent(b.ready), 0), "wait (peer ready)");
      }
      kernels::cuda::reducePeers(ptrs, size_, plan.begin, plan.count, dtypeOf(t), op, scale, st);
      check(cudaEventRecord(mine.done->get(), st), "record (reduced)");
    }
    // Nobody may touch the tensors until every GPU's share was written into
    // all of them: a host barrier (every leader recorded "reduced"), then a
    // device wait on each leader's event.
    int32_t token = 1;
    std::vector<int32_t> tokens(static_cast<size_t>(size_));
    exchange(&token, tokens.data(), sizeof token);
    for (int r : plan.leaders)
      if (r != rank_) check(cudaStreamWaitEvent(st, peerEvent(all[static_cast<size_t>(r)].done), 0), "wait (peer done)");
    watch_.add(t.device().index(), st, timeout,
               strCat("all_reduce #", ++ops_, " over CUDA IPC (", t.numel(), " elements)"));
  }

 private:
  struct Mine {
    std::unique_ptr<Event> ready, done;
    cudaIpcEventHandle_t readyHandle{}, doneHandle{};
    char uuid[16] = {};
  };

  // Not cached: a segment freed and re-allocated at the same address has a
  // new handle, and a stale one would map the old memory in the peers.
  static bool exportHandle(void* base, cudaIpcMemHandle_t* out) {
    if (cudaIpcGetMemHandle(out, base) == cudaSuccess) return true;
    cudaGetLastError();
    return false;
  }

  static DataType dtypeOf(const at::Tensor& t) {
    switch (t.scalar_type()) {
      case at::kFloat: return DataType::Float32;
      case at::kDouble: return DataType::Float64;
      case at::kHalf: return DataType::Float16;
      default: return DataType::BFloat16;
    }
  }

  // The internal stream of a device, or (up) the stream of pipelined copies back to it.
  c10::cuda::CUDAStream streamFor(c10::Device device, bool up = false) {
    std::lock_guard<std::mutex> lock(mu_);
    const int key = device.index() * 2 + (up ? 1 : 0);
    auto it = streams_.find(key);
    if (it == streams_.end()) {
      c10::cuda::CUDAGuard guard(device);
      cudaStream_t s = nullptr;
      check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
      it = streams_.emplace(key, c10::cuda::getStreamFromExternal(s, device.index())).first;
    }
    return it->second;
  }

  Mine& mineFor(c10::Device device) {
    auto& m = mine_[device.index()];
    if (!m.ready) {
      m.ready = std::make_unique<Event>(true);
      m.done = std::make_unique<Event>(true);
      check(cudaIpcGetEventHandle(&m.readyHandle, m.ready->get()), "cudaIpcGetEventHandle");
      check(cudaIpcGetEventHandle(&m.doneHandle, m.done->get()), "cudaIpcGetEventHandle");
      cudaDeviceProp prop{};
      check(cudaGetDeviceProperties(&prop, device.index()), "cudaGetDeviceProperties");
      std::memcpy(m.uuid, prop.uuid.bytes, sizeof m.uuid);
    }
    return m;
  }

  // Mappings are cached by handle: the caching allocator keeps reusing the
  // same allocations, so after the first steps every open is a lookup.
  void* open(const cudaIpcMemHandle_t& h) {
    const std::string key = bytesKey(&h, sizeof h);
    auto it = mapped_.find(key);
    if (it != mapped_.end()) return it->second;
    void* p = nullptr;
    check(cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess), "cudaIpcOpenMemHandle (a peer's tensor)");
    mapped_.emplace(key, p);
    return p;
  }

  cudaEvent_t peerEvent(const cudaIpcEventHandle_t& h) {
    const std::string key = bytesKey(&h, sizeof h);
    auto it = peerEvents_.find(key);
    if (it != peerEvents_.end()) return it->second;
    cudaEvent_t ev = nullptr;
    check(cudaIpcOpenEventHandle(&ev, h), "cudaIpcOpenEventHandle (a peer's event)");
    peerEvents_.emplace(key, ev);
    return ev;
  }

  const int rank_, size_;
  std::mutex mu_;  // streams_: stages are made on calling threads
  std::map<int, c10::cuda::CUDAStream> streams_;  // 2 * device (+ 1: copies up)
  // Worker thread only:
  std::map<int, Mine> mine_;
  std::map<std::string, void*> mapped_;
  std::map<std::string, cudaEvent_t> peerEvents_;
  uint64_t ops_ = 0;  // IPC all-reduces so far, for the watch's messages
  DeviceWatch watch_;
};

}  // namespace

void* currentCudaStream(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

std::unique_ptr<CudaContext> makeCudaContext(int rank, int size, GroupLink group) {
  return std::make_unique<Context>(rank, size, std::move(group));
}

}  // namespace agentcomm::torch_adapter
