#!/usr/bin/env bash
# Set up (first run only) and run the demo: a 4-process DDP job on CPU over
# agentcomm, printed beside the same job on Gloo.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd /tmp  # import the installed package, not the source tree
OMP_NUM_THREADS=1 python "$ROOT/examples/ddp_demo.py" --world-size 4 --steps 40 "$@"
