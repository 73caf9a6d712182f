"""A 4-process DDP training job on CPU over agentcomm, beside the same job on Gloo.

Runs standalone (spawns its own ranks) or under torchrun:

    python examples/ddp_demo.py --world-size 4 --steps 30
    torchrun --nproc-per-node=4 examples/ddp_demo.py --backend agentcomm

The model is the seeds' AgentModel (128-256-256-10 MLP) on synthetic data
that has a learnable rule, so the loss visibly falls.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

import agentcomm  # noqa: F401  registers the "agentcomm" backend


class AgentModel(nn.Module):
    def __init__(self, input_dim: int = 128, hidden_dim: int = 256, output_dim: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim),
                                 nn.ReLU(), nn.Linear(hidden_dim, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_data(rank: int, n: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    w = torch.randn(128, 10, generator=g)  # the same hidden rule on every rank
    g.manual_seed(rank)  # each rank sees its own shard
    x = torch.randn(n, 128, generator=g)
    return x, (x @ w).argmax(dim=1)


def train(backend: str, rank: int, world: int, steps: int, batch: int) -> tuple[list[float], list[float]]:
    """Returns (loss per step, seconds per step) on this rank."""
    torch.manual_seed(0)
    group = None if backend == dist.get_backend() else dist.new_group(backend=backend)
    model = DDP(AgentModel(), process_group=group)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    x, y = make_data(rank)
    losses, times = [], []
    for step in range(steps):
        i = (step * batch) % (len(x) - batch)
        start = time.perf_counter()
        opt.zero_grad()
        loss = loss_fn(model(x[i:i + batch]), y[i:i + batch])
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
        reduced = loss.detach().clone()
        dist.all_reduce(reduced, group=group)
        losses.append(reduced.item() / world)
    del model, opt
    return losses, times


def run(rank: int, world: int, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("agentcomm", rank=rank, world_size=world)
    backends = ["agentcomm", "gloo"] if args.backend == "both" else [args.backend]
    results = {b: train(b, rank, world, args.steps, args.batch) for b in backends}
    if rank == 0:
        print(f"DDP on {world} CPU processes, AgentModel 128-256-256-10, batch {args.batch} per rank")
        print(f"{'step':>5} " + " ".join(f"{b + ' loss':>15}" for b in backends))
        for s in range(0, args.steps, max(1, args.steps // 10)):
            print(f"{s:>5} " + " ".join(f"{results[b][0][s]:>15.4f}" for b in backends))
        for b in backends:
            med = statistics.median(results[b][1][3:] or results[b][1]) * 1e3
            print(f"{b:>10}: final loss {results[b][0][-1]:.4f}, median step time {med:.2f} ms")
        if len(backends) == 2:
            same = all(abs(a - b) < 1e-4 for a, b in zip(results["agentcomm"][0], results["gloo"][0]))
            print(f"losses agree with Gloo step by step: {same}")
    import gc

    gc.collect()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--backend", choices=["agentcomm", "gloo", "both"], default="both")
    args = parser.parse_args()
    if "RANK" in os.environ:  # under torchrun
        run(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        os.environ.setdefault("MASTER_PORT", str(s.getsockname()[1]))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    mp.spawn(run, args=(args.world_size, args), nprocs=args.world_size, join=True)


if __name__ == "__main__":
    main()
