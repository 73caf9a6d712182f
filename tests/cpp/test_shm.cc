// The shared-memory domain and every shm algorithm, world sizes 2..8, ranks
// as threads (one process: Cross Memory Attach reads this process's own
// memory, which exercises the same syscall path as between processes).
// Slots are tiny so that every size runs many rounds and both parities.
#include <dirent.h>
#include <unistd.h>
#include <gtest/gtest.h>

#include <functional>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <chrono>
#include <cmath>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "algorithms/algorithms.h"
#include "algorithms/shm_common.h"
#include "algorithms/topology.h"
#include "core/error.h"
#include "rank_threads.h"
#include "transport/shm/shm_domain.h"

using namespace agentcomm;
using namespace agentcomm::algorithms;
using algorithms::CollectiveKind;

namespace {

const std::vector<size_t> kCounts = {0, 1, 7, 33, 1000, 4099};

float input(int rank, size_t j) { return static_cast<float>((j * 7 + 3 * rank) % 11) + 1.0f; }

double expectedReduce(ReduceOp op, int n, size_t j) {
  double acc = input(0, j);
  for (int r = 1; r < n; ++r) {
    double x = input(r, j);
    switch (op) {
      case ReduceOp::Sum:
      case ReduceOp::Avg: acc += x; break;
      case ReduceOp::Product: acc *= x; break;
      case ReduceOp::Min: acc = std::min(acc, x); break;
      case ReduceOp::Max: acc = std::max(acc, x); break;
      default: break;
    }
  }
  if (op == ReduceOp::Avg) acc /= n;
  return acc;
}

std::vector<int> allRanks(int n) {
  std::vector<int> v(n);
  for (int i = 0; i < n; ++i) v[i] = i;
  return v;
}

// This process's segments only (CTest runs other test processes beside this one).
int countShmEntries() {
  const std::string mine = "agentcomm-" + std::to_string(::getpid()) + "-";
  int found = 0;
  if (DIR* d = ::opendir("/dev/shm")) {
    while (dirent* e = ::readdir(d))
      if (std::strncmp(e->d_name, mine.c_str(), mine.size()) == 0) ++found;
    ::closedir(d);
  }
  return found;
}

struct Rank {
  transport::Transport& t;
  transport::ShmDomain& shm;
  uint64_t seq = 0;
  Context ctx(CollectiveKind kind, DataType dt = DataType::Float32, ReduceOp op = ReduceOp::Sum, uint64_t sig = 0) {
    Context c(t, ++seq, kind, dt);
    c.op = op;
    c.signature = sig;
    c.shm = &shm;
    c.deadline = transport::Clock::now() + std::chrono::seconds(30);
    return c;
  }
};

// Runs fn on n rank threads, each with an in-process transport and a shm domain.
void runShm(int n, size_t slotBytes, bool cma, const std::function<void(Rank&)>& fn) {
  auto hub = transport::InProcHub::create(n);
  std::vector<std::unique_ptr<transport::Transport>> ts;
  for (int r = 0; r < n; ++r) ts.push_back(hub->connect(r));
  transport::HashStore store;
  ranktest::forEachRank(n, [&](int r) {
    transport::ShmOptions o;
    o.slotBytes = slotBytes;
    o.allowCma = cma;
    o.describe = algorithms::describeShmRound;
    o.timeout = std::chrono::seconds(30);
    auto shm = transport::ShmDomain::create(store, r, allRanks(n), o, [&, r](int) { return ts[r]->mailbox().abortReason(); });
    ASSERT_NE(shm, nullptr);
    ASSERT_EQ(shm->cma(), cma) << shm->cmaUnavailableReason();
    Rank rank{*ts[r], *shm};
    fn(rank);
  });
}

class ShmWorld : public ::testing::TestWithParam<int> {};

}  // namespace

TEST(Shm, SegmentIsUnlinkedOnceEveryRankAttached) {
  const int before = countShmEntries();
  runShm(3, 4096, true, [&](Rank& rk) {
    // Every rank is past create(): the name is gone, the mapping still works.
    EXPECT_EQ(countShmEntries(), before);
    Context c = rk.ctx(CollectiveKind::Barrier);
    barrierShm(c);
  });
  EXPECT_EQ(countShmEntries(), before);
}

TEST(Shm, SingleRankHasNoDomain) {
  transport::HashStore store;
  EXPECT_EQ(transport::ShmDomain::create(store, 0, allRanks(1), {}, nullptr), nullptr);
}

