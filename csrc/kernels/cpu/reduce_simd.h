#pragma once
// Vectorised reduction loops for float32/float64/float16/bfloat16 with
// SUM/PRODUCT/MIN/MAX and the fused final scale, chosen at run time
// (AVX-512, AVX2+F16C, or none). Results are bitwise those of the scalar
// kernels. AGENTCOMM_SIMD=scalar|avx2|avx512 caps the level.
#include <cstddef>

#include "core/dtype.h"
#include "core/reduce_op.h"

namespace agentcomm::kernels::simd {

enum class Level { Scalar = 0, Avx2 = 1, Avx512 = 2 };
Level level();
Level hardwareLevel();
void setLevel(Level l);  // tests and benchmarks; clamped to the hardware level
const char* levelName(Level l);

// Reduces a prefix of the buffers and returns its length (a multiple of the
// vector width, shorter when a NaN meets 16-bit storage); 0 when the
// (dtype, op) pair has no vector loop. The caller finishes the rest.
// stream: float32/float64 only, dst aligned to streamAlignment(): store with
// non-temporal stores (the output is not read again by this core soon);
// call streamFence() before publishing the data to other processes.
size_t reduce(void* dst, const void* a, const void* b, size_t count, DataType dt, ReduceOp op, FinalScale scale,
              bool stream = false);
size_t streamAlignment();  // 0 without a vector unit
void streamFence();

}  // namespace agentcomm::kernels::simd
