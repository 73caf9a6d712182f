"""A mixed, checked workload the way users run it: agentcomm beside Gloo, with torch's threads.

    python bench/crowded.py [-W 2,4] [--ops 200] [--threads default,1] [--repeats 3]

Every rank issues the same ``--ops`` collectives, drawn from one seed: all_reduce,
broadcast, all_gather, reduce_scatter, all_to_all and a send/recv ring, of random sizes
from 0 to ``--max-bytes`` (log-uniform, so most are small and a few are large) and random
dtypes. After each call the rank checks the result against its closed form with ordinary
torch ops, which run on torch's intra-op thread pool: with ``--threads default`` each rank
keeps torch's default (one thread per core, so W ranks run 2W compute threads on this
2-core machine, as ``mp.spawn``, Ray, SLURM scripts and notebooks leave it); with
``--threads 1`` it runs one (what torchrun sets). A wrong element fails the run.

The backends run in fresh jobs, one after the other and interleaved repeat by repeat, so
they see the same machine noise. Printed per configuration: the median over repeats of the
slowest rank's wall time for the whole sequence, and the time spent inside each kind of
collective (slowest rank, summed over the sequence).

    W  threads  backend       total s   all_reduce  broadcast  all_gather  reduce_scatter  all_to_all  sendrecv
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist

from agentcomm.bench import harness
import agentcomm  # noqa: F401

KINDS = ("all_reduce", "broadcast", "all_gather", "reduce_scatter", "all_to_all", "sendrecv")
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.int32, torch.int64, torch.uint8)
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def plan(ops: int, max_bytes: int, seed: int) -> list[tuple[str, int, torch.dtype]]:
    """The sequence every rank runs: (kind, elements per rank, dtype), identical on all ranks."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(ops):
        kind = KINDS[int(torch.randint(len(KINDS), (1,), generator=g))]
        dtype = DTYPES[int(torch.randint(len(DTYPES), (1,), generator=g))]
        # log-uniform in [1, max_bytes], and an empty tensor now and then
        nbytes = 0 if torch.rand(1, generator=g) < 0.03 else int(math.exp(
            float(torch.rand(1, generator=g)) * math.log(max_bytes)))
        out.append((kind, nbytes // torch.empty(0, dtype=dtype).element_size(), dtype))
    return out


def _pattern(rank: int, n: int, dtype: torch.dtype, salt: int) -> torch.Tensor:
    """Rank ``rank``'s input: small integers (exact in every dtype, sums of up to 8 ranks too)."""
    return ((torch.arange(n, dtype=torch.int64) * 7 + rank * 3 + salt) % 13).to(dtype)


def step(kind: str, n: int, dtype: torch.dtype, rank: int, world: int, salt: int) -> tuple[float, int]:
    """Runs one collective and checks it; returns (seconds inside the collective, wrong elements)."""
    per = max(n // world, 0)
    if kind == "all_reduce":
        t = _pattern(rank, n, dtype, salt)
        op = dist.ReduceOp.MAX if dtype == torch.uint8 else dist.ReduceOp.SUM  # uint8 sums would wrap
        start = time.perf_counter()
        dist.all_reduce(t, op=op)
        took = time.perf_counter() - start
        parts = torch.stack([_pattern(r, n, torch.int64, salt) for r in range(world)])
        want = parts.max(0).values if op == dist.ReduceOp.MAX else parts.sum(0)
    elif kind == "broadcast":
        root = salt % world
        t = _pattern(rank, n, dtype, salt)
        start = time.perf_counter()
        dist.broadcast(t, src=root)
        took = time.perf_counter() - start
        want = _pattern(root, n, torch.int64, salt)
    elif kind == "all_gather":
        t = torch.empty(per * world, dtype=dtype)
        start = time.perf_counter()
        dist.all_gather_into_tensor(t, _pattern(rank, per, dtype, salt))
        took = time.perf_counter() - start
        want = torch.cat([_pattern(r, per, torch.int64, salt) for r in range(world)])
    elif kind == "reduce_scatter":
        op = dist.ReduceOp.MAX if dtype == torch.uint8 else dist.ReduceOp.SUM
        t = torch.empty(per, dtype=dtype)
        start = time.perf_counter()
        _reduce_scatter(t, _pattern(rank, per * world, dtype, salt), op=op)
        took = time.perf_counter() - start
        parts = torch.stack([_pattern(r, per * world, torch.int64, salt)[rank * per:(rank + 1) * per]
                             for r in range(world)])
        want = parts.max(0).values if op == dist.ReduceOp.MAX else parts.sum(0)
    elif kind == "all_to_all":
        t = torch.empty(per * world, dtype=dtype)
        start = time.perf_counter()
        dist.all_to_all_single(t, _pattern(rank, per * world, dtype, salt))
        took = time.perf_counter() - start
        want = torch.cat([_pattern(r, per * world, torch.int64, salt)[rank * per:(rank + 1) * per]
                          for r in range(world)])
    else:  # sendrecv: a ring, every rank sends to the next and receives from the previous
        t = torch.empty(n, dtype=dtype)
        nxt, prv = (rank + 1) % world, (rank - 1) % world
        start = time.perf_counter()
        if world > 1:
            reqs = dist.batch_isend_irecv([dist.P2POp(dist.isend, _pattern(rank, n, dtype, salt), nxt),
                                           dist.P2POp(dist.irecv, t, prv)])
            for r in reqs:
                r.wait()
        else:
            t.copy_(_pattern(rank, n, dtype, salt))
        took = time.perf_counter() - start
        want = _pattern(prv, n, torch.int64, salt)
    return took, int((t.to(torch.int64) != want).sum())


def worker(rank: int, world: int, backend: str, ops: int, max_bytes: int, seed: int, out_path: str) -> None:
    dist.init_process_group(backend, rank=rank, world_size=world)
    sequence = plan(ops, max_bytes, seed)
    step("all_reduce", 8, torch.float32, rank, world, 0)  # warm-up: connections, first-touch
    dist.barrier()
    per_kind = {k: 0.0 for k in KINDS}
    wrong = 0
    start = time.perf_counter()
    for i, (kind, n, dtype) in enumerate(sequence):
        took, bad = step(kind, n, dtype, rank, world, i)
        per_kind[kind] += took
        wrong += bad
    total = time.perf_counter() - start
    stats = torch.tensor([total, *per_kind.values(), float(wrong)], dtype=torch.float64)
    dist.all_reduce(stats, op=dist.ReduceOp.MAX)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump({"total": stats[0].item(), "kinds": dict(zip(KINDS, stats[1:-1].tolist())),
                       "wrong": int(stats[-1].item()), "threads": torch.get_num_threads()}, f)
    dist.destroy_process_group()


def run_job(world: int, backend: str, threads: str, args: argparse.Namespace) -> dict:
    saved = os.environ.get("OMP_NUM_THREADS")
    if threads == "default":
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = threads
    try:
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            harness.spawn_local(worker, world, backend, args.ops, args.max_bytes, args.seed, f.name)
            with open(f.name) as r:
                return json.load(r)
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-W", "--worlds", default="2,4")
    p.add_argument("--threads", default="default,1", help="'default' (torch's) or a number, comma separated")
    p.add_argument("--backends", default="agentcomm,gloo")
    p.add_argument("--ops", type=int, default=200)
    p.add_argument("--max-bytes", type=int, default=4 << 20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="write every run's numbers here")
    args = p.parse_args()
    backends = args.backends.split(",")
    print(f"{'W':>2} {'threads':>7} {'backend':<10} {'total s':>8} " + " ".join(f"{k:>14}" for k in KINDS)
          + "   vs " + backends[-1], flush=True)
    everything = []
    for world in (int(w) for w in args.worlds.split(",")):
        for threads in args.threads.split(","):
            runs: dict[str, list[dict]] = {b: [] for b in backends}
            for _ in range(args.repeats):
                for backend in backends:
                    res = run_job(world, backend, threads, args)
                    if res["wrong"]:
                        raise SystemExit(f"{backend} W={world} threads={threads}: {res['wrong']} wrong elements")
                    runs[backend].append(res)
                    everything.append({"world": world, "threads_arg": threads, "backend": backend, **res})
            ref = statistics.median(r["total"] for r in runs[backends[-1]])
            for backend in backends:
                total = statistics.median(r["total"] for r in runs[backend])
                kinds = {k: statistics.median(r["kinds"][k] for r in runs[backend]) for k in KINDS}
                label = f"{threads}({runs[backend][0]['threads']})" if threads == "default" else threads
                print(f"{world:>2} {label:>7} {backend:<10} {total:8.3f} "
                      + " ".join(f"{kinds[k]:14.3f}" for k in KINDS) + f"   {ref / total:5.2f}x", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(everything, f, indent=1)


if __name__ == "__main__":
    main()
