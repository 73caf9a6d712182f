// Compression kernels against naive references, and the compressed
// collectives against the dense sum of what every rank sent (world sizes 1..8
// over the in-process transport).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <numeric>
#include <random>
#include <vector>

#include "algorithms/algorithms.h"
#include "algorithms/compressed.h"
#include "core/error.h"
#include "core/half.h"
#include "kernels/compress.h"
#include "rank_threads.h"
#include "test_data.h"

using namespace agentcomm;
using namespace agentcomm::kernels;
using namespace agentcomm::algorithms;

namespace {

// Values from a small set, so magnitudes tie often (the tie rule is tested).
std::vector<float> tiedData(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(static_cast<int>(rng() % 41) - 20) * 0.25f;
  return v;
}

using agentcomm::testing::gaussData;

// Reference: stable sort by |x| descending, take k, return indices ascending.
std::vector<uint32_t> referenceTopk(const std::vector<float>& x, size_t k) {
  std::vector<uint32_t> order(x.size());
  std::iota(order.begin(), order.end(), 0u);
  std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return std::fabs(x[a]) > std::fabs(x[b]); });
  order.resize(std::min(k, x.size()));
  std::sort(order.begin(), order.end());
  return order;
}

}  // namespace

TEST(TopK, ExactEqualsStableSortReference) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{1000}, size_t{100003}}) {
    for (size_t k : {size_t{0}, size_t{1}, n / 100, n / 2, n > 0 ? n - 1 : 0, n, n + 5}) {
      for (int dist = 0; dist < 2; ++dist) {
        auto x = dist == 0 ? tiedData(n, 7 + static_cast<uint32_t>(n)) : gaussData(n, 9, 1e-3f);
        const auto ref = referenceTopk(x, k);
        std::vector<uint32_t> idx(std::max<size_t>(k, 1));
        std::vector<float> val(std::max<size_t>(k, 1));
        auto work = x;
        const size_t got = topkExact(work.data(), nullptr, n, k, idx.data(), val.data(), false);
        ASSERT_EQ(got, ref.size()) << "n=" << n << " k=" << k;
        for (size_t j = 0; j < got; ++j) {
          ASSERT_EQ(idx[j], ref[j]) << "n=" << n << " k=" << k << " j=" << j;
          ASSERT_EQ(val[j], x[ref[j]]);
        }
        ASSERT_EQ(work, x) << "without error feedback the data is left alone";
      }
    }
  }
}

TEST(TopK, SampledEqualsExactIncludingFallbacks) {
  // Gaussian (the estimate usually hits), all-equal magnitudes (too many
  // candidates: fallback), and a few huge outliers (too few: fallback).
  const size_t n = 200003;
  std::vector<std::vector<float>> inputs = {gaussData(n, 1), std::vector<float>(n, 0.5f), gaussData(n, 2, 1e-6f)};
  for (size_t i = 0; i < n; i += 997) inputs[2][i] = 1000.0f + static_cast<float>(i);
  for (auto& x : inputs) {
    for (size_t k : {size_t{1}, size_t{200}, size_t{2000}, size_t{20000}}) {
      std::vector<uint32_t> i1(k), i2(k);
      std::vector<float> v1(k), v2(k);
      auto a = x, b = x;
      const size_t g1 = topkExact(a.data(), nullptr, n, k, i1.data(), v1.data(), false);
      const size_t g2 = topkSampled(b.data(), nullptr, n, k, i2.data(), v2.data(), false, 42);
      ASSERT_EQ(g1, g2);
      ASSERT_EQ(i1, i2) << "k=" << k;
      ASSERT_EQ(v1, v2);
    }
  }
}

