// Hierarchical collectives for groups spanning hosts with several ranks each.
// Only the host leaders (lowest rank of each host) touch the network; inside a
// host the ranks meet over shared memory (or loopback), then each leader
// gives its host the result.
//
// all_reduce:     reduce inside the host (unscaled) -> all_reduce across leaders
//                 (AVG / PREMUL_SUM scaled there, with the global world size) ->
//                 broadcast inside the host. (h-1)/h * 2S per leader for h hosts.
// broadcast:      across the hosts' representatives (the root on its host, the
//                 leader elsewhere) -> inside each host from its representative.
// all_gather:     gather to the leader, host-major -> all_gather of whole host
//                 blocks across leaders -> broadcast inside the host -> unpack.
// reduce_scatter: pack host-major -> reduce inside the host (unscaled) ->
//                 reduce_scatter of host blocks across leaders (scaled) ->
//                 scatter inside the host.
// "Host-major": the blocks of host 0's ranks (ascending), then host 1's, ...,
// so that each host's share is one contiguous piece for the leaders' step.
#include <cstring>
#include <vector>

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

// This rank's host: its index in topo.hosts / topo.leaders.
int myHost(const Topology& topo) {
  for (size_t h = 0; h < topo.leaders.size(); ++h)
    if (topo.leaders[h] == topo.localRanks[0]) return static_cast<int>(h);
  return 0;
}

int hostOf(const Topology& topo, int rank) {
  for (size_t h = 0; h < topo.hosts.size(); ++h)
    for (int r : topo.hosts[h])
      if (r == rank) return static_cast<int>(h);
  return 0;
}

// Where each rank's block (counts[rank] elements) lies in the host-major layout.
struct HostMajor {
  std::vector<size_t> offset;      // per global rank, elements
  std::vector<size_t> hostOffset;  // per host, elements; one more entry: the total
  size_t count(int host) const { return hostOffset[host + 1] - hostOffset[host]; }
  size_t total() const { return hostOffset.back(); }
};

HostMajor hostMajor(const Topology& topo, const std::vector<size_t>& counts) {
  HostMajor m;
  m.offset.assign(counts.size(), 0);
  size_t at = 0;
  for (const std::vector<int>& host : topo.hosts) {
    m.hostOffset.push_back(at);
    for (int r : host) {
      m.offset[static_cast<size_t>(r)] = at;
      at += counts[static_cast<size_t>(r)];
    }
  }
  m.hostOffset.push_back(at);
  return m;
}

// What all_gather and reduce_scatter share: the blocks' host-major layout and
// a buffer for all of them.
struct HostMajorBuffer {
  HostMajorBuffer(const Context& ctx, const std::vector<size_t>& counts)
      : topo(*ctx.topo), es(ctx.elemSize()), layout(hostMajor(topo, counts)), host(myHost(topo)),
        bytes(layout.total() * es) {}
  uint8_t* at(size_t elements) { return bytes.data() + elements * es; }
  const Topology& topo;
  const size_t es;
  const HostMajor layout;
  const int host;  // this rank's
  std::vector<uint8_t> bytes;
};
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

void broadcastHierarchical(Context& ctx, const BroadcastOptions& opts) {
  const Topology& topo = *ctx.topo;
  if (opts.count == 0) return;
  std::vector<int> reps = topo.leaders;  // the root stands for its host
  const int rootHost = hostOf(topo, opts.root);
  reps[static_cast<size_t>(rootHost)] = opts.root;
  const int host = myHost(topo);
  if (reps[static_cast<size_t>(host)] == ctx.rank()) {
    Context across = subContext(ctx, reps, host, nullptr);
    broadcast(across, {opts.data, opts.count, rootHost});
  }
  if (topo.localRanks.size() > 1) {
    Context local = subContext(ctx, topo.localRanks, topo.localRank, topo.local);
    int from = 0;
    while (topo.localRanks[static_cast<size_t>(from)] != reps[static_cast<size_t>(host)]) ++from;
    broadcast(local, {opts.data, opts.count, from});
  }
}

