// CPU gradient-compression kernels (contracts in kernels/compress.h).
//
// Top-k: magnitudes compared as integers. For a float x, bits(x) & 0x7fffffff
// orders exactly like |x| (NaN above inf), so selection is a radix select on
// 31-bit keys: a 4096-bin histogram of the top 12 bits (exponent + 4 mantissa
// bits) in one pass, the bin holding the k-th key located from the top, and a
// second pass that takes everything above that bin and collects the bin's
// members as candidates for an exact nth_element. Both passes stream the data
// once; torch.topk instead keeps a heap or sorts.
//
// Quantization: one block at a time (the block stays in L1): one pass fuses
// the error-feedback add with the block's max (or mean) magnitude, the second
// encodes, and with error feedback subtracts the decoded value in place.
// The hot loops are plain C++ compiled for AVX-512 / AVX2 / baseline
// (target_clones), picked at load time.
#include "kernels/compress.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "kernels/hash.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define AC_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define AC_CLONES
#endif

namespace agentcomm::kernels {

namespace {

inline uint32_t magnitudeKey(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u & 0x7fffffffu;
}

using hash::seed32;

// Candidate for selection: larger is better (magnitude first, then lower index).
inline uint64_t candidate(uint32_t key, uint32_t i) { return (static_cast<uint64_t>(key) << 32) | (0xffffffffu - i); }
inline uint32_t candidateIndex(uint64_t c) { return 0xffffffffu - static_cast<uint32_t>(c); }

std::vector<uint64_t>& candidateScratch() {
  thread_local std::vector<uint64_t> v;
  return v;
}
std::vector<uint32_t>& indexScratch() {
  thread_local std::vector<uint32_t> v;
  return v;
}

void addInPlace(float* data, const float* add, size_t n) {
  if (add)
    for (size_t i = 0; i < n; ++i) data[i] += add[i];
}

// The `need` best of cand[0..count) (by candidate order), as ascending
// indices, merged with `above` (ascending) into idx; fills val, zeroes.
size_t finishSelection(float* data, std::vector<uint64_t>& cand, size_t count, size_t need, const uint32_t* above,
                       size_t nAbove, uint32_t* idx, float* val, bool zeroSelected) {
  if (need < count)
    std::nth_element(cand.begin(), cand.begin() + static_cast<ptrdiff_t>(need), cand.begin() + static_cast<ptrdiff_t>(count),
                     std::greater<uint64_t>());
  auto& chosen = indexScratch();
  chosen.resize(need);
  for (size_t j = 0; j < need; ++j) chosen[j] = candidateIndex(cand[j]);
  std::sort(chosen.begin(), chosen.end());
  // Merge two ascending index lists.
  size_t a = 0, c = 0, o = 0;
  while (a < nAbove || c < need) {
    if (c == need || (a < nAbove && above[a] < chosen[c]))
      idx[o++] = above[a++];
    else
      idx[o++] = chosen[c++];
  }
  for (size_t j = 0; j < o; ++j) val[j] = data[idx[j]];
  if (zeroSelected)
    for (size_t j = 0; j < o; ++j) data[idx[j]] = 0.0f;
  return o;
}

size_t selectAll(float* data, const float* add, size_t n, uint32_t* idx, float* val, bool zeroSelected) {
  addInPlace(data, add, n);
  for (size_t i = 0; i < n; ++i) {
    idx[i] = static_cast<uint32_t>(i);
    val[i] = data[i];
    if (zeroSelected) data[i] = 0.0f;
  }
  return n;
}

}  // namespace

size_t topkExact(float* data, const float* add, size_t n, size_t k, uint32_t* idx, float* val, bool zeroSelected) {
  AC_CHECK(n < (size_t{1} << 32), InvalidArgument, "top-k: ", n, " elements; at most 2^32 - 1 per buffer");
  if (k >= n) return selectAll(data, add, n, idx, val, zeroSelected);
  if (k == 0) {
    addInPlace(data, add, n);
    return 0;
  }
  constexpr int kBins = 4096;
  constexpr int kShift = 19;  // 31-bit key -> top 12 bits
  // Four interleaved histograms: consecutive equal bins would otherwise
  // serialize on one counter's store-to-load forwarding.
  std::vector<uint32_t> hist(4 * kBins, 0);
  uint32_t* h0 = hist.data();
  uint32_t* h1 = h0 + kBins;
  uint32_t* h2 = h1 + kBins;
  uint32_t* h3 = h2 + kBins;
  size_t i = 0;
  if (add) {
    for (; i + 4 <= n; i += 4) {
      data[i] += add[i];
      data[i + 1] += add[i + 1];
      data[i + 2] += add[i + 2];
      data[i + 3] += add[i + 3];
      ++h0[magnitudeKey(data[i]) >> kShift];
      ++h1[magnitudeKey(data[i + 1]) >> kShift];
      ++h2[magnitudeKey(data[i + 2]) >> kShift];
      ++h3[magnitudeKey(data[i + 3]) >> kShift];
    }
    for (; i < n; ++i) {
      data[i] += add[i];
      ++h0[magnitudeKey(data[i]) >> kShift];
    }
  } else {
    for (; i + 4 <= n; i += 4) {
      ++h0[magnitudeKey(data[i]) >> kShift];
      ++h1[magnitudeKey(data[i + 1]) >> kShift];
      ++h2[magnitudeKey(data[i + 2]) >> kShift];
      ++h3[magnitudeKey(data[i + 3]) >> kShift];
    }
    for (; i < n; ++i) ++h0[magnitudeKey(data[i]) >> kShift];
  }
  for (int b = 0; b < kBins; ++b) h0[b] += h1[b] + h2[b] + h3[b];
  // The boundary bin: keys in bins above it are all selected.
  size_t nAbove = 0;
  int bin = kBins - 1;
  while (nAbove + h0[bin] < k) nAbove += h0[bin--];
  const size_t need = k - nAbove;
  const size_t nCand = h0[bin];
  const uint32_t b = static_cast<uint32_t>(bin);

  std::vector<uint32_t> above(nAbove);
  auto& cand = candidateScratch();
  cand.resize(nCand);
  size_t a = 0, c = 0;
  for (size_t j = 0; j < n; ++j) {
    const uint32_t key = magnitudeKey(data[j]);
    const uint32_t kb = key >> kShift;
    if (kb >= b) {  // rare: at most k + nCand elements
      if (kb > b)
        above[a++] = static_cast<uint32_t>(j);
      else
        cand[c++] = candidate(key, static_cast<uint32_t>(j));
    }
  }
  return finishSelection(data, cand, nCand, need, above.data(), nAbove, idx, val, zeroSelected);
}

size_t topkSampled(float* data, const float* add, size_t n, size_t k, uint32_t* idx, float* val, bool zeroSelected,
                   uint64_t seed) {
  AC_CHECK(n < (size_t{1} << 32), InvalidArgument, "top-k: ", n, " elements; at most 2^32 - 1 per buffer");
  if (k == 0 || k >= n || n < 8192) return topkExact(data, add, n, k, idx, val, zeroSelected);
  // Stratified sample: one element from each of s equal strata.
  const size_t s = std::min(n, std::max<size_t>(4096, n / 256));
  const size_t stride = n / s;
  std::vector<uint32_t> sample(s);
  const uint32_t s32 = seed32(seed);
  for (size_t j = 0; j < s; ++j) {
    const size_t at = hash::sampleIndex(j, stride, s32);
    sample[j] = magnitudeKey(add ? data[at] + add[at] : data[at]);
  }
  // Aim 25% (+ a few) above the expected count so the estimate rarely misses low.
  const size_t want = std::min(s, static_cast<size_t>(static_cast<double>(k) * static_cast<double>(s) / n * 1.25) + 4);
  std::nth_element(sample.begin(), sample.begin() + static_cast<ptrdiff_t>(want - 1), sample.end(), std::greater<uint32_t>());
  const uint32_t threshold = sample[want - 1];
  const size_t cap = k + k / 2 + 1024;
  auto& cand = candidateScratch();
  cand.resize(cap);
  size_t count = 0;
  for (size_t j = 0; j < n; ++j) {
    if (add) data[j] += add[j];
    const uint32_t key = magnitudeKey(data[j]);
    if (key >= threshold) {
      if (count < cap) cand[count] = candidate(key, static_cast<uint32_t>(j));
      ++count;
    }
  }
  if (count < k || count > cap) return topkExact(data, nullptr, n, k, idx, val, zeroSelected);  // add already applied
  return finishSelection(data, cand, count, k, nullptr, 0, idx, val, zeroSelected);
}

uint32_t randomkIndex(uint64_t seed, size_t n, size_t k, size_t j) { return hash::randomkIndex(seed, n, k, j); }

void randomkGather(float* data, const float* add, size_t n, size_t k, uint64_t seed, float* val, bool zeroSelected) {
  AC_CHECK(n < (size_t{1} << 32) && k <= n, InvalidArgument, "random-k: k = ", k, " of ", n, " elements");
  addInPlace(data, add, n);
  for (size_t j = 0; j < k; ++j) {
    const uint32_t i = randomkIndex(seed, n, k, j);
    val[j] = data[i];
    if (zeroSelected) data[i] = 0.0f;
  }
}

void randomkScatter(const float* val, size_t n, size_t k, uint64_t seed, float scale, float* out) {
  for (size_t j = 0; j < k; ++j) out[randomkIndex(seed, n, k, j)] = val[j] * scale;
}

// ---- Quantization -----------------------------------------------------------

namespace {

// x += add (if any) and the block's largest magnitude (as a key: integer max
// vectorizes where a float max reduction would need -ffast-math).
AC_CLONES uint32_t addAndMaxKey(float* x, const float* add, size_t m) {
  uint32_t best = 0;
  if (add) {
    for (size_t j = 0; j < m; ++j) {
      const float v = x[j] + add[j];
      x[j] = v;
      uint32_t u;
      std::memcpy(&u, &v, 4);
      u &= 0x7fffffffu;
      best = u > best ? u : best;
    }
  } else {
    for (size_t j = 0; j < m; ++j) {
      uint32_t u;
      std::memcpy(&u, &x[j], 4);
      u &= 0x7fffffffu;
      best = u > best ? u : best;
    }
  }
  return best;
}

AC_CLONES float addAndAbsSum(float* x, const float* add, size_t m) {
  // 32 running sums over j = 32i + t (vectorizes without reassociation
  // flags), added in a fixed pairwise tree, then the tail in order. The CUDA
  // twin computes the same: each lane of a warp one running sum, the tree by
  // xor-shuffles (a + b == b + a exactly, so every lane ends with this sum).
  float part[32] = {};
  size_t j = 0;
  if (add)
    for (size_t t = 0; t < m; ++t) x[t] += add[t];
  for (; j + 32 <= m; j += 32)
    for (int t = 0; t < 32; ++t) part[t] += std::fabs(x[j + t]);
  for (int w = 16; w > 0; w /= 2)
    for (int t = 0; t < w; ++t) part[t] += part[t + w];
  float sum = part[0];
  for (; j < m; ++j) sum += std::fabs(x[j]);
  return sum;
}

// Random bits for a block: one 32-bit hash per pair of elements, read as two
// 16-bit uniforms (the rounding is unbiased to within 2^-16 of a step). A
// separate loop so both this and the rounding loop vectorize.
AC_CLONES void blockRandom(uint32_t* out, size_t pairs, uint32_t firstPair, uint32_t s32) {
  for (size_t p = 0; p < pairs; ++p) out[p] = hash::pairBits(firstPair + static_cast<uint32_t>(p), s32);
}

// q[j] = floor(x[j] * inv + u_j) clamped to [-L, L]; with ef, x[j] -= q * step.
AC_CLONES void stochasticRound(float* x, size_t m, const uint16_t* rnd, float inv, float step, float L, int8_t* q,
                               bool ef) {
  for (size_t j = 0; j < m; ++j) {
    const float u = static_cast<float>(rnd[j]) * (1.0f / 65536.0f);
    float r = std::floor(x[j] * inv + u);
    r = r > L ? L : r;
    r = r < -L ? -L : r;
    q[j] = static_cast<int8_t>(r);
    if (ef) x[j] -= r * step;
  }
}

AC_CLONES void packNibbles(const int8_t* q, size_t m, uint8_t* out) {
  const size_t pairs = m / 2;
  for (size_t b = 0; b < pairs; ++b)
    out[b] = static_cast<uint8_t>(static_cast<uint8_t>(q[2 * b] + 8) | (static_cast<uint8_t>(q[2 * b + 1] + 8) << 4));
  if (m % 2) out[pairs] = static_cast<uint8_t>(static_cast<uint8_t>(q[m - 1] + 8) | (8 << 4));
}

AC_CLONES void signEncode(float* x, size_t m, float s, uint8_t* bits, bool ef) {
  for (size_t b = 0; b < m / 8; ++b) {
    uint8_t byte = 0;
    for (int t = 0; t < 8; ++t) byte |= static_cast<uint8_t>(x[b * 8 + t] >= 0.0f) << t;
    bits[b] = byte;
  }
  if (m % 8) {
    uint8_t byte = 0;
    for (size_t t = 0; t < m % 8; ++t) byte |= static_cast<uint8_t>(x[m / 8 * 8 + t] >= 0.0f) << t;
    bits[m / 8] = byte;
  }
  if (ef)
    for (size_t j = 0; j < m; ++j) x[j] -= x[j] >= 0.0f ? s : -s;
}

template <bool Acc>
inline void put(float* out, float v) {
  if constexpr (Acc)
    *out += v;
  else
    *out = v;
}

template <bool Acc>
AC_CLONES void decode8(const int8_t* q, size_t m, float step, float* out) {
  for (size_t j = 0; j < m; ++j) put<Acc>(out + j, static_cast<float>(q[j]) * step);
}

// One byte -> two elements (low nibble first); loops over bytes so the
// vectorizer sees plain strided stores instead of a gather.
template <bool Acc>
AC_CLONES void decode4(const uint8_t* q, size_t m, float step, float* out) {
  const size_t pairs = m / 2;
  for (size_t b = 0; b < pairs; ++b) {
    put<Acc>(out + 2 * b, static_cast<float>(static_cast<int>(q[b] & 0xf) - 8) * step);
    put<Acc>(out + 2 * b + 1, static_cast<float>(static_cast<int>(q[b] >> 4) - 8) * step);
  }
  if (m % 2) put<Acc>(out + m - 1, static_cast<float>(static_cast<int>(q[pairs] & 0xf) - 8) * step);
}

// Sign bits -> +-1 for all 256 bytes: a byte decodes with one 8-float load.
struct SignTable {
  alignas(32) float v[256][8];
  SignTable() {
    for (int b = 0; b < 256; ++b)
      for (int t = 0; t < 8; ++t) v[b][t] = ((b >> t) & 1) ? 1.0f : -1.0f;
  }
};
const SignTable kSigns;

template <bool Acc>
AC_CLONES void decode1(const uint8_t* bits, size_t m, float s, float* out) {
  const size_t full = m / 8;
  for (size_t b = 0; b < full; ++b) {
    const float* sg = kSigns.v[bits[b]];
    for (int t = 0; t < 8; ++t) put<Acc>(out + 8 * b + t, sg[t] * s);
  }
  for (size_t j = full * 8; j < m; ++j) put<Acc>(out + j, kSigns.v[bits[full]][j - full * 8] * s);
}

size_t blockCodeBytes(size_t m, int bits) { return (m * static_cast<size_t>(bits) + 7) / 8; }

}  // namespace

bool validQuantBits(int bits) { return bits == 8 || bits == 4 || bits == 1; }

size_t quantCodeBytes(size_t count, int bits, size_t block) {
  // Full blocks are whole bytes (block % 8 == 0); only the last may be padded.
  const size_t full = count / block;
  return full * blockCodeBytes(block, bits) + blockCodeBytes(count - full * block, bits);
}

void quantize(float* data, const float* add, size_t n, int bits, size_t block, uint64_t seed, uint8_t* codes,
              float* scales, bool errorFeedback) {
  AC_CHECK(validQuantBits(bits), InvalidArgument, "quantize: bits must be 8, 4 or 1, got ", bits);
  AC_CHECK(block > 0 && block % 8 == 0, InvalidArgument, "quantize: block must be a positive multiple of 8, got ", block);
  const uint32_t s32 = seed32(seed);
  thread_local std::vector<int8_t> tmp;
  thread_local std::vector<uint32_t> rnd;
  if (bits == 4) tmp.resize(block);
  if (bits != 1) rnd.resize(block / 2 + 1);
  for (size_t b0 = 0, blk = 0; b0 < n; b0 += block, ++blk) {
    const size_t m = std::min(block, n - b0);
    float* x = data + b0;
    const float* a = add ? add + b0 : nullptr;
    uint8_t* out = codes + blk * blockCodeBytes(block, bits);
    if (bits == 1) {
      const float s = addAndAbsSum(x, a, m) / static_cast<float>(m);
      scales[blk] = s;
      signEncode(x, m, s, out, errorFeedback);
      continue;
    }
    const float L = bits == 8 ? 127.0f : 7.0f;
    const uint32_t key = addAndMaxKey(x, a, m);
    float amax;
    std::memcpy(&amax, &key, 4);
    scales[blk] = amax;
    int8_t* q = bits == 8 ? reinterpret_cast<int8_t*>(out) : tmp.data();
    if (!std::isfinite(amax)) {
      // inf/NaN in the block: the decoded block is the scale times 0, i.e.
      // NaN, so it propagates as a dense reduction would; the residual restarts.
      std::memset(q, 0, m);
      if (errorFeedback)
        for (size_t j = 0; j < m; ++j) x[j] = 0.0f;
    } else if (!std::isfinite(L / amax)) {
      // All zeros, or magnitudes so small (< ~4e-37) that L / amax overflows:
      // send nothing (scale 0); error feedback keeps the values for later.
      scales[blk] = 0.0f;
      std::memset(q, 0, m);
    } else {
      const size_t pairs = (m + 1) / 2;
      blockRandom(rnd.data(), pairs, static_cast<uint32_t>(b0 / 2), s32);
      stochasticRound(x, m, reinterpret_cast<const uint16_t*>(rnd.data()), L / amax, amax / L, L, q, errorFeedback);
    }
    if (bits == 4) packNibbles(q, m, out);
  }
}

void dequantize(const uint8_t* codes, const float* scales, size_t n, int bits, size_t block, float alpha,
                bool accumulate, float* out) {
  AC_CHECK(validQuantBits(bits), InvalidArgument, "dequantize: bits must be 8, 4 or 1, got ", bits);
  for (size_t b0 = 0, blk = 0; b0 < n; b0 += block, ++blk) {
    const size_t m = std::min(block, n - b0);
    const uint8_t* in = codes + blk * blockCodeBytes(block, bits);
    const float s = scales[blk];
    // A non-finite scale decodes to NaN (0 * inf) so the caller sees it.
    switch (bits) {
      case 8:
        if (accumulate)
          decode8<true>(reinterpret_cast<const int8_t*>(in), m, s / 127.0f * alpha, out + b0);
        else
          decode8<false>(reinterpret_cast<const int8_t*>(in), m, s / 127.0f * alpha, out + b0);
        break;
      case 4:
        if (accumulate)
          decode4<true>(in, m, s / 7.0f * alpha, out + b0);
        else
          decode4<false>(in, m, s / 7.0f * alpha, out + b0);
        break;
      default:
        if (accumulate)
          decode1<true>(in, m, s * alpha, out + b0);
        else
          decode1<false>(in, m, s * alpha, out + b0);
        break;
    }
  }
}

// ---- Casts --------------------------------------------------------------------

namespace {
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2,f16c"))) void toHalfF16c(const float* src, uint16_t* dst, size_t n, float scale) {
  size_t i = 0;
  const __m256 sc = _mm256_set1_ps(scale);
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(src + i), sc);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
  for (; i < n; ++i) dst[i] = floatToHalf(src[i] * scale);
}
__attribute__((target("avx2,f16c"))) void fromHalfF16c(const uint16_t* src, float* dst, size_t n, float scale) {
  size_t i = 0;
  const __m256 sc = _mm256_set1_ps(scale);
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
    _mm256_storeu_ps(dst + i, _mm256_mul_ps(v, sc));
  }
  for (; i < n; ++i) dst[i] = halfToFloat(src[i]) * scale;
}
bool hasF16c() {
  static const bool yes = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx2");
  return yes;
}
#endif

