#pragma once
// Faults injected on purpose (AGENTCOMM_FAULT), so that tests and researchers
// can make recovery paths run where they matter: a connection cut at op N, a
// slow rank, a corrupted message, a hung rank.
//
//   AGENTCOMM_FAULT = fault[;fault...]
//   fault           = kind:key=value[,key=value...]
//   drop:rank=R,op=N      rank R cuts all its connections (no Abort frame, as a
//                         network failure would) when it starts op N; its peers
//                         see a lost connection, its own op fails the same way
//   delay:rank=R,ms=M     rank R waits M ms before each op (op=N: before op N only)
//   corrupt:rank=R,op=N   the first message rank R sends in op N (a TCP frame or a
//                         shared-memory arrival) carries a wrong signature; the
//                         receivers reject it as a collective mismatch
//   stall:rank=R,op=N     rank R stops before op N, as a hung process would, until
//                         its group is aborted (by the peers that time out on it)
//                         or twice op N's timeout passes
//   group=NAME (any kind) limits the fault to the group of that name (torch's
//                         group name; the default group is "0")
//
// R is the rank in the group; N counts the group's collectives from 1, the
// sequence numbers the flight recorder shows. Invariant: an empty or unset
// AGENTCOMM_FAULT costs one branch per op; a malformed one raises
// InvalidArgument naming the variable at group creation.
#include <cstdint>
#include <string>
#include <vector>

namespace agentcomm::transport {

struct Fault {
  enum class Kind { Drop, Delay, Corrupt, Stall };
  Kind kind = Kind::Drop;
  int rank = -1;
  uint64_t op = 0;  // 0: every op (delay only)
  int64_t ms = 0;
  std::string group;  // empty: every group
};

class FaultPlan {
 public:
  // Throws InvalidArgument naming `variable` when spec is malformed.
  static FaultPlan parse(const std::string& spec, const char* variable = "AGENTCOMM_FAULT");
  // AGENTCOMM_FAULT, parsed on every call (groups are few; tests change it between groups).
  static FaultPlan fromEnv();

  bool empty() const { return faults_.empty(); }
  // The faults that fire when rank `rank` of group `group` starts op `op`.
  std::vector<Fault> at(const std::string& group, int rank, uint64_t op) const;

 private:
  std::vector<Fault> faults_;
};

const char* faultKindName(Fault::Kind k);

// A corruption armed for the next message this thread sends (corrupt faults):
// armCorruption sets it; the sender that honours it (TCP frames, shared-memory
// arrivals) takes it with takeCorruption, which also clears it.
void armCorruption();
bool takeCorruption();

}  // namespace agentcomm::transport
