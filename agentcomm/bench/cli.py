"""``python -m agentcomm.bench``: time collectives on several backends side by side.

Modelled on nccl-tests: a size sweep (-b/-e/-f), -n timed iterations after -w
warm-up ones, -c to check results, dtype (-d) and op (-o) choice, out-of-place
and in-place forms (-I), and the columns size / count / type / op / time /
algbw / busbw / #wrong, with nccl-tests' bus-bandwidth factors. Every backend
runs the same sweep in the same job, interleaved case by case, so that they see
the same machine noise; the last column is the speed-up against the last
backend. Results can also go to JSON (--json) and CSV (--csv) with versions and
machine, and to a plot of busbw and latency against size (--plot, matplotlib).

Ranks: spawned here (-W N), taken from torchrun's environment, or spread over an emulated
cluster (--emulate HOSTSxRANKS[@RATE], root only: see ``python -m agentcomm.emulate``).

Examples:
    python -m agentcomm.bench --backends agentcomm,gloo -W 4 -b 8 -e 256M -f 4
    python -m agentcomm.bench --collectives all -W 2 -b 1K -e 64M -f 8 -c 1 --csv out.csv --plot out.png
    torchrun --nproc-per-node 4 -m agentcomm.bench --backends agentcomm,gloo
    python -m agentcomm.bench --emulate 4x2@1gbit -b 4K -e 64M -f 16384
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from datetime import timedelta

import torch
import torch.distributed as dist

from agentcomm.bench import compressed, harness, report


def parse_size(text: str) -> int:
    """'64M' -> 67108864; plain numbers are bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("B")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def sizes(args: argparse.Namespace) -> list[int]:
    out, s = [], args.minbytes
    while s <= args.maxbytes:
        out.append(s)
        s = s * args.stepfactor if args.stepfactor > 1 else s + max(1, args.stepbytes)
    return out


def places(coll: str, inplace: int) -> tuple[str, ...]:
    have = harness.PLACES[coll]
    if inplace == 2 or len(have) == 1:
        return have
    want = "ip" if inplace == 1 else "oop"
    return (want,) if want in have else have


def _transport(group: dist.ProcessGroup) -> str:
    try:
        return str(group._get_backend(torch.device("cpu")).transport)
    except Exception:  # not an agentcomm group
        return ""


