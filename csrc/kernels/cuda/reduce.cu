// Elementwise CUDA kernels: reduction with the final scale fused, scaling,
// multi-tensor pack/unpack (one launch for a list of tensors, apex's
// multi_tensor_apply idea) and float32 <-> float16/bfloat16 casts.
// Arithmetic mirrors kernels/cpu/reduce.cc: 16-bit types combine in float and
// round once (round to nearest even); NaN propagates through min/max.
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels_cuda.h"

namespace agentcomm::kernels::cuda {

using namespace detail;

namespace {

template <typename T> struct Compute { using type = T; };
template <> struct Compute<__half> { using type = float; };
template <> struct Compute<__nv_bfloat16> { using type = float; };

__device__ inline float load(__half v) { return __half2float(v); }
__device__ inline float load(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ inline float load(float v) { return v; }
__device__ inline double load(double v) { return v; }

template <typename T> __device__ inline T store(typename Compute<T>::type v) { return v; }
template <> __device__ inline __half store<__half>(float v) { return __float2half_rn(v); }
template <> __device__ inline __nv_bfloat16 store<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

struct OpSum {
  template <typename C> __device__ static C apply(C x, C y) { return x + y; }
};
struct OpProd {
  template <typename C> __device__ static C apply(C x, C y) { return x * y; }
};
struct OpMin {
  template <typename C> __device__ static C apply(C x, C y) {
    if (x != x) return x;
    if (y != y) return y;
    return y < x ? y : x;
  }
};
struct OpMax {
  template <typename C> __device__ static C apply(C x, C y) {
    if (x != x) return x;
    if (y != y) return y;
    return x < y ? y : x;
  }
};

// The final scale as the CPU applies it: divide or multiply by value in C.
struct Scale {
  int kind;  // 0 none, 1 divide, 2 multiply
  double value;
  template <typename C> __device__ C apply(C v) const {
    if (kind == 1) return v / static_cast<C>(value);
    if (kind == 2) return v * static_cast<C>(value);
    return v;
  }
};

Scale scaleOf(FinalScale s) {
  return Scale{s.kind == FinalScale::Kind::Divide ? 1 : s.kind == FinalScale::Kind::Multiply ? 2 : 0, s.value};
}

template <typename T, int V> struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

template <typename T, typename Op, int V>
__global__ void reduceKernel(T* out, const T* a, const T* b, size_t n, Scale s) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  const size_t first = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const size_t nv = n / V;
  for (size_t i = first; i < nv; i += stride) {
    const Vec<T, V> x = reinterpret_cast<const Vec<T, V>*>(a)[i];
    const Vec<T, V> y = reinterpret_cast<const Vec<T, V>*>(b)[i];
    Vec<T, V> r;
#pragma unroll
    for (int t = 0; t < V; ++t) r.v[t] = store<T>(s.apply(Op::apply(load(x.v[t]), load(y.v[t]))));
    reinterpret_cast<Vec<T, V>*>(out)[i] = r;
  }
  for (size_t i = nv * V + first; i < n; i += stride) out[i] = store<T>(s.apply(Op::apply(load(a[i]), load(b[i]))));
}

__host__ __device__ inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <typename T, typename Op>
void launchReduce(void* dst, const void* a, const void* b, size_t n, Scale s, cudaStream_t st) {
  constexpr int V = 16 / sizeof(T);
  auto* o = static_cast<T*>(dst);
  auto* x = static_cast<const T*>(a);
  auto* y = static_cast<const T*>(b);
  if (aligned16(dst) && aligned16(a) && aligned16(b))
    reduceKernel<T, Op, V><<<gridFor(n / V + 1), kThreads, 0, st>>>(o, x, y, n, s);
  else
    reduceKernel<T, Op, 1><<<gridFor(n), kThreads, 0, st>>>(o, x, y, n, s);
  AC_CUDA_LAUNCHED();
}

template <typename T>
void reduceTyped(void* dst, const void* a, const void* b, size_t n, ReduceOp op, Scale s, cudaStream_t st) {
  switch (op) {
    case ReduceOp::Sum: return launchReduce<T, OpSum>(dst, a, b, n, s, st);
    case ReduceOp::Product: return launchReduce<T, OpProd>(dst, a, b, n, s, st);
    case ReduceOp::Min: return launchReduce<T, OpMin>(dst, a, b, n, s, st);
    case ReduceOp::Max: return launchReduce<T, OpMax>(dst, a, b, n, s, st);
    default: break;
  }
  throw InvalidArgument(strCat("CUDA reduce: op ", reduceOpName(op), " is not supported on the device"));
}

// Peers' buffers (CUDA IPC mappings inside one host): out = p[0] op p[1] op
// ... op p[n-1] over [begin, begin + count), then the final scale, written to
// every peer's buffer. Each element is combined in rank order by exactly one
// thread, so every rank ends with the same bits; each step rounds to T, as a
// chain of kernels::reduce then kernels::applyScale does on the CPU. Invariant (the caller's
// protocol): while this runs, no other rank touches [begin, begin + count) of
// any buffer, and nobody else writes there until every rank's kernel is done.
template <typename T> struct PeerPtrs {
  T* p[kMaxPeers];
};

// Up to kFastPeers ranks (every rank of an 8-GPU host): all n loads of a
// vector are issued before the first is used (the unrolled loop's indices
// into peers.p are constants, so the pointers stay in the parameter space and
// the loads are independent), as reduceKernel issues its two. A run-time loop
// over the ranks waits for each load in turn (and with an indexed pointer
// array, first for the pointer itself from local memory): it ran at 39% of
// the copy rate where reduceKernel runs at 102%.
constexpr int kFastPeers = 8;

template <typename T, typename Op, int V>
__device__ inline Vec<T, V> combinePeers(const Vec<T, V>* y, int n, Scale s) {
  typename Compute<T>::type acc[V];
#pragma unroll
  for (int t = 0; t < V; ++t) acc[t] = load(y[0].v[t]);
#pragma unroll
  for (int r = 1; r < kFastPeers; ++r) {
    if (r < n) {
#pragma unroll
      for (int t = 0; t < V; ++t) acc[t] = load(store<T>(Op::apply(acc[t], load(y[r].v[t]))));
    }
  }
  Vec<T, V> out;
#pragma unroll
  for (int t = 0; t < V; ++t) out.v[t] = store<T>(s.apply(acc[t]));
  return out;
}

template <typename T, typename Op, int V>
__global__ void reducePeersFewKernel(PeerPtrs<T> peers, int n, size_t begin, size_t count, Scale s) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  const size_t first = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const size_t nv = count / V;
  for (size_t i = first; i < nv; i += stride) {
    const size_t at = begin / V + i;  // begin % V == 0 when V > 1
    Vec<T, V> y[kFastPeers];
#pragma unroll
    for (int r = 0; r < kFastPeers; ++r)
      if (r < n) y[r] = reinterpret_cast<const Vec<T, V>*>(peers.p[r])[at];
    const Vec<T, V> x = combinePeers<T, Op, V>(y, n, s);
#pragma unroll
    for (int r = 0; r < kFastPeers; ++r)
      if (r < n) reinterpret_cast<Vec<T, V>*>(peers.p[r])[at] = x;
  }
  // The tail (fewer than V elements), one element per thread.
  for (size_t i = begin + nv * V + first; i < begin + count; i += stride) {
    Vec<T, 1> y[kFastPeers];
#pragma unroll
    for (int r = 0; r < kFastPeers; ++r)
      if (r < n) y[r].v[0] = peers.p[r][i];
    const Vec<T, 1> x = combinePeers<T, Op, 1>(y, n, s);
#pragma unroll
    for (int r = 0; r < kFastPeers; ++r)
      if (r < n) peers.p[r][i] = x.v[0];
  }
}

// More than kFastPeers ranks: the same arithmetic, one load in flight per
// thread (loops unrolled to kMaxPeers with a break keep the pointers out of
// local memory).
template <typename T, typename Op, int V>
__global__ void reducePeersKernel(PeerPtrs<T> peers, int n, size_t begin, size_t count, Scale s) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  const size_t first = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const size_t nv = count / V;
  for (size_t i = first; i < nv; i += stride) {
    const size_t at = begin / V + i;  // begin % V == 0 when V > 1
    Vec<T, V> x = reinterpret_cast<const Vec<T, V>*>(peers.p[0])[at];
    typename Compute<T>::type acc[V];
#pragma unroll
    for (int t = 0; t < V; ++t) acc[t] = load(x.v[t]);
#pragma unroll
    for (int r = 1; r < kMaxPeers; ++r) {
      if (r >= n) break;
      const Vec<T, V> y = reinterpret_cast<const Vec<T, V>*>(peers.p[r])[at];
#pragma unroll
      for (int t = 0; t < V; ++t) acc[t] = load(store<T>(Op::apply(acc[t], load(y.v[t]))));
    }
#pragma unroll
    for (int t = 0; t < V; ++t) x.v[t] = store<T>(s.apply(acc[t]));
#pragma unroll
    for (int r = 0; r < kMaxPeers; ++r) {
      if (r >= n) break;
      reinterpret_cast<Vec<T, V>*>(peers.p[r])[at] = x;
    }
  }
  for (size_t i = begin + nv * V + first; i < begin + count; i += stride) {
    typename Compute<T>::type acc = load(peers.p[0][i]);
#pragma unroll
    for (int r = 1; r < kMaxPeers; ++r) {
      if (r >= n) break;
      acc = load(store<T>(Op::apply(acc, load(peers.p[r][i]))));
    }
    const T v = store<T>(s.apply(acc));
#pragma unroll
    for (int r = 0; r < kMaxPeers; ++r) {
      if (r >= n) break;
      peers.p[r][i] = v;
    }
  }
}

