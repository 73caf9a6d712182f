// Portable CPU reduction kernels. Each (dtype, op) pair is one tight loop the
// compiler can vectorise; the final scale (AVG / PREMUL_SUM) is applied inside
// the same loop so the data is swept once.
#include <algorithm>
#include <complex>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "core/error.h"
#include "core/half.h"
#include "kernels/cpu/reduce_simd.h"
#include "kernels/kernels.h"

namespace agentcomm::kernels {
namespace {

struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

// Storage type -> type arithmetic happens in.
template <typename T> struct Compute { using type = T; };
template <> struct Compute<Half> { using type = float; };
template <> struct Compute<BFloat16> { using type = float; };

template <typename T> inline typename Compute<T>::type load(const T& v) { return v; }
inline float load(const Half& v) { return halfToFloat(v.bits); }
inline float load(const BFloat16& v) { return bf16ToFloat(v.bits); }

template <typename T> inline T store(typename Compute<T>::type v) { return static_cast<T>(v); }
template <> inline Half store<Half>(float v) { return Half{floatToHalf(v)}; }
template <> inline BFloat16 store<BFloat16>(float v) { return BFloat16{floatToBf16(v)}; }

// Wrapping integer arithmetic without signed-overflow UB.
template <typename C> inline C wrapAdd(C x, C y) {
  if constexpr (std::is_integral_v<C> && std::is_signed_v<C>) {
    using U = std::make_unsigned_t<C>;
    return static_cast<C>(static_cast<U>(x) + static_cast<U>(y));
  } else {
    return x + y;
  }
}
template <typename C> inline C wrapMul(C x, C y) {
  if constexpr (std::is_integral_v<C> && std::is_signed_v<C>) {
    using U = std::make_unsigned_t<C>;
    return static_cast<C>(static_cast<U>(x) * static_cast<U>(y));
  } else if constexpr (std::is_same_v<C, uint8_t>) {
    return static_cast<uint8_t>(static_cast<unsigned>(x) * static_cast<unsigned>(y));
  } else {
    return x * y;
  }
}

struct OpSum {
  template <typename C> static C apply(C x, C y) { return wrapAdd(x, y); }
};
struct OpProd {
  template <typename C> static C apply(C x, C y) { return wrapMul(x, y); }
};
struct OpMin {
  // NaN propagates, as torch.minimum does.
  template <typename C> static C apply(C x, C y) {
    if constexpr (std::is_floating_point_v<C>) {
      if (x != x) return x;
      if (y != y) return y;
    }
    return y < x ? y : x;
  }
};
struct OpMax {
  template <typename C> static C apply(C x, C y) {
    if constexpr (std::is_floating_point_v<C>) {
      if (x != x) return x;
      if (y != y) return y;
    }
    return x < y ? y : x;
  }
};
struct OpBAnd {
  template <typename C> static C apply(C x, C y) { return static_cast<C>(x & y); }
};
struct OpBOr {
  template <typename C> static C apply(C x, C y) { return static_cast<C>(x | y); }
};
struct OpBXor {
  template <typename C> static C apply(C x, C y) { return static_cast<C>(x ^ y); }
};

template <typename C> inline C scaleValue(C v, FinalScale s) {
  if constexpr (std::is_integral_v<C>) {
    // Integer AVG truncates toward zero, like C and NCCL.
    if (s.kind == FinalScale::Kind::Divide) return static_cast<C>(v / static_cast<C>(s.value));
    return static_cast<C>(v * static_cast<C>(s.value));
  } else {
    using R = std::conditional_t<std::is_same_v<C, std::complex<float>>, float,
                                 std::conditional_t<std::is_same_v<C, std::complex<double>>, double, C>>;
    if (s.kind == FinalScale::Kind::Divide) return v / static_cast<R>(s.value);
    return v * static_cast<R>(s.value);
  }
}

template <typename T, typename Op>
void reduceLoop(T* out, const T* a, const T* b, size_t n, FinalScale s) {
  // out may alias a or b exactly (never partially), so element i is read before written.
  if (!s.active()) {
    for (size_t i = 0; i < n; ++i) out[i] = store<T>(Op::apply(load(a[i]), load(b[i])));
  } else {
    for (size_t i = 0; i < n; ++i) out[i] = store<T>(scaleValue(Op::apply(load(a[i]), load(b[i])), s));
  }
}

template <typename T>
void reduceTyped(void* dst, const void* a, const void* b, size_t n, ReduceOp op, FinalScale s) {
  auto* o = static_cast<T*>(dst);
  auto* x = static_cast<const T*>(a);
  auto* y = static_cast<const T*>(b);
  using C = typename Compute<T>::type;
  constexpr bool isCplx = std::is_same_v<T, std::complex<float>> || std::is_same_v<T, std::complex<double>>;
  switch (op) {
    case ReduceOp::Sum: return reduceLoop<T, OpSum>(o, x, y, n, s);
    case ReduceOp::Product: return reduceLoop<T, OpProd>(o, x, y, n, s);
    case ReduceOp::Min:
      if constexpr (!isCplx) return reduceLoop<T, OpMin>(o, x, y, n, s);
      break;
    case ReduceOp::Max:
      if constexpr (!isCplx) return reduceLoop<T, OpMax>(o, x, y, n, s);
      break;
    case ReduceOp::BAnd:
      if constexpr (std::is_integral_v<C>) return reduceLoop<T, OpBAnd>(o, x, y, n, s);
      break;
    case ReduceOp::BOr:
      if constexpr (std::is_integral_v<C>) return reduceLoop<T, OpBOr>(o, x, y, n, s);
      break;
    case ReduceOp::BXor:
      if constexpr (std::is_integral_v<C>) return reduceLoop<T, OpBXor>(o, x, y, n, s);
      break;
    default: break;
  }
  throw InvalidArgument(strCat("reduce kernel: op ", reduceOpName(op), " is not a combining op for this dtype"));
}

// bool is reduced as bytes holding 0/1: SUM and MAX are OR, PRODUCT and MIN are AND.
void reduceBool(void* dst, const void* a, const void* b, size_t n, ReduceOp op) {
  auto* o = static_cast<uint8_t*>(dst);
  auto* x = static_cast<const uint8_t*>(a);
  auto* y = static_cast<const uint8_t*>(b);
  switch (op) {
    case ReduceOp::Sum:
    case ReduceOp::Max:
    case ReduceOp::BOr:
      for (size_t i = 0; i < n; ++i) o[i] = (x[i] | y[i]) != 0;
      return;
    case ReduceOp::Product:
    case ReduceOp::Min:
    case ReduceOp::BAnd:
      for (size_t i = 0; i < n; ++i) o[i] = (x[i] != 0) & (y[i] != 0);
      return;
    case ReduceOp::BXor:
      for (size_t i = 0; i < n; ++i) o[i] = (x[i] != 0) ^ (y[i] != 0);
      return;
    default: break;
  }
  throw InvalidArgument(strCat("reduce kernel: op ", reduceOpName(op), " is not defined for bool"));
}

template <typename T>
void scaleTyped(void* dst, const void* src, size_t n, FinalScale s) {
  auto* o = static_cast<T*>(dst);
  auto* x = static_cast<const T*>(src);
  for (size_t i = 0; i < n; ++i) o[i] = store<T>(scaleValue(load(x[i]), s));
}

template <typename F>
void dispatch(DataType dt, F&& f) {
  switch (dt) {
    case DataType::Float32: return f(float{});
    case DataType::Float64: return f(double{});
    case DataType::Float16: return f(Half{});
    case DataType::BFloat16: return f(BFloat16{});
    case DataType::Int8: return f(int8_t{});
    case DataType::Int16: return f(int16_t{});
    case DataType::Int32: return f(int32_t{});
    case DataType::Int64: return f(int64_t{});
    case DataType::UInt8: return f(uint8_t{});
    case DataType::Complex64: return f(std::complex<float>{});
    case DataType::Complex128: return f(std::complex<double>{});
    case DataType::Bool: break;
  }
  throw InvalidArgument(strCat("kernel dispatch: unsupported dtype ", dataTypeName(dt)));
}

}  // namespace

void reduce(void* dst, const void* a, const void* b, size_t count, DataType dt, ReduceOp op, FinalScale scale) {
  if (count == 0) return;
  if (dt == DataType::Bool) {
    if (scale.active()) throw InvalidArgument("reduce kernel: bool tensors cannot be scaled");
    return reduceBool(dst, a, b, count, op);
  }
  const size_t done = simd::reduce(dst, a, b, count, dt, op, scale);
  if (done == count) return;
  const size_t es = elementSize(dt);
  auto* o = static_cast<uint8_t*>(dst) + done * es;
  auto* x = static_cast<const uint8_t*>(a) + done * es;
  auto* y = static_cast<const uint8_t*>(b) + done * es;
  dispatch(dt, [&](auto tag) { reduceTyped<decltype(tag)>(o, x, y, count - done, op, scale); });
}

void reduceStreaming(void* dst, const void* a, const void* b, size_t count, DataType dt, ReduceOp op,
                     FinalScale scale) {
  const size_t align = simd::streamAlignment();
  const size_t es = elementSize(dt);
  const auto addr = reinterpret_cast<uintptr_t>(dst);
  if (align == 0 || (dt != DataType::Float32 && dt != DataType::Float64) || addr % es != 0) {
    return reduce(dst, a, b, count, dt, op, scale);
  }
  const size_t head = std::min(count, (align - addr % align) % align / es);
  reduce(dst, a, b, head, dt, op, scale);
  auto* o = static_cast<uint8_t*>(dst) + head * es;
  auto* x = static_cast<const uint8_t*>(a) + head * es;
  auto* y = static_cast<const uint8_t*>(b) + head * es;
  const size_t done = simd::reduce(o, x, y, count - head, dt, op, scale, /*stream=*/true);
  simd::streamFence();
  reduce(o + done * es, x + done * es, y + done * es, count - head - done, dt, op, scale);
}

void applyScale(void* dst, const void* src, size_t count, DataType dt, FinalScale scale) {
  if (count == 0) return;
  if (!scale.active()) {
    if (dst != src) std::memmove(dst, src, count * elementSize(dt));
    return;
  }
  if (dt == DataType::Bool) throw InvalidArgument("scale kernel: bool tensors cannot be scaled");
  dispatch(dt, [&](auto tag) { scaleTyped<decltype(tag)>(dst, src, count, scale); });
}

}  // namespace agentcomm::kernels
