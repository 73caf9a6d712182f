#pragma once
#include <string>

namespace agentcomm::transport {

// Identity of "this machine as seen by shared memory and loopback": hostname,
// boot id and network namespace. Two ranks with the same id can share
// /dev/shm segments, read each other's memory (Cross Memory Attach, where
// permitted) and reach each other over 127.0.0.1.
std::string hostId();

}  // namespace agentcomm::transport