TEST(TopK, ErrorFeedbackConservesMass) {
  const size_t n = 50021, k = 500;
  for (int sampled = 0; sampled < 2; ++sampled) {
    auto residual = gaussData(n, 3, 0.5f);
    const auto grad = gaussData(n, 4);
    std::vector<float> expected(n);
    for (size_t i = 0; i < n; ++i) expected[i] = residual[i] + grad[i];
    std::vector<uint32_t> idx(k);
    std::vector<float> val(k);
    const size_t got = sampled ? topkSampled(residual.data(), grad.data(), n, k, idx.data(), val.data(), true, 5)
                               : topkExact(residual.data(), grad.data(), n, k, idx.data(), val.data(), true);
    ASSERT_EQ(got, k);
    auto sum = residual;
    for (size_t j = 0; j < k; ++j) {
      ASSERT_EQ(residual[idx[j]], 0.0f);
      sum[idx[j]] += val[j];
    }
    ASSERT_EQ(sum, expected) << "sent + residual == old residual + gradient, bitwise";
    // And the selection was the top-k of the accumulated values.
    EXPECT_EQ(std::vector<uint32_t>(idx.begin(), idx.end()), referenceTopk(expected, k));
  }
}

TEST(RandomK, IndicesDistinctStratifiedAndShared) {
  for (size_t n : {size_t{1}, size_t{10}, size_t{1000}, size_t{12345}}) {
    for (size_t k : {size_t{1}, n / 3 + 1, n}) {
      std::vector<uint32_t> a, b;
      for (size_t j = 0; j < k; ++j) {
        a.push_back(randomkIndex(77, n, k, j));
        b.push_back(randomkIndex(77, n, k, j));
        ASSERT_GE(a.back(), j * n / k);
        ASSERT_LT(a.back(), (j + 1) * n / k);
      }
      ASSERT_EQ(a, b);
      ASSERT_TRUE(std::is_sorted(a.begin(), a.end()));
      ASSERT_EQ(std::adjacent_find(a.begin(), a.end()), a.end());
    }
  }
  // Different seeds pick different indices.
  int differ = 0;
  for (size_t j = 0; j < 100; ++j) differ += randomkIndex(1, 100000, 100, j) != randomkIndex(2, 100000, 100, j);
  EXPECT_GT(differ, 90);
}

TEST(RandomK, GatherScatterWithErrorFeedback) {
  const size_t n = 10007, k = 101;
  auto residual = gaussData(n, 5);
  const auto grad = gaussData(n, 6);
  std::vector<float> expected(n);
  for (size_t i = 0; i < n; ++i) expected[i] = residual[i] + grad[i];
  std::vector<float> val(k), out(n, 0.0f);
  randomkGather(residual.data(), grad.data(), n, k, 9, val.data(), true);
  randomkScatter(val.data(), n, k, 9, 1.0f, out.data());
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(out[i] + residual[i], expected[i]);
}

TEST(Quantize, CodeSizes) {
  EXPECT_EQ(quantCodeBytes(0, 8, 256), 0u);
  EXPECT_EQ(quantCodeBytes(1000, 8, 256), 1000u);
  EXPECT_EQ(quantCodeBytes(1001, 4, 256), 501u);
  EXPECT_EQ(quantCodeBytes(513, 1, 256), 65u);
  EXPECT_EQ(quantCodeBytes(512, 1, 256), 64u);
}

TEST(Quantize, UnbiasedWithinStatisticalBounds) {
  // E[decode(quantize(x))] == x: average T independent encodings; each
  // element's error has variance <= step^2 / 4, so the mean's error is
  // within 6 * step / (2 sqrt(T)) with overwhelming probability.
  const size_t n = 1003, block = 64;
  const int T = 4000;
  const auto x = gaussData(n, 11);
  for (int bits : {8, 4}) {
    std::vector<double> mean(n, 0.0);
    std::vector<uint8_t> codes(quantCodeBytes(n, bits, block));
    std::vector<float> scales(quantBlocks(n, block)), dec(n);
    for (int t = 0; t < T; ++t) {
      auto work = x;
      quantize(work.data(), nullptr, n, bits, block, 1000 + t, codes.data(), scales.data(), false);
      ASSERT_EQ(work, x);
      dequantize(codes.data(), scales.data(), n, bits, block, 1.0f, false, dec.data());
      for (size_t i = 0; i < n; ++i) mean[i] += dec[i];
    }
    const float L = bits == 8 ? 127.0f : 7.0f;
    double worst = 0.0;
    for (size_t i = 0; i < n; ++i) {
      const double step = scales[i / block] / L;
      const double err = std::fabs(mean[i] / T - x[i]);
      worst = std::max(worst, err / step);
      ASSERT_LE(err, 6.0 * step / (2.0 * std::sqrt(static_cast<double>(T))) + 1e-7) << "bits=" << bits << " i=" << i;
    }
    // A biased (round-to-nearest) quantizer would show errors up to step / 2.
    EXPECT_LT(worst, 0.1);
  }
}

