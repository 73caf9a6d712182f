"""``python -m agentcomm.bench``: time collectives on several backends side by side.

Modelled on nccl-tests: a size sweep (-b/-e/-f), -n timed iterations after -w
warm-up ones, columns size / count / type / op / time / algbw / busbw. Every
backend runs the same sweep in the same job, interleaved size by size, so they
see the same machine noise; the table ends with the ratio to the last backend.
Time per iteration is the slowest rank's; the reported time is the median.

Example:
    python -m agentcomm.bench --backends agentcomm,gloo -W 4 -b 4K -e 64M -f 16384
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

BUS_FACTOR = {  # nccl-tests' busbw factors
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "broadcast": lambda n: 1.0,
    "all_to_all": lambda n: (n - 1) / n,
}
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "int32": torch.int32, "int64": torch.int64}
OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN, "prod": dist.ReduceOp.PRODUCT}


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("B")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def human(n: int) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def sizes(args: argparse.Namespace) -> list[int]:
    out, s = [], args.minbytes
    while s <= args.maxbytes:
        out.append(s)
        s = s * args.stepfactor if args.stepfactor > 1 else s + max(1, args.stepbytes)
    return out


def make_op(coll: str, nbytes: int, dtype: torch.dtype, op, world: int, group):
    esize = torch.tensor([], dtype=dtype).element_size()
    count = max(1, nbytes // esize)
    if coll == "all_reduce":
        t = torch.ones(count, dtype=dtype)
        return count, lambda: dist.all_reduce(t, op=op, group=group)
    if coll == "broadcast":
        t = torch.ones(count, dtype=dtype)
        return count, lambda: dist.broadcast(t, src=0, group=group)
    per = max(1, count // world)
    if coll == "all_gather":
        inp, out = torch.ones(per, dtype=dtype), torch.empty(per * world, dtype=dtype)
        return per * world, lambda: dist.all_gather_into_tensor(out, inp, group=group)
    if coll == "reduce_scatter":
        inp, out = torch.ones(per * world, dtype=dtype), torch.empty(per, dtype=dtype)
        return per * world, lambda: dist.reduce_scatter_tensor(out, inp, op=op, group=group)
    if coll == "all_to_all":
        inp, out = torch.ones(per * world, dtype=dtype), torch.empty(per * world, dtype=dtype)
        return per * world, lambda: dist.all_to_all_single(out, inp, group=group)
    raise ValueError(coll)


def time_op(fn, iters: int, warmup: int, ref_group) -> float:
    """Median over iterations of the slowest rank's time, in seconds."""
    for _ in range(warmup):
        fn()
    samples = torch.empty(iters, dtype=torch.float64)
    for i in range(iters):
        dist.barrier(group=ref_group)
        start = time.perf_counter()
        fn()
        samples[i] = time.perf_counter() - start
    dist.all_reduce(samples, op=dist.ReduceOp.MAX, group=ref_group)
    return float(samples.median())


def worker(rank: int, world: int, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    import agentcomm  # noqa: F401

    timeout = timedelta(seconds=600)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timeout)
    ref = dist.new_group(backend="gloo", timeout=timeout)  # for barriers and timing reductions
    groups = {b: dist.new_group(backend=b, timeout=timeout) for b in args.backends}
    dtype, op = DTYPES[args.datatype], OPS[args.op]
    rows = []
    for coll in args.collectives:
        for nbytes in sizes(args):
            row = {"collective": coll, "bytes": nbytes, "type": args.datatype, "op": args.op}
            for b in args.backends:  # interleaved: every size on every backend before the next size
                count, fn = make_op(coll, nbytes, dtype, op, world, groups[b])
                iters = args.iters if nbytes < (16 << 20) else max(3, args.iters // 4)
                t = time_op(fn, iters, args.warmup, ref)
                algbw = nbytes / t / 1e9
                row[b] = {"time_us": t * 1e6, "algbw": algbw, "busbw": algbw * BUS_FACTOR[coll](world)}
                row["count"] = count
            rows.append(row)
            if rank == 0:
                print_row(row, args.backends, world, file=sys.stdout)
                sys.stdout.flush()
    if rank == 0 and args.json:
        meta = {"world_size": world, "machine": platform.platform(), "cpus": os.cpu_count(),
                "torch": torch.__version__, "agentcomm": agentcomm.__version__, "args": vars(args)}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    dist.barrier(group=ref)
    dist.destroy_process_group()


def print_header(backends: list[str], world: int) -> None:
    cols = f"{'collective':>14} {'size':>8} {'count':>10} {'type':>8} {'op':>4}"
    for b in backends:
        cols += f" | {b[:10]:>10} {'time(us)':>10} {'algbw':>7} {'busbw':>7}"
    if len(backends) > 1:
        cols += f" | {'speedup vs ' + backends[-1]:>16}"
    print(f"# world size {world}; time = median of per-iteration max over ranks; GB/s")
    print(cols)


def print_row(row: dict, backends: list[str], world: int, file) -> None:
    line = f"{row['collective']:>14} {human(row['bytes']):>8} {row['count']:>10} {row['type']:>8} {row['op']:>4}"
    for b in backends:
        r = row[b]
        line += f" | {'':>10} {r['time_us']:>10.1f} {r['algbw']:>7.3f} {r['busbw']:>7.3f}"
    if len(backends) > 1:
        base = row[backends[-1]]["time_us"]
        line += " | " + " ".join(f"{base / row[b]['time_us']:>6.2f}x" for b in backends[:-1])
    print(line, file=file)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m agentcomm.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-b", "--minbytes", type=parse_size, default=parse_size("4K"))
    p.add_argument("-e", "--maxbytes", type=parse_size, default=parse_size("64M"))
    p.add_argument("-f", "--stepfactor", type=int, default=4)
    p.add_argument("-i", "--stepbytes", type=parse_size, default=0)
    p.add_argument("-n", "--iters", type=int, default=20)
    p.add_argument("-w", "--warmup", type=int, default=3)
    p.add_argument("-W", "--world-size", type=int, default=2)
    p.add_argument("-d", "--datatype", choices=sorted(DTYPES), default="float32")
    p.add_argument("-o", "--op", choices=sorted(OPS), default="sum")
    p.add_argument("--collectives", default="all_reduce", help="comma list: " + ",".join(BUS_FACTOR))
    p.add_argument("--backends", default="agentcomm,gloo")
    p.add_argument("--json", default="", help="write results (with versions and machine) to this file")
    args = p.parse_args(argv)
    args.backends = args.backends.split(",")
    args.collectives = args.collectives.split(",")
    print_header(args.backends, args.world_size)
    if "RANK" in os.environ:  # under torchrun
        worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    mp.spawn(worker, args=(args.world_size, args), nprocs=args.world_size, join=True)


if __name__ == "__main__":
    main()  # python -m agentcomm.bench.cli
