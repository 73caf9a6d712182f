// Every algorithm over the in-process transport, world sizes 1..8, counts
// including 0, 1 and ones not divisible by the world size. Inputs are small
// integers so every expected value has an exact closed form.
#include <gtest/gtest.h>

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

#include "algorithms/algorithms.h"
#include "core/error.h"
#include "rank_threads.h"
#include "tcp_mesh.h"

using namespace agentcomm;
using namespace agentcomm::algorithms;
using algorithms::CollectiveKind;

namespace {

const std::vector<size_t> kCounts = {0, 1, 7, 33, 1000};

float input(int rank, size_t j) { return static_cast<float>((j * 7 + 3 * rank) % 11) + 1.0f; }

Context makeCtx(transport::Transport& t, uint64_t seq, CollectiveKind kind, DataType dt = DataType::Float32,
                ReduceOp op = ReduceOp::Sum, uint64_t sig = 0, size_t chunkBytes = 64) {
  Context ctx(t, seq, kind, dt);
  ctx.op = op;
  ctx.signature = sig;
  ctx.chunkBytes = chunkBytes;  // tiny chunks: many pipelined messages per step
  ctx.deadline = transport::Clock::now() + std::chrono::seconds(30);
  return ctx;
}

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

class WorldSize : public ::testing::TestWithParam<int> {};

}  // namespace

TEST_P(WorldSize, AllReduceEveryAlgoAndOp) {
  const int n = GetParam();
  ranktest::runInProc(n, [&](transport::Transport& t) {
    uint64_t seq = 0;
    for (AllReduceAlgo algo : {AllReduceAlgo::Ring, AllReduceAlgo::Direct, AllReduceAlgo::RecursiveDoubling}) {
      for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Product, ReduceOp::Min, ReduceOp::Max}) {
        for (size_t count : kCounts) {
          std::vector<float> buf(count);
          for (size_t j = 0; j < count; ++j) buf[j] = input(t.rank(), j);
          Context ctx = makeCtx(t, ++seq, CollectiveKind::AllReduce, DataType::Float32, op, count);
          AllReduceOptions o;
          o.data = buf.data();
          o.count = count;
          o.algo = algo;
          allReduce(ctx, o);
          for (size_t j = 0; j < count; ++j) {
            const double want = expectedReduce(op, n, j);
            ASSERT_NEAR(buf[j], want, std::abs(want) * 1e-6) << allReduceAlgoName(algo) << " " << reduceOpName(op)
                                                             << " count " << count << " j " << j;
          }
        }
      }
    }
  });
}

TEST_P(WorldSize, RecursiveDoublingGivesEveryRankTheSameBits) {
  // Inputs whose sums round: any rank combining in another order would differ in the last bits.
  const int n = GetParam();
  const size_t count = 257;
  std::vector<std::vector<float>> results(n);
  ranktest::runInProc(n, [&](transport::Transport& t) {
    uint64_t seq = 0;
    for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Product}) {
      std::vector<float> buf(count);
      for (size_t j = 0; j < count; ++j) buf[j] = 1.0f + 0.1f * static_cast<float>((t.rank() * 31 + j * 17) % 13) / 3.0f;
      Context ctx = makeCtx(t, ++seq, CollectiveKind::AllReduce, DataType::Float32, op, count);
      AllReduceOptions o;
      o.data = buf.data();
      o.count = count;
      o.algo = AllReduceAlgo::RecursiveDoubling;
      allReduce(ctx, o);
      results[t.rank()].insert(results[t.rank()].end(), buf.begin(), buf.end());
    }
  });
  for (int r = 1; r < n; ++r)
    ASSERT_EQ(std::memcmp(results[r].data(), results[0].data(), results[0].size() * sizeof(float)), 0) << "rank " << r;
}

