// Every CUDA kernel against its CPU twin, on random (never all-zero) inputs:
// bitwise equality, since both compute the same operations in the same order.
// Without a device every test skips and says why (CI builds this binary but
// has no GPU).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/half.h"
#include "kernels/compress.h"
#include "kernels/cuda/kernels_cuda.h"
#include "kernels/kernels.h"
#include "test_data.h"

using namespace agentcomm;
namespace kc = agentcomm::kernels::cuda;

namespace {

#define REQUIRE_DEVICE()                                   \
  do {                                                     \
    std::string why_;                                      \
    if (!kc::available(&why_)) GTEST_SKIP() << "no CUDA device: " << why_; \
  } while (0)

void check(cudaError_t e) { ASSERT_EQ(e, cudaSuccess) << cudaGetErrorString(e); }

template <typename T>
class Dev {
 public:
  explicit Dev(size_t n) : n_(n) {
    if (n) check(cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T)));
  }
  explicit Dev(const std::vector<T>& host) : Dev(host.size()) { upload(host); }
  ~Dev() {
    if (p_) cudaFree(p_);
  }
  void upload(const std::vector<T>& host) {
    if (n_) check(cudaMemcpy(p_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> h(n_);
    check(cudaDeviceSynchronize());
    if (n_) check(cudaMemcpy(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
  size_t n_;
};

std::vector<float> randomFloats(size_t n, uint32_t seed, float scale = 1.0f) {
  return agentcomm::testing::gaussData(n, seed, scale);
}

// Raw bytes of n elements of dt, from random floats (valid values in every type).
std::vector<uint8_t> randomOf(DataType dt, size_t n, uint32_t seed) {
  const auto f = randomFloats(n, seed, 3.0f);
  std::vector<uint8_t> out(n * elementSize(dt));
  for (size_t i = 0; i < n; ++i) {
    switch (dt) {
      case DataType::Float32: std::memcpy(&out[i * 4], &f[i], 4); break;
      case DataType::Float64: {
        const double d = static_cast<double>(f[i]) * 1.000001;
        std::memcpy(&out[i * 8], &d, 8);
        break;
      }
      case DataType::Float16: {
        const uint16_t h = floatToHalf(f[i]);
        std::memcpy(&out[i * 2], &h, 2);
        break;
      }
      default: {
        const uint16_t b = floatToBf16(f[i]);
        std::memcpy(&out[i * 2], &b, 2);
        break;
      }
    }
  }
  return out;
}

const std::vector<size_t> kSizes = {1, 7, 1000, 100003};

}  // namespace

TEST(CudaKernels, ReduceEqualsCpu) {
  REQUIRE_DEVICE();
  for (DataType dt : {DataType::Float32, DataType::Float64, DataType::Float16, DataType::BFloat16}) {
    for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Product, ReduceOp::Min, ReduceOp::Max, ReduceOp::Avg}) {
      for (size_t n : kSizes) {
        const auto a = randomOf(dt, n, 1), b = randomOf(dt, n, 2);
        const FinalScale scale = op == ReduceOp::Avg ? FinalScale::divide(3) : FinalScale::none();
        const ReduceOp combine = op == ReduceOp::Avg ? ReduceOp::Sum : op;
        std::vector<uint8_t> want(a.size());
        kernels::reduce(want.data(), a.data(), b.data(), n, dt, combine, scale);
        Dev<uint8_t> da(a), db(b), dout(a.size());
        kc::reduce(dout.get(), da.get(), db.get(), n, dt, combine, scale, nullptr);
        ASSERT_EQ(dout.download(), want) << dataTypeName(dt) << " " << reduceOpName(op) << " n=" << n;
        // In place (dst aliases a), and misaligned (no vector loads).
        kc::reduce(da.get(), da.get(), db.get(), n, dt, combine, scale, nullptr);
        ASSERT_EQ(da.download(), want);
        if (n > 1) {
          const size_t es = elementSize(dt);
          std::vector<uint8_t> wantOff(want.size() - es);
          kernels::reduce(wantOff.data(), a.data() + es, b.data() + es, n - 1, dt, combine, scale);
          Dev<uint8_t> ea(a), eb(b), eo(a.size());
          kc::reduce(eo.get() + es, ea.get() + es, eb.get() + es, n - 1, dt, combine, scale, nullptr);
          auto got = eo.download();
          ASSERT_EQ(std::vector<uint8_t>(got.begin() + static_cast<ptrdiff_t>(es), got.end()), wantOff);
        }
      }
    }
  }
}

// reducePeers with n buffers of one process standing in for the ranks' IPC
// mappings: every buffer ends with the rank-order combination of all of them.
TEST(CudaKernels, ReducePeersEqualsCpuChain) {
  REQUIRE_DEVICE();
  for (DataType dt : {DataType::Float32, DataType::Float16, DataType::BFloat16, DataType::Float64}) {
    for (int n : {1, 2, 3, 8, 11}) {
      for (size_t count : {size_t{1}, size_t{13}, size_t{100003}}) {
        const size_t es = elementSize(dt);
        std::vector<std::vector<uint8_t>> in;
        for (int r = 0; r < n; ++r) in.push_back(randomOf(dt, count, 50 + static_cast<uint32_t>(r)));
        const FinalScale scale = FinalScale::divide(n);
        std::vector<uint8_t> want = in[0];
        for (int r = 1; r < n; ++r) kernels::reduce(want.data(), want.data(), in[r].data(), count, dt, ReduceOp::Sum, FinalScale::none());
        kernels::applyScale(want.data(), want.data(), count, dt, scale);
        // Two slices, as two ranks would split it: [0, h) and [h, count).
        std::vector<std::unique_ptr<Dev<uint8_t>>> bufs;
        std::vector<void*> ptrs;
        for (int r = 0; r < n; ++r) {
          bufs.push_back(std::make_unique<Dev<uint8_t>>(in[r]));
          ptrs.push_back(bufs.back()->get());
        }
        const size_t h = count / 2 / 8 * 8;
        kc::reducePeers(ptrs.data(), n, 0, h, dt, ReduceOp::Sum, scale, nullptr);
        kc::reducePeers(ptrs.data(), n, h, count - h, dt, ReduceOp::Sum, scale, nullptr);
        for (int r = 0; r < n; ++r)
          ASSERT_EQ(bufs[r]->download(), want) << dataTypeName(dt) << " n=" << n << " count=" << count << " r=" << r;
        (void)es;
      }
    }
  }
}

// Bytes of `count` random values of dt (float32/64, or float16/bfloat16 from floats).
std::vector<uint8_t> randomOfType(DataType dt, size_t count, uint32_t seed) {
  const auto f = randomFloats(count, seed, 3.0f);
  std::vector<uint8_t> out(count * elementSize(dt));
  for (size_t i = 0; i < count; ++i) {
    if (dt == DataType::Float32) {
      std::memcpy(out.data() + 4 * i, &f[i], 4);
    } else if (dt == DataType::Float64) {
      const double d = f[i];
      std::memcpy(out.data() + 8 * i, &d, 8);
    } else {
      const uint16_t h = dt == DataType::Float16 ? floatToHalf(f[i]) : floatToBf16(f[i]);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  }
  return out;
}

TEST(CudaKernels, PackUnpackAndCastsEqualCpu) {
  REQUIRE_DEVICE();
  // Counts that leave packed offsets misaligned (5: later tensors start at
  // 20 bytes) and counts that keep every chunk 16-byte aligned (vector path),
  // both with partial last chunks (kernels::cuda chunks 16384 elements).
  // And 250 tensors (zeros among them): more than one launch's list.
  std::vector<size_t> many;
  for (size_t i = 0; i < 250; ++i) many.push_back(i % 9 == 0 ? 0 : (i * 37) % 50 + (i == 100 ? 20000 : 0));
  for (const std::vector<size_t>& counts :
       {std::vector<size_t>{5, 0, 40000, 17}, std::vector<size_t>{16, 40960, 24, 3, 64}, many}) {
    for (DataType dt : {DataType::Float32, DataType::Float64, DataType::Float16, DataType::BFloat16}) {
      const size_t es = elementSize(dt);
      std::vector<std::vector<uint8_t>> host;
      std::vector<std::unique_ptr<Dev<uint8_t>>> dev;
      std::vector<const void*> hp, dp;
      size_t total = 0;
      for (size_t i = 0; i < counts.size(); ++i) {
        host.push_back(randomOfType(dt, counts[i], 10 + static_cast<uint32_t>(i)));
        dev.push_back(std::make_unique<Dev<uint8_t>>(host.back()));
        hp.push_back(host.back().data());
        dp.push_back(dev.back()->get());
        total += counts[i];
      }
      const std::string where = std::string(dataTypeName(dt)) + " counts[1]=" + std::to_string(counts[1]);
      std::vector<uint8_t> want(total * es);
      kernels::packScaled(hp.data(), counts.data(), counts.size(), want.data(), dt, FinalScale::divide(3));
      Dev<uint8_t> packed(total * es);
      kc::packScaled(dp.data(), counts.data(), counts.size(), packed.get(), dt, FinalScale::divide(3), nullptr);
      ASSERT_EQ(packed.download(), want) << where;
      std::vector<void*> outs, houts;
      for (auto& d : dev) outs.push_back(d->get());
      for (auto& h : host) houts.push_back(h.data());
      kc::unpackScaled(packed.get(), outs.data(), counts.data(), counts.size(), dt, FinalScale::multiply(3), nullptr);
      kernels::unpackScaled(want.data(), houts.data(), counts.data(), counts.size(), dt, FinalScale::multiply(3));
      for (size_t i = 0; i < counts.size(); ++i) ASSERT_EQ(dev[i]->download(), host[i]) << where << " tensor " << i;
    }
  }

  const auto x = randomFloats(10007, 20, 1000.0f);
  for (DataType dt : {DataType::Float16, DataType::BFloat16}) {
    std::vector<uint16_t> h(x.size());
    kernels::castFromFloat(x.data(), h.data(), x.size(), dt, 0.25f);
    Dev<float> dx(x);
    Dev<uint16_t> dh(x.size());
    kc::castFromFloat(dx.get(), dh.get(), x.size(), dt, 0.25f, nullptr);
    ASSERT_EQ(dh.download(), h);
    std::vector<float> back(x.size());
    kernels::castToFloat(h.data(), dt, back.data(), x.size(), 4.0f);
    kc::castToFloat(dh.get(), dt, dx.get(), x.size(), 4.0f, nullptr);
    ASSERT_EQ(dx.download(), back);
  }
}

TEST(CudaKernels, QuantizeDequantizeEqualCpu) {
  REQUIRE_DEVICE();
  // Every kernel shape: blocks of 1, 2, 4 and 8 chunks per lane (8..2048),
  // block sizes with a tail past 32i (24, 40: the 1-bit mean's tail), the
  // thread-block kernel (4096); partial last blocks and chunks; inputs at a
  // 4-byte offset (no vector accesses).
  for (int bits : {8, 4, 1}) {
    for (size_t block : {size_t{8}, size_t{24}, size_t{40}, size_t{256}, size_t{512}, size_t{1024}, size_t{2048},
                         size_t{4096}}) {
      for (size_t n : {size_t{1}, size_t{257}, size_t{100003}}) {
        for (int ef = 0; ef < 2; ++ef) {
          for (size_t off : {size_t{0}, size_t{1}}) {
            auto data = randomFloats(n + off, 30, 0.1f);
            const auto grad = randomFloats(n + off, 31);
            std::vector<uint8_t> codes(kernels::quantCodeBytes(n, bits, block));
            std::vector<float> scales(kernels::quantBlocks(n, block));
            auto cpuData = data;
            kernels::quantize(cpuData.data() + off, ef ? grad.data() + off : nullptr, n, bits, block, 77, codes.data(),
                              scales.data(), ef);
            Dev<float> dd(data), dg(grad), ds(scales.size());
            Dev<uint8_t> dc(codes.size() + off);
            kc::quantize(dd.get() + off, ef ? dg.get() + off : nullptr, n, bits, block, 77, dc.get() + off, ds.get(), ef,
                         nullptr);
            auto gotCodes = dc.download();
            gotCodes.erase(gotCodes.begin(), gotCodes.begin() + static_cast<std::ptrdiff_t>(off));
            const std::string where = "bits=" + std::to_string(bits) + " block=" + std::to_string(block) +
                                      " n=" + std::to_string(n) + " ef=" + std::to_string(ef) + " off=" +
                                      std::to_string(off);
            ASSERT_EQ(gotCodes, codes) << where;
            ASSERT_EQ(ds.download(), scales) << where;
            ASSERT_EQ(dd.download(), cpuData) << where;
            // Decoding (accumulating) from those codes, at the same offset.
            std::vector<float> out = randomFloats(n + off, 32), cpuOut = out;
            kernels::dequantize(codes.data(), scales.data(), n, bits, block, 0.5f, true, cpuOut.data() + off);
            Dev<float> dout(out);
            kc::dequantize(dc.get() + off, ds.get(), n, bits, block, 0.5f, true, dout.get() + off, nullptr);
            ASSERT_EQ(dout.download(), cpuOut) << where;
          }
        }
      }
    }
  }
}

TEST(CudaKernels, TopkAndRandomkEqualCpu) {
  REQUIRE_DEVICE();
  for (size_t n : {size_t{10}, size_t{50000}, size_t{1000003}}) {
    for (size_t k : {size_t{1}, n / 100 + 1, n / 2}) {
      for (int sampled = 0; sampled < 2; ++sampled) {
        auto residual = randomFloats(n, 40, 0.3f);
        const auto grad = randomFloats(n, 41);
        std::vector<uint32_t> idx(k);
        std::vector<float> val(k);
        auto cpuRes = residual;
        const size_t got = sampled
                               ? kernels::topkSampled(cpuRes.data(), grad.data(), n, k, idx.data(), val.data(), true, 5)
                               : kernels::topkExact(cpuRes.data(), grad.data(), n, k, idx.data(), val.data(), true);
        Dev<float> dr(residual), dg(grad), dv(k);
        Dev<uint32_t> di(k);
        const size_t dgot = sampled ? kc::topkSampled(dr.get(), dg.get(), n, k, di.get(), dv.get(), true, 5, nullptr)
                                    : kc::topkExact(dr.get(), dg.get(), n, k, di.get(), dv.get(), true, nullptr);
        ASSERT_EQ(dgot, got);
        ASSERT_EQ(di.download(), idx) << "n=" << n << " k=" << k << " sampled=" << sampled;
        ASSERT_EQ(dv.download(), val);
        ASSERT_EQ(dr.download(), cpuRes);
      }
      auto data = randomFloats(n, 42);
      const auto grad = randomFloats(n, 43);
      std::vector<float> val(k), out(n, 0.0f);
      auto cpuData = data;
      kernels::randomkGather(cpuData.data(), grad.data(), n, k, 9, val.data(), true);
      kernels::randomkScatter(val.data(), n, k, 9, 0.5f, out.data());
      Dev<float> dd(data), dg(grad), dv(k), dout(std::vector<float>(n, 0.0f));
      kc::randomkGather(dd.get(), dg.get(), n, k, 9, dv.get(), true, nullptr);
      kc::randomkScatter(dv.get(), n, k, 9, 0.5f, dout.get(), nullptr);
      ASSERT_EQ(dv.download(), val);
      ASSERT_EQ(dd.download(), cpuData);
      ASSERT_EQ(dout.download(), out);
    }
  }
}

// Ties and the fallback: equal keys are ordered by index (lower first), as on
// the CPU. All-equal data overflows the candidate buffers (the sorted path
// takes over, after the fused add); a few thousand distinct values put
// hundreds of equal keys in the boundary bin (the device select breaks the tie by index); an
// odd offset takes the scalar loads. topkExactSorted is checked on its own.
TEST(CudaKernels, TopkTiesAndFallbackEqualCpu) {
  REQUIRE_DEVICE();
  const size_t n = 1000003;
  std::vector<std::vector<float>> cases;
  cases.emplace_back(n, 1.5f);
  {
    auto few = randomFloats(n, 44);
    for (auto& x : few) x = static_cast<float>(static_cast<int>(x * 300.0f)) / 64.0f + 0.5f;
    cases.push_back(few);
  }
  cases.push_back(randomFloats(n, 45));
  // Case 0's add keeps every value equal (a second add would show).
  const auto noise = randomFloats(n + 1, 46, 1e-3f);
  const std::vector<float> quarter(n + 1, 0.25f);
  for (size_t c = 0; c < cases.size(); ++c) {
    const auto& grad = c == 0 ? quarter : noise;
    for (size_t off : {size_t{0}, size_t{1}}) {
      for (int sorted = 0; sorted < 2; ++sorted) {
        for (size_t k : {size_t{1000}, n / 100}) {
          const size_t m = n - off;
          std::vector<float> data(cases[c].begin() + static_cast<ptrdiff_t>(off), cases[c].end());
          std::vector<uint32_t> idx(k);
          std::vector<float> val(k);
          auto cpu = data;
          ASSERT_EQ(kernels::topkExact(cpu.data(), grad.data(), m, k, idx.data(), val.data(), true), k);
          Dev<float> dd(cases[c]), dg(grad), dv(k);
          Dev<uint32_t> di(k);
          const size_t got = sorted ? kc::topkExactSorted(dd.get() + off, dg.get(), m, k, di.get(), dv.get(), true, nullptr)
                                    : kc::topkExact(dd.get() + off, dg.get(), m, k, di.get(), dv.get(), true, nullptr);
          ASSERT_EQ(got, k);
          const std::string what = "case " + std::to_string(c) + " off=" + std::to_string(off) +
                                   " sorted=" + std::to_string(sorted) + " k=" + std::to_string(k);
          ASSERT_EQ(di.download(), idx) << what;
          ASSERT_EQ(dv.download(), val) << what;
          auto after = dd.download();
          ASSERT_EQ(std::vector<float>(after.begin() + static_cast<ptrdiff_t>(off), after.end()), cpu) << what;
        }
      }
    }
  }
}

TEST(CudaKernels, ReportsAvailability) {
  std::string why;
  const bool ok = kc::available(&why);
  if (!ok) EXPECT_FALSE(why.empty());
  std::printf("CUDA device available: %s%s\n", ok ? "yes" : "no: ", why.c_str());
}
