// CUDA compression kernels: block quantization with error feedback fused
// (one thread block per quantization block), top-k by radix selection, DGC's
// sampled top-k, random-k. Contracts and bit-exact arithmetic: the CPU twins
// in kernels/cpu/compress.cc (read that file's comments for the why).
//
// Top-k on the device: a 4096-bin histogram of the top 12 bits of the
// magnitude keys (shared-memory bins, fused with the error-feedback add),
// the boundary bin found on the host, one pass collecting the elements above
// it and the boundary bin's candidates, a radix sort of the candidates
// (CUB), and a sort of the selected indices so they come out ascending.
#include <algorithm>
#include <climits>
#include <vector>

#include <cub/device/device_radix_sort.cuh>

#include "kernels/compress.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels_cuda.h"

namespace agentcomm::kernels::cuda {

using namespace detail;

namespace {

constexpr int kBins = 4096;
constexpr int kShift = 19;

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

int itemsForCub(size_t n) {
  AC_CHECK(n <= static_cast<size_t>(INT_MAX), InvalidArgument, "CUDA top-k: ", n, " candidates exceed a sort's limit");
  return static_cast<int>(n);
}

template <typename K>
void sortKeys(const K* in, K* out, size_t n, bool descending, cudaStream_t st) {
  if (n == 0) return;
  size_t temp = 0;
  const int items = itemsForCub(n);
  if (descending)
    AC_CUDA_CHECK(cub::DeviceRadixSort::SortKeysDescending(nullptr, temp, in, out, items, 0, int(sizeof(K) * 8), st));
  else
    AC_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(nullptr, temp, in, out, items, 0, int(sizeof(K) * 8), st));
  DeviceBuffer<uint8_t> scratch(temp, st);
  if (descending)
    AC_CUDA_CHECK(
        cub::DeviceRadixSort::SortKeysDescending(scratch.get(), temp, in, out, items, 0, int(sizeof(K) * 8), st));
  else
    AC_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(scratch.get(), temp, in, out, items, 0, int(sizeof(K) * 8), st));
}

// ---- quantization -------------------------------------------------------------

__global__ void quantizeKernel(float* data, const float* add, size_t n, int bits, size_t block, uint32_t s32,
                               uint8_t* codes, float* scales, bool ef) {
  __shared__ unsigned maxKey;
  __shared__ float part[8];
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
      // mean |x| summed in the CPU's order: 8 running sums over j = 8i + t, then the tail.
      if (threadIdx.x < 8) {
        float p = 0.0f;
        for (size_t i = 0; i < m / 8; ++i) p += fabsf(x[8 * i + threadIdx.x]);
        part[threadIdx.x] = p;
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        float sum = 0.0f;
        for (int t = 0; t < 8; ++t) sum += part[t];
        for (size_t j = m / 8 * 8; j < m; ++j) sum += fabsf(x[j]);
        shared = sum / static_cast<float>(m);
        scales[blk] = shared;
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

__global__ void dequantizeKernel(const uint8_t* codes, const float* scales, size_t n, int bits, size_t block,
                                 float alpha, bool accumulate, float* out) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const size_t blk = i / block;
    const size_t j = i - blk * block;
    const uint8_t* in = codes + blk * blockCodeBytes(block, bits);
    const float s = scales[blk];
    float d;
    if (bits == 8) {
      const float step = s / 127.0f * alpha;
      d = static_cast<float>(static_cast<int8_t>(in[j])) * step;
    } else if (bits == 4) {
      const float step = s / 7.0f * alpha;
      d = static_cast<float>(static_cast<int>((in[j >> 1] >> ((j & 1) * 4)) & 0xf) - 8) * step;
    } else {
      const float sa = s * alpha;
      d = (((in[j >> 3] >> (j & 7)) & 1) ? 1.0f : -1.0f) * sa;
    }
    out[i] = accumulate ? out[i] + d : d;
  }
}

// ---- top-k ----------------------------------------------------------------------

__global__ void addKernel(float* data, const float* add, size_t n) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    data[i] = data[i] + add[i];
}

__global__ void histogramKernel(float* data, const float* add, size_t n, unsigned* hist) {
  __shared__ unsigned bins[kBins];
  for (int b = threadIdx.x; b < kBins; b += blockDim.x) bins[b] = 0;
  __syncthreads();
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    float v = data[i];
    if (add) {
      v = v + add[i];
      data[i] = v;
    }
    atomicAdd(&bins[magnitudeKey(v) >> kShift], 1u);
  }
  __syncthreads();
  for (int b = threadIdx.x; b < kBins; b += blockDim.x)
    if (bins[b]) atomicAdd(&hist[b], bins[b]);
}

