#pragma once
// The rendezvous interface transports use to exchange addresses and tokens.
// The torch adapter implements it over c10d::Store; tests use HashStore.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "core/error.h"

namespace agentcomm::transport {

class Store {
 public:
  virtual ~Store() = default;
  virtual void set(const std::string& key, const std::vector<uint8_t>& value) = 0;
  // Blocks until `key` exists; throws TimeoutError after `timeout`.
  virtual std::vector<uint8_t> get(const std::string& key, std::chrono::milliseconds timeout) = 0;
  // Every key's value, in order; blocks until all exist, throws TimeoutError naming
  // a missing key after `timeout`. A store with a batched read (c10d's TCPStore)
  // answers in one round trip instead of one per key: setup reads every rank's host
  // and address, n keys per rank, n^2 requests per group at the store's server.
  virtual std::vector<std::vector<uint8_t>> multiGet(const std::vector<std::string>& keys,
                                                     std::chrono::milliseconds timeout) {
    std::vector<std::vector<uint8_t>> out;
    out.reserve(keys.size());
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (const auto& k : keys) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      out.push_back(get(k, std::max(left, std::chrono::milliseconds(0))));
    }
    return out;
  }
};

// In-memory store shared by ranks running as threads of one process (tests).
class HashStore : public Store {
 public:
  void set(const std::string& key, const std::vector<uint8_t>& value) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      map_[key] = value;
    }
    cv_.notify_all();
  }

  std::vector<uint8_t> get(const std::string& key, std::chrono::milliseconds timeout) override {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!cv_.wait_for(lock, timeout, [&] { return map_.count(key) > 0; })) {
      throw TimeoutError(strCat("store: timed out after ", timeout.count(), " ms waiting for key '", key, "'"));
    }
    return map_[key];
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::map<std::string, std::vector<uint8_t>> map_;
};

inline std::vector<uint8_t> toBytes(const std::string& s) { return {s.begin(), s.end()}; }
inline std::string fromBytes(const std::vector<uint8_t>& v) { return {v.begin(), v.end()}; }

}  // namespace agentcomm::transport
