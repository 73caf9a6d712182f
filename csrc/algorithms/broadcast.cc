// Broadcast: small messages go root -> every rank directly (one hop) below
// kLogStepMinRanks ranks (algorithms.h), and down a binomial tree from there (ceil(log2 n) hops; the
// root sends log2 n messages, not n-1); large ones travel a chain root ->
// root+1 -> ... in chunks, each rank forwarding a chunk as soon as it lands
// (time ~ (n-2) * chunk + S at link speed).
#include <vector>

#include "algorithms/algorithms.h"
#include "algorithms/shm_common.h"
#include "algorithms/ring_schedule.h"

namespace agentcomm::algorithms {

namespace {
constexpr uint64_t kPhaseBroadcast = 3;
constexpr size_t kFlatMaxBytes = 64 * 1024;

// Binomial tree over positions relative to the root (MPICH's): position q
// receives from q minus its lowest set bit, then sends to q + 2^k for every
// 2^k below that bit (largest first, so the deepest subtree starts first).
void broadcastTree(Context& ctx, uint8_t* data, size_t bytes, int root) {
  const int n = ctx.size();
  const int pos = (ctx.rank() - root + n) % n;
  int mask = 1;
  while (mask < n) {
    if (pos & mask) {
      auto h = ctx.postRecv((pos - mask + root) % n, makeTag(kPhaseBroadcast, 2, 0), data, bytes);
      ctx.wait(h);
      break;
    }
    mask <<= 1;
  }
  for (mask >>= 1; mask > 0; mask >>= 1)
    if (pos + mask < n) ctx.send((pos + mask + root) % n, makeTag(kPhaseBroadcast, 2, 0), data, bytes);
}
}  // namespace

void broadcast(Context& ctx, const BroadcastOptions& opts) {
  const int n = ctx.size();
  const int r = ctx.rank();
  const size_t es = ctx.elemSize();
  auto* data = static_cast<uint8_t*>(opts.data);
  if (n == 1) return;
  if (runsHierarchical(ctx, "broadcast", opts.count * es, false)) return broadcastHierarchical(ctx, opts);
  if (Path p = choosePath(ctx, "broadcast", opts.count * es); p != Path::Tcp) return broadcastShm(ctx, opts, p);
  if (opts.count * es <= kFlatMaxBytes && n >= kLogStepMinRanks) return broadcastTree(ctx, data, opts.count * es, opts.root);
  if (opts.count * es <= kFlatMaxBytes) {
    if (r == opts.root) {
      for (int k = 1; k < n; ++k) ctx.send((opts.root + k) % n, makeTag(kPhaseBroadcast, 0, 0), data, opts.count * es);
    } else {
      auto h = ctx.postRecv(opts.root, makeTag(kPhaseBroadcast, 0, 0), data, opts.count * es);
      ctx.wait(h);
    }
    return;
  }
  const int pos = (r - opts.root + n) % n;
  const int prev = (r - 1 + n) % n;
  const int next = (r + 1) % n;
  const size_t ce = ctx.chunkElems();
  const size_t chunks = numChunks(opts.count, ce);
  std::vector<RecvHandle> handles;
  if (pos > 0) {
    for (size_t c = 0; c < chunks; ++c) {
      Span sp = chunkSpan(opts.count, ce, c);
      handles.push_back(ctx.postRecv(prev, makeTag(kPhaseBroadcast, 1, c), data + sp.offset * es, sp.count * es));
    }
  }
  for (size_t c = 0; c < chunks; ++c) {
    Span sp = chunkSpan(opts.count, ce, c);
    if (pos > 0) ctx.wait(handles[c]);
    if (pos < n - 1) ctx.send(next, makeTag(kPhaseBroadcast, 1, c), data + sp.offset * es, sp.count * es);
  }
}

}  // namespace agentcomm::algorithms
