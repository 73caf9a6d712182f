"""Per-kernel device time of a program, from Nsight Compute (one metric, no clock control).

Runs `ncu --metrics gpu__time_duration.sum` on the command and prints, per
kernel name, how many launches it saw and their mean and total microseconds.
Where one launch of the program calls several kernels (top-k), this says
which of them cost what.

    python3 bench/cuda/ncu_kernels.py /tmp/bcore/agentcomm_cuda_bench 25000000 3 topk
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys


def main() -> None:
    cmd = ["ncu", "--clock-control", "none", "--metrics", "gpu__time_duration.sum", *sys.argv[1:]]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
    times: dict[str, list[float]] = collections.defaultdict(list)
    name = None
    for line in out.splitlines():
        m = re.match(r"\s{2}(\S.*?)\s+\(\d+, \d+, \d+\)x\(\d+, \d+, \d+\)", line)
        if m:
            name = re.sub(r"\(.*", "", m.group(1)).split("::")[-1][:60]
            continue
        m = re.match(r"\s+gpu__time_duration.sum\s+(\S+)\s+([\d.,]+)", line)
        if m and name:
            scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}.get(m.group(1), 1.0)
            times[name].append(float(m.group(2).replace(",", "")) * scale)
    print(f"{'kernel':62s} {'launches':>8s} {'mean us':>9s} {'total us':>10s}")
    for k, v in sorted(times.items(), key=lambda kv: -sum(kv[1])):
        print(f"{k:62s} {len(v):>8d} {sum(v) / len(v):>9.1f} {sum(v):>10.1f}")
    if not times:
        print(out[-3000:])


if __name__ == "__main__":
    main()
