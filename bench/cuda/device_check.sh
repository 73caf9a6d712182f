#!/usr/bin/env bash
# One call on a lent GPU machine (the device tool): build the core, the CUDA
# kernels and their tests with nvcc, run the kernel tests against their CPU
# twins, time the kernels, and time torch.topk beside them. Logs go to $OUT.
#   bash bench/cuda/device_check.sh
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
J=$(nproc)
echo "== env"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c 'import torch,sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))'
nvcc --version | tail -1
echo "== build core + CUDA"
# GoogleTest: the system's, or Debian's libgtest-dev unpacked into .gtest
# (carried with the call: the device machine cannot download it).
PREFIX=""; [ -d .gtest/root/usr ] && PREFIX="-DCMAKE_PREFIX_PATH=$PWD/.gtest/root/usr"
cmake -S . -B /tmp/bcore -G Ninja -DAGENTCOMM_BUILD_TESTS=ON $PREFIX -DAGENTCOMM_CUDA_ARCHS=90 > "$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 1; }
ninja -C /tmp/bcore -j "$J" agentcomm_cuda_tests agentcomm_cuda_bench > "$OUT/build.log" 2>&1 || { grep -E "error|Error" -A3 "$OUT/build.log" | head -60; exit 1; }
echo "== CUDA kernel tests"
/tmp/bcore/agentcomm_cuda_tests 2>&1 | tee "$OUT/cuda_tests.log" | grep -E "^\[  (FAILED|PASSED|  OK|SKIPPED) |Failure|Expected|Which is|available|error" | head -60
echo "== CUDA kernel bench"
/tmp/bcore/agentcomm_cuda_bench 2>&1 | tee "$OUT/cuda_bench.log"
python3 bench/cuda/torch_topk.py 2>&1 | tee "$OUT/torch_topk.log"
# The extension and the GPU Python tests: bench/cuda/device_python.sh.
