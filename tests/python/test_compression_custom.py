"""Compressors written in Python, and hierarchical compression (dense in a host, compressed between).

Differential: the Python top-k (agentcomm.hooks.TopKCompressor) selects what the native top-k
selects (random gradients have no ties), so DDP trained with either, with error feedback,
ends with the same parameters up to summation order. Closed forms: k = n (nothing dropped)
equals dense DDP, flat and hierarchical; hierarchical ranks stay identical; only host leaders
send between hosts. Hierarchical runs on an emulated cluster of 2 hosts x 2 ranks (root).
"""

from __future__ import annotations

import json
import pickle
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from harness import needs_namespaces, run_world

import agentcomm  # noqa: F401


def model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(40, 64), torch.nn.Tanh(), torch.nn.Linear(64, 7))


def train(state, hook, rank: int, steps: int = 5) -> torch.Tensor:
    """Parameters (flat) after ``steps`` of DDP with ``hook`` (None: dense)."""
    ddp = torch.nn.parallel.DistributedDataParallel(model())
    if hook is not None:
        ddp.register_comm_hook(state, hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(100 + rank)
    for _ in range(steps):
        x, y = torch.randn(16, 40, generator=g), torch.randint(0, 7, (16,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in ddp.parameters()])


def python_vs_native(rank: int, world: int) -> list[str]:
    import agentcomm.hooks as H

    dist.init_process_group("agentcomm", timeout=timedelta(seconds=60))
    failures = []
    dense = train(None, None, rank)
    for ratio in (1.0, 0.05):
        for ef in (True, False):
            py_state = H.PythonCompressionState(H.TopKCompressor(ratio), error_feedback=ef, min_compress_numel=0)
            native_state = H.TopKState(ratio=ratio, error_feedback=ef, min_compress_numel=0)
            py = train(py_state, H.python_compressor_hook, rank)
            native = train(native_state, H.topk_hook, rank)
            if not torch.allclose(py, native, rtol=1e-5, atol=1e-6):
                failures.append(f"ratio {ratio} ef {ef}: python vs native max diff {(py - native).abs().max()}")
            if ratio == 1.0 and not torch.allclose(py, dense, rtol=1e-5, atol=1e-6):
                failures.append(f"k = n: python vs dense max diff {(py - dense).abs().max()}")
            s = py_state.stats()
            if not (s.raw_bytes > 0 and s.sent_bytes > 0 and s.encode_seconds > 0 and s.decode_seconds > 0):
                failures.append(f"stats not counted: {s}")
            if ratio < 1.0 and not s.raw_bytes > 4 * s.sent_bytes / (world - 1):
                failures.append(f"5% top-k sends too much: {s}")
            if ef:  # checkpoint round trip keeps the residuals
                sd = py_state.state_dict()
                again = H.PythonCompressionState(H.TopKCompressor(ratio), error_feedback=ef)
                again.load_state_dict(sd)
                if sorted(again.residuals) != sorted(py_state.residuals) or not all(
                        torch.equal(again.residuals[k], py_state.residuals[k]) for k in py_state.residuals):
                    failures.append("residuals lost in a checkpoint round trip")
    # The docs' example (docs/research_bench.md): a 1-bit compressor with error feedback.
    class SignSGD(H.Compressor):
        def encode(self, g, info):
            return [torch.sign(g).to(torch.int8), g.abs().mean().reshape(1)]

        def decode(self, payload, info):
            signs, scale = payload
            return signs.float() * scale

    sign_state = H.PythonCompressionState(SignSGD(), min_compress_numel=0)
    p = train(sign_state, H.python_compressor_hook, rank)
    everyone = [torch.empty_like(p) for _ in range(world)]
    dist.all_gather(everyone, p)
    if not all(torch.equal(q, p) for q in everyone) or torch.equal(p, dense):
        failures.append("SignSGD: ranks disagree, or nothing was compressed")
    s = sign_state.stats()
    one_byte_each = (world - 1) * s.raw_bytes / 4  # an all_gather of 1 byte per 4-byte element
    if not 0.99 * one_byte_each <= s.sent_bytes <= 1.1 * one_byte_each:
        failures.append(f"SignSGD sent {s.sent_bytes} bytes for {s.raw_bytes} raw")
    # One host: hierarchical is the flat scheme (nothing to gain), same result.
    hier = H.TopKState(ratio=0.05, hierarchical=True, min_compress_numel=0)
    flat = H.TopKState(ratio=0.05, min_compress_numel=0)
    if not hier._hosts.trivial or hier._hosts.hosts != [list(range(world))]:
        failures.append(f"one host: host map {hier._hosts.hosts}")
    if not torch.equal(train(hier, H.topk_hook, rank), train(flat, H.topk_hook, rank)):
        failures.append("one host: hierarchical differs from flat")
    with pytest.raises(ValueError, match="state_dict is of a hierarchical state; this one is not hierarchical"):
        flat.load_state_dict(hier.state_dict())
    with pytest.raises(TypeError, match="a hierarchical compression state holds process groups and does not pickle"):
        pickle.dumps(hier)
    with pytest.raises(TypeError, match="compressor must be an agentcomm.hooks.Compressor"):
        H.PythonCompressionState(object())
    return failures


def test_python_topk_matches_native_topk() -> None:
    failures = run_world(python_vs_native, 3, timeout=300)
    assert failures == [[], [], []], failures


# ---- hierarchical, on 2 emulated hosts x 2 ranks ------------------------------------------------
HIER_SCRIPT = r"""
import json, os, sys, torch, torch.distributed as dist
from datetime import timedelta
sys.path.insert(0, sys.argv[2])
import agentcomm, agentcomm.hooks as H
from test_compression_custom import train
torch.set_num_threads(1)
rank = int(os.environ["RANK"])
dist.init_process_group("agentcomm", timeout=timedelta(seconds=120))
out = {}
dense = train(None, None, rank)
exact = H.TopKState(ratio=1.0, hierarchical=True, min_compress_numel=0)
out["hosts"] = exact._hosts.hosts
out["leader"] = exact._hosts.is_leader
out["exact_vs_dense"] = float((train(exact, H.topk_hook, rank) - dense).abs().max())
py = H.PythonCompressionState(H.TopKCompressor(1.0), hierarchical=True, min_compress_numel=0)
out["py_exact_vs_dense"] = float((train(py, H.python_compressor_hook, rank) - dense).abs().max())
runs = {}
for name, state, hook in (("topk", H.TopKState(ratio=0.05, hierarchical=True, min_compress_numel=0), H.topk_hook),
                          ("q8", H.QuantizeState(bits=8, hierarchical=True, min_compress_numel=0), H.quantize_hook),
                          ("randomk", H.RandomKState(ratio=0.05, hierarchical=True, min_compress_numel=0), H.randomk_hook)):
    p = train(state, hook, rank)
    same = [torch.empty_like(p) for _ in range(4)]
    dist.all_gather(same, p)
    s = state.stats()
    runs[name] = {"ranks_agree": all(torch.equal(q, same[0]) for q in same), "sent": s.sent_bytes,
                  "raw": s.raw_bytes, "vs_dense": float((p - dense).abs().max()),
                  "residuals": len(state.residuals)}
out["runs"] = runs
open(f"hier{rank}.json", "w").write(json.dumps(out))
dist.destroy_process_group()
"""


@needs_namespaces
def test_hierarchical_compression_on_two_hosts(tmp_path: Path) -> None:
    from agentcomm.emulate import Cluster, ClusterSpec

    (tmp_path / "hier.py").write_text(HIER_SCRIPT)
    with Cluster(ClusterSpec(hosts=2, ranks_per_host=2)) as cluster:
        code = cluster.launch([sys.executable, "hier.py", "x", str(Path(__file__).parent)], cwd=str(tmp_path),
                              timeout=300)
    assert code == 0
    outs = [json.loads((tmp_path / f"hier{r}.json").read_text()) for r in range(4)]
    for rank, o in enumerate(outs):
        assert o["hosts"] == [[0, 1], [2, 3]] and o["leader"] == (rank % 2 == 0), o
        assert o["exact_vs_dense"] < 1e-5 and o["py_exact_vs_dense"] < 1e-5, o
        for name, r in o["runs"].items():
            assert r["ranks_agree"], (rank, name, r)
            assert r["raw"] > 0 and (r["sent"] > 0) == o["leader"], (rank, name, r)  # only leaders cross hosts
            assert (r["residuals"] > 0) == o["leader"], (rank, name, r)  # error feedback lives on the leaders
            assert 0 < r["vs_dense"] < 0.5, (rank, name, r)  # compressed: close to dense, not equal


def test_python_compressor_trains_digits_like_the_native_one(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    import subprocess

    p = subprocess.run([sys.executable, "-m", "agentcomm.bench.tta", "--task", "digits", "--ranks", "2",
                        "--strategies", "topk-ef,py-topk-ef", "--max-steps", "300", "--eval-every", "100",
                        "--target", "0.999", "--out", "o", "--no-plot"], cwd=str(tmp_path), capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    native, python = json.loads((tmp_path / "o" / "results.json").read_text())["results"]
    assert native["final_acc"] > 0.85, native["final_acc"]
    assert abs(native["final_acc"] - python["final_acc"]) <= 0.01, (native["final_acc"], python["final_acc"])
