// The torch-free Communicator as a binding would use it: every collective and
// send/recv, world sizes 1..8, over the in-process transport and over the
// real bootstrap (TCP mesh + shared memory + cross-memory attach) with ranks
// as threads. Inputs are small integers, so every expected value is exact.
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "algorithms/communicator.h"
#include "algorithms/device_peers.h"
#include "core/error.h"
#include "transport/tcp/tcp_hub.h"
#include "rank_threads.h"

using namespace agentcomm;
using namespace agentcomm::algorithms;
using namespace std::chrono_literals;

namespace {

enum class Path { InProc, TcpShm };

struct Case {
  Path path;
  int n;
};

std::string caseName(const ::testing::TestParamInfo<Case>& info) {
  return std::string(info.param.path == Path::InProc ? "inproc" : "tcp_shm") + "_W" + std::to_string(info.param.n);
}

// Builds one communicator per rank (the TCP bootstrap is collective: on the
// rank threads), runs fn on every rank's thread, then destroys them.
void runComms(Path path, int n, const std::function<void(Communicator&)>& fn) {
  std::vector<std::unique_ptr<Communicator>> comms(n);
  CommunicatorOptions opts;
  opts.timeout = 30s;
  opts.groupName = "test";
  opts.chunkBytes = 4096;  // several chunks per step even for small counts
  transport::HashStore store;
  if (path == Path::InProc) {
    auto hub = transport::InProcHub::create(n);
    for (int r = 0; r < n; ++r) comms[r] = std::make_unique<Communicator>(hub->connect(r), opts);
  } else {
    ranktest::forEachRank(n, [&](int r) {
      CommunicatorOptions mine = opts;
      mine.tcpHub = transport::TcpHub::create("");  // ranks are threads here: an endpoint each
      comms[r] = std::make_unique<Communicator>(store, r, n, mine);
    });
  }
  ranktest::forEachRank(n, [&](int r) { fn(*comms[r]); });
}

Deadline soon() { return transport::Clock::now() + 30s; }

float input(int rank, size_t j) { return static_cast<float>((j * 7 + 3 * rank) % 11) + 1.0f; }

class CommWorld : public ::testing::TestWithParam<Case> {};

}  // namespace

TEST_P(CommWorld, PathNameSaysWhatTheBootstrapChose) {
  const Case c = GetParam();
  runComms(c.path, c.n, [&](Communicator& comm) {
    if (c.path == Path::InProc) {
      EXPECT_EQ(comm.pathName(), "inproc");
    } else if (c.n == 1) {
      EXPECT_EQ(comm.pathName(), "tcp");
    } else {
      EXPECT_EQ(comm.pathName().substr(0, 3), "shm") << comm.pathName();  // every rank on this host
      EXPECT_EQ(comm.localRanks().size(), static_cast<size_t>(c.n));
    }
  });
}

TEST_P(CommWorld, AllReduceEveryOp) {
  const Case c = GetParam();
  const int n = c.n;
  runComms(c.path, n, [&](Communicator& comm) {
    for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min, ReduceOp::Avg}) {
      for (size_t count : {size_t{0}, size_t{1}, size_t{7}, size_t{1000}, size_t{70000}}) {
        std::vector<double> buf(count);
        for (size_t j = 0; j < count; ++j) buf[j] = input(comm.rank(), j);
        AllReduceOptions o;
        o.data = buf.data();
        o.count = count;
        comm.allReduce(o, DataType::Float64, op, soon());
        for (size_t j = 0; j < count; ++j) {
          double want = op == ReduceOp::Min ? 1e9 : op == ReduceOp::Max ? -1e9 : 0;
          for (int r = 0; r < n; ++r) {
            const double x = input(r, j);
            want = op == ReduceOp::Min ? std::min(want, x) : op == ReduceOp::Max ? std::max(want, x) : want + x;
          }
          if (op == ReduceOp::Avg) want /= n;
          ASSERT_DOUBLE_EQ(buf[j], want) << reduceOpName(op) << " count " << count << " j " << j;
        }
      }
    }
  });
}

