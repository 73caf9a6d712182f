#include "transport/shm/shm_domain.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <strings.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>

#include "core/cpu_budget.h"
#include "core/dtype.h"
#include "core/env.h"
#include "core/error.h"
#include "core/logging.h"
#include "core/reduce_op.h"
#include "transport/host.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define AC_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define AC_CPU_RELAX() asm volatile("yield" ::: "memory")
#else
#define AC_CPU_RELAX() std::atomic_signal_fence(std::memory_order_seq_cst)
#endif

namespace agentcomm::transport {

namespace {

constexpr uint64_t kMagic = 0x61636f6d6d73686dull;  // "acommshm"
constexpr size_t kAlign = 4096;
constexpr size_t kDefaultSlotBytes = size_t{8} << 20;
constexpr size_t kMinSlotBytes = size_t{64} << 10;
// Shared memory one process keeps mapped for all its groups before new
// groups get smaller slots (AGENTCOMM_SHM_BUDGET_BYTES).
constexpr size_t kDefaultBudgetBytes = size_t{512} << 20;
std::atomic<size_t> gMappedBytes{0};

size_t roundUp(size_t v, size_t a) { return (v + a - 1) / a * a; }


long futexWait(std::atomic<uint32_t>* addr, uint32_t expected, long timeoutNs) {
  timespec ts{static_cast<time_t>(timeoutNs / 1000000000L), timeoutNs % 1000000000L};
  // Not FUTEX_PRIVATE_FLAG: the word lives in memory shared between processes.
  return ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), FUTEX_WAIT, expected, &ts, nullptr, 0);
}

void futexWakeAll(std::atomic<uint32_t>* addr) {
  ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

// Time budgets of the first two waiting phases (see waitPeers), in µs:
// spinning wins when the peer runs on another core right now; yielding lets a
// peer that shares this core run (4 ranks on 2 cores); past both, block.
constexpr size_t kSpinUs = 1;
constexpr size_t kYieldUs = 20;
constexpr long kBlockSliceNs = 5'000'000;  // re-check abort/deadline this often while blocked

}  // namespace

struct ShmDomain::Header {
  uint64_t magic;
  uint32_t size;
  uint32_t pad;
  uint64_t slotBytes;
  std::atomic<uint32_t> aborted;  // 0, 1 while the reason is being written, 2 once it is readable
  char reason[500];
  // Every rank adds 1 per sync point, so sync point k is complete once it
  // reached k * size (mod 2^32). The futex word all waiters sleep on: the
  // last rank to arrive wakes them all with one call.
  alignas(64) std::atomic<uint32_t> arrivals;
  std::atomic<uint32_t> sleepers;  // ranks blocked (or about to block) on arrivals
};

// Fixed part of a rank's control block; the parity-indexed descriptors and
// words follow it (ctlStride_ bytes per rank in all).
struct alignas(64) ShmDomain::RankCtl {
  std::atomic<uint32_t> counter;  // sync points this rank passed; written by the owner only (who is missing)
  int32_t pid;
};

