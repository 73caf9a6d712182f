// The TCP transport with real sockets on loopback; ranks are threads.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <iostream>
#include <sstream>
#include <thread>

#include "algorithms/algorithms.h"
#include "core/error.h"
#include "rank_threads.h"
#include "tcp_mesh.h"
#include "transport/tcp/tcp_transport.h"

using namespace agentcomm;
using namespace agentcomm::algorithms;
using namespace std::chrono_literals;

namespace {

void ringAllReduce(transport::Transport& t, uint64_t seq, std::vector<float>& buf, size_t chunk = 1 << 16) {
  Context ctx(t, seq, algorithms::CollectiveKind::AllReduce, DataType::Float32);
  ctx.signature = buf.size();
  ctx.chunkBytes = chunk;
  ctx.deadline = transport::Clock::now() + 20s;
  AllReduceOptions o;
  o.data = buf.data();
  o.count = buf.size();
  o.algo = AllReduceAlgo::Ring;
  allReduce(ctx, o);
}

}  // namespace

TEST(Tcp, MeshAllReduceLargeAndSmall) {
  for (int n : {1, 2, 4}) {
    transport::HashStore store;
    auto ts = ranktest::makeTcpMesh(store, n);
    ranktest::forEachRank(n, [&](int r) {
      for (size_t count : {size_t{0}, size_t{3}, size_t{1} << 20}) {
        std::vector<float> buf(count);
        for (size_t j = 0; j < count; ++j) buf[j] = static_cast<float>(j % 100 + r);
        ringAllReduce(*ts[r], count + 1, buf);
        for (size_t j = 0; j < count; ++j) ASSERT_EQ(buf[j], n * static_cast<float>(j % 100) + n * (n - 1) / 2);
      }
    });
  }
}

// Rank 0's listening address on loopback, once it has published it.
sockaddr_in rank0Address(transport::Store& store) {
  std::istringstream in(transport::fromBytes(store.get("agentcomm/addr/0", 10s)));
  std::string host, addr;
  int port = 0;
  in >> host >> addr >> port;
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
  return to;
}

TEST(Tcp, StrayConnectionsAreDroppedAndSetupGoesOn) {
  transport::HashStore store;
  const int n = 3;
  std::vector<std::unique_ptr<transport::TcpTransport>> ts(n);
  transport::TcpOptions opts;
  opts.timeout = 20s;
  std::thread rank0([&] { ts[0] = std::make_unique<transport::TcpTransport>(store, 0, n, ranktest::ownEndpoint(opts)); });
  // Poke rank 0's published address before the real peers arrive.
  sockaddr_in to = rank0Address(store);
  int garbage = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_EQ(connect(garbage, reinterpret_cast<sockaddr*>(&to), sizeof(to)), 0);
  const char junk[64] = "GET / HTTP/1.0\r\n\r\n this is not a hello frame at all........";
  ASSERT_EQ(write(garbage, junk, sizeof(junk)), static_cast<ssize_t>(sizeof(junk)));
  int silent = socket(AF_INET, SOCK_STREAM, 0);  // connects and says nothing
  ASSERT_EQ(connect(silent, reinterpret_cast<sockaddr*>(&to), sizeof(to)), 0);
  std::thread others([&] {
    ranktest::forEachRank(2, [&](int i) { ts[i + 1] = std::make_unique<transport::TcpTransport>(store, i + 1, n, ranktest::ownEndpoint(opts)); });
  });
  rank0.join();
  others.join();
  close(garbage);
  close(silent);
  ranktest::forEachRank(n, [&](int r) {
    std::vector<float> buf(1000, 1.0f);
    ringAllReduce(*ts[r], 1, buf);
    for (float v : buf) ASSERT_EQ(v, 3.0f);
  });
}

