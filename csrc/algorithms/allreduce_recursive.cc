// Latency algorithm for many ranks: recursive doubling (Thakur, Rabenseifner
// and Gropp 2005), ceil(log2 n) exchange steps of the whole vector instead of
// the ring's 2(n-1) steps or the direct exchange's n-1 messages per rank.
//
// Steps, with p the largest power of two <= n and e = n - p "extra" ranks:
//   fold:    rank p+i (i < e) sends its vector to rank i, which combines it;
//   double:  for k = 1, 2, 4, .. < p, rank r < p swaps vectors with r XOR k and
//            combines (mine op theirs);
//   unfold:  rank i (i < e) sends the result back to rank p+i.
// Bytes per rank: log2(p)*S (+S for the fold and unfold pairs); hops:
// log2(p) (+2 with extras).
//
// Invariant: every rank ends with bitwise the same result. In each doubling
// step both partners combine the same two vectors, and every combining op is
// commutative bit for bit (IEEE addition and multiplication, min, max, the
// bitwise ops), so x op y on one side equals y op x on the other; the extras
// receive a copy. The final scale (AVG, PREMUL_SUM) is applied in the last
// combine, identically on both partners.
#include <cstring>

#include "algorithms/algorithms.h"
#include "algorithms/ring_schedule.h"
#include "kernels/kernels.h"

namespace agentcomm::algorithms {

namespace {
constexpr uint64_t kPhaseRecursive = 12;
constexpr uint64_t kStepFold = 0xfffffe;
constexpr uint64_t kStepUnfold = 0xffffff;
}  // namespace

void allReduceRecursiveDoubling(Context& ctx, const AllReduceOptions& opts) {
  const int n = ctx.size();
  const int r = ctx.rank();
  const size_t bytes = opts.count * ctx.elemSize();
  const FinalScale scale = allReduceScale(ctx, opts);
  const ReduceOp op = combiningOp(ctx.op);
  int p = 1;
  while (p * 2 <= n) p *= 2;
  const int extras = n - p;
  if (n == 1 || bytes == 0) {  // a local scale; zero bytes exchange nothing, as in the ring
    kernels::applyScale(opts.data, opts.data, opts.count, ctx.dtype, scale);
    return;
  }
  if (r >= p) {  // an extra rank: hand the vector to its partner, take the result back
    const int partner = r - p;
    RecvHandle back = ctx.postRecv(partner, makeTag(kPhaseRecursive, kStepUnfold, 0), opts.data, bytes);
    ctx.send(partner, makeTag(kPhaseRecursive, kStepFold, 0), opts.data, bytes);
    ctx.wait(back);
    return;
  }
  uint8_t* theirs = Context::scratch(0, bytes);
  if (r < extras) {
    RecvHandle h = ctx.postRecv(r + p, makeTag(kPhaseRecursive, kStepFold, 0), theirs, bytes);
    ctx.wait(h);
    kernels::reduce(opts.data, opts.data, theirs, opts.count, ctx.dtype, op, FinalScale::none());
  }
  uint64_t step = 0;
  for (int k = 1; k < p; k *= 2, ++step) {
    const int partner = r ^ k;
    RecvHandle h = ctx.postRecv(partner, makeTag(kPhaseRecursive, step, 0), theirs, bytes);
    ctx.send(partner, makeTag(kPhaseRecursive, step, 0), opts.data, bytes);
    ctx.wait(h);
    kernels::reduce(opts.data, opts.data, theirs, opts.count, ctx.dtype, op,
                    k * 2 == p ? scale : FinalScale::none());
  }
  if (r < extras) ctx.send(r + p, makeTag(kPhaseRecursive, kStepUnfold, 0), opts.data, bytes);
}

}  // namespace agentcomm::algorithms