std::unique_ptr<ShmDomain> ShmDomain::create(Store& store, int globalRank, const std::vector<int>& members,
                                             const ShmOptions& options,
                                             std::function<std::optional<std::string>(int)> abortProbe) {
  const int size = static_cast<int>(members.size());
  if (size < 2) return nullptr;
  const int rank = static_cast<int>(std::find(members.begin(), members.end(), globalRank) - members.begin());
  AC_CHECK(rank < size, InvalidArgument, "shm: rank ", globalRank, " is not among the members");
  // Keys are per host (named by its lowest rank); r below is a position in members.
  const std::string pre = strCat(options.keyPrefix, "shm/", members[0], "/");
  auto key = [&](const char* what, int r) { return strCat(pre, what, "/", r); };

  std::unique_ptr<ShmDomain> d(new ShmDomain(rank, size));
  d->abortProbe_ = std::move(abortProbe);
  d->members_ = members;
  d->collapse_ = envFlag("AGENTCOMM_SHM_COLLAPSE", true);
  d->spinFor_ = std::chrono::microseconds(envSize("AGENTCOMM_SHM_SPIN_US", kSpinUs));
  d->yieldFor_ = d->spinFor_ + std::chrono::microseconds(envSize("AGENTCOMM_SHM_YIELD_US", kYieldUs));
  d->crowded_ = size > usableCpus();
  d->maxWords_ = 2 * static_cast<size_t>(size) + 8;
  d->describe_ = options.describe;
  d->ctlStride_ = roundUp(sizeof(RankCtl) + 2 * (sizeof(ShmOpDesc) + d->maxWords_ * sizeof(uint64_t)), 64);
  const size_t ctlOffset = roundUp(sizeof(Header), 64);
  d->slotsOffset_ = roundUp(ctlOffset + d->ctlStride_ * size, kAlign);

  // 2. The lowest rank creates the segment; the name travels through the store.
  // The guard unlinks it on every way out of this function, including a peer
  // that dies before attaching (the store wait below throws).
  struct Unlinker {
    std::string name;
    ~Unlinker() {
      if (!name.empty()) ::shm_unlink(name.c_str());
    }
  } unlinker;
  int fd = -1;
  std::string name;
  std::string why;
  if (rank == 0) {
    size_t slot = roundUp(options.slotBytes ? options.slotBytes : envSize("AGENTCOMM_SHM_SLOT_BYTES", kDefaultSlotBytes), 64);
    // Shrink the slots to what /dev/shm can hold (containers often give it
    // 64 MiB), and to this process's budget: the segment is reserved memory,
    // and a job may create many groups (torch's hierarchical averagers do).
    size_t limit = envSize("AGENTCOMM_SHM_BUDGET_BYTES", kDefaultBudgetBytes);
    const size_t used = gMappedBytes.load();
    limit = used < limit ? limit - used : 0;
    struct statvfs fs {};
    if (::statvfs("/dev/shm", &fs) == 0) limit = std::min(limit, static_cast<size_t>(fs.f_bavail) * fs.f_frsize / 2);
    while (slot > kMinSlotBytes && d->slotsOffset_ + 2 * slot * size > limit) slot /= 2;
    d->slotBytes_ = slot;
    std::random_device rd;
    std::ostringstream n;
    // The creator's pid in the name: whose a leftover segment was (there are
    // none in normal operation: the name is unlinked once every rank attached).
    n << "/agentcomm-" << ::getpid() << "-" << std::hex;
    for (int i = 0; i < 4; ++i) n << static_cast<uint32_t>(rd());
    name = n.str();
    fd = ::shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) why = strCat("shm_open(", name, ") failed: ", errnoText(errno));
    if (fd >= 0) unlinker.name = name;
    d->mapBytes_ = d->slotsOffset_ + 2 * d->slotBytes_ * size;
    // posix_fallocate reserves the pages now: a full /dev/shm fails here
    // instead of raising SIGBUS on first touch in the middle of a collective.
    if (fd >= 0) {
      int err = ::posix_fallocate(fd, 0, static_cast<off_t>(d->mapBytes_));
      if (err != 0) why = strCat("cannot reserve ", d->mapBytes_, " bytes in /dev/shm: ", errnoText(err));
    }
  } else {
    std::istringstream in(fromBytes(store.get(strCat(pre, "name"), options.timeout)));
    in >> name >> d->slotBytes_;
    if (name == "-") {
      why = "rank 0 could not create the segment";
    } else {
      d->mapBytes_ = d->slotsOffset_ + 2 * d->slotBytes_ * size;
      fd = ::shm_open(name.c_str(), O_RDWR | O_CLOEXEC, 0600);
      if (fd < 0) why = strCat("shm_open(", name, ") failed: ", errnoText(errno));
    }
  }
  if (fd >= 0 && why.empty()) {
    // Pages are mapped as collectives first touch them: a group that is created
    // and little used (a DeviceMesh dimension) costs no page tables, and setup
    // does not fault in 2 * slotBytes * ranks per rank (at 4 ranks per host and
    // 3 groups that was 1 s of a 1.1 s setup and 160 MB of RSS per rank).
    // AGENTCOMM_SHM_PREFAULT=1 faults everything in now instead (MAP_POPULATE),
    // for a first collective as fast as the rest. posix_fallocate above already
    // reserved the memory, so a late first touch cannot SIGBUS.
    static const bool prefault = envFlag("AGENTCOMM_SHM_PREFAULT", false);
    void* p = ::mmap(nullptr, d->mapBytes_, PROT_READ | PROT_WRITE, MAP_SHARED | (prefault ? MAP_POPULATE : 0), fd, 0);
    if (p == MAP_FAILED) {
      why = strCat("mmap of ", d->mapBytes_, " bytes failed: ", errnoText(errno));
    } else {
      d->base_ = static_cast<uint8_t*>(p);
      gMappedBytes += d->mapBytes_;
    }
  }
  if (fd >= 0) ::close(fd);
  if (rank == 0 && d->base_ != nullptr) {
    auto* h = new (d->base_) Header{};
    h->magic = kMagic;
    h->size = static_cast<uint32_t>(size);
    h->slotBytes = d->slotBytes_;
    for (int r = 0; r < size; ++r) new (d->ctl(r)) RankCtl{};
  }
  // Publish the name only once the control blocks are initialised: peers write their pids there.
  if (rank == 0) store.set(strCat(pre, "name"), toBytes(why.empty() ? strCat(name, " ", d->slotBytes_) : std::string("-")));
  if (d->base_ != nullptr) d->ctl(rank)->pid = static_cast<int32_t>(::getpid());

  // 3. Everyone reports; the creator unlinks once all have reported, so the
  // name exists only while ranks are attaching.
  store.set(key("ok", rank), toBytes(why.empty() ? "1" : why));
  bool allOk = why.empty();
  for (int r = 0; r < size; ++r) {
    const std::string v = r == rank ? (why.empty() ? "1" : why) : fromBytes(store.get(key("ok", r), options.timeout));
    if (v != "1") {
      if (allOk) AC_LOG(Info, "shm: rank ", r, ": ", v, "; shared memory off for this group");
      allOk = false;
    }
  }
  if (!unlinker.name.empty()) {
    ::shm_unlink(unlinker.name.c_str());
    unlinker.name.clear();
  }
  if (!allOk) return nullptr;  // the destructor unmaps

  // 4. Cross Memory Attach probe: read a private variable of the next rank.
  d->pids_.resize(size);
  for (int r = 0; r < size; ++r) d->pids_[r] = d->ctl(r)->pid;
  static thread_local uint64_t probe;  // any private address works; its value is random
  probe = (uint64_t{std::random_device{}()} << 32) | std::random_device{}();
  store.set(key("probe", rank), toBytes(strCat(reinterpret_cast<uintptr_t>(&probe), " ", probe)));
  std::string cmaWhy;
  if (!options.allowCma || !envFlag("AGENTCOMM_SHM_CMA", true)) {
    cmaWhy = "disabled by AGENTCOMM_SHM_CMA=0";
  } else {
    const int peer = (rank + 1) % size;
    std::istringstream in(fromBytes(store.get(key("probe", peer), options.timeout)));
    uintptr_t addr = 0;
    uint64_t expect = 0, got = 0;
    in >> addr >> expect;
    iovec local{&got, sizeof(got)}, remote{reinterpret_cast<void*>(addr), sizeof(got)};
    ssize_t n = ::process_vm_readv(d->pids_[peer], &local, 1, &remote, 1, 0);
    if (n != static_cast<ssize_t>(sizeof(got))) {
      cmaWhy = strCat("process_vm_readv from rank ", peer, " failed: ", errnoText(errno));
    } else if (got != expect) {
      cmaWhy = strCat("process_vm_readv from rank ", peer, " read the wrong value");
    }
  }
  store.set(key("cma", rank), toBytes(cmaWhy.empty() ? "1" : cmaWhy));
  d->cma_ = cmaWhy.empty();
  for (int r = 0; r < size; ++r) {
    const std::string v = r == rank ? (cmaWhy.empty() ? "1" : cmaWhy) : fromBytes(store.get(key("cma", r), options.timeout));
    if (v != "1" && d->cma_) {
      d->cma_ = false;
      d->cmaWhy_ = strCat("rank ", r, ": ", v);
    }
  }
  // Nobody may reuse the probe variable before every peer has read it.
  store.set(key("probed", rank), toBytes("1"));
  for (int r = 0; r < size; ++r)
    if (r != rank) store.get(key("probed", r), options.timeout);
  AC_LOG(Info, "shm: ", size, " ranks on this host, segment ", d->mapBytes_ >> 10, " KiB, slots ", d->slotBytes_ >> 10,
         " KiB, cross-memory attach ", d->cma_ ? "on" : strCat("off (", d->cmaWhy_, ")"));
  return d;
}

