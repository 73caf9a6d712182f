"""float32 all_reduce latency, agentcomm beside Gloo and OpenMPI, timed the same way on all three.

    python bench/latency_vs_mpi.py [-W 2,4] [--sizes 1K,4K,64K,256K,1M,4M,64M] [--repeats 2]

Every iteration starts after a barrier of the tested library itself; the time of one
all_reduce is taken on every rank, the slowest rank's time is kept per iteration, and the
median over iterations is printed (microseconds). OpenMPI runs through mpi4py on NumPy
arrays (``mpirun --allow-run-as-root --oversubscribe -np W``; no torch dispatch in its path),
agentcomm and Gloo through ``torch.distributed`` on torch tensors. Ranks keep one intra-op
thread each (``--threads`` to change). OpenMPI is skipped with a message when ``mpirun``
or ``mpi4py`` is missing (``AGENTCOMM_BENCH_DEPS=1 bash scripts/setup_env.sh`` installs both).

Each library runs in its own job; with ``--repeats`` > 1 the jobs are interleaved and the
best median of the repeats is printed (noise on this shared machine only adds time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

BUDGET_S = 1.5  # per size and library: fewer iterations for large messages


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("B")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def _iterations(probe_s: float) -> int:
    return max(10, min(300, int(BUDGET_S / max(probe_s, 1e-6))))


def torch_worker(rank: int, world: int, backend: str, sizes: list[int], out_path: str) -> None:
    import torch
    import torch.distributed as dist
    import agentcomm  # noqa: F401

    dist.init_process_group(backend, rank=rank, world_size=world)
    result = {}
    for nbytes in sizes:
        x = torch.ones(nbytes // 4)
        for _ in range(5):
            dist.all_reduce(x)
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(x)
        probe = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
        dist.all_reduce(probe, op=dist.ReduceOp.MAX)  # every rank runs the same count
        n = _iterations(probe.item())
        samples = torch.empty(n, dtype=torch.float64)
        for i in range(n):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(x)
            samples[i] = time.perf_counter() - start
        dist.all_reduce(samples, op=dist.ReduceOp.MAX)
        result[nbytes] = float(samples.median())
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


def mpi_worker(sizes: list[int], out_path: str) -> None:
    import numpy as np
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    result = {}
    for nbytes in sizes:
        x = np.ones(nbytes // 4, dtype=np.float32)
        y = np.empty_like(x)
        for _ in range(5):
            comm.Allreduce(x, y)
        comm.Barrier()
        start = time.perf_counter()
        comm.Allreduce(x, y)
        probe = comm.allreduce(time.perf_counter() - start, op=MPI.MAX)
        n = _iterations(probe)
        samples = np.empty(n)
        for i in range(n):
            comm.Barrier()
            start = time.perf_counter()
            comm.Allreduce(x, y)
            samples[i] = time.perf_counter() - start
        slowest = np.empty_like(samples)
        comm.Allreduce(samples, slowest, op=MPI.MAX)
        result[nbytes] = float(np.median(slowest))
    if comm.Get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(result, f)


def mpi_available() -> str | None:
    """Why OpenMPI cannot run here, or None."""
    if shutil.which("mpirun") is None:
        return "mpirun not found"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py not installed"
    return None


def run_job(lib: str, world: int, sizes: list[int], threads: int) -> dict[int, float]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        if lib == "openmpi":
            cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(world), sys.executable,
                   __file__, "--mpi-worker", "--sizes", ",".join(map(str, sizes)), "--out", f.name]
            subprocess.run(cmd, check=True, env=env, timeout=600)
        else:
            saved = dict(os.environ)
            os.environ.update(env)
            try:
                from agentcomm.bench import harness
                harness.spawn_local(torch_worker, world, lib, sizes, f.name)
            finally:
                os.environ.clear()
                os.environ.update(saved)
        with open(f.name) as r:
            return {int(k): v for k, v in json.load(r).items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-W", "--worlds", default="2,4")
    p.add_argument("--sizes", default="1K,4K,64K,256K,1M,4M,64M")
    p.add_argument("--libs", default="agentcomm,gloo,openmpi")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mpi-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    if args.mpi_worker:
        mpi_worker(sizes, args.out)
        return
    libs = args.libs.split(",")
    if "openmpi" in libs and (why := mpi_available()):
        print(f"# OpenMPI skipped: {why}", flush=True)
        libs.remove("openmpi")
    for world in (int(w) for w in args.worlds.split(",")):
        best: dict[str, dict[int, float]] = {lib: {} for lib in libs}
        for _ in range(args.repeats):
            for lib in libs:
                for nbytes, t in run_job(lib, world, sizes, args.threads).items():
                    best[lib][nbytes] = min(best[lib].get(nbytes, float("inf")), t)
        head = f"W={world} size".ljust(14) + "".join(f"{lib + ' us':>14}" for lib in libs)
        if "openmpi" in libs and "agentcomm" in libs:
            head += f"{'agentcomm/openmpi':>19}"
        print(head, flush=True)
        for nbytes in sizes:
            row = f"{nbytes:>14}" + "".join(f"{best[lib][nbytes] * 1e6:14.1f}" for lib in libs)
            if "openmpi" in libs and "agentcomm" in libs:
                row += f"{best['agentcomm'][nbytes] / best['openmpi'][nbytes]:18.2f}x"
            print(row, flush=True)


if __name__ == "__main__":
    main()
