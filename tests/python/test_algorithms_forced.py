"""Every algorithm, forced with AGENTCOMM_ALGO, against Gloo for every dtype and op.

Automatic selection sends each size to one algorithm only; here each world
forces one of them (TCP ring / direct, shared-memory flat / staged / cross-
memory attach) for every collective that has it, with tiny shared-memory slots
(AGENTCOMM_SHM_SLOT_BYTES) so that the staged algorithms run many rounds and
both slot parities even on small tensors. The checks are those of
test_collectives (bitwise equality with Gloo or the closed form).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from harness import run_world
from test_collectives import DTYPES, Checker, check_all_reduce, check_data_movement, check_reduce_family


def forced_matrix(rank: int, world: int, algo: str) -> tuple:
    dist.init_process_group("agentcomm", timeout=timedelta(seconds=120))
    gloo = dist.new_group(backend="gloo", timeout=timedelta(seconds=120))
    c = Checker(rank, world, gloo)
    sizes = [0, 1, 7, 1000, 3001]  # 3001 x 8 bytes spans several 4 KiB slots
    check_all_reduce(c, sizes, DTYPES)
    check_data_movement(c, [0, 7, 3001], [torch.float32, torch.int8, torch.float64])
    check_reduce_family(c, [0, 5, 2001], [torch.float32, torch.bfloat16, torch.int64])
    # Large enough for the cross-memory-attach huge-page path (>= 8 MiB, seen twice).
    big = torch.arange(2_500_001, dtype=torch.float32) % 13 + rank
    want = c.gloo_all_reduce(big, dist.ReduceOp.SUM)
    for _ in range(3):
        got = big.clone()
        dist.all_reduce(got)
        c.expect_equal(f"all_reduce 10 MB ({algo})", got, want)
    dist.barrier()
    return c.cases, c.failures


CASES = [("ring", 3), ("direct", 3), ("recursive_doubling", 3), ("recursive_doubling", 4), ("shm_flat", 3),
         ("shm_staged", 3), ("shm_cma", 3), ("shm_staged", 2),
         ("shm_cma", 4)]


@pytest.mark.parametrize("algo,world", CASES, ids=[f"{a}-w{w}" for a, w in CASES])
def test_forced_algorithm_against_gloo(algo: str, world: int) -> None:
    env = {"AGENTCOMM_ALGO": algo, "AGENTCOMM_SHM_SLOT_BYTES": "4096"}
    results = run_world(forced_matrix, world, algo, timeout=600, env=env)
    failures = [f for _, fs in results for f in fs]
    assert results[0][0] > 500, f"only {results[0][0]} cases ran"
    assert not failures, "\n".join(failures[:50])


def unknown_algorithm(rank: int, world: int) -> str:
    dist.init_process_group("agentcomm", timeout=timedelta(seconds=60))
    try:
        dist.all_reduce(torch.ones(4))
    except Exception as e:  # noqa: BLE001
        return str(e)
    finally:
        dist.destroy_process_group()
    return "no error"


def test_unknown_algorithm_is_a_clear_error() -> None:
    results = run_world(unknown_algorithm, 2, timeout=120, env={"AGENTCOMM_ALGO": "warp_drive"})
    for msg in results:
        assert "warp_drive" in msg and "shm_staged" in msg, msg
