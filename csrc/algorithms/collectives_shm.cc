// Broadcast, all-gather, reduce-scatter and barrier inside one host, over the
// shared-memory domain. Each has a staged form (through the slots, in rounds
// of one slot, one sync per round: works everywhere) and, except the barrier,
// a single-copy form reading peers' buffers directly (Cross Memory Attach),
// which ends with a sync because peers read this rank's buffers until then.
#include <algorithm>
#include <cstring>
#include <vector>

#include "algorithms/algorithms.h"
#include "algorithms/shm_common.h"
#include "kernels/kernels.h"

namespace agentcomm::algorithms {

void broadcastShm(Context& ctx, const BroadcastOptions& opts, Path path) {
  transport::ShmDomain& shm = *ctx.shm;
  const char* what = "in broadcast (shared memory)";
  const size_t bytes = opts.count * ctx.elemSize();
  auto* data = static_cast<uint8_t*>(opts.data);
  const bool root = ctx.rank() == opts.root;
  if (path == Path::ShmCma) {
    const uint64_t me = addrOf(data);
    if (root) shm.preferHugePages(data, bytes);
    const int p = shm.arrive(shmDesc(ctx, ShmAlgo::Cma, opts.count, opts.root), &me, 1, ctx.deadline, what);
    if (!root && bytes > 0) shm.readPeer(opts.root, shm.peerWord(opts.root, p, 0), data, bytes);
    shm.sync(ctx.deadline, what);
    return;
  }
  size_t off = 0;
  do {
    const size_t m = std::min(shm.slotBytes(), bytes - off);
    const int p = shm.nextParity();
    if (root && m > 0) std::memcpy(shm.slot(opts.root, p), data + off, m);
    shm.arrive(shmDesc(ctx, ShmAlgo::Staged, opts.count, opts.root), nullptr, 0, ctx.deadline, what);
    if (!root && m > 0) std::memcpy(data + off, shm.slot(opts.root, p), m);
    off += m;
  } while (off < bytes);
}

void allGatherShm(Context& ctx, const AllGatherOptions& opts, Path path) {
  transport::ShmDomain& shm = *ctx.shm;
  const char* what = "in all_gather (shared memory)";
  const int n = ctx.size();
  const int r = ctx.rank();
  const size_t es = ctx.elemSize();
  uint64_t total = 0, most = 0;
  for (size_t c : opts.counts) {
    total += c;
    most = std::max<uint64_t>(most, c * es);
  }
  const size_t myBytes = opts.counts[r] * es;
  auto out = [&](int j) { return static_cast<uint8_t*>(opts.outputs[j]); };
  if (myBytes > 0 && opts.input != opts.outputs[r]) std::memmove(out(r), opts.input, myBytes);
  if (path == Path::ShmCma) {
    const uint64_t me = addrOf(opts.input);
    shm.preferHugePages(opts.input, myBytes);
    const int p = shm.arrive(shmDesc(ctx, ShmAlgo::Cma, total), &me, 1, ctx.deadline, what);
    for (int k = 1; k < n; ++k) {  // start at different peers so they are not all read at once
      const int j = (r + k) % n;
      if (opts.counts[j] > 0) shm.readPeer(j, shm.peerWord(j, p, 0), out(j), opts.counts[j] * es);
    }
    shm.sync(ctx.deadline, what);
    return;
  }
  const auto* in = static_cast<const uint8_t*>(opts.input);
  size_t off = 0;
  do {
    const int p = shm.nextParity();
    if (off < myBytes) std::memcpy(shm.slot(r, p), in + off, std::min(shm.slotBytes(), myBytes - off));
    shm.arrive(shmDesc(ctx, ShmAlgo::Staged, total), nullptr, 0, ctx.deadline, what);
    for (int k = 1; k < n; ++k) {
      const int j = (r + k) % n;
      const size_t theirs = opts.counts[j] * es;
      if (off < theirs) std::memcpy(out(j) + off, shm.slot(j, p), std::min(shm.slotBytes(), theirs - off));
    }
    off += shm.slotBytes();
  } while (off < most);
}

void reduceScatterShm(Context& ctx, const ReduceScatterOptions& opts, Path path) {
  transport::ShmDomain& shm = *ctx.shm;
  const char* what = "in reduce_scatter (shared memory)";
  const int n = ctx.size();
  const int r = ctx.rank();
  const size_t es = ctx.elemSize();
  uint64_t total = 0;
  size_t most = 0;
  for (size_t c : opts.counts) {
    total += c;
    most = std::max(most, c);
  }
  const FinalScale scale = finalScaleFor(ctx.op, n, opts.premulFactor);
  const ReduceOp op = combiningOp(ctx.op);
  const size_t mine = opts.counts[r];
  auto* out = static_cast<uint8_t*>(opts.output);
  if (path == Path::ShmCma) {
    std::vector<uint64_t> words(n);
    for (int i = 0; i < n; ++i) {
      words[i] = addrOf(opts.inputs[i]);
      shm.preferHugePages(opts.inputs[i], opts.counts[i] * es);
    }
    const int p = shm.arrive(shmDesc(ctx, ShmAlgo::Cma, total), words.data(), n, ctx.deadline, what);
    std::vector<uint64_t> remote(n);
    for (int j = 0; j < n; ++j) remote[j] = shm.peerWord(j, p, r);  // rank j's contribution to block r
    cmaReduce(ctx, remote.data(), opts.inputs[r], out, mine, scale);
    shm.sync(ctx.deadline, what);
    return;
  }
  // Each round carries up to `step` elements of every block: rank j packs its
  // n block-pieces at i*step in its slot; rank r reduces piece r of all slots.
  const size_t step = std::max<size_t>(1, shm.slotBytes() / (es * n));
  size_t off = 0;
  do {
    const int p = shm.nextParity();
    uint8_t* slot = shm.slot(r, p);
    for (int i = 0; i < n; ++i) {
      if (off < opts.counts[i]) {
        std::memcpy(slot + i * step * es, static_cast<const uint8_t*>(opts.inputs[i]) + off * es,
                    std::min(step, opts.counts[i] - off) * es);
      }
    }
    shm.arrive(shmDesc(ctx, ShmAlgo::Staged, total), nullptr, 0, ctx.deadline, what);
    if (off < mine) {
      const size_t m = std::min(step, mine - off);
      const size_t at = static_cast<size_t>(r) * step * es;
      uint8_t* dst = out + off * es;
      kernels::reduce(dst, shm.slot(0, p) + at, shm.slot(1, p) + at, m, ctx.dtype, op,
                      n == 2 ? scale : FinalScale::none());
      for (int j = 2; j < n; ++j)
        kernels::reduce(dst, dst, shm.slot(j, p) + at, m, ctx.dtype, op, j == n - 1 ? scale : FinalScale::none());
    }
    off += step;
  } while (off < most);
}

void barrierShm(Context& ctx) {
  ctx.shm->arrive(shmDesc(ctx, ShmAlgo::Barrier, 0), nullptr, 0, ctx.deadline, "in barrier (shared memory)");
}

}  // namespace agentcomm::algorithms

