"""DDP with gradient compression on agentcomm: the same job with each compression hook.

    python examples/compression.py --world-size 4 --steps 100

Every strategy trains the same model from the same initialisation on the same synthetic
data; the table shows the final loss, the mean step time, and what the hook's accounting
says went over the wire (ratio: a dense ring's bytes / bytes actually sent).

On one host the dense all-reduce runs over shared memory and wins; compression pays where
the network is the bottleneck (bench/RESULTS.md: two hosts at 1 Gbit/s, python -m agentcomm.emulate).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.distributed as dist

import agentcomm  # noqa: F401  (registers the backend)
import agentcomm.hooks as H
from agentcomm.bench import harness

STRATEGIES = {
    "dense": None,
    "topk-1%": lambda: (H.TopKState(ratio=0.01, warmup_iters=5), H.topk_hook),
    "dgc-1%": lambda: (H.TopKState(ratio=0.01, method="dgc", warmup_iters=5), H.topk_hook),
    "randomk-5%": lambda: (H.RandomKState(ratio=0.05, warmup_iters=5), H.randomk_hook),
    "8-bit": lambda: (H.QuantizeState(bits=8), H.quantize_hook),
    "4-bit": lambda: (H.QuantizeState(bits=4), H.quantize_hook),
    "1-bit": lambda: (H.QuantizeState(bits=1, warmup_iters=5), H.quantize_hook),
    "bf16": lambda: (H.CastState(dtype=torch.bfloat16), H.cast_hook),
}


def train(rank: int, world: int, name: str, steps: int) -> tuple[float, float, H.CompressionStats | None]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                                torch.nn.ReLU(), torch.nn.Linear(512, 10))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    state = None
    if STRATEGIES[name] is not None:
        state, hook = STRATEGIES[name]()
        ddp.register_comm_hook(state, hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(rank)
    w = torch.randn(128, 10, generator=torch.Generator().manual_seed(7))  # the task, same on every rank
    times = []
    loss = torch.tensor(0.0)
    for _ in range(steps):
        x = torch.randn(64, 128, generator=g)
        y = (x @ w + 0.5 * torch.randn(64, 10, generator=g)).argmax(1)
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(ddp(x), y)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return float(loss.detach()), 1e3 * sum(times) / len(times), state.stats() if state else None


def run(rank: int, world: int, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("agentcomm", rank=rank, world_size=world)
    if rank == 0:
        print(f"DDP on {world} CPU ranks, 128-512-512-10 MLP, {args.steps} steps, batch 64 per rank")
        print(f"{'strategy':>12} {'final loss':>11} {'step (ms)':>10} {'wire MB':>8} {'ratio':>7} {'enc+dec ms':>11}")
    for name in STRATEGIES:
        loss, ms, stats = train(rank, world, name, args.steps)
        if rank == 0:
            if stats is None:
                print(f"{name:>12} {loss:>11.4f} {ms:>10.2f} {'-':>8} {'-':>7} {'-':>11}")
            else:
                dense = 2 * (world - 1) / world * stats.raw_bytes
                print(f"{name:>12} {loss:>11.4f} {ms:>10.2f} {stats.sent_bytes / 1e6:>8.2f} "
                      f"{dense / max(1, stats.sent_bytes):>6.1f}x "
                      f"{1e3 * (stats.encode_seconds + stats.decode_seconds):>11.1f}")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    harness.spawn_local(run, args.world_size, args)


if __name__ == "__main__":
    main()
