"""Averaging a 100-tensor, ResNet-like parameter list: torch's flatten-based averaging
(``torch.distributed.algorithms.model_averaging.utils.average_parameters``: torch.cat, a
division, the all_reduce, a Python loop rebinding every parameter) against agentcomm's
averager (parameters live in one flat buffer: one all_reduce with AVG fused).

    pytest bench/test_averaging.py --benchmark-only

One rank (a world of one), so the numbers isolate the packing work around the collective.
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
from torch.distributed.algorithms.model_averaging import utils as torch_utils

from agentcomm.averaging import PeriodicAverager


def resnet_like() -> list[torch.nn.Parameter]:
    """100 tensors, 11.2M parameters: conv kernels with their batch-norm scale and shift."""
    shapes = []
    for stage, ch in enumerate((64, 128, 256, 512)):
        for _ in range(8 if stage < 3 else 9):
            shapes += [(ch, ch if stage == 0 else ch // 2 + ch // 2, 3, 3), (ch,), (ch,)]
    shapes = shapes[:99] + [(1000, 512)]
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g) * 0.01) for s in shapes]
    return params


@pytest.fixture(scope="module", autouse=True)
def one_rank_group():
    torch.set_num_threads(1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("agentcomm", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_torch_flatten_averaging(benchmark) -> None:
    params = resnet_like()
    assert len(params) == 100
    benchmark(torch_utils.average_parameters, params, dist.group.WORLD)


def test_agentcomm_averager(benchmark) -> None:
    params = resnet_like()
    before = [p.detach().clone() for p in params]
    averager = PeriodicAverager(period=1)
    benchmark(averager.average_parameters, params)
    assert all(torch.equal(p, b) for p, b in zip(params, before))  # the average of one rank is itself