TEST_P(ShmWorld, AllReduceEveryAlgoOpAndSize) {
  const int n = GetParam();
  runShm(n, 256, true, [&](Rank& rk) {
    for (AllReduceAlgo algo : {AllReduceAlgo::ShmFlat, AllReduceAlgo::ShmStaged, AllReduceAlgo::ShmCma}) {
      for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Product, ReduceOp::Min, ReduceOp::Max}) {
        for (size_t count : kCounts) {
          std::vector<float> buf(count);
          for (size_t j = 0; j < count; ++j) buf[j] = input(rk.t.rank(), j);
          Context ctx = rk.ctx(CollectiveKind::AllReduce, DataType::Float32, op, count);
          AllReduceOptions o;
          o.data = buf.data();
          o.count = count;
          o.algo = algo;
          allReduce(ctx, o);
          for (size_t j = 0; j < count; ++j) {
            const double want = expectedReduce(op, n, j);
            ASSERT_NEAR(buf[j], want, std::abs(want) * 1e-6)
                << allReduceAlgoName(algo) << " " << reduceOpName(op) << " count " << count << " j " << j;
          }
        }
      }
    }
    // Every rank computes bitwise the same result (reduction in rank order).
    std::vector<double> buf(555);
    for (size_t j = 0; j < buf.size(); ++j) buf[j] = 0.1 * (j + 1) * (rk.t.rank() + 1) / 3.0;
    for (AllReduceAlgo algo : {AllReduceAlgo::ShmFlat, AllReduceAlgo::ShmStaged, AllReduceAlgo::ShmCma}) {
      std::vector<double> mine = buf;
      Context ctx = rk.ctx(CollectiveKind::AllReduce, DataType::Float64, ReduceOp::Sum, mine.size());
      AllReduceOptions o;
      o.data = mine.data();
      o.count = mine.size();
      o.algo = algo;
      allReduce(ctx, o);
      std::vector<double> seen(mine.size() * n);
      AllGatherOptions g;
      g.input = mine.data();
      for (int k = 0; k < n; ++k) {
        g.outputs.push_back(seen.data() + k * mine.size());
        g.counts.push_back(mine.size());
      }
      Context gc = rk.ctx(CollectiveKind::AllGather, DataType::Float64);
      allGatherShm(gc, g, Path::ShmStaged);
      for (int k = 0; k < n; ++k)
        ASSERT_EQ(0, std::memcmp(seen.data() + k * mine.size(), mine.data(), mine.size() * sizeof(double)));
    }
  });
}

TEST_P(ShmWorld, BroadcastAllGatherReduceScatterBothPaths) {
  const int n = GetParam();
  runShm(n, 256, true, [&](Rank& rk) {
    const int r = rk.t.rank();
    for (Path path : {Path::ShmStaged, Path::ShmCma}) {
      for (int root = 0; root < n; ++root) {
        for (size_t count : kCounts) {
          std::vector<float> buf(count, -1.0f);
          if (r == root)
            for (size_t j = 0; j < count; ++j) buf[j] = input(root, j);
          Context ctx = rk.ctx(CollectiveKind::Broadcast, DataType::Float32, ReduceOp::Sum, count);
          broadcastShm(ctx, {buf.data(), count, root}, path);
          for (size_t j = 0; j < count; ++j) ASSERT_EQ(buf[j], input(root, j)) << "root " << root;
        }
      }
      for (size_t base : {size_t{0}, size_t{1}, size_t{50}, size_t{300}}) {
        std::vector<size_t> counts(n);
        for (int k = 0; k < n; ++k) counts[k] = base * (k % 3);  // some blocks empty, sizes differ
        std::vector<float> in(counts[r]);
        for (size_t j = 0; j < in.size(); ++j) in[j] = input(r, j);
        std::vector<std::vector<float>> outs(n);
        AllGatherOptions o;
        o.input = in.data();
        for (int k = 0; k < n; ++k) {
          outs[k].assign(counts[k], -1);
          o.outputs.push_back(outs[k].data());
        }
        o.counts = counts;
        Context ctx = rk.ctx(CollectiveKind::AllGather);
        allGatherShm(ctx, o, path);
        for (int k = 0; k < n; ++k)
          for (size_t j = 0; j < counts[k]; ++j) ASSERT_EQ(outs[k][j], input(k, j));
      }
      for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Min}) {
        for (size_t scaleBy : {size_t{0}, size_t{1}, size_t{40}}) {
          std::vector<size_t> counts(n);
          for (int k = 0; k < n; ++k) counts[k] = scaleBy * (3 + 17 * k) / 3;
          std::vector<std::vector<float>> ins(n);
          ReduceScatterOptions o;
          size_t offset = 0;
          for (int k = 0; k < n; ++k) {
            for (size_t j = 0; j < counts[k]; ++j) ins[k].push_back(input(r, offset + j));
            o.inputs.push_back(ins[k].data());
            offset += counts[k];
          }
          auto saved = ins;
          o.counts = counts;
          std::vector<float> out(counts[r], -1);
          o.output = out.data();
          Context ctx = rk.ctx(CollectiveKind::ReduceScatter, DataType::Float32, op);
          reduceScatterShm(ctx, o, path);
          size_t myOffset = 0;
          for (int k = 0; k < r; ++k) myOffset += counts[k];
          for (size_t j = 0; j < out.size(); ++j) ASSERT_NEAR(out[j], expectedReduce(op, n, myOffset + j), 1e-5);
          ASSERT_EQ(ins, saved);
        }
      }
    }
  });
}

