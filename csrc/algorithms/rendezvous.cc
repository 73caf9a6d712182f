#include "algorithms/rendezvous.h"

#include <algorithm>

#include "algorithms/ring_schedule.h"
#include "algorithms/shm_common.h"
#include "algorithms/topology.h"
#include "core/error.h"
#include "transport/shm/shm_domain.h"

namespace agentcomm::algorithms {

namespace {
constexpr uint64_t kPhaseRendezvousAck = 11;
}

uint64_t rendezvousAckTag() { return makeTag(kPhaseRendezvousAck, 0, 0); }

std::pair<transport::ShmDomain*, int> sameHost(const Context& ctx, int peer) {
  if (ctx.members != nullptr) return {nullptr, -1};
  if (ctx.shm != nullptr) return {ctx.shm->cma() ? ctx.shm : nullptr, peer};
  if (ctx.topo == nullptr || ctx.topo->local == nullptr || !ctx.topo->local->cma()) return {nullptr, -1};
  const auto& local = ctx.topo->localRanks;
  const auto it = std::find(local.begin(), local.end(), peer);
  if (it == local.end()) return {nullptr, -1};
  return {ctx.topo->local, static_cast<int>(it - local.begin())};
}

bool byRendezvous(const Context& ctx, int peer, size_t bytes) {
  return bytes > 0 && bytes >= rendezvousMinBytes() && sameHost(ctx, peer).first != nullptr;
}

RecvHandle offer(Context& ctx, int peer, uint64_t tag, const void* data, size_t bytes, Rendezvous& d, uint64_t& ack) {
  RecvHandle h = ctx.postRecv(peer, rendezvousAckTag(), &ack, sizeof ack);  // before the reader can answer
  if (bytes >= kCmaMinBytes) sameHost(ctx, peer).first->preferHugePages(data, bytes);
  d = Rendezvous{addrOf(data), bytes};
  ctx.send(peer, tag, &d, sizeof d);
  return h;
}

void take(Context& ctx, int peer, const Rendezvous& d, void* dst, size_t bytes, const char* op) {
  AC_CHECK(d.bytes == bytes, MismatchError, "agentcomm: collective mismatch in ", op, " (sequence number ", ctx.seq,
           "): rank ", ctx.rank(), " expects ", bytes, " bytes from rank ", peer, ", which has ", d.bytes);
  const auto [domain, index] = sameHost(ctx, peer);
  domain->readPeer(index, d.addr, dst, bytes);
  const uint64_t done = 1;
  ctx.send(peer, rendezvousAckTag(), &done, sizeof done);
}

}  // namespace agentcomm::algorithms
