"""torchft over agentcomm: replica groups that fail, keep stepping, rejoin and heal.

A lighthouse (in this process) forms a quorum every step; three replica groups (one
process each) train a small model with torchft's Manager and OptimizerWrapper on
agentcomm.ft.ProcessGroupAgentComm, averaging gradients with Manager.allreduce (one flat
bucket, as DDP would; torchft 0.2.0's own DDP wrapper asserts in its comm hook when a
collective fails, whatever the backend, so a crash inside a step cannot be tested through it). Replica 1 exits inside step KILL_STEP, once its quorum
formed (os._exit, no cleanup, like a crash), is restarted, rejoins, heals from a peer's checkpoint and
finishes. Checked: the survivors kept committing steps while it was away (at most the
failed step lost), the restarted replica resumed past the step it died at, every replica
ends with the same parameters, and nothing is left behind (conftest checks processes and
/dev/shm).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from datetime import timedelta

import pytest
import torch

torchft = pytest.importorskip("torchft", reason="torchft is installed by scripts/test.sh (torchft==0.2.0)")

from harness import free_port  # noqa: E402

TOTAL_STEPS = 20
KILL_STEP = 8
FULL_STEPS_AFTER_REJOIN = 3  # every replica stops after this many steps with all replicas back
VICTIM = 1
REPLICAS = 3


def replica_main(replica: int, life: int, lighthouse: str, out_dir: str) -> None:
    """One replica group of one rank: trains until TOTAL_STEPS; the victim's first life dies at KILL_STEP."""
    import torch.distributed as dist
    from torch import nn, optim
    from torchft import Manager
    from torchft.optim import OptimizerWrapper

    from agentcomm.ft import ProcessGroupAgentComm

    torch.set_num_threads(1)
    port = free_port()
    store = dist.TCPStore("localhost", port, is_master=True, wait_for_workers=False)
    torch.manual_seed(0)  # identical initial weights; torchft also syncs them on step 0
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def state_dict() -> dict:
        return {"model": model.state_dict(), "optim": opt.state_dict()}

    def load_state_dict(sd: dict) -> None:
        model.load_state_dict(sd["model"])
        opt.load_state_dict(sd["optim"])

    manager = Manager(
        pg=ProcessGroupAgentComm(timeout=timedelta(seconds=10)),
        min_replica_size=1,
        load_state_dict=load_state_dict,
        state_dict=state_dict,
        replica_id=f"replica{replica}",
        store_addr="localhost",
        store_port=port,
        rank=0,
        world_size=1,
        lighthouse_addr=lighthouse,
        hostname="localhost",
        timeout=timedelta(seconds=10),
        quorum_timeout=timedelta(seconds=30),
        connect_timeout=timedelta(seconds=10),
    )
    wrapped = OptimizerWrapper(manager, opt)
    if life == 0:  # start together: every manager heartbeats before the first quorum
        open(os.path.join(out_dir, f"ready{replica}"), "w").close()
        while not all(os.path.exists(os.path.join(out_dir, f"ready{r}")) for r in range(REPLICAS)):
            time.sleep(0.05)
    log = []  # (step before, step after, participants)
    full_after_rejoin = 0  # steps committed by all replicas once the victim is back
    while manager.current_step() < TOTAL_STEPS or full_after_rejoin < FULL_STEPS_AFTER_REJOIN:
        step = manager.current_step()
        g = torch.Generator().manual_seed(1000 * step + replica)
        x = torch.randn(8, 16, generator=g)
        y = torch.randint(0, 4, (8,), generator=g)
        wrapped.zero_grad()
        if replica == VICTIM and life == 0 and step == KILL_STEP:
            # A crash inside a step: the quorum includes this replica, whose peers are then in (or
            # about to enter) the step's all_reduce. No shutdown: its sockets and shared memory are
            # left to the kernel and the peers.
            manager.wait_quorum()
            os._exit(17)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        flat = torch.cat([g.flatten() for g in grads])
        manager.allreduce(flat).wait()  # averaged over the participants; a failure is reported, not raised
        torch.nn.utils.vector_to_parameters(flat, grads)
        wrapped.step()
        log.append((step, manager.current_step(), manager.num_participants()))
        if step > KILL_STEP and manager.num_participants() == REPLICAS and manager.current_step() > step:
            full_after_rejoin += 1
        time.sleep(0.05)  # a step of real work: leaves the lighthouse time to see the failure
    params = [p.detach().clone() for p in model.parameters()]
    manager.shutdown(wait=False)
    store = None
    torch.save({"params": params, "log": log}, os.path.join(out_dir, f"replica{replica}_life{life}.pt"))


def test_replica_group_killed_rejoins_and_heals(tmp_path):
    from torchft._torchft import LighthouseServer

    lighthouse = LighthouseServer(bind="[::]:0", min_replicas=1, join_timeout_ms=5000, heartbeat_timeout_ms=1500)
    ctx = mp.get_context("spawn")
    procs: dict[tuple[int, int], mp.Process] = {}

    def start(replica: int, life: int) -> None:
        p = ctx.Process(target=replica_main, args=(replica, life, lighthouse.address(), str(tmp_path)), daemon=True)
        p.start()
        procs[(replica, life)] = p

    try:
        for r in range(REPLICAS):
            start(r, 0)
        deadline = time.monotonic() + 180
        victim = procs[(VICTIM, 0)]
        victim.join(timeout=deadline - time.monotonic())
        assert victim.exitcode == 17, f"the victim should have crashed at step {KILL_STEP}; exit code {victim.exitcode}"
        time.sleep(1.0)  # the survivors step without it for a while
        start(VICTIM, 1)
        for key, p in procs.items():
            p.join(timeout=max(1.0, deadline - time.monotonic()))
            assert not p.is_alive(), f"replica {key} still running at the deadline"
            if key != (VICTIM, 0):
                assert p.exitcode == 0, f"replica {key} failed with exit code {p.exitcode}"
    finally:
        for p in procs.values():
            if p.is_alive():
                p.kill()
                p.join(5)
        lighthouse.shutdown()

    results = {r: torch.load(tmp_path / f"replica{r}_life{0 if r != VICTIM else 1}.pt") for r in range(REPLICAS)}
    for r, res in results.items():
        log = res["log"]
        assert log[-1][1] == results[0]["log"][-1][1] >= TOTAL_STEPS, (r, log[-3:])
        if r != VICTIM:
            lost = sum(1 for before, after, _ in log if after == before)
            assert lost <= 2, f"replica {r} lost {lost} steps: {log}"
            without = [before for before, after, n in log if n == REPLICAS - 1 and after > before]
            assert without, f"replica {r} committed no step while replica {VICTIM} was away: {log}"
    first_step_back = results[VICTIM]["log"][0][1]  # after its first step: healed from a peer
    assert first_step_back > KILL_STEP, f"the restarted replica did not heal: it began at step {first_step_back}"
    for r in range(1, REPLICAS):
        for a, b in zip(results[0]["params"], results[r]["params"]):
            assert torch.equal(a, b), f"replica {r}'s parameters differ from replica 0's"
