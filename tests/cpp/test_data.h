#pragma once
// Random inputs shared by the C++ test binaries (core and CUDA): never all
// zero, reproducible from the seed.
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace agentcomm::testing {

// n normal(0, sd) floats.
inline std::vector<float> gaussData(size_t n, uint32_t seed, float sd = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

}  // namespace agentcomm::testing
