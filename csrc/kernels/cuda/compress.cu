// CUDA compression kernels: block quantization with error feedback fused (a
// warp per quantization block of up to 256, a thread block per one of up to
// 2048; data held in registers: one read, one write), top-k by radix
// selection, DGC's sampled top-k, random-k. Contracts and bit-exact
// arithmetic: the CPU twins in kernels/cpu/compress.cc (read that file's
// comments for the why).
//
// Top-k on the device, in (magnitude key, lower index first) order as on the
// CPU, with no host round trip before the end: a 4096-bin histogram of the
// top 12 bits of the keys (shared-memory bins, a resident grid, fused with
// the error-feedback add) and a block-wide scan for the boundary bin; a second
// pass collects that bin's elements (block-staged appends) while
// histogramming their next 12 bits; a second scan, a filter of the candidates
// down to the 24-bit boundary bin (tens of elements on smooth data), and one
// block's radix select over the remaining bits and the index give the k-th
// largest (key, ~index) on the device; then every element at or above it is
// written in index order, tile by tile (the collect pass counted each tile's
// elements above the boundary bin, a scan places the tiles): indices come out
// ascending without a sort. Three passes over the data in all, one host wait
// at the end. If a candidate buffer overflows (many equal keys), the older path
// runs: the boundary bin's size read back, its candidates radix-sorted.
#include <algorithm>
#include <climits>
#include <vector>

#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include "kernels/compress.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels_cuda.h"

namespace agentcomm::kernels::cuda {

using namespace detail;

namespace {

constexpr int kBins = 4096;
constexpr int kShift = 19;   // level 1: key bits 30..19
constexpr int kShift2 = 7;   // level 2: key bits 18..7

__host__ __device__ inline size_t blockCodeBytes(size_t m, int bits) { return (m * static_cast<size_t>(bits) + 7) / 8; }

// Stream-ordered scratch, freed (stream-ordered) when it goes out of scope.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer(size_t count, cudaStream_t st) : st_(st) {
    if (count) AC_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&ptr_), count * sizeof(T), st));
  }
  ~DeviceBuffer() {
    if (ptr_) cudaFreeAsync(ptr_, st_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get() const { return ptr_; }

 private:
  T* ptr_ = nullptr;
  cudaStream_t st_;
};

inline bool aligned(const void* p, size_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }

int itemsForCub(size_t n) {
  AC_CHECK(n <= static_cast<size_t>(INT_MAX), InvalidArgument, "CUDA top-k: ", n, " candidates exceed a sort's limit");
  return static_cast<int>(n);
}

// Sorts by bits [0, endBit) of the keys (all of them by default).
template <typename K>
void sortKeys(const K* in, K* out, size_t n, bool descending, cudaStream_t st, int endBit = int(sizeof(K) * 8)) {
  if (n == 0) return;
  size_t temp = 0;
  const int items = itemsForCub(n);
  if (descending)
    AC_CUDA_CHECK(cub::DeviceRadixSort::SortKeysDescending(nullptr, temp, in, out, items, 0, endBit, st));
  else
    AC_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(nullptr, temp, in, out, items, 0, endBit, st));
  DeviceBuffer<uint8_t> scratch(temp, st);
  if (descending)
    AC_CUDA_CHECK(
        cub::DeviceRadixSort::SortKeysDescending(scratch.get(), temp, in, out, items, 0, endBit, st));
  else
    AC_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(scratch.get(), temp, in, out, items, 0, endBit, st));
}

// ---- quantization -------------------------------------------------------------

// u in [0, 1) from 16 bits of a pair's hash: the CPU's float(h16) * 2^-16,
// built from the bits (1 + h16 * 2^-16, minus 1: both exact) instead of an
// int-to-float conversion, which runs at an eighth of the FP32 rate.
__device__ __forceinline__ float uniformLow(uint32_t h) {
  return __uint_as_float(0x3f800000u | ((h & 0xffffu) << 7)) - 1.0f;
}
__device__ __forceinline__ float uniformHigh(uint32_t h) {
  return __uint_as_float(0x3f800000u | ((h >> 16) << 7)) - 1.0f;
}

// The CPU's q = clamp(floor(v * inv + u), -L, L), with one float-to-int
// conversion that rounds down (-fmad=false: the multiply and the add are
// rounded separately, as on the CPU). With error feedback v -= q * step.
template <int Bits>
__device__ __forceinline__ int roundStochastic(float& v, float inv, float step, float u, bool ef) {
  constexpr int L = Bits == 8 ? 127 : 7;
  const int q = min(max(__float2int_rd(v * inv + u), -L), L);
  if (ef) v -= static_cast<float>(q) * step;
  return q;
}

// One chunk (8 consecutive elements of a block; padding past the block's end
// is 0): its codes, stored whole when `whole` (vector stores where `vec`).
// Padding encodes as q = 0 (floor(0 + u) = 0), which is what the 4-bit
// format's padding nibble must hold, so only stores look at `valid`.
template <int Bits>
__device__ __forceinline__ void encodeChunk(float (&v)[8], unsigned c, unsigned valid, uint32_t pair0, uint32_t s32,
                                            float s, float inv, float step, bool zeroCodes, bool zeroData, bool ef,
                                            bool vec, uint8_t* out) {
  if constexpr (Bits == 1) {
    unsigned byte = 0;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      byte |= static_cast<unsigned>(v[e] >= 0.0f) << e;
      if (ef) v[e] -= v[e] >= 0.0f ? s : -s;
    }
    out[c] = static_cast<uint8_t>(byte & ((1u << valid) - 1u));  // a partial byte's missing bits are 0
  } else {
    int q[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (!zeroCodes) {
#pragma unroll
      for (int p = 0; p < 4; ++p) {
        const uint32_t h = hash::pairBits(pair0 + 4 * c + p, s32);
        q[2 * p] = roundStochastic<Bits>(v[2 * p], inv, step, uniformLow(h), ef);
        q[2 * p + 1] = roundStochastic<Bits>(v[2 * p + 1], inv, step, uniformHigh(h), ef);
      }
    } else if (zeroData) {
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = 0.0f;
    }
    const bool whole = valid == 8;
    if constexpr (Bits == 8) {
      uint32_t w[2];
#pragma unroll
      for (int h = 0; h < 2; ++h)
        w[h] = (q[4 * h] & 0xff) | (q[4 * h + 1] & 0xff) << 8 | (q[4 * h + 2] & 0xff) << 16 |
               static_cast<uint32_t>(q[4 * h + 3] & 0xff) << 24;
      if (vec && whole) {
        *reinterpret_cast<uint2*>(out + 8 * c) = make_uint2(w[0], w[1]);
      } else {
        for (unsigned e = 0; e < valid; ++e) out[8 * c + e] = static_cast<uint8_t>(w[e / 4] >> (8 * (e % 4)));
      }
    } else {
      uint32_t w = 0;
#pragma unroll
      for (int e = 0; e < 8; ++e) w |= static_cast<uint32_t>(q[e] + 8) << (4 * e);
      if (vec && whole) {
        *reinterpret_cast<uint32_t*>(out + 4 * c) = w;
      } else {
        for (unsigned p = 0; 2 * p < valid; ++p) out[4 * c + p] = static_cast<uint8_t>(w >> (8 * p));
      }
    }
  }
}

