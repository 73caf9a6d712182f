#include "algorithms/ring_schedule.h"

namespace agentcomm::algorithms {

static int mod(int a, int n) { return ((a % n) + n) % n; }

Span blockSpan(size_t count, int n, int block) {
  const size_t base = count / static_cast<size_t>(n);
  const size_t extra = count % static_cast<size_t>(n);
  const size_t b = static_cast<size_t>(block);
  Span s;
  s.count = base + (b < extra ? 1 : 0);
  s.offset = b * base + (b < extra ? b : extra);
  return s;
}

RingStep reduceScatterStep(int rank, int n, int step) {
  return {mod(rank - step - 1, n), mod(rank - step - 2, n)};
}

RingStep allGatherStep(int rank, int n, int step) { return {mod(rank - step, n), mod(rank - step - 1, n)}; }

size_t numChunks(size_t count, size_t chunkElems) { return (count + chunkElems - 1) / chunkElems; }

Span chunkSpan(size_t count, size_t chunkElems, size_t chunk) {
  Span s;
  s.offset = chunk * chunkElems;
  s.count = s.offset >= count ? 0 : (count - s.offset < chunkElems ? count - s.offset : chunkElems);
  return s;
}

}  // namespace agentcomm::algorithms
