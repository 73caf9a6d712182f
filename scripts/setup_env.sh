#!/usr/bin/env bash
# Sets up .venv with the pinned CPU torch, the test tools, GoogleTest, and
# builds + installs agentcomm from this checkout. Sourced by demo.sh and test.sh.
# Works on a fresh machine that has only python3, g++ and cmake.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TORCH_VERSION="2.13.0"  # pinned: a bare "torch" pulls a multi-GB CUDA build
PY="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1

if ! python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  echo "== installing torch==$TORCH_VERSION"
  pip install -q "torch==$TORCH_VERSION"
fi
pip install -q numpy pytest pytest-timeout expecttest setuptools wheel
if [ "${AGENTCOMM_TEST_DEPS:-0}" = "1" ]; then
  # The benchmark's --plot, the microbenchmarks (bench/test_*.py), scikit-learn's digits
  # dataset for the averaging convergence test, and torchft.
  pip install -q matplotlib pytest-benchmark scikit-learn
  # torchft (per-step fault tolerance) for tests/python/test_torchft.py; it leaves the pinned torch alone.
  pip install -q "torchft==0.2.0"
fi
command -v ninja >/dev/null 2>&1 || pip install -q ninja

if [ "${AGENTCOMM_BENCH_DEPS:-0}" = "1" ]; then
  # The peer baseline of bench/latency_vs_mpi.py: OpenMPI (Debian) through mpi4py.
  if ! dpkg -s openmpi-bin libopenmpi-dev >/dev/null 2>&1; then
    echo "== installing OpenMPI (Debian openmpi-bin, libopenmpi-dev)"
    SUDO=""
    [ "$(id -u)" = "0" ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openmpi-bin libopenmpi-dev >/dev/null
  fi
  pip install -q "mpi4py==4.1.2"
fi

if [ "${AGENTCOMM_NEED_GTEST:-0}" = "1" ] && [ ! -f /usr/include/gtest/gtest.h ]; then
  echo "== installing GoogleTest (Debian libgtest-dev)"
  SUDO=""
  [ "$(id -u)" = "0" ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libgtest-dev >/dev/null
fi

echo "== building and installing agentcomm (torch $(python -c 'import torch; print(torch.__version__)'))"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
pip install -q --no-build-isolation "$ROOT"
