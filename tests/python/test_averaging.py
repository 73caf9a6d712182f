"""Model averagers (agentcomm.averaging) on 4 ranks: parity with torch's averagers
(identical parameters after every step), the weighted closed form, the asynchronous
merge rule, checkpoints, and the multi-tensor pack kernel."""

from __future__ import annotations

import copy
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.algorithms.model_averaging.averagers import PeriodicModelAverager
from torch.distributed.algorithms.model_averaging.hierarchical_model_averager import HierarchicalModelAverager

from harness import run_world

import agentcomm
from agentcomm import _C
from agentcomm.averaging import (AsyncAverager, HierarchicalAverager, LocalSGDState, PeriodicAverager,
                                 WeightedAverager, post_local_sgd_hook)
from torch.distributed.algorithms.ddp_comm_hooks.post_localSGD_hook import PostLocalSGDState, post_localSGD_hook


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def local_step(model: torch.nn.Module, opt: torch.optim.Optimizer, rank: int, step: int) -> None:
    g = torch.Generator().manual_seed(1000 * rank + step)  # different data on every rank
    x, y = torch.randn(5, 8, generator=g), torch.randint(0, 3, (5,), generator=g)
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def lockstep(ours: torch.nn.Module, theirs: torch.nn.Module, opts: tuple, avgs: tuple, rank: int, steps: int,
             what: str, failures: list[str]) -> list[int]:
    """Trains both models on the same data, ours averaged by avgs[0] and theirs by torch's
    avgs[1]; records the first step after which they differ. Returns the steps at which ours
    averaged."""
    averaged = []
    for step in range(steps):
        local_step(ours, opts[0], rank, step)
        local_step(theirs, opts[1], rank, step)
        if avgs[0].average_parameters(ours.parameters()):
            averaged.append(step)
        avgs[1].average_parameters(theirs.parameters())
        if not same(ours, theirs):
            failures.append(f"rank {rank}: {what} differs from torch after step {step}")
            break
    return averaged


