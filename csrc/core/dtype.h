#pragma once
// Element types the core understands. The core never sees framework tensors:
// a buffer is (pointer, element count, DataType).
#include <cstddef>
#include <cstdint>
#include <string>

namespace agentcomm {

enum class DataType : uint8_t {
  Float32 = 0,
  Float64 = 1,
  Float16 = 2,
  BFloat16 = 3,
  Int8 = 4,
  Int16 = 5,
  Int32 = 6,
  Int64 = 7,
  UInt8 = 8,
  Bool = 9,
  Complex64 = 10,
  Complex128 = 11,
};

constexpr uint8_t kNumDataTypes = 12;

size_t elementSize(DataType dt);
const char* dataTypeName(DataType dt);
bool isValidDataType(uint8_t raw);
bool isFloating(DataType dt);  // float32/64/16, bfloat16
bool isComplex(DataType dt);
bool isIntegral(DataType dt);  // integers, excluding bool

}  // namespace agentcomm