TEST_P(WorldSize, AllReduceBitwiseInt32AndPremul) {
  const int n = GetParam();
  ranktest::runInProc(n, [&](transport::Transport& t) {
    const size_t count = 101;
    uint64_t seq = 0;
    for (ReduceOp op : {ReduceOp::BAnd, ReduceOp::BOr, ReduceOp::BXor}) {
      std::vector<int32_t> buf(count);
      for (size_t j = 0; j < count; ++j) buf[j] = static_cast<int32_t>((j * 2654435761u) ^ (t.rank() * 40503u));
      Context ctx = makeCtx(t, ++seq, CollectiveKind::AllReduce, DataType::Int32, op, count);
      AllReduceOptions o;
      o.data = buf.data();
      o.count = count;
      allReduce(ctx, o);
      for (size_t j = 0; j < count; ++j) {
        int32_t want = static_cast<int32_t>(j * 2654435761u);
        for (int r = 1; r < n; ++r) {
          int32_t x = static_cast<int32_t>((j * 2654435761u) ^ (r * 40503u));
          want = op == ReduceOp::BAnd ? (want & x) : op == ReduceOp::BOr ? (want | x) : (want ^ x);
        }
        ASSERT_EQ(buf[j], want);
      }
    }
    std::vector<float> buf(count);
    for (size_t j = 0; j < count; ++j) buf[j] = input(t.rank(), j);
    Context ctx = makeCtx(t, ++seq, CollectiveKind::AllReduce, DataType::Float32, ReduceOp::PremulSum, count);
    AllReduceOptions o;
    o.data = buf.data();
    o.count = count;
    o.premulFactor = 0.5;
    allReduce(ctx, o);
    for (size_t j = 0; j < count; ++j) ASSERT_EQ(buf[j], expectedReduce(ReduceOp::Sum, n, j) * 0.5);
  });
}

TEST_P(WorldSize, BroadcastEveryRootSmallAndChained) {
  const int n = GetParam();
  ranktest::runInProc(n, [&](transport::Transport& t) {
    uint64_t seq = 0;
    for (int root = 0; root < n; ++root) {
      for (size_t count : {size_t{0}, size_t{5}, size_t{70000}}) {  // 70000 floats > flat limit: chain
        std::vector<float> buf(count, -1.0f);
        if (t.rank() == root)
          for (size_t j = 0; j < count; ++j) buf[j] = input(root, j);
        Context ctx = makeCtx(t, ++seq, CollectiveKind::Broadcast, DataType::Float32, ReduceOp::Sum, count, 4096);
        broadcast(ctx, {buf.data(), count, root});
        for (size_t j = 0; j < count; ++j) ASSERT_EQ(buf[j], input(root, j)) << "root " << root;
      }
    }
  });
}

TEST_P(WorldSize, ReduceToEveryRootLeavesOthersUntouched) {
  const int n = GetParam();
  ranktest::runInProc(n, [&](transport::Transport& t) {
    uint64_t seq = 0;
    for (int root = 0; root < n; ++root) {
      for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max, ReduceOp::Avg}) {
        // 37: small, run as an all-reduce; 8200 (32.8 KB): the ring reduce-scatter to the root.
        for (size_t count : {size_t{37}, size_t{8200}}) {
          std::vector<float> buf(count);
          for (size_t j = 0; j < count; ++j) buf[j] = input(t.rank(), j);
          Context ctx = makeCtx(t, ++seq, CollectiveKind::Reduce, DataType::Float32, op, 0, 4096);
          ReduceOptions o;
          o.data = buf.data();
          o.count = count;
          o.root = root;
          reduce(ctx, o);
          for (size_t j = 0; j < count; ++j) {
            if (t.rank() == root) {
              ASSERT_NEAR(buf[j], expectedReduce(op, n, j), 1e-5) << "count " << count;
            } else {
              ASSERT_EQ(buf[j], input(t.rank(), j)) << "count " << count;
            }
          }
        }
      }
    }
  });
}

TEST_P(WorldSize, AllGatherUnequalBlocks) {
  const int n = GetParam();
  ranktest::runInProc(n, [&](transport::Transport& t) {
    for (size_t base : {size_t{0}, size_t{1}, size_t{50}}) {
      std::vector<size_t> counts(n);
      for (int k = 0; k < n; ++k) counts[k] = base * (k % 3);  // some blocks empty, sizes differ
      std::vector<float> in(counts[t.rank()]);
      for (size_t j = 0; j < in.size(); ++j) in[j] = input(t.rank(), j);
      std::vector<std::vector<float>> outs(n);
      AllGatherOptions o;
      o.input = in.data();
      for (int k = 0; k < n; ++k) {
        outs[k].assign(counts[k], -1);
        o.outputs.push_back(outs[k].data());
      }
      o.counts = counts;
      Context ctx = makeCtx(t, base + 1, CollectiveKind::AllGather, DataType::Float32, ReduceOp::Sum, 0);
      allGather(ctx, o);
      for (int k = 0; k < n; ++k)
        for (size_t j = 0; j < counts[k]; ++j) ASSERT_EQ(outs[k][j], input(k, j));
    }
  });
}