def averaging_cases(rank: int, world: int) -> list[str]:
    dist.init_process_group("agentcomm", timeout=timedelta(seconds=120))
    failures: list[str] = []

    # 1. Periodic: identical to torch's PeriodicModelAverager, step by step.
    ours, theirs = make_model(), make_model()
    opt_a = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)
    avg_a, avg_b = PeriodicAverager(period=3, warmup_steps=2), PeriodicModelAverager(period=3, warmup_steps=2)
    averaged_steps = lockstep(ours, theirs, (opt_a, opt_b), (avg_a, avg_b), rank, 14, "periodic", failures)
    if averaged_steps != [2, 5, 8, 11]:
        failures.append(f"periodic averaged at {averaged_steps}")
    # After an averaging step every rank holds the same parameters.
    flat = torch.cat([p.detach().reshape(-1) for p in ours.parameters()])
    everyone = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(everyone, flat)
    if avg_a.step - 1 in averaged_steps and not all(torch.equal(e, everyone[0]) for e in everyone):
        failures.append("replicas differ right after averaging")

    # 2. Hierarchical: identical to torch's HierarchicalModelAverager ({2: 2, 4: 4}).
    ours, theirs = make_model(), make_model()
    opt_a = torch.optim.SGD(ours.parameters(), lr=0.05)
    opt_b = torch.optim.SGD(theirs.parameters(), lr=0.05)
    avg_a = HierarchicalAverager({2: 2, 4: world}, warmup_steps=1)
    avg_b = HierarchicalModelAverager({2: 2, 4: world}, warmup_steps=1)
    lockstep(ours, theirs, (opt_a, opt_b), (avg_a, avg_b), rank, 10, "hierarchical", failures)

    # 3. Weighted: closed form sum(w_r p_r) / sum(w_r), also with a zero weight.
    for weights in ([1.0, 2.0, 3.0, 4.0], [0.0, 5.0, 1.0, 2.0]):
        model = torch.nn.Linear(6, 5)
        with torch.no_grad():
            for i, p in enumerate(model.parameters()):
                p.copy_(torch.arange(p.numel(), dtype=torch.float32).view_as(p) * (rank + 1) + i)
        want = [sum(weights[r] * (torch.arange(p.numel(), dtype=torch.float64).view_as(p) * (r + 1) + i)
                    for r in range(world)) / sum(weights) for i, p in enumerate(model.parameters())]
        WeightedAverager().average_parameters(model.parameters(), weight=weights[rank])
        for p, w in zip(model.parameters(), want):
            if not torch.allclose(p.double(), w, rtol=1e-6, atol=1e-6):
                failures.append(f"rank {rank}: weighted {weights}: max error {(p.double() - w).abs().max()}")

    # 4. Async: max_staleness=0 is exactly the periodic averager; with staleness the merge
    # keeps local progress (every rank adds the same +1 per step: closed form).
    ours, ref = make_model(), make_model()
    opt_a = torch.optim.SGD(ours.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(ref.parameters(), lr=0.1)
    a0, p0 = AsyncAverager(period=3, max_staleness=0), PeriodicAverager(period=3)
    for step in range(9):
        local_step(ours, opt_a, rank, step)
        local_step(ref, opt_b, rank, step)
        a0.average_parameters(ours.parameters())
        p0.average_parameters(ref.parameters())
    if not same(ours, ref):
        failures.append(f"rank {rank}: async with max_staleness=0 differs from periodic")
    t = torch.nn.Parameter(torch.full((1000,), float(rank)))
    stale = AsyncAverager(period=4, max_staleness=2)
    for step in range(12):
        with torch.no_grad():
            t.add_(1.0)
        stale.average_parameters([t])
    stale.synchronize([t])
    want = (world - 1) / 2 + 12  # mean of the initial values + the common progress
    if not torch.allclose(t.detach(), torch.full_like(t, want)):
        failures.append(f"rank {rank}: async merge got {t[0].item()} want {want}")
    if stale.merged != 3:
        failures.append(f"rank {rank}: async merged {stale.merged} averagings, expected 3")

    # 5. Checkpoints: the schedule resumes where it stopped.
    a = PeriodicAverager(period=4, warmup_steps=1)
    for _ in range(6):
        a.average_parameters([torch.nn.Parameter(torch.ones(3))])
    b = PeriodicAverager(period=4, warmup_steps=1)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    p = torch.nn.Parameter(torch.ones(3))
    if [a.average_parameters([p]) for _ in range(5)] != [b.average_parameters([p]) for _ in range(5)]:
        failures.append("resumed schedule differs")

    # 6. Parameters stay bound to the flat buffer across steps; replacing .data rebinds.
    m = make_model()
    avg = PeriodicAverager(period=1)
    avg.average_parameters(m.parameters())
    ptrs = [p.data_ptr() for p in m.parameters()]
    avg.average_parameters(m.parameters())
    if [p.data_ptr() for p in m.parameters()] != ptrs:
        failures.append("parameters were re-packed although untouched")
    first = next(m.parameters())
    first.data = first.data.clone() + rank
    avg.average_parameters(m.parameters())
    mean = torch.empty_like(first.data)
    gathered = [torch.empty_like(first.data) for _ in range(world)]
    dist.all_gather(gathered, first.data.contiguous())
    if not all(torch.equal(x, gathered[0]) for x in gathered):
        failures.append("a replaced parameter was not averaged")
    del mean

    # 7. Post-local SGD: DDP with our hook + our averager equals DDP with torch's hook + torch's
    # averager (gradients averaged for 4 steps, then local steps averaged every 2).
    ours = torch.nn.parallel.DistributedDataParallel(make_model())
    theirs = torch.nn.parallel.DistributedDataParallel(make_model())
    ours.register_comm_hook(LocalSGDState(start_localsgd_iter=4), post_local_sgd_hook)
    theirs.register_comm_hook(PostLocalSGDState(process_group=None, subgroup=None, start_localSGD_iter=4,
                                                post_local_gradient_allreduce=False), post_localSGD_hook)
    opt_a = torch.optim.SGD(ours.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(theirs.parameters(), lr=0.1)
    avg_a, avg_b = PeriodicAverager(period=2, warmup_steps=4), PeriodicModelAverager(period=2, warmup_steps=4)
    lockstep(ours, theirs, (opt_a, opt_b), (avg_a, avg_b), rank, 10, "post-local SGD", failures)
    del ours, theirs

    dist.barrier()
    dist.destroy_process_group()
    return failures


def test_averagers_on_four_ranks() -> None:
    results = run_world(averaging_cases, 4, timeout=300)
    failures = [f for fs in results for f in fs]
    assert not failures, "\n".join(failures[:30])


def test_pack_unpack_kernel_matches_torch() -> None:
    ts = [torch.randn(n) for n in (0, 1, 7, 1000, 33)]
    flat = torch.empty(sum(t.numel() for t in ts))
    _C.pack_into(ts, flat, divide_by=3.0)
    assert torch.equal(flat, torch.cat(ts) / 3.0)
    outs = [torch.empty_like(t) for t in ts]
    _C.unpack_from(flat, outs, multiply_by=3.0)
    for o, t in zip(outs, ts):
        assert torch.equal(o, (t / 3.0) * 3.0)
    try:
        _C.pack_into([torch.ones(3, dtype=torch.float64)], flat)
    except TypeError as e:
        assert "float64" in str(e).lower() or "double" in str(e).lower()
    else:
        raise AssertionError("a dtype mismatch was accepted")
    assert agentcomm.is_registered()
