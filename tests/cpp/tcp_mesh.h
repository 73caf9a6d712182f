#pragma once
// A full TCP mesh of n ranks on loopback, built by n threads over one store.
// Each rank has a TCP endpoint of its own, as a process would.
#include <chrono>
#include <memory>
#include <vector>

#include "rank_threads.h"
#include "transport/store.h"
#include "transport/tcp/tcp_transport.h"

namespace agentcomm::ranktest {

// A rank's options with an endpoint of its own (ranks here are threads of one
// process; a process is one rank of each of its groups).
inline transport::TcpOptions ownEndpoint(transport::TcpOptions o) {
  o.hub = transport::TcpHub::create("");
  return o;
}

inline std::vector<std::unique_ptr<transport::TcpTransport>> makeTcpMesh(transport::Store& store, int n) {
  std::vector<std::unique_ptr<transport::TcpTransport>> ts(n);
  transport::TcpOptions opts;
  opts.timeout = std::chrono::seconds(20);
  forEachRank(n, [&](int r) { ts[r] = std::make_unique<transport::TcpTransport>(store, r, n, ownEndpoint(opts)); });
  return ts;
}

}  // namespace agentcomm::ranktest
