// Reduce to a root. Small messages: an all-reduce, whose algorithms (shared
// memory: flat slots, one sync, or staged; TCP: the direct exchange, one hop)
// beat the ring's n hops (4 ranks, 1-16 KiB: 0.6 ms by the ring, 0.04-0.14 ms
// as an all-reduce). Large ones over shared memory when the group has a domain
// (collectives_shm.cc); otherwise a ring reduce-scatter (the root in place,
// the others on a scratch copy so their input stays untouched), then each
// rank sends its reduced block to the root, which posted those receives up
// front.
#include <cstring>
#include <vector>

#include "algorithms/algorithms.h"
#include "algorithms/shm_common.h"
#include "algorithms/ring_primitives.h"

namespace agentcomm::algorithms {

namespace {
constexpr uint64_t kPhaseToRoot = 4;
// Up to these sizes a reduce runs as an all-reduce. Inside one host (a
// shared-memory domain) the all-reduce's shared-memory algorithms beat the
// TCP ring reduce up to ~1 MiB (4 ranks, 2 cores: 64 KiB 0.51 vs 0.24 ms,
// 1 MiB 1.13 vs 0.51 ms; from 4 MiB reduce has its own shared-memory path).
// Over TCP only up to the direct all-reduce's size: beyond it an all-reduce
// moves twice the bytes a reduce needs over the wire.
constexpr size_t kReduceAsAllReduceShmMaxBytes = size_t{1} << 20;
constexpr size_t kReduceAsAllReduceTcpMaxBytes = 32 * 1024;
}

void reduce(Context& ctx, const ReduceOptions& opts) {
  const int n = ctx.size();
  const int r = ctx.rank();
  const size_t es = ctx.elemSize();
  const size_t ce = ctx.chunkElems();
  const bool isRoot = r == opts.root;
  // Shared memory from a few MiB on (4 ranks on 2 cores, back to back: 1 MiB
  // TCP ring 1.9 ms vs slots 3.8 ms; 4 MiB 10.4 vs 2.3 ms; 64 MiB 210 vs 32-62
  // ms): the ring lets ranks run ahead, the slots sync every round.
  const bool forced = !forcedAlgo("reduce").empty();
  // The buffer the all-reduce or the ring works in: the root's own, a copy
  // on the others so their input stays untouched.
  std::vector<uint8_t> scratch;
  auto workBuffer = [&] {
    auto* data = static_cast<uint8_t*>(opts.data);
    if (isRoot) return data;
    scratch.assign(data, data + opts.count * es);
    return scratch.data();
  };
  const size_t asAllReduceMax =
      ctx.shm != nullptr && ctx.topo == nullptr ? kReduceAsAllReduceShmMaxBytes : kReduceAsAllReduceTcpMaxBytes;
  if (!forced && n > 1 && opts.count * es <= asAllReduceMax) {
    AllReduceOptions ar;
    ar.data = workBuffer();
    ar.count = opts.count;
    ar.premulFactor = opts.premulFactor;
    allReduce(ctx, ar);
    return;
  }
  if (forced || opts.count * es >= kShmReduceMinBytes)
    if (Path p = choosePath(ctx, "reduce", opts.count * es); p != Path::Tcp) return reduceShm(ctx, opts, p);
  uint8_t* base = workBuffer();
  std::vector<uint8_t*> blocks;
  detail::RingBlocks rb = detail::inPlaceRingBlocks(ctx, base, opts.count, blocks);
  // The root's block k is only overwritten after the root forwarded its own
  // partial sum of block k, which causally precedes rank k finishing it.
  std::vector<std::vector<RecvHandle>> handles(n);
  if (isRoot) {
    for (int k = 0; k < n; ++k) {
      if (k == r) continue;
      for (size_t c = 0; c < numChunks(rb.counts[k], ce); ++c) {
        Span sp = chunkSpan(rb.counts[k], ce, c);
        handles[k].push_back(ctx.postRecv(k, makeTag(kPhaseToRoot, 0, c), blocks[k] + sp.offset * es, sp.count * es));
      }
    }
  }
  const FinalScale scale = finalScaleFor(ctx.op, n, opts.premulFactor);
  detail::ringReduceScatter(ctx, rb, scale, [&](size_t c, const Span& sp) {
    if (!isRoot) ctx.send(opts.root, makeTag(kPhaseToRoot, 0, c), blocks[r] + sp.offset * es, sp.count * es);
  });
  if (isRoot) {
    for (auto& hs : handles)
      for (auto& h : hs) ctx.wait(h);
  }
}

}  // namespace agentcomm::algorithms