TEST_P(CommWorld, BroadcastReduceAndBarrier) {
  const Case c = GetParam();
  const int n = c.n;
  runComms(c.path, n, [&](Communicator& comm) {
    for (size_t count : {size_t{0}, size_t{5}, size_t{40000}}) {
      const int root = n - 1;
      std::vector<int32_t> b(count, comm.rank() == root ? 0 : -1);
      if (comm.rank() == root) std::iota(b.begin(), b.end(), 0);
      comm.broadcast({b.data(), count, root}, DataType::Int32, soon());
      for (size_t j = 0; j < count; ++j) ASSERT_EQ(b[j], static_cast<int32_t>(j));

      std::vector<int64_t> v(count);
      for (size_t j = 0; j < count; ++j) v[j] = static_cast<int64_t>(j) + comm.rank();
      ReduceOptions ro;
      ro.data = v.data();
      ro.count = count;
      ro.root = 0;
      comm.reduce(ro, DataType::Int64, ReduceOp::Sum, soon());
      for (size_t j = 0; j < count; ++j) {
        const int64_t want = comm.rank() == 0 ? static_cast<int64_t>(j) * n + n * (n - 1) / 2
                                              : static_cast<int64_t>(j) + comm.rank();  // non-roots unchanged
        ASSERT_EQ(v[j], want) << "count " << count << " j " << j;
      }
      comm.barrier(soon());
    }
  });
}

TEST_P(CommWorld, AllGatherAndReduceScatterWithUnequalBlocks) {
  const Case c = GetParam();
  const int n = c.n;
  runComms(c.path, n, [&](Communicator& comm) {
    for (size_t base : {size_t{0}, size_t{3}, size_t{20000}}) {
      auto countOf = [&](int r) { return base + static_cast<size_t>(r % 3); };
      std::vector<float> mine(countOf(comm.rank()));
      for (size_t j = 0; j < mine.size(); ++j) mine[j] = input(comm.rank(), j);
      std::vector<std::vector<float>> all(n);
      AllGatherOptions go;
      go.input = mine.data();
      for (int r = 0; r < n; ++r) {
        all[r].assign(countOf(r), -1.0f);
        go.outputs.push_back(all[r].data());
        go.counts.push_back(countOf(r));
      }
      comm.allGather(go, DataType::Float32, soon());
      for (int r = 0; r < n; ++r)
        for (size_t j = 0; j < all[r].size(); ++j) ASSERT_EQ(all[r][j], input(r, j)) << "from " << r;

      // Block i: counts[i] elements; rank r contributes input(r, j) + i.
      std::vector<std::vector<float>> blocks(n);
      ReduceScatterOptions ro;
      for (int i = 0; i < n; ++i) {
        blocks[i].resize(countOf(i));
        for (size_t j = 0; j < blocks[i].size(); ++j) blocks[i][j] = input(comm.rank(), j) + static_cast<float>(i);
        ro.inputs.push_back(blocks[i].data());
        ro.counts.push_back(countOf(i));
      }
      std::vector<float> out(countOf(comm.rank()), -1.0f);
      ro.output = out.data();
      comm.reduceScatter(ro, DataType::Float32, ReduceOp::Sum, soon());
      for (size_t j = 0; j < out.size(); ++j) {
        float want = 0;
        for (int r = 0; r < n; ++r) want += input(r, j) + static_cast<float>(comm.rank());
        ASSERT_EQ(out[j], want) << "j " << j;
      }
    }
  });
}

