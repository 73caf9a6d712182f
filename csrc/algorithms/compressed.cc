// Compressed all-reduces (see compressed.h). Both run their exchanges as
// direct all-to-all rounds over the transport: post every receive, send to
// r+1, r+2, ..., wait. Variable-size payloads (sparse pairs) are preceded by a
// round of 8-byte counts so every receive is posted with its exact size.
//
// Buffer ownership: everything received lands in Context::scratch slots,
// owned by this (worker) thread for the duration of the call; `data`,
// `residual` and `serverResidual` are the caller's and are written only by
// this rank.
#include "algorithms/compressed.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <vector>

#include "algorithms/algorithms.h"
#include "algorithms/ring_schedule.h"
#include "core/error.h"
#include "kernels/compress.h"

namespace agentcomm::algorithms {

namespace {

constexpr uint64_t kPhaseCompressed = 10;
enum Step : uint64_t {
  kCounts = 0,
  kPairs,
  kSliceHeader,
  kSlice,
  kCodes,
  kScales,
  kCodes2,
  kScales2,
};
constexpr uint64_t kDenseSlice = ~uint64_t{0};

// A sparse element on the wire: index inside the receiver's (or sender's) range.
struct Pair {
  uint32_t index;
  float value;
};
static_assert(sizeof(Pair) == 8, "wire format");

using Clock = std::chrono::steady_clock;
uint64_t nsSince(Clock::time_point t0) {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
}

// Balanced contiguous ranges of [0, count) by rank (sparse ownership).
size_t rangeStart(size_t count, int p, int n) { return count * static_cast<size_t>(p) / static_cast<size_t>(n); }

// Carves 64-byte-aligned pieces out of one scratch slot.
class Carver {
 public:
  template <typename T>
  void add(T*& ptr, size_t elems) {
    offsets_.push_back(total_);
    targets_.push_back(reinterpret_cast<void**>(&ptr));
    total_ += (elems * sizeof(T) + 63) / 64 * 64;
  }
  void commit(int slot) {
    uint8_t* base = Context::scratch(slot, total_ + 64);
    base = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(base) + 63) / 64 * 64);
    for (size_t i = 0; i < targets_.size(); ++i) *targets_[i] = base + offsets_[i];
  }

 private:
  size_t total_ = 0;
  std::vector<size_t> offsets_;
  std::vector<void**> targets_;
};

// Direct exchange of one fixed-size item with every peer: send[p] to p,
// recv[p] from p (sizes known on both sides). Own item untouched.
void exchange(const Context& ctx, uint64_t step, const std::vector<const void*>& send,
              const std::vector<size_t>& sendBytes, const std::vector<void*>& recv,
              const std::vector<size_t>& recvBytes, CompressionStats* stats) {
  const int n = ctx.size(), r = ctx.rank();
  std::vector<RecvHandle> hs;
  for (int k = 1; k < n; ++k) {
    const int p = (r - k + n) % n;
    hs.push_back(ctx.postRecv(p, makeTag(kPhaseCompressed, step, 0), recv[p], recvBytes[p]));
  }
  for (int k = 1; k < n; ++k) {
    const int p = (r + k) % n;
    ctx.send(p, makeTag(kPhaseCompressed, step, 0), send[p], sendBytes[p]);
    if (stats) stats->sentBytes += sendBytes[p];
  }
  for (auto& h : hs) ctx.wait(h);
}

// Sends the same buffer to every peer (an all-gather round).
void exchangeSame(const Context& ctx, uint64_t step, const void* mine, size_t myBytes, const std::vector<void*>& recv,
                  const std::vector<size_t>& recvBytes, CompressionStats* stats) {
  const int n = ctx.size();
  exchange(ctx, step, std::vector<const void*>(n, mine), std::vector<size_t>(n, myBytes), recv, recvBytes, stats);
}