// Handshakes run side by side: 50 connections that never say hello (a port
// scanner, a half-dead peer) cost the real peers nothing. One at a time, each
// would hold setup for its 2 s hello timeout: 100 s, far past this 8 s limit.
TEST(Tcp, SilentConnectionsDoNotHoldUpSetup) {
  transport::HashStore store;
  const int n = 3, silentCount = 50;
  std::vector<std::unique_ptr<transport::TcpTransport>> ts(n);
  transport::TcpOptions opts;
  opts.timeout = 8s;
  std::string rank0Error;
  std::thread rank0([&] {
    try {
      ts[0] = std::make_unique<transport::TcpTransport>(store, 0, n, ranktest::ownEndpoint(opts));
    } catch (const std::exception& e) {
      rank0Error = e.what();
    }
  });
  sockaddr_in to = rank0Address(store);
  std::vector<int> silent;
  for (int i = 0; i < silentCount; ++i) {
    silent.push_back(socket(AF_INET, SOCK_STREAM, 0));
    ASSERT_EQ(connect(silent.back(), reinterpret_cast<sockaddr*>(&to), sizeof(to)), 0) << i;
  }
  const auto start = std::chrono::steady_clock::now();  // the real peers arrive now
  std::string othersError;
  std::thread others([&] {
    try {
      ranktest::forEachRank(2, [&](int i) { ts[i + 1] = std::make_unique<transport::TcpTransport>(store, i + 1, n, ranktest::ownEndpoint(opts)); });
    } catch (const std::exception& e) {
      othersError = e.what();
    }
  });
  rank0.join();
  others.join();
  ASSERT_EQ(othersError, "");
  ASSERT_EQ(rank0Error, "") << "setup failed with silent connections on rank 0's port";
  const auto setupMs = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  std::cout << "setup with " << silentCount << " silent connections, from the peers' arrival: " << setupMs.count() << " ms\n";
  for (int fd : silent) close(fd);
  ranktest::forEachRank(n, [&](int r) {
    std::vector<float> buf(1000, 1.0f);
    ringAllReduce(*ts[r], 1, buf);
    for (float v : buf) ASSERT_EQ(v, 3.0f);
  });
}

TEST(Tcp, DeadPeerFailsSurvivorsPromptly) {
  transport::HashStore store;
  const int n = 3;
  auto ts = ranktest::makeTcpMesh(store, n);
  auto start = std::chrono::steady_clock::now();
  std::atomic<int> failed{0};
  ranktest::forEachRank(n, [&](int r) {
    if (r == 2) {
      std::this_thread::sleep_for(200ms);
      ts[2].reset();  // the process "dies": its sockets close
      return;
    }
    std::vector<float> buf(1 << 16, 1.0f);
    try {
      ringAllReduce(*ts[r], 1, buf);
    } catch (const CommError& e) {
      EXPECT_NE(std::string(e.what()).find("rank"), std::string::npos);
      failed.fetch_add(1);
    }
  });
  EXPECT_EQ(failed.load(), 2);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);  // long before the 20 s deadline
}

TEST(Tcp, MismatchReachesEveryRankThroughAbortFrames) {
  transport::HashStore store;
  const int n = 4;
  auto ts = ranktest::makeTcpMesh(store, n);
  std::atomic<int> failed{0};
  ranktest::forEachRank(n, [&](int r) {
    std::vector<float> buf(r == 1 ? 2000 : 1000, 1.0f);
    try {
      ringAllReduce(*ts[r], 1, buf, 256);
    } catch (const Error& e) {
      ts[r]->abort(e.what());
      failed.fetch_add(1);
    }
  });
  EXPECT_EQ(failed.load(), n);
  for (int r = 0; r < n; ++r) {
    auto why = ts[r]->mailbox().abortReason();
    ASSERT_TRUE(why.has_value());
    EXPECT_NE(why->find("mismatch"), std::string::npos) << "rank " << r << ": " << *why;
  }
}

TEST(Tcp, NoHigherRankTimesOutSetup) {
  transport::HashStore store;
  transport::TcpOptions opts;
  opts.timeout = 500ms;
  auto start = std::chrono::steady_clock::now();
  EXPECT_THROW(transport::TcpTransport(store, 0, 2, opts), TimeoutError);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
}