// Loads chunk c of a block (elements 8c..8c+7 of x, plus add where given;
// padding past the block's end m is 0).
__device__ __forceinline__ void loadChunk(float (&v)[8], const float* x, const float* a, unsigned c, unsigned m,
                                          bool vec) {
  if (vec && 8 * c + 8 <= m) {
    const float4* x4 = reinterpret_cast<const float4*>(x + 8 * c);
    float4 lo = x4[0], hi = x4[1];
    if (a) {
      const float4* a4 = reinterpret_cast<const float4*>(a + 8 * c);
      const float4 alo = a4[0], ahi = a4[1];
      lo = make_float4(lo.x + alo.x, lo.y + alo.y, lo.z + alo.z, lo.w + alo.w);
      hi = make_float4(hi.x + ahi.x, hi.y + ahi.y, hi.z + ahi.z, hi.w + ahi.w);
    }
    v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w;
    v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const unsigned j = 8 * c + e;
      v[e] = j < m ? (a ? x[j] + a[j] : x[j]) : 0.0f;
    }
  }
}

// The codes of chunk c (encodeChunk) and, with error feedback or a fused
// add, the chunk written back.
template <int Bits>
__device__ __forceinline__ void finishChunk(float (&v)[8], float* x, unsigned c, unsigned m, uint32_t pair0,
                                            uint32_t s32, float s, float inv, float step, bool zeroCodes,
                                            bool zeroData, bool ef, bool writeBack, bool vec, uint8_t* out) {
  const unsigned valid = m - 8 * c < 8 ? m - 8 * c : 8;
  encodeChunk<Bits>(v, c, valid, pair0, s32, s, inv, step, zeroCodes, zeroData, ef, vec, out);
  if (!writeBack) return;
  if (vec && valid == 8) {
    float4* x4 = reinterpret_cast<float4*>(x + 8 * c);
    x4[0] = make_float4(v[0], v[1], v[2], v[3]);
    x4[1] = make_float4(v[4], v[5], v[6], v[7]);
  } else {
    for (unsigned e = 0; e < valid; ++e) x[8 * c + e] = v[e];
  }
}

// A block's scale from its max magnitude key (8/4-bit): NaN / inf make the
// scale decode the block as NaN and restart the residual; zeros or tiny
// values (L / amax overflows) get scale 0 and the residual keeps them.
struct BlockScale {
  float stored, s, inv, step;
  bool zeroCodes, zeroData;
};
template <int Bits>
__device__ __forceinline__ BlockScale scaleFromMax(unsigned maxKey, bool ef) {
  constexpr float L = Bits == 8 ? 127.0f : 7.0f;
  const float amax = __uint_as_float(maxKey);
  if (!isfinite(amax) || !isfinite(L / amax))
    return {isfinite(amax) ? 0.0f : amax, 0.0f, 0.0f, 0.0f, true, ef && !isfinite(amax)};
  return {amax, amax, L / amax, amax / L, false, false};
}

// The 1-bit mean |x| of a block in the CPU's order (see addAndAbsSum), by one
// warp from a shared-memory copy of |x|: lane t's running sum over j = 32i + t,
// the tree by xor-shuffles (every lane ends with the same sum), the tail.
__device__ __forceinline__ float meanAbs(const float* absx, unsigned m, unsigned lane) {
  float part = 0.0f;
  for (unsigned i = 0; i < m / 32; ++i) part += absx[32 * i + lane];
#pragma unroll
  for (int w = 16; w > 0; w /= 2) part += __shfl_xor_sync(0xffffffffu, part, w);
  for (unsigned j = m / 32 * 32; j < m; ++j) part += absx[j];
  return part / static_cast<float>(m);
}

__device__ __forceinline__ void storeAbs(float* absx, unsigned c, const float (&v)[8]) {
  // The whole chunk, padding (0) included: it lies inside the block's floats.
  float4* a4 = reinterpret_cast<float4*>(absx + 8 * c);
  a4[0] = make_float4(fabsf(v[0]), fabsf(v[1]), fabsf(v[2]), fabsf(v[3]));
  a4[1] = make_float4(fabsf(v[4]), fabsf(v[5]), fabsf(v[6]), fabsf(v[7]));
}

// Quantization block blk as one thread sees it: where it starts, its length
// and whether chunk c (this thread's) exists; the chunk is loaded into v
// (zeros where it does not exist, padding 0).
struct QuantBlock {
  size_t b0;
  unsigned m;
  bool mine;
  float* x;
};
__device__ __forceinline__ QuantBlock loadQuantBlock(float (&v)[8], float* data, const float* add, size_t n,
                                                     size_t block, size_t blk, unsigned c, bool vec) {
  QuantBlock q;
  q.b0 = blk * block;
  q.m = static_cast<unsigned>(n - q.b0 < block ? n - q.b0 : block);
  q.mine = c < (q.m + 7) / 8;
  q.x = data + q.b0;
#pragma unroll
  for (int e = 0; e < 8; ++e) v[e] = 0.0f;
  if (q.mine) loadChunk(v, q.x, add ? add + q.b0 : nullptr, c, q.m, vec);
  return q;
}

// Blocks of up to 256 elements: one warp per quantization block, each lane
// one chunk of 8 consecutive elements in registers, so the data is read once
// and (with error feedback or a fused add) written once. Bits is a template
// parameter so each width carries only its own code; the launch bounds hold
// it to 40 registers (12 blocks of 4 warps per SM: occupancy is what hides
// the load latency here). `vec`: data/add 16-byte and codes 8-byte aligned.
template <int Bits>
__global__ void __launch_bounds__(128, 12)
    quantizeWarpKernel(float* data, const float* add, size_t n, size_t block, uint32_t s32, uint8_t* codes,
                       float* scales, bool ef, bool vec) {
  extern __shared__ float4 absShared[];  // Bits == 1: `block` floats per warp
  const unsigned lane = threadIdx.x & 31;
  const unsigned warp = threadIdx.x >> 5;
  const size_t warps = static_cast<size_t>(gridDim.x) * (blockDim.x >> 5);
  float* absx = reinterpret_cast<float*>(absShared) + static_cast<size_t>(warp) * block;
  const size_t nb = (n + block - 1) / block;
  const size_t blockBytes = blockCodeBytes(block, Bits);
  for (size_t blk = static_cast<size_t>(blockIdx.x) * (blockDim.x >> 5) + warp; blk < nb; blk += warps) {
    float v[8];
    const auto [b0, m, mine, x] = loadQuantBlock(v, data, add, n, block, blk, lane, vec);  // m <= 256
    BlockScale sc{};
    if constexpr (Bits == 1) {
      if (mine) storeAbs(absx, lane, v);
      __syncwarp();
      sc.s = meanAbs(absx, m, lane);
      sc.stored = sc.s;
      __syncwarp();  // absx is rewritten by the next block
    } else {
      unsigned mx = 0;
#pragma unroll
      for (int e = 0; e < 8; ++e) mx = max(mx, magnitudeKey(v[e]));  // padding is 0: never the max
      sc = scaleFromMax<Bits>(__reduce_max_sync(0xffffffffu, mx), ef);
    }
    if (lane == 0) scales[blk] = sc.stored;
    if (mine)
      finishChunk<Bits>(v, x, lane, m, static_cast<uint32_t>(b0 / 2), s32, sc.s, sc.inv, sc.step, sc.zeroCodes,
                        sc.zeroData, ef, add || ef, vec, codes + blk * blockBytes);
  }
}

