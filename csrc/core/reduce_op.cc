#include "core/reduce_op.h"

namespace agentcomm {

const char* reduceOpName(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return "SUM";
    case ReduceOp::Avg: return "AVG";
    case ReduceOp::Product: return "PRODUCT";
    case ReduceOp::Min: return "MIN";
    case ReduceOp::Max: return "MAX";
    case ReduceOp::BAnd: return "BAND";
    case ReduceOp::BOr: return "BOR";
    case ReduceOp::BXor: return "BXOR";
    case ReduceOp::PremulSum: return "PREMUL_SUM";
  }
  return "INVALID";
}

bool isValidReduceOp(uint8_t raw) { return raw < kNumReduceOps; }

std::string checkReduceSupported(DataType dt, ReduceOp op) {
  const bool bitwise = op == ReduceOp::BAnd || op == ReduceOp::BOr || op == ReduceOp::BXor;
  if (bitwise && (isFloating(dt) || isComplex(dt))) {
    return std::string("reduce op ") + reduceOpName(op) + " needs an integer or bool tensor, got " +
           dataTypeName(dt);
  }
  if (isComplex(dt) && (op == ReduceOp::Min || op == ReduceOp::Max)) {
    return std::string("reduce op ") + reduceOpName(op) + " is not defined for complex tensors";
  }
  if (dt == DataType::Bool && (op == ReduceOp::Avg || op == ReduceOp::PremulSum)) {
    return std::string("reduce op ") + reduceOpName(op) + " is not defined for bool tensors";
  }
  if (op == ReduceOp::PremulSum && !(isFloating(dt) || isComplex(dt))) {
    return std::string("reduce op PREMUL_SUM needs a floating-point tensor, got ") + dataTypeName(dt);
  }
  return {};
}

FinalScale finalScaleFor(ReduceOp op, int worldSize, double premulFactor) {
  if (op == ReduceOp::Avg && worldSize > 1) return FinalScale::divide(worldSize);
  if (op == ReduceOp::PremulSum) return FinalScale::multiply(premulFactor);
  return FinalScale::none();
}

ReduceOp combiningOp(ReduceOp op) {
  return (op == ReduceOp::Avg || op == ReduceOp::PremulSum) ? ReduceOp::Sum : op;
}

}  // namespace agentcomm
