"""Step time of periodic vs asynchronous (bounded-staleness) averaging under transient slowness.

    python bench/averaging_straggler.py [--steps 200] [--world-size 4]

Each rank does a little compute per step and, with probability 1/4 per step (independently,
seeded), stalls for 8 ms (a noisy neighbour, a page fault storm, a GC pause). Synchronous
averaging every 4 steps makes every window cost the slowest rank's window; bounded staleness
lets a rank run ahead while an averaging is in flight, so stalls on different ranks overlap.
Prints the wall time per step (slowest rank) of each strategy, run one after the other.
"""

from __future__ import annotations

import argparse
import random
import time

import torch
import torch.distributed as dist

from agentcomm.bench import harness
import agentcomm  # noqa: F401
from agentcomm.averaging import AsyncAverager, PeriodicAverager


def run(rank: int, world: int, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("agentcomm", rank=rank, world_size=world)
    for name in ("periodic", "async", "periodic", "async"):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256))
        averager = PeriodicAverager(period=4) if name == "periodic" else AsyncAverager(period=4, max_staleness=2)
        rng = random.Random(1000 * rank + 7)
        x = torch.randn(32, 256)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            model(x).sum().backward()
            if rng.random() < 0.25:
                time.sleep(0.008)
            averager.average_parameters(model.parameters())
        if isinstance(averager, AsyncAverager):
            averager.synchronize(model.parameters())
        elapsed = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        if rank == 0:
            print(f"{name:>9}: {elapsed.item() / args.steps * 1e3:6.2f} ms per step (slowest rank)", flush=True)
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--world-size", type=int, default=4)
    args = p.parse_args()
    harness.spawn_local(run, args.world_size, args)


if __name__ == "__main__":
    main()
