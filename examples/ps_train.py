"""Training on a parameter server (agentcomm.ps) on 4 CPU ranks, beside DDP.

    python examples/ps_train.py --mode ddp                   # synchronous all-reduce, for comparison
    python examples/ps_train.py --mode async --slow-rank 3   # nobody waits for the slow rank
    python examples/ps_train.py --mode ssp --staleness 2 --slow-rank 3
    python examples/ps_train.py --mode ssp --staleness 0     # synchronous SGD through the servers
    python examples/ps_train.py --mode async --servers 0 --compression q8   # one dedicated server, 8-bit pushes

The switch from DDP is three lines: build a ParameterServer instead of wrapping the model in
DDP and building an optimizer, call ``ps.step()`` where ``optimizer.step()`` was, and
``ps.close()`` at the end. Data: a synthetic 10-class problem (Gaussian clusters in 64
dimensions), split across ranks. Prints each training rank's steps and step time, and the
test accuracy of the first training rank's model.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist

from agentcomm.bench import harness
import agentcomm  # noqa: F401  (registers the backend)
from agentcomm.ps import ParameterServer
from averaging import dataset  # examples/averaging.py's synthetic problem (this folder is on sys.path)


def run(rank: int, world: int, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("agentcomm", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    x, y = dataset(4000, seed=rank)
    xt, yt = dataset(2000, seed=99)
    if args.mode == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        ps, training = None, True
    else:
        servers = [int(s) for s in args.servers.split(",")] if args.servers else None
        ps = ParameterServer(model, lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), servers=servers,
                             mode=args.mode, staleness=args.staleness, compression=args.compression)
        training = ps.is_worker
    times: list[float] = []
    g = torch.Generator().manual_seed(rank)
    if training:
        for _ in range(args.steps):
            t0 = time.perf_counter()
            idx = torch.randint(0, len(x), (64,), generator=g)
            model.zero_grad(set_to_none=False)  # gradients stay views of the PS's buffer: no copy
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            if rank == args.slow_rank:
                time.sleep(0.005)  # a straggler: slower hardware, a noisy neighbour
            if ps is None:
                opt.step()
            else:
                ps.step()  # push the gradients, pull the parameters (waits only as the mode says)
            times.append(time.perf_counter() - t0)
        print(f"rank {rank}: {len(times)} steps, median {statistics.median(times) * 1e3:.2f} ms", flush=True)
    if ps is not None:
        ps.close()  # a server (or a rank that serves and trains) answers until every worker closed
    first = ps.workers[0] if ps is not None else 0
    if rank == first:  # its model holds the parameters of its last pull
        with torch.no_grad():
            acc = (model(xt).argmax(1) == yt).float().mean().item()
        print(f"{args.mode}: rank {rank}'s model, test accuracy {acc:.3f}", flush=True)
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["ddp", "async", "ssp"], default="async")
    p.add_argument("--staleness", type=int, default=2)
    p.add_argument("--servers", default="", help="comma-separated server ranks (default: a shard on every rank)")
    p.add_argument("--compression", default=None, help="topk, q8, q4 or q1 (default: dense)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--slow-rank", type=int, default=-1)
    p.add_argument("--world-size", type=int, default=4)
    args = p.parse_args()
    harness.spawn_local(run, args.world_size, args)


if __name__ == "__main__":
    main()
