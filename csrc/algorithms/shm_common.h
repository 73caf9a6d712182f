#pragma once
// Helpers shared by the shared-memory algorithms (allreduce_shm.cc,
// broadcast_shm.cc, allgather_shm.cc, reduce_scatter_shm.cc). See
// transport/shm/shm_domain.h for the round/parity invariant they rely on.
#include <cstdint>
#include <string>

#include "algorithms/algorithms.h"
#include "algorithms/context.h"
#include "transport/shm/shm_domain.h"

namespace agentcomm::algorithms {

// Shared-memory algorithm ids, stamped into every round's descriptor so that
// ranks disagreeing on the algorithm fail with a mismatch instead of hanging.
enum class ShmAlgo : uint32_t { Flat = 1, Staged = 2, Cma = 3, Barrier = 4 };

// The path a collective other than all_reduce takes.
enum class Path { Tcp, ShmStaged, ShmCma };

// Messages at least this large read peers' buffers directly when Cross Memory
// Attach is available. Below it, two plain copies through the slots beat one
// process_vm_readv copy from 4 KiB pages (measured: 1 MiB all_reduce, W=4,
// 316 us staged vs 552 us CMA; 16 MiB: 9.5 ms vs 7.5 ms); from this size on,
// buffers seen twice are also moved to huge pages (ShmDomain::preferHugePages).
constexpr size_t kCmaMinBytes = size_t{8} << 20;

// reduce goes over shared memory from this size on (below it the TCP ring,
// which needs no sync per round, is as fast or faster; see reduce.cc).
constexpr size_t kShmReduceMinBytes = size_t{4} << 20;

// Elements reduced per step when reducing from peers' memory: the inputs of
// one step stay in L2 while they are combined.
constexpr size_t kCmaStepBytes = size_t{256} << 10;

// Messages (a gather's or scatter's pieces, send/recv payloads) of at least
// this many bytes between ranks of one host go by rendezvous: the holder
// publishes its address and the other side reads it with one
// process_vm_readv. AGENTCOMM_RENDEZVOUS_BYTES, default 1 MiB (below it the
// eager message wins: the sender moves on at once; bench/RESULTS.md).
size_t rendezvousMinBytes();

transport::ShmOpDesc shmDesc(const Context& ctx, ShmAlgo algo, uint64_t signature, int root = 0);

// The lower-case algorithm name AGENTCOMM_ALGO forces for `collective`
// ("all_reduce", "broadcast", ...), or "" for automatic. Syntax: one name for
// every collective ("ring"), or "collective:name" pairs separated by commas.
std::string forcedAlgo(const char* collective);

// Whether `collective` (moving `bytes` in all) runs hierarchically
// (hierarchical.cc): the group spans hosts (ctx.topo) and AGENTCOMM_ALGO does
// not force it flat (tcp, ring, direct, recursive_doubling; a forced shm_*
// then fails in choosePath, naming why). A ring-based collective (all_gather,
// reduce_scatter) above kHierRingMaxBytes stays flat when every host's ranks
// are consecutive: its ring then crosses each host link once per step, as the
// leaders' ring would, without the in-host gather and broadcast (measured:
// 4 hosts x 4 ranks, 16 MiB reduce_scatter 141 ms flat vs 162 ms).
constexpr size_t kHierRingMaxBytes = size_t{1} << 20;
bool runsHierarchical(const Context& ctx, const char* collective, size_t bytes, bool ringBased);

// Automatic choice for collectives other than all_reduce: shared memory when
// the group has a domain (directly from peers' memory for large messages),
// otherwise TCP. Honours AGENTCOMM_ALGO: tcp|ring|direct|recursive_doubling force TCP,
// shm_staged|shm_flat force the slots, shm_cma forces Cross Memory Attach.
Path choosePath(const Context& ctx, const char* collective, size_t bytes);

// dst[0..count) = the reduction, in rank order 0..n-1, of every rank's
// `count` elements: rank j's at address remote[j] in its process (read with
// process_vm_readv), this rank's at `local`. `scale` is applied in the last
// pass. dst may alias local. Uses Context::scratch slots 2 and 3.
void cmaReduce(const Context& ctx, const uint64_t* remote, const void* local, void* dst, size_t count,
               FinalScale scale);

// Ranks disagree about a shared-memory collective (found from the words they
// published): fails the domain for every rank and throws MismatchError
// "agentcomm: collective mismatch in <collective> (sequence number N): <detail>".
[[noreturn]] void failMismatch(const Context& ctx, const char* collective, const std::string& detail);

// The shared-memory forms (collectives_shm.cc); `path` is ShmStaged or ShmCma.
void broadcastShm(Context& ctx, const BroadcastOptions& opts, Path path);
void allGatherShm(Context& ctx, const AllGatherOptions& opts, Path path);
void reduceScatterShm(Context& ctx, const ReduceScatterOptions& opts, Path path);
void allToAllShm(Context& ctx, const AllToAllOptions& opts, Path path);
void reduceShm(Context& ctx, const ReduceOptions& opts, Path path);
// gather/scatter: with bySize, `path` is an upper bound and the choice is made
// from the largest count once every rank published its own (see the .cc).
void gatherShm(Context& ctx, const GatherOptions& opts, Path path, bool bySize = false);
void scatterShm(Context& ctx, const ScatterOptions& opts, Path path, bool bySize = false);
void barrierShm(Context& ctx);

inline uint64_t addrOf(const void* p) { return reinterpret_cast<uint64_t>(p); }

}  // namespace agentcomm::algorithms