// ---------------------------------------------------------------- connections on demand

namespace {

// n ranks as threads; options(r, o) sets rank r's options (timeout 20 s).
template <typename Fn>
std::vector<std::unique_ptr<transport::TcpTransport>> makeMeshWith(transport::Store& store, int n, const Fn& options) {
  std::vector<std::unique_ptr<transport::TcpTransport>> ts(n);
  ranktest::forEachRank(n, [&](int r) {
    transport::TcpOptions opts;
    opts.timeout = 20s;
    opts.hub = transport::TcpHub::create("");
    options(r, opts);
    ts[r] = std::make_unique<transport::TcpTransport>(store, r, n, opts);
  });
  return ts;
}

std::vector<std::unique_ptr<transport::TcpTransport>> makeLazyMesh(transport::Store& store, int n) {
  return makeMeshWith(store, n, [](int, transport::TcpOptions& o) {
    o.eager = false;
    o.localAtSetup = false;  // every rank here is on this host: on demand for all of them
  });
}

void allReduceWith(transport::Transport& t, uint64_t seq, std::vector<float>& buf, AllReduceAlgo algo) {
  Context ctx(t, seq, algorithms::CollectiveKind::AllReduce, DataType::Float32);
  ctx.signature = buf.size();
  ctx.chunkBytes = 1 << 16;
  ctx.deadline = transport::Clock::now() + 20s;
  AllReduceOptions o;
  o.data = buf.data();
  o.count = buf.size();
  o.algo = algo;
  allReduce(ctx, o);
}

}  // namespace

// A ring touches its two neighbours only: rank r dials r+1 when it first sends
// and is dialed by r-1. Nothing is connected before the first send.
TEST(TcpLazy, ARingConnectsOnlyItsNeighbours) {
  for (int n : {3, 5, 8}) {
    transport::HashStore store;
    auto ts = makeLazyMesh(store, n);
    for (auto& t : ts) {
      ASSERT_FALSE(t->eager());
      ASSERT_EQ(t->connectionCount(), 0u);
    }
    ranktest::forEachRank(n, [&](int r) {
      for (size_t count : {size_t{3}, size_t{1} << 18}) {
        std::vector<float> buf(count);
        for (size_t j = 0; j < count; ++j) buf[j] = static_cast<float>(j % 100 + r);
        allReduceWith(*ts[r], count, buf, AllReduceAlgo::Ring);
        for (size_t j = 0; j < count; ++j) ASSERT_EQ(buf[j], n * static_cast<float>(j % 100) + n * (n - 1) / 2);
      }
    });
    for (int r = 0; r < n; ++r) EXPECT_EQ(ts[r]->connectionCount(), 2u) << "rank " << r << " of " << n;
  }
}

// Recursive doubling and direct exchange in both directions at once: two
// ranks may dial each other at the same moment (each then keeps sending on
// its own first connection); hundreds of ops in a row stay in order.
TEST(TcpLazy, PairsDialingEachOtherAtOnceStayCorrect) {
  for (int n : {2, 4, 6}) {
    transport::HashStore store;
    auto ts = makeLazyMesh(store, n);
    ranktest::forEachRank(n, [&](int r) {
      for (uint64_t i = 1; i <= 200; ++i) {
        std::vector<float> buf(1 + i % 7, static_cast<float>(r + i));
        allReduceWith(*ts[r], i, buf, i % 2 ? AllReduceAlgo::RecursiveDoubling : AllReduceAlgo::Direct);
        for (float v : buf) ASSERT_EQ(v, static_cast<float>(n * i + n * (n - 1) / 2)) << "op " << i;
      }
    });
    // Direct touches every peer: at most 2 connections per pair, at least 1.
    for (int r = 0; r < n; ++r) {
      EXPECT_GE(ts[r]->connectionCount(), static_cast<size_t>(n - 1));
      EXPECT_LE(ts[r]->connectionCount(), static_cast<size_t>(2 * (n - 1)));
    }
  }
}

