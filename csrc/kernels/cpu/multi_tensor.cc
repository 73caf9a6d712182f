// Multi-tensor pack / unpack with a fused scale: the building block of model
// averaging (agentcomm/averaging), replacing torch.cat + a division + one
// Python-level copy per parameter with one pass each way.
#include <cstdint>

#include "kernels/kernels.h"

namespace agentcomm::kernels {

void packScaled(const void* const* srcs, const size_t* counts, size_t n, void* dst, DataType dt, FinalScale scale) {
  const size_t es = elementSize(dt);
  auto* out = static_cast<uint8_t*>(dst);
  for (size_t i = 0; i < n; ++i) {
    applyScale(out, srcs[i], counts[i], dt, scale);  // a plain copy when the scale is inactive
    out += counts[i] * es;
  }
}

void unpackScaled(const void* src, void* const* dsts, const size_t* counts, size_t n, DataType dt, FinalScale scale) {
  const size_t es = elementSize(dt);
  auto* in = static_cast<const uint8_t*>(src);
  for (size_t i = 0; i < n; ++i) {
    applyScale(dsts[i], in, counts[i], dt, scale);
    in += counts[i] * es;
  }
}

}  // namespace agentcomm::kernels
