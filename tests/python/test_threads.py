"""The intra-op thread budget (AGENTCOMM_INTRAOP_THREADS, csrc/core/cpu_budget.h).

When the ranks of one host would run more torch threads than it has CPUs and the user did
not choose (OMP_NUM_THREADS unset), creating the first agentcomm group lowers torch's
intra-op threads to CPUs // local ranks (at least 1), as torchrun does with
OMP_NUM_THREADS=1; ``keep`` and an explicit count override that, and a bad value fails
``init_process_group`` with an error naming the variable.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from harness import WorldFailed, run_world


def _threads_after_init(rank: int, world: int) -> tuple[int, int, int]:
    """(CPUs, threads before, threads after init); each rank starts oversubscribed: one thread per CPU."""
    cpus = len(os.sched_getaffinity(0))
    torch.set_num_threads(cpus)  # torch's default (the harness sets 1)
    before = torch.get_num_threads()
    dist.init_process_group("agentcomm", rank=rank, world_size=world)
    after = torch.get_num_threads()
    t = torch.full((1000,), float(rank + 1))
    dist.all_reduce(t)  # the group works as usual
    assert torch.equal(t, torch.full((1000,), float(world * (world + 1) // 2)))
    dist.all_reduce(torch.ones(300000), async_op=True).wait()  # the worker thread path too
    return cpus, before, after


@pytest.mark.parametrize("world", [2, 3])
def test_auto_shares_the_cpus_between_the_ranks_of_a_host(world: int) -> None:
    for cpus, before, after in run_world(_threads_after_init, world, env={"OMP_NUM_THREADS": ""}):
        assert before == cpus
        assert after == max(1, cpus // world)  # world ranks x cpus threads always oversubscribe


@pytest.mark.parametrize("env,expect", [
    ({"OMP_NUM_THREADS": "1"}, "unchanged"),  # the user chose (here: set the variable, then more threads)
    ({"OMP_NUM_THREADS": "", "AGENTCOMM_INTRAOP_THREADS": "keep"}, "unchanged"),
    ({"OMP_NUM_THREADS": "1", "AGENTCOMM_INTRAOP_THREADS": "3"}, 3),  # an explicit count wins
    ({"OMP_NUM_THREADS": "", "AGENTCOMM_INTRAOP_THREADS": "auto"}, "shared"),
])
def test_settings_override_auto(env: dict, expect: object) -> None:
    for cpus, before, after in run_world(_threads_after_init, 2, env=env):
        want = {"unchanged": before, "shared": max(1, cpus // 2)}.get(expect, expect)
        assert after == want, (env, cpus, before, after)


def _init(rank: int, world: int) -> None:
    dist.init_process_group("agentcomm", rank=rank, world_size=world)


def test_a_bad_setting_names_the_variable() -> None:
    with pytest.raises(WorldFailed, match="AGENTCOMM_INTRAOP_THREADS=lots is not 'auto', 'keep' or a positive"):
        run_world(_init, 2, env={"AGENTCOMM_INTRAOP_THREADS": "lots"}, timeout=120)
