#include "transport/header.h"

#include "core/dtype.h"
#include "core/error.h"
#include "core/reduce_op.h"

namespace agentcomm::transport {

std::string validateHeader(const Header& h) {
  if (h.magic != kHeaderMagic) return strCat("bad magic 0x", std::hex, h.magic);
  if (h.kind < 1 || h.kind > 4) return strCat("bad message kind ", int(h.kind));
  if (!isValidDataType(h.dtype)) return strCat("bad dtype ", int(h.dtype));
  if (!isValidReduceOp(h.op)) return strCat("bad reduce op ", int(h.op));
  if (h.nbytes > kMaxPayloadBytes) return strCat("payload of ", h.nbytes, " bytes is implausible");
  if (h.kind == static_cast<uint8_t>(MsgKind::P2P) && h.op == kP2POffer && h.nbytes != sizeof(Offer))
    return strCat("a rendezvous offer of ", h.nbytes, " bytes");
  return {};
}

}  // namespace agentcomm::transport
