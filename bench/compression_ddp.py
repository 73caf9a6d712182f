"""DDP step time with each gradient-compression hook (and torch's own hooks) on a slow link.

Meant for two "hosts" (the emulator runs it in two network namespaces):

    sudo python -m agentcomm.emulate --cluster 2x1@1gbit -- python bench/compression_ddp.py --steps 6

or on one host: ``python bench/compression_ddp.py -W 2``. A 25M-parameter MLP
(1024-4096-4096-1024, the model of ../shared/FACTS.md's DDP measurement), batch 32 per rank;
each strategy runs 2 untimed then ``--steps`` timed steps; the table gives the mean step time
of the slowest rank and the speed-up over DDP on Gloo.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

import agentcomm  # noqa: F401
import agentcomm.hooks as H
from agentcomm.bench import harness


def strategies() -> dict:
    return {
        "gloo": ("gloo", None),
        "agentcomm": ("agentcomm", None),
        "torch fp16_compress_hook": ("agentcomm", lambda g: (g, default_hooks.fp16_compress_hook)),
        "torch PowerSGD rank 4": ("agentcomm", lambda g: (powerSGD_hook.PowerSGDState(
            process_group=g, matrix_approximation_rank=4, start_powerSGD_iter=2), powerSGD_hook.powerSGD_hook)),
        "agentcomm bf16": ("agentcomm", lambda g: (H.CastState(g, dtype=torch.bfloat16), H.cast_hook)),
        "agentcomm 8-bit": ("agentcomm", lambda g: (H.QuantizeState(g, bits=8), H.quantize_hook)),
        "agentcomm 4-bit": ("agentcomm", lambda g: (H.QuantizeState(g, bits=4), H.quantize_hook)),
        "agentcomm 1-bit": ("agentcomm", lambda g: (H.QuantizeState(g, bits=1), H.quantize_hook)),
        "agentcomm top-k 1%": ("agentcomm", lambda g: (H.TopKState(g, ratio=0.01), H.topk_hook)),
        "agentcomm DGC 1%": ("agentcomm", lambda g: (H.TopKState(g, ratio=0.01, method="dgc"), H.topk_hook)),
        "agentcomm random-k 1%": ("agentcomm", lambda g: (H.RandomKState(g, ratio=0.01), H.randomk_hook)),
    }


def step_time(group: dist.ProcessGroup, hook, steps: int, ref: dist.ProcessGroup) -> float:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 4096),
                                torch.nn.ReLU(), torch.nn.Linear(4096, 1024))
    ddp = torch.nn.parallel.DistributedDataParallel(model, process_group=group)
    if hook is not None:
        ddp.register_comm_hook(*hook(group))
    opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
    x, y = torch.randn(32, 1024), torch.randn(32, 1024)
    times = []
    for i in range(2 + steps):
        dist.barrier(group=ref)
        t0 = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.mse_loss(ddp(x), y).backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    mean = torch.tensor([sum(times) / len(times)], dtype=torch.float64)
    dist.all_reduce(mean, op=dist.ReduceOp.MAX, group=ref)
    return float(mean)


def run(rank: int, world: int, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    timeout = timedelta(seconds=600)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timeout)
    groups = {b: dist.new_group(backend=b, timeout=timeout) for b in ("gloo", "agentcomm")}
    ref = dist.new_group(backend="gloo", timeout=timeout)
    if rank == 0:
        print(f"DDP, 25.2M-parameter MLP, batch 32 per rank, {world} ranks, mean of {args.steps} steps")
        print(f"{'strategy':>26} {'step (ms)':>10} {'vs gloo':>8}")
    base = None
    for name, (backend, hook) in strategies().items():
        if args.only and name not in args.only:
            continue
        t = step_time(groups[backend], hook, args.steps, ref)
        base = base or t
        if rank == 0:
            print(f"{name:>26} {t * 1e3:>10.1f} {base / t:>7.2f}x", flush=True)
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-W", "--world-size", type=int, default=2, help="ranks to spawn (ignored under torchrun)")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--only", nargs="*", default=[], help="strategy names to run (default: all)")
    args = p.parse_args()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # torchrun / python -m agentcomm.emulate
        run(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args)
    else:
        harness.spawn_local(run, args.world_size, args)


if __name__ == "__main__":
    main()