// Rank 0 decides for the group: a rank asking for the full mesh follows it.
TEST(TcpLazy, RankZeroDecidesTheMode) {
  transport::HashStore store;
  const int n = 3;
  auto ts = makeMeshWith(store, n, [](int r, transport::TcpOptions& o) { o.eager = r != 0; });  // rank 0 lazy
  for (auto& t : ts) EXPECT_FALSE(t->eager());
  ranktest::forEachRank(n, [&](int r) {
    std::vector<float> buf(1000, 1.0f);
    allReduceWith(*ts[r], 1, buf, AllReduceAlgo::Ring);
    for (float v : buf) ASSERT_EQ(v, 3.0f);
  });
}

// A peer that left: the first send to it fails at once (its port refuses),
// naming it, instead of waiting for the deadline.
TEST(TcpLazy, DialingAPeerThatLeftFailsNamingIt) {
  transport::HashStore store;
  const int n = 2;
  auto ts = makeLazyMesh(store, n);
  ts[1].reset();
  const auto start = std::chrono::steady_clock::now();
  transport::Header h;
  h.kind = static_cast<uint8_t>(transport::MsgKind::Collective);
  try {
    ts[0]->send(1, h, nullptr, transport::Clock::now() + 20s);
    FAIL() << "sent to a rank that left";
  } catch (const CommError& e) {
    EXPECT_NE(std::string(e.what()).find("cannot connect to rank 1"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
}

// Stray and silent connections on a lazy rank's port (kept open for the
// job's life) are dropped; real peers still connect.
TEST(TcpLazy, StrayConnectionsOnTheOpenPortAreDropped) {
  transport::HashStore store;
  const int n = 2;
  auto ts = makeLazyMesh(store, n);
  sockaddr_in to = rank0Address(store);
  int garbage = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_EQ(connect(garbage, reinterpret_cast<sockaddr*>(&to), sizeof(to)), 0);
  const char junk[64] = "GET / HTTP/1.0\r\n\r\n this is not a hello frame at all........";
  ASSERT_EQ(write(garbage, junk, sizeof(junk)), static_cast<ssize_t>(sizeof(junk)));
  int silent = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_EQ(connect(silent, reinterpret_cast<sockaddr*>(&to), sizeof(to)), 0);
  ranktest::forEachRank(n, [&](int r) {
    std::vector<float> buf(1000, 1.0f);
    allReduceWith(*ts[r], 1, buf, AllReduceAlgo::Ring);
    for (float v : buf) ASSERT_EQ(v, 2.0f);
  });
  EXPECT_LE(ts[0]->connectionCount(), 2u);  // the strays never became connections
  close(garbage);
  close(silent);
}

// The default: the ranks of one host connect at setup (their connections are
// the shared-memory paths' liveness and abort channel), on demand otherwise.
TEST(TcpLazy, RanksOfOneHostConnectAtSetup) {
  transport::HashStore store;
  const int n = 4;
  auto ts = makeMeshWith(store, n, [](int, transport::TcpOptions& o) { o.eager = false; });
  for (auto& t : ts) {
    EXPECT_FALSE(t->eager());
    EXPECT_EQ(t->connectionCount(), static_cast<size_t>(n - 1));
  }
}

// ---------------------------------------------------------------- groups sharing links

namespace {

// Processes (an endpoint each) and groups on them: group g's rank i is
// process members[g][i]; each group bootstraps under its own store prefix.
struct Job {
  std::vector<std::shared_ptr<transport::TcpHub>> hubs;
  std::vector<std::vector<int>> members;
  std::vector<std::vector<std::unique_ptr<transport::TcpTransport>>> groups;  // [group][rank]
};

Job makeJob(transport::Store& store, int processes, std::vector<std::vector<int>> members, bool eager) {
  Job job;
  for (int p = 0; p < processes; ++p) job.hubs.push_back(transport::TcpHub::create(""));
  job.members = std::move(members);
  job.groups.resize(job.members.size());
  for (size_t g = 0; g < job.members.size(); ++g) {
    const int n = static_cast<int>(job.members[g].size());
    job.groups[g].resize(static_cast<size_t>(n));
    ranktest::forEachRank(n, [&](int r) {
      transport::TcpOptions o;
      o.timeout = 20s;
      o.eager = eager;
      o.hub = job.hubs[static_cast<size_t>(job.members[g][static_cast<size_t>(r)])];
      o.keyPrefix = "group" + std::to_string(g) + "/";
      job.groups[g][static_cast<size_t>(r)] = std::make_unique<transport::TcpTransport>(store, r, n, o);
    });
  }
  return job;
}

// Every rank of every group at once (a thread each), `ops` all_reduces per
// group alternating ring and recursive doubling, small and large; returns the
// number of wrong values.
int allGroupsAtOnce(Job& job, uint64_t firstSeq, int ops, const std::vector<size_t>& which) {
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (size_t g : which) {
    const int n = static_cast<int>(job.members[g].size());
    for (int r = 0; r < n; ++r)
      threads.emplace_back([&, g, r, n] {
        for (uint64_t i = firstSeq; i < firstSeq + static_cast<uint64_t>(ops); ++i) {
          const size_t count = i % 2 ? 5 + g : (size_t{1} << 16) + g;
          std::vector<float> buf(count, static_cast<float>(r + i + g));
          allReduceWith(*job.groups[g][static_cast<size_t>(r)], i, buf,
                        i % 3 ? AllReduceAlgo::Ring : AllReduceAlgo::RecursiveDoubling);
          const float expected = static_cast<float>(n * (i + g) + n * (n - 1) / 2);
          for (float v : buf)
            if (v != expected) wrong.fetch_add(1);
        }
      });
  }
  for (auto& t : threads) t.join();
  return wrong.load();
}

}  // namespace

// A 2-D mesh job's three groups (the world, a copy of it, the even ranks) on
// 4 processes: one link per pair of processes, not one per group, whether
// linked at setup or on demand; ops of all three groups at once, interleaved
// on the shared links, stay correct.
TEST(TcpShared, GroupsShareOneLinkPerPairOfProcesses) {
  for (bool eager : {true, false}) {
    transport::HashStore store;
    const int n = 4;
    Job job = makeJob(store, n, {{0, 1, 2, 3}, {0, 1, 2, 3}, {0, 2}}, eager);
    EXPECT_EQ(allGroupsAtOnce(job, 1, 40, {0, 1, 2}), 0) << (eager ? "eager" : "on demand");
    for (int p = 0; p < n; ++p)
      EXPECT_EQ(job.hubs[static_cast<size_t>(p)]->linkCount(), static_cast<size_t>(n - 1))
          << "process " << p << (eager ? " (eager)" : " (on demand)");
  }
}

// On demand across "hosts" (localAtSetup off): a group reuses the link
// another group made, and two groups dialing the same pair at once still
// end with at most two links per pair.
TEST(TcpShared, OnDemandGroupsReuseEachOthersLinks) {
  transport::HashStore store;
  const int n = 5;
  Job job;
  for (int p = 0; p < n; ++p) job.hubs.push_back(transport::TcpHub::create(""));
  job.members = {{0, 1, 2, 3, 4}, {4, 3, 2, 1, 0}};  // the second group numbers the processes backwards
  job.groups.resize(2);
  for (size_t g = 0; g < 2; ++g) {
    job.groups[g].resize(n);
    ranktest::forEachRank(n, [&](int r) {
      transport::TcpOptions o;
      o.timeout = 20s;
      o.eager = false;
      o.localAtSetup = false;
      o.hub = job.hubs[static_cast<size_t>(job.members[g][static_cast<size_t>(r)])];
      o.keyPrefix = "group" + std::to_string(g) + "/";
      job.groups[g][static_cast<size_t>(r)] = std::make_unique<transport::TcpTransport>(store, r, n, o);
    });
  }
  for (auto& hub : job.hubs) EXPECT_EQ(hub->linkCount(), 0u);
  // A ring in group 0 links each process to its two neighbours; group 1's
  // ring (the same neighbours, backwards) needs no new link.
  EXPECT_EQ(allGroupsAtOnce(job, 4, 1, {0}), 0);  // seq 4: a ring
  for (auto& hub : job.hubs) EXPECT_EQ(hub->linkCount(), 2u);
  EXPECT_EQ(allGroupsAtOnce(job, 5, 1, {1}), 0);  // a ring too
  for (auto& hub : job.hubs) EXPECT_EQ(hub->linkCount(), 2u);
  // Both groups at once, every algorithm: still correct, at most 2 links per pair.
  EXPECT_EQ(allGroupsAtOnce(job, 10, 30, {0, 1}), 0);
  for (auto& hub : job.hubs) EXPECT_LE(hub->linkCount(), static_cast<size_t>(2 * (n - 1)));
}

// An abort, or the end, of one group is that group's: the others go on over
// the same links. A broken link fails every group's ranks on it.
TEST(TcpShared, OneGroupsAbortOrEndLeavesTheOthers) {
  transport::HashStore store;
  const int n = 3;
  Job job = makeJob(store, n, {{0, 1, 2}, {0, 1, 2}, {0, 1, 2}}, false);
  job.groups[0][1]->abort("agentcomm: test abort of group 0");
  for (int r = 0; r < n; ++r) {
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (!job.groups[0][static_cast<size_t>(r)]->mailbox().abortReason() && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(5ms);
    auto why = job.groups[0][static_cast<size_t>(r)]->mailbox().abortReason();
    ASSERT_TRUE(why.has_value()) << "rank " << r << " of group 0 never heard of the abort";
    EXPECT_NE(why->find("test abort of group 0"), std::string::npos) << *why;
    EXPECT_FALSE(job.groups[1][static_cast<size_t>(r)]->mailbox().abortReason().has_value());
  }
  EXPECT_EQ(allGroupsAtOnce(job, 1, 10, {1, 2}), 0);
  for (auto& t : job.groups[1]) t.reset();  // group 1 destroyed everywhere
  EXPECT_EQ(allGroupsAtOnce(job, 11, 10, {2}), 0);
  for (auto& hub : job.hubs) EXPECT_EQ(hub->linkCount(), static_cast<size_t>(n - 1));
  // Process 2's links break (a crash, or the network): group 2's ranks 0
  // and 1 fail promptly, naming rank 2, instead of waiting for the deadline.
  job.hubs[2]->cutLinksTo(job.hubs[0]->id());
  job.hubs[2]->cutLinksTo(job.hubs[1]->id());
  const auto start = std::chrono::steady_clock::now();
  ranktest::forEachRank(2, [&](int r) {
    std::vector<float> buf(1000, 1.0f);
    try {
      allReduceWith(*job.groups[2][static_cast<size_t>(r)], 100, buf, AllReduceAlgo::Direct);
      ADD_FAILURE() << "rank " << r << " reduced with a rank it lost";
    } catch (const CommError& e) {
      EXPECT_NE(std::string(e.what()).find("rank 2"), std::string::npos) << e.what();
    }
  });
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
}

// Two ranks of one group on one endpoint (one process) is a usage error,
// named, not a hang.
TEST(TcpShared, TwoRanksOfAGroupOnOneEndpointAreRefused) {
  transport::HashStore store;
  auto hub = transport::TcpHub::create("");
  std::vector<std::string> errors(2);
  ranktest::forEachRank(2, [&](int r) {
    transport::TcpOptions o;
    o.timeout = 5s;
    o.hub = hub;
    try {
      transport::TcpTransport t(store, r, 2, o);
    } catch (const InvalidArgument& e) {
      errors[static_cast<size_t>(r)] = e.what();
    }
  });
  for (const std::string& e : errors) EXPECT_NE(e.find("this very process"), std::string::npos) << e;
}