template <typename T, typename Op>
void launchReducePeers(void* const* ptrs, int n, size_t begin, size_t count, Scale s, cudaStream_t st) {
  constexpr int V = 16 / sizeof(T);
  PeerPtrs<T> peers{};
  bool vec = (begin * sizeof(T)) % 16 == 0;
  for (int r = 0; r < n; ++r) {
    peers.p[r] = static_cast<T*>(ptrs[r]);
    vec = vec && aligned16(ptrs[r]);
  }
  if (n <= kFastPeers && vec)
    reducePeersFewKernel<T, Op, V><<<gridFor(count / V + 1), kThreads, 0, st>>>(peers, n, begin, count, s);
  else if (n <= kFastPeers)
    reducePeersFewKernel<T, Op, 1><<<gridFor(count), kThreads, 0, st>>>(peers, n, begin, count, s);
  else if (vec)
    reducePeersKernel<T, Op, V><<<gridFor(count / V + 1), kThreads, 0, st>>>(peers, n, begin, count, s);
  else
    reducePeersKernel<T, Op, 1><<<gridFor(count), kThreads, 0, st>>>(peers, n, begin, count, s);
  AC_CUDA_LAUNCHED();
}

template <typename T>
__global__ void scaleKernel(T* out, const T* in, size_t n, Scale s) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = store<T>(s.apply(load(in[i])));
}

