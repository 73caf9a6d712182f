#pragma once
// The flight recorder: per group, a ring buffer of the last N operations
// (like NCCL's TORCH_NCCL_TRACE_BUFFER_SIZE), so that after a hang or a desync
// every rank can say which operation it was in and which ones it finished.
//
// Invariants:
//   - An entry is written by the thread that issued the op (scheduled) and by
//     the thread that ran it (started, ended); every access holds mutex_, so a
//     dump from any thread (a transport reader on abort, Python on demand)
//     sees whole entries. The cost per op is three short critical sections.
//   - Record ids grow by one per op; an id whose slot was overwritten (more
//     than `capacity` ops later) is ignored by started/ended.
//   - `seq` is the group's op sequence number: identical on every rank for the
//     same collective (ranks issue collectives in the same order), which is
//     what the analyzer (agentcomm/debug) lines up across ranks.
//   - Capacity 0 records nothing (AGENTCOMM_TRACE_BUFFER=0).
//
// Dump format (JSON, one file per process, every live group; docs/debugging.md):
//   {"version": 1, "pid", "host", "rank" (the process's first group rank),
//    "reason", "time_ns", "groups": [{"name", "rank", "size", "capacity",
//    "entries": [{"id", "seq", "op", "p2p", "peer", "dtype", "count",
//    "algorithm", "state", "created_ns", "started_ns", "ended_ns", "error"}]}]}
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace agentcomm {

enum class OpState : uint8_t { Scheduled, Started, Completed, Failed };
const char* opStateName(OpState s);

struct FlightEntry {
  uint64_t id = 0;
  uint64_t seq = 0;
  const char* op = "";         // static text, e.g. "all_reduce"
  bool p2p = false;
  int peer = -1;               // p2p: the other rank; collectives with a root: the root; else -1
  const char* dtype = "";      // static text, e.g. "float32"
  uint64_t count = 0;          // elements of this rank's tensors
  const char* algorithm = "";  // static text set by the algorithm that ran, "" if not chosen
  OpState state = OpState::Scheduled;
  int64_t createdNs = 0;       // wall clock (comparable across the ranks of one host)
  int64_t startedNs = 0;
  int64_t endedNs = 0;
  std::string error;
};

class FlightRecorder {
 public:
  FlightRecorder(size_t capacity, std::string group, int rank, int size);

  // Records a new op in state Scheduled; returns its id (0 when capacity is 0).
  uint64_t scheduled(uint64_t seq, const char* op, bool p2p, int peer, const char* dtype, uint64_t count);
  void started(uint64_t id);
  // Completed when error is empty, else Failed with that text.
  void ended(uint64_t id, const char* algorithm, const std::string& error);

  size_t capacity() const { return capacity_; }
  // The entries still held, oldest first.
  std::vector<FlightEntry> entries() const;
  // This group as one JSON object (the "groups" element of a dump).
  std::string toJson() const;

  // Every live recorder of this process, as a dump (the format above).
  static std::string dumpAll(const std::string& reason, int processRank);
  // Writes dumpAll to `dir`/agentcomm_trace_rank<R>_pid<P>.json (the directory
  // is created); returns the path. Throws CommError naming the path on failure.
  static std::string writeAll(const std::string& dir, const std::string& reason, int processRank);

  // The setting: AGENTCOMM_TRACE_BUFFER (default 2000 ops per group).
  static size_t capacityFromEnv();

 private:
  FlightEntry* slotLocked(uint64_t id);

  const size_t capacity_;
  const std::string group_;
  const int rank_;
  const int size_;
  mutable std::mutex mutex_;
  std::vector<FlightEntry> ring_;
  uint64_t nextId_ = 1;
};

// Keeps a recorder listed for FlightRecorder::dumpAll while it lives.
std::shared_ptr<FlightRecorder> makeFlightRecorder(size_t capacity, std::string group, int rank, int size);

}  // namespace agentcomm
