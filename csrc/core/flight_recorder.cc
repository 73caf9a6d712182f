#include "core/flight_recorder.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "core/env.h"
#include "core/error.h"

namespace agentcomm {

namespace {

int64_t nowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void appendJsonString(std::string& out, const std::string& s) {
  out += '"';
  for (const char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

struct Registry {
  std::mutex mutex;
  std::vector<std::weak_ptr<FlightRecorder>> recorders;
};

Registry& registry() {
  static Registry* r = new Registry;  // never destroyed: recorders may die during static destruction
  return *r;
}

std::string hostName() {
  char buf[256] = {0};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "?";
  return buf;
}

}  // namespace

const char* opStateName(OpState s) {
  switch (s) {
    case OpState::Scheduled: return "scheduled";
    case OpState::Started: return "started";
    case OpState::Completed: return "completed";
    case OpState::Failed: return "failed";
  }
  return "?";
}

FlightRecorder::FlightRecorder(size_t capacity, std::string group, int rank, int size)
    : capacity_(capacity), group_(std::move(group)), rank_(rank), size_(size) {
  ring_.resize(capacity_);
}

uint64_t FlightRecorder::scheduled(uint64_t seq, const char* op, bool p2p, int peer, const char* dtype,
                                   uint64_t count) {
  if (capacity_ == 0) return 0;
  const int64_t now = nowNs();
  std::lock_guard<std::mutex> lock(mutex_);
  const uint64_t id = nextId_++;
  FlightEntry& e = ring_[id % capacity_];
  e = FlightEntry{};
  e.id = id;
  e.seq = seq;
  e.op = op;
  e.p2p = p2p;
  e.peer = peer;
  e.dtype = dtype;
  e.count = count;
  e.createdNs = now;
  return id;
}

FlightEntry* FlightRecorder::slotLocked(uint64_t id) {
  if (capacity_ == 0 || id == 0) return nullptr;
  FlightEntry& e = ring_[id % capacity_];
  return e.id == id ? &e : nullptr;
}

void FlightRecorder::started(uint64_t id) {
  if (capacity_ == 0) return;
  const int64_t now = nowNs();
  std::lock_guard<std::mutex> lock(mutex_);
  if (FlightEntry* e = slotLocked(id)) {
    e->state = OpState::Started;
    e->startedNs = now;
  }
}

void FlightRecorder::ended(uint64_t id, const char* algorithm, const std::string& error) {
  if (capacity_ == 0) return;
  const int64_t now = nowNs();
  std::lock_guard<std::mutex> lock(mutex_);
  if (FlightEntry* e = slotLocked(id)) {
    e->state = error.empty() ? OpState::Completed : OpState::Failed;
    if (e->startedNs == 0) e->startedNs = now;  // failed before it could start (the group was already unusable)
    e->endedNs = now;
    e->algorithm = algorithm ? algorithm : "";
    e->error = error;
  }
}

std::vector<FlightEntry> FlightRecorder::entries() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<FlightEntry> out;
  for (const auto& e : ring_)
    if (e.id != 0) out.push_back(e);
  std::sort(out.begin(), out.end(), [](const FlightEntry& a, const FlightEntry& b) { return a.id < b.id; });
  return out;
}

std::string FlightRecorder::toJson() const {
  std::string out = "{\"name\": ";
  appendJsonString(out, group_);
  out += strCat(", \"rank\": ", rank_, ", \"size\": ", size_, ", \"capacity\": ", capacity_, ", \"entries\": [");
  bool first = true;
  for (const FlightEntry& e : entries()) {
    out += first ? "\n  " : ",\n  ";
    first = false;
    out += strCat("{\"id\": ", e.id, ", \"seq\": ", e.seq, ", \"op\": \"", e.op, "\", \"p2p\": ",
                  e.p2p ? "true" : "false", ", \"peer\": ", e.peer, ", \"dtype\": \"", e.dtype,
                  "\", \"count\": ", e.count, ", \"algorithm\": \"", e.algorithm, "\", \"state\": \"",
                  opStateName(e.state), "\", \"created_ns\": ", e.createdNs, ", \"started_ns\": ", e.startedNs,
                  ", \"ended_ns\": ", e.endedNs, ", \"error\": ");
    appendJsonString(out, e.error);
    out += "}";
  }
  out += "]}";
  return out;
}

std::shared_ptr<FlightRecorder> makeFlightRecorder(size_t capacity, std::string group, int rank, int size) {
  auto r = std::make_shared<FlightRecorder>(capacity, std::move(group), rank, size);
  Registry& reg = registry();
  std::lock_guard<std::mutex> lock(reg.mutex);
  reg.recorders.erase(std::remove_if(reg.recorders.begin(), reg.recorders.end(),
                                     [](const std::weak_ptr<FlightRecorder>& w) { return w.expired(); }),
                      reg.recorders.end());
  reg.recorders.push_back(r);
  return r;
}

std::string FlightRecorder::dumpAll(const std::string& reason, int processRank) {
  std::vector<std::shared_ptr<FlightRecorder>> live;
  {
    Registry& reg = registry();
    std::lock_guard<std::mutex> lock(reg.mutex);
    for (const auto& w : reg.recorders)
      if (auto r = w.lock()) live.push_back(std::move(r));
  }
  std::string out = strCat("{\"version\": 1, \"pid\": ", ::getpid(), ", \"host\": ");
  appendJsonString(out, hostName());
  out += strCat(", \"rank\": ", processRank, ", \"time_ns\": ", nowNs(), ", \"reason\": ");
  appendJsonString(out, reason);
  out += ", \"groups\": [";
  bool first = true;
  for (const auto& r : live) {
    if (r->capacity() == 0) continue;
    out += first ? "\n" : ",\n";
    first = false;
    out += r->toJson();
  }
  out += "]}\n";
  return out;
}

std::string FlightRecorder::writeAll(const std::string& dir, const std::string& reason, int processRank) {
  AC_CHECK(!dir.empty(), InvalidArgument, "agentcomm flight recorder: no directory to dump into (set ",
           "AGENTCOMM_TRACE_DIR or pass one)");
  // mkdir -p, one level at a time; an existing directory is fine.
  for (size_t pos = 1; pos <= dir.size(); ++pos) {
    if (pos == dir.size() || dir[pos] == '/') {
      const std::string part = dir.substr(0, pos);
      if (::mkdir(part.c_str(), 0755) != 0 && errno != EEXIST)
        throw CommError(strCat("agentcomm flight recorder: cannot create ", part, ": ", std::strerror(errno)));
    }
  }
  const std::string path = strCat(dir, "/agentcomm_trace_rank", processRank, "_pid", ::getpid(), ".json");
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << dumpAll(reason, processRank);
    if (!f) throw CommError(strCat("agentcomm flight recorder: cannot write ", tmp));
  }
  // Whole files only: the analyzer may read the directory while ranks still write.
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    throw CommError(strCat("agentcomm flight recorder: cannot rename ", tmp, ": ", std::strerror(errno)));
  return path;
}

size_t FlightRecorder::capacityFromEnv() {
  const char* v = envText("AGENTCOMM_TRACE_BUFFER");
  if (v == nullptr) return 2000;
  char* end = nullptr;
  errno = 0;
  const unsigned long long x = std::strtoull(v, &end, 10);
  AC_CHECK(end != v && *end == 0 && errno == 0 && x <= (1ull << 24) && v[0] != '-', InvalidArgument,
           "AGENTCOMM_TRACE_BUFFER=", v, " is not a number of operations from 0 to 16777216");
  return static_cast<size_t>(x);
}

}  // namespace agentcomm