TEST_P(CommWorld, GatherScatterAndAllToAll) {
  const Case c = GetParam();
  const int n = c.n;
  runComms(c.path, n, [&](Communicator& comm) {
    const int me = comm.rank(), root = n / 2;
    for (size_t base : {size_t{0}, size_t{4}, size_t{30000}}) {
      auto countOf = [&](int r) { return base + static_cast<size_t>(r); };
      std::vector<uint8_t> in(countOf(me), static_cast<uint8_t>(me + 1));
      std::vector<std::vector<uint8_t>> got(n);
      GatherOptions g;
      g.input = in.data();
      g.count = in.size();
      g.root = root;
      if (me == root)
        for (int r = 0; r < n; ++r) {
          got[r].assign(countOf(r), 0);
          g.outputs.push_back(got[r].data());
          g.counts.push_back(countOf(r));
        }
      comm.gather(g, DataType::UInt8, soon());
      if (me == root)
        for (int r = 0; r < n; ++r) ASSERT_EQ(got[r], std::vector<uint8_t>(countOf(r), static_cast<uint8_t>(r + 1)));

      std::vector<uint8_t> piece(countOf(me), 0);
      ScatterOptions s;
      s.output = piece.data();
      s.count = piece.size();
      s.root = root;
      std::vector<std::vector<uint8_t>> parts(n);
      if (me == root)
        for (int r = 0; r < n; ++r) {
          parts[r].assign(countOf(r), static_cast<uint8_t>(100 + r));
          s.inputs.push_back(parts[r].data());
          s.counts.push_back(countOf(r));
        }
      comm.scatter(s, DataType::UInt8, soon());
      ASSERT_EQ(piece, std::vector<uint8_t>(countOf(me), static_cast<uint8_t>(100 + me)));

      // Rank r sends (r + p) % 3 + base elements to p, valued r * 1000 + p * 10.
      auto pair = [&](int from, int to) { return base + static_cast<size_t>((from + to) % 3); };
      AllToAllOptions a;
      std::vector<int32_t> send, recv;
      for (int p = 0; p < n; ++p) {
        a.inOffsets.push_back(send.size());
        a.inCounts.push_back(pair(me, p));
        send.insert(send.end(), pair(me, p), me * 1000 + p * 10);
      }
      size_t total = 0;
      for (int p = 0; p < n; ++p) {
        a.outOffsets.push_back(total);
        a.outCounts.push_back(pair(p, me));
        total += pair(p, me);
      }
      recv.assign(total, -1);
      a.input = send.data();
      a.output = recv.data();
      comm.allToAll(a, DataType::Int32, soon());
      for (int p = 0; p < n; ++p)
        for (size_t k = 0; k < a.outCounts[p]; ++k) ASSERT_EQ(recv[a.outOffsets[p] + k], p * 1000 + me * 10);
    }
  });
}

// A ring of sends: small ones eagerly, large ones by rendezvous where the
// bootstrap found cross-memory attach (the communicator's offer and its answer).
TEST_P(CommWorld, SendRecvRingSmallAndLarge) {
  const Case c = GetParam();
  const int n = c.n;
  if (n == 1) GTEST_SKIP() << "no peer to send to";
  runComms(c.path, n, [&](Communicator& comm) {
    const int me = comm.rank(), right = (me + 1) % n, left = (me + n - 1) % n;
    for (size_t count : {size_t{0}, size_t{100}, size_t{1} << 20}) {
      const uint32_t tag = static_cast<uint32_t>(count % 1000) + 7;
      std::vector<float> out(count), in(count, -1.0f);
      for (size_t j = 0; j < count; ++j) out[j] = input(me, j);
      std::promise<std::string> received;
      comm.postRecv(left, tag, in.data(), count * sizeof(float), DataType::Float32, count,
                    [&](const transport::RecvSlot& slot) {
                      EXPECT_EQ(slot.source(), left);
                      received.set_value(slot.failed() ? slot.error() : "");
                    });
      const size_t bytes = count * sizeof(float);
      if (comm.offersTo(right, bytes)) {
        EXPECT_EQ(c.path, Path::TcpShm);
        std::promise<std::string> answered;
        auto sendOffer = comm.offer(right, tag, out.data(), bytes, DataType::Float32, count,
                                    [&](const std::string& error) { answered.set_value(error); });
        sendOffer(soon());
        EXPECT_EQ(answered.get_future().get(), "");
      } else {
        EXPECT_TRUE(c.path == Path::InProc || bytes < (size_t{1} << 20)) << "a large send inside a host is offered";
        comm.send(right, tag, out.data(), bytes, DataType::Float32, count, soon());
      }
      ASSERT_EQ(received.get_future().get(), "");
      for (size_t j = 0; j < count; ++j) ASSERT_EQ(in[j], input(left, j)) << "count " << count << " j " << j;
    }
  });
}

