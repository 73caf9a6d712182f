"""Shared-memory lifecycle: the segment is unlinked once every rank attached,
nothing is left in /dev/shm after destroy_process_group, after normal exit or
after a rank is killed, and a rank that opts out (AGENTCOMM_SHM=0) turns the
group to TCP instead of hanging it.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from harness import run_world


def shm_entries() -> list[str]:
    return sorted(n for n in os.listdir("/dev/shm") if "agentcomm" in n)


def _transport() -> str:
    return str(dist.group.WORLD._get_backend(torch.device("cpu")).transport)


def lifecycle(rank: int, world: int) -> dict:
    dist.init_process_group("agentcomm", timeout=timedelta(seconds=60))
    out = {"transport": _transport()}
    t = torch.ones(100_000)
    dist.all_reduce(t)
    out["sum_ok"] = bool((t == world).all())
    out["while_alive"] = shm_entries()  # already unlinked: only mappings remain
    sub = dist.new_group([0, 1], backend="agentcomm")  # a second segment for a subgroup
    if rank in (0, 1):
        s = torch.ones(10)
        dist.all_reduce(s, group=sub)
        out["sub_ok"] = bool((s == 2).all())
    dist.barrier()  # every rank is past the subgroup's setup
    out["all_attached"] = shm_entries()
    dist.destroy_process_group()
    out["after_destroy"] = shm_entries()
    return out


def test_segment_unlinked_while_running_and_after_destroy() -> None:
    before = shm_entries()
    results = run_world(lifecycle, 3, timeout=120)
    for r in results:
        assert r["transport"].startswith("shm"), r
        assert r["sum_ok"]
        assert r["while_alive"] == before, r
        assert r["all_attached"] == before, r
        assert r["after_destroy"] == before, r
    assert results[0]["sub_ok"] and results[1]["sub_ok"]
    assert shm_entries() == before


def killed_mid_run(rank: int, world: int) -> str:
    dist.init_process_group("agentcomm", timeout=timedelta(seconds=60))
    big, small = torch.ones(4_000_000), torch.ones(8)
    for i in range(1000):
        if rank == 1 and i == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            dist.all_reduce(big if i % 2 else small)
        except Exception as e:  # noqa: BLE001
            return f"{type(e).__name__}: {e}"
    return "no error"


def test_killed_rank_fails_survivors_and_leaves_nothing() -> None:
    before = shm_entries()
    start = time.monotonic()
    results = run_world(killed_mid_run, 3, timeout=120, allow_exit=(1,))
    assert time.monotonic() - start < 60
    for rank in (0, 2):
        msg = results[rank]
        assert msg != "no error", msg
        assert "Error" in msg, msg
    assert shm_entries() == before


def opt_out(rank: int, world: int) -> tuple:
    if rank == 1:
        os.environ["AGENTCOMM_SHM"] = "0"
    dist.init_process_group("agentcomm", timeout=timedelta(seconds=60))
    t = torch.full((1000,), float(rank))
    dist.all_reduce(t)
    out = (_transport(), float(t[0]))
    dist.destroy_process_group()
    return out


def test_one_rank_opting_out_turns_the_group_to_tcp() -> None:
    results = run_world(opt_out, 3, timeout=120)
    for transport, value in results:
        assert transport == "tcp", transport
        assert value == 3.0