__device__ inline unsigned long long candidateOf(uint32_t key, uint32_t i) {
  return (static_cast<unsigned long long>(key) << 32) | (0xffffffffu - i);
}

__global__ void collectKernel(const float* data, size_t n, uint32_t bin, uint32_t* above, unsigned* aboveCount,
                              unsigned long long* cand, unsigned* candCount) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const uint32_t key = magnitudeKey(data[i]);
    const uint32_t kb = key >> kShift;
    if (kb > bin)
      above[atomicAdd(aboveCount, 1u)] = static_cast<uint32_t>(i);
    else if (kb == bin)
      cand[atomicAdd(candCount, 1u)] = candidateOf(key, static_cast<uint32_t>(i));
  }
}

// Everything with key >= threshold (after the fused add), up to cap entries; counts all.
__global__ void thresholdKernel(float* data, const float* add, size_t n, uint32_t threshold,
                                unsigned long long* cand, size_t cap, unsigned long long* count) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    float v = data[i];
    if (add) {
      v = v + add[i];
      data[i] = v;
    }
    const uint32_t key = magnitudeKey(v);
    if (key >= threshold) {
      const unsigned long long slot = atomicAdd(count, 1ull);
      if (slot < cap) cand[slot] = candidateOf(key, static_cast<uint32_t>(i));
    }
  }
}

__global__ void candidateIndexKernel(const unsigned long long* sorted, size_t need, uint32_t* out) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t j = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < need; j += stride)
    out[j] = 0xffffffffu - static_cast<uint32_t>(sorted[j]);
}

__global__ void gatherKernel(float* data, const uint32_t* idx, size_t k, float* val, bool zero) {
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

// The selection's indices (the `need` best candidates + everything above),
// ascending, into idx; then values (and zeroing) for all of them.
size_t finish(float* data, const unsigned long long* cand, size_t nCand, size_t need, const uint32_t* above,
              size_t nAbove, uint32_t* idx, float* val, bool zero, cudaStream_t st) {
  const size_t k = nAbove + need;
  DeviceBuffer<unsigned long long> sorted(nCand, st);
  sortKeys(cand, sorted.get(), nCand, true, st);
  DeviceBuffer<uint32_t> sel(k, st);
  if (nAbove)
    AC_CUDA_CHECK(cudaMemcpyAsync(sel.get(), above, nAbove * sizeof(uint32_t), cudaMemcpyDeviceToDevice, st));
  if (need) {
    candidateIndexKernel<<<gridFor(need), kThreads, 0, st>>>(sorted.get(), need, sel.get() + nAbove);
    AC_CUDA_LAUNCHED();
  }
  sortKeys(sel.get(), idx, k, false, st);
  if (k) {
    gatherKernel<<<gridFor(k), kThreads, 0, st>>>(data, idx, k, val, zero);
    AC_CUDA_LAUNCHED();
  }
  AC_CUDA_CHECK(cudaStreamSynchronize(st));
  return k;
}

}  // namespace

void quantize(float* data, const float* add, size_t n, int bits, size_t block, uint64_t seed, uint8_t* codes,
              float* scales, bool errorFeedback, Stream stream) {
  AC_CHECK(validQuantBits(bits), InvalidArgument, "quantize: bits must be 8, 4 or 1, got ", bits);
  AC_CHECK(block > 0 && block % 8 == 0, InvalidArgument, "quantize: block must be a positive multiple of 8, got ", block);
  if (n == 0) return;
  const size_t nb = quantBlocks(n, block);
  quantizeKernel<<<static_cast<unsigned>(std::min<size_t>(nb, 65535)), kThreads, 0, asStream(stream)>>>(
      data, add, n, bits, block, seed32(seed), codes, scales, errorFeedback);
  AC_CUDA_LAUNCHED();
}

void dequantize(const uint8_t* codes, const float* scales, size_t n, int bits, size_t block, float alpha,
                bool accumulate, float* out, Stream stream) {
  AC_CHECK(validQuantBits(bits), InvalidArgument, "dequantize: bits must be 8, 4 or 1, got ", bits);
  if (n == 0) return;
  dequantizeKernel<<<gridFor(n), kThreads, 0, asStream(stream)>>>(codes, scales, n, bits, block, alpha, accumulate,
                                                                   out);
  AC_CUDA_LAUNCHED();
}