ShmDomain::~ShmDomain() {
  if (base_ != nullptr) {
    ::munmap(base_, mapBytes_);
    gMappedBytes -= mapBytes_;
  }
}

ShmDomain::RankCtl* ShmDomain::ctl(int r) const {
  return reinterpret_cast<RankCtl*>(base_ + roundUp(sizeof(Header), 64) + ctlStride_ * r);
}

ShmOpDesc* ShmDomain::desc(int r, int parity) const {
  return reinterpret_cast<ShmOpDesc*>(reinterpret_cast<uint8_t*>(ctl(r)) + sizeof(RankCtl)) + parity;
}

uint64_t* ShmDomain::words(int r, int parity) const {
  auto* start = reinterpret_cast<uint8_t*>(ctl(r)) + sizeof(RankCtl) + 2 * sizeof(ShmOpDesc);
  return reinterpret_cast<uint64_t*>(start) + parity * maxWords_;
}

uint64_t ShmDomain::peerWord(int peer, int parity, size_t i) const { return words(peer, parity)[i]; }

uint8_t* ShmDomain::slot(int peer, int parity) const {
  return base_ + slotsOffset_ + (static_cast<size_t>(peer) * 2 + parity) * slotBytes_;
}

void ShmDomain::fail(const std::string& msg, bool timeout) {
  abort(msg);
  if (timeout) throw TimeoutError(msg);
  throw CommError(msg);
}

