// Run-time dispatch to the AVX-512 / AVX2 reduction loops (reduce_simd.inc).
// Standard and intrinsic headers come first, outside the target pragmas, so
// that nothing but our own loops is compiled for the wider instruction sets.
#include "kernels/cpu/reduce_simd.h"

#include <cstdlib>
#include <cstring>
#include <strings.h>

#include "core/env.h"
#include "core/error.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define AC_HAVE_X86_SIMD 1
#endif

namespace agentcomm::kernels::simd {

#ifdef AC_HAVE_X86_SIMD
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#define AC_SIMD_NS avx512
#define AC_SIMD_WIDTH 512
#include "kernels/cpu/reduce_simd.inc"
#undef AC_SIMD_NS
#undef AC_SIMD_WIDTH
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define AC_SIMD_NS avx2
#define AC_SIMD_WIDTH 256
#include "kernels/cpu/reduce_simd.inc"
#undef AC_SIMD_NS
#undef AC_SIMD_WIDTH
#pragma GCC pop_options
#endif

namespace {

Level detect() {
#ifdef AC_HAVE_X86_SIMD
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq"))
    return Level::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return Level::Avx2;
#endif
  return Level::Scalar;
}

Level initial() {
  const Level hw = detect();
  const char* env = envText("AGENTCOMM_SIMD");
  if (env == nullptr || *env == 0) return hw;
  Level want = Level::Scalar;
  if (strcasecmp(env, "avx512") == 0) {
    want = Level::Avx512;
  } else if (strcasecmp(env, "avx2") == 0) {
    want = Level::Avx2;
  } else if (strcasecmp(env, "scalar") != 0) {
    throw InvalidArgument(strCat("AGENTCOMM_SIMD=", env, " is not one of scalar, avx2, avx512"));
  }
  return static_cast<int>(want) <= static_cast<int>(hw) ? want : hw;  // never above what the CPU has
}

Level& current() {
  static Level level = initial();
  return level;
}

}  // namespace

Level level() { return current(); }
Level hardwareLevel() { return detect(); }
void setLevel(Level l) {
  current() = static_cast<int>(l) <= static_cast<int>(detect()) ? l : detect();
}
const char* levelName(Level l) {
  switch (l) {
    case Level::Scalar: return "scalar";
    case Level::Avx2: return "avx2";
    case Level::Avx512: return "avx512";
  }
  return "?";
}

size_t streamAlignment() {
#ifdef AC_HAVE_X86_SIMD
  switch (current()) {
    case Level::Avx512: return avx512::kStreamAlign;
    case Level::Avx2: return avx2::kStreamAlign;
    default: break;
  }
#endif
  return 0;
}

void streamFence() {
#ifdef AC_HAVE_X86_SIMD
  if (current() == Level::Avx512) return avx512::fence();
  if (current() == Level::Avx2) return avx2::fence();
#endif
}

size_t reduce(void* dst, const void* a, const void* b, size_t count, DataType dt, ReduceOp op, FinalScale scale,
              bool stream) {
  int o = -1;
  switch (op) {
    case ReduceOp::Sum: o = 0; break;
    case ReduceOp::Product: o = 1; break;
    case ReduceOp::Min: o = 2; break;
    case ReduceOp::Max: o = 3; break;
    default: return 0;
  }
  const int sk = scale.kind == FinalScale::Kind::Divide ? 1 : scale.kind == FinalScale::Kind::Multiply ? 2 : 0;
#ifdef AC_HAVE_X86_SIMD
  switch (current()) {
    case Level::Avx512: return avx512::reduce(dst, a, b, count, dt, o, sk, scale.value, stream);
    case Level::Avx2: return avx2::reduce(dst, a, b, count, dt, o, sk, scale.value, stream);
    default: break;
  }
#endif
  return 0;
}

}  // namespace agentcomm::kernels::simd
