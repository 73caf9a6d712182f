"""agentcomm.ps (parameter server) at W=3..4: synchronous mode equals synchronous SGD (closed
form, momentum and Adam), the SSP bound holds in the servers' logs and is reached, async waits
for nobody, compression with error feedback loses nothing (closed form), checkpoint/restore
resumes bit-exactly, a dead worker is reported (async goes on; SSP fails naming it), bad input
is refused. Dedicated servers and colocated shards both.
"""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.distributed as dist

from harness import run_world

LR = 0.05


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def _batch(worker: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * worker + step)
    return torch.randn(6, 7, generator=g), torch.randint(0, 3, (6,), generator=g)


def _loss(model: torch.nn.Module, worker: int, step: int) -> torch.Tensor:
    x, y = _batch(worker, step)
    return torch.nn.functional.cross_entropy(model(x), y)


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def _reference_sync(workers: list[int], steps: int, make_opt) -> torch.Tensor:
    """Synchronous data-parallel SGD on one process: the average of every worker's gradient."""
    model = _model()
    opt = make_opt(list(model.parameters()))
    for step in range(steps):
        opt.zero_grad()
        grads = []
        for w in workers:
            model.zero_grad()
            _loss(model, w, step).backward()
            grads.append([p.grad.clone() for p in model.parameters()])
        for i, p in enumerate(model.parameters()):
            p.grad = sum(g[i] for g in grads) / len(workers)
        opt.step()
    return _flat(model)


def _sgd(p):
    return torch.optim.SGD(p, lr=LR, momentum=0.9)


def _adam(p):
    return torch.optim.Adam(p, lr=0.01)


def _train(ps, model, steps: int, start: int = 0, slow: float = 0.0) -> None:
    for step in range(start, start + steps):
        model.zero_grad()
        _loss(model, ps.rank, step).backward()
        if slow:
            time.sleep(slow)
        ps.step()