// Blocks of 257..2048 elements: one thread block per quantization block,
// warp w's lanes holding chunks 32w + lane in registers (read once, written
// once, ~40 registers: holding a 2048 block in one warp took 127 and ran at
// 48-67% of the copy rate). The max goes through shared memory (an exact
// max in any order); the 1-bit mean is warp 0's, in the CPU's order.
constexpr unsigned kMaxSegments = 8;  // 2048 / 256
template <int Bits>
__global__ void quantizeSegmentsKernel(float* data, const float* add, size_t n, size_t block, uint32_t s32,
                                       uint8_t* codes, float* scales, bool ef, bool vec) {
  __shared__ float4 absShared[Bits == 1 ? 2048 / 4 : 1];
  __shared__ unsigned warpMax[kMaxSegments];
  __shared__ float meanShared;
  float* absx = reinterpret_cast<float*>(absShared);
  const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const unsigned c = threadIdx.x;  // this thread's chunk
  const size_t nb = (n + block - 1) / block;
  const size_t blockBytes = blockCodeBytes(block, Bits);
  for (size_t blk = blockIdx.x; blk < nb; blk += gridDim.x) {
    float v[8];
    const auto [b0, m, mine, x] = loadQuantBlock(v, data, add, n, block, blk, c, vec);  // m <= 2048
    BlockScale sc{};
    if constexpr (Bits == 1) {
      if (mine) storeAbs(absx, c, v);
      __syncthreads();
      if (warp == 0) {
        const float mean = meanAbs(absx, m, lane);
        if (lane == 0) meanShared = mean;
      }
      __syncthreads();
      sc.s = sc.stored = meanShared;
    } else {
      unsigned mx = 0;
#pragma unroll
      for (int e = 0; e < 8; ++e) mx = max(mx, magnitudeKey(v[e]));
      mx = __reduce_max_sync(0xffffffffu, mx);
      if (lane == 0) warpMax[warp] = mx;
      __syncthreads();
      for (unsigned w = 0; w < (blockDim.x >> 5); ++w) mx = max(mx, warpMax[w]);
      sc = scaleFromMax<Bits>(mx, ef);
    }
    if (threadIdx.x == 0) scales[blk] = sc.stored;
    if (mine)
      finishChunk<Bits>(v, x, c, m, static_cast<uint32_t>(b0 / 2), s32, sc.s, sc.inv, sc.step, sc.zeroCodes,
                        sc.zeroData, ef, add || ef, vec, codes + blk * blockBytes);
    __syncthreads();  // shared memory is rewritten by the next block
  }
}

// Blocks larger than 2048: one thread block per quantization block, the data
// re-read from cache between the max and the encoding.
__global__ void quantizeKernel(float* data, const float* add, size_t n, int bits, size_t block, uint32_t s32,
                               uint8_t* codes, float* scales, bool ef) {
  __shared__ unsigned maxKey;
  __shared__ float shared;
  const size_t nb = (n + block - 1) / block;
  const float L = bits == 8 ? 127.0f : 7.0f;
  for (size_t blk = blockIdx.x; blk < nb; blk += gridDim.x) {
    const size_t b0 = blk * block;
    const size_t m = n - b0 < block ? n - b0 : block;
    float* x = data + b0;
    uint8_t* out = codes + blk * blockCodeBytes(block, bits);
    if (add)
      for (size_t j = threadIdx.x; j < m; j += blockDim.x) x[j] = x[j] + add[b0 + j];
    if (threadIdx.x == 0) maxKey = 0;
    __syncthreads();
    if (bits == 1) {
      // mean |x| summed in the CPU's order (addAndAbsSum): 32 running sums
      // over j = 32i + t, a pairwise tree, then the tail.
      if (threadIdx.x < 32) {
        float p = 0.0f;
        for (size_t i = 0; i < m / 32; ++i) p += fabsf(x[32 * i + threadIdx.x]);
        for (int w = 16; w > 0; w /= 2) p += __shfl_xor_sync(0xffffffffu, p, w);
        for (size_t j = m / 32 * 32; j < m; ++j) p += fabsf(x[j]);
        if (threadIdx.x == 0) {
          shared = p / static_cast<float>(m);
          scales[blk] = shared;
        }
      }
      __syncthreads();
      const float s = shared;
      for (size_t byte = threadIdx.x; byte < (m + 7) / 8; byte += blockDim.x) {
        unsigned v = 0;
        for (int t = 0; t < 8 && byte * 8 + t < m; ++t) v |= static_cast<unsigned>(x[byte * 8 + t] >= 0.0f) << t;
        out[byte] = static_cast<uint8_t>(v);
        if (ef)
          for (int t = 0; t < 8 && byte * 8 + t < m; ++t) {
            float& xv = x[byte * 8 + t];
            xv -= xv >= 0.0f ? s : -s;
          }
      }
      __syncthreads();
      continue;
    }
    for (size_t j = threadIdx.x; j < m; j += blockDim.x) atomicMax(&maxKey, magnitudeKey(x[j]));
    __syncthreads();
    const float amax = __uint_as_float(maxKey);
    const size_t pairs = (m + 1) / 2;
    if (!isfinite(amax) || !isfinite(L / amax)) {
      // NaN / inf: the scale decodes the block as NaN and the residual restarts.
      // Zeros or tiny values (L / amax overflows): scale 0, the residual keeps them.
      const bool bad = !isfinite(amax);
      if (threadIdx.x == 0) scales[blk] = bad ? amax : 0.0f;
      for (size_t p = threadIdx.x; p < pairs; p += blockDim.x) {  // the codes of q = 0
        if (bits == 8) {
          out[2 * p] = 0;
          if (2 * p + 1 < m) out[2 * p + 1] = 0;
        } else {
          out[p] = 0x88;
        }
      }
      if (bad && ef)
        for (size_t j = threadIdx.x; j < m; j += blockDim.x) x[j] = 0.0f;
    } else {
      if (threadIdx.x == 0) scales[blk] = amax;
      const float inv = L / amax;
      const float step = amax / L;
      const uint32_t firstPair = static_cast<uint32_t>(b0 / 2);
      for (size_t p = threadIdx.x; p < pairs; p += blockDim.x) {
        const uint32_t h = hash::pairBits(firstPair + static_cast<uint32_t>(p), s32);
        int q[2] = {0, 0};
        for (int e = 0; e < 2; ++e) {
          const size_t j = 2 * p + e;
          if (j >= m) break;
          const float u = static_cast<float>(e ? (h >> 16) : (h & 0xffffu)) * (1.0f / 65536.0f);
          float r = floorf(x[j] * inv + u);
          r = r > L ? L : r;
          r = r < -L ? -L : r;
          q[e] = static_cast<int>(r);
          if (ef) x[j] -= r * step;
        }
        if (bits == 8) {
          out[2 * p] = static_cast<uint8_t>(static_cast<int8_t>(q[0]));
          if (2 * p + 1 < m) out[2 * p + 1] = static_cast<uint8_t>(static_cast<int8_t>(q[1]));
        } else {
          const unsigned hi = 2 * p + 1 < m ? static_cast<unsigned>(q[1] + 8) : 8u;
          out[p] = static_cast<uint8_t>(static_cast<unsigned>(q[0] + 8) | (hi << 4));
        }
      }
    }
    __syncthreads();
  }
}