def worker(rank: int, world: int, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    import agentcomm

    timeout = timedelta(seconds=args.timeout)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timeout)
    ref = dist.new_group(backend="gloo", timeout=timeout)  # for timing reductions
    bases = {compressed.split_backend(b)[0] for b in args.backends}
    base_groups = {b: dist.new_group(backend=b, timeout=timeout) for b in sorted(bases)}
    groups = {b: base_groups[compressed.split_backend(b)[0]] for b in args.backends}
    dtype = harness.DTYPES[args.datatype]
    plan = [(c, s, pl) for c in args.collectives for s in sizes(args) for pl in places(c, args.inplace)]
    progress = report.Progress(len(plan) * len(args.backends), None if args.progress is None else args.progress)
    progress.enabled = progress.enabled and rank == 0
    if rank == 0:
        report.print_header(args.backends, world)
    rows = []
    for coll, nbytes, place in plan:
        row = {"collective": coll, "place": place, "bytes": nbytes, "type": args.datatype, "op": args.op}
        for b in args.backends:  # interleaved: this case on every backend before the next case
            progress.step(f"{coll} {place} {report.human(nbytes)} {b}")
            scheme = compressed.split_backend(b)[1]
            counters = None
            if scheme:
                if coll != "all_reduce":
                    row[b] = None  # compression is an all-reduce
                    continue
                case, counters = compressed.make_compressed_case(scheme, nbytes, groups[b])
            else:
                case = harness.make_case(coll, nbytes, place, dtype, args.op, groups[b])
            wrong = -1
            if args.check and not scheme:
                mine = torch.tensor([harness.check_case(case)], dtype=torch.int64)
                dist.all_reduce(mine, group=ref)
                wrong = int(mine.item())
            t = harness.time_case(case, args.iters, args.warmup, ref, timing=args.timing)
            algbw = nbytes / t / 1e9
            row[b] = {"time_us": t * 1e6, "algbw": algbw, "busbw": algbw * harness.BUS_FACTOR[coll](world),
                      "wrong": wrong}
            if counters is not None:
                row[b].update(counters.per_op())
                row[b]["ratio"] = compressed.dense_ring_wire(nbytes, world) / max(1.0, row[b]["wire_bytes"])
            row["count"] = case.count
        rows.append(row)
        if rank == 0:
            progress.clear()
            report.print_row(row, args.backends)
    progress.close()
    if rank == 0 and any(compressed.split_backend(b)[1] for b in args.backends):
        report.print_compression(rows, args.backends, world)
    if rank == 0 and (args.json or args.csv or args.plot):
        meta = {"world_size": world, "backends": args.backends, "machine": report.machine_info(),
                "torch": torch.__version__, "agentcomm": agentcomm.__version__,
                "agentcomm_transport": {b: _transport(g) for b, g in groups.items() if _transport(g)},
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv),
                "args": {k: v for k, v in vars(args).items()}}
        if args.json:
            report.write_json(args.json, rows, meta)
        if args.csv:
            report.write_csv(args.csv, rows, meta)
        if args.plot:
            report.plot(args.plot, rows, meta)
    wrong = sum(max(0, r[b]["wrong"]) for r in rows for b in args.backends if r[b] is not None)
    dist.barrier(group=ref)
    dist.destroy_process_group()
    if wrong:
        raise SystemExit(f"rank {rank}: {wrong} wrong elements in the -c check")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m agentcomm.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-b", "--minbytes", type=parse_size, default=parse_size("4K"), help="smallest size (e.g. 8, 4K)")
    p.add_argument("-e", "--maxbytes", type=parse_size, default=parse_size("64M"), help="largest size (e.g. 256M)")
    p.add_argument("-f", "--stepfactor", type=int, default=4, help="multiply the size by this each step")
    p.add_argument("-i", "--stepbytes", type=parse_size, default=0, help="or add this many bytes (with -f 1)")
    p.add_argument("-n", "--iters", type=int, default=100,
                   help="timed iterations per batch (5 batches; fewer for large sizes, ~2 s per case)")
    p.add_argument("-w", "--warmup", type=int, default=5, help="warm-up iterations")
    p.add_argument("-c", "--check", type=int, default=0, help="1: check results against the closed form")
    p.add_argument("-I", "--inplace", type=int, default=0, choices=(0, 1, 2),
                   help="0: out-of-place, 1: in-place, 2: both (where the torch API has the form)")
    p.add_argument("-W", "--world-size", type=int, default=2, help="ranks to spawn (ignored under torchrun)")
    p.add_argument("-d", "--datatype", choices=sorted(harness.DTYPES), default="float32")
    p.add_argument("-o", "--op", choices=sorted(harness.OPS), default="sum")
    p.add_argument("--collectives", default="all_reduce",
                   help="comma list of " + ",".join(harness.COLLECTIVES) + ", or 'all'")
    p.add_argument("--backends", default="agentcomm,gloo",
                   help="comma list; the last one is the baseline. agentcomm:<scheme> runs a compressed "
                        "all-reduce: topk=R, dgc=R, randomk=R, q8, q4, q1, fp16, bf16 (agentcomm/bench/compressed.py)")
    p.add_argument("--timing", choices=("batch", "iter"), default="batch",
                   help="batch: n ops back to back per sample (nccl-tests); iter: each op after a barrier")
    p.add_argument("--json", default="", help="write rows + versions + machine to this file")
    p.add_argument("--csv", default="", help="write one line per (case, backend) to this file")
    p.add_argument("--plot", default="", help="draw busbw and latency against size to this PNG (matplotlib)")
    p.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--timeout", type=float, default=900, help="process-group timeout, seconds")
    p.add_argument("--emulate", default="", metavar="HxR[@RATE]",
                   help="run on an emulated cluster of H hosts x R ranks (root; e.g. 4x2@1gbit)")
    return p


def _without_emulate(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--emulate":
            skip = True
        elif not a.startswith("--emulate="):
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.backends = args.backends.split(",")
    args.collectives = list(harness.COLLECTIVES) if args.collectives == "all" else args.collectives.split(",")
    for c in args.collectives:
        if c not in harness.COLLECTIVES:
            raise SystemExit(f"unknown collective {c!r}; choose from {', '.join(harness.COLLECTIVES)}")
    if args.emulate and "RANK" not in os.environ:  # re-run this command once per emulated rank
        from agentcomm.emulate import Cluster, ClusterSpec, EmulateError
        try:
            with Cluster(ClusterSpec.parse(args.emulate)) as cluster:
                code = cluster.launch([sys.executable, "-m", "agentcomm.bench",
                                       *_without_emulate(sys.argv[1:] if argv is None else argv)])
        except EmulateError as e:
            raise SystemExit(f"--emulate {args.emulate}: {e}") from None
        raise SystemExit(code)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # under torchrun
        worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args)
        return
    harness.spawn_local(worker, args.world_size, args)


if __name__ == "__main__":
    main()  # python -m agentcomm.bench.cli