TEST_P(ShmWorld, ReduceGatherScatterBothPaths) {
  const int n = GetParam();
  runShm(n, 256, true, [&](Rank& rk) {
    const int r = rk.t.rank();
    for (Path path : {Path::ShmStaged, Path::ShmCma}) {
      for (int root = 0; root < n; ++root) {
        for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max}) {
          for (size_t count : kCounts) {
            // Through the path, and (once) through the entry point reduce(),
            // which runs these small messages as an all-reduce (flat slots).
            for (bool entry : {false, true}) {
              if (entry && path != Path::ShmStaged) continue;
              std::vector<float> buf(count);
              for (size_t j = 0; j < count; ++j) buf[j] = input(r, j);
              const auto before = buf;
              Context ctx = rk.ctx(CollectiveKind::Reduce, DataType::Float32, op, count);
              ReduceOptions o;
              o.data = buf.data();
              o.count = count;
              o.root = root;
              if (entry)
                reduce(ctx, o);
              else
                reduceShm(ctx, o, path);
              if (r == root) {
                for (size_t j = 0; j < count; ++j)
                  ASSERT_NEAR(buf[j], expectedReduce(op, n, j), 1e-5) << j << " entry " << entry;
              } else {
                ASSERT_EQ(buf, before) << "a non-root's buffer is left alone (entry " << entry << ")";
              }
            }
          }
        }
        for (size_t base : {size_t{0}, size_t{1}, size_t{70}, size_t{300}}) {
          std::vector<size_t> counts(n);
          for (int k = 0; k < n; ++k) counts[k] = base * ((k + root) % 3);  // some empty, sizes differ
          // gather
          std::vector<float> in(counts[r]);
          for (size_t j = 0; j < in.size(); ++j) in[j] = input(r, j);
          std::vector<std::vector<float>> outs(n);
          GatherOptions g;
          g.input = in.data();
          g.count = counts[r];
          g.root = root;
          if (r == root) {
            for (int k = 0; k < n; ++k) {
              outs[k].assign(counts[k], -1);
              g.outputs.push_back(outs[k].data());
            }
            g.counts = counts;
          }
          Context gc = rk.ctx(CollectiveKind::Gather);
          gatherShm(gc, g, path);
          if (r == root)
            for (int k = 0; k < n; ++k)
              for (size_t j = 0; j < counts[k]; ++j) ASSERT_EQ(outs[k][j], input(k, j)) << "gather from " << k;
          // scatter
          std::vector<std::vector<float>> ins(n);
          ScatterOptions sc;
          sc.root = root;
          sc.count = counts[r];
          std::vector<float> out(counts[r], -1);
          sc.output = out.data();
          if (r == root) {
            for (int k = 0; k < n; ++k) {
              for (size_t j = 0; j < counts[k]; ++j) ins[k].push_back(input(k + 10, j));
              sc.inputs.push_back(ins[k].data());
            }
            sc.counts = counts;
          }
          Context scx = rk.ctx(CollectiveKind::Scatter);
          scatterShm(scx, sc, path);
          for (size_t j = 0; j < out.size(); ++j) ASSERT_EQ(out[j], input(r + 10, j)) << "scatter to " << r;
        }
      }
    }
  });
}

