#pragma once
// The algorithm of the CUDA IPC all-reduce (torch/cuda_support.cc runs it on
// the device): every rank of the group is on this host and maps every other
// rank's tensor; one rank per physical GPU (the lowest on it: ranks sharing a
// GPU would only time-slice it, and each cross-process dependency costs a
// context switch) reduces that GPU's share of the elements over all tensors
// and writes the result into each of them. Shares are contiguous with
// 16-byte aligned boundaries; the last GPU takes the remainder.
#include <array>
#include <cstddef>
#include <vector>

namespace agentcomm::algorithms {

using GpuId = std::array<char, 16>;  // a device's UUID (indices differ under CUDA_VISIBLE_DEVICES)

struct DevicePeerPlan {
  std::vector<int> leaders;  // the reducing rank of each GPU, in rank order
  bool leads = false;        // this rank reduces a share
  size_t begin = 0;          // its share: elements [begin, begin + count)
  size_t count = 0;
};

// gpus[r]: the GPU of rank r; n elements of elementSize bytes each.
DevicePeerPlan planDevicePeers(const std::vector<GpuId>& gpus, int rank, size_t n, size_t elementSize);

}  // namespace agentcomm::algorithms
