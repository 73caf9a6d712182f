#!/usr/bin/env bash
# Set up, build from scratch, and run the whole test suite: the core's C++
# unit tests (GoogleTest via CTest, no torch) and the Python tests (pytest).
set -euo pipefail
export AGENTCOMM_NEED_GTEST=1 AGENTCOMM_TEST_DEPS=1
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"

echo "== C++ core tests (built without torch)"
rm -rf build/core
cmake -S "$ROOT" -B build/core -G Ninja -DAGENTCOMM_BUILD_TESTS=ON >/dev/null
cmake --build build/core -j "$CMAKE_BUILD_PARALLEL_LEVEL"
ctest --test-dir build/core --output-on-failure --timeout 300 -j 2
if [ -x build/core/agentcomm_cuda_tests ]; then  # built when nvcc exists; says whether its tests could run
  build/core/agentcomm_cuda_tests --gtest_filter=CudaKernels.ReportsAvailability | grep "CUDA device available"
fi

echo "== Python tests"
cd "$ROOT/tests/python"  # not the repo root: the source tree's agentcomm/ has no built extension
OMP_NUM_THREADS=1 python -m pytest -q -rs -p no:cacheprovider --timeout 900 "$@"  # -rs: why GPU tests skipped

echo "== microbenchmarks (kernels, averaging, compression), run once each as tests (bench/RESULTS.md has the timed runs)"
OMP_NUM_THREADS=1 python -m pytest -q -p no:cacheprovider --timeout 300 --benchmark-disable \
  "$ROOT/bench/test_kernels.py" "$ROOT/bench/test_averaging.py" "$ROOT/bench/test_compression.py"
