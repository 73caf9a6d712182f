#pragma once
// How many intra-op (OpenMP) threads a rank should run so that the ranks of
// one host do not oversubscribe its CPUs.
//
// Why a communication library cares: GNU OpenMP (torch's CPU wheels) keeps a
// team's worker threads spinning for about 3 ms after every parallel region,
// unless the process itself runs more OpenMP threads than it has CPUs. It
// cannot see the other ranks on the host: 4 ranks x 2 threads on 2 CPUs leave
// a spinning worker per rank whenever torch ops come faster than every 3 ms,
// which is exactly the case when the collectives between them are fast. The
// spinners take the CPUs the peers need to reach the next collective (and
// their own compute), and everything slows 2-3x (bench/crowded.py). torchrun
// avoids it by setting OMP_NUM_THREADS=1 for every worker; mp.spawn, plain
// subprocess launchers, Ray and SLURM scripts do not.
//
// The policy (AGENTCOMM_INTRAOP_THREADS):
//   auto (default): when the user did not choose (OMP_NUM_THREADS unset) and
//        localRanks x currentThreads > cpus (usableCpus()), run
//        max(1, cpus / localRanks) threads; otherwise keep the current count;
//   keep: never change the count;
//   N (a positive number): run exactly N threads.
// A bad value raises InvalidArgument naming the variable.
#include <optional>
#include <string>

namespace agentcomm {

struct ThreadAdvice {
  int threads = 0;     // the count to set
  std::string reason;  // one line for the log
};

// The decision alone (no side effects): nullopt keeps the current count.
std::optional<ThreadAdvice> adviseIntraOpThreads(int localRanks, int currentThreads, int cpus,
                                                 bool userChose, const char* setting);

// AGENTCOMM_INTRAOP_THREADS as read from the environment (nullptr when unset).
const char* intraOpThreadsSetting();
// CPUs this process may run on (its affinity mask), at least 1.
int usableCpus();
// Whether the user chose the thread count through the environment (OMP_NUM_THREADS set).
bool userChoseThreads();

}  // namespace agentcomm
