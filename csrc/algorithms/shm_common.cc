#include "algorithms/shm_common.h"

#include <strings.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "algorithms/topology.h"
#include "core/error.h"
#include "kernels/kernels.h"
#include "transport/fault.h"
#include "core/env.h"

namespace agentcomm::algorithms {

using transport::takeCorruption;

transport::ShmOpDesc shmDesc(const Context& ctx, ShmAlgo algo, uint64_t signature, int root) {
  transport::ShmOpDesc d;
  d.seq = ctx.seq;
  d.signature = takeCorruption() ? signature ^ 0x5a5a5a5aULL : signature;  // a corrupt fault (transport/fault.h)
  d.algo = static_cast<uint32_t>(algo);
  d.collective = static_cast<uint8_t>(ctx.collective);
  d.dtype = static_cast<uint8_t>(ctx.dtype);
  d.op = static_cast<uint8_t>(ctx.op);
  d.root = static_cast<uint8_t>(root);
  return d;
}

std::string forcedAlgo(const char* collective) {
  const char* env = envText("AGENTCOMM_ALGO");
  if (env == nullptr || *env == 0) return "";
  std::string spec(env);
  for (auto& c : spec) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (spec.find(':') == std::string::npos) return spec == "auto" ? "" : spec;
  size_t pos = 0;
  while (pos <= spec.size()) {
    size_t end = spec.find(',', pos);
    if (end == std::string::npos) end = spec.size();
    const std::string item = spec.substr(pos, end - pos);
    const size_t colon = item.find(':');
    AC_CHECK(colon != std::string::npos, InvalidArgument, "AGENTCOMM_ALGO=", env,
             ": expected one algorithm name or collective:algorithm pairs separated by commas");
    if (item.substr(0, colon) == collective) {
      const std::string name = item.substr(colon + 1);
      return name == "auto" ? "" : name;
    }
    pos = end + 1;
  }
  return "";
}

size_t rendezvousMinBytes() {
  static const size_t v = envSize("AGENTCOMM_RENDEZVOUS_BYTES", size_t{1} << 20);
  return v;
}

namespace {
Path pathFor(const Context& ctx, const char* collective, size_t bytes) {
  if (ctx.size() == 1) return Path::Tcp;  // nothing to exchange
  const std::string forced = forcedAlgo(collective);
  const transport::ShmDomain* shm = ctx.shm;
  if (forced.empty()) {
    if (shm == nullptr) return Path::Tcp;
    return shm->cma() && bytes >= kCmaMinBytes ? Path::ShmCma : Path::ShmStaged;
  }
  if (forced == "tcp" || forced == "ring" || forced == "direct" || forced == "recursive_doubling") return Path::Tcp;
  const bool staged = forced == "shm_staged" || forced == "shm_flat";
  AC_CHECK(staged || forced == "shm_cma", InvalidArgument, "AGENTCOMM_ALGO: '", forced, "' is not an algorithm of ",
           collective, " (auto, tcp, ring, direct, recursive_doubling, shm_flat, shm_staged, shm_cma)");
  AC_CHECK(shm != nullptr, InvalidArgument, "AGENTCOMM_ALGO=", forced, " needs every rank of the group on one host",
           " with shared memory (AGENTCOMM_SHM not 0)");
  AC_CHECK(staged || shm->cma(), InvalidArgument, "AGENTCOMM_ALGO=shm_cma: cross-memory attach is unavailable: ",
           shm->cmaUnavailableReason());
  return staged ? Path::ShmStaged : Path::ShmCma;
}
}  // namespace

bool runsHierarchical(const Context& ctx, const char* collective, size_t bytes, bool ringBased) {
  if (ctx.topo == nullptr) return false;
  const std::string forced = forcedAlgo(collective);
  if (!forced.empty() && forced != "hierarchical") return false;
  if (forced.empty() && ringBased && bytes > kHierRingMaxBytes) {
    bool consecutive = true;
    for (const std::vector<int>& host : ctx.topo->hosts)
      consecutive = consecutive && host.back() - host.front() + 1 == static_cast<int>(host.size());
    if (consecutive) return false;
  }
  noteAlgorithm("hierarchical");
  return true;
}

Path choosePath(const Context& ctx, const char* collective, size_t bytes) {
  const Path p = pathFor(ctx, collective, bytes);
  noteAlgorithm(p == Path::Tcp ? "tcp" : p == Path::ShmStaged ? "shm_staged" : "shm_cma");
  return p;
}

void failMismatch(const Context& ctx, const char* collective, const std::string& detail) {
  const std::string msg =
      strCat("agentcomm: collective mismatch in ", collective, " (sequence number ", ctx.seq, "): ", detail);
  ctx.shm->abort(msg);
  throw MismatchError(msg);
}

void cmaReduce(const Context& ctx, const uint64_t* remote, const void* local, void* dst, size_t count,
               FinalScale scale) {
  const int n = ctx.size();
  const int r = ctx.rank();
  const size_t es = ctx.elemSize();
  const ReduceOp op = combiningOp(ctx.op);
  const size_t step = std::max<size_t>(1, kCmaStepBytes / es);
  uint8_t* acc = Context::scratch(2, step * es);
  uint8_t* tmp = Context::scratch(3, step * es);
  auto* out = static_cast<uint8_t*>(dst);
  auto* mine = static_cast<const uint8_t*>(local);
  for (size_t off = 0; off < count; off += step) {
    const size_t m = std::min(step, count - off);
    const size_t b = off * es;
    // Source of rank j for this step: this rank's own memory, or a copy of the peer's.
    auto source = [&](int j, uint8_t* into) -> const uint8_t* {
      if (j == r) return mine + b;
      ctx.shm->readPeer(j, remote[j] + b, into, m * es);
      return into;
    };
    const uint8_t* first = source(0, acc);
    for (int j = 1; j < n; ++j) {
      const uint8_t* next = source(j, tmp);
      uint8_t* into = j == n - 1 ? out + b : acc;
      // into may alias first (acc) or next (this rank's own slice); never partially.
      // The last pass writes memory this core does not read again (peers
      // fetch it from DRAM): non-temporal stores skip the read-for-ownership.
      if (j == n - 1) {
        kernels::reduceStreaming(into, first, next, m, ctx.dtype, op, scale);
      } else {
        kernels::reduce(into, first, next, m, ctx.dtype, op, FinalScale::none());
      }
      first = acc;
    }
  }
}

}  // namespace agentcomm::algorithms