// One thread per quad of 4 consecutive elements (block % 8 == 0, so a quad
// never straddles two blocks, and quad q's codes start at bit 4q * Bits of
// the code stream: full blocks are whole bytes): codes of 4 or 2 bytes or a
// nibble, one scale, one 16-byte store, so a warp's store covers 512
// contiguous bytes. (A thread per chunk of 8, with two 16-byte stores 32 bytes
// apart, used half of every sector per store instruction: 1-bit decoding ran
// at 62% of the copy rate.) `vec`: out 16-byte and codes 8-byte aligned, so
// whole quads use vector accesses; a partial last quad goes element by
// element. `narrow`: element indices fit 32 bits (a 32-bit block division).
template <int Bits>
__global__ void dequantizeKernel(const uint8_t* __restrict__ codes, const float* __restrict__ scales, size_t n,
                                 size_t block, float alpha, bool accumulate, float* __restrict__ out, bool vec,
                                 bool narrow) {
  const size_t quads = (n + 3) / 4;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t q = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < quads; q += stride) {
    const size_t i0 = 4 * q;
    const size_t blk = narrow ? static_cast<uint32_t>(i0) / static_cast<uint32_t>(block) : i0 / block;
    const float s = scales[blk];
    // As the CPU rounds them: s / L * alpha (1-bit: s * alpha).
    const float step = Bits == 8 ? s / 127.0f * alpha : Bits == 4 ? s / 7.0f * alpha : s * alpha;
    const bool whole = i0 + 4 <= n;
    const unsigned avail = whole ? 4u : static_cast<unsigned>(n - i0);
    uint32_t w;  // the quad's codes, element e at bit e * Bits
    if constexpr (Bits == 8) {
      if (vec && whole) {
        w = *reinterpret_cast<const uint32_t*>(codes + 4 * q);
      } else {
        w = 0;
        for (unsigned b = 0; b < avail; ++b) w |= static_cast<uint32_t>(codes[4 * q + b]) << (8 * b);
      }
    } else if constexpr (Bits == 4) {
      if (vec && whole) {
        w = *reinterpret_cast<const uint16_t*>(codes + 2 * q);
      } else {
        w = codes[2 * q];
        if (avail > 2) w |= static_cast<uint32_t>(codes[2 * q + 1]) << 8;
      }
    } else {
      w = static_cast<uint32_t>(codes[q / 2]) >> (4 * (q & 1));
    }
    float d[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if constexpr (Bits == 8)
        d[e] = static_cast<float>(static_cast<int8_t>(w >> (8 * e))) * step;
      else if constexpr (Bits == 4)
        d[e] = static_cast<float>(static_cast<int>((w >> (4 * e)) & 0xfu) - 8) * step;
      else
        d[e] = ((w >> e) & 1u ? 1.0f : -1.0f) * step;
    }
    float* o = out + i0;
    if (vec && whole) {
      float4* o4 = reinterpret_cast<float4*>(o);
      if (accumulate) {
        const float4 a = *o4;
        d[0] = a.x + d[0], d[1] = a.y + d[1], d[2] = a.z + d[2], d[3] = a.w + d[3];
      }
      *o4 = make_float4(d[0], d[1], d[2], d[3]);
    } else {
#pragma unroll
      for (unsigned e = 0; e < 4; ++e)
        if (e < avail) o[e] = accumulate ? o[e] + d[e] : d[e];
    }
  }
}

// ---- top-k ----------------------------------------------------------------------

__global__ void addKernel(float* data, const float* add, size_t n) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    data[i] = data[i] + add[i];
}

// A grid that fills the device once (blocks loop over the data): kernels
// with per-block setup (the shared histogram) pay it a few hundred times,
// not once per 256 elements.
unsigned residentGrid(int blocksPerSm) {
  static thread_local int dev = -1, sms = 0;
  int d = 0;
  AC_CUDA_CHECK(cudaGetDevice(&d));
  if (d != dev) {
    AC_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, d));
    dev = d;
  }
  return static_cast<unsigned>(sms * blocksPerSm);
}

// Calls f(i, x) for every element i of data, x = data[i] (+ add[i], written
// back when add is set), in steps that every thread of the block takes
// together (blocks of a resident grid stride over the data), and step()
// after each, block-wide. `vec`: data and add 16-byte aligned (float4 loads,
// four elements per thread and step).
template <typename F, typename Step>
__device__ inline void forEachElement(float* data, const float* add, size_t n, bool vec, F&& f, Step&& step) {
  const size_t per = vec ? 4 : 1;
  const size_t units = n / per;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t u0 = static_cast<size_t>(blockIdx.x) * blockDim.x; u0 < units; u0 += stride) {
    const size_t u = u0 + threadIdx.x;
    if (u < units) {
      if (vec) {
        float4 v = reinterpret_cast<const float4*>(data)[u];
        if (add) {
          const float4 a = reinterpret_cast<const float4*>(add)[u];
          v.x = v.x + a.x;
          v.y = v.y + a.y;
          v.z = v.z + a.z;
          v.w = v.w + a.w;
          reinterpret_cast<float4*>(data)[u] = v;
        }
        f(4 * u, v.x);
        f(4 * u + 1, v.y);
        f(4 * u + 2, v.z);
        f(4 * u + 3, v.w);
      } else {
        float v = data[u];
        if (add) {
          v = v + add[u];
          data[u] = v;
        }
        f(u, v);
      }
    }
    step();
  }
  // The vectorized loop's tail (at most 3 elements): block 0.
  const size_t i = units * per + threadIdx.x;
  if (blockIdx.x == 0 && i < n) {
    float v = data[i];
    if (add) {
      v = v + add[i];
      data[i] = v;
    }
    f(i, v);
  }
}

__global__ void histogramKernel(float* data, const float* add, size_t n, bool vec, unsigned* hist) {
  __shared__ unsigned bins[kBins];
  for (int b = threadIdx.x; b < kBins; b += blockDim.x) bins[b] = 0;
  __syncthreads();
  forEachElement(data, add, n, vec, [&](size_t, float v) { atomicAdd(&bins[magnitudeKey(v) >> kShift], 1u); },
                 [] {});
  __syncthreads();
  for (int b = threadIdx.x; b < kBins; b += blockDim.x)
    if (bins[b]) atomicAdd(&hist[b], bins[b]);
}

// Appends from a whole block to a global list with one global atomic per
// flush. Appending with one atomic per warp on a shared counter serialized
// at its L2 slice (ncu on an H100: the collect pass 98-104 us and DGC's
// threshold pass 216 us over 100 MB that the histogram pass reads in 44).
// Every thread of the block calls flush/stepDone together.
constexpr unsigned kStage = 2048;
struct BlockStage {
  unsigned long long* buf;   // shared, kStage entries
  unsigned* staged;          // shared
  unsigned long long* base;  // shared
  unsigned long long* out;
  size_t cap;  // entries of out; later ones are counted, not written
  unsigned long long* count;

  __device__ void init() {
    if (threadIdx.x == 0) *staged = 0;
    __syncthreads();
  }
  __device__ void put(unsigned long long v) { buf[atomicAdd(staged, 1u)] = v; }
  __device__ void flush() {
    __syncthreads();
    const unsigned m = *staged;
    if (m == 0) return;  // every thread read the same m
    if (threadIdx.x == 0) *base = atomicAdd(count, static_cast<unsigned long long>(m));
    __syncthreads();
    const unsigned long long b = *base;
    for (unsigned j = threadIdx.x; j < m; j += blockDim.x)
      if (b + j < cap) out[b + j] = buf[j];
    __syncthreads();
    if (threadIdx.x == 0) *staged = 0;
    __syncthreads();
  }
  // After a step in which each thread put at most 4 entries: flush if the
  // next step might not fit.
  __device__ void stepDone() {
    __syncthreads();
    const unsigned now = *staged;
    __syncthreads();  // every thread has read it before anyone puts again
    if (now + 4 * blockDim.x > kStage) flush();
  }
};

