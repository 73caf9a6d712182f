// Ring all-gather of blocks that may differ in size (all_gather_v).
#include <cstring>

#include "algorithms/algorithms.h"
#include "algorithms/shm_common.h"
#include "algorithms/ring_primitives.h"
#include "core/error.h"

namespace agentcomm::algorithms {

void allGather(Context& ctx, const AllGatherOptions& opts) {
  const int n = ctx.size();
  const int r = ctx.rank();
  AC_CHECK(static_cast<int>(opts.outputs.size()) == n && static_cast<int>(opts.counts.size()) == n, InvalidArgument,
           "all_gather: need one output per rank");
  size_t total = 0;
  for (size_t c : opts.counts) total += c;
  if (Path p = choosePath(ctx, "all_gather", total * ctx.elemSize()); p != Path::Tcp) return allGatherShm(ctx, opts, p);
  std::vector<uint8_t*> blocks(n);
  for (int k = 0; k < n; ++k) blocks[k] = static_cast<uint8_t*>(opts.outputs[k]);
  if (opts.input != opts.outputs[r] && opts.counts[r] > 0)
    std::memmove(blocks[r], opts.input, opts.counts[r] * ctx.elemSize());
  if (n == 1) return;
  auto handles = detail::postAllGather(ctx, blocks, opts.counts);
  for (size_t c = 0; c < numChunks(opts.counts[r], ctx.chunkElems()); ++c)
    detail::sendAllGatherChunk(ctx, blocks, opts.counts, 0, r, c);
  detail::finishAllGather(ctx, blocks, opts.counts, handles);
}

}  // namespace agentcomm::algorithms
