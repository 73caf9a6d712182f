#include "core/dtype.h"

namespace agentcomm {

size_t elementSize(DataType dt) {
  switch (dt) {
    case DataType::Float32: return 4;
    case DataType::Float64: return 8;
    case DataType::Float16: return 2;
    case DataType::BFloat16: return 2;
    case DataType::Int8: return 1;
    case DataType::Int16: return 2;
    case DataType::Int32: return 4;
    case DataType::Int64: return 8;
    case DataType::UInt8: return 1;
    case DataType::Bool: return 1;
    case DataType::Complex64: return 8;
    case DataType::Complex128: return 16;
  }
  return 0;
}

const char* dataTypeName(DataType dt) {
  switch (dt) {
    case DataType::Float32: return "float32";
    case DataType::Float64: return "float64";
    case DataType::Float16: return "float16";
    case DataType::BFloat16: return "bfloat16";
    case DataType::Int8: return "int8";
    case DataType::Int16: return "int16";
    case DataType::Int32: return "int32";
    case DataType::Int64: return "int64";
    case DataType::UInt8: return "uint8";
    case DataType::Bool: return "bool";
    case DataType::Complex64: return "complex64";
    case DataType::Complex128: return "complex128";
  }
  return "invalid";
}

bool isValidDataType(uint8_t raw) { return raw < kNumDataTypes; }

bool isFloating(DataType dt) {
  return dt == DataType::Float32 || dt == DataType::Float64 || dt == DataType::Float16 ||
         dt == DataType::BFloat16;
}

bool isComplex(DataType dt) { return dt == DataType::Complex64 || dt == DataType::Complex128; }

bool isIntegral(DataType dt) {
  return dt == DataType::Int8 || dt == DataType::Int16 || dt == DataType::Int32 ||
         dt == DataType::Int64 || dt == DataType::UInt8;
}

}  // namespace agentcomm