void randomkAllReduce(Context& ctx, const SparseAllReduceOptions& o) {
  const size_t k = std::min(o.k, o.count);
  // Not a scratch slot: allReduce below uses those for its own staging.
  thread_local std::vector<float> valsBuf;
  float* vals = o.encodedVal;
  if (!vals) {
    valsBuf.resize(k);
    vals = valsBuf.data();
    auto t0 = Clock::now();
    float* src = o.residual ? o.residual : o.data;
    kernels::randomkGather(src, o.residual ? o.data : nullptr, o.count, k, o.seed, vals, o.residual != nullptr);
    if (o.stats) o.stats->encodeNs += nsSince(t0);
  }
  // The k values are dense and at the same indices on every rank.
  Context sub(ctx.transport, ctx.seq, ctx.collective, DataType::Float32);
  sub.op = ReduceOp::Sum;
  sub.signature = ctx.signature;
  sub.deadline = ctx.deadline;
  sub.chunkBytes = ctx.chunkBytes;
  sub.members = ctx.members;
  sub.memberRank = ctx.memberRank;
  AllReduceOptions ar;
  ar.data = vals;
  ar.count = k;
  ar.algo = tcpAllReduceAlgo(k * sizeof(float), ctx.size());
  allReduce(sub, ar);
  if (o.stats) {
    const size_t n = static_cast<size_t>(ctx.size());
    const size_t bytes = k * sizeof(float);
    size_t steps = 0;  // recursive doubling: ceil(log2 n) whole-vector sends at most
    while ((size_t{1} << steps) < n) ++steps;
    o.stats->sentBytes += ar.algo == AllReduceAlgo::Direct              ? (n - 1) * bytes
                          : ar.algo == AllReduceAlgo::RecursiveDoubling ? steps * bytes
                                                                        : 2 * (n - 1) * bytes / n;
  }
  if (o.encodedVal) return;  // the caller scatters
  const auto t0 = Clock::now();
  std::memset(o.data, 0, o.count * sizeof(float));
  kernels::randomkScatter(vals, o.count, k, o.seed, o.scale, o.data);
  if (o.stats) o.stats->decodeNs += nsSince(t0);
}

}  // namespace

