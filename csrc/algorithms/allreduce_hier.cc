// Hierarchical all-reduce for groups spanning hosts with several ranks each:
//   1. all-reduce inside each host over shared memory (no scaling yet);
//   2. the host leaders (lowest rank of each host) all-reduce across hosts
//      over TCP (ring or direct by size), applying AVG / PREMUL_SUM's scale
//      with the global world size;
//   3. each leader broadcasts the result inside its host.
// Only leaders touch the network, with the whole buffer: (h-1)/h * 2S bytes
// per leader for h hosts instead of every rank sending over the wire.
#include "algorithms/algorithms.h"
#include "algorithms/topology.h"

namespace agentcomm::algorithms {

namespace {
Context subContext(const Context& ctx, const std::vector<int>& members, int memberRank,
                   transport::ShmDomain* shm) {
  Context sub = ctx;
  sub.members = &members;
  sub.memberRank = memberRank;
  sub.shm = shm;
  sub.topo = nullptr;
  return sub;
}
}  // namespace

void allReduceHierarchical(Context& ctx, const AllReduceOptions& opts) {
  const Topology& topo = *ctx.topo;
  if (topo.localRanks.size() > 1) {
    Context local = subContext(ctx, topo.localRanks, topo.localRank, topo.local);
    local.op = combiningOp(ctx.op);  // SUM for AVG/PREMUL_SUM: scaled once, by the leaders
    AllReduceOptions o = opts;
    o.algo = AllReduceAlgo::Auto;
    allReduce(local, o);
  }
  if (topo.leaderIndex >= 0) {
    Context across = subContext(ctx, topo.leaders, topo.leaderIndex, nullptr);
    AllReduceOptions o = opts;
    o.algo = tcpAllReduceAlgo(opts.count * ctx.elemSize(), static_cast<int>(topo.leaders.size()));
    o.scaleWorld = ctx.size();
    allReduce(across, o);
  }
  if (topo.localRanks.size() > 1) {
    Context local = subContext(ctx, topo.localRanks, topo.localRank, topo.local);
    broadcast(local, {opts.data, opts.count, 0});
  }
}

}  // namespace agentcomm::algorithms
