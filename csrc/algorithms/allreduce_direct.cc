// Latency algorithm: one exchange step, then a local reduction of all n
// contributions in rank order 0..n-1, so every rank computes bitwise the same
// result whatever order the messages arrived in.
#include <cstring>
#include <vector>

#include "algorithms/algorithms.h"
#include "algorithms/ring_schedule.h"
#include "kernels/kernels.h"

namespace agentcomm::algorithms {

namespace {
constexpr uint64_t kPhaseDirect = 5;
}

void allReduceDirect(Context& ctx, const AllReduceOptions& opts) {
  const int n = ctx.size();
  const int r = ctx.rank();
  const size_t bytes = opts.count * ctx.elemSize();
  const FinalScale scale = allReduceScale(ctx, opts);
  if (n == 1) {
    kernels::applyScale(opts.data, opts.data, opts.count, ctx.dtype, scale);
    return;
  }
  uint8_t* all = Context::scratch(0, bytes * n);
  auto slot = [&](int i) { return all + bytes * i; };
  std::vector<RecvHandle> handles(n);
  for (int p = 0; p < n; ++p)
    if (p != r) handles[p] = ctx.postRecv(p, makeTag(kPhaseDirect, 0, 0), slot(p), bytes);
  if (bytes > 0) std::memcpy(slot(r), opts.data, bytes);
  for (int k = 1; k < n; ++k) ctx.send((r + k) % n, makeTag(kPhaseDirect, 0, 0), slot(r), bytes);
  for (int p = 0; p < n; ++p)
    if (p != r) ctx.wait(handles[p]);
  const ReduceOp op = combiningOp(ctx.op);
  kernels::reduce(opts.data, slot(0), slot(1), opts.count, ctx.dtype, op, n == 2 ? scale : FinalScale::none());
  for (int i = 2; i < n; ++i)
    kernels::reduce(opts.data, opts.data, slot(i), opts.count, ctx.dtype, op, i == n - 1 ? scale : FinalScale::none());
}

}  // namespace agentcomm::algorithms
