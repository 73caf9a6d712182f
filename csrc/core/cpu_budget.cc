#include "core/cpu_budget.h"

#include <sched.h>
#include <strings.h>

#include <algorithm>
#include <cstdlib>

#include "core/env.h"
#include "core/error.h"

namespace agentcomm {

std::optional<ThreadAdvice> adviseIntraOpThreads(int localRanks, int currentThreads, int cpus,
                                                 bool userChose, const char* setting) {
  constexpr const char* kName = "AGENTCOMM_INTRAOP_THREADS";
  if (setting != nullptr && strcasecmp(setting, "auto") != 0) {
    if (strcasecmp(setting, "keep") == 0) return std::nullopt;
    char* end = nullptr;
    const long n = std::strtol(setting, &end, 10);
    AC_CHECK(end != setting && *end == 0 && n > 0 && n <= 4096, InvalidArgument, kName, "=", setting,
             " is not 'auto', 'keep' or a positive number of threads");
    if (n == currentThreads) return std::nullopt;
    return ThreadAdvice{static_cast<int>(n), strCat(kName, "=", n)};
  }
  if (userChose || localRanks < 2 || localRanks * currentThreads <= cpus) return std::nullopt;
  const int threads = std::max(1, cpus / localRanks);
  if (threads >= currentThreads) return std::nullopt;
  return ThreadAdvice{threads,
                      strCat(localRanks, " ranks on this host x ", currentThreads, " intra-op threads > ", cpus,
                             " CPUs, and OMP_NUM_THREADS is unset (torchrun would set it to 1); OpenMP's idle "
                             "threads spin for milliseconds and would take the CPUs the ranks need. Set "
                             "OMP_NUM_THREADS or ",
                             kName, "=keep|N to choose yourself (with keep, OMP_WAIT_POLICY=passive stops the "
                             "spinning)")};
}

const char* intraOpThreadsSetting() { return envText("AGENTCOMM_INTRAOP_THREADS"); }

int usableCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

bool userChoseThreads() {
  return envText("OMP_NUM_THREADS") != nullptr;
}

}  // namespace agentcomm
