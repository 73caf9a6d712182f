// The vector loops (AVX-512, AVX2) against the scalar kernels, bitwise, for
// float32/float64/float16/bfloat16, every vectorised op, every final scale,
// special values (NaN, +-inf, -0, subnormals, values that overflow 16 bits),
// in place and out of place, and lengths that leave every possible tail.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/half.h"
#include "kernels/cpu/reduce_simd.h"
#include "kernels/kernels.h"

using namespace agentcomm;
namespace simd = agentcomm::kernels::simd;

namespace {

struct LevelGuard {
  simd::Level saved = simd::level();
  ~LevelGuard() { simd::setLevel(saved); }
};

// Random bit patterns of the dtype, biased towards interesting values.
std::vector<uint8_t> randomBuffer(DataType dt, size_t n, std::mt19937& rng) {
  const size_t es = elementSize(dt);
  std::vector<uint8_t> buf(n * es);
  std::uniform_real_distribution<double> val(-70000.0, 70000.0);
  std::uniform_int_distribution<int> pick(0, 15);
  for (size_t i = 0; i < n; ++i) {
    double v = val(rng);
    switch (pick(rng)) {
      case 0: v = std::numeric_limits<double>::quiet_NaN(); break;
      case 1: v = std::numeric_limits<double>::infinity(); break;
      case 2: v = -std::numeric_limits<double>::infinity(); break;
      case 3: v = -0.0; break;
      case 4: v = 1e-6 * val(rng) / 70000.0; break;   // subnormal in float16
      case 5: v = 1e-41 * val(rng) / 70000.0; break;  // subnormal in float32
      case 6: v = std::ldexp(1.0, -24) * 3; break;     // float16 rounding boundary
      default: break;
    }
    uint8_t* p = buf.data() + i * es;
    switch (dt) {
      case DataType::Float32: { float f = static_cast<float>(v); std::memcpy(p, &f, 4); break; }
      case DataType::Float64: std::memcpy(p, &v, 8); break;
      case DataType::Float16: { uint16_t h = floatToHalf(static_cast<float>(v)); std::memcpy(p, &h, 2); break; }
      case DataType::BFloat16: { uint16_t h = floatToBf16(static_cast<float>(v)); std::memcpy(p, &h, 2); break; }
      default: break;
    }
  }
  return buf;
}

}  // namespace

TEST(Simd, VectorLoopsMatchScalarBitwise) {
  LevelGuard guard;
  std::vector<simd::Level> levels;
  for (simd::Level l : {simd::Level::Avx2, simd::Level::Avx512})
    if (static_cast<int>(l) <= static_cast<int>(simd::hardwareLevel())) levels.push_back(l);
  if (levels.empty()) GTEST_SKIP() << "no vector unit on this CPU";
  std::mt19937 rng(1234);
  for (DataType dt : {DataType::Float32, DataType::Float64, DataType::Float16, DataType::BFloat16}) {
    for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Product, ReduceOp::Min, ReduceOp::Max}) {
      for (FinalScale scale : {FinalScale::none(), FinalScale{FinalScale::Kind::Divide, 3.0},
                               FinalScale{FinalScale::Kind::Multiply, 0.37}}) {
        for (size_t n : {size_t{1}, size_t{15}, size_t{16}, size_t{17}, size_t{63}, size_t{1000}}) {
          const auto a = randomBuffer(dt, n, rng);
          const auto b = randomBuffer(dt, n, rng);
          simd::setLevel(simd::Level::Scalar);
          std::vector<uint8_t> want(a.size());
          kernels::reduce(want.data(), a.data(), b.data(), n, dt, op, scale);
          for (simd::Level l : levels) {
            simd::setLevel(l);
            std::vector<uint8_t> got(a.size());
            kernels::reduce(got.data(), a.data(), b.data(), n, dt, op, scale);
            ASSERT_EQ(got, want) << simd::levelName(l) << " " << dataTypeName(dt) << " " << reduceOpName(op) << " n " << n;
            std::vector<uint8_t> inPlace = a;  // dst aliases a
            kernels::reduce(inPlace.data(), inPlace.data(), b.data(), n, dt, op, scale);
            ASSERT_EQ(inPlace, want) << "in place, " << simd::levelName(l) << " " << dataTypeName(dt);
          }
        }
      }
    }
  }
}

TEST(Simd, StreamingStoresMatchPlainStores) {
  LevelGuard guard;
  std::mt19937 rng(99);
  for (simd::Level l : {simd::Level::Scalar, simd::Level::Avx2, simd::Level::Avx512}) {
    simd::setLevel(l);
    for (DataType dt : {DataType::Float32, DataType::Float64, DataType::BFloat16}) {
      const size_t es = elementSize(dt);
      for (size_t offset : {size_t{0}, size_t{1}, size_t{3}}) {  // misaligned destinations: the head is peeled
        for (size_t n : {size_t{0}, size_t{5}, size_t{100}, size_t{4099}}) {
          const auto a = randomBuffer(dt, n, rng);
          const auto b = randomBuffer(dt, n, rng);
          std::vector<uint8_t> want(n * es), got((n + offset) * es + 64);
          kernels::reduce(want.data(), a.data(), b.data(), n, dt, ReduceOp::Sum, FinalScale{FinalScale::Kind::Divide, 3.0});
          kernels::reduceStreaming(got.data() + offset * es, a.data(), b.data(), n, dt, ReduceOp::Sum,
                                   FinalScale{FinalScale::Kind::Divide, 3.0});
          ASSERT_EQ(0, std::memcmp(got.data() + offset * es, want.data(), n * es))
              << simd::levelName(simd::level()) << " " << dataTypeName(dt) << " offset " << offset << " n " << n;
        }
      }
    }
  }
}

TEST(Simd, LevelIsClampedToHardware) {
  LevelGuard guard;
  simd::setLevel(simd::Level::Avx512);
  EXPECT_LE(static_cast<int>(simd::level()), static_cast<int>(simd::hardwareLevel()));
  simd::setLevel(simd::Level::Scalar);
  EXPECT_EQ(simd::level(), simd::Level::Scalar);
  float a[40], b[40], c[40];
  for (int i = 0; i < 40; ++i) a[i] = b[i] = 1.0f;
  EXPECT_EQ(simd::reduce(c, a, b, 40, DataType::Float32, ReduceOp::Sum, FinalScale::none()), 0u);
}