TEST(Quantize, ErrorFeedbackConservesMassAndExactLevels) {
  const size_t n = 777, block = 256;
  for (int bits : {8, 4, 1}) {
    auto residual = gaussData(n, 12, 0.1f);
    const auto grad = gaussData(n, 13);
    std::vector<uint8_t> codes(quantCodeBytes(n, bits, block));
    std::vector<float> scales(quantBlocks(n, block)), dec(n);
    std::vector<float> before(n);
    for (size_t i = 0; i < n; ++i) before[i] = residual[i] + grad[i];
    quantize(residual.data(), grad.data(), n, bits, block, 3, codes.data(), scales.data(), true);
    dequantize(codes.data(), scales.data(), n, bits, block, 1.0f, false, dec.data());
    for (size_t i = 0; i < n; ++i)
      ASSERT_NEAR(dec[i] + residual[i], before[i], 1e-6f * (1.0f + std::fabs(before[i]))) << "bits=" << bits;
    if (bits == 1) {
      for (size_t b = 0; b < quantBlocks(n, block); ++b) {
        double s = 0;
        const size_t m = std::min(block, n - b * block);
        for (size_t j = 0; j < m; ++j) s += std::fabs(before[b * block + j]);
        EXPECT_NEAR(scales[b], s / m, 1e-5);
        for (size_t j = 0; j < m; ++j)
          ASSERT_EQ(dec[b * block + j], before[b * block + j] >= 0 ? scales[b] : -scales[b]);
      }
    }
  }
  // Values on the quantization grid encode exactly (no randomness can move them).
  std::vector<float> grid(300);
  for (size_t i = 0; i < grid.size(); ++i)
    grid[i] = i % 128 == 0 ? 127.0f : static_cast<float>(static_cast<int>(i % 255) - 127);  // every block's max is 127
  std::vector<uint8_t> codes(quantCodeBytes(grid.size(), 8, 128));
  std::vector<float> scales(quantBlocks(grid.size(), 128)), dec(grid.size());
  auto g = grid;
  quantize(g.data(), nullptr, g.size(), 8, 128, 1, codes.data(), scales.data(), false);
  dequantize(codes.data(), scales.data(), g.size(), 8, 128, 1.0f, false, dec.data());
  EXPECT_EQ(dec, grid);
  // Accumulating decode with a scale.
  dequantize(codes.data(), scales.data(), g.size(), 8, 128, 0.5f, true, dec.data());
  for (size_t i = 0; i < g.size(); ++i) ASSERT_EQ(dec[i], grid[i] * 1.5f);
}

// The 1-bit scale is the mean |x| summed in one fixed order (the CUDA twin's
// warp computes the same bits): 32 running sums over j = 32i + t, combined
// pairwise (t += t + 16, then + 8, ...), then the tail j >= m / 32 * 32.
TEST(Quantize, OneBitMeanIsSummedInTheTreeOrder) {
  for (size_t block : {size_t{8}, size_t{40}, size_t{256}, size_t{2048}}) {
    const size_t n = 3 * block - 5;
    // Magnitudes over many binades, so another order gives other bits.
    auto x = gaussData(n, 21);
    for (size_t i = 0; i < n; ++i) x[i] *= std::ldexp(1.0f, static_cast<int>(i % 23) - 11);
    std::vector<uint8_t> codes(quantCodeBytes(n, 1, block));
    std::vector<float> scales(quantBlocks(n, block));
    auto work = x;
    quantize(work.data(), nullptr, n, 1, block, 0, codes.data(), scales.data(), false);
    for (size_t b = 0; b < scales.size(); ++b) {
      const float* v = x.data() + b * block;
      const size_t m = std::min(block, n - b * block);
      float part[32] = {};
      for (size_t i = 0; i < m / 32; ++i)
        for (size_t t = 0; t < 32; ++t) part[t] += std::fabs(v[32 * i + t]);
      for (size_t w = 16; w > 0; w /= 2)
        for (size_t t = 0; t < w; ++t) part[t] += part[t + w];
      float sum = part[0];
      for (size_t j = m / 32 * 32; j < m; ++j) sum += std::fabs(v[j]);
      ASSERT_EQ(scales[b], sum / static_cast<float>(m)) << "block=" << block << " b=" << b;
    }
  }
}