TEST(ShmErrors, GatherAndScatterCountMismatchFailEveryRank) {
  for (int which = 0; which < 2; ++which) {
    std::atomic<int> failed{0};
    runShm(3, 4096, true, [&](Rank& rk) {
      const int r = rk.t.rank();
      std::vector<float> buf(10, 1.0f);
      std::vector<std::vector<float>> bufs(3, std::vector<float>(10, 1.0f));
      try {
        if (which == 0) {
          GatherOptions g;
          g.input = buf.data();
          g.count = r == 2 ? 9 : 10;  // rank 2 disagrees with the root's expectation
          if (r == 0) {
            for (auto& b : bufs) g.outputs.push_back(b.data());
            g.counts = {10, 10, 10};
          }
          Context c = rk.ctx(CollectiveKind::Gather);
          gatherShm(c, g, Path::ShmStaged);
        } else {
          ScatterOptions s;
          s.output = buf.data();
          s.count = r == 1 ? 7 : 10;
          if (r == 0) {
            for (auto& b : bufs) s.inputs.push_back(b.data());
            s.counts = {10, 10, 10};
          }
          Context c = rk.ctx(CollectiveKind::Scatter);
          scatterShm(c, s, Path::ShmCma);
        }
      } catch (const Error& e) {
        ++failed;
        if (r == (which == 0 ? 0 : 1)) EXPECT_NE(std::string(e.what()).find("mismatch"), std::string::npos) << e.what();
      }
    });
    EXPECT_GE(failed.load(), 1) << (which == 0 ? "gather" : "scatter");
  }
}

TEST_P(ShmWorld, AllToAllWithSplitsBothPaths) {
  const int n = GetParam();
  runShm(n, 256, true, [&](Rank& rk) {
    const int r = rk.t.rank();
    for (Path path : {Path::ShmStaged, Path::ShmCma}) {
      for (size_t scale : {size_t{1}, size_t{37}}) {
        // Rank r sends scale * ((r + p) % 4) elements to rank p; values encode (src, dst, j).
        auto split = [&](int src, int dst) { return scale * static_cast<size_t>((src + dst) % 4); };
        AllToAllOptions o;
        std::vector<float> in, out;
        size_t off = 0;
        for (int p = 0; p < n; ++p) {
          o.inOffsets.push_back(off);
          o.inCounts.push_back(split(r, p));
          for (size_t j = 0; j < split(r, p); ++j) in.push_back(static_cast<float>(r * 100000 + p * 1000 + j));
          off += split(r, p);
        }
        off = 0;
        for (int p = 0; p < n; ++p) {
          o.outOffsets.push_back(off);
          o.outCounts.push_back(split(p, r));
          off += split(p, r);
        }
        out.assign(off, -1);
        o.input = in.data();
        o.output = out.data();
        Context ctx = rk.ctx(CollectiveKind::AllToAll);
        allToAllShm(ctx, o, path);
        for (int p = 0; p < n; ++p)
          for (size_t j = 0; j < split(p, r); ++j)
            ASSERT_EQ(out[o.outOffsets[p] + j], static_cast<float>(p * 100000 + r * 1000 + j));
      }
    }
  });
}

TEST_P(ShmWorld, BarrierOrdersRanks) {
  const int n = GetParam();
  std::atomic<int> arrived{0};
  runShm(n, 4096, false, [&](Rank& rk) {
    for (int round = 1; round <= 50; ++round) {
      arrived.fetch_add(1);
      Context ctx = rk.ctx(CollectiveKind::Barrier);
      barrierShm(ctx);
      ASSERT_GE(arrived.load(), round * n);
      Context ctx2 = rk.ctx(CollectiveKind::Barrier);
      barrierShm(ctx2);
    }
  });
}

TEST_P(ShmWorld, StagedWorksWithoutCrossMemoryAttach) {
  const int n = GetParam();
  runShm(n, 512, false, [&](Rank& rk) {
    std::vector<float> buf(3001);
    for (size_t j = 0; j < buf.size(); ++j) buf[j] = input(rk.t.rank(), j);
    Context ctx = rk.ctx(CollectiveKind::AllReduce, DataType::Float32, ReduceOp::Max, buf.size());
    AllReduceOptions o;
    o.data = buf.data();
    o.count = buf.size();
    allReduce(ctx, o);  // auto: never the CMA algorithm here
    for (size_t j = 0; j < buf.size(); ++j) ASSERT_EQ(buf[j], expectedReduce(ReduceOp::Max, n, j));
    o.algo = AllReduceAlgo::ShmCma;
    Context c2 = rk.ctx(CollectiveKind::AllReduce, DataType::Float32, ReduceOp::Max, buf.size());
    EXPECT_THROW(allReduce(c2, o), InvalidArgument);
  });
}

