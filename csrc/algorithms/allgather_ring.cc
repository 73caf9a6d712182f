// All-gather of blocks that may differ in size (all_gather_v): the chunked ring
// (n-1 steps, (n-1)/n of the total per rank), or for small totals among many
// ranks Bruck's algorithm (ceil(log2 n) steps).
#include <cstring>
#include <vector>

#include "algorithms/algorithms.h"
#include "algorithms/shm_common.h"
#include "algorithms/ring_primitives.h"
#include "core/error.h"

namespace agentcomm::algorithms {

namespace {
constexpr uint64_t kPhaseBruck = 13;

// Bruck, Ho, Kipnis, Upfal and Weathersby (1997). This rank's scratch holds blocks
// in the order r, r+1, ..., r+n-1 (mod n), packed. At distance d = 1, 2, 4, ... it
// holds the first d; it sends its first min(d, n-d) to r-d and receives r+d's first
// min(d, n-d), which are blocks r+d, ... and land right after its own d. A final
// pass unrotates into the outputs.
void allGatherBruck(Context& ctx, const AllGatherOptions& opts) {
  const int n = ctx.size();
  const int r = ctx.rank();
  const size_t es = ctx.elemSize();
  std::vector<size_t> off(n + 1, 0);  // byte offset of position i (block (r+i) mod n) in the scratch
  for (int i = 0; i < n; ++i) off[i + 1] = off[i] + opts.counts[(r + i) % n] * es;
  uint8_t* packed = Context::scratch(0, off[n]);
  if (off[1] > 0) std::memcpy(packed, opts.input, off[1]);
  uint64_t step = 0;
  for (int d = 1; d < n; d *= 2, ++step) {
    const int cnt = d < n - d ? d : n - d;
    RecvHandle h = ctx.postRecv((r + d) % n, makeTag(kPhaseBruck, step, 0), packed + off[d], off[d + cnt] - off[d]);
    ctx.send((r - d + n) % n, makeTag(kPhaseBruck, step, 0), packed, off[cnt]);
    ctx.wait(h);
  }
  for (int i = 0; i < n; ++i)
    if (off[i + 1] > off[i]) std::memcpy(opts.outputs[(r + i) % n], packed + off[i], off[i + 1] - off[i]);
}
}  // namespace

void allGather(Context& ctx, const AllGatherOptions& opts) {
  const int n = ctx.size();
  const int r = ctx.rank();
  AC_CHECK(static_cast<int>(opts.outputs.size()) == n && static_cast<int>(opts.counts.size()) == n, InvalidArgument,
           "all_gather: need one output per rank");
  size_t total = 0;
  for (size_t c : opts.counts) total += c;
  if (runsHierarchical(ctx, "all_gather", total * ctx.elemSize(), true)) return allGatherHierarchical(ctx, opts);
  if (Path p = choosePath(ctx, "all_gather", total * ctx.elemSize()); p != Path::Tcp) return allGatherShm(ctx, opts, p);
  if (logStepApplies(total * ctx.elemSize(), n)) return allGatherBruck(ctx, opts);  // the whole result
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