// The multi-tensor kernels' work list, passed by value as the kernel's
// argument (apex's multi_tensor_apply does the same): up to kListTensors
// tensors per launch, each cut into chunks of kChunkElems, a thread block per
// chunk. (A per-chunk table in device memory cost an allocation and a
// pageable upload per call, ~0.1 ms for 64 tensors.) Fits the 4 KiB a kernel
// argument may take on every architecture.
constexpr int kListTensors = 96;
constexpr size_t kChunkElems = 16384;
struct TensorList {
  const void* src[kListTensors];
  void* dst[kListTensors];
  size_t count[kListTensors];
  size_t firstChunk[kListTensors + 1];  // prefix sums of the tensors' chunk counts
  int n;
};
static_assert(sizeof(TensorList) <= 4096, "kernel arguments are limited to 4 KiB");

// Chunks whose source and destination are both 16-byte aligned (every chunk
// of tensors whose sizes keep the packed offsets aligned) move 16-byte
// vectors: one element per thread per load left each thread a single 4-byte
// load in flight. Others go element by element.
template <typename T>
__global__ void multiTensorKernel(TensorList list, Scale s) {
  constexpr int V = 16 / sizeof(T);
  const size_t chunks = list.firstChunk[list.n];
  for (size_t c = blockIdx.x; c < chunks; c += gridDim.x) {
    int t = 0;  // the tensor holding chunk c: the last t with firstChunk[t] <= c
    for (int step = kListTensors / 2 + 1; step > 0; step /= 2)
      while (t + step < list.n && list.firstChunk[t + step] <= c) t += step;
    const size_t begin = (c - list.firstChunk[t]) * kChunkElems;
    const size_t count = list.count[t] - begin < kChunkElems ? list.count[t] - begin : kChunkElems;
    const T* in = static_cast<const T*>(list.src[t]) + begin;
    T* out = static_cast<T*>(list.dst[t]) + begin;
    size_t done = 0;
    if (aligned16(in) && aligned16(out)) {
      const size_t nv = count / V;
      const auto* iv = reinterpret_cast<const Vec<T, V>*>(in);
      auto* ov = reinterpret_cast<Vec<T, V>*>(out);
      for (size_t i = threadIdx.x; i < nv; i += blockDim.x) {
        const Vec<T, V> x = iv[i];
        Vec<T, V> r;
#pragma unroll
        for (int e = 0; e < V; ++e) r.v[e] = store<T>(s.apply(load(x.v[e])));
        ov[i] = r;
      }
      done = nv * V;
    }
    for (size_t i = done + threadIdx.x; i < count; i += blockDim.x) out[i] = store<T>(s.apply(load(in[i])));
  }
}