#define AC_BLOCK_STAGE(name, out, cap, count)                                         \
  __shared__ unsigned long long name##Buf[kStage];                                    \
  __shared__ unsigned name##Staged;                                                   \
  __shared__ unsigned long long name##Base;                                           \
  BlockStage name{name##Buf, &name##Staged, &name##Base, (out), (cap), (count)};      \
  name.init()

// Appends to a list with one atomic per warp, not one per element (a single
// counter hit by every selected element serializes). Every lane of the warp
// must call it; returns the slot of a lane whose `take` is set.
__device__ inline unsigned long long warpAppend(bool take, unsigned long long* counter) {
  const unsigned mask = __ballot_sync(0xffffffffu, take);
  if (mask == 0) return 0;
  const int lane = threadIdx.x & 31;
  const int leader = __ffs(mask) - 1;
  unsigned long long base = 0;
  if (lane == leader) base = atomicAdd(counter, static_cast<unsigned long long>(__popc(mask)));
  base = __shfl_sync(0xffffffffu, base, leader);
  return base + __popc(mask & ((1u << lane) - 1u));
}

__device__ inline unsigned long long candidateOf(uint32_t key, uint32_t i) {
  return (static_cast<unsigned long long>(key) << 32) | (0xffffffffu - i);
}

// The boundary bin of the histogram (one block, 1024 threads x 4 bins): the
// bin b with (count above b) < k <= (count above b) + hist[b]. info receives
// {b, hist[b], k - count above b}. k is *kAt when kAt is set (the level
// above's "how many are needed", on the device).
__global__ void boundaryKernel(const unsigned* hist, size_t k, const unsigned* kAt, unsigned* info) {
  if (kAt) k = *kAt;
  using Scan = cub::BlockScan<unsigned, 1024>;
  __shared__ typename Scan::TempStorage temp;
  unsigned h[4];
  // Thread t holds bins 4095 - 4t .. 4092 - 4t: the scan runs from the top bin down.
  for (int e = 0; e < 4; ++e) h[e] = hist[kBins - 1 - (4 * threadIdx.x + e)];
  unsigned above[4];
  Scan(temp).ExclusiveSum(h, above);
  for (int e = 0; e < 4; ++e) {
    if (above[e] < k && above[e] + h[e] >= k) {
      info[0] = static_cast<unsigned>(kBins - 1 - (4 * threadIdx.x + e));
      info[1] = h[e];
      info[2] = static_cast<unsigned>(k - above[e]);
    }
  }
}

// Pass two: the boundary bin's elements as (key, ~index), up to cap of them
// (all counted), and a histogram of their next 12 bits (hist2; global
// atomics: only the boundary bin's elements, spread over 4096 bins).
// tileCount (optional): per tile of tileElems elements, how many are above
// the boundary bin (sure to be selected).
__global__ void collectLevel2Kernel(const float* data, size_t n, bool vec, const unsigned* info,
                                    unsigned long long* cand, size_t cap, unsigned long long* candCount,
                                    unsigned* hist2, unsigned* tileCount = nullptr, size_t tileElems = 1) {
  AC_BLOCK_STAGE(stage, cand, cap, candCount);
  const uint32_t bin = info[0];
  forEachElement(
      const_cast<float*>(data), nullptr, n, vec,
      [&](size_t i, float x) {
        const uint32_t key = magnitudeKey(x);
        if (tileCount && key >> kShift > bin) atomicAdd(&tileCount[i / tileElems], 1u);
        if (key >> kShift == bin) {
          stage.put(candidateOf(key, static_cast<uint32_t>(i)));
          atomicAdd(&hist2[(key >> kShift2) & (kBins - 1)], 1u);
        }
      },
      [&] { stage.stepDone(); });
  stage.flush();
}

// The 24-bit boundary bin: the candidates whose key's top 24 bits are
// (info1[0], info2[0]), up to cap2 of them (all counted).
__global__ void narrowKernel(const unsigned long long* cand, const unsigned long long* candCount, size_t cap,
                             const unsigned* info1, const unsigned* info2, unsigned long long* out, size_t cap2,
                             unsigned long long* outCount) {
  const unsigned long long m = min(*candCount, static_cast<unsigned long long>(cap));
  const unsigned long long top = (static_cast<unsigned long long>(info1[0]) << 12) | info2[0];  // key >> 7
  const size_t lane = threadIdx.x & 31;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t w = static_cast<size_t>(blockIdx.x) * blockDim.x + (threadIdx.x & ~31u); w < m; w += stride) {
    const size_t j = w + lane;
    const unsigned long long v = j < m ? cand[j] : 0;
    const bool take = j < m && (v >> (32 + kShift2)) == top;
    const unsigned long long slot = warpAppend(take, outCount);
    if (take && slot < cap2) out[slot] = v;
  }
}

// One block: the need-th largest of the narrowed candidates (need =
// info2[2]), by radix selection over the 39 bits below the shared 24-bit
// prefix (7 key bits, then the 32 of ~index, 8 at a time). Writes the k-th
// largest (key, ~index) of all the data to *bound; if a buffer overflowed,
// *bound = all ones (nothing is at least that) and *overflow = 1.
constexpr int kSelectThreads = 256;  // one per digit
__global__ void selectBoundKernel(const unsigned long long* cand2, const unsigned long long* counts, size_t cap,
                                  size_t cap2, const unsigned* info1, const unsigned* info2,
                                  unsigned long long* bound, unsigned* overflow) {
  __shared__ unsigned bins[kSelectThreads];
  __shared__ unsigned long long sPrefix, sMask;
  __shared__ unsigned sNeed;
  const unsigned long long m = counts[1];
  if (counts[0] > cap || m > cap2 || m == 0) {
    if (threadIdx.x == 0) {
      *bound = ~0ull;
      *overflow = 1;
    }
    return;
  }
  if (threadIdx.x == 0) {
    sPrefix = 0;
    sMask = 0;
    sNeed = info2[2];
  }
  using Scan = cub::BlockScan<unsigned, kSelectThreads>;
  __shared__ typename Scan::TempStorage temp;
  for (int pass = 0; pass < 5; ++pass) {
    const int shift = pass == 0 ? 32 : 32 - 8 * pass;  // 32, 24, 16, 8, 0
    const unsigned digits = pass == 0 ? 128u : 256u;
    bins[threadIdx.x] = 0;
    __syncthreads();
    const unsigned long long prefix = sPrefix, mask = sMask;
    const unsigned need = sNeed;
    for (size_t j = threadIdx.x; j < m; j += blockDim.x) {
      const unsigned long long v = cand2[j];
      if ((v & mask) == prefix) atomicAdd(&bins[(v >> shift) & (digits - 1)], 1u);
    }
    __syncthreads();
    // Thread t holds digit digits - 1 - t: the scan counts from the top down.
    const int d = static_cast<int>(digits) - 1 - static_cast<int>(threadIdx.x);
    const unsigned h = d >= 0 ? bins[d] : 0u;
    unsigned above = 0;
    Scan(temp).ExclusiveSum(h, above);
    if (d >= 0 && above < need && above + h >= need) {
      sPrefix = prefix | static_cast<unsigned long long>(d) << shift;
      sMask = mask | static_cast<unsigned long long>(digits - 1) << shift;
      sNeed = need - above;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const unsigned long long top = (static_cast<unsigned long long>(info1[0]) << 12) | info2[0];
    *bound = (top << (32 + kShift2)) | sPrefix;
    *overflow = 0;
  }
}

// The order-preserving selection of the exact path, in tiles: tile t holds
// elements [t * tileElems, (t + 1) * tileElems), one block-wide step of
// forEachElement's loop (kThreads threads x 4 or x 1 elements). The collect
// pass counted each tile's elements above the boundary bin; this adds the
// boundary bin's elements at or above the bound (from the candidate list);
// an exclusive scan gives each tile's first output slot; the write pass reads
// the data once more and writes each tile's selected indices in order (a
// block scan). CUB's DeviceSelect did the same in one pass with a look-back
// but ran at half the copy rate here (ncu: 80 us for 25M elements).
__global__ void countSelectedCandidatesKernel(const unsigned long long* cand, const unsigned long long* candCount,
                                              size_t cap, const unsigned long long* bound, unsigned* tileCount,
                                              size_t tileElems) {
  const unsigned long long m = min(*candCount, static_cast<unsigned long long>(cap));
  const unsigned long long b = *bound;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t j = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < m; j += stride) {
    const unsigned long long v = cand[j];
    if (v >= b) atomicAdd(&tileCount[(0xffffffffu - static_cast<uint32_t>(v)) / tileElems], 1u);
  }
}

