"""Microbenchmarks of agentcomm's compression kernels against torch (pytest-benchmark).

    pytest bench/test_compression.py --benchmark-only --benchmark-group-by=func

One thread (a rank encodes its buckets on one core), 25M float32 (a 100 MB bucket set):
- top-k of 1% by magnitude: agentcomm's radix selection (exact, and DGC's sampled
  threshold) vs ``torch.topk(x.abs(), k, sorted=False)``;
- 8/4/1-bit block quantization and its decoding vs ``torch.quantize_per_tensor`` /
  ``dequantize`` (int8, one scale: less work than ours) and against a plain copy of the
  same input (``out.copy_(x)``: this machine's memcpy bandwidth, the yardstick of the
  "quantize at >= 50% of memcpy" target);
- fp16 cast with the pre-division fused vs ``torch.mul(x, s).half()``.

With --benchmark-disable (as in scripts/test.sh) each case runs once on 1M elements and only
the results are checked.
"""

from __future__ import annotations

import pytest
import torch

import agentcomm._C as C

pytestmark = pytest.mark.filterwarnings("ignore:.*quantize_per_tensor.*:UserWarning")


@pytest.fixture(scope="module")
def n(request) -> int:
    disabled = request.config.getoption("benchmark_disable", default=False)
    return (1 << 20) if disabled else 25_000_000


@pytest.fixture(scope="module")
def data(n: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("impl", ["torch", "agentcomm-exact", "agentcomm-dgc"])
def test_topk_1_percent(benchmark, data: torch.Tensor, impl: str) -> None:
    k = data.numel() // 100
    benchmark.extra_info["case"] = "top-k 1%"
    if impl == "torch":
        _, idx = benchmark(lambda: torch.topk(data.abs(), k, sorted=False))
    else:
        idx, _ = benchmark(C.topk, data, k, sampled=impl.endswith("dgc"), seed=1)
        idx = idx.long()
    want = torch.topk(data.abs(), k, sorted=False).indices
    assert torch.equal(torch.sort(idx).values, torch.sort(want).values)  # distinct magnitudes: same set


@pytest.mark.parametrize("impl", ["memcpy", "torch-int8", "agentcomm-8", "agentcomm-4", "agentcomm-1",
                                  "agentcomm-8-ef"])
def test_quantize(benchmark, data: torch.Tensor, impl: str) -> None:
    benchmark.extra_info["case"] = "quantize"
    benchmark.extra_info["input_bytes"] = data.numel() * 4
    if impl == "memcpy":
        out = torch.empty_like(data)
        benchmark(out.copy_, data)
        assert torch.equal(out, data)
        return
    if impl == "torch-int8":
        scale = float(data.abs().max()) / 127
        q = benchmark(torch.quantize_per_tensor, data, scale, 0, torch.qint8)
        assert (q.dequantize() - data).abs().max() <= scale
        return
    bits = int(impl.split("-")[1])
    codes, scales = C.quantize(data, bits, 256, 1)  # preallocated outputs: no page faults timed
    if impl.endswith("-ef"):
        residual = torch.zeros_like(data)
        benchmark(C.quantize, residual, bits, 256, 1, add=data, error_feedback=True, codes=codes, scales=scales)
        return
    benchmark(C.quantize, data, bits, 256, 1, codes=codes, scales=scales)
    out = torch.empty_like(data)
    C.dequantize(codes, scales, out, bits, 256)
    step = scales.repeat_interleave(256)[: data.numel()] / {8: 127, 4: 7, 1: 1}[bits]
    if bits != 1:
        assert bool(((out - data).abs() <= step * 1.0001).all())


@pytest.mark.parametrize("impl", ["torch-int8", "agentcomm-8", "agentcomm-4", "agentcomm-1"])
def test_dequantize(benchmark, data: torch.Tensor, impl: str) -> None:
    benchmark.extra_info["case"] = "dequantize"
    if impl == "torch-int8":
        q = torch.quantize_per_tensor(data, float(data.abs().max()) / 127, 0, torch.qint8)
        benchmark(q.dequantize)
        return
    bits = int(impl.split("-")[1])
    codes, scales = C.quantize(data, bits, 256, 1)
    out = torch.empty_like(data)
    benchmark(C.dequantize, codes, scales, out, bits, 256)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("impl", ["torch", "agentcomm"])
def test_fp16_cast_with_division(benchmark, data: torch.Tensor, impl: str) -> None:
    benchmark.extra_info["case"] = "fp16 cast / 4"
    half = torch.empty(data.numel(), dtype=torch.float16)
    if impl == "torch":
        benchmark(lambda: half.copy_(torch.mul(data, 0.25)))
    else:
        benchmark(C.cast_into, data, half, 0.25)
    assert torch.equal(half, (data * 0.25).half())
