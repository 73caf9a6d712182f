#include "algorithms/device_peers.h"

#include <algorithm>

namespace agentcomm::algorithms {

DevicePeerPlan planDevicePeers(const std::vector<GpuId>& gpus, int rank, size_t n, size_t elementSize) {
  DevicePeerPlan plan;
  for (size_t r = 0; r < gpus.size(); ++r)
    if (std::find(gpus.begin(), gpus.begin() + static_cast<std::ptrdiff_t>(r), gpus[r]) ==
        gpus.begin() + static_cast<std::ptrdiff_t>(r))
      plan.leaders.push_back(static_cast<int>(r));
  const auto slot = std::find(plan.leaders.begin(), plan.leaders.end(), rank);
  if (slot == plan.leaders.end()) return plan;
  plan.leads = true;
  const size_t parts = plan.leaders.size(), index = static_cast<size_t>(slot - plan.leaders.begin());
  const size_t align = std::max<size_t>(1, 16 / std::max<size_t>(elementSize, 1));
  const size_t per = (n / parts + align - 1) / align * align;
  plan.begin = std::min(n, per * index);
  const size_t end = index + 1 == parts ? n : std::min(n, plan.begin + per);
  plan.count = end - plan.begin;
  return plan;
}

}  // namespace agentcomm::algorithms
