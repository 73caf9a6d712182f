// Dissemination barrier: in round k rank r signals r + 2^k and waits for
// r - 2^k. After ceil(log2 n) rounds every rank has transitively heard from
// every other, so nobody leaves before everybody arrived.
#include "algorithms/algorithms.h"
#include "algorithms/shm_common.h"
#include "algorithms/ring_schedule.h"

namespace agentcomm::algorithms {

namespace {
constexpr uint64_t kPhaseBarrier = 9;
}

void barrier(Context& ctx) {
  const int n = ctx.size();
  const int r = ctx.rank();
  if (choosePath(ctx, "barrier", 0) != Path::Tcp) return barrierShm(ctx);
  for (int k = 0, dist = 1; dist < n; ++k, dist <<= 1) {
    auto h = ctx.postRecv((r - dist + n) % n, makeTag(kPhaseBarrier, k, 0), nullptr, 0);
    ctx.send((r + dist) % n, makeTag(kPhaseBarrier, k, 0), nullptr, 0);
    ctx.wait(h);
  }
}

}  // namespace agentcomm::algorithms