# ---- one world, many cases ---------------------------------------------------------------------
def _cases(rank: int, world: int) -> dict:
    import agentcomm.ps as ps

    dist.init_process_group("agentcomm")
    out: dict = {}

    # 1. Synchronous (s=0) equals synchronous SGD: one dedicated server with momentum, and
    #    colocated shards (every rank a server and a worker) with Adam.
    for name, servers, make in (("sync-server0-sgd", [0], _sgd), ("sync-colocated-adam", None, _adam)):
        model = _model()
        srv = ps.ParameterServer(model, make, servers=servers, mode="ssp", staleness=0)
        if srv.is_worker:
            _train(srv, model, 6)
            out[name] = (_flat(model), srv.workers)
        srv.close()

    # 2. SSP bound 1, colocated, rank 3 slow: every answered pull within the bound, and the bound
    #    reached (some worker was a clock ahead).
    model = _model()
    srv = ps.ParameterServer(model, _sgd, mode="ssp", staleness=1)
    _train(srv, model, 12, slow=0.02 if rank == world - 1 else 0.0)
    srv.close()
    out["ssp-log"] = [(e.worker, e.clock, e.min_clock) for e in srv.server_log()]

    # 3. Async with a constant gradient per worker and plain SGD: the final parameters are the
    #    start minus lr * scale * every push (order does not matter), and the fast workers ran
    #    far ahead of the slow one (nobody waited).
    model = _model()
    start = _flat(model)
    srv = ps.ParameterServer(model, lambda p: torch.optim.SGD(p, lr=LR), servers=[0], mode="async")
    steps = {1: 20, 2: 20, 3: 4}
    if srv.is_worker:
        for _ in range(steps[rank]):
            for p in model.parameters():
                p.grad = torch.full_like(p, float(rank))
            if rank == 3:
                time.sleep(0.05)
            srv.step()
    srv.close()
    out["async-log"] = [(e.worker, e.clock, e.min_clock) for e in srv.server_log()]
    if srv.is_server:
        out["async-final"] = (start, srv._shard.param.detach().clone(), steps, srv.push_scale)

    # 4. Compression with error feedback (top-k 10 %, 8-bit) in sync mode, constant gradients,
    #    plain SGD: the parameters moved by exactly what was sent, i.e. lr * mean over workers of
    #    (steps * g - residual); without EF the residual is not kept (and the error is larger).
    # TopK(0.5) on the 58-element shard sends exactly 58 float32: as many as dense.
    for codec in (ps.TopK(0.1), ps.TopK(0.5), ps.Quantize(8), ps.Quantize(1)):
        model = _model()
        start = _flat(model)
        srv = ps.ParameterServer(model, lambda p: torch.optim.SGD(p, lr=LR), servers=[0], mode="ssp", staleness=0,
                                 compression=codec)
        if srv.is_worker:
            gen = torch.Generator().manual_seed(rank)
            g = torch.randn(srv.numel, generator=gen)
            for _ in range(5):
                off = 0
                for p in model.parameters():
                    p.grad = g[off:off + p.numel()].view_as(p).clone()
                    off += p.numel()
                srv.step()
            residual = torch.cat([srv._residual[s] for s in srv.servers])
            out[f"codec-{codec.describe()}"] = (start, _flat(model), g, residual)
        srv.close()

    # 5. Checkpoint/restore: 3 steps, state_dict, a new PS from it, 3 more == 6 straight (Adam, sync,
    #    two dedicated servers so each holds a shard and optimizer state).
    model = _model()
    srv = ps.ParameterServer(model, _adam, servers=[0, 1], mode="ssp", staleness=0, compression=ps.TopK(0.3))
    if srv.is_worker:
        _train(srv, model, 3)
    sd = srv.state_dict()  # collective: the servers wait for the workers' last pushes
    srv.close()
    model = _model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # garbage: the checkpoint must overwrite it
    srv = ps.ParameterServer(model, _adam, servers=[0, 1], mode="ssp", staleness=0, compression=ps.TopK(0.3),
                             checkpoint=sd)
    if srv.is_worker:
        _train(srv, model, 3, start=3)
        out["ckpt-resumed"] = _flat(model)
    srv.close()
    model = _model()
    srv = ps.ParameterServer(model, _adam, servers=[0, 1], mode="ssp", staleness=0, compression=ps.TopK(0.3))
    if srv.is_worker:
        _train(srv, model, 6)
        out["ckpt-straight"] = _flat(model)
    srv.close()

    # 6. Bad input: clear errors, nothing hangs.
    errors = []
    for kwargs in ({"mode": "hogwild"}, {"staleness": -1}, {"servers": list(range(world))}, {"servers": [world]},
                   {"compression": "q3"}):
        try:
            ps.ParameterServer(_model(), _sgd, **kwargs)
            errors.append(f"{kwargs}: no error")
        except ValueError as e:
            errors.append(str(e))
    try:
        ps.ParameterServer(torch.nn.Linear(2, 2).double(), _sgd)
    except ValueError as e:
        errors.append(str(e))
    srv = ps.ParameterServer(_model(), _sgd, servers=[0])
    if srv.is_server:
        try:
            srv.step()
        except ps.PSError as e:
            errors.append(str(e))
    srv.close()
    out["errors"] = errors
    return out


@pytest.fixture(scope="module")
def cases() -> list[dict]:
    return run_world(_cases, 4, timeout=240)


def test_sync_equals_synchronous_sgd(cases):
    for name, make in (("sync-server0-sgd", _sgd), ("sync-colocated-adam", _adam)):
        got = [c[name] for c in cases if name in c]
        workers = got[0][1]
        ref = _reference_sync(workers, 6, make)
        assert len(got) == len(workers)
        for params, _ in got:
            torch.testing.assert_close(params, ref, rtol=1e-5, atol=1e-6)


def test_ssp_bound_holds_and_is_reached(cases):
    log = [e for c in cases for e in c["ssp-log"]]
    assert log
    ahead = [clock - min_clock for _, clock, min_clock in log]
    assert max(ahead) <= 1, f"a worker ran more than 1 clock ahead: {max(ahead)}"
    assert max(ahead) == 1, "the bound was never reached: the test would not see a violation"


def test_async_waits_for_nobody_and_applies_every_push(cases):
    start, final, steps, scale = cases[0]["async-final"]
    pushed = sum(float(w) * n for w, n in steps.items())
    torch.testing.assert_close(final, start - LR * scale * pushed, rtol=1e-5, atol=1e-5)
    ahead = max(clock - min_clock for _, clock, min_clock in cases[0]["async-log"])
    assert ahead >= 8, f"fast workers should run far ahead of the slow one in async mode, got {ahead}"