TEST(Quantize, TinyZeroAndNonFiniteBlocks) {
  // Blocks of zeros, of subnormals (L / max overflows), and with an inf.
  const size_t block = 16, n = 48;
  for (int bits : {8, 4, 1}) {
    std::vector<float> x(n, 0.0f);
    for (size_t j = 16; j < 32; ++j) x[j] = (j % 2 ? 1.0f : -1.0f) * 1e-40f;
    for (size_t j = 32; j < 48; ++j) x[j] = 0.5f;
    x[40] = std::numeric_limits<float>::infinity();
    auto residual = x;
    std::vector<uint8_t> codes(quantCodeBytes(n, bits, block));
    std::vector<float> scales(quantBlocks(n, block)), dec(n);
    quantize(residual.data(), nullptr, n, bits, block, 1, codes.data(), scales.data(), true);
    dequantize(codes.data(), scales.data(), n, bits, block, 1.0f, false, dec.data());
    for (size_t j = 0; j < 32; ++j) {
      ASSERT_TRUE(std::isfinite(dec[j])) << "bits=" << bits << " j=" << j;
      ASSERT_TRUE(std::isfinite(residual[j]));
      ASSERT_EQ(dec[j] + residual[j], x[j]) << "tiny values stay in the residual";
    }
    for (size_t j = 32; j < 48; ++j) ASSERT_FALSE(std::isfinite(dec[j])) << "inf/NaN propagates";
  }
}

TEST(Quantize, RejectsBadParameters) {
  float x[16] = {};
  uint8_t c[16];
  float s[2];
  EXPECT_THROW(quantize(x, nullptr, 16, 3, 8, 0, c, s, false), InvalidArgument);
  EXPECT_THROW(quantize(x, nullptr, 16, 8, 12, 0, c, s, false), InvalidArgument);
}

TEST(Cast, MatchesScalarConversionWithFusedScale) {
  auto x = gaussData(1031, 14, 1000.0f);
  x[0] = 1e9f;  // overflows float16 unless pre-divided
  for (DataType dt : {DataType::Float16, DataType::BFloat16}) {
    std::vector<uint16_t> h(x.size());
    std::vector<float> back(x.size());
    castFromFloat(x.data(), h.data(), x.size(), dt, 0.25f);
    castToFloat(h.data(), dt, back.data(), x.size(), 4.0f);
    for (size_t i = 0; i < x.size(); ++i) {
      const uint16_t want = dt == DataType::Float16 ? floatToHalf(x[i] * 0.25f) : floatToBf16(x[i] * 0.25f);
      ASSERT_EQ(h[i], want) << i;
      const float wantBack = (dt == DataType::Float16 ? halfToFloat(want) : bf16ToFloat(want)) * 4.0f;
      ASSERT_EQ(back[i], wantBack);
    }
  }
}

// ---- Collectives -------------------------------------------------------------

namespace {

// Integer-valued inputs: every sum is exact in float, in any order.
float rankInput(int rank, size_t i) { return static_cast<float>(static_cast<int>((i * 37 + rank * 11) % 23) - 11); }

Context compressedCtx(transport::Transport& t, uint64_t seq, uint64_t sig) {
  Context ctx(t, seq, algorithms::CollectiveKind::CompressedAllReduce, DataType::Float32);
  ctx.signature = sig;
  ctx.deadline = transport::Clock::now() + std::chrono::seconds(30);
  return ctx;
}

class CompressedWorld : public ::testing::TestWithParam<int> {};

}  // namespace