__global__ void writeSelectedKernel(const float* data, size_t n, bool vec, const unsigned long long* bound,
                                    const unsigned* tileOffset, size_t k, uint32_t* idx) {
  using Scan = cub::BlockScan<unsigned, kThreads>;
  __shared__ typename Scan::TempStorage temp;
  const unsigned long long b = *bound;
  auto selected = [&](size_t i, float x) { return candidateOf(magnitudeKey(x), static_cast<uint32_t>(i)) >= b; };
  const size_t per = vec ? 4 : 1;
  const size_t units = n / per;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t u0 = static_cast<size_t>(blockIdx.x) * blockDim.x; u0 < units; u0 += stride) {
    const size_t u = u0 + threadIdx.x;
    float x[4] = {0.f, 0.f, 0.f, 0.f};
    bool sel[4] = {false, false, false, false};
    unsigned c = 0;
    if (u < units) {
      if (vec) {
        const float4 v = reinterpret_cast<const float4*>(data)[u];
        x[0] = v.x;
        x[1] = v.y;
        x[2] = v.z;
        x[3] = v.w;
      } else {
        x[0] = data[u];
      }
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        sel[e] = static_cast<size_t>(e) < per && selected(per * u + e, x[e]);
        c += sel[e] ? 1u : 0u;
      }
    }
    unsigned at = 0;
    Scan(temp).ExclusiveSum(c, at);
    at += tileOffset[u0 / blockDim.x];
#pragma unroll
    for (int e = 0; e < 4; ++e)  // (at < k always holds with an exact bound; never write past idx)
      if (sel[e] && at < k) idx[at++] = static_cast<uint32_t>(per * u + e);
    __syncthreads();  // temp is reused by the next step
  }
  // The vectorized loop's tail (at most 3 elements, the highest indices):
  // the last slots.
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    size_t tail = 0;
    for (size_t i = units * per; i < n; ++i) tail += selected(i, data[i]) ? 1 : 0;
    size_t at = k - tail;
    for (size_t i = units * per; i < n; ++i)
      if (selected(i, data[i]) && at < k) idx[at++] = static_cast<uint32_t>(i);
  }
}

// Everything with key >= threshold (after the fused add), up to cap entries; counts all.
__global__ void thresholdKernel(float* data, const float* add, size_t n, bool vec, const uint32_t* thresholdAt,
                                unsigned long long* cand, size_t cap, unsigned long long* count) {
  AC_BLOCK_STAGE(stage, cand, cap, count);
  const uint32_t threshold = *thresholdAt;
  forEachElement(
      data, add, n, vec,
      [&](size_t i, float x) {
        const uint32_t key = magnitudeKey(x);
        if (key >= threshold) stage.put(candidateOf(key, static_cast<uint32_t>(i)));
      },
      [&] { stage.stepDone(); });
  stage.flush();
}

// skip: set on the device when no indices were selected (an overflow).
__global__ void gatherKernel(float* data, const uint32_t* idx, size_t k, float* val, bool zero,
                             const unsigned* skip = nullptr) {
  if (skip && *skip) return;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t j = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < k; j += stride) {
    const uint32_t i = idx[j];  // distinct: each element is read and zeroed by one thread
    val[j] = data[i];
    if (zero) data[i] = 0.0f;
  }
}

__global__ void iotaKernel(uint32_t* idx, size_t n) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    idx[i] = static_cast<uint32_t>(i);
}

__global__ void sampleKernel(const float* data, const float* add, size_t s, size_t stride, uint32_t s32,
                             uint32_t* sample) {
  const size_t gs = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t j = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < s; j += gs) {
    const size_t at = hash::sampleIndex(j, stride, s32);
    sample[j] = magnitudeKey(add ? data[at] + add[at] : data[at]);
  }
}

// Retain freed stream-ordered scratch in the device's default pool: without
// a release threshold every synchronize returns it to the driver, and the
// next call's allocations cost tens of microseconds.
void retainPool() {
  static thread_local int done = -1;
  int dev = 0;
  AC_CUDA_CHECK(cudaGetDevice(&dev));
  if (done == dev) return;
  cudaMemPool_t pool;
  AC_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, dev));
  uint64_t keep = UINT64_MAX;
  AC_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
  done = dev;
}

// The tiles of the ordered selection (one block-wide step of forEachElement:
// kThreads x 4 elements, or x 1 without vector loads) and their counters:
// per tile how many are selected (zeroed here), then its first output slot.
struct Tiles {
  Tiles(size_t n, bool vec, cudaStream_t st)
      : elems((vec ? 4 : 1) * static_cast<size_t>(kThreads)), count((n + elems - 1) / elems), slots(2 * count, st) {
    AC_CUDA_CHECK(cudaMemsetAsync(slots.get(), 0, count * sizeof(unsigned), st));
  }
  unsigned* counts() const { return slots.get(); }
  unsigned* offsets() const { return slots.get() + count; }
  const size_t elems, count;
  DeviceBuffer<unsigned> slots;
};

// The tile-ordered selection (see countSelectedCandidatesKernel): tiles
// already count, per tile, the selected elements that are not in the
// candidate list; adds the candidates at or above *bound, scans, writes idx
// in ascending order.
void selectInOrder(const float* data, size_t n, bool vec, const unsigned long long* cand,
                   const unsigned long long* candCount, size_t cap, const unsigned long long* bound,
                   const Tiles& tiles, size_t k, uint32_t* idx, cudaStream_t st) {
  unsigned* tileCount = tiles.counts();
  unsigned* tileOffset = tiles.offsets();
  countSelectedCandidatesKernel<<<std::min(gridFor(cap), residentGrid(4)), kThreads, 0, st>>>(
      cand, candCount, cap, bound, tileCount, tiles.elems);
  AC_CUDA_LAUNCHED();
  size_t temp = 0;
  const int items = static_cast<int>(tiles.count);
  AC_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, temp, tileCount, tileOffset, items, st));
  DeviceBuffer<uint8_t> scratch(temp, st);
  AC_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(scratch.get(), temp, tileCount, tileOffset, items, st));
  writeSelectedKernel<<<std::min(gridFor(n), residentGrid(8)), kThreads, 0, st>>>(data, n, vec, bound, tileOffset, k,
                                                                                  idx);
  AC_CUDA_LAUNCHED();
}

