"""Compressed all-reduces through the real backend, and the compression hooks in DDP.

Ops (3 ranks, an odd world): each result equals the dense all-reduce (Gloo-free: our own
dense all_reduce, checked elsewhere against Gloo) of what every rank sent, recomputed with
the kernels; bad input raises. Hooks (4 ranks): a checkpoint resumes exactly, k = n top-k
equals dense DDP (also under no_sync, static_graph, several buckets), AMP buckets work,
states pickle, accounting adds up.
"""

from __future__ import annotations

import io
import pickle
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from harness import run_world

import agentcomm  # noqa: F401
from agentcomm import _C


def int_grad(rank: int, n: int, salt: int = 0) -> torch.Tensor:
    """Integer-valued floats: sums are exact in any order, magnitudes tie often."""
    i = torch.arange(n)
    return (((i * 37 + rank * 11 + salt * 5) % 23) - 11).float()


def op_cases(rank: int, world: int) -> list[str]:
    from agentcomm.hooks import ops

    dist.init_process_group("agentcomm", timeout=timedelta(seconds=60))
    failures: list[str] = []
    for n in (0, 1, 10, 1000, 65537):
        for k in (1, max(1, n // 100), n // 2 + 1, n):
            for method in ("topk", "dgc", "randomk"):
                for ef in (False, True):
                    g = int_grad(rank, n, k)
                    res = ((torch.arange(n) + rank) % 3 - 1).float() if ef else None
                    # What this rank sends, from a copy, with the same kernels.
                    sent = torch.zeros(n)
                    if method == "randomk":
                        kk = min(k, n)
                        idx = _C.randomk_indices(7, n, kk)
                        src = g + res if ef else g
                        sent[idx] = src[idx]
                    else:
                        data = res.clone() if ef else g.clone()
                        idx, val = _C.topk(data, k, add=g if ef else None, error_feedback=ef)
                        sent[idx.long()] = val
                    dist.all_reduce(sent)
                    stats = torch.zeros(4, dtype=torch.int64)
                    out = ops.sparse_all_reduce(g, k, residual=res, method=method, seed=7, stats=stats).wait()
                    want = sent * (1.0 / world)  # the op scales by 1/world in float32, as here
                    if not torch.equal(out, want):
                        failures.append(f"sparse {method} n={n} k={k} ef={ef}: max err "
                                        f"{(out - want).abs().max() if n else 0}")
                    if int(stats[0]) != 4 * n:
                        failures.append(f"sparse {method}: raw bytes {int(stats[0])} != {4 * n}")
    for bits in (8, 4, 1):
        for n in (0, 5, 1000, 40000):
            block = 128
            g = int_grad(rank, n).mul_(0.01)
            codes, scales = _C.quantize(g.clone(), bits, block, seed=11 + rank)
            sent = torch.empty(n)
            _C.dequantize(codes, scales, sent, bits, block)
            dist.all_reduce(sent)
            off, cnt = ops.quant_slice(n, block)
            server = torch.zeros(cnt)
            res = torch.zeros(n)
            out = ops.quantized_all_reduce(g, bits=bits, block=block, residual=res, server_residual=server,
                                           seed=11 + rank).wait()
            want = sent / world
            mine = out[off:off + cnt] + server
            if n and not torch.allclose(mine, want[off:off + cnt], rtol=1e-5, atol=1e-6):
                failures.append(f"quantized {bits}-bit n={n}: result + server residual != mean of what was sent")
            # Every rank decodes the same result.
            gathered = [torch.empty(n) for _ in range(world)]
            dist.all_gather(gathered, out)
            if not all(torch.equal(x, gathered[0]) for x in gathered):
                failures.append(f"quantized {bits}-bit n={n}: ranks disagree")

    # Bad input: clear exceptions, and the group still works afterwards.
    def expect(exc: type, fn, what: str) -> None:
        try:
            fn()
        except exc:
            return
        except Exception as e:  # noqa: BLE001
            failures.append(f"{what}: raised {type(e).__name__}: {e}")
            return
        failures.append(f"{what}: no exception")

    expect(TypeError, lambda: ops.sparse_all_reduce(torch.ones(8, dtype=torch.float64), 2), "float64 tensor")
    expect(ValueError, lambda: ops.sparse_all_reduce(torch.ones(8), 2, residual=torch.zeros(7)), "residual size")
    expect(ValueError, lambda: ops.sparse_all_reduce(torch.ones(8), 2, method="bogus"), "unknown method")
    expect(ValueError, lambda: ops.quantized_all_reduce(torch.ones(8), bits=3), "3 bits")
    expect(ValueError, lambda: ops.quantized_all_reduce(torch.ones(8), block=12), "block 12")
    expect(ValueError, lambda: ops.sparse_all_reduce(torch.ones(16)[::2], 2), "non-contiguous")
    gloo = dist.new_group(backend="gloo")
    expect(TypeError, lambda: ops.sparse_all_reduce(torch.ones(8), 2, group=gloo), "gloo group")
    # Ranks disagreeing on bits: an error on every rank, not a hang or corrupt data.
    sub = dist.new_group(backend="agentcomm", timeout=timedelta(seconds=10))
    try:
        ops.quantized_all_reduce(torch.ones(1000), bits=8 if rank == 0 else 4, group=sub).wait()
        failures.append("mismatched bits: no error")
    except Exception as e:  # noqa: BLE001
        if "mismatch" not in str(e).lower() and "abort" not in str(e).lower():
            failures.append(f"mismatched bits: unexpected error {e}")
    # A rank that never joins: the others get a timeout naming the op, not a hang.
    late = dist.new_group(backend="agentcomm", timeout=timedelta(seconds=3))
    if rank != world - 1:
        try:
            ops.sparse_all_reduce(torch.ones(1000), 10, group=late).wait()
            failures.append("missing rank: no error")
        except Exception as e:  # noqa: BLE001
            if "time" not in str(e).lower():
                failures.append(f"missing rank: unexpected error {e}")
    t = torch.ones(4)
    dist.all_reduce(t)  # the world group is unaffected
    if not torch.equal(t, torch.full((4,), float(world))):
        failures.append("world group broken after a failed subgroup op")
    dist.destroy_process_group()
    return failures


def test_compressed_ops_match_dense_sum_of_what_was_sent() -> None:
    failures = run_world(op_cases, 3, timeout=240)
    assert not any(failures), failures


# ------------------------------------------------------------------------- hooks


def make_model(seed: int = 0, width: int = 32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                               torch.nn.ReLU(), torch.nn.Linear(width, 4))


class WithUnused(torch.nn.Module):
    """make_model() plus a layer that never takes part in the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_model()
        self.unused = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g)


def make_state(kind: str):
    import agentcomm.hooks as H

    if kind == "topk":
        return H.TopKState(ratio=0.05, min_compress_numel=0, warmup_iters=1), H.topk_hook
    if kind == "dgc":
        return H.TopKState(ratio=0.05, method="dgc", min_compress_numel=0), H.topk_hook
    if kind == "randomk":
        return H.RandomKState(ratio=0.1, min_compress_numel=0), H.randomk_hook
    if kind.startswith("q"):
        return H.QuantizeState(bits=int(kind[1:]), block=64, min_compress_numel=0), H.quantize_hook
    return H.CastState(dtype=torch.bfloat16 if kind == "bf16" else torch.float16, min_compress_numel=0), H.cast_hook


def train(ddp, opt, rank: int, steps: range) -> None:
    for s in steps:
        x, y = batch(rank, s)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()


def hook_cases(rank: int, world: int) -> list[str]:
    import agentcomm.hooks as H

    dist.init_process_group("agentcomm", timeout=timedelta(seconds=60))
    failures: list[str] = []
    DDP = torch.nn.parallel.DistributedDataParallel

    # 1. Checkpoint round trip: 6 steps straight == 3 steps, save, fresh objects, load, 3 steps.
    #    Exact when the resumed DDP buckets like the uninterrupted one did: default buckets
    #    (this model fits one), or explicit per-bucket caps (bucket_cap_mb_list), which DDP
    #    uses from the first iteration on (hooks docs: "Checkpointing").
    import inspect

    layouts: list = [{}]
    if "bucket_cap_mb_list" in inspect.signature(DDP.__init__).parameters:
        layouts.append({"bucket_cap_mb_list": [0.002] * 4})
    cases = [(kind, kw) for kind in ("topk", "dgc", "randomk", "q8", "q4", "q1", "fp16") for kw in layouts]
    for kind, kw in cases:
        m1 = DDP(make_model(), **kw)
        st1, hook = make_state(kind)
        m1.register_comm_hook(st1, hook)
        o1 = torch.optim.SGD(m1.parameters(), lr=0.1, momentum=0.9)
        train(m1, o1, rank, range(6))

        m2 = DDP(make_model(), **kw)
        st2, _ = make_state(kind)
        m2.register_comm_hook(st2, hook)
        o2 = torch.optim.SGD(m2.parameters(), lr=0.1, momentum=0.9)
        train(m2, o2, rank, range(3))
        buf = io.BytesIO()
        torch.save({"model": m2.module.state_dict(), "opt": o2.state_dict(), "hook": st2.state_dict()}, buf)
        buf.seek(0)
        ck = torch.load(buf, weights_only=False)
        m3 = DDP(make_model(seed=1), **kw)  # different init: everything comes from the checkpoint
        m3.module.load_state_dict(ck["model"])
        st3, _ = make_state(kind)
        st3.load_state_dict(ck["hook"])
        m3.register_comm_hook(st3, hook)
        o3 = torch.optim.SGD(m3.parameters(), lr=0.1, momentum=0.9)
        o3.load_state_dict(ck["opt"])
        train(m3, o3, rank, range(3, 6))
        if not all(torch.equal(a, b) for a, b in zip(m1.parameters(), m3.parameters())):
            failures.append(f"{kind} {kw}: resumed run differs from the uninterrupted one")
        if kind in ("topk", "q8") and not st1.residuals:
            failures.append(f"{kind}: no error-feedback state was kept")
        if kw and kind == "topk" and len(st1.residuals) < 2:
            failures.append(f"{kind}: expected several buckets, got {len(st1.residuals)}")
        s = st1.stats()
        if s.raw_bytes <= 0 or s.sent_bytes <= 0 or s.compressed_buckets == 0:
            failures.append(f"{kind}: accounting empty: {s}")
        if kind == "q1" and s.ratio < 3:  # (top-k: headers dominate buckets this small)
            failures.append(f"{kind}: compression ratio {s.ratio:.2f}")
        # Pickles without its process group, to the same state.
        st4 = pickle.loads(pickle.dumps(st1))
        sd1, sd4 = st1.state_dict(), st4.state_dict()
        if sd1["iteration"] != sd4["iteration"] or sd1["config"] != sd4["config"] or any(
                not torch.equal(sd1["residuals"][k], sd4["residuals"][k]) for k in sd1["residuals"]):
            failures.append(f"{kind}: pickle round trip changed the state")
        # Every rank holds the same model (the hook averaged, not just reduced locally).
        flat = torch.cat([p.detach().reshape(-1) for p in m1.parameters()])
        ref = flat.clone()
        dist.broadcast(ref, 0)
        if not torch.equal(flat, ref):
            failures.append(f"{kind}: replicas diverged")

    # 2. Top-k with k = n sends everything: equals dense DDP (to rounding), including
    #    no_sync accumulation, static_graph, several buckets.
    for static in (False, True):
        dense = DDP(make_model(), bucket_cap_mb=0.002, static_graph=static)
        comp = DDP(make_model(), bucket_cap_mb=0.002, static_graph=static)
        comp.register_comm_hook(H.TopKState(ratio=1.0, min_compress_numel=0), H.topk_hook)
        od = torch.optim.SGD(dense.parameters(), lr=0.1)
        oc = torch.optim.SGD(comp.parameters(), lr=0.1)
        for step in range(4):
            for model, opt in ((dense, od), (comp, oc)):
                opt.zero_grad()
                # Accumulate one micro-batch locally (static_graph records its graph on
                # the first iteration, which therefore must synchronize: torch's rule).
                if step > 0 or not static:
                    with model.no_sync():
                        x, y = batch(rank, 50 + step)
                        torch.nn.functional.cross_entropy(model(x), y).backward()
                x, y = batch(rank, 60 + step)
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
        if not all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(dense.parameters(), comp.parameters())):
            failures.append(f"top-k k=n differs from dense DDP (static_graph={static})")

    # 3. AMP-style half-precision gradients: compressed through a float32 copy.
    for kind in ("topk", "q8", "bf16"):
        model = DDP(make_model().to(torch.bfloat16))
        st, hook = make_state(kind)
        model.register_comm_hook(st, hook)
        x, y = batch(rank, 7)
        torch.nn.functional.cross_entropy(model(x.to(torch.bfloat16)).float(), y).backward()
        grads = torch.cat([p.grad.float().reshape(-1) for p in model.parameters()])
        ref = grads.clone()
        dist.broadcast(ref, 0)
        if not torch.equal(grads, ref) or not torch.isfinite(grads).all():
            failures.append(f"bfloat16 {kind}: gradients differ across ranks or are not finite")

    # 4. Warm-up and small buckets go uncompressed (and are counted as dense).
    st = H.TopKState(ratio=0.01, warmup_iters=2, min_compress_numel=10**9)
    model = DDP(make_model())
    model.register_comm_hook(st, H.topk_hook)
    train(model, torch.optim.SGD(model.parameters(), lr=0.1), rank, range(3))
    s = st.stats()
    if s.compressed_buckets != 0 or s.dense_buckets == 0 or st.iteration != 3:
        failures.append(f"warm-up / min size not respected: {s}, iteration {st.iteration}")

    # 5. DDP options that change how buckets hold gradients: replicas stay identical.
    for kw in ({"gradient_as_bucket_view": True}, {"find_unused_parameters": True}):
        for kind in ("topk", "randomk", "q4", "bf16"):
            ddp = DDP(WithUnused() if "find_unused_parameters" in kw else make_model(), **kw)
            st, hook = make_state(kind)
            ddp.register_comm_hook(st, hook)
            train(ddp, torch.optim.SGD(ddp.parameters(), lr=0.1), rank, range(3))
            flat = torch.cat([p.detach().reshape(-1) for p in ddp.parameters()])
            ref = flat.clone()
            dist.broadcast(ref, 0)
            if not torch.equal(flat, ref):
                failures.append(f"{kind} {kw}: replicas diverged")

    dist.destroy_process_group()
    return failures


def test_hooks_checkpoint_parity_amp_and_accounting() -> None:
    failures = run_world(hook_cases, 4, timeout=300)
    assert not any(failures), failures


def test_state_options_are_validated() -> None:
    import agentcomm.hooks as H

    with pytest.raises(ValueError, match="ratio"):
        H.TopKState(ratio=0)
    with pytest.raises(ValueError, match="method"):
        H.TopKState(method="exact")
    with pytest.raises(ValueError, match="bits"):
        H.QuantizeState(bits=2)
    with pytest.raises(ValueError, match="dtype"):
        H.CastState(dtype=torch.float32)
    with pytest.raises(ValueError, match="QuantizeState"):
        H.TopKState().load_state_dict(H.QuantizeState().state_dict())
