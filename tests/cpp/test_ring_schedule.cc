#include <gtest/gtest.h>

#include <set>
#include <vector>

#include "algorithms/ring_schedule.h"

using namespace agentcomm::algorithms;

TEST(RingSchedule, BlocksTileTheBuffer) {
  for (int n = 1; n <= 8; ++n) {
    for (size_t count : {0, 1, 5, 8, 13, 1000, 1001}) {
      size_t next = 0;
      for (int k = 0; k < n; ++k) {
        Span s = blockSpan(count, n, k);
        EXPECT_EQ(s.offset, next);
        EXPECT_LE(s.count, count / n + 1);
        EXPECT_GE(s.count, count / n);
        next += s.count;
      }
      EXPECT_EQ(next, count);
    }
  }
}

TEST(RingSchedule, ReduceScatterOwnsOwnBlock) {
  // Simulate the schedule symbolically: contributions[r][k] = set of ranks whose
  // data rank r holds (summed) for block k.
  for (int n = 1; n <= 8; ++n) {
    std::vector<std::vector<std::set<int>>> have(n, std::vector<std::set<int>>(n));
    for (int r = 0; r < n; ++r)
      for (int k = 0; k < n; ++k) have[r][k] = {r};
    for (int s = 0; s < n - 1; ++s) {
      auto next = have;
      for (int r = 0; r < n; ++r) {
        RingStep st = reduceScatterStep(r, n, s);
        int right = (r + 1) % n;
        EXPECT_EQ(reduceScatterStep(right, n, s).recvBlock, st.sendBlock) << "n=" << n << " s=" << s;
        for (int x : have[r][st.sendBlock]) next[right][st.sendBlock].insert(x);
        if (s > 0) EXPECT_EQ(st.sendBlock, reduceScatterStep(r, n, s - 1).recvBlock);  // forward what we reduced
      }
      have = next;
    }
    for (int r = 0; r < n; ++r) EXPECT_EQ(have[r][r].size(), static_cast<size_t>(n)) << "n=" << n << " r=" << r;
  }
}

TEST(RingSchedule, AllGatherDeliversEveryBlock) {
  for (int n = 1; n <= 8; ++n) {
    std::vector<std::set<int>> have(n);
    for (int r = 0; r < n; ++r) have[r] = {r};
    for (int s = 0; s < n - 1; ++s) {
      auto next = have;
      for (int r = 0; r < n; ++r) {
        RingStep st = allGatherStep(r, n, s);
        EXPECT_TRUE(have[r].count(st.sendBlock)) << "rank sends a block it does not have yet";
        int right = (r + 1) % n;
        EXPECT_EQ(allGatherStep(right, n, s).recvBlock, st.sendBlock);
        next[right].insert(st.sendBlock);
      }
      have = next;
    }
    for (int r = 0; r < n; ++r) EXPECT_EQ(have[r].size(), static_cast<size_t>(n));
  }
}

TEST(RingSchedule, ChunksCoverBlock) {
  for (size_t count : {0, 1, 9, 10, 11, 100}) {
    for (size_t ce : {1, 3, 10, 1000}) {
      size_t covered = 0;
      for (size_t c = 0; c < numChunks(count, ce); ++c) {
        Span s = chunkSpan(count, ce, c);
        EXPECT_EQ(s.offset, covered);
        EXPECT_GT(s.count, 0u);
        covered += s.count;
      }
      EXPECT_EQ(covered, count);
    }
  }
}

TEST(RingSchedule, TagsAreDistinct) {
  std::set<uint64_t> tags;
  for (uint64_t p = 0; p < 4; ++p)
    for (uint64_t s = 0; s < 8; ++s)
      for (uint64_t c = 0; c < 8; ++c) EXPECT_TRUE(tags.insert(makeTag(p, s, c)).second);
}
