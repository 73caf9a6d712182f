#pragma once
// Reduction operators, numbered like c10d::ReduceOp::RedOpType so the adapter
// can cast, but defined here so the core stays torch-free.
#include <cstdint>
#include <string>

#include "core/dtype.h"

namespace agentcomm {

enum class ReduceOp : uint8_t {
  Sum = 0,
  Avg = 1,
  Product = 2,
  Min = 3,
  Max = 4,
  BAnd = 5,
  BOr = 6,
  BXor = 7,
  PremulSum = 8,
};

constexpr uint8_t kNumReduceOps = 9;

const char* reduceOpName(ReduceOp op);
bool isValidReduceOp(uint8_t raw);

// Empty string when (dt, op) is supported; otherwise a sentence saying why not.
std::string checkReduceSupported(DataType dt, ReduceOp op);

// A scale applied in the last reduction pass: AVG divides by the world size,
// PREMUL_SUM multiplies by the user's factor (sum(f * x_i) == f * sum(x_i)).
// Fusing it into the pass that writes the final value costs no extra sweep.
struct FinalScale {
  enum class Kind : uint8_t { None, Divide, Multiply };
  Kind kind = Kind::None;
  double value = 1.0;

  static FinalScale none() { return {}; }
  static FinalScale divide(double d) { return {Kind::Divide, d}; }
  static FinalScale multiply(double m) { return {Kind::Multiply, m}; }
  bool active() const { return kind != Kind::None; }
};

// The scale that completes `op` over `worldSize` contributions.
FinalScale finalScaleFor(ReduceOp op, int worldSize, double premulFactor);

// The elementwise operator used while combining (AVG and PREMUL_SUM combine as SUM).
ReduceOp combiningOp(ReduceOp op);

}  // namespace agentcomm
