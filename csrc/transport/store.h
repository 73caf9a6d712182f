#pragma once
// The rendezvous interface transports use to exchange addresses and tokens.
// The torch adapter implements it over c10d::Store; tests use HashStore.
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