@pytest.mark.parametrize("codec", ["top-k 0.1 with EF", "top-k 0.5 with EF", "8-bit with EF", "1-bit with EF"])
def test_compression_with_error_feedback_loses_nothing(cases, codec):
    got = [c[f"codec-{codec}"] for c in cases if f"codec-{codec}" in c]
    assert len(got) == 3
    start = got[0][0]
    sent = sum(5 * g - r for _, _, g, r in got) / len(got)
    for _, params, _, r in got:
        torch.testing.assert_close(params, start - LR * sent, rtol=1e-4, atol=1e-5)
    assert any(float(r.abs().max()) > 0 for _, _, _, r in got), "the residual should hold what was not sent"


def test_checkpoint_restore_resumes_exactly(cases):
    for c in cases:
        if "ckpt-resumed" in c:
            torch.testing.assert_close(c["ckpt-resumed"], c["ckpt-straight"], rtol=0, atol=0)


def test_bad_input_is_refused(cases):
    errors = cases[0]["errors"]
    assert "mode must be 'async' or 'ssp'" in errors[0]
    assert "staleness must be an int >= 0" in errors[1]
    assert "every rank of the group is a server" in errors[2]
    assert "servers must be ranks in [0, 4)" in errors[3]
    assert "unknown compression 'q3'" in errors[4]
    assert "float32 on CPU" in errors[5]
    assert "is a server only" in errors[6]


# ---- three ranks: a rank that serves and trains ------------------------------------------------
def _three(rank: int, world: int) -> dict:
    import agentcomm.ps as ps

    dist.init_process_group("agentcomm")
    out: dict = {}
    # Synchronous, one server on rank 2 which also trains (workers=all): synchronous SGD.
    model = _model()
    srv = ps.ParameterServer(model, _sgd, servers=[2], workers=range(world), mode="ssp", staleness=0)
    _train(srv, model, 5)
    srv.close()
    out["sync"] = (_flat(model), srv.workers)
    # SSP bound 2 with rank 0 slow, the same layout: the bound holds in rank 2's log and is reached.
    model = _model()
    srv = ps.ParameterServer(model, _sgd, servers=[2], workers=range(world), mode="ssp", staleness=2)
    _train(srv, model, 10, slow=0.03 if rank == 0 else 0.0)
    srv.close()
    out["ssp-log"] = [(e.worker, e.clock, e.min_clock) for e in srv.server_log()]
    return out


def test_three_ranks_a_server_that_also_trains():
    res = run_world(_three, 3, timeout=120)
    ref = _reference_sync([0, 1, 2], 5, _sgd)
    for r in res:
        assert r["sync"][1] == [0, 1, 2]
        torch.testing.assert_close(r["sync"][0], ref, rtol=1e-5, atol=1e-6)
    log = res[2]["ssp-log"]
    assert len(log) == 3 * 10 and not res[0]["ssp-log"]  # every pull answered by rank 2, none by the others
    ahead = max(clock - min_clock for _, clock, min_clock in log)
    assert ahead == 2, f"SSP bound 2: a worker ran {ahead} clocks ahead of the slowest (must reach, never pass, 2)"


# ---- a worker dies -----------------------------------------------------------------------------
def _dead_worker(rank: int, world: int, mode: str) -> dict:
    import agentcomm.ps as ps

    dist.init_process_group("agentcomm")
    model = _model()
    srv = ps.ParameterServer(model, _sgd, servers=[0], mode=mode, staleness=1)
    if rank == 3:
        _train(srv, model, 2)
        os._exit(0)  # dies without closing
    if srv.is_server:
        srv.serve(timeout=60)
        return {"dead": srv.dead_workers}
    try:
        _train(srv, model, 15, slow=0.02)
        srv.close()
        return {"steps": srv.clock}
    except ps.PSError as e:
        srv.close()  # it stops holding anyone back; the server's serve() can return
        return {"error": str(e)}


@pytest.mark.parametrize("mode", ["async", "ssp"])
def test_dead_worker_is_reported(mode):
    res = run_world(_dead_worker, 4, mode, timeout=120, allow_exit=(3,))
    assert 3 in res[0]["dead"], res[0]
    if mode == "async":
        assert res[1] == {"steps": 15} and res[2] == {"steps": 15}, res
    else:
        for r in (1, 2):
            assert "worker rank 3 stopped" in res[r]["error"] and "staleness bound 1" in res[r]["error"], res[r]
