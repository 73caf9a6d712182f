#pragma once
// Collective algorithms: one options struct + one free function each (the
// gloo style), over raw pointers and element counts of ctx.dtype. Every
// function is called by all ranks of ctx.transport with the same ctx.seq.
// Buffers must stay valid until the function returns; when it throws, the
// transport has been aborted (no message will land in a buffer afterwards).
#include <cstddef>
#include <string>
#include <vector>

#include "algorithms/context.h"

namespace agentcomm::algorithms {

// Many ranks, small messages over TCP: from kLogStepMinRanks ranks on, messages
// up to kLogStepMaxBytes take the log2(n)-step algorithms (recursive-doubling
// all_reduce and reduce_scatter, binomial-tree broadcast, Bruck all_gather)
// instead of n-1 direct messages or a ring's n-1 steps. Against the ring they win
// while (2(n-1) - log2 n)*alpha > (log2 n - 2)*S/beta; at n = 64, alpha = 50 us,
// beta = 1.25 GB/s that is S < 1.9 MB: 256 KiB keeps a wide margin.
constexpr int kLogStepMinRanks = 17;
constexpr size_t kLogStepMaxBytes = 256 * 1024;
inline bool logStepApplies(size_t bytes, int n) { return n >= kLogStepMinRanks && bytes <= kLogStepMaxBytes; }

enum class AllReduceAlgo { Auto, Ring, Direct, RecursiveDoubling, ShmFlat, ShmStaged, ShmCma, Hierarchical };

struct AllReduceOptions {
  void* data = nullptr;  // in place
  size_t count = 0;
  // PREMUL_SUM with one factor every rank shares, applied once in the last
  // pass. (torch's factor is per rank: the torch adapter scales each rank's
  // input itself and reduces with SUM.)
  double premulFactor = 1.0;
  AllReduceAlgo algo = AllReduceAlgo::Auto;
  int scaleWorld = 0;  // world size AVG divides by; 0: ctx.size() (sub-groups of a hierarchy set it)
};

// The final scale of an all-reduce (AVG, PREMUL_SUM), applied in its last pass.
inline FinalScale allReduceScale(const Context& ctx, const AllReduceOptions& opts) {
  return finalScaleFor(ctx.op, opts.scaleWorld > 0 ? opts.scaleWorld : ctx.size(), opts.premulFactor);
}

// Picks an algorithm: `requested` unless Auto, then AGENTCOMM_ALGO, then the
// first entry of the ordered (predicate -> algorithm) table in allreduce.cc
// that applies to this size and topology (shm: the group's shared-memory
// domain, or null).
AllReduceAlgo chooseAllReduceAlgo(size_t bytes, int worldSize, const transport::ShmDomain* shm,
                                  AllReduceAlgo requested, bool multiHost = false);
const char* allReduceAlgoName(AllReduceAlgo algo);
// The TCP-only choice (direct for small messages, else ring), ignoring AGENTCOMM_ALGO.
AllReduceAlgo tcpAllReduceAlgo(size_t bytes, int worldSize);

void allReduce(Context& ctx, const AllReduceOptions& opts);
// Chunked, pipelined ring: reduce-scatter then all-gather, 2(n-1)/n * S bytes per rank.
void allReduceRing(Context& ctx, const AllReduceOptions& opts);
// One step: every rank sends its whole buffer to every peer and reduces all
// n contributions in rank order. (n-1) * S bytes per rank; latency of one hop.
void allReduceDirect(Context& ctx, const AllReduceOptions& opts);
// Recursive doubling: ceil(log2 n) whole-vector exchanges (non-powers of two fold
// the extra ranks in first); small messages among many ranks.
void allReduceRecursiveDoubling(Context& ctx, const AllReduceOptions& opts);
// Shared memory inside one host (allreduce_shm.cc): flat slots for small
// messages, slot-staged reduce-scatter + all-gather, and the single-copy
// version reading peers' buffers directly (Cross Memory Attach).
void allReduceShmFlat(Context& ctx, const AllReduceOptions& opts);
void allReduceShmStaged(Context& ctx, const AllReduceOptions& opts);
void allReduceShmCma(Context& ctx, const AllReduceOptions& opts);
// Several hosts with several ranks each (hierarchical.cc): shared memory
// inside hosts, the host leaders across them.
void allReduceHierarchical(Context& ctx, const AllReduceOptions& opts);

struct BroadcastOptions {
  void* data = nullptr;  // root: source; others: destination
  size_t count = 0;
  int root = 0;
};
// Small messages: root sends to every rank. Large: a pipelined chain from the root.
void broadcast(Context& ctx, const BroadcastOptions& opts);

struct ReduceOptions {
  void* data = nullptr;  // root: replaced by the result; others: left unchanged
  size_t count = 0;
  int root = 0;
  double premulFactor = 1.0;
};
// Ring reduce-scatter, then every rank sends its reduced block to the root.
void reduce(Context& ctx, const ReduceOptions& opts);

struct AllGatherOptions {
  const void* input = nullptr;    // counts[rank] elements; may alias outputs[rank]
  std::vector<void*> outputs;     // outputs[i]: counts[i] elements from rank i
  std::vector<size_t> counts;
};
// Chunked, pipelined ring; blocks may have different sizes.
void allGather(Context& ctx, const AllGatherOptions& opts);

struct ReduceScatterOptions {
  std::vector<const void*> inputs;  // inputs[i]: counts[i] elements, this rank's contribution to block i
  std::vector<size_t> counts;
  void* output = nullptr;           // counts[rank] elements; inputs are not modified
  double premulFactor = 1.0;
  int scaleWorld = 0;  // world size AVG divides by; 0: ctx.size() (the leaders of a hierarchy set it)
};
void reduceScatter(Context& ctx, const ReduceScatterOptions& opts);

struct GatherOptions {
  const void* input = nullptr;
  size_t count = 0;
  std::vector<void*> outputs;   // root only: outputs[i] receives rank i's input
  std::vector<size_t> counts;   // root only
  int root = 0;
};
void gather(Context& ctx, const GatherOptions& opts);

struct ScatterOptions {
  std::vector<const void*> inputs;  // root only
  std::vector<size_t> counts;       // root only
  void* output = nullptr;
  size_t count = 0;
  int root = 0;
};
void scatter(Context& ctx, const ScatterOptions& opts);

struct AllToAllOptions {
  const void* input = nullptr;
  std::vector<size_t> inOffsets, inCounts;    // elements, per destination rank
  void* output = nullptr;
  std::vector<size_t> outOffsets, outCounts;  // elements, per source rank
};
// Pairwise exchange: receives posted first, then rank r sends to r+1, r+2, ...
void allToAll(Context& ctx, const AllToAllOptions& opts);

// Dissemination barrier: ceil(log2 n) rounds of empty messages.
void barrier(Context& ctx);

// The same scheme for the other collectives whose data crosses every host
// (hierarchical.cc; chosen whenever ctx.topo is set): the network carries
// only the host leaders' traffic.
void broadcastHierarchical(Context& ctx, const BroadcastOptions& opts);
void allGatherHierarchical(Context& ctx, const AllGatherOptions& opts);
void reduceScatterHierarchical(Context& ctx, const ReduceScatterOptions& opts);

}  // namespace agentcomm::algorithms