INSTANTIATE_TEST_SUITE_P(Sizes, ShmWorld, ::testing::Range(2, 9));

TEST(ShmErrors, MismatchedCountsFailEveryRank) {
  std::atomic<int> mismatches{0};
  runShm(3, 4096, true, [&](Rank& rk) {
    const size_t count = rk.t.rank() == 1 ? 9 : 8;
    std::vector<float> buf(count, 1.0f);
    Context ctx = rk.ctx(CollectiveKind::AllReduce, DataType::Float32, ReduceOp::Sum, count);
    AllReduceOptions o;
    o.data = buf.data();
    o.count = count;
    try {
      allReduce(ctx, o);
    } catch (const MismatchError& e) {
      EXPECT_NE(std::string(e.what()).find("collective mismatch"), std::string::npos) << e.what();
      // Both calls named in the algorithms' words, not as raw descriptor bytes.
      EXPECT_NE(std::string(e.what()).find("all_reduce (sequence number 1, 9 elements, dtype float32, op SUM"),
                std::string::npos) << e.what();
      ++mismatches;
    } catch (const CommError&) {
      ++mismatches;  // a rank that was still waiting sees the abort instead
    }
  });
  EXPECT_EQ(mismatches.load(), 3);
}

TEST(ShmErrors, AbsentPeerTimesOutAndAbortWakesWaiters) {
  runShm(3, 4096, true, [&](Rank& rk) {
    if (rk.t.rank() == 2) {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      rk.shm.abort("rank 2 gave up");  // wakes the blocked ranks at once
      return;
    }
    Context ctx = rk.ctx(CollectiveKind::Barrier);
    ctx.deadline = transport::Clock::now() + std::chrono::seconds(20);
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_THROW(barrierShm(ctx), CommError);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  });
  runShm(2, 4096, true, [&](Rank& rk) {
    if (rk.t.rank() == 1) return;
    Context ctx = rk.ctx(CollectiveKind::Barrier);
    ctx.deadline = transport::Clock::now() + std::chrono::milliseconds(200);
    EXPECT_THROW(barrierShm(ctx), TimeoutError);
  });
}

TEST(ShmErrors, TimeoutNamesTheRankThatNeverArrived) {
  // Ranks 0 and 1 both arrive (the shared arrival count is 2 of 3), rank 2
  // never does: the error must name rank 2, not the rank that did arrive.
  std::atomic<int> named{0};
  std::atomic<int> done{0};
  runShm(3, 4096, true, [&](Rank& rk) {
    if (rk.t.rank() == 2) {
      while (done.load() < 2) std::this_thread::sleep_for(std::chrono::milliseconds(5));
      return;
    }
    struct Done {
      std::atomic<int>& n;
      ~Done() { ++n; }  // rank 2 leaves only after both, whatever happened
    } leave{done};
    Context ctx = rk.ctx(CollectiveKind::Barrier);
    ctx.deadline = transport::Clock::now() + std::chrono::milliseconds(300);
    try {
      barrierShm(ctx);
      ADD_FAILURE() << "the barrier passed without rank 2";
    } catch (const Error& e) {  // TimeoutError, or the abort of the rank that timed out first (CommError)
      if (std::string(e.what()).find("waiting for rank 2 ") != std::string::npos) ++named;
      else ADD_FAILURE() << e.what();
    }
  });
  EXPECT_EQ(named.load(), 2);
}

TEST(Shm, ManySyncPointsInARow) {
  // The arrival count runs on for every sync point of every rank; 3 ranks x
  // 20000 barriers, interleaved with all-reduces that check the data.
  runShm(3, 4096, true, [&](Rank& rk) {
    for (int i = 0; i < 20000; ++i) {
      Context b = rk.ctx(CollectiveKind::Barrier);
      barrierShm(b);
      if (i % 1000 == 0) {
        std::vector<float> buf(5, static_cast<float>(rk.t.rank() + i));
        Context c = rk.ctx(CollectiveKind::AllReduce, DataType::Float32, ReduceOp::Sum, buf.size());
        AllReduceOptions o;
        o.data = buf.data();
        o.count = buf.size();
        allReduce(c, o);
        for (float v : buf) ASSERT_EQ(v, static_cast<float>(3 * i + 3));
      }
    }
  });
}

