"""Latency from abort() on another thread to the raise of a blocked all_reduce (bench/RESULTS.md, issue 19).

    python bench/recovery/abort_latency.py
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tests" / "python"))
from harness import run_world  # noqa: E402
import test_recovery as tr  # noqa: E402

if __name__ == "__main__":
    for name, env in (("shm", {}), ("tcp", {"AGENTCOMM_SHM": "0"})):
        lat = [run_world(tr.abort_case, 2, timeout=60, env=env)[0]["latency"] for _ in range(3)]
        print(name, ["%.1f ms" % (1000 * x) for x in lat], flush=True)
