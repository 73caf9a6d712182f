#pragma once
// Runs one function per rank on its own thread (gloo's test spawn()), over the
// in-process transport, and rethrows the first failure on the test thread.
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "transport/inproc/inproc_transport.h"

namespace agentcomm::ranktest {

inline void forEachRank(int n, const std::function<void(int)>& fn) {
  std::vector<std::thread> threads;
  std::mutex mu;
  std::exception_ptr first;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        fn(r);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu);
        if (!first) first = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  if (first) std::rethrow_exception(first);
}

inline void runInProc(int n, const std::function<void(transport::Transport&)>& fn) {
  auto hub = transport::InProcHub::create(n);
  std::vector<std::unique_ptr<transport::Transport>> ts;
  for (int r = 0; r < n; ++r) ts.push_back(hub->connect(r));
  forEachRank(n, [&](int r) { fn(*ts[r]); });
}

}  // namespace agentcomm::ranktest
