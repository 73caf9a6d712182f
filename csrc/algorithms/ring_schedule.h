#pragma once
// The ring schedules as pure functions of (rank, size, step), so they can be
// unit-tested without a transport.
//
// Reduce-scatter convention: at step s (0 <= s < n-1) rank r sends block
// (r-s-1) mod n to its right neighbour and receives block (r-s-2) mod n from
// its left neighbour, adding its own contribution. Block k therefore starts at
// rank k+1 and travels right, and after n-1 steps rank r holds the complete
// reduction of block r (the reduce_scatter result rank r must own).
//
// All-gather convention: at step s rank r sends block (r-s) mod n (its own at
// step 0, then whatever it just received) and receives block (r-s-1) mod n.
#include <cstddef>
#include <cstdint>

namespace agentcomm::algorithms {

struct Span {
  size_t offset = 0;  // elements
  size_t count = 0;   // elements
};

struct RingStep {
  int sendBlock = 0;
  int recvBlock = 0;
};

// Splits `count` elements into n blocks; the first count % n blocks get one extra element.
Span blockSpan(size_t count, int n, int block);
RingStep reduceScatterStep(int rank, int n, int step);
RingStep allGatherStep(int rank, int n, int step);
// A block of `count` elements is moved in chunks of at most chunkElems (>= 1) elements.
size_t numChunks(size_t count, size_t chunkElems);
Span chunkSpan(size_t count, size_t chunkElems, size_t chunk);

// Message tags inside one collective: phase (8 bits), step (24 bits), chunk (32 bits).
constexpr uint64_t makeTag(uint64_t phase, uint64_t step, uint64_t chunk) {
  return (phase << 56) | ((step & 0xffffffu) << 32) | (chunk & 0xffffffffu);
}

}  // namespace agentcomm::algorithms
