"""Recovery tools: the flight recorder and its analyzer, abort() from another thread, errored state.

One world per case family; each failure case gets its own subgroup (a failure is sticky
for its group). Dumps go to a per-test directory named by AGENTCOMM_TRACE_DIR.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from harness import init_error, run_world

import agentcomm.debug


def _backend(group) -> object:
    return group._get_backend(torch.device("cpu"))


# ----------------------------------------------------------------- flight recorder

def records_case(rank: int, world: int) -> dict:
    """Records of a healthy group: every collective completed, sequence numbers and algorithms there."""
    dist.init_process_group("agentcomm", timeout=timedelta(seconds=30))
    g = dist.new_group(backend="agentcomm")
    t = torch.ones(1000)
    dist.all_reduce(t, group=g)
    dist.broadcast(torch.ones(7, dtype=torch.int64), src=0, group=g)
    w = dist.all_reduce(torch.ones(3, dtype=torch.float64), group=g, async_op=True)
    w.wait()
    if rank == 0:
        dist.send(torch.ones(5), dst=1, group=g)
    elif rank == 1:
        dist.recv(torch.empty(5), src=0, group=g)
    dist.barrier(group=g)
    mine = [grp for grp in agentcomm.debug.records()["groups"] if grp["size"] == world]
    dist.destroy_process_group()
    return mine


def test_records_of_a_healthy_group():
    world = 3
    for rank, groups in enumerate(run_world(records_case, world, timeout=120)):
        # The default group and the subgroup, both of world ranks; the subgroup is the one with a send.
        sub = [g for g in groups if any(e["op"] == "all_reduce" for e in g["entries"])]
        assert len(sub) == 1, groups
        entries = sub[0]["entries"]
        colls = [e for e in entries if not e["p2p"]]
        assert [e["op"] for e in colls] == ["all_reduce", "broadcast", "all_reduce", "barrier"], colls
        assert [e["seq"] for e in colls] == [1, 2, 3, 4]
        assert all(e["state"] == "completed" and e["ended_ns"] >= e["started_ns"] >= e["created_ns"] > 0
                   for e in entries), entries
        assert (colls[0]["dtype"], colls[0]["count"]) == ("Float", 1000)
        assert (colls[1]["dtype"], colls[1]["count"]) == ("Long", 7)
        assert colls[0]["algorithm"] in ("shm_flat", "shm_staged", "shm_cma", "ring", "direct"), colls[0]
        p2p = [e for e in entries if e["p2p"]]
        if rank == 0:
            assert [(e["op"], e["peer"]) for e in p2p] == [("send", 1)]
        elif rank == 1:
            assert [(e["op"], e["peer"]) for e in p2p] == [("recv", 0)]
        else:
            assert p2p == []


def ring_case(rank: int, world: int) -> list:
    dist.init_process_group("agentcomm", timeout=timedelta(seconds=30))
    for _ in range(10):
        dist.all_reduce(torch.ones(2))
    groups = agentcomm.debug.records()["groups"]
    dist.destroy_process_group()
    return groups


def test_ring_buffer_keeps_the_last_n():
    out = run_world(ring_case, 2, timeout=120, env={"AGENTCOMM_TRACE_BUFFER": "4"})
    for groups in out:
        (g,) = groups
        assert g["capacity"] == 4
        assert [e["seq"] for e in g["entries"]] == [7, 8, 9, 10]
    off = run_world(ring_case, 2, timeout=120, env={"AGENTCOMM_TRACE_BUFFER": "0"})
    assert off == [[], []]


def test_bad_buffer_setting_is_named():
    for msg in run_world(init_error, 1, timeout=60, env={"AGENTCOMM_TRACE_BUFFER": "lots"}):
        assert "AGENTCOMM_TRACE_BUFFER=lots" in msg, msg


def desync_case(rank: int, world: int, odd: int, how: str) -> str:
    """Three good all_reduces on a fresh group, then rank `odd` misbehaves at the 4th collective.

    how="skip": it skips an all_reduce and calls the next collective (a broadcast) instead;
    how="stall": it stalls before the 4th all_reduce for longer than the group's timeout.
    """
    dist.init_process_group("agentcomm", timeout=timedelta(seconds=30))
    g = dist.new_group(backend="agentcomm", timeout=timedelta(seconds=5 if how == "skip" else 3))
    for _ in range(3):
        dist.all_reduce(torch.ones(100), group=g)
    error = ""
    if how == "stall" and rank == odd:
        time.sleep(4.5)  # past the peers' 3 s timeout and their abort's trip here
    try:
        if how == "stall" or rank != odd:
            dist.all_reduce(torch.ones(1000), group=g)
        if how == "skip":
            dist.broadcast(torch.ones(10), src=0, group=g)
    except Exception as e:  # noqa: BLE001
        error = str(e)
    time.sleep(1.0)  # the peers' dumps
    dist.destroy_process_group()
    return error


def _misbehave_and_analyze(tmp_path, transport: str, world: int, odd: int, how: str):
    """Runs desync_case with dumps into tmp_path; returns (the one failed group's report, the CLI's text)."""
    env = {"AGENTCOMM_TRACE_DIR": str(tmp_path)}
    if transport == "tcp":
        env["AGENTCOMM_SHM"] = "0"
    errors = run_world(desync_case, world, odd, how, timeout=120, env=env)
    assert all(errors), errors  # every rank failed (mismatch, timeout, or the peers' abort)
    report = agentcomm.debug.analyze(str(tmp_path))
    failed = [g for g in report.groups if not g.ok()]
    assert len(failed) == 1, str(report)
    cli = subprocess.run([sys.executable, "-m", "agentcomm.debug", "analyze", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 1, cli.stderr  # 1: something is wrong in the dumps
    return failed[0], cli.stdout


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_analyzer_names_the_rank_that_skipped_a_collective(tmp_path, transport):
    world, skipper = 4, 2
    g, text = _misbehave_and_analyze(tmp_path, transport, world, skipper, "skip")
    assert g.size == world and g.missing_ranks == []
    (d,) = g.desyncs
    assert d.seq == 4 and d.odd_ranks() == [skipper], str(d)
    assert "broadcast" in str(d) and "all_reduce(Float x 1000)" in str(d)
    assert f"ranks {skipper} called broadcast" in text, text


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_analyzer_names_the_rank_that_stalled(tmp_path, transport):
    world, staller = 3, 1
    g, text = _misbehave_and_analyze(tmp_path, transport, world, staller, "stall")
    assert g.missing_ranks == [], str(g)  # the stalled rank dumped when its peers' abort reached it
    (lag,) = g.behind
    assert (lag.rank, lag.last_seq, lag.frontier_seq) == (staller, 3, 4), str(lag)
    assert lag.frontier_op.startswith("all_reduce(Float x 1000") and lag.frontier_ranks == [0, 2]
    assert f"rank {staller} is behind" in text, text
    # The others failed in #4, or were still inside it when a peer's abort made them dump.
    assert any("timed out" in e.lower() for e in g.errors.values()), g.errors
    for r in (0, 2):
        assert r in g.errors or g.waiting.get(r, "").startswith("#4 all_reduce"), str(g)


def dump_on_demand_case(rank: int, world: int, where: str) -> str:
    dist.init_process_group("agentcomm", timeout=timedelta(seconds=30))
    dist.all_reduce(torch.ones(4))
    path = agentcomm.debug.dump(where)
    dist.destroy_process_group()
    return path


def test_dump_on_demand(tmp_path):
    paths = run_world(dump_on_demand_case, 2, str(tmp_path), timeout=120)
    assert len(set(paths)) == 2 and all(os.path.dirname(p) == str(tmp_path) for p in paths)
    for p in paths:
        with open(p) as f:
            d = json.load(f)
        assert d["version"] == 1 and d["reason"] == "on demand" and d["groups"][0]["entries"][0]["op"] == "all_reduce"
    assert all(g.ok() for g in agentcomm.debug.analyze(str(tmp_path)).groups)
    with pytest.raises(ValueError, match="AGENTCOMM_TRACE_DIR"):
        os.environ.pop("AGENTCOMM_TRACE_DIR", None)
        agentcomm.debug.dump()


# ----------------------------------------------------------------- abort and errored

def abort_case(rank: int, world: int) -> dict:
    """Rank 0 blocks in an all_reduce that rank 1 never joins; another thread aborts the group."""
    dist.init_process_group("agentcomm", timeout=timedelta(seconds=60))
    g = dist.new_group(backend="agentcomm", timeout=timedelta(seconds=60))
    dist.all_reduce(torch.ones(10), group=g)
    b = _backend(g)
    out: dict = {"before": b.error(), "type_before": str(g._get_backend(torch.device("cpu")).__class__.__name__)}
    if rank == 0:
        aborted_at: list = []

        def aborter() -> None:
            time.sleep(0.5)
            aborted_at.append(time.monotonic())
            b.abort()

        th = threading.Thread(target=aborter)
        th.start()
        try:
            dist.all_reduce(torch.ones(1 << 16), group=g)
            out["raised"] = ""
        except Exception as e:  # noqa: BLE001
            out["raised"] = str(e)
        out["latency"] = time.monotonic() - aborted_at[0]
        th.join()
        out["after"] = b.error()
    dist.barrier()  # the default group is untouched by the subgroup's abort
    if rank == 1:
        time.sleep(0.2)
        out["peer_after"] = b.error()  # rank 0's abort reached this rank too
    dist.destroy_process_group()
    return out


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_abort_from_another_thread_ends_a_blocked_all_reduce(transport):
    env = {"AGENTCOMM_SHM": "0"} if transport == "tcp" else {}
    r0, r1 = run_world(abort_case, 2, timeout=120, env=env)
    assert r0["type_before"] == "ProcessGroupAgentComm"
    assert r0["before"] is None and r1["before"] is None
    assert "aborted by the user" in r0["raised"], r0
    assert r0["latency"] < 1.0, r0
    assert "aborted by the user" in r0["after"]
    assert r1["peer_after"] and "aborted" in r1["peer_after"], r1


# ----------------------------------------------------------------- shrink and split

def shrink_case(rank: int, world: int, transport: str) -> dict:
    """The last rank dies; the others see the failure, shrink the world without it and go on; then
    they shrink once more (new rank 1 leaves) and check the rank numbering and the sums each time."""
    dist.init_process_group("agentcomm", timeout=timedelta(seconds=20))
    b = _backend(dist.group.WORLD)
    out: dict = {"supports": (b.supports_shrinking, b.supports_splitting)}
    dist.all_reduce(torch.ones(4))
    if rank == world - 1:
        time.sleep(0.2)
        os._exit(1)  # killed: no goodbye to the peers
    try:
        dist.all_reduce(torch.ones(1 << 12))  # the dead rank never joins
        out["failed"] = ""
    except Exception as e:  # noqa: BLE001
        out["failed"] = str(e)
    with pytest.raises(ValueError, match="excludes itself"):
        b.shrink([rank], 0, None)
    dist.shrink_group([world - 1], shrink_flags=1)  # SHRINK_ABORT; the default group is replaced
    out["rank1"], out["size1"] = dist.get_rank(), dist.get_world_size()
    t = torch.full((1001,), float(rank + 1))
    dist.all_reduce(t)
    out["sum1"] = t[0].item()
    if dist.get_rank() == 1:
        dist.barrier()  # the others' shrink may begin while this rank is still here
        return out
    dist.barrier()
    dist.shrink_group([1])
    out["rank2"], out["size2"] = dist.get_rank(), dist.get_world_size()
    t = torch.full((7,), float(rank + 1), dtype=torch.float64)
    dist.all_reduce(t)
    out["sum2"] = t[0].item()
    return out


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_shrink_group_after_a_rank_dies(transport):
    world = 4
    env = {"AGENTCOMM_SHM": "0"} if transport == "tcp" else {}
    outs = run_world(shrink_case, world, transport, timeout=180, env=env, allow_exit=(world - 1,))
    assert outs[world - 1] is None
    for rank, out in enumerate(outs[: world - 1]):
        assert out["supports"] == (True, True)
        assert out["failed"], out  # the lost peer was reported, not waited for forever
        assert (out["rank1"], out["size1"]) == (rank, world - 1)
        assert out["sum1"] == sum(r + 1 for r in range(world - 1))  # 1 + 2 + 3
        if rank != 1:
            assert (out["rank2"], out["size2"]) == ([0, None, 1][rank], 2)
            assert out["sum2"] == 1 + 3  # old ranks 0 and 2


def split_case(rank: int, world: int) -> dict:
    """ProcessGroup.split_group (what torch's split_group calls once a device is bound): {0, 2} and {1, 3}."""
    dist.init_process_group("agentcomm", timeout=timedelta(seconds=30))
    pg = dist.group.WORLD
    mine = [0, 2] if rank % 2 == 0 else [1, 3]
    sub = pg.split_group(mine, timeout=timedelta(seconds=20))
    b = sub._get_backend(torch.device("cpu"))
    t = torch.full((65541,), float(rank + 1))
    sub.allreduce([t]).wait()
    out = {"rank": sub.rank(), "size": sub.size(), "sum": t[0].item(), "type": type(b).__name__,
           "name": sub.group_name}
    # A rank left out of the split gets no group; the parent still works.
    three = pg.split_group([0, 1, 2], timeout=timedelta(seconds=20))
    out["left_out"] = three is None
    if three is not None:
        u = torch.ones(3, dtype=torch.int64)
        three.allreduce([u]).wait()
        out["three_sum"] = u[0].item()
    v = torch.full((3,), float(rank + 1))
    dist.all_reduce(v)
    out["parent_sum"] = v[0].item()
    return out


def test_split_group():
    outs = run_world(split_case, 4, timeout=120)
    for rank, out in enumerate(outs):
        assert (out["rank"], out["size"]) == (rank // 2, 2)
        assert out["sum"] == (1 + 3 if rank % 2 == 0 else 2 + 4)
        assert out["type"] == "ProcessGroupAgentComm" and out["name"], out
        assert out["left_out"] == (rank == 3)
        assert out.get("three_sum") == (3 if rank < 3 else None)
        assert out["parent_sum"] == 1 + 2 + 3 + 4