TEST_P(CompressedWorld, SparseEqualsDenseSumOfWhatWasSent) {
  const int n = GetParam();
  ranktest::runInProc(n, [&](transport::Transport& t) {
    const int r = t.rank();
    uint64_t seq = 0;
    for (SparseMethod method : {SparseMethod::TopK, SparseMethod::TopKSampled, SparseMethod::RandomK}) {
      for (size_t count : {size_t{0}, size_t{1}, size_t{5}, size_t{1000}, size_t{20011}}) {
        for (size_t k : {size_t{1}, count / 100 + 1, count / 3 + 1, count}) {
          for (int ef = 0; ef < 2; ++ef) {
            // What every rank sends, recomputed here from every rank's input.
            std::vector<double> expected(count, 0.0);
            std::vector<float> myResidualAfter;
            for (int p = 0; p < n; ++p) {
              std::vector<float> g(count), res(count);
              for (size_t i = 0; i < count; ++i) {
                g[i] = rankInput(p, i);
                res[i] = ef ? static_cast<float>((i + p) % 3) - 1.0f : 0.0f;
              }
              std::vector<uint32_t> idx(std::max<size_t>(k, 1));
              std::vector<float> val(std::max<size_t>(k, 1));
              size_t got = 0;
              if (method == SparseMethod::RandomK) {
                got = std::min(k, count);
                randomkGather(res.data(), g.data(), count, got, 99, val.data(), true);
                for (size_t j = 0; j < got; ++j) idx[j] = randomkIndex(99, count, got, j);
              } else {
                got = topkExact(res.data(), g.data(), count, k, idx.data(), val.data(), true);
              }
              for (size_t j = 0; j < got; ++j) expected[idx[j]] += val[j];
              if (p == r) myResidualAfter = res;
            }
            std::vector<float> data(count), residual(count);
            for (size_t i = 0; i < count; ++i) {
              data[i] = rankInput(r, i);
              residual[i] = static_cast<float>((i + r) % 3) - 1.0f;
            }
            SparseAllReduceOptions o;
            o.data = data.data();
            o.count = count;
            o.residual = ef ? residual.data() : nullptr;
            o.k = k;
            o.method = method;
            o.seed = 99;
            o.scale = 0.5f;
            CompressionStats stats;
            o.stats = &stats;
            auto ctx = compressedCtx(t, ++seq, count);
            sparseAllReduce(ctx, o);
            for (size_t i = 0; i < count; ++i)
              ASSERT_EQ(data[i], static_cast<float>(expected[i] * 0.5))
                  << "W=" << n << " method=" << int(method) << " count=" << count << " k=" << k << " ef=" << ef
                  << " i=" << i;
            if (ef) ASSERT_EQ(residual, myResidualAfter);
            ASSERT_EQ(stats.rawBytes, count * 4);
            if (n == 1) ASSERT_EQ(stats.sentBytes, 0u);
          }
        }
      }
    }
  });
}

