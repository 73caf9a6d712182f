#include "transport/header.h"

#include "core/dtype.h"
#include "core/error.h"
#include "core/reduce_op.h"

namespace agentcomm::transport {

const char* collectiveName(CollectiveKind k) {
  switch (k) {
    case CollectiveKind::None: return "none";
    case CollectiveKind::AllReduce: return "all_reduce";
    case CollectiveKind::Broadcast: return "broadcast";
    case CollectiveKind::Reduce: return "reduce";
    case CollectiveKind::AllGather: return "all_gather";
    case CollectiveKind::ReduceScatter: return "reduce_scatter";
    case CollectiveKind::Gather: return "gather";
    case CollectiveKind::Scatter: return "scatter";
    case CollectiveKind::AllToAll: return "all_to_all";
    case CollectiveKind::Barrier: return "barrier";
    case CollectiveKind::Send: return "send";
    case CollectiveKind::CompressedAllReduce: return "compressed_all_reduce";
  }
  return "unknown";
}

std::string validateHeader(const Header& h) {
  if (h.magic != kHeaderMagic) return strCat("bad magic 0x", std::hex, h.magic);
  if (h.kind < 1 || h.kind > 3) return strCat("bad message kind ", int(h.kind));
  if (h.collective > static_cast<uint8_t>(CollectiveKind::CompressedAllReduce)) return strCat("bad collective ", int(h.collective));
  if (!isValidDataType(h.dtype)) return strCat("bad dtype ", int(h.dtype));
  if (!isValidReduceOp(h.op)) return strCat("bad reduce op ", int(h.op));
  if (h.nbytes > kMaxPayloadBytes) return strCat("payload of ", h.nbytes, " bytes is implausible");
  if (h.kind == static_cast<uint8_t>(MsgKind::P2P) && h.op == kP2POffer && h.nbytes != sizeof(Offer))
    return strCat("a rendezvous offer of ", h.nbytes, " bytes");
  return {};
}

}  // namespace agentcomm::transport
