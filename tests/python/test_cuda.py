"""CUDA tensors on agentcomm: every collective, 2 and 4 ranks sharing one GPU.

Each collective runs on CUDA tensors with agentcomm and on CPU copies with Gloo
(or, where Gloo has no implementation, the closed form of the Gloo-gathered
inputs); inputs are small integers, so results must be equal bit for bit.
Both device paths are covered: CUDA IPC (the default when every rank is on
this host) and staging through pinned host memory (AGENTCOMM_CUDA_IPC=0).
Also: stream semantics (ordered after the caller's stream; Work.wait() does
not block the host), DDP on CUDA modules with and without comm hooks, the
averagers, and the CUDA kernels behind the Python entry points against their
CPU twins and against CuPy when it is installed.

Without a GPU (or with a build lacking CUDA) the module skips and says why.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

import agentcomm
from harness import run_world
from test_collectives import Checker, local_reduce, make_input, ops_for, reduce_op

R = dist.ReduceOp


def _why_no_gpu() -> str:
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    if not agentcomm.cuda_built():
        return "agentcomm was built without CUDA support (against a torch without CUDA)"
    return ""


pytestmark = pytest.mark.skipif(bool(_why_no_gpu()), reason=_why_no_gpu() or "GPU present")

FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
SIZES = [0, 1, 7, 1000, 65541]


def _init(rank: int) -> tuple:
    dist.init_process_group("agentcomm")
    gloo = dist.new_group(backend="gloo")
    dev = torch.device("cuda", rank % torch.cuda.device_count())  # one GPU: every rank shares it
    torch.cuda.set_device(dev)
    return Checker(rank, dist.get_world_size(), gloo), dev


def _collectives_body(rank: int, world: int) -> dict:
    c, dev = _init(rank)
    # all_reduce: the device path for float dtypes, staging for the rest and PREMUL_SUM.
    for dtype in FLOATS + [torch.int32, torch.int64, torch.uint8]:
        for op in ops_for(dtype):
            for n in SIZES:
                x = make_input(rank, n, dtype, small=(op == R.PRODUCT))
                want = c.gloo_all_reduce(x, op)
                got = x.to(dev)
                dist.all_reduce(got, op=reduce_op(op))
                c.expect_equal(f"all_reduce {dtype} {op} n={n}", got.cpu(), want)
    # Large tensors (>= 8 MiB): with IPC on, floats reduce on the device and
    # int64 stages; with it off, all of them stage chunk by chunk, copies
    # overlapped with the host algorithm (a partial last chunk each time).
    for dtype, n in [(torch.float32, 3_000_001), (torch.bfloat16, 5_000_003), (torch.int64, 1_100_001)]:
        for op in [R.SUM, R.AVG, "premul"] if dtype.is_floating_point else [R.SUM, R.MAX]:
            x = make_input(rank, n, dtype, salt=7)
            want = c.gloo_all_reduce(x, op)
            got = x.to(dev)
            got.mul_(1)  # queued on the caller's stream just before the call
            dist.all_reduce(got, op=reduce_op(op))
            c.expect_equal(f"all_reduce large {dtype} {op} n={n}", got.cpu(), want)
    # Non-contiguous and 2-D tensors, async with wait() on another stream.
    x = make_input(rank, 64 * 33, torch.float32).view(64, 33)
    want = c.gloo_all_reduce(x, R.SUM)
    got = x.to(dev).t()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        w = dist.all_reduce(got, async_op=True)
        w.wait()
        back = got.t().cpu()
    c.expect_equal("all_reduce non-contiguous", back, want)
    # Data movement and rooted reductions (staged).
    for dtype in [torch.float32, torch.bfloat16, torch.int64]:
        for n in [0, 5, 4099]:
            x = make_input(rank, n, dtype, salt=3)
            gx = c.gathered(x)
            xd = x.to(dev)
            for root in range(world):
                b = xd.clone()
                dist.broadcast(b, src=root)
                c.expect_equal(f"broadcast {dtype} n={n} root={root}", b.cpu(), gx[root])
                r = xd.clone()
                dist.reduce(r, dst=root)
                if rank == root:
                    c.expect_equal(f"reduce {dtype} n={n} root={root}", r.cpu(), local_reduce(gx, R.SUM, world))
                else:
                    c.expect_equal(f"reduce input kept {dtype}", r.cpu(), x)
                g = [torch.zeros(n, dtype=dtype, device=dev) for _ in range(world)] if rank == root else None
                dist.gather(xd, g, dst=root)
                if rank == root:
                    c.expect_equal(f"gather {dtype} n={n}", torch.stack([t.cpu() for t in g]), gx)
                parts = [gx[i] + root for i in range(world)]
                out = torch.zeros(n, dtype=dtype, device=dev)
                dist.scatter(out, [p.to(dev) for p in parts] if rank == root else None, src=root)
                c.expect_equal(f"scatter {dtype} n={n}", out.cpu(), gx[rank] + root)
            outs = [torch.zeros(n, dtype=dtype, device=dev) for _ in range(world)]
            dist.all_gather(outs, xd)
            c.expect_equal(f"all_gather {dtype} n={n}", torch.stack([o.cpu() for o in outs]), gx)
            flat = torch.zeros(world * n, dtype=dtype, device=dev)
            dist.all_gather_into_tensor(flat, xd)
            c.expect_equal(f"all_gather_into_tensor {dtype}", flat.cpu(), gx.reshape(-1))
            big = make_input(rank, world * n, dtype, salt=4)
            gbig = c.gathered(big)
            rs = torch.zeros(n, dtype=dtype, device=dev)
            dist.reduce_scatter_tensor(rs, big.to(dev))
            c.expect_equal(f"reduce_scatter_tensor {dtype} n={n}", rs.cpu(),
                           local_reduce(gbig, R.SUM, world)[rank * n:(rank + 1) * n])
            a2a = torch.zeros(world * n, dtype=dtype, device=dev)
            dist.all_to_all_single(a2a, big.to(dev))
            c.expect_equal(f"all_to_all_single {dtype} n={n}", a2a.cpu(),
                           torch.cat([gbig[r][rank * n:(rank + 1) * n] for r in range(world)]))
    # Point to point around the ring, then a barrier.
    x = make_input(rank, 1001, torch.float32, salt=5)
    gx = c.gathered(x)
    recv = torch.zeros(1001, device=dev)
    reqs = [dist.isend(x.to(dev), (rank + 1) % world), dist.irecv(recv, (rank - 1) % world)]
    for q in reqs:
        q.wait()
    c.expect_equal("send/recv", recv.cpu(), gx[(rank - 1) % world])
    dist.barrier()
    return {"failures": c.failures, "cases": c.cases}


@pytest.mark.parametrize("world,ipc", [(2, "1"), (4, "1"), (2, "0")])
def test_collectives_on_cuda(world: int, ipc: str) -> None:
    results = run_world(_collectives_body, world, env={"AGENTCOMM_CUDA_IPC": ipc}, timeout=400)
    for r in results:
        assert not r["failures"], "\n".join(r["failures"][:20])
        assert r["cases"] > 200


def _streams_body(rank: int, world: int) -> dict:
    _, dev = _init(rank)
    out = {}
    for ipc in (True, False):
        x = torch.zeros(1 << 20, device=dev)
        dist.all_reduce(x)  # warm-up (IPC mappings, events)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.cuda._sleep(400_000_000)  # ~0.2 s of device time queued before the fill
        x.fill_(rank + 1)
        if ipc:
            w = dist.all_reduce(x, async_op=True)
        else:  # a staged collective (no device path for all_gather)
            outs = [torch.zeros_like(x) for _ in range(world)]
            w = dist.all_gather(outs, x, async_op=True)
        w.wait()
        host = time.perf_counter() - t0
        torch.cuda.synchronize()
        total = time.perf_counter() - t0
        if ipc:
            ok = bool((x == world * (world + 1) / 2).all())
        else:
            ok = all(bool((o == r + 1).all()) for r, o in enumerate(outs))
        out["ipc" if ipc else "staged"] = {"ok": ok, "host": host, "total": total}
    return out


def test_stream_semantics() -> None:
    """The collective sees what the caller's stream queued before it; wait() on the
    device path returns before the device work ran (the host is not blocked)."""
    results = run_world(_streams_body, 2, timeout=300)
    for r in results:
        assert r["ipc"]["ok"] and r["staged"]["ok"], r
        # The device path queues waits and kernels: the host is back long before the
        # 0.2 s of sleep queued ahead of it has run.
        assert r["ipc"]["host"] < 0.5 * r["ipc"]["total"], r


def _ddp_body(rank: int, world: int, hook: str) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    _, dev = _init(rank)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    ref = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    ref.load_state_dict(model.state_dict())
    ddp = DDP(model.to(dev), device_ids=[dev.index])
    state = None
    if hook == "fp16":
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
    elif hook == "topk":
        from agentcomm.hooks import TopKState, topk_hook

        state = TopKState(ratio=1.0)  # k = n: exactly dense, through the sparse path
        ddp.register_comm_hook(state, topk_hook)
    elif hook == "q8":
        from agentcomm.hooks import QuantizeState, quantize_hook

        state = QuantizeState(bits=8)
        ddp.register_comm_hook(state, quantize_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(7)
    losses = []
    for _ in range(6):
        xs = [torch.randn(16, 32, generator=g) for _ in range(world)]
        ys = [torch.randn(16, 8, generator=g) for _ in range(world)]
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(ddp(xs[rank].to(dev)), ys[rank].to(dev))
        loss.backward()
        opt.step()
        losses.append(loss.item())
        # The reference: one CPU model on every rank's batch (DDP averages gradients).
        ref_opt.zero_grad()
        sum(torch.nn.functional.mse_loss(ref(x), y) for x, y in zip(xs, ys)).div(world).backward()
        ref_opt.step()
    flat = torch.cat([p.detach().cpu().reshape(-1) for p in ddp.parameters()])
    want = torch.cat([p.detach().reshape(-1) for p in ref.parameters()])
    every = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(every, flat, group=dist.new_group(backend="gloo"))
    return {"max_err": float((flat - want).abs().max()), "replicas_equal": all(torch.equal(e, flat) for e in every),
            "losses": losses}


@pytest.mark.parametrize("hook", ["none", "fp16", "topk", "q8"])
def test_ddp_on_cuda(hook: str) -> None:
    results = run_world(_ddp_body, 2, hook, timeout=300)
    for r in results:
        assert r["replicas_equal"], r
        if hook == "q8":  # lossy with error feedback: it must still train
            assert r["losses"][-1] < r["losses"][0], r
        else:  # exact (top-k with k = n), or one fp16 rounding per step
            assert r["max_err"] < (2e-3 if hook == "fp16" else 1e-5), r


def _compressed_body(rank: int, world: int) -> dict:
    """Sparse and quantized all-reduces of CUDA tensors (encoded and decoded on
    the device) against the same calls on CPU copies in the same group: equal
    bits, residuals too."""
    from agentcomm.hooks import ops

    c, dev = _init(rank)
    for method in ["topk", "dgc", "randomk"]:
        for n, k in [(0, 0), (1, 1), (1000, 0), (1000, 10), (100_003, 1000), (300_007, 30_000)]:
            for kind in ["ints", "gauss"]:
                g = torch.Generator().manual_seed(7 * rank + n + k)
                x = make_input(rank, n, torch.float32, salt=11)
                if kind == "gauss":
                    x = torch.randn(n, generator=g)
                r0 = torch.randn(n, generator=g) * 0.1
                for ef in [True, False]:
                    xc, rc = x.clone(), r0.clone()
                    ops.sparse_all_reduce(xc, k, residual=rc if ef else None, method=method, seed=5).wait()
                    xd, rd = x.to(dev), r0.to(dev)
                    ops.sparse_all_reduce(xd, k, residual=rd if ef else None, method=method, seed=5).wait()
                    what = f"{method} n={n} k={k} {kind} ef={ef}"
                    c.expect_equal(f"sparse_all_reduce {what}", xd.cpu(), xc)
                    c.expect_equal(f"residual {what}", rd.cpu(), rc)
    for bits in [8, 4, 1]:
        for n, block in [(0, 256), (1000, 64), (100_003, 256)]:
            g = torch.Generator().manual_seed(11 * rank + n + bits)
            x = torch.randn(n, generator=g)
            r0 = torch.randn(n, generator=g) * 0.1
            _, slice_len = ops.quant_slice(n, block)
            s0 = torch.randn(slice_len, generator=g) * 0.01
            for ef in [True, False]:
                xc, rc, sc = x.clone(), r0.clone(), s0.clone()
                ops.quantized_all_reduce(xc, bits=bits, block=block, residual=rc if ef else None,
                                         server_residual=sc if ef else None, seed=3).wait()
                xd, rd, sd = x.to(dev), r0.to(dev), s0.to(dev)
                ops.quantized_all_reduce(xd, bits=bits, block=block, residual=rd if ef else None,
                                         server_residual=sd if ef else None, seed=3).wait()
                what = f"bits={bits} n={n} block={block} ef={ef}"
                c.expect_equal(f"quantized_all_reduce {what}", xd.cpu(), xc)
                c.expect_equal(f"residual {what}", rd.cpu(), rc)
                c.expect_equal(f"server residual {what}", sd.cpu(), sc)
    # A residual on another device than the tensor: a clear error.
    try:
        ops.sparse_all_reduce(torch.ones(10, device=dev), 2, residual=torch.zeros(10)).wait()
        c.failures.append("a CPU residual with a CUDA tensor was accepted")
    except ValueError as e:
        if "one device" not in str(e):
            c.failures.append(f"unclear error: {e}")
    return {"failures": c.failures, "cases": c.cases}


@pytest.mark.parametrize("world", [2, 3])
def test_compressed_all_reduce_on_device(world: int) -> None:
    for r in run_world(_compressed_body, world, timeout=300):
        assert not r["failures"], "\n".join(r["failures"][:20])
        assert r["cases"] >= 144 + 54


def _averaging_body(rank: int, world: int) -> dict:
    from agentcomm.averaging import AsyncAverager, PeriodicAverager, WeightedAverager

    _, dev = _init(rank)
    out = {}
    for name, avg in [("periodic", PeriodicAverager(period=1)), ("weighted", WeightedAverager()),
                      ("async", AsyncAverager(period=1, max_staleness=0))]:
        params = [torch.full((n,), float(rank + 1), device=dev) for n in (3, 1000, 17)]
        if name == "weighted":
            avg.average_parameters(params, weight=float(rank + 1))
            want = sum((r + 1) * (r + 1) for r in range(world)) / sum(r + 1 for r in range(world))
        else:
            avg.average_parameters(params)
            want = sum(r + 1 for r in range(world)) / world
        out[name] = max(float((p.cpu() - want).abs().max()) for p in params)
    return out


def test_averagers_on_cuda() -> None:
    for r in run_world(_averaging_body, 4, timeout=300):
        for name, err in r.items():
            assert err < 1e-6, (name, r)


def _shrink_body(rank: int, world: int) -> dict:
    """A device-bound world of 3: new_group without rank 2 (torch asks rank 2 for a "nocolor
    split"), then shrink_group without rank 2, and an IPC all_reduce on the shrunk world."""
    dev = torch.device("cuda", 0)
    torch.cuda.set_device(dev)
    dist.init_process_group("agentcomm", device_id=dev, timeout=timedelta(seconds=60))
    out: dict = {}
    g01 = dist.new_group([0, 1])
    if rank < 2:
        x = torch.full((1000,), float(rank + 1), device=dev)
        dist.all_reduce(x, group=g01)
        out["g01"] = x[0].item()
    dist.barrier()
    if rank == 2:
        return out  # leaves; the others shrink the world without it
    dist.shrink_group([2])
    x = torch.full((4097,), float(rank + 1), device=dev)
    dist.all_reduce(x)
    out["shrunk"] = (dist.get_rank(), dist.get_world_size(), x[0].item())
    return out


def test_new_group_and_shrink_in_a_device_bound_world() -> None:
    outs = run_world(_shrink_body, 3, timeout=240)
    assert [o.get("g01") for o in outs] == [3.0, 3.0, None]
    assert [o.get("shrunk") for o in outs] == [(0, 2, 3.0), (1, 2, 3.0), None]


def _split_body(rank: int, world: int) -> tuple:
    dev = torch.device("cuda", 0)
    torch.cuda.set_device(dev)
    dist.init_process_group("agentcomm", device_id=dev, timeout=timedelta(seconds=60))
    sub = dist.split_group(split_ranks=[[0, 2], [1]], timeout=timedelta(seconds=30))
    x = torch.full((65541,), float(rank + 1), device=dev)
    dist.all_reduce(x, group=sub)
    return dist.get_rank(sub), dist.get_world_size(sub), x[0].item()


@pytest.mark.xfail(reason="on the H200 run of 2026-12-04 (torch 2.11.0+cu130) ranks 0 and 2 hung in the split "
                          "child's bootstrap (TcpTransport waiting for the other's store key) after a new_group; "
                          "cause not found; ProcessGroup.split_group on CPU passes (test_recovery)", strict=False)
def test_split_group_on_cuda() -> None:
    outs = run_world(_split_body, 3, timeout=120)
    assert outs == [(0, 2, 4.0), (0, 1, 2.0), (1, 2, 4.0)]


def _stuck_body(rank: int, world: int) -> dict:
    """Rank 1 dies after the exchange of an IPC all_reduce whose input its stream has not reached
    (a long kernel queued before it): rank 0's stream waits for its "ready" event."""
    dev = torch.device("cuda", 0)
    torch.cuda.set_device(dev)
    dist.init_process_group("agentcomm", timeout=timedelta(seconds=20))
    x = torch.ones(1 << 20, device=dev)
    dist.all_reduce(x)
    torch.cuda.synchronize()
    dist.barrier()
    if rank == 1:
        torch.cuda._sleep(4_000_000_000)  # ~2 s of the GPU's clock
        dist.all_reduce(x, async_op=True)
        time.sleep(0.5)  # the exchange is over; the kernel and the "ready" event are still queued
        os.kill(os.getpid(), signal.SIGKILL)
    dist.all_reduce(x, async_op=True).wait()  # returns once queued; the current stream waits on the device
    done = torch.cuda.Event()
    done.record()
    b = dist.group.WORLD._get_backend(dev)
    t0 = time.monotonic()
    out = {"finished": False, "error": None}
    while time.monotonic() - t0 < 40:
        out["error"] = b.error()
        if done.query():
            out["finished"] = True
            break
        if out["error"] and "stuck on the device" in out["error"]:
            break
        time.sleep(0.05)
    out["seconds"] = time.monotonic() - t0
    try:
        dist.all_reduce(torch.ones(3, device=dev))
        out["next"] = ""
    except Exception as e:  # noqa: BLE001
        out["next"] = str(e)
    return out


def test_a_peer_dying_inside_an_ipc_all_reduce_is_reported() -> None:
    """The device wait on a dead peer's event is watched: the survivor's group fails with a clear
    error (AGENTCOMM_CUDA_STUCK=abort) instead of its stream hanging silently; or the device work
    finished (the driver completed the dead peer's work), and the next op fails as after any loss."""
    outs = run_world(_stuck_body, 2, timeout=180, env={"AGENTCOMM_CUDA_STUCK": "abort"}, allow_exit=(0, 1))
    r0 = outs[0]
    if r0 is None:
        pytest.fail("rank 0 exited without a result (see its output)")
    print(r0)
    assert r0["finished"] or "stuck on the device" in (r0["error"] or ""), r0
    assert r0["next"], r0  # the group is failed either way: the peer is gone


def _first_cuda_op_error(rank: int, world: int) -> str:
    _init(rank)
    try:
        dist.all_reduce(torch.ones(10, device="cuda:0"))
        return ""
    except Exception as e:  # noqa: BLE001
        return str(e)


def test_bad_cuda_stuck_setting_is_named() -> None:
    for msg in run_world(_first_cuda_op_error, 2, timeout=120, env={"AGENTCOMM_CUDA_STUCK": "sometimes"}):
        assert "AGENTCOMM_CUDA_STUCK=sometimes" in msg, msg


def test_kernels_on_cuda_match_cpu() -> None:
    """The Python entry points run the CUDA twins on CUDA tensors: same bits as the CPU."""
    from agentcomm import _C

    g = torch.Generator().manual_seed(3)
    x = torch.randn(300_007, generator=g)
    for sampled in (False, True):
        a_cpu, a_dev = x.clone(), x.cuda()
        i_cpu, v_cpu = _C.topk(a_cpu, 3001, sampled=sampled, error_feedback=True)
        i_dev, v_dev = _C.topk(a_dev, 3001, sampled=sampled, error_feedback=True)
        assert torch.equal(i_dev.cpu(), i_cpu) and torch.equal(v_dev.cpu(), v_cpu)
        assert torch.equal(a_dev.cpu(), a_cpu)
    for bits in (8, 4, 1):
        a_cpu, a_dev = x.clone(), x.cuda()
        c_cpu, s_cpu = _C.quantize(a_cpu, bits, 256, 11, error_feedback=True)
        c_dev, s_dev = _C.quantize(a_dev, bits, 256, 11, error_feedback=True)
        assert torch.equal(c_dev.cpu(), c_cpu) and torch.equal(s_dev.cpu(), s_cpu) and torch.equal(a_dev.cpu(), a_cpu)
        o_cpu, o_dev = torch.zeros(x.numel()), torch.zeros(x.numel(), device="cuda")
        _C.dequantize(c_cpu, s_cpu, o_cpu, bits, 256)
        _C.dequantize(c_dev, s_dev, o_dev, bits, 256)
        assert torch.equal(o_dev.cpu(), o_cpu)
    h_cpu, h_dev = torch.empty(x.numel(), dtype=torch.bfloat16), torch.empty(x.numel(), dtype=torch.bfloat16,
                                                                              device="cuda")
    _C.cast_into(x, h_cpu, 0.5)
    _C.cast_into(x.cuda(), h_dev, 0.5)
    assert torch.equal(h_dev.cpu(), h_cpu)
    parts = [torch.randn(n, generator=g) for n in (5, 0, 70_000, 3)]
    flat_cpu, flat_dev = torch.empty(70_008), torch.empty(70_008, device="cuda")
    _C.pack_into(parts, flat_cpu, 4.0)
    _C.pack_into([p.cuda() for p in parts], flat_dev, 4.0)
    assert torch.equal(flat_dev.cpu(), flat_cpu)
    with pytest.raises(ValueError, match="one device"):
        _C.topk(x.cuda(), 5, add=x)
    # The public API (agentcomm.kernels) on CUDA tensors: reduce and random-k too.
    from agentcomm import kernels

    for dtype in FLOATS:
        a, b = torch.randn(65541, generator=g).to(dtype), torch.randn(65541, generator=g).to(dtype)
        for op in ("sum", "prod", "min", "max"):
            assert torch.equal(kernels.reduce(a.cuda(), b.cuda(), op=op).cpu(), kernels.reduce(a, b, op=op)), (dtype, op)
    for k in (0, 1, 3001, x.numel()):
        a_cpu, a_dev = x.clone(), x.cuda()
        i_cpu, v_cpu = kernels.randomk(a_cpu, k, seed=21, add=x, error_feedback=True)
        i_dev, v_dev = kernels.randomk(a_dev, k, seed=21, add=x.cuda(), error_feedback=True)
        assert torch.equal(i_dev.cpu(), i_cpu) and torch.equal(v_dev.cpu(), v_cpu) and torch.equal(a_dev.cpu(), a_cpu)
        o_cpu, o_dev = torch.ones(x.numel()), torch.ones(x.numel(), device="cuda")
        kernels.randomk_scatter(v_cpu, o_cpu, seed=21, scale=0.5)
        kernels.randomk_scatter(v_dev, o_dev, seed=21, scale=0.5)
        assert torch.equal(o_dev.cpu(), o_cpu)


def test_kernels_against_cupy() -> None:
    """An independent reference: CuPy's sort-based top-k and its own arithmetic."""
    cp = pytest.importorskip("cupy")
    from agentcomm import _C

    x = cp.random.standard_normal(1_000_003, dtype=cp.float32)
    t = torch.from_dlpack(x)  # DLPack: no copy, the kernels run on CuPy's memory
    idx, val = _C.topk(t.clone(), 10_000)
    mag = cp.abs(x)
    want_idx = cp.sort(cp.argsort(-mag, kind="stable")[:10_000])
    assert cp.array_equal(cp.from_dlpack(idx).astype(cp.int64), want_idx)
    assert cp.array_equal(cp.from_dlpack(val), x[want_idx])
    # 8-bit round trip: within one quantization step of the block's max.
    codes, scales = _C.quantize(t.clone(), 8, 256, 5)
    out = torch.empty_like(t)
    _C.dequantize(codes, scales, out, 8, 256)
    err = cp.abs(cp.from_dlpack(out) - x).reshape(-1)
    step = cp.repeat(cp.from_dlpack(scales) / 127, 256)[: x.size]
    assert bool((err <= step * 1.0001).all())

    # agentcomm.kernels takes CuPy arrays as they are and returns CuPy arrays;
    # in-place arguments are CuPy's own memory.
    from agentcomm import kernels

    idx2, val2 = kernels.topk(x, 10_000)
    assert isinstance(idx2, cp.ndarray) and cp.array_equal(idx2.astype(cp.int64), want_idx)
    data = x.copy()
    kernels.topk(data, 10_000, error_feedback=True)
    rest = x.copy()
    rest[want_idx] = 0
    assert cp.array_equal(data, rest)
    y = cp.random.standard_normal(x.size, dtype=cp.float32)
    assert cp.array_equal(kernels.reduce(x, y), x + y)
    acc = x.copy()
    kernels.reduce(acc, y, op="max", out=acc)
    assert cp.array_equal(acc, cp.maximum(x, y))
    h = kernels.cast(x, "float16")
    assert isinstance(h, cp.ndarray) and cp.array_equal(h, x.astype(cp.float16))
