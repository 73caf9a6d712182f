"""The measuring core shared by ``python -m agentcomm.bench`` and the scripts in bench/.

One *case* is (collective, bytes, place) on one backend's process group:
:func:`make_case` builds its tensors and a zero-argument callable, :func:`check_case`
runs it once on known inputs and counts wrong elements against the closed form,
:func:`time_case` times it the way nccl-tests does.

Example (inside an initialised job)::

    case = make_case("all_reduce", 1 << 20, "ip", torch.float32, "sum", group)
    wrong = check_case(case)
    seconds = time_case(case, iters=20, warmup=5, ref_group=gloo_group)
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "all_to_all", "reduce", "gather",
               "scatter", "sendrecv")

BUS_FACTOR: dict[str, Callable[[int], float]] = {  # nccl-tests' busbw factors (doc/PERFORMANCE.md)
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "broadcast": lambda n: 1.0,
    "all_to_all": lambda n: (n - 1) / n,
    "reduce": lambda n: 1.0,
    "gather": lambda n: (n - 1) / n,
    "scatter": lambda n: (n - 1) / n,
    "sendrecv": lambda n: 1.0,
}

# torch's collective API has no out-of-place all_reduce/broadcast/reduce, nor an in-place
# all_to_all/gather/scatter.
PLACES = {"all_reduce": ("ip",), "broadcast": ("ip",), "all_gather": ("oop", "ip"),
          "reduce_scatter": ("oop", "ip"), "all_to_all": ("oop",), "reduce": ("ip",), "gather": ("oop",),
          "scatter": ("oop",), "sendrecv": ("oop",)}

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16, "int32": torch.int32, "int64": torch.int64, "int8": torch.int8,
          "uint8": torch.uint8}
OPS = {"sum": dist.ReduceOp.SUM, "avg": dist.ReduceOp.AVG, "prod": dist.ReduceOp.PRODUCT,
       "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
# Relative tolerance of the check, per dtype (inputs are small integers, so
# sums are exact; AVG's division is rounded once).
TOLERANCE = {torch.float32: 1e-6, torch.float64: 1e-12, torch.float16: 1e-3, torch.bfloat16: 1e-2}


# torch 2.13 renamed reduce_scatter_tensor (and warns on the old name).
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


@dataclass
class Case:
    collective: str
    place: str            # "oop" (separate output) or "ip" (output aliases input)
    count: int            # elements of the reported size
    dtype: torch.dtype
    op: str
    group: dist.ProcessGroup
    run: Callable[[], object]
    reset: Callable[[], None]      # restore timing inputs (in-place ops change them)
    fill: Callable[[], None]       # load the check inputs
    result: Callable[[], torch.Tensor]
    expected: Callable[[], torch.Tensor]


def _value(op: str, rank: int, index: torch.Tensor) -> torch.Tensor:
    """Rank ``rank``'s check input at ``index``: small integers, exact in every dtype."""
    if op == "prod":
        return 1 + (index + rank) % 2            # products stay <= 2**8
    if op in ("min", "max"):
        return (rank * 7 + index) % 11
    return (rank + 1) + index % 5                 # sum / avg


def _reduced(op: str, world: int, index: torch.Tensor) -> torch.Tensor:
    vals = torch.stack([_value(op, r, index).double() for r in range(world)])
    if op == "prod":
        return vals.prod(0)
    if op == "min":
        return vals.min(0).values
    if op == "max":
        return vals.max(0).values
    total = vals.sum(0)
    return total / world if op == "avg" else total