void ShmDomain::abort(const std::string& reason) {
  auto* h = reinterpret_cast<Header*>(base_);
  uint32_t expected = 0;
  if (h->aborted.compare_exchange_strong(expected, 1)) {
    std::strncpy(h->reason, reason.c_str(), sizeof(h->reason) - 1);
    h->aborted.store(2, std::memory_order_release);
  }
  futexWakeAll(&h->arrivals);
}

void ShmDomain::waitPeers(uint32_t target, Deadline deadline, const char* what) {
  auto* h = reinterpret_cast<Header*>(base_);
  auto reached = [&] { return static_cast<int32_t>(h->arrivals.load(std::memory_order_acquire) - target) >= 0; };
  if (reached()) return;
  // Phase 1: spin, when the peers run on other CPUs right now (never when the
  // host's ranks outnumber its CPUs: the peer we wait for needs this one).
  const auto start = std::chrono::steady_clock::now();
  if (!crowded_) {
    while (std::chrono::steady_clock::now() - start < spinFor_) {
      for (int i = 0; i < 32; ++i) {
        AC_CPU_RELAX();
        if (reached()) return;
      }
    }
  }
  // Phase 2: yield (a peer that shares this CPU runs instead of us).
  while (std::chrono::steady_clock::now() - start < yieldFor_) {
    ::sched_yield();
    if (reached()) return;
  }
  // Phase 3: block until the last rank to arrive wakes everyone.
  const uint32_t mine = counter_;
  while (true) {
    if (h->aborted.load(std::memory_order_acquire) == 2) throw CommError(strCat("agentcomm: aborted: ", h->reason));
    int missing = -1;  // the first rank that has not arrived yet
    for (int j = 0; j < size_; ++j) {
      if (j == rank_ || static_cast<int32_t>(ctl(j)->counter.load(std::memory_order_acquire) - mine) >= 0) continue;
      if (missing < 0) missing = j;
      if (abortProbe_) {
        if (auto why = abortProbe_(members_[j])) fail(*why, false);
      }
    }
    if (Clock::now() >= deadline) {
      fail(strCat("agentcomm: Timed out ", what, " waiting for rank ", missing < 0 ? 0 : missing, " (rank ", rank_,
                  " of ", size_, ", shared memory); the peer may be dead, stuck, or calling a different collective"),
           true);
    }
    // seq_cst increment, then seq_cst load of arrivals: pairs with the last
    // arriver's increment-then-load of sleepers (see sync), so either we see
    // its arrival or it sees us and wakes us.
    h->sleepers.fetch_add(1, std::memory_order_seq_cst);
    const uint32_t v = h->arrivals.load(std::memory_order_seq_cst);
    if (static_cast<int32_t>(v - target) < 0) futexWait(&h->arrivals, v, kBlockSliceNs);
    h->sleepers.fetch_sub(1, std::memory_order_seq_cst);
    if (reached()) return;
  }
}

