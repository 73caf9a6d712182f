// All-reduce inside one host, over the shared-memory domain.
//
// Flat (small messages): every rank copies its input into its slot, one sync,
// then every rank reduces all n slots in rank order into its output. One sync
// point, n*S bytes read per rank: latency-bound sizes only.
//
// Staged (any size, no Cross Memory Attach needed): in rounds of one slot,
// every rank copies the n-1 slices its peers reduce into its slot, syncs,
// reduces its own slice (its own input, then the peers' slot slices) into its
// slot, copies the result home, syncs, and copies the other n-1 reduced
// slices out. Per rank and round: 2(n-1)/n*S copied + one reduction of S/n.
//
// Cma (large messages): every rank publishes the address of its buffer,
// reduces its slice straight from the peers' buffers (process_vm_readv in
// L2-sized steps), syncs, copies the peers' reduced slices straight from
// their buffers, and syncs again before returning (its own buffer is being
// read until then). 2(n-1)/n * S bytes copied per rank, no staging.
#include <cstring>

#include "algorithms/algorithms.h"
#include "algorithms/ring_schedule.h"
#include "algorithms/shm_common.h"
#include "kernels/kernels.h"

namespace agentcomm::algorithms {

namespace {
constexpr const char* kWhat = "in all_reduce (shared memory)";
}

void allReduceShmFlat(Context& ctx, const AllReduceOptions& opts) {
  transport::ShmDomain& shm = *ctx.shm;
  const int n = ctx.size();
  const size_t bytes = opts.count * ctx.elemSize();
  AC_CHECK(bytes <= shm.slotBytes(), InvalidArgument, "all_reduce shm_flat: ", bytes,
           " bytes do not fit a shared-memory slot of ", shm.slotBytes(), " bytes (AGENTCOMM_SHM_SLOT_BYTES)");
  const int p = shm.nextParity();
  if (bytes > 0) std::memcpy(shm.slot(ctx.rank(), p), opts.data, bytes);
  shm.arrive(shmDesc(ctx, ShmAlgo::Flat, opts.count), nullptr, 0, ctx.deadline, kWhat);
  if (bytes == 0) return;
  const FinalScale scale = allReduceScale(ctx, opts);
  const ReduceOp op = combiningOp(ctx.op);
  kernels::reduce(opts.data, shm.slot(0, p), shm.slot(1, p), opts.count, ctx.dtype, op,
                  n == 2 ? scale : FinalScale::none());
  for (int j = 2; j < n; ++j)
    kernels::reduce(opts.data, opts.data, shm.slot(j, p), opts.count, ctx.dtype, op,
                    j == n - 1 ? scale : FinalScale::none());
}

void allReduceShmStaged(Context& ctx, const AllReduceOptions& opts) {
  transport::ShmDomain& shm = *ctx.shm;
  const int n = ctx.size();
  const int r = ctx.rank();
  const size_t es = ctx.elemSize();
  const size_t perRound = std::max<size_t>(1, shm.slotBytes() / es);
  const FinalScale scale = allReduceScale(ctx, opts);
  const ReduceOp op = combiningOp(ctx.op);
  auto* data = static_cast<uint8_t*>(opts.data);
  size_t off = 0;
  do {  // at least one round, so a zero-size call still syncs (and is checked)
    const size_t m = std::min(perRound, opts.count - off);
    uint8_t* base = data + off * es;
    const int p = shm.nextParity();
    uint8_t* mySlot = shm.slot(r, p);
    // Hand peers the slices they reduce; this rank's own slice never leaves its buffer.
    for (int j = 0; j < n; ++j) {
      const Span s = blockSpan(m, n, j);
      if (j != r && s.count > 0) std::memcpy(mySlot + s.offset * es, base + s.offset * es, s.count * es);
    }
    shm.arrive(shmDesc(ctx, ShmAlgo::Staged, opts.count), nullptr, 0, ctx.deadline, kWhat);
    const Span mine = blockSpan(m, n, r);
    if (mine.count > 0) {
      // Accumulate in this rank's slot slice (free: nobody reads it until the
      // sync below), starting from its own input, then the peers' in rank order.
      const size_t b = mine.offset * es;
      const uint8_t* acc = base + b;
      int done = 1;
      for (int j = 0; j < n; ++j) {
        if (j == r) continue;
        ++done;
        kernels::reduce(mySlot + b, acc, shm.slot(j, p) + b, mine.count, ctx.dtype, op,
                        done == n ? scale : FinalScale::none());
        acc = mySlot + b;
      }
      std::memcpy(base + b, mySlot + b, mine.count * es);
    }
    shm.sync(ctx.deadline, kWhat);
    for (int k = 1; k < n; ++k) {  // start at different peers so they are not all read at once
      const int j = (r + k) % n;
      const Span s = blockSpan(m, n, j);
      if (s.count > 0) std::memcpy(base + s.offset * es, shm.slot(j, p) + s.offset * es, s.count * es);
    }
    off += m;
  } while (off < opts.count);
}

void allReduceShmCma(Context& ctx, const AllReduceOptions& opts) {
  transport::ShmDomain& shm = *ctx.shm;
  const int n = ctx.size();
  const int r = ctx.rank();
  const size_t es = ctx.elemSize();
  auto* data = static_cast<uint8_t*>(opts.data);
  const uint64_t me = addrOf(data);
  shm.preferHugePages(data, opts.count * es);
  const int p = shm.arrive(shmDesc(ctx, ShmAlgo::Cma, opts.count), &me, 1, ctx.deadline, kWhat);
  std::vector<uint64_t> remote(n);
  for (int j = 0; j < n; ++j) remote[j] = shm.peerWord(j, p, 0);
  // Phase 1: reduce this rank's slice from everyone's (still unreduced) buffers.
  const Span mine = blockSpan(opts.count, n, r);
  std::vector<uint64_t> at(n);
  for (int j = 0; j < n; ++j) at[j] = remote[j] + mine.offset * es;
  cmaReduce(ctx, at.data(), data + mine.offset * es, data + mine.offset * es, mine.count,
            allReduceScale(ctx, opts));
  shm.sync(ctx.deadline, kWhat);
  // Phase 2: every slice is final in its owner's buffer; fetch the others.
  for (int j = 0; j < n; ++j) {
    if (j == r) continue;
    const Span s = blockSpan(opts.count, n, j);
    if (s.count > 0) shm.readPeer(j, remote[j] + s.offset * es, data + s.offset * es, s.count * es);
  }
  shm.sync(ctx.deadline, kWhat);  // peers have finished reading this rank's buffer
}

}  // namespace agentcomm::algorithms