size_t topkExact(float* data, const float* add, size_t n, size_t k, uint32_t* idx, float* val, bool zeroSelected,
                 Stream stream) {
  AC_CHECK(n < (size_t{1} << 32), InvalidArgument, "top-k: ", n, " elements; at most 2^32 - 1 per buffer");
  cudaStream_t st = asStream(stream);
  if (k >= n || k == 0) {
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
  DeviceBuffer<unsigned> hist(kBins + 2, st);  // + the two collect counters
  AC_CUDA_CHECK(cudaMemsetAsync(hist.get(), 0, (kBins + 2) * sizeof(unsigned), st));
  histogramKernel<<<gridFor(n), kThreads, 0, st>>>(data, add, n, hist.get());
  AC_CUDA_LAUNCHED();
  std::vector<unsigned> h(kBins);
  AC_CUDA_CHECK(cudaMemcpyAsync(h.data(), hist.get(), kBins * sizeof(unsigned), cudaMemcpyDeviceToHost, st));
  AC_CUDA_CHECK(cudaStreamSynchronize(st));
  size_t nAbove = 0;
  int bin = kBins - 1;
  while (nAbove + h[bin] < k) nAbove += h[bin--];
  const size_t need = k - nAbove;
  const size_t nCand = h[bin];
  DeviceBuffer<uint32_t> above(nAbove, st);
  DeviceBuffer<unsigned long long> cand(nCand, st);
  collectKernel<<<gridFor(n), kThreads, 0, st>>>(data, n, static_cast<uint32_t>(bin), above.get(),
                                                 hist.get() + kBins, cand.get(), hist.get() + kBins + 1);
  AC_CUDA_LAUNCHED();
  // The collected lists are in no particular order: finish() sorts them.
  return finish(data, cand.get(), nCand, need, above.get(), nAbove, idx, val, zeroSelected, st);
}

size_t topkSampled(float* data, const float* add, size_t n, size_t k, uint32_t* idx, float* val, bool zeroSelected,
                   uint64_t seed, Stream stream) {
  AC_CHECK(n < (size_t{1} << 32), InvalidArgument, "top-k: ", n, " elements; at most 2^32 - 1 per buffer");
  if (k == 0 || k >= n || n < 8192) return topkExact(data, add, n, k, idx, val, zeroSelected, stream);
  cudaStream_t st = asStream(stream);
  // The sample, threshold and capacity exactly as the CPU twin picks them.
  const size_t s = std::min(n, std::max<size_t>(4096, n / 256));
  const size_t stride = n / s;
  DeviceBuffer<uint32_t> sample(s, st);
  sampleKernel<<<gridFor(s), kThreads, 0, st>>>(data, add, s, stride, seed32(seed), sample.get());
  AC_CUDA_LAUNCHED();
  std::vector<uint32_t> hs(s);
  AC_CUDA_CHECK(cudaMemcpyAsync(hs.data(), sample.get(), s * sizeof(uint32_t), cudaMemcpyDeviceToHost, st));
  AC_CUDA_CHECK(cudaStreamSynchronize(st));
  const size_t want = std::min(s, static_cast<size_t>(static_cast<double>(k) * static_cast<double>(s) / n * 1.25) + 4);
  std::nth_element(hs.begin(), hs.begin() + static_cast<ptrdiff_t>(want - 1), hs.end(), std::greater<uint32_t>());
  const uint32_t threshold = hs[want - 1];
  const size_t cap = k + k / 2 + 1024;
  DeviceBuffer<unsigned long long> cand(cap, st);
  DeviceBuffer<unsigned long long> count(1, st);
  AC_CUDA_CHECK(cudaMemsetAsync(count.get(), 0, sizeof(unsigned long long), st));
  thresholdKernel<<<gridFor(n), kThreads, 0, st>>>(data, add, n, threshold, cand.get(), cap, count.get());
  AC_CUDA_LAUNCHED();
  unsigned long long got = 0;
  AC_CUDA_CHECK(cudaMemcpyAsync(&got, count.get(), sizeof(got), cudaMemcpyDeviceToHost, st));
  AC_CUDA_CHECK(cudaStreamSynchronize(st));
  if (got < k || got > cap) return topkExact(data, nullptr, n, k, idx, val, zeroSelected, stream);  // add applied
  return finish(data, cand.get(), static_cast<size_t>(got), k, nullptr, 0, idx, val, zeroSelected, st);
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
