#include "core/logging.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <strings.h>
#include "core/env.h"

namespace agentcomm {
namespace {

LogLevel parseLevel() {
  const char* env = envText("AGENTCOMM_DEBUG");
  if (env == nullptr) return LogLevel::Warn;
  if (strcasecmp(env, "TRACE") == 0) return LogLevel::Trace;
  if (strcasecmp(env, "INFO") == 0) return LogLevel::Info;
  return LogLevel::Warn;
}

std::atomic<int> gRank{-1};

}  // namespace

LogLevel logLevel() {
  static const LogLevel level = parseLevel();
  return level;
}

bool logEnabled(LogLevel level) { return static_cast<int>(level) <= static_cast<int>(logLevel()); }

void setLogRank(int rank) { gRank.store(rank); }
int logRank() { return gRank.load(); }

void logLine(LogLevel level, const std::string& msg) {
  static const char* names[] = {"WARN", "INFO", "TRACE"};
  // One fprintf per line so lines from different threads do not interleave.
  std::fprintf(stderr, "[agentcomm pid %d rank %d] %s %s\n", static_cast<int>(getpid()), gRank.load(),
               names[static_cast<int>(level)], msg.c_str());
}

}  // namespace agentcomm