void allGatherHierarchical(Context& ctx, const AllGatherOptions& opts) {
  HostMajorBuffer b(ctx, opts.counts);
  const Topology& topo = b.topo;
  const HostMajor& m = b.layout;
  const size_t mine = opts.counts[static_cast<size_t>(ctx.rank())];
  if (m.total() == 0) return;
  if (topo.localRanks.size() > 1) {
    Context local = subContext(ctx, topo.localRanks, topo.localRank, topo.local);
    GatherOptions g;
    g.input = opts.input;
    g.count = mine;
    if (topo.localRank == 0) {
      for (int r : topo.localRanks) {
        g.outputs.push_back(b.at(m.offset[static_cast<size_t>(r)]));
        g.counts.push_back(opts.counts[static_cast<size_t>(r)]);
      }
    }
    gather(local, g);
  } else if (mine > 0) {
    std::memcpy(b.at(m.offset[static_cast<size_t>(ctx.rank())]), opts.input, mine * b.es);
  }
  if (topo.leaderIndex >= 0) {
    Context across = subContext(ctx, topo.leaders, topo.leaderIndex, nullptr);
    AllGatherOptions a;
    a.input = b.at(m.hostOffset[static_cast<size_t>(b.host)]);
    for (size_t h = 0; h < topo.hosts.size(); ++h) {
      a.outputs.push_back(b.at(m.hostOffset[h]));
      a.counts.push_back(m.count(static_cast<int>(h)));
    }
    allGather(across, a);
  }
  if (topo.localRanks.size() > 1) {
    Context local = subContext(ctx, topo.localRanks, topo.localRank, topo.local);
    broadcast(local, {b.at(0), m.total(), 0});
  }
  for (size_t r = 0; r < opts.counts.size(); ++r)
    if (opts.counts[r] > 0) std::memcpy(opts.outputs[r], b.at(m.offset[r]), opts.counts[r] * b.es);
}

void reduceScatterHierarchical(Context& ctx, const ReduceScatterOptions& opts) {
  HostMajorBuffer b(ctx, opts.counts);
  const Topology& topo = b.topo;
  const HostMajor& m = b.layout;
  const size_t es = b.es;
  const size_t mineCount = opts.counts[static_cast<size_t>(ctx.rank())];
  if (m.total() == 0) return;
  for (size_t r = 0; r < opts.counts.size(); ++r)
    if (opts.counts[r] > 0) std::memcpy(b.at(m.offset[r]), opts.inputs[r], opts.counts[r] * es);
  if (topo.localRanks.size() > 1) {
    Context local = subContext(ctx, topo.localRanks, topo.localRank, topo.local);
    local.op = combiningOp(ctx.op);  // SUM for AVG/PREMUL_SUM: scaled once, by the leaders
    // An all-reduce rather than a reduce to the leader: over shared memory it
    // is the faster of the two at every size (the reduce takes loopback TCP
    // between 1 and 4 MiB), and only the leader's copy is read.
    AllReduceOptions o;
    o.data = b.at(0);
    o.count = m.total();
    allReduce(local, o);
  }
  // This host's share, reduced over every host (the leader's; the others' stays unused).
  std::vector<uint8_t> mine(topo.leaderIndex >= 0 ? m.count(b.host) * es : 0);
  if (topo.leaderIndex >= 0) {
    Context across = subContext(ctx, topo.leaders, topo.leaderIndex, nullptr);
    ReduceScatterOptions o;
    for (size_t h = 0; h < topo.hosts.size(); ++h) {
      o.inputs.push_back(b.at(m.hostOffset[h]));
      o.counts.push_back(m.count(static_cast<int>(h)));
    }
    o.output = mine.data();
    o.premulFactor = opts.premulFactor;
    o.scaleWorld = ctx.size();
    reduceScatter(across, o);
  }
  const size_t base = m.hostOffset[static_cast<size_t>(b.host)];
  if (topo.localRanks.size() > 1) {
    Context local = subContext(ctx, topo.localRanks, topo.localRank, topo.local);
    ScatterOptions sc;
    sc.output = opts.output;
    sc.count = mineCount;
    if (topo.localRank == 0) {
      for (int r : topo.localRanks) {
        sc.inputs.push_back(mine.data() + (m.offset[static_cast<size_t>(r)] - base) * es);
        sc.counts.push_back(opts.counts[static_cast<size_t>(r)]);
      }
    }
    scatter(local, sc);
  } else if (mineCount > 0) {
    std::memcpy(opts.output, mine.data(), mineCount * es);
  }
}

}  // namespace agentcomm::algorithms
