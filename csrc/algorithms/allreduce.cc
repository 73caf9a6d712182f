// All-reduce entry point: one ordered table of (predicate -> algorithm); the
// first entry whose predicate holds runs. AGENTCOMM_ALGO overrides it.
#include <cstdlib>
#include <cstring>

#include "algorithms/algorithms.h"
#include "algorithms/shm_common.h"
#include "core/error.h"
#include "core/logging.h"

namespace agentcomm::algorithms {

namespace {
// TCP: direct exchange moves (n-1)*S bytes per rank but needs one hop; the
// ring moves 2(n-1)/n*S in 2(n-1) hops. Below this size latency dominates.
// From kLogStepMinRanks ranks on, recursive doubling instead (algorithms.h).
constexpr size_t kDirectMaxBytes = 32 * 1024;
// Shared memory: the flat algorithm reads n*S bytes per rank after one sync;
// the staged one reads ~(2+1/n)*S after two. Measured crossover (bench/RESULTS.md).
constexpr size_t kShmFlatMaxBytes = 32 * 1024;

struct Entry {
  AllReduceAlgo algo;
  bool (*applies)(size_t bytes, int n, const transport::ShmDomain* shm);
};
constexpr Entry kTable[] = {
    // (Hierarchical comes first when the group spans hosts: see chooseAllReduceAlgo.)
    {AllReduceAlgo::ShmFlat,
     [](size_t bytes, int n, const transport::ShmDomain* shm) {
       return shm != nullptr && bytes <= kShmFlatMaxBytes && bytes <= shm->slotBytes();
     }},
    {AllReduceAlgo::ShmCma,
     [](size_t bytes, int, const transport::ShmDomain* shm) {
       return shm != nullptr && shm->cma() && bytes >= kCmaMinBytes;
     }},
    {AllReduceAlgo::ShmStaged, [](size_t, int, const transport::ShmDomain* shm) { return shm != nullptr; }},
    {AllReduceAlgo::Direct, [](size_t bytes, int n, const transport::ShmDomain*) {
       return bytes <= kDirectMaxBytes && n < kLogStepMinRanks;
     }},
    {AllReduceAlgo::RecursiveDoubling, [](size_t bytes, int n, const transport::ShmDomain*) {
       return logStepApplies(bytes, n);
     }},
    {AllReduceAlgo::Ring, [](size_t, int, const transport::ShmDomain*) { return true; }},
};

AllReduceAlgo parse(const std::string& name) {
  if (name.empty()) return AllReduceAlgo::Auto;
  if (name == "ring" || name == "tcp") return AllReduceAlgo::Ring;
  if (name == "direct") return AllReduceAlgo::Direct;
  if (name == "recursive_doubling") return AllReduceAlgo::RecursiveDoubling;
  if (name == "shm_flat") return AllReduceAlgo::ShmFlat;
  if (name == "shm_staged") return AllReduceAlgo::ShmStaged;
  if (name == "shm_cma") return AllReduceAlgo::ShmCma;
  if (name == "hierarchical") return AllReduceAlgo::Hierarchical;
  throw InvalidArgument(strCat("AGENTCOMM_ALGO: '", name,
                               "' is not an all_reduce algorithm (auto, ring, direct, recursive_doubling, shm_flat, ",
                               "shm_staged, shm_cma, hierarchical)"));
}
}  // namespace

AllReduceAlgo tcpAllReduceAlgo(size_t bytes, int n) {
  for (const auto& e : kTable)  // without shared memory the shm entries never apply
    if (e.applies(bytes, n, nullptr)) return e.algo;
  return AllReduceAlgo::Ring;
}

const char* allReduceAlgoName(AllReduceAlgo algo) {
  switch (algo) {
    case AllReduceAlgo::Auto: return "auto";
    case AllReduceAlgo::Ring: return "ring";
    case AllReduceAlgo::Direct: return "direct";
    case AllReduceAlgo::RecursiveDoubling: return "recursive_doubling";
    case AllReduceAlgo::ShmFlat: return "shm_flat";
    case AllReduceAlgo::ShmStaged: return "shm_staged";
    case AllReduceAlgo::ShmCma: return "shm_cma";
    case AllReduceAlgo::Hierarchical: return "hierarchical";
  }
  return "?";
}

AllReduceAlgo chooseAllReduceAlgo(size_t bytes, int n, const transport::ShmDomain* shm, AllReduceAlgo requested,
                                  bool multiHost) {
  if (n == 1) return AllReduceAlgo::Ring;  // a local scale, whatever was asked for
  if (requested == AllReduceAlgo::Auto) {
    static const AllReduceAlgo env = parse(forcedAlgo("all_reduce"));
    requested = env;
    // A whole-group algorithm named in AGENTCOMM_ALGO still applies inside
    // each host; across hosts with several ranks each the hierarchy runs.
    if (multiHost && requested != AllReduceAlgo::Ring && requested != AllReduceAlgo::Direct &&
        requested != AllReduceAlgo::RecursiveDoubling) {
      return AllReduceAlgo::Hierarchical;
    }
  }
  if (requested == AllReduceAlgo::Hierarchical) {
    AC_CHECK(multiHost, InvalidArgument, "all_reduce algorithm hierarchical needs a group spanning several hosts",
             " with several ranks on at least one of them");
    return requested;
  }
  if (requested != AllReduceAlgo::Auto) {
    const bool needsShm = requested == AllReduceAlgo::ShmFlat || requested == AllReduceAlgo::ShmStaged ||
                          requested == AllReduceAlgo::ShmCma;
    AC_CHECK(!needsShm || shm != nullptr, InvalidArgument, "all_reduce algorithm ", allReduceAlgoName(requested),
             " needs every rank of the group on one host with shared memory (AGENTCOMM_SHM not 0)");
    AC_CHECK(requested != AllReduceAlgo::ShmCma || shm->cma(), InvalidArgument,
             "all_reduce algorithm shm_cma: cross-memory attach is unavailable: ", shm->cmaUnavailableReason());
    // A forced flat algorithm still has to fit its slot; larger messages stage.
    if (requested == AllReduceAlgo::ShmFlat && bytes > shm->slotBytes()) return AllReduceAlgo::ShmStaged;
    return requested;
  }
  for (const auto& e : kTable)
    if (e.applies(bytes, n, shm)) return e.algo;
  return AllReduceAlgo::Ring;
}

void allReduce(Context& ctx, const AllReduceOptions& opts) {
  const AllReduceAlgo algo =
      chooseAllReduceAlgo(opts.count * ctx.elemSize(), ctx.size(), ctx.shm, opts.algo, ctx.topo != nullptr);
  AC_LOG(Trace, "all_reduce seq ", ctx.seq, ": ", opts.count, " x ", dataTypeName(ctx.dtype), " op ",
         reduceOpName(ctx.op), " via ", allReduceAlgoName(algo));
  noteAlgorithm(allReduceAlgoName(algo));
  switch (algo) {
    case AllReduceAlgo::Direct: return allReduceDirect(ctx, opts);
    case AllReduceAlgo::RecursiveDoubling: return allReduceRecursiveDoubling(ctx, opts);
    case AllReduceAlgo::ShmFlat: return allReduceShmFlat(ctx, opts);
    case AllReduceAlgo::ShmStaged: return allReduceShmStaged(ctx, opts);
    case AllReduceAlgo::ShmCma: return allReduceShmCma(ctx, opts);
    case AllReduceAlgo::Hierarchical: return allReduceHierarchical(ctx, opts);
    default: return allReduceRing(ctx, opts);
  }
}

}  // namespace agentcomm::algorithms
