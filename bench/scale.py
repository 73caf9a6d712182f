"""What a rank costs as the job grows: setup time, threads, sockets, memory, and all_reduce
latency and bandwidth, agentcomm beside Gloo in the same run.

    sudo python bench/scale.py --cluster 8x4@1gbit      # 32 ranks on 8 emulated hosts (root)
    python bench/scale.py --ranks 16                     # 16 ranks on this host

Each backend gets one launch of every rank (torchrun's environment, from agentcomm.emulate).
A rank waits on the store until every rank has arrived (process start-up is not setup), then
times ``init_process_group`` plus two more groups (a copy of the world and the even ranks,
as a DeviceMesh makes one group per dimension) and one barrier on each. Then it counts its
threads (/proc/self/task), sockets (descriptors that are sockets) and resident memory, and
times all_reduce of 4 KiB (median of 50) and 16 MiB (median of 5) on the world, each
after a barrier. The table shows the worst rank for every column.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

COLUMNS = ("init_s", "threads", "sockets", "sockets_end", "rss_mb", "allreduce_4k_us", "allreduce_16m_ms")
# A backend name with this suffix: agentcomm with every pair connected at setup
# (AGENTCOMM_EAGER_CONNECT=1; the default connects other hosts on demand).
EAGER = "-eager"


def worker(backend: str, out: str) -> None:
    if backend.endswith(EAGER):
        backend = backend[: -len(EAGER)]
        os.environ["AGENTCOMM_EAGER_CONNECT"] = "1"
    import torch
    import torch.distributed as dist

    import agentcomm.debug  # registers the backend too
    from agentcomm.bench.harness import median_seconds

    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, rank == 0,
                          timeout=timedelta(seconds=300))
    store.add("arrived", 1)
    while int(store.add("arrived", 0)) < world:
        time.sleep(0.01)
    t0 = time.perf_counter()
    dist.init_process_group(backend, store=dist.PrefixStore("pg", store), rank=rank, world_size=world,
                            timeout=timedelta(seconds=300))
    copy = dist.new_group(list(range(world)))
    even = dist.new_group(list(range(0, world, 2)))
    for g in (None, copy, even):
        if g is None or dist.get_rank(g) >= 0:
            dist.barrier(group=g)
    row: dict[str, float] = {"init_s": time.perf_counter() - t0, **agentcomm.debug.process_costs()}
    for key, numel, reps in (("allreduce_4k_us", 1024, 50), ("allreduce_16m_ms", 4 << 20, 5)):
        t = torch.ones(numel)
        dist.all_reduce(t)  # warm: first touch, first use of each connection
        row[key] = median_seconds(lambda: dist.all_reduce(t), reps, before=dist.barrier) * (
            1e6 if key.endswith("_us") else 1e3)
    row["sockets_end"] = agentcomm.debug.process_costs()["sockets"]  # after the all_reduces: what they connected
    rows: list = [None] * world
    dist.all_gather_object(rows, row)
    if rank == 0:
        Path(out).write_text(json.dumps(rows))
    dist.barrier()
    dist.destroy_process_group()


def drive(args: argparse.Namespace) -> dict:
    from agentcomm.emulate import Cluster, ClusterSpec

    cluster = Cluster(ClusterSpec.parse(args.cluster)) if args.cluster else Cluster.local(args.ranks)
    spec = cluster.spec
    results: dict[str, dict[str, float]] = {}
    with cluster, tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            out = Path(tmp) / f"{backend}.json"
            code = cluster.launch([sys.executable, os.path.abspath(__file__), "--worker", backend, str(out)],
                                  timeout=args.timeout)
            if code != 0 or not out.exists():
                raise SystemExit(f"scale: {backend} ranks exited with code {code}")
            rows = json.loads(out.read_text())
            results[backend] = {c: max(r[c] for r in rows) for c in COLUMNS}
            # Rank 0 also holds the TCPStore's server (a socket per rank): the others apart.
            results[backend]["sockets_end_others"] = max((r["sockets_end"] for r in rows[1:]), default=0)
    print(f"{spec.describe()}: worst rank per column (3 groups: world, a copy, the even ranks); sockets after "
          "setup, after the all_reduces, and after them on ranks other than 0 (rank 0 serves the store)")
    print("| backend | init (s) | threads | sockets | sockets after | others after | RSS (MB) | "
          "all_reduce 4 KiB (us) | all_reduce 16 MiB (ms) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for backend, r in results.items():
        print(f"| {backend} | {r['init_s']:.2f} | {r['threads']:.0f} | {r['sockets']:.0f} | {r['sockets_end']:.0f} | "
              f"{r['sockets_end_others']:.0f} | {r['rss_mb']:.0f} | {r['allreduce_4k_us']:.0f} | "
              f"{r['allreduce_16m_ms']:.1f} |")
    return {"cluster": spec.describe(), "results": results}


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        return worker(sys.argv[2], sys.argv[3])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cluster", help="HOSTSxRANKS[@RATE], e.g. 8x4@1gbit (root); default: --ranks on this host")
    p.add_argument("--ranks", type=int, default=8)
    p.add_argument("--backends", default="agentcomm,agentcomm-eager,gloo",
                   help=f"comma-separated; agentcomm{EAGER}: every pair connected at setup")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    report = drive(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