void sparseAllReduce(Context& ctx, const SparseAllReduceOptions& o) {
  AC_CHECK(o.count < (size_t{1} << 32), InvalidArgument, "sparse all_reduce: ", o.count,
           " elements; at most 2^32 - 1 per call");
  AC_CHECK(!o.encodedVal || !o.residual, InvalidArgument,
           "sparse all_reduce: encoded input takes no residual (the encoder applied it)");
  if (o.stats) o.stats->rawBytes += o.count * sizeof(float);
  if (o.method == SparseMethod::RandomK) return randomkAllReduce(ctx, o);
  const int n = ctx.size(), r = ctx.rank();
  const size_t k = std::min(o.k, o.count);

  // 1. Encode: (index, value) pairs, indices ascending, error feedback fused.
  const uint32_t* idx = o.encodedIdx;
  const float* val = o.encodedVal;
  size_t got = o.encodedCount;
  auto t0 = Clock::now();
  if (val) {
    AC_CHECK(idx && got <= k && (got == 0 || idx[got - 1] < o.count), InvalidArgument,
             "sparse all_reduce: encoded pairs out of range");
  } else {
    uint32_t* idxOut = nullptr;
    float* valOut = nullptr;
    Carver c;
    c.add(idxOut, k);
    c.add(valOut, k);
    c.commit(0);
    float* src = o.residual ? o.residual : o.data;
    const float* add = o.residual ? o.data : nullptr;
    const bool ef = o.residual != nullptr;
    got = o.method == SparseMethod::TopKSampled ? kernels::topkSampled(src, add, o.count, k, idxOut, valOut, ef, o.seed)
                                                : kernels::topkExact(src, add, o.count, k, idxOut, valOut, ef);
    idx = idxOut;
    val = valOut;
  }
  // Split by owner range and pack (offset inside the owner's range, value)
  // pairs: one message per owner.
  std::vector<size_t> split(n + 1);
  for (int p = 0; p <= n; ++p) {
    const size_t lo = rangeStart(o.count, p, n);
    split[p] = static_cast<size_t>(std::lower_bound(idx, idx + got, static_cast<uint32_t>(std::min(lo, o.count))) - idx);
  }
  split[n] = got;
  Pair* pairs = nullptr;
  {
    Carver c;
    c.add(pairs, got);
    c.commit(1);
  }
  for (int p = 0; p < n; ++p) {
    const uint32_t lo = static_cast<uint32_t>(rangeStart(o.count, p, n));
    for (size_t j = split[p]; j < split[p + 1]; ++j) pairs[j] = Pair{idx[j] - lo, val[j]};
  }
  if (o.stats) o.stats->encodeNs += nsSince(t0);

  // 2. Sparse reduce-scatter: counts, then pairs to their owners.
  const std::vector<size_t> eight(split.size() - 1, 8);  // one 8-byte count per peer
  std::vector<uint64_t> sendCount(n), recvCount(n);
  for (int p = 0; p < n; ++p) sendCount[p] = split[p + 1] - split[p];
  {
    std::vector<const void*> sp(n);
    std::vector<void*> rp(n);
    for (int p = 0; p < n; ++p) {
      sp[p] = &sendCount[p];
      rp[p] = &recvCount[p];
    }
    exchange(ctx, kCounts, sp, eight, rp, eight, o.stats);
  }
  recvCount[r] = sendCount[r];
  const size_t lo = rangeStart(o.count, r, n);
  const size_t sliceLen = rangeStart(o.count, r + 1, n) - lo;
  size_t totalIn = 0;
  for (int p = 0; p < n; ++p) totalIn += p == r ? 0 : recvCount[p];
  Pair* inPairs = nullptr;
  Pair* outPairs = nullptr;
  {
    Carver c;
    c.add(inPairs, totalIn);
    c.add(outPairs, sliceLen);
    c.commit(2);
  }
  // The owner sums straight into its own range of data: that input was
  // consumed by the encoding (step 1), and the result belongs there.
  float* acc = o.data + lo;
  std::vector<const Pair*> from(n);
  {
    std::vector<const void*> sp(n);
    std::vector<size_t> sb(n), rb(n);
    std::vector<void*> rp(n);
    size_t off = 0;
    for (int p = 0; p < n; ++p) {
      sp[p] = pairs + split[p];
      sb[p] = sendCount[p] * sizeof(Pair);
      rb[p] = recvCount[p] * sizeof(Pair);
      if (p == r) {
        from[p] = pairs + split[r];
      } else {
        rp[p] = inPairs + off;
        from[p] = inPairs + off;
        off += recvCount[p];
      }
    }
    exchange(ctx, kPairs, sp, sb, rp, rb, o.stats);
  }

  // 3. The owner sums its slice in rank order (the same order on every run).
  t0 = Clock::now();
  std::memset(acc, 0, sliceLen * sizeof(float));
  for (int p = 0; p < n; ++p) {
    const Pair* pp = from[p];
    for (size_t j = 0; j < recvCount[p]; ++j) {
      AC_CHECK(pp[j].index < sliceLen, MismatchError, "sparse all_reduce: rank ", p, " sent index ",
               pp[j].index + lo, " outside the range of rank ", r);
      acc[pp[j].index] += pp[j].value;
    }
  }
  // Scale, and list the non-zeros in index order. Untouched elements stay
  // +0 (0 * a finite non-negative scale is +0): when few pairs came in, only
  // the touched indices are visited (their sorted union: each sender's
  // indices ascend), not the whole slice.
  size_t nnz = 0;
  auto visit = [&](size_t j) {
    const float v = acc[j] * o.scale;
    acc[j] = v;
    if (v != 0.0f || v != v) outPairs[nnz++] = Pair{static_cast<uint32_t>(j), v};  // NaN counts as non-zero
  };
  size_t received = 0;
  for (int p = 0; p < n; ++p) received += recvCount[p];
  bool sparseVisit = std::isfinite(o.scale) && !std::signbit(o.scale) &&
                     received * static_cast<size_t>(n) * 4 < sliceLen;
  std::vector<uint32_t> touched;
  if (sparseVisit) {
    touched.reserve(received);
    for (int p = 0; p < n && sparseVisit; ++p) {
      const size_t begin = touched.size();
      for (size_t j = 0; j < recvCount[p]; ++j) {
        const uint32_t i = from[p][j].index;
        if (j > 0 && i <= touched.back()) {  // not strictly ascending: visit everything
          sparseVisit = false;
          break;
        }
        touched.push_back(i);
      }
      std::inplace_merge(touched.begin(), touched.begin() + static_cast<ptrdiff_t>(begin), touched.end());
    }
  }
  if (sparseVisit) {
    for (size_t t = 0; t < touched.size(); ++t)
      if (t == 0 || touched[t] != touched[t - 1]) visit(touched[t]);
  } else {
    for (size_t j = 0; j < sliceLen; ++j) visit(j);
  }
  const bool dense = static_cast<double>(nnz) * sizeof(Pair) >= o.denseSwitch * static_cast<double>(sliceLen) * 4.0;
  const uint64_t header = dense ? kDenseSlice : nnz;
  if (o.stats) o.stats->decodeNs += nsSince(t0);

  // 4. All-gather the reduced slices: headers, then each slice sparse or dense.
  std::vector<uint64_t> headers(n);
  {
    std::vector<void*> rp(n);
    for (int p = 0; p < n; ++p) rp[p] = &headers[p];
    exchangeSame(ctx, kSliceHeader, &header, 8, rp, eight, o.stats);
  }
  headers[r] = header;
  // Dense slices land directly in data (already encoded in step 1, so free);
  // sparse ones in scratch, scattered after.
  std::vector<size_t> sparseOff(n, 0);
  size_t sparseTotal = 0;
  for (int p = 0; p < n; ++p)
    if (p != r && headers[p] != kDenseSlice) {
      sparseOff[p] = sparseTotal;
      sparseTotal += headers[p];
    }
  Pair* gathered = nullptr;
  {
    Carver c;
    c.add(gathered, sparseTotal);
    c.commit(3);
  }
  {
    std::vector<void*> rp(n);
    std::vector<size_t> rb(n);
    for (int p = 0; p < n; ++p) {
      const size_t plo = rangeStart(o.count, p, n);
      const size_t plen = rangeStart(o.count, p + 1, n) - plo;
      const bool pDense = headers[p] == kDenseSlice;
      rp[p] = pDense ? static_cast<void*>(o.data + plo) : static_cast<void*>(gathered + sparseOff[p]);
      rb[p] = pDense ? plen * 4 : headers[p] * sizeof(Pair);
    }
    if (dense)
      exchangeSame(ctx, kSlice, acc, sliceLen * 4, rp, rb, o.stats);
    else
      exchangeSame(ctx, kSlice, outPairs, nnz * sizeof(Pair), rp, rb, o.stats);
  }
  t0 = Clock::now();
  for (int p = 0; p < n; ++p) {
    const size_t plo = rangeStart(o.count, p, n);
    const size_t plen = rangeStart(o.count, p + 1, n) - plo;
    float* out = o.data + plo;
    if (p != r && headers[p] != kDenseSlice) {
      std::memset(out, 0, plen * sizeof(float));
      const Pair* pp = gathered + sparseOff[p];
      for (size_t j = 0; j < headers[p]; ++j) {
        AC_CHECK(pp[j].index < plen, MismatchError, "sparse all_reduce: rank ", p, " sent index ",
                 pp[j].index + plo, " outside its range");
        out[pp[j].index] = pp[j].value;
      }
    }
  }
  if (o.stats) o.stats->decodeNs += nsSince(t0);
}

