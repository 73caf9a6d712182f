// All-reduce entry point: one ordered table of (predicate -> algorithm); the
// first entry whose predicate holds runs. AGENTCOMM_ALGO overrides it.
#include <cstdlib>
#include <cstring>
#include <strings.h>

#include "algorithms/algorithms.h"
#include "core/error.h"
#include "core/logging.h"

namespace agentcomm::algorithms {

namespace {
// Direct exchange moves (n-1)*S bytes per rank but needs one hop; the ring
// moves 2(n-1)/n*S in 2(n-1) hops. Below this size latency dominates.
constexpr size_t kDirectMaxBytes = 32 * 1024;

struct Entry {
  AllReduceAlgo algo;
  bool (*applies)(size_t bytes, int n);
};
constexpr Entry kTable[] = {
    {AllReduceAlgo::Direct, [](size_t bytes, int n) { return bytes <= kDirectMaxBytes && n <= 16; }},
    {AllReduceAlgo::Ring, [](size_t, int) { return true; }},
};

AllReduceAlgo fromEnv() {
  const char* env = std::getenv("AGENTCOMM_ALGO");
  if (env == nullptr || *env == 0 || strcasecmp(env, "auto") == 0) return AllReduceAlgo::Auto;
  if (strcasecmp(env, "ring") == 0) return AllReduceAlgo::Ring;
  if (strcasecmp(env, "direct") == 0) return AllReduceAlgo::Direct;
  throw InvalidArgument(strCat("AGENTCOMM_ALGO=", env, " is not one of auto, ring, direct"));
}
}  // namespace

const char* allReduceAlgoName(AllReduceAlgo algo) {
  switch (algo) {
    case AllReduceAlgo::Auto: return "auto";
    case AllReduceAlgo::Ring: return "ring";
    case AllReduceAlgo::Direct: return "direct";
  }
  return "?";
}

AllReduceAlgo chooseAllReduceAlgo(size_t bytes, int n, AllReduceAlgo requested) {
  if (requested != AllReduceAlgo::Auto) return requested;
  static const AllReduceAlgo env = fromEnv();
  if (env != AllReduceAlgo::Auto) return env;
  for (const auto& e : kTable)
    if (e.applies(bytes, n)) return e.algo;
  return AllReduceAlgo::Ring;
}

void allReduce(Context& ctx, const AllReduceOptions& opts) {
  const AllReduceAlgo algo = chooseAllReduceAlgo(opts.count * ctx.elemSize(), ctx.size(), opts.algo);
  AC_LOG(Trace, "all_reduce seq ", ctx.seq, ": ", opts.count, " x ", dataTypeName(ctx.dtype), " op ",
         reduceOpName(ctx.op), " via ", allReduceAlgoName(algo));
  if (algo == AllReduceAlgo::Direct) return allReduceDirect(ctx, opts);
  return allReduceRing(ctx, opts);
}

}  // namespace agentcomm::algorithms