TEST_P(CompressedWorld, QuantizedConservesTheSumOfWhatWasSent) {
  const int n = GetParam();
  std::mutex mu;
  std::vector<std::vector<float>> outputs(n);
  for (int bits : {8, 4, 1}) {
    for (size_t count : {size_t{0}, size_t{3}, size_t{1000}, size_t{4099}}) {
      const size_t block = 64;
      ranktest::runInProc(n, [&](transport::Transport& t) {
        const int r = t.rank();
        // Every rank's stage-1 decoded contribution, recomputed here.
        std::vector<double> sent(count, 0.0);
        for (int p = 0; p < n; ++p) {
          std::vector<float> g(count), res(count, 0.0f), dec(count);
          for (size_t i = 0; i < count; ++i) g[i] = rankInput(p, i) * 0.01f + 0.001f * static_cast<float>(i % 7);
          std::vector<uint8_t> codes(quantCodeBytes(count, bits, block) + 1);
          std::vector<float> scales(quantBlocks(count, block) + 1);
          quantize(res.data(), g.data(), count, bits, block, 500 + p, codes.data(), scales.data(), true);
          dequantize(codes.data(), scales.data(), count, bits, block, 1.0f, false, dec.data());
          for (size_t i = 0; i < count; ++i) sent[i] += dec[i];
        }
        std::vector<float> data(count), residual(count, 0.0f);
        for (size_t i = 0; i < count; ++i) data[i] = rankInput(r, i) * 0.01f + 0.001f * static_cast<float>(i % 7);
        const Slice mine = quantSlice(count, block, r, n);
        std::vector<float> server(mine.count, 0.0f);
        QuantizedAllReduceOptions o;
        o.data = data.data();
        o.count = count;
        o.residual = residual.data();
        o.serverResidual = server.data();
        o.bits = bits;
        o.block = block;
        o.seed = 500 + r;
        o.scale = 1.0f / n;
        CompressionStats stats;
        o.stats = &stats;
        auto ctx = compressedCtx(t, 1, count);
        quantizedAllReduce(ctx, o);
        // Own slice: result + server residual == average of what was sent.
        for (size_t i = 0; i < mine.count; ++i) {
          const double want = sent[mine.offset + i] / n;
          ASSERT_NEAR(data[mine.offset + i] + server[i], want, 1e-5 * (1.0 + std::fabs(want)))
              << "W=" << n << " bits=" << bits << " count=" << count << " i=" << mine.offset + i;
        }
        // Stage 2 error is bounded by one step of the slice's block scale.
        for (size_t i = 0; i < count; ++i) {
          const double want = sent[i] / n;
          ASSERT_LE(std::fabs(data[i] - want), bits == 1 ? 1.0 : 0.1) << i;
        }
        if (n > 1 && count == 4099) {
          const double ratio = static_cast<double>(stats.sentBytes) / (2.0 * (n - 1) / n * count * 4.0);
          EXPECT_LT(ratio, bits == 8 ? 0.3 : bits == 4 ? 0.17 : 0.08) << "wire bytes vs a dense ring";
        }
        std::lock_guard<std::mutex> lock(mu);
        outputs[r] = data;
      });
      for (int p = 1; p < n; ++p) ASSERT_EQ(outputs[p], outputs[0]) << "every rank decodes the same result";
    }
  }
}

