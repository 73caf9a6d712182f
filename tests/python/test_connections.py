"""A process's TCP connections are shared by its groups (csrc/transport/tcp/tcp_hub.h).

Two processes hold one connection whatever the number of groups they share: a DeviceMesh
job's extra groups (a copy of the world, half of it) add no socket, over TCP alone
(AGENTCOMM_SHM=0) and with every pair connected at setup (AGENTCOMM_EAGER_CONNECT=1), and
ops of all the groups at once stay correct.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

import agentcomm.debug

from harness import run_world


def _three_groups(rank: int, world: int) -> tuple[int, int]:
    """(sockets with the world group alone, sockets after two more groups and ops in all three)."""
    dist.init_process_group("agentcomm", rank=rank, world_size=world)
    t = torch.full((1000,), float(rank + 1))
    dist.all_reduce(t)  # every algorithm's peers of the world are connected now (direct: all)
    dist.barrier()
    before = agentcomm.debug.process_costs()["sockets"]
    copy = dist.new_group(list(range(world)))
    evens = dist.new_group(list(range(0, world, 2)))
    groups = [(None, range(world)), (copy, range(world))] + ([(evens, range(0, world, 2))] if rank % 2 == 0 else [])
    ops = []
    for group, members in groups:  # every group at once: small, pipelined and large tensors of each in flight
        for n in (5, 70000, 300000):
            x = torch.full((n,), float(rank + 1))
            ops.append((dist.all_reduce(x, group=group, async_op=True), x, float(sum(r + 1 for r in members))))
    for work, x, want in ops:
        work.wait()
        assert torch.equal(x, torch.full_like(x, want)), (x[:3], want)
    dist.barrier()
    after = agentcomm.debug.process_costs()["sockets"]
    dist.destroy_process_group()
    return before, after


@pytest.mark.parametrize("env", [{"AGENTCOMM_SHM": "0"}, {"AGENTCOMM_SHM": "0", "AGENTCOMM_EAGER_CONNECT": "1"}],
                         ids=["on-demand", "eager"])
def test_more_groups_add_no_socket(env: dict) -> None:
    for rank, (before, after) in enumerate(run_world(_three_groups, 4, env=env, timeout=240)):
        # (rank 0 serves the TCPStore: a client socket of torch's may close meanwhile)
        assert after <= before, f"rank {rank}: {before} sockets with the world group, {after} with three"
