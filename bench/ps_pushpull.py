"""Parameter server push/pull throughput between two ranks of one host, beside memcpy.

    python bench/ps_pushpull.py [--numel 25000000] [--reps 10]

Rank 0 serves one shard of ``numel`` float32 (plain SGD, so the server's optimizer step is
one pass over the shard), rank 1 trains. Measured on the worker, median of ``reps`` (the upper one for an even count):

* push: ``ps.push().wait()`` with the server idle -- the gradient received by the server (the
  send completes when the server has copied it out, by rendezvous inside a host), ``.grad``
  already a view of the flat buffer (``zero_grad(set_to_none=False)``);
* push+pack: the same with a fresh ``.grad`` (``zero_grad()``'s default): one more copy;
* pull: ``ps.pull().wait()`` in async mode -- the server's parameters into the model;
* step: ``ps.step()`` -- push, the server's optimizer step, pull;
* memcpy: ``dst.copy_(src)`` of the same bytes in the same process, the machine's rate.

Prints each one's GB/s (bytes of one direction / time) and push and pull as a fraction of memcpy.
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist

from agentcomm.bench import harness
from agentcomm.bench.harness import median_seconds
import agentcomm  # noqa: F401


def run(rank: int, world: int, args: argparse.Namespace) -> None:
    from agentcomm.ps import ParameterServer

    torch.set_num_threads(1)
    dist.init_process_group("agentcomm", rank=rank, world_size=world)
    p = torch.nn.Parameter(torch.zeros(args.numel))
    ps = ParameterServer([p], lambda ps_: torch.optim.SGD(ps_, lr=1e-3), servers=[0], mode="async")
    nbytes = 4 * args.numel
    if ps.is_worker:
        p.grad = torch.ones_like(p)
        src, dst = torch.ones(args.numel), torch.empty(args.numel)
        for _ in range(2):  # warm: first touches, the rendezvous's first mapping
            ps.step()
        def idle_server(fresh: bool) -> None:
            ps.pull().wait()  # the server is idle: its thread answers after the last apply
            if fresh:
                p.grad = torch.ones_like(p)  # as after zero_grad() + backward: one pack copy

        def push() -> None:
            ps.push().wait()

        row = {
            "memcpy": median_seconds(lambda: dst.copy_(src), args.reps),
            "push": median_seconds(push, args.reps, before=lambda: idle_server(False)),
            "push+pack": median_seconds(push, args.reps, before=lambda: idle_server(True)),
            "pull": median_seconds(lambda: ps.pull().wait(), args.reps),
            "step": median_seconds(ps.step, args.reps),
        }
        print(f"{args.numel:,} float32 ({nbytes / 1e6:.0f} MB), median of {args.reps}:")
        for name, s in row.items():
            ratio = f"  {row['memcpy'] / s:5.0%} of memcpy" if name.startswith(("push", "pull")) else ""
            print(f"  {name:>6}: {s * 1e3:7.1f} ms  {nbytes / s / 1e9:5.2f} GB/s{ratio}", flush=True)
    ps.close()
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--numel", type=int, default=25_000_000)
    p.add_argument("--reps", type=int, default=10)
    args = p.parse_args()
    harness.spawn_local(run, 2, args)


if __name__ == "__main__":
    main()