AC_CLONES void toBf16(const float* src, uint16_t* dst, size_t n, float scale) {
  for (size_t i = 0; i < n; ++i) dst[i] = floatToBf16(src[i] * scale);
}
AC_CLONES void fromBf16(const uint16_t* src, float* dst, size_t n, float scale) {
  for (size_t i = 0; i < n; ++i) dst[i] = bf16ToFloat(src[i]) * scale;
}
}  // namespace

void castFromFloat(const float* src, void* dst, size_t n, DataType dt, float scale) {
  auto* out = static_cast<uint16_t*>(dst);
  if (dt == DataType::BFloat16) return toBf16(src, out, n, scale);
  AC_CHECK(dt == DataType::Float16, InvalidArgument, "cast: float16 or bfloat16 expected, got ", dataTypeName(dt));
#if defined(__x86_64__) && defined(__GNUC__)
  if (hasF16c()) return toHalfF16c(src, out, n, scale);
#endif
  for (size_t i = 0; i < n; ++i) out[i] = floatToHalf(src[i] * scale);
}

void castToFloat(const void* src, DataType dt, float* dst, size_t n, float scale) {
  const auto* in = static_cast<const uint16_t*>(src);
  if (dt == DataType::BFloat16) return fromBf16(in, dst, n, scale);
  AC_CHECK(dt == DataType::Float16, InvalidArgument, "cast: float16 or bfloat16 expected, got ", dataTypeName(dt));
#if defined(__x86_64__) && defined(__GNUC__)
  if (hasF16c()) return fromHalfF16c(in, dst, n, scale);
#endif
  for (size_t i = 0; i < n; ++i) dst[i] = halfToFloat(in[i]) * scale;
}

}  // namespace agentcomm::kernels