// k == 0 or k >= n: everything (after the fused add), no selection.
size_t topkAll(float* data, const float* add, size_t n, size_t k, uint32_t* idx, float* val, bool zeroSelected,
               cudaStream_t st) {
  if (add && n) {
    addKernel<<<gridFor(n), kThreads, 0, st>>>(data, add, n);
    AC_CUDA_LAUNCHED();
  }
  if (k == 0 || n == 0) {
    AC_CUDA_CHECK(cudaStreamSynchronize(st));
    return 0;
  }
  iotaKernel<<<gridFor(n), kThreads, 0, st>>>(idx, n);
  AC_CUDA_LAUNCHED();
  gatherKernel<<<gridFor(n), kThreads, 0, st>>>(data, idx, n, val, zeroSelected);
  AC_CUDA_LAUNCHED();
  AC_CUDA_CHECK(cudaStreamSynchronize(st));
  return n;
}

}  // namespace

void quantize(float* data, const float* add, size_t n, int bits, size_t block, uint64_t seed, uint8_t* codes,
              float* scales, bool errorFeedback, Stream stream) {
  AC_CHECK(validQuantBits(bits), InvalidArgument, "quantize: bits must be 8, 4 or 1, got ", bits);
  AC_CHECK(block > 0 && block % 8 == 0, InvalidArgument, "quantize: block must be a positive multiple of 8, got ", block);
  if (n == 0) return;
  const size_t nb = quantBlocks(n, block);
  cudaStream_t st = asStream(stream);
  const bool vec = aligned(data, 16) && aligned(add, 16) && aligned(codes, 8);
  auto pick = [&](auto kernel, unsigned blocks, unsigned threads, size_t shared) {
    kernel<<<blocks, threads, shared, st>>>(data, add, n, block, seed32(seed), codes, scales, errorFeedback, vec);
  };
  auto launch = [&](auto warpKernel, auto segmentsKernel) {
    if (block <= 256) {
      constexpr unsigned kWarps = 4;  // quantization blocks per thread block
      pick(warpKernel, static_cast<unsigned>(std::min<size_t>((nb + kWarps - 1) / kWarps, 65535)), 32 * kWarps,
           bits == 1 ? kWarps * block * sizeof(float) : 0);
    } else {
      pick(segmentsKernel, static_cast<unsigned>(std::min<size_t>(nb, 65535)),
           32 * static_cast<unsigned>((block + 255) / 256), 0);
    }
  };
  if (block <= 2048) {
    if (bits == 8)
      launch(quantizeWarpKernel<8>, quantizeSegmentsKernel<8>);
    else if (bits == 4)
      launch(quantizeWarpKernel<4>, quantizeSegmentsKernel<4>);
    else
      launch(quantizeWarpKernel<1>, quantizeSegmentsKernel<1>);
  } else {
    quantizeKernel<<<static_cast<unsigned>(std::min<size_t>(nb, 65535)), kThreads, 0, st>>>(
        data, add, n, bits, block, seed32(seed), codes, scales, errorFeedback);
  }
  AC_CUDA_LAUNCHED();
}

void dequantize(const uint8_t* codes, const float* scales, size_t n, int bits, size_t block, float alpha,
                bool accumulate, float* out, Stream stream) {
  AC_CHECK(validQuantBits(bits), InvalidArgument, "dequantize: bits must be 8, 4 or 1, got ", bits);
  if (n == 0) return;
  AC_CHECK(block > 0 && block % 8 == 0, InvalidArgument, "dequantize: block must be a positive multiple of 8, got ",
           block);
  const bool vec = aligned(out, 16) && aligned(codes, 8);
  const bool narrow = n <= UINT32_MAX;
  auto launch = [&](auto kernel) {
    kernel<<<gridFor((n + 3) / 4), kThreads, 0, asStream(stream)>>>(codes, scales, n, block, alpha, accumulate, out,
                                                                      vec, narrow);
  };
  if (bits == 8)
    launch(dequantizeKernel<8>);
  else if (bits == 4)
    launch(dequantizeKernel<4>);
  else
    launch(dequantizeKernel<1>);
  AC_CUDA_LAUNCHED();
}

size_t topkExact(float* data, const float* add, size_t n, size_t k, uint32_t* idx, float* val, bool zeroSelected,
                 Stream stream) {
  AC_CHECK(n < (size_t{1} << 32), InvalidArgument, "top-k: ", n, " elements; at most 2^32 - 1 per buffer");
  cudaStream_t st = asStream(stream);
  if (k >= n || k == 0) return topkAll(data, add, n, k, idx, val, zeroSelected, st);
  retainPool();
  // Candidate buffers: the boundary bin holds ~n / 300 elements on Gaussian
  // data at k = n / 100; past these caps (many equal keys) the sorted path
  // below takes over.
  const size_t cap = std::min(n, std::max<size_t>(k, size_t{1} << 18));
  const size_t cap2 = std::min<size_t>(cap, size_t{1} << 16);
  // u32: hist, hist2, info {bin, count, need, -}, info2, {overflow}.
  DeviceBuffer<unsigned> words(2 * kBins + 12, st);
  unsigned* hist = words.get();
  unsigned* hist2 = hist + kBins;
  unsigned* info = hist2 + kBins;
  unsigned* info2 = info + 4;
  unsigned* overflow = info2 + 4;
  // u64: {candidates, narrowed candidates, bound, -}, then the two lists.
  DeviceBuffer<unsigned long long> longs(4 + cap + cap2, st);
  unsigned long long* counts = longs.get();
  unsigned long long* bound = counts + 2;
  unsigned long long* cand = counts + 4;
  unsigned long long* cand2 = cand + cap;
  AC_CUDA_CHECK(cudaMemsetAsync(words.get(), 0, (2 * kBins + 12) * sizeof(unsigned), st));
  AC_CUDA_CHECK(cudaMemsetAsync(counts, 0, 4 * sizeof(unsigned long long), st));
  const bool vec = aligned(data, 16) && aligned(add, 16);
  const unsigned grid = std::min(gridFor(n), residentGrid(8));
  histogramKernel<<<grid, kThreads, 0, st>>>(data, add, n, vec, hist);
  AC_CUDA_LAUNCHED();
  boundaryKernel<<<1, 1024, 0, st>>>(hist, k, nullptr, info);
  AC_CUDA_LAUNCHED();
  const Tiles tiles(n, vec, st);
  collectLevel2Kernel<<<grid, kThreads, 0, st>>>(data, n, vec, info, cand, cap, counts, hist2, tiles.counts(),
                                                 tiles.elems);
  AC_CUDA_LAUNCHED();
  boundaryKernel<<<1, 1024, 0, st>>>(hist2, 0, info + 2, info2);
  AC_CUDA_LAUNCHED();
  narrowKernel<<<std::min(gridFor(cap), residentGrid(4)), kThreads, 0, st>>>(cand, counts, cap, info, info2, cand2,
                                                                             cap2, counts + 1);
  AC_CUDA_LAUNCHED();
  selectBoundKernel<<<1, kSelectThreads, 0, st>>>(cand2, counts, cap, cap2, info, info2, bound, overflow);
  AC_CUDA_LAUNCHED();
  selectInOrder(data, n, vec, cand, counts, cap, bound, tiles, k, idx, st);
  // On an overflow the bound selects no candidate: idx then holds too few
  // indices, the gather is skipped, and the sorted path redoes it all.
  gatherKernel<<<gridFor(k), kThreads, 0, st>>>(data, idx, k, val, zeroSelected, overflow);
  AC_CUDA_LAUNCHED();
  unsigned over = 0;
  AC_CUDA_CHECK(cudaMemcpyAsync(&over, overflow, sizeof over, cudaMemcpyDeviceToHost, st));
  AC_CUDA_CHECK(cudaStreamSynchronize(st));
  if (over) return topkExactSorted(data, nullptr, n, k, idx, val, zeroSelected, stream);  // the add is applied
  return k;
}