namespace agentcomm::algorithms {

// All-to-all. Splits may differ per rank, so every rank publishes its own
// (offset, count) per destination in its first arrive() and checks that what
// each peer sends it matches what it expects (a mismatch would otherwise read
// past a buffer). Cma: read each peer's block for this rank straight from the
// peer's input. Staged: rounds carrying up to `step` elements of every block.
void allToAllShm(Context& ctx, const AllToAllOptions& opts, Path path) {
  transport::ShmDomain& shm = *ctx.shm;
  const char* what = "in all_to_all (shared memory)";
  const int n = ctx.size();
  const int r = ctx.rank();
  const size_t es = ctx.elemSize();
  auto* out = static_cast<uint8_t*>(opts.output);
  auto* in = static_cast<const uint8_t*>(opts.input);
  std::vector<uint64_t> words(2 * n + 1);
  words[0] = addrOf(in);
  for (int i = 0; i < n; ++i) {
    words[1 + i] = opts.inOffsets[i];
    words[1 + n + i] = opts.inCounts[i];
  }
  const size_t step = std::max<size_t>(1, shm.slotBytes() / (es * n));
  const int p0 = shm.nextParity();
  if (path == Path::ShmStaged) {  // round 0's data goes in before the first arrive
    for (int i = 0; i < n; ++i)
      if (opts.inCounts[i] > 0)
        std::memcpy(shm.slot(r, p0) + i * step * es, in + opts.inOffsets[i] * es, std::min(step, opts.inCounts[i]) * es);
  }
  const ShmAlgo algo = path == Path::ShmCma ? ShmAlgo::Cma : ShmAlgo::Staged;
  shm.arrive(shmDesc(ctx, algo, 0), words.data(), words.size(), ctx.deadline, what);
  size_t most = 0;
  for (int j = 0; j < n; ++j) {
    const uint64_t theirs = shm.peerWord(j, p0, 1 + n + r);
    if (j != r && theirs != opts.outCounts[j]) {
      const std::string msg = strCat("agentcomm: collective mismatch in all_to_all (sequence number ", ctx.seq,
                                     "): rank ", j, " sends ", theirs, " elements to rank ", r, ", which expects ",
                                     opts.outCounts[j]);
      shm.abort(msg);
      throw MismatchError(msg);
    }
    for (int i = 0; i < n; ++i) most = std::max<size_t>(most, shm.peerWord(j, p0, 1 + n + i));
  }
  if (opts.inCounts[r] > 0)
    std::memmove(out + opts.outOffsets[r] * es, in + opts.inOffsets[r] * es, opts.inCounts[r] * es);
  if (path == Path::ShmCma) {
    for (int k = 1; k < n; ++k) {
      const int j = (r + k) % n;
      if (opts.outCounts[j] > 0)
        shm.readPeer(j, shm.peerWord(j, p0, 0) + shm.peerWord(j, p0, 1 + r) * es, out + opts.outOffsets[j] * es,
                     opts.outCounts[j] * es);
    }
    shm.sync(ctx.deadline, what);
    return;
  }
  int p = p0;
  for (size_t off = 0;;) {
    for (int k = 1; k < n; ++k) {
      const int j = (r + k) % n;
      if (off < opts.outCounts[j])
        std::memcpy(out + (opts.outOffsets[j] + off) * es, shm.slot(j, p) + static_cast<size_t>(r) * step * es,
                    std::min(step, opts.outCounts[j] - off) * es);
    }
    off += step;
    if (off >= most) break;
    p = shm.nextParity();
    for (int i = 0; i < n; ++i)
      if (off < opts.inCounts[i])
        std::memcpy(shm.slot(r, p) + i * step * es, in + (opts.inOffsets[i] + off) * es,
                    std::min(step, opts.inCounts[i] - off) * es);
    shm.arrive(shmDesc(ctx, algo, 0), nullptr, 0, ctx.deadline, what);
  }
}

}  // namespace agentcomm::algorithms
