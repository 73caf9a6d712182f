#pragma once
// Who is where, for the hierarchical algorithms: built once per process group
// from transport::exchangeHosts when the group spans several hosts and at
// least one host runs several ranks.
#include <vector>

#include "transport/shm/shm_domain.h"

namespace agentcomm::algorithms {

struct Topology {
  transport::ShmDomain* local = nullptr;  // this host's domain; null if this rank is alone on its host
  std::vector<int> localRanks;            // global ranks on this host, ascending (local->rank() indexes it)
  std::vector<int> leaders;               // the lowest global rank of every host, ascending
  std::vector<std::vector<int>> hosts;    // every host's global ranks, ascending; hosts[i][0] == leaders[i]
  int localRank = 0;                      // position of this rank in localRanks
  int leaderIndex = -1;                   // position in leaders if this rank leads its host, else -1
};

}  // namespace agentcomm::algorithms