TEST_P(WorldSize, ReduceScatterUnequalBlocksKeepsInputs) {
  const int n = GetParam();
  ranktest::runInProc(n, [&](transport::Transport& t) {
    uint64_t seq = 0;
    for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Min}) {
      std::vector<size_t> counts(n);
      for (int k = 0; k < n; ++k) counts[k] = 3 + 17 * k;
      std::vector<std::vector<float>> ins(n);
      ReduceScatterOptions o;
      size_t offset = 0;
      for (int k = 0; k < n; ++k) {
        for (size_t j = 0; j < counts[k]; ++j) ins[k].push_back(input(t.rank(), offset + j));
        o.inputs.push_back(ins[k].data());
        offset += counts[k];
      }
      auto saved = ins;
      o.counts = counts;
      std::vector<float> out(counts[t.rank()], -1);
      o.output = out.data();
      Context ctx = makeCtx(t, ++seq, CollectiveKind::ReduceScatter, DataType::Float32, op, 0);
      reduceScatter(ctx, o);
      size_t myOffset = 0;
      for (int k = 0; k < t.rank(); ++k) myOffset += counts[k];
      for (size_t j = 0; j < out.size(); ++j) ASSERT_NEAR(out[j], expectedReduce(op, n, myOffset + j), 1e-5);
      ASSERT_EQ(ins, saved);
    }
  });
}

TEST_P(WorldSize, GatherScatterEveryRoot) {
  const int n = GetParam();
  ranktest::runInProc(n, [&](transport::Transport& t) {
    uint64_t seq = 0;
    for (int root = 0; root < n; ++root) {
      const size_t count = 9;
      std::vector<float> in(count);
      for (size_t j = 0; j < count; ++j) in[j] = input(t.rank(), j);
      std::vector<std::vector<float>> outs(n, std::vector<float>(count, -1));
      GatherOptions g;
      g.input = in.data();
      g.count = count;
      g.root = root;
      if (t.rank() == root)
        for (int k = 0; k < n; ++k) {
          g.outputs.push_back(outs[k].data());
          g.counts.push_back(count);
        }
      Context gc = makeCtx(t, ++seq, CollectiveKind::Gather);
      gather(gc, g);
      if (t.rank() == root)
        for (int k = 0; k < n; ++k)
          for (size_t j = 0; j < count; ++j) ASSERT_EQ(outs[k][j], input(k, j));

      ScatterOptions s;
      std::vector<float> out(count, -1);
      s.output = out.data();
      s.count = count;
      s.root = root;
      std::vector<std::vector<float>> sins(n);
      if (t.rank() == root)
        for (int k = 0; k < n; ++k) {
          for (size_t j = 0; j < count; ++j) sins[k].push_back(input(k, j) * 10);
          s.inputs.push_back(sins[k].data());
          s.counts.push_back(count);
        }
      Context sc = makeCtx(t, ++seq, CollectiveKind::Scatter);
      scatter(sc, s);
      for (size_t j = 0; j < count; ++j) ASSERT_EQ(out[j], input(t.rank(), j) * 10);
    }
  });
}

