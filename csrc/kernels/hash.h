#pragma once
// The hash streams behind every random choice the compression kernels make
// (stochastic rounding, DGC's sample, random-k indices). One definition for
// the CPU kernels and their CUDA twins: a rank on a GPU and a rank on a CPU
// must draw the same numbers for the same seed.
#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define AC_HOST_DEVICE __host__ __device__
#else
#define AC_HOST_DEVICE
#endif

namespace agentcomm::kernels::hash {

// Stateless 32-bit mixer (Chris Wellons' lowbias32): the random stream of
// element i is mix32(i * golden + seed32), so any slice can be encoded alone
// and the loops vectorize.
AC_HOST_DEVICE inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

AC_HOST_DEVICE inline uint64_t mix64(uint64_t x) {  // splitmix64's finalizer
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

AC_HOST_DEVICE inline uint32_t seed32(uint64_t seed) {
  return static_cast<uint32_t>(mix64(seed ^ 0x9e3779b97f4a7c15ull));
}

// 32 random bits for elements 2p and 2p + 1 (16 each) of a quantized buffer.
AC_HOST_DEVICE inline uint32_t pairBits(uint32_t pair, uint32_t s32) { return mix32(pair * 0x9e3779b9u + s32); }

// DGC's stratified sample: the element drawn from stratum j of `stride` elements.
AC_HOST_DEVICE inline size_t sampleIndex(size_t j, size_t stride, uint32_t s32) {
  return j * stride + ((static_cast<uint64_t>(mix32(static_cast<uint32_t>(j) * 0x9e3779b9u + s32)) * stride) >> 32);
}

// Random-k: the index drawn from stratum j of k equal strata of [0, n).
AC_HOST_DEVICE inline uint32_t randomkIndex(uint64_t seed, uint64_t n, uint64_t k, uint64_t j) {
  const uint64_t lo = j * n / k;
  const uint64_t hi = (j + 1) * n / k;
  const uint64_t r = mix64(seed * 0x9e3779b97f4a7c15ull + j + 1);
  return static_cast<uint32_t>(lo + (((r >> 32) * (hi - lo)) >> 32));
}

}  // namespace agentcomm::kernels::hash