// Tensor i reads srcs[i] (or the packed source at its offset) and writes
// dsts[i] (or the packed destination at its offset); empty tensors are
// skipped; a launch per kListTensors tensors.
template <typename T>
void launchMulti(const void* const* srcs, void* const* dsts, const size_t* counts, size_t n, const void* packedSrc,
                 void* packedDst, Scale s, cudaStream_t st) {
  TensorList list{};
  auto flush = [&] {
    if (list.n == 0) return;
    multiTensorKernel<T><<<gridFor(list.firstChunk[list.n] * kThreads), kThreads, 0, st>>>(list, s);
    AC_CUDA_LAUNCHED();
    list = TensorList{};
  };
  size_t offset = 0;
  for (size_t i = 0; i < n; ++i) {
    const size_t count = counts[i];
    const size_t at = offset;
    offset += count;
    if (count == 0) continue;
    const int k = list.n;
    list.src[k] = srcs ? srcs[i] : static_cast<const T*>(packedSrc) + at;
    list.dst[k] = dsts ? dsts[i] : static_cast<T*>(packedDst) + at;
    list.count[k] = count;
    list.firstChunk[k + 1] = list.firstChunk[k] + (count + kChunkElems - 1) / kChunkElems;
    list.n = k + 1;
    if (list.n == kListTensors) flush();
  }
  flush();
}

template <typename F>
void dispatchFloat(DataType dt, const char* what, F&& f) {
  switch (dt) {
    case DataType::Float32: return f(float{});
    case DataType::Float64: return f(double{});
    case DataType::Float16: return f(__half{});
    case DataType::BFloat16: return f(__nv_bfloat16{});
    default: break;
  }
  throw InvalidArgument(strCat("CUDA ", what, ": dtype ", dataTypeName(dt),
                               " is not supported on the device (float32, float64, float16, bfloat16)"));
}

__global__ void toHalfKernel(const float* src, __half* dst, size_t n, float scale) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    dst[i] = __float2half_rn(src[i] * scale);
}
__global__ void toBf16Kernel(const float* src, __nv_bfloat16* dst, size_t n, float scale) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    dst[i] = __float2bfloat16_rn(src[i] * scale);
}
__global__ void fromHalfKernel(const __half* src, float* dst, size_t n, float scale) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    dst[i] = __half2float(src[i]) * scale;
}
__global__ void fromBf16Kernel(const __nv_bfloat16* src, float* dst, size_t n, float scale) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    dst[i] = __bfloat162float(src[i]) * scale;
}

}  // namespace

bool available(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    if (why) *why = e != cudaSuccess ? cudaGetErrorString(e) : "no CUDA device";
    cudaGetLastError();  // clear the sticky error of the failed query
    return false;
  }
  return true;
}

void reduce(void* dst, const void* a, const void* b, size_t count, DataType dt, ReduceOp op, FinalScale scale,
            Stream stream) {
  if (count == 0) return;
  const ReduceOp combine = combiningOp(op);
  dispatchFloat(dt, "reduce", [&](auto tag) {
    reduceTyped<decltype(tag)>(dst, a, b, count, combine, scaleOf(scale), asStream(stream));
  });
}