TEST(ShmErrors, PeerThatNeverAttachesLeavesNoSegment) {
  const int before = countShmEntries();
  transport::HashStore store;
  ranktest::forEachRank(2, [&](int r) {  // a world of 3 whose rank 2 never shows up
    transport::ShmOptions o;
    o.timeout = std::chrono::milliseconds(300);
    o.slotBytes = 4096;
    EXPECT_THROW(transport::ShmDomain::create(store, r, allRanks(3), o, nullptr), TimeoutError);
  });
  EXPECT_EQ(countShmEntries(), before);
}

namespace {

// "Hosts" of ranks in one process: each host has its own shared-memory domain,
// the leaders talk over the in-process transport. Runs fn(rank, topology,
// context maker) on every rank's thread.
using MakeContext = std::function<Context(CollectiveKind, ReduceOp, uint64_t)>;
void runHosts(const std::vector<std::vector<int>>& hosts,
              const std::function<void(int, const Topology&, const MakeContext&)>& fn) {
  int n = 0;
  for (const auto& h : hosts) n += static_cast<int>(h.size());
  auto hub = transport::InProcHub::create(n);
  std::vector<std::unique_ptr<transport::Transport>> ts;
  for (int r = 0; r < n; ++r) ts.push_back(hub->connect(r));
  transport::HashStore store;
  ranktest::forEachRank(n, [&](int r) {
    Topology topo;
    for (const auto& h : hosts) {
      topo.leaders.push_back(h[0]);
      topo.hosts.push_back(h);
      if (std::find(h.begin(), h.end(), r) != h.end()) topo.localRanks = h;
    }
    topo.localRank = static_cast<int>(std::find(topo.localRanks.begin(), topo.localRanks.end(), r) - topo.localRanks.begin());
    for (size_t i = 0; i < topo.leaders.size(); ++i)
      if (topo.leaders[i] == r) topo.leaderIndex = static_cast<int>(i);
    transport::ShmOptions o;
    o.slotBytes = 512;
    auto shm = transport::ShmDomain::create(store, r, topo.localRanks, o, nullptr);
    ASSERT_EQ(shm != nullptr, topo.localRanks.size() > 1);
    topo.local = shm.get();
    uint64_t seq = 0;
    MakeContext make = [&](CollectiveKind kind, ReduceOp op, uint64_t signature) {
      Context ctx(*ts[r], ++seq, kind, DataType::Float32);
      ctx.op = op;
      ctx.signature = signature;
      ctx.topo = &topo;
      ctx.deadline = transport::Clock::now() + std::chrono::seconds(30);
      return ctx;
    };
    fn(r, topo, make);
  });
}

// Contiguous hosts, and hosts whose ranks interleave (a launcher that numbers
// ranks round-robin over the hosts); a host of one rank in each.
const std::vector<std::vector<std::vector<int>>> kHostLayouts = {{{0, 1, 2}, {3, 4}, {5}}, {{0, 3, 5}, {1, 4}, {2}}};

}  // namespace

TEST(ShmHierarchical, AllReduceAcrossHostsEveryOpAndSize) {
  for (const auto& hosts : kHostLayouts) {
    runHosts(hosts, [&](int r, const Topology&, const MakeContext& make) {
      const int n = 6;
      for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max, ReduceOp::Product}) {
        for (size_t count : kCounts) {
          std::vector<float> buf(count);
          for (size_t j = 0; j < count; ++j) buf[j] = input(r, j);
          Context ctx = make(CollectiveKind::AllReduce, op, count);
          AllReduceOptions ao;
          ao.data = buf.data();
          ao.count = count;
          allReduce(ctx, ao);
          ASSERT_EQ(chooseAllReduceAlgo(count * 4, n, nullptr, AllReduceAlgo::Auto, true), AllReduceAlgo::Hierarchical);
          for (size_t j = 0; j < count; ++j) {
            const double want = expectedReduce(op, n, j);
            ASSERT_NEAR(buf[j], want, std::abs(want) * 1e-5) << reduceOpName(op) << " count " << count << " j " << j;
          }
        }
      }
    });
  }
}

