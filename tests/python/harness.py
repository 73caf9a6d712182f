"""Multi-process harness for the Python tests.

``run_world(fn, world_size)`` spawns ``world_size`` fresh processes, gives each
the env:// rendezvous variables, runs ``fn(rank, world_size, *args)`` and
returns the per-rank results. Every call has a deadline: on timeout, on a rank
failing, or on any exception in the parent, all ranks are killed and reaped,
so a broken backend can fail a test but never hang the suite.

Example:
    >>> def body(rank, world):  # must live at module level (spawn pickles it)
    ...     return rank
    >>> run_world(body, 2)  # doctest: +SKIP
    [0, 1]
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import shutil
import socket
import sys
import time
import traceback
from typing import Any, Callable, Optional

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# Tests that build an emulated cluster (network namespaces, veth pairs, tc) skip without root
# and iproute2; CI runs as root.
needs_namespaces = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None,
    reason="needs root and iproute2 (network namespaces, veth pairs, tc)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unpickled(item: tuple) -> tuple:
    rank, status, value = item
    return rank, status, pickle.loads(value) if status == "ok" else value


def _entry(fn: Callable, rank: int, world: int, port: int, env: dict, results: mp.Queue, args: tuple) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    os.environ.update(env)
    try:
        import torch

        torch.set_num_threads(1)  # 2 cores shared by up to 8 ranks
        import agentcomm  # noqa: F401  registers the backend

        # Plain pickle, not multiprocessing's: torch shares a tensor through a file descriptor
        # that dies with this process, which may exit before the parent reads the result.
        value = pickle.dumps(fn(rank, world, *args))
        results.put((rank, "ok", value))
    except BaseException:  # noqa: BLE001 - report everything to the parent
        results.put((rank, "error", traceback.format_exc()))
    finally:
        try:
            import torch.distributed as dist

            if dist.is_initialized():
                import gc

                gc.collect()
                dist.destroy_process_group()
        except BaseException:  # noqa: BLE001
            pass


def init_error(rank: int, world: int) -> str:
    """A rank body: the text of the error init_process_group("agentcomm") raises, or "no error".

    Example:
        >>> run_world(init_error, 1, env={"AGENTCOMM_FAULT": "drop:rank=1"})  # doctest: +SKIP
        ['... AGENTCOMM_FAULT=drop:rank=1: ... drop needs op=N ...']
    """
    import torch.distributed as dist
    from datetime import timedelta

    try:
        dist.init_process_group("agentcomm", timeout=timedelta(seconds=10))
    except Exception as e:  # noqa: BLE001
        return str(e)
    dist.destroy_process_group()
    return "no error"


class WorldFailed(AssertionError):
    pass


def run_world(fn: Callable, world_size: int, *args: Any, timeout: float = 300.0, env: Optional[dict] = None,
              allow_exit: tuple = (), error_grace: float = 30.0) -> list:
    """Runs fn on world_size ranks; returns [result of rank 0, ...].

    ``allow_exit`` lists ranks that may die without reporting (kill tests).
    """
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(fn, r, world_size, port, env or {}, results, args), daemon=True)
             for r in range(world_size)]
    for p in procs:
        p.start()
    got: dict = {}
    errors: dict = {}
    deadline = time.monotonic() + timeout
    first_error: Optional[float] = None
    try:
        while len(got) + len(errors) < world_size:
            try:
                rank, status, value = _unpickled(results.get(timeout=0.5))
                (got if status == "ok" else errors)[rank] = value
                continue
            except queue.Empty:
                pass
            dead = [r for r, p in enumerate(procs)
                    if not p.is_alive() and r not in got and r not in errors]
            if dead:
                # Give a queued result a moment to arrive before calling the rank lost.
                time.sleep(0.5)
                while True:
                    try:
                        rank, status, value = _unpickled(results.get_nowait())
                        (got if status == "ok" else errors)[rank] = value
                    except queue.Empty:
                        break
                for r in dead:
                    if r not in got and r not in errors:
                        if r in allow_exit:
                            got[r] = None
                        else:
                            errors[r] = f"rank {r} exited with code {procs[r].exitcode} without a result"
            if errors and first_error is None:
                first_error = time.monotonic()
            if first_error is not None and time.monotonic() - first_error > error_grace:
                break  # the others had time to notice; the rest is hanging on the failed rank
            if time.monotonic() > deadline:
                raise WorldFailed(f"world of {world_size} timed out after {timeout}s; finished ranks: {sorted(got)}, "
                                  f"failed: {sorted(errors)}")
    finally:
        for p in procs:
            p.join(timeout=10 if not errors else 2)
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        results.close()
    missing = [r for r in range(world_size) if r not in got and r not in errors]
    for r in missing:
        errors[r] = "(no result: killed after another rank failed)"
    if errors:
        msg = "\n".join(f"--- rank {r} ---\n{tb}" for r, tb in sorted(errors.items()))
        raise WorldFailed(f"{len(errors)} rank(s) failed:\n{msg}")
    return [got[r] for r in range(world_size)]