// The mismatch error names both calls in the algorithms' words, whichever path
// detected it (a header on the wire, or a shared-memory round); every rank
// learns the group failed, and only the ranks that saw it call it theirs.
TEST_P(CommWorld, AMismatchFailsEveryRankNamingBothCalls) {
  const Case c = GetParam();
  const int n = c.n;
  if (n == 1) GTEST_SKIP() << "a rank cannot disagree with itself";
  runComms(c.path, n, [&](Communicator& comm) {
    const size_t count = comm.rank() == 1 ? 9 : 8;
    std::vector<float> buf(count, 1.0f);
    std::string seen;
    try {
      comm.run(1, 10000ms,
               [&](Deadline d) {
                 AllReduceOptions o;
                 o.data = buf.data();
                 o.count = count;
                 comm.allReduce(o, DataType::Float32, ReduceOp::Sum, d);
               },
               [&](const std::exception& e) { return seen = e.what(); });
      ADD_FAILURE() << "rank " << comm.rank() << ": the mismatched all_reduce returned";
    } catch (const std::exception& e) {
      EXPECT_EQ(seen, e.what());
    }
    ASSERT_TRUE(comm.failure().has_value());
    const std::string why = *comm.failure();
    EXPECT_NE(why.find("collective mismatch"), std::string::npos) << why;
    EXPECT_NE(why.find("all_reduce"), std::string::npos) << why;
    EXPECT_NE(why.find("9 elements"), std::string::npos) << why;
    EXPECT_NE(comm.failureKind(), FailureKind::None);
    // A later op is refused at once, naming the first failure.
    try {
      comm.run(2, 1000ms, [](Deadline) { ADD_FAILURE() << "ran after the failure"; },
               [](const std::exception& e) { return std::string(e.what()); });
      ADD_FAILURE() << "not refused";
    } catch (const CommError& e) {
      EXPECT_NE(std::string(e.what()).find("unusable after an earlier error"), std::string::npos) << e.what();
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Worlds, CommWorld,
                         ::testing::ValuesIn([] {
                           std::vector<Case> cases;
                           for (Path p : {Path::InProc, Path::TcpShm})
                             for (int n = 1; n <= 8; ++n) cases.push_back({p, n});
                           return cases;
                         }()),
                         caseName);

TEST(Communicator, ABadChunkSizeIsRejectedNamingTheVariable) {
  setenv("AGENTCOMM_CHUNK_BYTES", "lots", 1);
  auto hub = transport::InProcHub::create(1);
  try {
    Communicator comm(hub->connect(0), CommunicatorOptions{});
    ADD_FAILURE() << "accepted AGENTCOMM_CHUNK_BYTES=lots";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("AGENTCOMM_CHUNK_BYTES=lots"), std::string::npos) << e.what();
  }
  unsetenv("AGENTCOMM_CHUNK_BYTES");
  Communicator comm(hub->connect(0), CommunicatorOptions{});
  EXPECT_EQ(comm.chunkBytes(), size_t{1} << 20);
}

TEST(Communicator, StoreKeysOfARestartedAttemptAreItsOwn) {
  unsetenv("TORCHELASTIC_RESTART_COUNT");
  EXPECT_EQ(storeKeyPrefix(), "agentcomm/");
  setenv("TORCHELASTIC_RESTART_COUNT", "3", 1);
  EXPECT_EQ(storeKeyPrefix(), "agentcomm/attempt3/");
  setenv("TORCHELASTIC_RESTART_COUNT", "x", 1);
  EXPECT_THROW(storeKeyPrefix(), InvalidArgument);
  unsetenv("TORCHELASTIC_RESTART_COUNT");
}

// The CUDA IPC all-reduce's plan: the lowest rank of each GPU reduces one
// aligned share; the shares tile the tensor exactly once.
TEST(DevicePeers, OneLeaderPerGpuAndSharesTileTheTensor) {
  auto gpu = [](char c) {
    GpuId id{};
    id[0] = c;
    return id;
  };
  const std::vector<GpuId> gpus = {gpu('a'), gpu('b'), gpu('a'), gpu('c'), gpu('b')};
  for (size_t n : {size_t{0}, size_t{1}, size_t{5}, size_t{1000}, size_t{1001}}) {
    for (size_t es : {size_t{2}, size_t{4}, size_t{8}}) {
      std::vector<int> covered(n, 0);
      for (int r = 0; r < 5; ++r) {
        const DevicePeerPlan p = planDevicePeers(gpus, r, n, es);
        EXPECT_EQ(p.leaders, (std::vector<int>{0, 1, 3}));
        EXPECT_EQ(p.leads, r == 0 || r == 1 || r == 3);
        if (!p.leads) continue;
        if (p.begin < n && p.begin + p.count < n) EXPECT_EQ((p.begin + p.count) * es % 16, 0u) << "aligned boundary";
        for (size_t j = p.begin; j < p.begin + p.count; ++j) ++covered[j];
      }
      for (size_t j = 0; j < n; ++j) ASSERT_EQ(covered[j], 1) << "n " << n << " es " << es << " j " << j;
    }
  }
}