// Broadcast from every root (a leader or not), every size.
TEST(ShmHierarchical, BroadcastFromEveryRoot) {
  for (const auto& hosts : kHostLayouts) {
    runHosts(hosts, [&](int r, const Topology&, const MakeContext& make) {
      for (int root = 0; root < 6; ++root) {
        for (size_t count : kCounts) {
          std::vector<float> buf(count, -1.0f);
          if (r == root)
            for (size_t j = 0; j < count; ++j) buf[j] = input(root, j);
          Context ctx = make(CollectiveKind::Broadcast, ReduceOp::Sum, count);
          broadcast(ctx, {buf.data(), count, root});
          for (size_t j = 0; j < count; ++j) ASSERT_EQ(buf[j], input(root, j)) << "root " << root << " count " << count;
        }
      }
    });
  }
}

// Blocks of different sizes (some empty), in global rank order whatever the
// hosts' layout.
TEST(ShmHierarchical, AllGatherAndReduceScatterOfUnevenBlocks) {
  for (const auto& hosts : kHostLayouts) {
    runHosts(hosts, [&](int r, const Topology&, const MakeContext& make) {
      const int n = 6;
      for (size_t scaleBy : {size_t{0}, size_t{1}, size_t{40}}) {
        std::vector<size_t> counts(n);
        for (int k = 0; k < n; ++k) counts[k] = k == 2 ? 0 : scaleBy * (3 + 17 * k) / 3;
        std::vector<float> in(counts[r]);
        for (size_t j = 0; j < in.size(); ++j) in[j] = input(r, j);
        std::vector<std::vector<float>> outs(n);
        AllGatherOptions g;
        g.input = in.data();
        for (int k = 0; k < n; ++k) {
          outs[k].assign(counts[k], -1);
          g.outputs.push_back(outs[k].data());
        }
        g.counts = counts;
        Context ctx = make(CollectiveKind::AllGather, ReduceOp::Sum, 0);
        allGather(ctx, g);
        for (int k = 0; k < n; ++k)
          for (size_t j = 0; j < counts[k]; ++j) ASSERT_EQ(outs[k][j], input(k, j)) << "block " << k;
        for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Min, ReduceOp::Product}) {
          std::vector<std::vector<float>> ins(n);
          ReduceScatterOptions o;
          size_t offset = 0, myOffset = 0;
          for (int k = 0; k < n; ++k) {
            if (k == r) myOffset = offset;
            for (size_t j = 0; j < counts[k]; ++j) ins[k].push_back(input(r, offset + j));
            o.inputs.push_back(ins[k].data());
            offset += counts[k];
          }
          const auto saved = ins;
          o.counts = counts;
          std::vector<float> out(counts[r], -1);
          o.output = out.data();
          Context rc = make(CollectiveKind::ReduceScatter, op, 0);
          reduceScatter(rc, o);
          for (size_t j = 0; j < out.size(); ++j) {
            const double want = expectedReduce(op, n, myOffset + j);
            ASSERT_NEAR(out[j], want, std::abs(want) * 1e-5) << reduceOpName(op) << " j " << j;
          }
          ASSERT_EQ(ins, saved);
        }
      }
    });
  }
}

TEST(Shm, ManyGroupsShrinkTheirSlotsToTheBudget) {
  // Groups created while others are mapped get smaller slots once the
  // process budget (AGENTCOMM_SHM_BUDGET_BYTES, 512 MiB) is used up.
  transport::HashStore store;
  std::vector<std::unique_ptr<transport::ShmDomain>> keep;
  std::mutex mu;
  size_t first = 0, last = 0;
  for (int g = 0; g < 6; ++g) {
    ranktest::forEachRank(2, [&](int r) {
      transport::ShmOptions o;
      o.keyPrefix = "group" + std::to_string(g) + "/";
      o.slotBytes = size_t{64} << 20;  // 2 ranks x 2 parities x 64 MiB = 256 MiB per group
      o.allowCma = false;
      auto d = transport::ShmDomain::create(store, r, allRanks(2), o, nullptr);
      ASSERT_NE(d, nullptr);
      std::lock_guard<std::mutex> lock(mu);
      if (g == 0) first = d->slotBytes();
      last = d->slotBytes();
      keep.push_back(std::move(d));
    });
  }
  EXPECT_GT(first, last);
  EXPECT_GE(last, size_t{64} << 10);
}
