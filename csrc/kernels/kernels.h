#pragma once
// Raw-pointer kernel API of the CPU implementation (cpu/); its CUDA twins
// (cuda/kernels_cuda.h) take the same arguments plus a stream. Buffers are plain pointers + element counts + DataType;
// no framework types cross this header.
#include <cstddef>

#include "core/dtype.h"
#include "core/reduce_op.h"

namespace agentcomm::kernels {

// dst[i] = a[i] (op) b[i], then the final scale if it is active.
// dst may alias a or b (the common in-place case). op must be a combining op
// (SUM, PRODUCT, MIN, MAX, BAND, BOR, BXOR); AVG and PREMUL_SUM are expressed
// as SUM plus a FinalScale on the last pass. float16/bfloat16 combine in float
// and round once per pass; integers wrap on overflow.
void reduce(void* dst, const void* a, const void* b, size_t count, DataType dt, ReduceOp op,
            FinalScale scale = FinalScale::none());

// Same result as reduce(), but float32/float64 outputs are written with
// non-temporal stores where the vector unit allows: for large outputs this
// core will not read again soon (they skip the read-for-ownership of every
// line). Fenced before returning, so the data may be published at once.
void reduceStreaming(void* dst, const void* a, const void* b, size_t count, DataType dt, ReduceOp op,
                     FinalScale scale = FinalScale::none());

// Multi-tensor pack / unpack (apex's multi_tensor_apply idea, for model
// averaging): one pass over n tensors of one dtype, the scale fused in.
// pack:   dst = concat(srcs[0][0..counts[0]), ...) * scale
// unpack: dsts[i][0..counts[i]) = src[offset_i ...] * scale, offsets the running sums of counts
void packScaled(const void* const* srcs, const size_t* counts, size_t n, void* dst, DataType dt, FinalScale scale);
void unpackScaled(const void* src, void* const* dsts, const size_t* counts, size_t n, DataType dt, FinalScale scale);

// dst[i] = src[i] * scale (dst may alias src). A no-op copy when scale is inactive.
void applyScale(void* dst, const void* src, size_t count, DataType dt, FinalScale scale);

}  // namespace agentcomm::kernels