TEST_P(WorldSize, AllToAllWithSplits) {
  const int n = GetParam();
  ranktest::runInProc(n, [&](transport::Transport& t) {
    const int r = t.rank();
    // Rank r sends (r + p) % 4 elements to rank p; values encode (src, dst, j).
    auto split = [](int src, int dst) { return static_cast<size_t>((src + dst) % 4); };
    AllToAllOptions o;
    std::vector<float> in, out;
    size_t off = 0;
    for (int p = 0; p < n; ++p) {
      o.inOffsets.push_back(off);
      o.inCounts.push_back(split(r, p));
      for (size_t j = 0; j < split(r, p); ++j) in.push_back(static_cast<float>(r * 1000 + p * 10 + j));
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
    Context ctx = makeCtx(t, 1, CollectiveKind::AllToAll);
    allToAll(ctx, o);
    for (int p = 0; p < n; ++p)
      for (size_t j = 0; j < split(p, r); ++j) ASSERT_EQ(out[o.outOffsets[p] + j], static_cast<float>(p * 1000 + r * 10 + j));
  });
}

TEST_P(WorldSize, BarrierOrdersRanks) {
  const int n = GetParam();
  std::atomic<int> arrived{0};
  ranktest::runInProc(n, [&](transport::Transport& t) {
    for (int round = 1; round <= 3; ++round) {
      arrived.fetch_add(1);
      Context ctx = makeCtx(t, round, CollectiveKind::Barrier);
      barrier(ctx);
      // Nobody leaves round k before everybody arrived in round k.
      ASSERT_GE(arrived.load(), round * n);
      Context ctx2 = makeCtx(t, 100 + round, CollectiveKind::Barrier);
      barrier(ctx2);
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Sizes, WorldSize, ::testing::Range(1, 9));

TEST(Errors, MismatchedCountsFailEveryRank) {
  const int n = 4;
  std::atomic<int> failures{0};
  auto hub = transport::InProcHub::create(n);
  std::vector<std::unique_ptr<transport::Transport>> ts;
  for (int r = 0; r < n; ++r) ts.push_back(hub->connect(r));
  ranktest::forEachRank(n, [&](int r) {
    const size_t count = r == 2 ? 20 : 10;
    std::vector<float> buf(count, 1);
    Context ctx = makeCtx(*ts[r], 1, CollectiveKind::AllReduce, DataType::Float32, ReduceOp::Sum, count);
    AllReduceOptions o;
    o.data = buf.data();
    o.count = count;
    o.algo = AllReduceAlgo::Ring;
    try {
      allReduce(ctx, o);
    } catch (const Error& e) {
      ts[r]->abort(e.what());  // what the backend does with any failure
      failures.fetch_add(1);
    }
  });
  EXPECT_EQ(failures.load(), n);
  auto why = hub->mailbox(0).abortReason();
  ASSERT_TRUE(why.has_value());
  EXPECT_NE(why->find("mismatch"), std::string::npos) << *why;
}

TEST(Errors, AbsentPeerTimesOut) {
  const int n = 3;
  auto hub = transport::InProcHub::create(n);
  auto t0 = hub->connect(0);
  auto t1 = hub->connect(1);
  std::atomic<int> timeouts{0};
  ranktest::forEachRank(2, [&](int r) {
    transport::Transport& t = r == 0 ? *t0 : *t1;
    std::vector<float> buf(100, 1);
    Context ctx = makeCtx(t, 1, CollectiveKind::AllReduce, DataType::Float32, ReduceOp::Sum, 100);
    ctx.deadline = transport::Clock::now() + std::chrono::milliseconds(300);
    AllReduceOptions o;
    o.data = buf.data();
    o.count = 100;
    auto start = transport::Clock::now();
    try {
      allReduce(ctx, o);
    } catch (const TimeoutError&) {
      timeouts.fetch_add(1);
    } catch (const CommError&) {
      timeouts.fetch_add(1);  // the other survivor's timeout aborted us first
    }
    EXPECT_LT(transport::Clock::now() - start, std::chrono::seconds(5));
  });
  EXPECT_EQ(timeouts.load(), 2);
}

TEST(Errors, AbortedCommunicatorFailsFast) {
  ranktest::runInProc(2, [&](transport::Transport& t) {
    t.abort("test abort");
    std::vector<float> buf(10, 1);
    Context ctx = makeCtx(t, 1, CollectiveKind::AllReduce, DataType::Float32, ReduceOp::Sum, 10);
    AllReduceOptions o;
    o.data = buf.data();
    o.count = 10;
    EXPECT_THROW(allReduce(ctx, o), CommError);
  });
}

// ---- many ranks: 17 to 1024 threads over the in-process transport -----------------------------------
// Every collective with odd sizes at world sizes a real job reaches. Above 16 ranks small messages
// take the latency algorithms (recursive doubling, a binomial broadcast tree, Bruck's all-gather,
// reduce-scatter as recursive doubling); up to 256 ranks large ones take the ring as well.
namespace {
void everyCollective(transport::Transport& t) {
  const int n = t.size();
  const int r = t.rank();
  uint64_t seq = 0;
  auto ctxFor = [&](CollectiveKind kind, ReduceOp op = ReduceOp::Sum, uint64_t sig = 0) {
    Context ctx = makeCtx(t, ++seq, kind, DataType::Float32, op, sig, 1 << 20);
    // Ring steps at 1,024 threads on a 2-core machine: seconds, not milliseconds.
    ctx.deadline = transport::Clock::now() + std::chrono::seconds(240);
    return ctx;
  };
  // all_reduce: 0, 1 and 7 elements (recursive doubling); at 256 ranks also 70001 (280 KB: the
  // ring, blocks of odd sizes). The ring's 2(n-1) steps at 1,024 threads on 2 cores take ~30 s;
  // all_gather and reduce_scatter below run the same ring schedule at every size.
  for (size_t count : {size_t{0}, size_t{1}, size_t{7}, size_t{70001}}) {
    if (count > 7 && n > 256) continue;
    for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max}) {
      if (count > 7 && op == ReduceOp::Max) continue;
      std::vector<float> buf(count);
      for (size_t j = 0; j < count; ++j) buf[j] = input(r, j);
      Context ctx = ctxFor(CollectiveKind::AllReduce, op, count);
      AllReduceOptions o;
      o.data = buf.data();
      o.count = count;
      allReduce(ctx, o);
      for (size_t j = 0; j < count; ++j)
        ASSERT_NEAR(buf[j], expectedReduce(op, n, j), expectedReduce(op, n, j) * 1e-6) << "count " << count;
    }
  }
  // broadcast from an odd root.
  {
    const int root = n / 3;
    std::vector<float> buf(5, -1.0f);
    if (r == root)
      for (size_t j = 0; j < 5; ++j) buf[j] = input(root, j);
    Context ctx = ctxFor(CollectiveKind::Broadcast, ReduceOp::Sum, 5);
    broadcast(ctx, {buf.data(), 5, root});
    for (size_t j = 0; j < 5; ++j) ASSERT_EQ(buf[j], input(root, j));
  }
  // reduce to the last rank.
  {
    std::vector<float> buf(3);
    for (size_t j = 0; j < 3; ++j) buf[j] = input(r, j);
    Context ctx = ctxFor(CollectiveKind::Reduce);
    ReduceOptions o;
    o.data = buf.data();
    o.count = 3;
    o.root = n - 1;
    reduce(ctx, o);
    for (size_t j = 0; j < 3; ++j) ASSERT_EQ(buf[j], r == n - 1 ? expectedReduce(ReduceOp::Sum, n, j) : input(r, j));
  }
  // all_gather of blocks of the given sizes, checked on every rank.
  auto allGatherChecked = [&](const std::vector<size_t>& counts) {
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
    Context gc = ctxFor(CollectiveKind::AllGather);
    allGather(gc, g);
    for (int k = 0; k < n; ++k)
      for (size_t j = 0; j < counts[k]; ++j) ASSERT_EQ(outs[k][j], input(k, j));
  };
  // all_gather and reduce_scatter with blocks of 0, 1 and 2 elements.
  {
    std::vector<size_t> counts(n);
    for (int k = 0; k < n; ++k) counts[k] = static_cast<size_t>(k % 3);
    allGatherChecked(counts);

    std::vector<std::vector<float>> ins(n);
    ReduceScatterOptions rs;
    size_t offset = 0;
    for (int k = 0; k < n; ++k) {
      for (size_t j = 0; j < counts[k]; ++j) ins[k].push_back(input(r, offset + j));
      rs.inputs.push_back(ins[k].data());
      offset += counts[k];
    }
    rs.counts = counts;
    std::vector<float> out(counts[r], -1);
    rs.output = out.data();
    Context rc = ctxFor(CollectiveKind::ReduceScatter);
    reduceScatter(rc, rs);
    size_t mine = 0;
    for (int k = 0; k < r; ++k) mine += counts[k];
    for (size_t j = 0; j < out.size(); ++j) ASSERT_EQ(out[j], expectedReduce(ReduceOp::Sum, n, mine + j));
  }
  // all_gather with 300+ elements per rank (over 256 KiB in all: the ring), up to 256 ranks.
  if (n <= 256) {
    std::vector<size_t> counts(n);
    for (int k = 0; k < n; ++k) counts[k] = 300 + static_cast<size_t>(k % 3);
    allGatherChecked(counts);
  }
  // gather to and scatter from rank 0, 2 elements each.
  {
    std::vector<float> in = {input(r, 0), input(r, 1)};
    std::vector<std::vector<float>> outs(n, std::vector<float>(2, -1));
    GatherOptions g;
    g.input = in.data();
    g.count = 2;
    if (r == 0)
      for (int k = 0; k < n; ++k) {
        g.outputs.push_back(outs[k].data());
        g.counts.push_back(2);
      }
    Context gc = ctxFor(CollectiveKind::Gather);
    gather(gc, g);
    if (r == 0)
      for (int k = 0; k < n; ++k) ASSERT_EQ(outs[k], (std::vector<float>{input(k, 0), input(k, 1)}));
    ScatterOptions sc;
    std::vector<float> out(2, -1);
    sc.output = out.data();
    sc.count = 2;
    if (r == 0)
      for (int k = 0; k < n; ++k) {
        sc.inputs.push_back(outs[k].data());
        sc.counts.push_back(2);
      }
    Context scc = ctxFor(CollectiveKind::Scatter);
    scatter(scc, sc);
    ASSERT_EQ(out, in);
  }
  // all_to_all: one element to each of the next two ranks, none to the others.
  {
    AllToAllOptions o;
    std::vector<float> in, out;
    for (int p = 0; p < n; ++p) {
      const size_t c = ((p - r + n) % n == 1 || (p - r + n) % n == 2) ? 1 : 0;
      o.inOffsets.push_back(in.size());
      o.inCounts.push_back(c);
      if (c) in.push_back(static_cast<float>(r * 10000 + p));
    }
    for (int p = 0; p < n; ++p) {
      const size_t c = ((r - p + n) % n == 1 || (r - p + n) % n == 2) ? 1 : 0;
      o.outOffsets.push_back(out.size());
      o.outCounts.push_back(c);
      if (c) out.push_back(-1);
    }
    o.input = in.data();
    o.output = out.data();
    Context ctx = ctxFor(CollectiveKind::AllToAll);
    allToAll(ctx, o);
    for (int p = 0; p < n; ++p)
      if (o.outCounts[p]) ASSERT_EQ(out[o.outOffsets[p]], static_cast<float>(p * 10000 + r));
  }
  Context bc = ctxFor(CollectiveKind::Barrier);
  barrier(bc);
}
}  // namespace

class ManyRanks : public ::testing::TestWithParam<int> {};

TEST_P(ManyRanks, EveryCollective) { ranktest::runInProc(GetParam(), everyCollective); }

INSTANTIATE_TEST_SUITE_P(Scale, ManyRanks, ::testing::Values(17, 33, 256, 1000, 1024));

// 64 ranks as threads over real TCP on loopback: a full mesh (4,032 connections, 8,064
// descriptors in this one process), then every collective.
TEST(TcpScale, SixtyFourRanksEveryCollective) {
  const int n = 64;
  rlimit lim{};
  getrlimit(RLIMIT_NOFILE, &lim);
  const rlim_t need = 2 * n * n + 256;
  if (lim.rlim_cur < need) {
    lim.rlim_cur = std::min(need, lim.rlim_max);
    setrlimit(RLIMIT_NOFILE, &lim);
  }
  if (lim.rlim_cur < need) GTEST_SKIP() << "RLIMIT_NOFILE hard limit " << lim.rlim_max << " < " << need;
  transport::HashStore store;
  auto ts = ranktest::makeTcpMesh(store, n);
  ranktest::forEachRank(n, [&](int r) { everyCollective(*ts[r]); });
}
