// The recovery tools of the core: the flight recorder (core/flight_recorder.h)
// and fault injection (transport/fault.h), the latter over real TCP sockets.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "algorithms/algorithms.h"
#include "core/error.h"
#include "core/flight_recorder.h"
#include "tcp_mesh.h"
#include "transport/fault.h"

using namespace agentcomm;
using namespace std::chrono_literals;

namespace {

std::string errorOf(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(FlightRecorder, RecordsStatesInOrderAndKeepsTheLastN) {
  FlightRecorder r(3, "g", 1, 4);
  std::vector<uint64_t> ids;
  for (uint64_t seq = 1; seq <= 5; ++seq) ids.push_back(r.scheduled(seq, "all_reduce", false, -1, "Float", 10 * seq));
  r.started(ids[0]);  // overwritten: ignored
  r.started(ids[3]);
  r.ended(ids[3], "ring", "");
  r.started(ids[4]);
  r.ended(ids[4], "shm_cma", "agentcomm: timed out");
  const auto es = r.entries();
  ASSERT_EQ(es.size(), 3u);
  EXPECT_EQ(es[0].seq, 3u);
  EXPECT_EQ(es[0].state, OpState::Scheduled);
  EXPECT_EQ(es[1].state, OpState::Completed);
  EXPECT_STREQ(es[1].algorithm, "ring");
  EXPECT_GE(es[1].endedNs, es[1].startedNs);
  EXPECT_EQ(es[2].state, OpState::Failed);
  EXPECT_EQ(es[2].error, "agentcomm: timed out");
  EXPECT_EQ(es[2].count, 50u);
}

TEST(FlightRecorder, CapacityZeroRecordsNothing) {
  FlightRecorder r(0, "g", 0, 2);
  EXPECT_EQ(r.scheduled(1, "barrier", false, -1, "", 0), 0u);
  r.started(0);
  r.ended(0, "", "");
  EXPECT_TRUE(r.entries().empty());
}

TEST(FlightRecorder, JsonEscapesErrorsAndListsLiveGroups) {
  auto a = makeFlightRecorder(4, "quote\"group", 0, 2);
  const uint64_t id = a->scheduled(1, "broadcast", false, 0, "Long", 7);
  a->ended(id, "tcp", "line1\nline2 \"x\" \\ \x01");
  const std::string dump = FlightRecorder::dumpAll("why \"here\"", 3);
  EXPECT_NE(dump.find("\"name\": \"quote\\\"group\""), std::string::npos) << dump;
  EXPECT_NE(dump.find("line1\\nline2 \\\"x\\\" \\\\ \\u0001"), std::string::npos) << dump;
  EXPECT_NE(dump.find("\"reason\": \"why \\\"here\\\"\""), std::string::npos);
  EXPECT_NE(dump.find("\"rank\": 3"), std::string::npos);
  a.reset();  // dead recorders leave the dump
  EXPECT_EQ(FlightRecorder::dumpAll("", 0).find("quote"), std::string::npos);
}

TEST(FaultPlan, ParsesEveryKindAndMatchesRankOpAndGroup) {
  auto plan = transport::FaultPlan::parse(
      "drop:rank=1,op=120; delay:rank=2,ms=50 ;corrupt:rank=0,op=7,group=3;stall:rank=3,op=40");
  auto at = [&](const char* g, int rank, uint64_t op) { return plan.at(g, rank, op); };
  ASSERT_EQ(at("0", 1, 120).size(), 1u);
  EXPECT_EQ(at("0", 1, 120)[0].kind, transport::Fault::Kind::Drop);
  EXPECT_TRUE(at("0", 1, 119).empty());
  EXPECT_EQ(at("0", 2, 1).size(), 1u);  // delay without op: every op
  EXPECT_EQ(at("9", 2, 77)[0].ms, 50);
  EXPECT_TRUE(at("0", 0, 7).empty());  // corrupt is limited to group "3"
  EXPECT_EQ(at("3", 0, 7)[0].kind, transport::Fault::Kind::Corrupt);
  EXPECT_EQ(at("0", 3, 40)[0].kind, transport::Fault::Kind::Stall);
  EXPECT_TRUE(transport::FaultPlan::parse("").empty());
}

TEST(FaultPlan, BadSpecsNameTheVariableAndTheProblem) {
  for (const auto& [spec, needle] : std::vector<std::pair<std::string, std::string>>{
           {"explode:rank=1,op=2", "unknown kind 'explode'"},
           {"drop:rank=1", "drop needs op=N"},
           {"delay:rank=1", "delay needs ms=M"},
           {"drop:op=3", "rank=R is required"},
           {"drop:rank=x,op=3", "rank=x is not a number"},
           {"drop:rank=1,op=0", "op counts from 1"},
           {"stall", "no ':'"},
           {"stall:rank=1,op=2,when=now", "unknown key 'when'"},
       }) {
    const std::string msg = errorOf([&] { transport::FaultPlan::parse(spec); });
    EXPECT_NE(msg.find("AGENTCOMM_FAULT=" + spec), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << spec << ": " << msg;
  }
}

TEST(FaultTcp, ACorruptedFrameIsRejectedAsAMismatchOnEveryRank) {
  transport::HashStore store;
  const int n = 3;
  auto ts = ranktest::makeTcpMesh(store, n);
  std::vector<std::string> errors(n);
  ranktest::forEachRank(n, [&](int r) {
    algorithms::Context ctx(*ts[r], 1, algorithms::CollectiveKind::AllReduce, DataType::Float32);
    std::vector<float> buf(1000, 1.0f);
    ctx.signature = buf.size();
    ctx.deadline = transport::Clock::now() + 10s;
    algorithms::AllReduceOptions o;
    o.data = buf.data();
    o.count = buf.size();
    o.algo = algorithms::AllReduceAlgo::Ring;
    if (r == 1) transport::armCorruption();
    errors[r] = errorOf([&] { algorithms::allReduce(ctx, o); });
    if (!errors[r].empty()) ts[r]->abort(errors[r]);  // as the backend does: the peers learn why
  });
  // Rank 2 receives rank 1's corrupted frame and says why; the others learn it from its abort.
  for (int r = 0; r < n; ++r) EXPECT_NE(errors[r].find("collective mismatch"), std::string::npos) << r << ": " << errors[r];
  // The receiver names its own call in the algorithms' words (the corrupt one's count is garbage).
  EXPECT_NE(errors[2].find("called all_reduce of 1000 elements of float32 (op SUM)"), std::string::npos) << errors[2];
}

TEST(FaultTcp, ACutConnectionFailsThePeersWaitsNamingTheRank) {
  transport::HashStore store;
  auto ts = ranktest::makeTcpMesh(store, 2);
  float x = 0;
  algorithms::Context ctx(*ts[0], 1, algorithms::CollectiveKind::Broadcast, DataType::Float32);
  ctx.deadline = transport::Clock::now() + 10s;
  auto h = ctx.postRecv(1, 0, &x, sizeof x);
  const auto t0 = transport::Clock::now();
  ts[1]->cut("test: cut");
  const std::string msg = errorOf([&] { ctx.wait(h); });
  EXPECT_NE(msg.find("rank 1"), std::string::npos) << msg;
  EXPECT_LT(transport::Clock::now() - t0, 5s);
}
