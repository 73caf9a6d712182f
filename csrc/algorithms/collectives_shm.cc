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
    if (j != r && theirs != opts.outCounts[j])
      failMismatch(ctx, "all_to_all",
                   strCat("rank ", j, " sends ", theirs, " elements to rank ", r, ", which expects ", opts.outCounts[j]));
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

namespace agentcomm::algorithms {

// Reduce to the root. Cma: the root reads every peer's buffer (cmaReduce, rank
// order) into its own; peers wait at the final sync because the root reads
// their memory until then. Staged: every rank puts a slot's worth of its data
// in its slot each round and the root reduces the n slots (its own operand
// read in place) into its buffer. Non-roots' buffers are never written.
void reduceShm(Context& ctx, const ReduceOptions& opts, Path path) {
  transport::ShmDomain& shm = *ctx.shm;
  const char* what = "in reduce (shared memory)";
  const int n = ctx.size();
  const int r = ctx.rank();
  const size_t es = ctx.elemSize();
  const bool root = r == opts.root;
  const FinalScale scale = finalScaleFor(ctx.op, n, opts.premulFactor);
  const ReduceOp op = combiningOp(ctx.op);
  auto* data = static_cast<uint8_t*>(opts.data);
  if (path == Path::ShmCma) {
    const uint64_t me = addrOf(data);
    shm.preferHugePages(data, opts.count * es);
    const int p = shm.arrive(shmDesc(ctx, ShmAlgo::Cma, opts.count, opts.root), &me, 1, ctx.deadline, what);
    if (root) {
      std::vector<uint64_t> remote(n);
      for (int j = 0; j < n; ++j) remote[j] = shm.peerWord(j, p, 0);
      cmaReduce(ctx, remote.data(), data, data, opts.count, scale);
    }
    shm.sync(ctx.deadline, what);
    return;
  }
  const size_t step = std::max<size_t>(1, shm.slotBytes() / es);
  size_t off = 0;
  do {
    const size_t m = std::min(step, opts.count - off);
    const int p = shm.nextParity();
    // The root stages its chunk too: the result overwrites its data while the
    // n operands are read in rank order.
    if (m > 0) std::memcpy(shm.slot(r, p), data + off * es, m * es);
    shm.arrive(shmDesc(ctx, ShmAlgo::Staged, opts.count, opts.root), nullptr, 0, ctx.deadline, what);
    if (root && m > 0) {
      uint8_t* dst = data + off * es;
      if (n == 1) {
        kernels::applyScale(dst, dst, m, ctx.dtype, scale);
      } else {
        kernels::reduce(dst, shm.slot(0, p), shm.slot(1, p), m, ctx.dtype, op, n == 2 ? scale : FinalScale::none());
        for (int j = 2; j < n; ++j)
          kernels::reduce(dst, dst, shm.slot(j, p), m, ctx.dtype, op, j == n - 1 ? scale : FinalScale::none());
      }
    }
    off += m;
  } while (off < opts.count);
}

namespace {

// Every rank publishes (its buffer's address, its element count); the root
// checks the counts against what it expects and fails the group on a mismatch.
void checkRootCounts(Context& ctx, int p, const std::vector<size_t>& expected, const char* name) {
  transport::ShmDomain& shm = *ctx.shm;
  for (int j = 0; j < ctx.size(); ++j) {
    const uint64_t theirs = shm.peerWord(j, p, 1);
    if (theirs != expected[j])
      failMismatch(ctx, name, strCat("rank ", j, " has ", theirs, " elements, the root expects ", expected[j]));
  }
}

}  // namespace

// Gather to the root: Cma, the root reads every peer's input; staged, each
// round carries a slot's worth of every rank's input. With bySize, the path is
// picked after the first arrive() from the largest count (which only then is
// known to every rank): CMA from kCmaMinBytes on, when `path` allows it.
void gatherShm(Context& ctx, const GatherOptions& opts, Path path, bool bySize) {
  transport::ShmDomain& shm = *ctx.shm;
  const char* what = "in gather (shared memory)";
  const int n = ctx.size();
  const int r = ctx.rank();
  const size_t es = ctx.elemSize();
  const bool root = r == opts.root;
  if (root)
    AC_CHECK(static_cast<int>(opts.outputs.size()) == n && static_cast<int>(opts.counts.size()) == n &&
                 opts.counts[r] == opts.count,
             InvalidArgument, "gather: the root needs one output per rank, its own of its input's size");
  const auto* in = static_cast<const uint8_t*>(opts.input);
  const uint64_t words[2] = {addrOf(in), opts.count};
  const size_t step = std::max<size_t>(1, shm.slotBytes() / es);
  const ShmAlgo algo = path == Path::ShmCma ? ShmAlgo::Cma : ShmAlgo::Staged;
  const int p0 = shm.nextParity();
  // Round 0 goes in before the first arrive (unused if the path turns out CMA).
  if (opts.count > 0 && (path == Path::ShmStaged || bySize))
    std::memcpy(shm.slot(r, p0), in, std::min(step, opts.count) * es);
  if (path == Path::ShmCma && opts.count * es >= kCmaMinBytes) shm.preferHugePages(in, opts.count * es);
  shm.arrive(shmDesc(ctx, algo, 0, opts.root), words, 2, ctx.deadline, what);
  size_t most = 0;
  for (int j = 0; j < n; ++j) most = std::max<size_t>(most, shm.peerWord(j, p0, 1));
  if (root) {
    checkRootCounts(ctx, p0, opts.counts, "gather");
    if (opts.count > 0 && opts.outputs[r] != opts.input) std::memmove(opts.outputs[r], in, opts.count * es);
  }
  if (bySize) path = path == Path::ShmCma && most * es >= kCmaMinBytes ? Path::ShmCma : Path::ShmStaged;
  if (path == Path::ShmCma) {
    if (root)
      for (int k = 1; k < n; ++k) {
        const int j = (r + k) % n;
        if (opts.counts[j] > 0) shm.readPeer(j, shm.peerWord(j, p0, 0), opts.outputs[j], opts.counts[j] * es);
      }
    shm.sync(ctx.deadline, what);
    return;
  }
  int p = p0;
  for (size_t off = 0;;) {
    if (root)
      for (int j = 0; j < n; ++j)
        if (j != r && off < opts.counts[j])
          std::memcpy(static_cast<uint8_t*>(opts.outputs[j]) + off * es, shm.slot(j, p),
                      std::min(step, opts.counts[j] - off) * es);
    off += step;
    if (off >= most) break;
    p = shm.nextParity();
    if (off < opts.count) std::memcpy(shm.slot(r, p), in + off * es, std::min(step, opts.count - off) * es);
    shm.arrive(shmDesc(ctx, algo, 0, opts.root), nullptr, 0, ctx.deadline, what);
  }
}

// Scatter from the root: Cma, every rank reads its piece from the root's
// input; staged, the root's slot carries a piece of every rank's input per
// round (n pieces of slot/n bytes).
void scatterShm(Context& ctx, const ScatterOptions& opts, Path path, bool bySize) {
  transport::ShmDomain& shm = *ctx.shm;
  const char* what = "in scatter (shared memory)";
  const int n = ctx.size();
  const int r = ctx.rank();
  const size_t es = ctx.elemSize();
  const bool root = r == opts.root;
  if (root)
    AC_CHECK(static_cast<int>(opts.inputs.size()) == n && static_cast<int>(opts.counts.size()) == n &&
                 opts.counts[r] == opts.count,
             InvalidArgument, "scatter: the root needs one input per rank, its own of its output's size");
  // Root: [unused, count_0.., addr_0..]; everyone: [own count] at word 1 for the check.
  std::vector<uint64_t> words(2 + 2 * static_cast<size_t>(n), 0);
  words[1] = opts.count;
  if (root)
    for (int i = 0; i < n; ++i) {
      words[2 + i] = opts.counts[i];
      words[2 + n + i] = addrOf(opts.inputs[i]);
    }
  const size_t step = std::max<size_t>(1, shm.slotBytes() / (es * n));
  const ShmAlgo algo = path == Path::ShmCma ? ShmAlgo::Cma : ShmAlgo::Staged;
  auto pack = [&](int p, size_t off) {  // root: piece i of round `off` at i * step
    for (int i = 0; i < n; ++i)
      if (off < opts.counts[i])
        std::memcpy(shm.slot(r, p) + static_cast<size_t>(i) * step * es,
                    static_cast<const uint8_t*>(opts.inputs[i]) + off * es, std::min(step, opts.counts[i] - off) * es);
  };
  const int p0 = shm.nextParity();
  if (root && (path == Path::ShmStaged || bySize)) pack(p0, 0);  // unused if the path turns out CMA
  if (root && path == Path::ShmCma)
    for (int i = 0; i < n; ++i)
      if (opts.counts[i] * es >= kCmaMinBytes) shm.preferHugePages(opts.inputs[i], opts.counts[i] * es);
  shm.arrive(shmDesc(ctx, algo, 0, opts.root), words.data(), words.size(), ctx.deadline, what);
  // Every rank checks its own count against the root's.
  const uint64_t fromRoot = shm.peerWord(opts.root, p0, 2 + r);
  if (fromRoot != opts.count)
    failMismatch(ctx, "scatter",
                 strCat("the root sends ", fromRoot, " elements to rank ", r, ", which expects ", opts.count));
  size_t most = 0;
  for (int i = 0; i < n; ++i) most = std::max<size_t>(most, shm.peerWord(opts.root, p0, 2 + i));
  if (bySize) path = path == Path::ShmCma && most * es >= kCmaMinBytes ? Path::ShmCma : Path::ShmStaged;
  auto* out = static_cast<uint8_t*>(opts.output);
  if (path == Path::ShmCma) {
    if (root) {
      if (opts.count > 0 && opts.output != opts.inputs[r]) std::memmove(out, opts.inputs[r], opts.count * es);
    } else if (opts.count > 0) {
      shm.readPeer(opts.root, shm.peerWord(opts.root, p0, 2 + n + r), out, opts.count * es);
    }
    shm.sync(ctx.deadline, what);
    return;
  }
  int p = p0;
  for (size_t off = 0;;) {
    if (off < opts.count) {
      const size_t m = std::min(step, opts.count - off);
      if (root)
        std::memmove(out + off * es, static_cast<const uint8_t*>(opts.inputs[r]) + off * es, m * es);
      else
        std::memcpy(out + off * es, shm.slot(opts.root, p) + static_cast<size_t>(r) * step * es, m * es);
    }
    off += step;
    if (off >= most) break;
    p = shm.nextParity();
    if (root) pack(p, off);
    shm.arrive(shmDesc(ctx, algo, 0, opts.root), nullptr, 0, ctx.deadline, what);
  }
}

}  // namespace agentcomm::algorithms
