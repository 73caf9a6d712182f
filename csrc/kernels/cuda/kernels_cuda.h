#pragma once
// CUDA twins of the CPU kernels (kernels/kernels.h, kernels/compress.h): the
// same contracts over device pointers, plus the stream the work is queued on.
// No CUDA header is needed to include this one (the stream is opaque), so the
// torch adapter and the tests can call it from plain C++.
//
// Bitwise parity with the CPU: every kernel computes what its CPU twin
// computes, operation for operation (compiled with -fmad=false, the CPU with
// -ffp-contract=off; the same hash streams for stochastic rounding, DGC
// samples and random-k indices), so a rank on a GPU and a rank on a CPU encode
// and decode identically. Tests compare against the CPU twins with equality.
//
// Unless a function says otherwise it only queues work: results are ready
// when the stream reaches that point. Errors (a bad argument, a failed launch)
// throw agentcomm::InvalidArgument / agentcomm::Error.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/dtype.h"
#include "core/reduce_op.h"

namespace agentcomm::kernels::cuda {

using Stream = void*;  // a cudaStream_t; nullptr is the legacy default stream

// Whether a usable device exists; `why` (optional) receives the reason if not.
bool available(std::string* why = nullptr);

// dst = a (op) b then the final scale, elementwise (kernels::reduce). Float32,
// float64, float16, bfloat16; sum, product, min, max. 16-byte vector loads when
// the three pointers are 16-byte aligned, grid-stride loops.
void reduce(void* dst, const void* a, const void* b, size_t count, DataType dt, ReduceOp op, FinalScale scale,
            Stream stream);
// Ranks' buffers inside one host (CUDA IPC mappings; several ranks may share
// one device): over elements [begin, begin + count), combine peers[0..n-1] in
// rank order, apply the final scale, and write the result into every peer's
// buffer. One rank calls it per slice of an all-reduce; the caller guarantees
// that no one else reads or writes that slice of any buffer meanwhile.
constexpr int kMaxPeers = 16;
void reducePeers(void* const* peers, int n, size_t begin, size_t count, DataType dt, ReduceOp op, FinalScale scale,
                 Stream stream);
// dst[0, bytes) = 0.
void zero(void* dst, size_t bytes, Stream stream);
// dst = src * scale (kernels::applyScale).
void applyScale(void* dst, const void* src, size_t count, DataType dt, FinalScale scale, Stream stream);
// Multi-tensor pack / unpack in one launch (kernels::packScaled). The pointer
// and count arrays are host arrays of device pointers.
void packScaled(const void* const* srcs, const size_t* counts, size_t n, void* dst, DataType dt, FinalScale scale,
                Stream stream);
void unpackScaled(const void* src, void* const* dsts, const size_t* counts, size_t n, DataType dt, FinalScale scale,
                  Stream stream);

// kernels::castFromFloat / castToFloat.
void castFromFloat(const float* src, void* dst, size_t n, DataType dt, float scale, Stream stream);
void castToFloat(const void* src, DataType dt, float* dst, size_t n, float scale, Stream stream);

// kernels::quantize / dequantize: one thread block per quantization block.
void quantize(float* data, const float* add, size_t n, int bits, size_t block, uint64_t seed, uint8_t* codes,
              float* scales, bool errorFeedback, Stream stream);
void dequantize(const uint8_t* codes, const float* scales, size_t n, int bits, size_t block, float alpha,
                bool accumulate, float* out, Stream stream);

// kernels::topkExact / topkSampled. These synchronize the stream (the
// histogram, the sample and the counts come back to the host) and return the
// number of pairs written, as the CPU twins do.
size_t topkExact(float* data, const float* add, size_t n, size_t k, uint32_t* idx, float* val, bool zeroSelected,
                 Stream stream);
// topkExact's older path (the boundary bin's size read back, its candidates
// radix-sorted): what topkExact falls back to when its candidate buffers
// overflow; public for the tests and the bench.
size_t topkExactSorted(float* data, const float* add, size_t n, size_t k, uint32_t* idx, float* val,
                       bool zeroSelected, Stream stream);
size_t topkSampled(float* data, const float* add, size_t n, size_t k, uint32_t* idx, float* val, bool zeroSelected,
                   uint64_t seed, Stream stream);

// kernels::randomkGather / randomkScatter (indices from kernels::randomkIndex).
void randomkGather(float* data, const float* add, size_t n, size_t k, uint64_t seed, float* val, bool zeroSelected,
                   Stream stream);
void randomkScatter(const float* val, size_t n, size_t k, uint64_t seed, float scale, float* out, Stream stream);

}  // namespace agentcomm::kernels::cuda
