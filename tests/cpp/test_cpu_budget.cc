// The intra-op thread policy (core/cpu_budget.h): when it changes the count, to what, and the
// errors of a bad AGENTCOMM_INTRAOP_THREADS.
#include <gtest/gtest.h>

#include "core/cpu_budget.h"
#include "core/error.h"

namespace agentcomm {
namespace {

std::optional<int> advise(int ranks, int threads, int cpus, bool chosen = false, const char* setting = nullptr) {
  auto a = adviseIntraOpThreads(ranks, threads, cpus, chosen, setting);
  return a ? std::optional<int>(a->threads) : std::nullopt;
}

TEST(CpuBudget, AutoSharesTheCpusWhenTheRanksOversubscribeThem) {
  EXPECT_EQ(advise(4, 2, 2), 1);     // 8 threads on 2 CPUs: one each (never fewer)
  EXPECT_EQ(advise(2, 2, 2), 1);     // 4 on 2
  EXPECT_EQ(advise(2, 32, 32), 16);  // two ranks on a 32-CPU box get half each
  EXPECT_EQ(advise(3, 8, 8), 2);     // rounded down: 6 of 8 CPUs busy, none oversubscribed
  EXPECT_EQ(advise(16, 4, 8), 1);    // more ranks than CPUs: one each, the least there is
  EXPECT_EQ(advise(4, 2, 2, false, "auto"), 1);
  EXPECT_EQ(advise(4, 2, 2, false, "AUTO"), 1);
}

TEST(CpuBudget, AutoKeepsTheCountWhenItFitsOrTheUserChose) {
  EXPECT_EQ(advise(1, 2, 2), std::nullopt);        // a lone rank on the host
  EXPECT_EQ(advise(2, 1, 2), std::nullopt);        // 2 x 1 fits on 2
  EXPECT_EQ(advise(4, 8, 32), std::nullopt);       // 32 of 32
  EXPECT_EQ(advise(4, 2, 2, true), std::nullopt);  // OMP_NUM_THREADS is set: the user's choice
  EXPECT_EQ(advise(8, 1, 2), std::nullopt);        // already one: nothing lower to go to
}

TEST(CpuBudget, KeepAndAnExplicitCountOverrideAuto) {
  EXPECT_EQ(advise(4, 2, 2, false, "keep"), std::nullopt);
  EXPECT_EQ(advise(4, 2, 2, true, "3"), 3);  // an explicit count wins over OMP_NUM_THREADS
  EXPECT_EQ(advise(1, 2, 64, false, "7"), 7);
  EXPECT_EQ(advise(4, 2, 2, false, "2"), std::nullopt);  // already that count
}

TEST(CpuBudget, ABadSettingNamesTheVariable) {
  for (const char* bad : {"0", "-1", "two", "2x", "99999", " "}) {
    try {
      adviseIntraOpThreads(4, 2, 2, false, bad);
      ADD_FAILURE() << "accepted " << bad;
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("AGENTCOMM_INTRAOP_THREADS"), std::string::npos) << e.what();
    }
  }
}

TEST(CpuBudget, TheReasonSaysWhyAndHowToChoose) {
  auto a = adviseIntraOpThreads(4, 2, 2, false, nullptr);
  ASSERT_TRUE(a.has_value());
  EXPECT_NE(a->reason.find("4 ranks on this host x 2 intra-op threads > 2 CPUs"), std::string::npos) << a->reason;
  EXPECT_NE(a->reason.find("OMP_NUM_THREADS"), std::string::npos);
}

TEST(CpuBudget, UsableCpusIsPositive) { EXPECT_GE(usableCpus(), 1); }

}  // namespace
}  // namespace agentcomm
