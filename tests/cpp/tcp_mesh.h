#pragma once
// A full TCP mesh of n ranks on loopback, built by n threads over one store.
#include <chrono>
#include <memory>
#include <vector>

#include "rank_threads.h"
#include "transport/store.h"
#include "transport/tcp/tcp_transport.h"

namespace agentcomm::ranktest {

inline std::vector<std::unique_ptr<transport::TcpTransport>> makeTcpMesh(transport::Store& store, int n) {
  std::vector<std::unique_ptr<transport::TcpTransport>> ts(n);
  transport::TcpOptions opts;
  opts.timeout = std::chrono::seconds(20);
  forEachRank(n, [&](int r) { ts[r] = std::make_unique<transport::TcpTransport>(store, r, n, opts); });
  return ts;
}

}  // namespace agentcomm::ranktest