size_t topkExactSorted(float* data, const float* add, size_t n, size_t k, uint32_t* idx, float* val,
                       bool zeroSelected, Stream stream) {
  AC_CHECK(n < (size_t{1} << 32), InvalidArgument, "top-k: ", n, " elements; at most 2^32 - 1 per buffer");
  cudaStream_t st = asStream(stream);
  if (k >= n || k == 0) return topkAll(data, add, n, k, idx, val, zeroSelected, st);
  retainPool();
  // words: the bins, the second level's (unused here), then {boundary bin,
  // its count, how many of it are needed, padding, the 64-bit count of
  // collected candidates}.
  DeviceBuffer<unsigned> words(2 * kBins + 6, st);
  unsigned* hist = words.get();
  unsigned* info = hist + 2 * kBins;
  AC_CUDA_CHECK(cudaMemsetAsync(hist, 0, (2 * kBins + 6) * sizeof(unsigned), st));
  const bool vec = aligned(data, 16) && aligned(add, 16);
  const unsigned grid = std::min(gridFor(n), residentGrid(8));
  histogramKernel<<<grid, kThreads, 0, st>>>(data, add, n, vec, hist);
  AC_CUDA_LAUNCHED();
  boundaryKernel<<<1, 1024, 0, st>>>(hist, k, nullptr, info);
  AC_CUDA_LAUNCHED();
  unsigned h[3];
  AC_CUDA_CHECK(cudaMemcpyAsync(h, info, sizeof h, cudaMemcpyDeviceToHost, st));
  AC_CUDA_CHECK(cudaStreamSynchronize(st));
  const size_t nCand = h[1], need = h[2];
  DeviceBuffer<unsigned long long> cand(nCand, st), sorted(nCand, st);
  const Tiles tiles(n, vec, st);
  auto* candCount = reinterpret_cast<unsigned long long*>(info + 4);
  collectLevel2Kernel<<<grid, kThreads, 0, st>>>(data, n, vec, info, cand.get(), nCand, candCount, hist + kBins,
                                                 tiles.counts(), tiles.elems);
  AC_CUDA_LAUNCHED();
  // The boundary bin's candidates in descending (key, ~index) order: the
  // need-th is the k-th largest of all.
  // Bits 51..62 (the bin) are the same in all of them: sort by the rest.
  sortKeys(cand.get(), sorted.get(), nCand, true, st, 32 + kShift);
  selectInOrder(data, n, vec, cand.get(), candCount, nCand, sorted.get() + (need - 1), tiles, k, idx, st);
  gatherKernel<<<gridFor(k), kThreads, 0, st>>>(data, idx, k, val, zeroSelected);
  AC_CUDA_LAUNCHED();
  AC_CUDA_CHECK(cudaStreamSynchronize(st));
  return k;
}

size_t topkSampled(float* data, const float* add, size_t n, size_t k, uint32_t* idx, float* val, bool zeroSelected,
                   uint64_t seed, Stream stream) {
  AC_CHECK(n < (size_t{1} << 32), InvalidArgument, "top-k: ", n, " elements; at most 2^32 - 1 per buffer");
  if (k == 0 || k >= n || n < 8192) return topkExact(data, add, n, k, idx, val, zeroSelected, stream);
  cudaStream_t st = asStream(stream);
  // The sample, threshold and capacity exactly as the CPU twin picks them.
  const size_t s = std::min(n, std::max<size_t>(4096, n / 256));
  const size_t stride = n / s;
  retainPool();
  DeviceBuffer<uint32_t> sample(s, st), sortedSample(s, st);
  sampleKernel<<<gridFor(s), kThreads, 0, st>>>(data, add, s, stride, seed32(seed), sample.get());
  AC_CUDA_LAUNCHED();
  // The threshold is the want-th largest sampled key (the CPU's nth_element
  // picks the same value), found on the device: no round trip.
  sortKeys(sample.get(), sortedSample.get(), s, true, st);
  const size_t want = std::min(s, static_cast<size_t>(static_cast<double>(k) * static_cast<double>(s) / n * 1.25) + 4);
  const size_t cap = k + k / 2 + 1024;
  DeviceBuffer<unsigned long long> cand(cap, st), sorted(cap, st);
  DeviceBuffer<unsigned long long> count(1, st);
  AC_CUDA_CHECK(cudaMemsetAsync(count.get(), 0, sizeof(unsigned long long), st));
  thresholdKernel<<<std::min(gridFor(n), residentGrid(8)), kThreads, 0, st>>>(
      data, add, n, aligned(data, 16) && aligned(add, 16), sortedSample.get() + (want - 1), cand.get(), cap,
                                                   count.get());
  AC_CUDA_LAUNCHED();
  unsigned long long got = 0;
  AC_CUDA_CHECK(cudaMemcpyAsync(&got, count.get(), sizeof(got), cudaMemcpyDeviceToHost, st));
  AC_CUDA_CHECK(cudaStreamSynchronize(st));
  if (got < k || got > cap) return topkExact(data, nullptr, n, k, idx, val, zeroSelected, stream);  // add applied
  sortKeys(cand.get(), sorted.get(), static_cast<size_t>(got), true, st);
  // Every selected element is a candidate: the tiles start from zero.
  const bool vec = aligned(data, 16);
  selectInOrder(data, n, vec, cand.get(), count.get(), cap, sorted.get() + (k - 1), Tiles(n, vec, st), k, idx, st);
  gatherKernel<<<gridFor(k), kThreads, 0, st>>>(data, idx, k, val, zeroSelected);
  AC_CUDA_LAUNCHED();
  AC_CUDA_CHECK(cudaStreamSynchronize(st));
  return k;
}

namespace {
__global__ void randomkGatherKernel(float* data, size_t n, size_t k, uint64_t seed, float* val, bool zero) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t j = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < k; j += stride) {
    const uint32_t i = hash::randomkIndex(seed, n, k, j);
    val[j] = data[i];
    if (zero) data[i] = 0.0f;
  }
}
__global__ void randomkScatterKernel(const float* val, size_t n, size_t k, uint64_t seed, float scale, float* out) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t j = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < k; j += stride)
    out[hash::randomkIndex(seed, n, k, j)] = val[j] * scale;
}
}  // namespace

void randomkGather(float* data, const float* add, size_t n, size_t k, uint64_t seed, float* val, bool zeroSelected,
                   Stream stream) {
  AC_CHECK(n < (size_t{1} << 32) && k <= n, InvalidArgument, "random-k: k = ", k, " of ", n, " elements");
  cudaStream_t st = asStream(stream);
  if (add && n) {
    addKernel<<<gridFor(n), kThreads, 0, st>>>(data, add, n);
    AC_CUDA_LAUNCHED();
  }
  if (k == 0) return;
  randomkGatherKernel<<<gridFor(k), kThreads, 0, st>>>(data, n, k, seed, val, zeroSelected);
  AC_CUDA_LAUNCHED();
}

void randomkScatter(const float* val, size_t n, size_t k, uint64_t seed, float scale, float* out, Stream stream) {
  if (k == 0) return;
  randomkScatterKernel<<<gridFor(k), kThreads, 0, asStream(stream)>>>(val, n, k, seed, scale, out);
  AC_CUDA_LAUNCHED();
}

}  // namespace agentcomm::kernels::cuda
