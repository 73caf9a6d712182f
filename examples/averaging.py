"""Training with each synchronisation strategy on 4 CPU ranks, on agentcomm.

    python examples/averaging.py --strategy periodic       # local SGD, average every 4 steps
    python examples/averaging.py --strategy sync           # plain DDP: gradients all-reduced every step
    python examples/averaging.py --strategy hierarchical   # pairs every 2 steps, all ranks every 8
    python examples/averaging.py --strategy weighted       # uneven shards, weighted by samples seen
    python examples/averaging.py --strategy async --slow-rank 3   # background averaging, one slow rank

Data: a synthetic 10-class problem (Gaussian clusters in 64 dimensions), split across ranks.
Prints the test accuracy of rank 0's model and its mean and median step time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist

from agentcomm.bench import harness
import agentcomm  # noqa: F401  (registers the backend)
from agentcomm.averaging import AsyncAverager, HierarchicalAverager, PeriodicAverager, WeightedAverager


def dataset(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    centers = torch.randn(10, 64, generator=g) * 2.0
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    return centers[y] + torch.randn(n, 64, generator=g) * 7.0, y


def run(rank: int, world: int, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("agentcomm", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                                torch.nn.ReLU(), torch.nn.Linear(256, 10))
    shard = 2000 * (rank + 1) if args.strategy == "weighted" else 4000  # uneven shards for "weighted"
    x, y = dataset(shard, seed=rank)
    xt, yt = dataset(2000, seed=99)
    if args.strategy == "sync":
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    averager = {
        "sync": None,
        "periodic": PeriodicAverager(period=4),
        "hierarchical": HierarchicalAverager({2: 2, 8: world}),
        "weighted": WeightedAverager(period=4),
        "async": AsyncAverager(period=4, max_staleness=2),
    }[args.strategy]
    times = []
    g = torch.Generator().manual_seed(rank)
    for step in range(args.steps):
        t0 = time.perf_counter()
        idx = torch.randint(0, len(x), (64,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        if rank == args.slow_rank:
            time.sleep(0.005)  # a straggler: slower hardware, noisy neighbour
        if isinstance(averager, WeightedAverager):
            averager.average_parameters(model.parameters(), weight=float(shard))
        elif averager is not None:
            averager.average_parameters(model.parameters())
        times.append(time.perf_counter() - t0)
    if isinstance(averager, AsyncAverager):
        averager.synchronize(model.parameters())
    if averager is not None:  # end on a common model
        PeriodicAverager(period=1).average_parameters(model.parameters())
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    if rank == 0:
        print(f"{args.strategy:>12}: test accuracy {acc:.3f}, mean step {statistics.mean(times) * 1e3:.2f} ms, "
              f"median {statistics.median(times) * 1e3:.2f} ms")
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategy", choices=["sync", "periodic", "hierarchical", "weighted", "async"], default="periodic")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--world-size", type=int, default=4)
    p.add_argument("--slow-rank", type=int, default=-1)
    args = p.parse_args()
    harness.spawn_local(run, args.world_size, args)


if __name__ == "__main__":
    main()
