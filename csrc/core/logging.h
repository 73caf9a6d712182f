#pragma once
// AGENTCOMM_DEBUG=WARN|INFO|TRACE (like NCCL_DEBUG). Default: WARN.
// Lines go to stderr, prefixed with the rank set by setLogRank().
#include <sstream>

#include "core/error.h"

namespace agentcomm {

enum class LogLevel : int { Warn = 0, Info = 1, Trace = 2 };

LogLevel logLevel();
bool logEnabled(LogLevel level);
void setLogRank(int rank);
// The rank set by setLogRank (the process's first group's rank), -1 before.
int logRank();
void logLine(LogLevel level, const std::string& msg);

}  // namespace agentcomm

#define AC_LOG(level, ...)                                                          \
  do {                                                                              \
    if (::agentcomm::logEnabled(::agentcomm::LogLevel::level))                      \
      ::agentcomm::logLine(::agentcomm::LogLevel::level, ::agentcomm::strCat(__VA_ARGS__)); \
  } while (0)
