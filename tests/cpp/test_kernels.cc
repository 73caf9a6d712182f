#include <gtest/gtest.h>

#include <cmath>
#include <complex>
#include <cstdint>
#include <random>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "kernels/kernels.h"

using namespace agentcomm;

TEST(Half, RoundTripsEveryFiniteValue) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint16_t bits = static_cast<uint16_t>(h);
    if ((bits & 0x7c00) == 0x7c00 && (bits & 0x3ff) != 0) continue;  // NaN payloads
    EXPECT_EQ(floatToHalf(halfToFloat(bits)), bits) << "half bits " << h;
  }
}

TEST(Half, KnownValuesAndRounding) {
  EXPECT_EQ(floatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(floatToHalf(65504.0f), 0x7bff);
  EXPECT_EQ(floatToHalf(65520.0f), 0x7c00);               // rounds to inf
  EXPECT_EQ(floatToHalf(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(floatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie -> even
  EXPECT_EQ(floatToHalf(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie -> even (up)
  EXPECT_EQ(halfToFloat(0xc000), -2.0f);
  EXPECT_EQ(floatToBf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16ToFloat(0x3f80), 1.0f);
  EXPECT_EQ(floatToBf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);  // tie -> even
  EXPECT_TRUE(std::isnan(bf16ToFloat(floatToBf16(NAN))));
}

namespace {

template <typename T>
std::vector<T> randomInts(size_t n, int lo, int hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(lo, hi);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(d(rng));
  return v;
}

template <typename T>
T refOp(ReduceOp op, T a, T b) {
  switch (op) {
    case ReduceOp::Sum: return static_cast<T>(a + b);
    case ReduceOp::Product: return static_cast<T>(a * b);
    case ReduceOp::Min: return std::min(a, b);
    case ReduceOp::Max: return std::max(a, b);
    default: break;
  }
  if constexpr (std::is_integral_v<T>) {
    if (op == ReduceOp::BAnd) return static_cast<T>(a & b);
    if (op == ReduceOp::BOr) return static_cast<T>(a | b);
    if (op == ReduceOp::BXor) return static_cast<T>(a ^ b);
  }
  ADD_FAILURE() << "bad op";
  return T{};
}

template <typename T>
void checkTyped(DataType dt, std::initializer_list<ReduceOp> ops) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{1000}}) {
    auto a = randomInts<T>(n, -20, 20, 1);
    auto b = randomInts<T>(n, -20, 20, 2);
    for (ReduceOp op : ops) {
      std::vector<T> out(n);
      kernels::reduce(out.data(), a.data(), b.data(), n, dt, op);
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(out[i], refOp(op, a[i], b[i])) << dataTypeName(dt) << " " << reduceOpName(op);
      // In place (dst aliases a), with AVG-style final divide by 2.
      std::vector<T> inplace = a;
      kernels::reduce(inplace.data(), inplace.data(), b.data(), n, dt, op, FinalScale::divide(2));
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(inplace[i], static_cast<T>(refOp(op, a[i], b[i]) / T(2)));
    }
  }
}

}  // namespace

TEST(ReduceKernel, Float32) { checkTyped<float>(DataType::Float32, {ReduceOp::Sum, ReduceOp::Product, ReduceOp::Min, ReduceOp::Max}); }
TEST(ReduceKernel, Float64) { checkTyped<double>(DataType::Float64, {ReduceOp::Sum, ReduceOp::Product, ReduceOp::Min, ReduceOp::Max}); }
TEST(ReduceKernel, Int32) {
  checkTyped<int32_t>(DataType::Int32, {ReduceOp::Sum, ReduceOp::Product, ReduceOp::Min, ReduceOp::Max, ReduceOp::BAnd, ReduceOp::BOr, ReduceOp::BXor});
}
TEST(ReduceKernel, Int64) { checkTyped<int64_t>(DataType::Int64, {ReduceOp::Sum, ReduceOp::Min, ReduceOp::Max, ReduceOp::BXor}); }
TEST(ReduceKernel, Int16) { checkTyped<int16_t>(DataType::Int16, {ReduceOp::Sum, ReduceOp::Max, ReduceOp::BOr}); }
TEST(ReduceKernel, Int8) { checkTyped<int8_t>(DataType::Int8, {ReduceOp::Sum, ReduceOp::Min, ReduceOp::BAnd}); }

TEST(ReduceKernel, Int8WrapsLikeTorch) {
  int8_t a = 100, b = 100, out = 0;
  kernels::reduce(&out, &a, &b, 1, DataType::Int8, ReduceOp::Sum);
  EXPECT_EQ(out, static_cast<int8_t>(-56));
}

TEST(ReduceKernel, Half) {
  std::vector<uint16_t> a, b;
  for (int i = -50; i < 50; ++i) {
    a.push_back(floatToHalf(i * 0.37f));
    b.push_back(floatToHalf(i * -1.91f + 3));
  }
  std::vector<uint16_t> out(a.size());
  kernels::reduce(out.data(), a.data(), b.data(), a.size(), DataType::Float16, ReduceOp::Sum, FinalScale::divide(2));
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_EQ(out[i], floatToHalf((halfToFloat(a[i]) + halfToFloat(b[i])) / 2.0f));
  kernels::reduce(out.data(), a.data(), b.data(), a.size(), DataType::BFloat16, ReduceOp::Max);
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_EQ(out[i], floatToBf16(std::max(bf16ToFloat(a[i]), bf16ToFloat(b[i]))));
}

TEST(ReduceKernel, BoolOps) {
  std::vector<uint8_t> a = {0, 0, 1, 1}, b = {0, 1, 0, 1}, out(4);
  kernels::reduce(out.data(), a.data(), b.data(), 4, DataType::Bool, ReduceOp::Sum);
  EXPECT_EQ(out, (std::vector<uint8_t>{0, 1, 1, 1}));
  kernels::reduce(out.data(), a.data(), b.data(), 4, DataType::Bool, ReduceOp::Product);
  EXPECT_EQ(out, (std::vector<uint8_t>{0, 0, 0, 1}));
  kernels::reduce(out.data(), a.data(), b.data(), 4, DataType::Bool, ReduceOp::BXor);
  EXPECT_EQ(out, (std::vector<uint8_t>{0, 1, 1, 0}));
}

TEST(ReduceKernel, ComplexSumAndPremul) {
  std::vector<std::complex<float>> a = {{1, 2}, {3, -4}}, b = {{0.5f, 1}, {-1, 1}}, out(2);
  kernels::reduce(out.data(), a.data(), b.data(), 2, DataType::Complex64, ReduceOp::Product, FinalScale::multiply(2));
  EXPECT_EQ(out[0], (a[0] * b[0]) * 2.0f);
  EXPECT_EQ(out[1], (a[1] * b[1]) * 2.0f);
  EXPECT_THROW(kernels::reduce(out.data(), a.data(), b.data(), 2, DataType::Complex64, ReduceOp::Max), InvalidArgument);
}

TEST(ReduceKernel, NanPropagatesThroughMinMax) {
  float a[2] = {NAN, 1}, b[2] = {0, NAN}, out[2];
  kernels::reduce(out, a, b, 2, DataType::Float32, ReduceOp::Max);
  EXPECT_TRUE(std::isnan(out[0]));
  EXPECT_TRUE(std::isnan(out[1]));
}

TEST(ReduceOpSupport, RejectsNonsense) {
  EXPECT_FALSE(checkReduceSupported(DataType::Float32, ReduceOp::BAnd).empty());
  EXPECT_FALSE(checkReduceSupported(DataType::Complex64, ReduceOp::Min).empty());
  EXPECT_FALSE(checkReduceSupported(DataType::Int32, ReduceOp::PremulSum).empty());
  EXPECT_TRUE(checkReduceSupported(DataType::Int32, ReduceOp::Avg).empty());
  EXPECT_TRUE(checkReduceSupported(DataType::Bool, ReduceOp::BXor).empty());
}