void ShmDomain::sync(Deadline deadline, const char* what) {
  auto* h = reinterpret_cast<Header*>(base_);
  ++counter_;
  ctl(rank_)->counter.store(counter_, std::memory_order_release);
  const uint32_t target = counter_ * static_cast<uint32_t>(size_);
  // No rank can start sync point k+1 before all finished k, so the rank whose
  // increment makes arrivals reach k * size is the last one of sync point k.
  if (h->arrivals.fetch_add(1, std::memory_order_seq_cst) + 1 == target) {
    if (h->sleepers.load(std::memory_order_seq_cst) != 0) futexWakeAll(&h->arrivals);
    return;
  }
  waitPeers(target, deadline, what);
}

int ShmDomain::arrive(const ShmOpDesc& d, const uint64_t* w, size_t nwords, Deadline deadline, const char* what) {
  AC_CHECK(nwords <= maxWords_, InvalidArgument, "shm: ", nwords, " published words exceed ", maxWords_);
  if (auto* h = reinterpret_cast<Header*>(base_); h->aborted.load(std::memory_order_acquire) == 2) {
    throw CommError(strCat("agentcomm: aborted: ", h->reason));
  }
  const int parity = static_cast<int>(round_ & 1);
  ++round_;
  *desc(rank_, parity) = d;
  if (nwords > 0) std::memcpy(words(rank_, parity), w, nwords * sizeof(uint64_t));
  sync(deadline, what);
  for (int j = 0; j < size_; ++j) {
    if (j == rank_) continue;
    const ShmOpDesc& theirs = *desc(j, parity);
    if (!(theirs == d)) {
      auto describe = [this](const ShmOpDesc& x) {
        if (describe_ != nullptr) return describe_(x);
        return strCat("collective #", int(x.collective), " (sequence number ", x.seq, ", signature ", x.signature,
                      ", dtype #", int(x.dtype), ", op #", int(x.op), ", root ", int(x.root), ", shm algorithm ",
                      x.algo, ")");
      };
      const std::string msg = strCat(
          "agentcomm: collective mismatch between rank ", rank_, " and rank ", j, ": rank ", rank_, " called ",
          describe(d), " but rank ", j, " called ", describe(theirs));
      abort(msg);
      throw MismatchError(msg);
    }
  }
  return parity;
}

void ShmDomain::preferHugePages(const void* p, size_t n) {
#ifndef MADV_COLLAPSE
  constexpr int MADV_COLLAPSE = 25;  // Linux 6.1; older kernels answer EINVAL and we stop trying
#endif
  constexpr size_t kHuge = size_t{2} << 20;
  constexpr size_t kMinBytes = size_t{8} << 20;
  if (!collapse_ || n < kMinBytes) return;
  const auto key = std::make_pair(reinterpret_cast<uintptr_t>(p), n);
  int& seen = seenBuffers_[key];
  if (++seen != 2) {
    if (seenBuffers_.size() > 256) seenBuffers_.clear();  // bounded; forgetting only costs a later retry
    return;
  }
  const uintptr_t lo = (key.first + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = (key.first + n) & ~(kHuge - 1);
  if (hi <= lo) return;
  if (::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_COLLAPSE) != 0) {
    const int err = errno;
    if (err == EINVAL || err == EPERM) {
      collapse_ = false;
      AC_LOG(Info, "shm: MADV_COLLAPSE unavailable (", errnoText(err), "); large buffers stay on 4 KiB pages");
    }
  }
}

void ShmDomain::readPeer(int peer, uint64_t remote, void* dst, size_t n) const {
  auto* out = static_cast<uint8_t*>(dst);
  while (n > 0) {
    iovec local{out, n}, rem{reinterpret_cast<void*>(remote), n};
    ssize_t got = ::process_vm_readv(pids_[peer], &local, 1, &rem, 1, 0);
    if (got <= 0) {
      throw CommError(strCat("agentcomm: reading rank ", peer, "'s buffer (process_vm_readv) failed: ",
                             got < 0 ? errnoText(errno) : std::string("no progress"),
                             "; the peer may have died"));
    }
    out += got;
    remote += static_cast<uint64_t>(got);
    n -= static_cast<size_t>(got);
  }
}

}  // namespace agentcomm::transport
