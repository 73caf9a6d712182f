#pragma once
#include <chrono>
#include <string>
#include <vector>

#include "transport/store.h"

namespace agentcomm::transport {

// Identity of "this machine as seen by shared memory and loopback": hostname,
// boot id and network namespace. Two ranks with the same id can share
// /dev/shm segments, read each other's memory (Cross Memory Attach, where
// permitted) and reach each other over 127.0.0.1.
std::string hostId();

// Which ranks share a host, agreed by every rank of a group through the store.
struct HostMap {
  std::vector<int> leaderOf;  // per rank: the lowest rank on the same host
  bool shmAllowed = true;     // false if any rank set AGENTCOMM_SHM=0

  // Global ranks on `rank`'s host, ascending (just `rank` when shm is off).
  std::vector<int> membersOf(int rank) const;
  // The lowest rank of every host, ascending.
  std::vector<int> leaders() const;
  bool singleHost() const;
};

// Collective over all `size` ranks: publishes this rank's host id under
// keyPrefix and reads everyone's. Throws TimeoutError if a rank never publishes.
HostMap exchangeHosts(Store& store, int rank, int size, const std::string& keyPrefix,
                      std::chrono::milliseconds timeout);

}  // namespace agentcomm::transport
