#!/usr/bin/env bash
# On a lent GPU machine: build the extension against its CUDA torch, run the
# CUDA kernel tests (C++) and the GPU Python tests; optionally the all_reduce
# benchmark. Logs go to $OUT.   bash bench/cuda/device_python.sh [tests|kernels|bench|all]
#   tests: the C++ kernel tests and tests/python/test_cuda.py; kernels: those and
#   the kernel bench; bench: the kernel and all_reduce benches; all: everything.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
ROOT=$(pwd)
WHAT=${1:-all}
export PYTHONUNBUFFERED=1
# The device image's default C++ compiler (/opt/gcc) carries its own static
# libstdc++: an extension built with it has a second copy of the iostream /
# locale machinery beside the process's libstdc++, and its first ostream <<
# int crashes. Build with the system compiler, whose libstdc++ is the one loaded.
export CXX=/usr/bin/g++ CC=/usr/bin/gcc CUDAHOSTCXX=/usr/bin/g++
# The core's CUDA tests and bench build beside the extension (16 cores there).
PREFIX=""; [ -d "$ROOT/.gtest/root/usr" ] && PREFIX="-DCMAKE_PREFIX_PATH=$ROOT/.gtest/root/usr"
(cmake -S "$ROOT" -B /tmp/bcore -G Ninja -DAGENTCOMM_BUILD_TESTS=ON -DAGENTCOMM_CUDA_ARCHS=90 $PREFIX > "$OUT/cmake.log" 2>&1 &&
 ninja -C /tmp/bcore agentcomm_cuda_tests agentcomm_cuda_bench > "$OUT/build.log" 2>&1) &
CORE=$!
echo "== extension ($(python3 -c 'import torch; print(torch.__version__)'))"
t0=$(date +%s)
rm -rf build/lib* build/bdist* build/temp*  # setuptools' copies from an earlier call on this machine
CMAKE_ARGS="-DAGENTCOMM_CUDA_ARCHS=90" AGENTCOMM_BUILD_DIR=/tmp/bpy3 \
  python3 -m pip install -q --no-build-isolation --no-deps --target /tmp/site . > "$OUT/ext.log" 2>&1 \
  || { grep -E "error" -A3 "$OUT/ext.log" | head -40; exit 1; }
grep -o "agentcomm: the extension is built with CUDA support" "$OUT/ext.log" /tmp/bpy/CMakeCache.txt 2>/dev/null | head -1
echo "built in $(( $(date +%s) - t0 )) s"
export PYTHONPATH=/tmp/site
cd /tmp && python3 -c "import agentcomm; print('cuda_built', agentcomm.cuda_built())"
wait $CORE || { echo "core build failed"; grep -E "error" -A3 "$OUT/build.log" "$OUT/cmake.log" | head -30; }
if [ "$WHAT" != bench ]; then
  echo "== C++ CUDA kernel tests"
  /tmp/bcore/agentcomm_cuda_tests > "$OUT/cuda_tests.log" 2>&1
  grep -E "^\[  (FAILED|PASSED) |Failure|error:|Expected|Which is|case " "$OUT/cuda_tests.log" | head -20
  echo "== GPU Python tests"
  cd /tmp && timeout 420 python3 -m pytest -q -p no:cacheprovider --timeout 400 "$ROOT/tests/python/test_cuda.py" ${PYTEST_K:+-k "$PYTEST_K"} 2>&1 | tee "$OUT/pytest.log" | tail -40
fi
if [ "$WHAT" != tests ] && [ -x /tmp/bcore/agentcomm_cuda_bench ]; then
  echo "== kernel bench"; /tmp/bcore/agentcomm_cuda_bench | tee "$OUT/cuda_bench.log"
fi
if [ "$WHAT" = all ] || [ "$WHAT" = bench ]; then
  echo "== all_reduce benchmark"
  cd /tmp && for w in 2 4; do timeout 200 python3 "$ROOT/bench/cuda/allreduce_cuda.py" --world $w 2>&1 | tee -a "$OUT/bench.log" | grep -v Warning; done
fi