def make_case(collective: str, nbytes: int, place: str, dtype: torch.dtype, op: str,
              group: dist.ProcessGroup) -> Case:
    """Tensors and callables for one collective of ``nbytes`` (the nccl-tests size:
    the all_reduce/broadcast/reduce buffer, the all_gather/gather output, the
    reduce_scatter/scatter input). The root of rooted collectives is group rank 0."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    esize = torch.tensor([], dtype=dtype).element_size()
    rop = OPS[op]
    root = dist.get_global_rank(group, 0)
    if collective == "sendrecv":  # nccl-tests' sendrecv: to rank + 1, from rank - 1, at once
        count = max(1, nbytes // esize)
        inp, out = torch.ones(count, dtype=dtype), torch.ones(count, dtype=dtype)
        to, frm = dist.get_global_rank(group, (rank + 1) % world), dist.get_global_rank(group, (rank - 1) % world)

        def run() -> None:
            ops = [dist.P2POp(dist.isend, inp, to, group), dist.P2POp(dist.irecv, out, frm, group)]
            for w in dist.batch_isend_irecv(ops):
                w.wait()
        expected = lambda: _value(op, (rank - 1) % world, torch.arange(count)).double()  # noqa: E731
        fill = lambda: (inp.copy_(_value(op, rank, torch.arange(count))), out.fill_(-1))  # noqa: E731
        return Case(collective, place, count, dtype, op, group, run, lambda: None, fill, lambda: out, expected)
    if collective in ("all_reduce", "broadcast", "reduce"):
        count = max(1, nbytes // esize)
        buf = torch.ones(count, dtype=dtype)
        idx = torch.arange(count)
        if collective == "all_reduce":
            run = lambda: dist.all_reduce(buf, op=rop, group=group)  # noqa: E731
            expected = lambda: _reduced(op, world, idx)  # noqa: E731
            fill = lambda: buf.copy_(_value(op, rank, idx))  # noqa: E731
        elif collective == "reduce":
            run = lambda: dist.reduce(buf, dst=root, op=rop, group=group)  # noqa: E731
            # Only the root's buffer is defined afterwards: other ranks check nothing.
            expected = (lambda: _reduced(op, world, idx)) if rank == 0 else (lambda: buf.double())  # noqa: E731
            fill = lambda: buf.copy_(_value(op, rank, idx))  # noqa: E731
        else:
            run = lambda: dist.broadcast(buf, src=root, group=group)  # noqa: E731
            expected = lambda: _value(op, 0, idx).double()  # noqa: E731
            fill = lambda: buf.copy_(_value(op, rank, idx) if rank == 0 else torch.full_like(idx, -1))  # noqa: E731
        return Case(collective, place, count, dtype, op, group, run, lambda: buf.fill_(1), fill, lambda: buf,
                    expected)
    per = max(1, nbytes // esize // world)
    count = per * world
    full = torch.ones(count, dtype=dtype)
    if collective == "all_gather":
        out = full
        inp = out[rank * per:(rank + 1) * per] if place == "ip" else torch.ones(per, dtype=dtype)
        run = lambda: dist.all_gather_into_tensor(out, inp, group=group)  # noqa: E731
        expected = lambda: torch.cat([_value(op, j, torch.arange(per)).double() for j in range(world)])  # noqa: E731
        fill = lambda: (out.fill_(-1), inp.copy_(_value(op, rank, torch.arange(per))))  # noqa: E731
        return Case(collective, place, count, dtype, op, group, run, lambda: None, fill, lambda: out, expected)
    if collective == "reduce_scatter":
        inp = full
        out = inp[rank * per:(rank + 1) * per] if place == "ip" else torch.ones(per, dtype=dtype)
        run = lambda: _reduce_scatter(out, inp, op=rop, group=group)  # noqa: E731
        expected = lambda: _reduced(op, world, torch.arange(rank * per, (rank + 1) * per))  # noqa: E731

        def fill() -> None:
            inp.copy_(_value(op, rank, torch.arange(count)))
            if place == "oop":
                out.fill_(-1)
        return Case(collective, place, count, dtype, op, group, run, lambda: inp.fill_(1), fill, lambda: out,
                    expected)
    if collective == "all_to_all":
        inp, out = full, torch.ones(count, dtype=dtype)
        run = lambda: dist.all_to_all_single(out, inp, group=group)  # noqa: E731
        # Rank j sends its slice r to rank r; the value encodes the global index it had on j.
        expected = lambda: torch.cat([_value(op, j, torch.arange(rank * per, (rank + 1) * per)).double()  # noqa: E731
                                      for j in range(world)])
        fill = lambda: (inp.copy_(_value(op, rank, torch.arange(count))), out.fill_(-1))  # noqa: E731
        return Case(collective, place, count, dtype, op, group, run, lambda: None, fill, lambda: out, expected)
    if collective == "gather":
        inp = torch.ones(per, dtype=dtype)
        parts = list(full.chunk(world)) if rank == 0 else None
        run = lambda: dist.gather(inp, parts, dst=root, group=group)  # noqa: E731
        if rank == 0:
            expected = lambda: torch.cat([_value(op, j, torch.arange(per)).double() for j in range(world)])  # noqa: E731
        else:
            expected = lambda: full.double()  # noqa: E731
        fill = lambda: (full.fill_(-1), inp.copy_(_value(op, rank, torch.arange(per))))  # noqa: E731
        return Case(collective, place, count, dtype, op, group, run, lambda: None, fill, lambda: full, expected)
    if collective == "scatter":
        out = torch.ones(per, dtype=dtype)
        parts = list(full.chunk(world)) if rank == 0 else None
        run = lambda: dist.scatter(out, parts, src=root, group=group)  # noqa: E731
        # The root's input encodes the global index: rank r gets its slice of it.
        expected = lambda: _value(op, 0, torch.arange(rank * per, (rank + 1) * per)).double()  # noqa: E731
        fill = lambda: (full.copy_(_value(op, 0, torch.arange(count))), out.fill_(-1))  # noqa: E731
        return Case(collective, place, count, dtype, op, group, run, lambda: None, fill, lambda: out, expected)
    raise ValueError(f"unknown collective {collective!r}; choose from {', '.join(COLLECTIVES)}")


def check_case(case: Case) -> int:
    """Runs the case once on the check inputs; returns the number of wrong elements on this rank."""
    case.fill()
    case.run()
    got = case.result().double()
    want = case.expected()
    tol = TOLERANCE.get(case.dtype, 0.0)
    bad = (got - want).abs() > tol * want.abs().clamp(min=1.0)
    case.reset()
    return int(bad.sum())


def time_case(case: Case, iters: int, warmup: int, ref_group: dist.ProcessGroup, timing: str = "batch",
              batches: int = 5, budget_s: float = 2.0) -> float:
    """Seconds per operation: the median over ``batches`` of the slowest rank's time.

    ``timing="batch"`` (nccl-tests): after a barrier on the tested group, ``iters``
    operations back to back, averaged; skew in leaving the barrier is amortised.
    ``timing="iter"``: each operation timed alone after a barrier of ``ref_group``
    (sensitive to that barrier's skew, which for Gloo is hundreds of microseconds).
    Large sizes run fewer iterations so that one case stays near ``budget_s``.
    """
    case.reset()
    t0 = time.perf_counter()
    for _ in range(max(1, warmup)):
        case.run()
    per_op = (time.perf_counter() - t0) / max(1, warmup)
    probe = torch.tensor([per_op], dtype=torch.float64)
    dist.all_reduce(probe, op=dist.ReduceOp.MAX, group=ref_group)  # every rank must pick the same counts
    n = max(1, min(iters, int(budget_s / batches / max(probe.item(), 1e-9))))
    if timing == "iter":  # the median over iterations of the slowest rank's time
        samples = torch.empty(batches * n, dtype=torch.float64)
        for i in range(batches * n):
            if i % n == 0:
                case.reset()
            dist.barrier(group=ref_group)
            start = time.perf_counter()
            case.run()
            samples[i] = time.perf_counter() - start
    else:
        samples = torch.empty(batches, dtype=torch.float64)
        for b in range(batches):
            case.reset()
            dist.barrier(group=case.group)
            start = time.perf_counter()
            for _ in range(n):
                case.run()
            samples[b] = (time.perf_counter() - start) / n
    dist.all_reduce(samples, op=dist.ReduceOp.MAX, group=ref_group)
    return float(samples.median())


def median_seconds(fn: Callable[[], object], reps: int, before: Callable[[], object] | None = None) -> float:
    """``fn``'s time, the median of ``reps`` calls (the upper one for an even count);
    ``before``, when given, runs untimed ahead of each call (a barrier, a reset).

    Example:
        >>> median_seconds(lambda: sum(range(1000)), 5) > 0
        True
    """
    times = []
    for _ in range(reps):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def spawn_local(fn: Callable[..., None], world: int, *args: Any) -> None:
    """Runs ``fn(rank, world, *args)`` on ``world`` local processes with an env://
    rendezvous on a free loopback port (what the examples and bench scripts share).

    Example:
        >>> spawn_local(worker, 4, args)  # doctest: +SKIP
    """
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    mp.spawn(fn, args=(world, *args), nprocs=world, join=True)
