"""One-way send/recv time between two ranks (ping-pong), agentcomm beside Gloo.

    python bench/p2p_latency.py [--sizes 4,4096,1048576,16777216] [--repeats 3]

Rank 0 sends, rank 1 receives and sends back; the time per round trip halved is
the one-way time. Two forms: blocking ``dist.send``/``dist.recv``, and
``isend``/``irecv`` then ``wait``. Each backend runs in its own job (fresh
processes), one after the other; the best of ``--repeats`` runs of each form
is printed (the machine's noise only ever adds time).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.distributed as dist

from agentcomm.bench import harness, report
import agentcomm  # noqa: F401


def run(rank: int, world: int, backend: str, sizes: list[int], repeats: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(backend, rank=rank, world_size=world)
    peer = 1 - rank
    for nbytes in sizes:
        x = torch.zeros(max(1, nbytes // 4))
        iters = max(5, min(2000, int(2e8 // max(nbytes, 1))))
        best = {}
        for form in ("blocking", "async"):
            for _ in range(repeats):
                dist.barrier()
                t0 = time.perf_counter()
                for _ in range(iters):
                    if form == "blocking":
                        ops = [lambda: dist.send(x, peer), lambda: dist.recv(x, peer)]
                    else:
                        ops = [lambda: dist.isend(x, peer).wait(), lambda: dist.irecv(x, peer).wait()]
                    for op in ops if rank == 0 else reversed(ops):
                        op()
                one_way = (time.perf_counter() - t0) / iters / 2
                best[form] = min(best.get(form, float("inf")), one_way)
        if rank == 0:
            print(f"{backend:10s} {report.human(nbytes):>6s}  blocking {best['blocking'] * 1e6:9.1f} us"
                  f"   isend/irecv {best['async'] * 1e6:9.1f} us", flush=True)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="4,4096,1048576,16777216", help="bytes, comma separated")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backends", default="agentcomm,gloo")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    for backend in args.backends.split(","):
        harness.spawn_local(run, 2, backend, sizes, args.repeats)


if __name__ == "__main__":
    main()