Slice quantSlice(size_t count, size_t block, int rank, int size) {
  const size_t nb = kernels::quantBlocks(count, block);
  const size_t b0 = nb * static_cast<size_t>(rank) / static_cast<size_t>(size);
  const size_t b1 = nb * static_cast<size_t>(rank + 1) / static_cast<size_t>(size);
  Slice s;
  s.offset = std::min(count, b0 * block);
  s.count = std::min(count, b1 * block) - s.offset;
  return s;
}

void quantizedAllReduce(Context& ctx, const QuantizedAllReduceOptions& o) {
  AC_CHECK(kernels::validQuantBits(o.bits), InvalidArgument, "quantized all_reduce: bits must be 8, 4 or 1, got ",
           o.bits);
  AC_CHECK(o.block > 0 && o.block % 8 == 0, InvalidArgument,
           "quantized all_reduce: block must be a positive multiple of 8, got ", o.block);
  if (o.stats) o.stats->rawBytes += o.count * sizeof(float);
  const int n = ctx.size(), r = ctx.rank();
  const int bits = o.bits;
  const size_t block = o.block;
  const size_t nb = kernels::quantBlocks(o.count, block);
  // Full blocks are whole bytes, so a block-aligned slice starts at a byte.
  auto codeOffset = [&](size_t elemOffset) { return elemOffset / block * (block * static_cast<size_t>(bits) / 8); };
  std::vector<Slice> slices(n);
  for (int p = 0; p < n; ++p) slices[p] = quantSlice(o.count, block, p, n);
  const Slice mine = slices[r];
  const size_t myCodeBytes = kernels::quantCodeBytes(mine.count, bits, block);
  const size_t myBlocks = kernels::quantBlocks(mine.count, block);

  const bool pre = o.encodedCodes != nullptr;
  AC_CHECK(!pre || (o.encodedScales && o.decodedCodes && o.decodedScales && !o.residual), InvalidArgument,
           "quantized all_reduce: encoded input needs its scales and the decoded outputs, and takes no residual");
  uint8_t* codes = nullptr;   // round 1, whole gradient
  float* scales = nullptr;
  uint8_t* inCodes = nullptr;  // round 1 from every rank, my slice, rank p at p * myCodeBytes
  float* inScales = nullptr;
  float* acc = nullptr;        // my slice's sum
  uint8_t* codes2 = o.decodedCodes;  // round 2, every rank's slice at codeOffset(slice.offset)
  float* scales2 = o.decodedScales;  // at slice.offset / block
  {
    Carver c;
    if (!pre) {
      c.add(codes, kernels::quantCodeBytes(o.count, bits, block));
      c.add(scales, nb);
      c.add(codes2, kernels::quantCodeBytes(o.count, bits, block));
      c.add(scales2, nb);
    }
    c.add(inCodes, myCodeBytes * static_cast<size_t>(n));
    c.add(inScales, myBlocks * static_cast<size_t>(n));
    c.add(acc, mine.count);
    c.commit(0);
  }

  // 1. Encode the whole gradient (worker error feedback fused).
  auto t0 = Clock::now();
  if (pre) {
    codes = const_cast<uint8_t*>(o.encodedCodes);  // only read below
    scales = const_cast<float*>(o.encodedScales);
  } else if (o.residual) {
    kernels::quantize(o.residual, o.data, o.count, bits, block, o.seed, codes, scales, true);
  } else {
    kernels::quantize(o.data, nullptr, o.count, bits, block, o.seed, codes, scales, false);
  }
  if (o.stats) o.stats->encodeNs += nsSince(t0);

  // 2. Compressed reduce-scatter: slice p of my codes to rank p.
  {
    std::vector<const void*> sc(n), ss(n);
    std::vector<size_t> bc(n), bs(n), rbc(n, myCodeBytes), rbs(n, myBlocks * 4);
    std::vector<void*> rc(n), rs(n);
    for (int p = 0; p < n; ++p) {
      sc[p] = codes + codeOffset(slices[p].offset);
      bc[p] = kernels::quantCodeBytes(slices[p].count, bits, block);
      ss[p] = scales + slices[p].offset / block;
      bs[p] = kernels::quantBlocks(slices[p].count, block) * 4;
      rc[p] = inCodes + myCodeBytes * static_cast<size_t>(p);
      rs[p] = inScales + myBlocks * static_cast<size_t>(p);
    }
    std::memcpy(rc[r], sc[r], myCodeBytes);
    std::memcpy(rs[r], ss[r], myBlocks * 4);
    exchange(ctx, kCodes, sc, bc, rc, rbc, o.stats);
    exchange(ctx, kScales, ss, bs, rs, rbs, o.stats);
  }

  // 3. Sum my slice in rank order, scaled; re-quantize with server error feedback.
  t0 = Clock::now();
  for (int p = 0; p < n; ++p)
    kernels::dequantize(inCodes + myCodeBytes * static_cast<size_t>(p), inScales + myBlocks * static_cast<size_t>(p),
                        mine.count, bits, block, o.scale, p > 0, acc);
  uint8_t* myCodes2 = codes2 + codeOffset(mine.offset);
  float* myScales2 = scales2 + mine.offset / block;
  const uint64_t seed2 = o.seed ^ (0x5851f42d4c957f2dull * static_cast<uint64_t>(r + 1));
  if (o.serverResidual)
    kernels::quantize(o.serverResidual, acc, mine.count, bits, block, seed2, myCodes2, myScales2, true);
  else
    kernels::quantize(acc, nullptr, mine.count, bits, block, seed2, myCodes2, myScales2, false);
  if (o.stats) o.stats->decodeNs += nsSince(t0);

  // 4. All-gather the quantized slices and decode everything.
  {
    std::vector<void*> rc(n), rs(n);
    std::vector<size_t> bc(n), bs(n);
    for (int p = 0; p < n; ++p) {
      rc[p] = codes2 + codeOffset(slices[p].offset);
      bc[p] = kernels::quantCodeBytes(slices[p].count, bits, block);
      rs[p] = scales2 + slices[p].offset / block;
      bs[p] = kernels::quantBlocks(slices[p].count, block) * 4;
    }
    exchangeSame(ctx, kCodes2, myCodes2, myCodeBytes, rc, bc, o.stats);
    exchangeSame(ctx, kScales2, myScales2, myBlocks * 4, rs, bs, o.stats);
  }
  if (pre) return;  // the caller decodes
  t0 = Clock::now();
  kernels::dequantize(codes2, scales2, o.count, bits, block, 1.0f, false, o.data);
  if (o.stats) o.stats->decodeNs += nsSince(t0);
}

}  // namespace agentcomm::algorithms