// The "encoded" forms (what the CUDA adapter uses: the device encodes and
// decodes, the host moves and reduces) give the same bits as the whole
// algorithm on the host, here with the CPU kernels standing in for the device.
TEST_P(CompressedWorld, EncodedFormsEqualTheHostPath) {
  const int n = GetParam();
  ranktest::runInProc(n, [&](transport::Transport& t) {
    const int r = t.rank();
    uint64_t seq = 0;
    for (size_t count : {size_t{0}, size_t{7}, size_t{1000}, size_t{20011}}) {
      std::vector<float> g(count), res0(count);
      for (size_t i = 0; i < count; ++i) {
        g[i] = rankInput(r, i) + 0.25f * static_cast<float>(i % 5);
        res0[i] = static_cast<float>((i + r) % 3) - 1.0f;
      }
      for (SparseMethod method : {SparseMethod::TopK, SparseMethod::TopKSampled, SparseMethod::RandomK}) {
        for (size_t k : {size_t{0}, count / 50 + 1, count}) {
          const std::string what = "W=" + std::to_string(n) + " method=" + std::to_string(int(method)) +
                                   " count=" + std::to_string(count) + " k=" + std::to_string(k);
          // The host path, error feedback on.
          std::vector<float> want = g, wantRes = res0;
          SparseAllReduceOptions o;
          o.data = want.data();
          o.count = count;
          o.residual = wantRes.data();
          o.k = k;
          o.method = method;
          o.seed = 77;
          o.scale = 0.5f;
          auto ctx = compressedCtx(t, ++seq, count ^ (method == SparseMethod::RandomK ? k << 32 : 0));
          sparseAllReduce(ctx, o);
          // Encoded: select (what the device does), then the host part.
          const size_t kk = std::min(k, count);
          std::vector<float> src = res0, val(std::max<size_t>(kk, 1));
          std::vector<uint32_t> idx(std::max<size_t>(kk, 1));
          std::vector<float> got(count, -3.0f);  // output only: its input is not read
          SparseAllReduceOptions e;
          e.count = count;
          e.k = k;
          e.method = method;
          e.seed = 77;
          e.scale = 0.5f;
          e.encodedVal = val.data();
          if (method == SparseMethod::RandomK) {
            randomkGather(src.data(), g.data(), count, kk, 77, val.data(), true);
          } else {
            e.data = got.data();
            e.encodedIdx = idx.data();
            e.encodedCount = method == SparseMethod::TopKSampled
                                 ? topkSampled(src.data(), g.data(), count, kk, idx.data(), val.data(), true, 77)
                                 : topkExact(src.data(), g.data(), count, kk, idx.data(), val.data(), true);
          }
          auto ctx2 = compressedCtx(t, ++seq, count ^ (method == SparseMethod::RandomK ? k << 32 : 0));
          sparseAllReduce(ctx2, e);
          if (method == SparseMethod::RandomK) {  // the caller scatters the summed values
            std::fill(got.begin(), got.end(), 0.0f);
            randomkScatter(val.data(), count, kk, 77, 0.5f, got.data());
          }
          ASSERT_EQ(got, want) << what;
          ASSERT_EQ(src, wantRes) << what;
        }
      }
      for (int bits : {8, 4, 1}) {
        const size_t block = 64;
        const Slice mine = quantSlice(count, block, r, n);
        std::vector<float> want = g, wantRes = res0, wantServer(mine.count, 0.5f);
        QuantizedAllReduceOptions o;
        o.data = want.data();
        o.count = count;
        o.residual = wantRes.data();
        o.serverResidual = wantServer.data();
        o.bits = bits;
        o.block = block;
        o.seed = 9;
        o.scale = 1.0f / n;
        auto ctx = compressedCtx(t, ++seq, count);
        quantizedAllReduce(ctx, o);
        std::vector<float> src = res0, server(mine.count, 0.5f), got(count, -3.0f);
        std::vector<uint8_t> codes(quantCodeBytes(count, bits, block) + 1), codes2(codes.size());
        std::vector<float> scales(quantBlocks(count, block) + 1), scales2(scales.size());
        quantize(src.data(), g.data(), count, bits, block, 9, codes.data(), scales.data(), true);
        QuantizedAllReduceOptions e;
        e.count = count;
        e.serverResidual = server.data();
        e.bits = bits;
        e.block = block;
        e.seed = 9;
        e.scale = 1.0f / n;
        e.encodedCodes = codes.data();
        e.encodedScales = scales.data();
        e.decodedCodes = codes2.data();
        e.decodedScales = scales2.data();
        auto ctx2 = compressedCtx(t, ++seq, count);
        quantizedAllReduce(ctx2, e);
        dequantize(codes2.data(), scales2.data(), count, bits, block, 1.0f, false, got.data());
        ASSERT_EQ(got, want) << "W=" << n << " bits=" << bits << " count=" << count;
        ASSERT_EQ(src, wantRes);
        ASSERT_EQ(server, wantServer);
      }
    }
  });
}

TEST(CompressedWorld, MismatchedQuantizationIsReported) {
  EXPECT_THROW(ranktest::runInProc(2,
                                   [&](transport::Transport& t) {
                                     std::vector<float> data(100, 1.0f);
                                     QuantizedAllReduceOptions o;
                                     o.data = data.data();
                                     o.count = 100;
                                     o.bits = t.rank() == 0 ? 8 : 4;
                                     // The backend folds bits/block into the signature.
                                     auto ctx = compressedCtx(t, 1, 100 + (static_cast<uint64_t>(o.bits) << 48));
                                     ctx.deadline = transport::Clock::now() + std::chrono::seconds(5);
                                     quantizedAllReduce(ctx, o);
                                   }),
               Error);
}

INSTANTIATE_TEST_SUITE_P(W, CompressedWorld, ::testing::Range(1, 9));
