#include "algorithms/collective_kind.h"

#include "core/dtype.h"
#include "core/error.h"
#include "core/reduce_op.h"

namespace agentcomm::algorithms {

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
    case CollectiveKind::CompressedAllReduce: return "compressed_all_reduce";
  }
  return "unknown collective";
}

bool carriesReduceOp(CollectiveKind k) {
  return k == CollectiveKind::AllReduce || k == CollectiveKind::Reduce || k == CollectiveKind::ReduceScatter;
}

std::string describeSignature(const transport::Signature& s, uint64_t nbytes) {
  const auto kind = static_cast<CollectiveKind>(s.collective);
  std::string text =
      strCat(collectiveName(kind), " of ", s.count, " elements of ", dataTypeName(static_cast<DataType>(s.dtype)));
  if (carriesReduceOp(kind)) text += strCat(" (op ", reduceOpName(static_cast<ReduceOp>(s.op)), ")");
  return text + strCat(", ", nbytes, " bytes in this message");
}

std::string describeShmRound(const transport::ShmOpDesc& d) {
  return strCat(collectiveName(static_cast<CollectiveKind>(d.collective)), " (sequence number ", d.seq, ", ",
                d.signature, " elements, dtype ", dataTypeName(static_cast<DataType>(d.dtype)), ", op ",
                reduceOpName(static_cast<ReduceOp>(d.op)), ", root ", static_cast<int>(d.root), ", shm algorithm ",
                d.algo, ")");
}

}  // namespace agentcomm::algorithms