void reducePeers(void* const* peers, int n, size_t begin, size_t count, DataType dt, ReduceOp op, FinalScale scale,
                 Stream stream) {
  AC_CHECK(n >= 1 && n <= kMaxPeers, InvalidArgument, "CUDA reducePeers: ", n, " peers (1..", kMaxPeers, ")");
  if (count == 0) return;
  const ReduceOp combine = combiningOp(op);
  dispatchFloat(dt, "reducePeers", [&](auto tag) {
    using T = decltype(tag);
    const Scale s = scaleOf(scale);
    switch (combine) {
      case ReduceOp::Sum: return launchReducePeers<T, OpSum>(peers, n, begin, count, s, asStream(stream));
      case ReduceOp::Product: return launchReducePeers<T, OpProd>(peers, n, begin, count, s, asStream(stream));
      case ReduceOp::Min: return launchReducePeers<T, OpMin>(peers, n, begin, count, s, asStream(stream));
      case ReduceOp::Max: return launchReducePeers<T, OpMax>(peers, n, begin, count, s, asStream(stream));
      default: break;
    }
    throw InvalidArgument(strCat("CUDA reducePeers: op ", reduceOpName(op), " is not supported on the device"));
  });
}

void zero(void* dst, size_t bytes, Stream stream) {
  if (bytes) AC_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, asStream(stream)));
}

void applyScale(void* dst, const void* src, size_t count, DataType dt, FinalScale scale, Stream stream) {
  if (count == 0) return;
  if (!scale.active()) {
    if (dst != src)
      AC_CUDA_CHECK(cudaMemcpyAsync(dst, src, count * elementSize(dt), cudaMemcpyDeviceToDevice, asStream(stream)));
    return;
  }
  dispatchFloat(dt, "applyScale", [&](auto tag) {
    using T = decltype(tag);
    scaleKernel<T><<<gridFor(count), kThreads, 0, asStream(stream)>>>(static_cast<T*>(dst),
                                                                       static_cast<const T*>(src), count,
                                                                       scaleOf(scale));
    AC_CUDA_LAUNCHED();
  });
}

void packScaled(const void* const* srcs, const size_t* counts, size_t n, void* dst, DataType dt, FinalScale scale,
                Stream stream) {
  dispatchFloat(dt, "pack", [&](auto tag) {
    using T = decltype(tag);
    launchMulti<T>(srcs, nullptr, counts, n, nullptr, dst, scaleOf(scale), asStream(stream));
  });
}

void unpackScaled(const void* src, void* const* dsts, const size_t* counts, size_t n, DataType dt, FinalScale scale,
                  Stream stream) {
  dispatchFloat(dt, "unpack", [&](auto tag) {
    using T = decltype(tag);
    launchMulti<T>(nullptr, dsts, counts, n, src, nullptr, scaleOf(scale), asStream(stream));
  });
}

void castFromFloat(const float* src, void* dst, size_t n, DataType dt, float scale, Stream stream) {
  if (n == 0) return;
  auto st = asStream(stream);
  if (dt == DataType::Float16)
    toHalfKernel<<<gridFor(n), kThreads, 0, st>>>(src, static_cast<__half*>(dst), n, scale);
  else if (dt == DataType::BFloat16)
    toBf16Kernel<<<gridFor(n), kThreads, 0, st>>>(src, static_cast<__nv_bfloat16*>(dst), n, scale);
  else
    throw InvalidArgument(strCat("CUDA cast: float16 or bfloat16 expected, got ", dataTypeName(dt)));
  AC_CUDA_LAUNCHED();
}

void castToFloat(const void* src, DataType dt, float* dst, size_t n, float scale, Stream stream) {
  if (n == 0) return;
  auto st = asStream(stream);
  if (dt == DataType::Float16)
    fromHalfKernel<<<gridFor(n), kThreads, 0, st>>>(static_cast<const __half*>(src), dst, n, scale);
  else if (dt == DataType::BFloat16)
    fromBf16Kernel<<<gridFor(n), kThreads, 0, st>>>(static_cast<const __nv_bfloat16*>(src), dst, n, scale);
  else
    throw InvalidArgument(strCat("CUDA cast: float16 or bfloat16 expected, got ", dataTypeName(dt)));
  AC_CUDA_LAUNCHED();
}

}  // namespace agentcomm::kernels::cuda
