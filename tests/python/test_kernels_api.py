"""agentcomm.kernels: the kernels on any DLPack-capable array (NumPy here; CuPy in test_cuda.py).

One process, no process group. Every kernel is checked three ways: NumPy arrays
in give NumPy arrays out and share the caller's memory (in-place arguments
change the caller's array); the result equals, bit for bit, the same kernel on
torch tensors; and it equals a closed form computed with NumPy. Bad arguments
raise exceptions that name the problem.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

import agentcomm
from agentcomm import _C, kernels

RNG = np.random.default_rng(1234)
SIZES = [0, 1, 7, 1000, 65541]


def rand(n: int, dtype=np.float32) -> np.ndarray:
    x = RNG.standard_normal(n).astype(dtype)
    x[x == 0] = 0.5  # never zero: top-k and quantization see a real magnitude everywhere
    return x


def test_docstring_examples() -> None:
    result = doctest.testmod(kernels, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 10 and result.failed == 0


NP_OPS = {"sum": np.add, "prod": np.multiply, "min": np.minimum, "max": np.maximum}


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int32, np.int64, np.uint8, np.int8])
def test_reduce_matches_numpy(dtype) -> None:
    for n in SIZES:
        if np.issubdtype(dtype, np.integer):
            a = RNG.integers(-50 if dtype != np.uint8 else 0, 50, n).astype(dtype)
            b = RNG.integers(-50 if dtype != np.uint8 else 0, 50, n).astype(dtype)
        else:
            a, b = rand(n, dtype), rand(n, dtype)
        for op, ref in NP_OPS.items():
            with np.errstate(over="ignore"):
                want = ref(a, b)
            got = kernels.reduce(a, b, op=op)
            assert isinstance(got, np.ndarray) and got.dtype == dtype and got.shape == (n,)
            assert np.array_equal(got, want), (dtype, n, op)
    # In place, into the caller's own array (out aliases a).
    a, b = rand(1001), rand(1001)
    want = a + b
    same = kernels.reduce(a, b, out=a)
    assert same is a and np.array_equal(a, want)


def test_torch_in_torch_out_and_bitwise_equal() -> None:
    x = rand(100_003)
    t = torch.from_numpy(x.copy())
    idx_np, val_np = kernels.topk(x, 1000)
    idx_t, val_t = kernels.topk(t, 1000)
    assert isinstance(idx_t, torch.Tensor) and isinstance(idx_np, np.ndarray)
    assert np.array_equal(idx_np, idx_t.numpy()) and np.array_equal(val_np, val_t.numpy())
    c_np, s_np = kernels.quantize(x.copy(), 4, seed=9)
    c_t, s_t = _C.quantize(t.clone(), 4, 256, 9)
    assert np.array_equal(c_np, c_t.numpy()) and np.array_equal(s_np, s_t.numpy())


@pytest.mark.parametrize("sampled", [False, True])
def test_topk_closed_form_and_error_feedback(sampled: bool) -> None:
    for n in SIZES:
        for k in sorted({0, 1, n // 100, n // 2, n}):
            x, add = rand(n), rand(n)
            total = x + add
            order = np.argsort(-np.abs(total), kind="stable")[:k]
            want = np.sort(order)
            data = x.copy()
            idx, val = kernels.topk(data, k, add=add, error_feedback=True, sampled=sampled, seed=5)
            assert idx.dtype == np.int32 and val.dtype == np.float32
            assert np.array_equal(idx, want), (n, k)
            assert np.array_equal(val, total[want])
            residual = total.copy()
            residual[want] = 0
            assert np.array_equal(data, residual), "error feedback must leave the unsent part in the caller's array"
            untouched = x.copy()
            kernels.topk(untouched, k)
            assert np.array_equal(untouched, x), "without add / error_feedback data is only read"


def test_randomk_and_scatter() -> None:
    for n in SIZES:
        for k in sorted({0, min(1, n), n // 10, n}):
            x = rand(n)
            data = x.copy()
            idx, val = kernels.randomk(data, k, seed=77, error_feedback=True)
            want_idx = kernels.randomk_indices(77, n, k).numpy()
            assert np.array_equal(idx, want_idx.astype(np.int32)) and np.array_equal(val, x[want_idx])
            if k:
                assert np.all(np.diff(want_idx) > 0) and want_idx[0] >= 0 and want_idx[-1] < n
            rest = x.copy()
            rest[want_idx] = 0
            assert np.array_equal(data, rest)
            out = np.full(n, 7.0, np.float32)
            kernels.randomk_scatter(val, out, seed=77, scale=0.5)
            want = np.full(n, 7.0, np.float32)
            want[want_idx] = x[want_idx] * np.float32(0.5)
            assert np.array_equal(out, want)


@pytest.mark.parametrize("bits", [8, 4, 1])
def test_quantize_round_trip_and_error_feedback(bits: int) -> None:
    for n in SIZES:
        for block in (8, 256):
            x = rand(n)
            data = x.copy()
            codes, scales = kernels.quantize(data, bits, block=block, seed=3, error_feedback=True)
            assert codes.dtype == np.uint8 and scales.dtype == np.float32
            assert scales.shape == (-(-n // block),)
            decoded = kernels.dequantize(codes, scales, bits, n=n, block=block)
            assert decoded.shape == (n,)
            # Error feedback leaves exactly what the codes do not carry.
            assert np.array_equal(data, x - decoded), (bits, n, block)
            if bits > 1 and n:
                # Stochastic rounding: within one step of the block's scale.
                levels = 127 if bits == 8 else 7
                step = np.repeat(scales / levels, block)[:n]
                assert np.all(np.abs(decoded - x) <= step * 1.0001)
            if bits == 1 and n:
                # Sign and the block's mean magnitude.
                assert np.array_equal(np.sign(decoded), np.sign(x))
                means = [np.abs(x[i : i + block]).mean() for i in range(0, n, block)]
                assert np.allclose(np.repeat(scales, block)[:n], np.repeat(means, block)[:n], rtol=1e-5)
            acc = np.ones(n, np.float32)
            kernels.dequantize(codes, scales, bits, out=acc, block=block, alpha=2.0, accumulate=True)
            assert np.array_equal(acc, np.float32(1) + decoded * np.float32(2))


def test_cast_matches_numpy_rounding() -> None:
    x = np.concatenate([rand(10_000) * 1000, rand(1000) * 1e-6, np.array([65504, 65520, -1e9, 0.0], np.float32)])
    h = kernels.cast(x, np.float16)
    with np.errstate(over="ignore"):
        assert h.dtype == np.float16 and np.array_equal(h, x.astype(np.float16))
    back = kernels.cast(h, "float32", scale=2.0)
    assert back.dtype == np.float32 and np.array_equal(back, h.astype(np.float32) * np.float32(2.0))
    out = np.empty(x.size, np.float16)
    assert kernels.cast(x, out=out, scale=0.25) is out
    with np.errstate(over="ignore"):
        assert np.array_equal(out, (x * np.float32(0.25)).astype(np.float16))
    # bfloat16 (no NumPy type): through torch, equal to torch's own rounding.
    bf = kernels.cast(torch.from_numpy(x), torch.bfloat16)
    assert torch.equal(bf, torch.from_numpy(x).to(torch.bfloat16))


def test_pack_unpack() -> None:
    parts = [rand(n) for n in (5, 0, 70_000, 3)]
    flat = kernels.pack(parts, divide_by=4.0)
    assert isinstance(flat, np.ndarray)
    assert np.array_equal(flat, np.concatenate(parts) / np.float32(4.0))
    outs = [np.zeros_like(p) for p in parts]
    kernels.unpack(flat, outs, multiply_by=4.0)
    for p, o in zip(parts, outs):
        assert np.array_equal(o, (p / np.float32(4.0)) * np.float32(4.0))
    big = np.full(80_000, -1.0, np.float32)
    assert kernels.pack(parts, out=big) is big
    assert np.array_equal(big[:70_008], np.concatenate(parts)) and np.all(big[70_008:] == -1.0)


def test_bad_arguments_name_the_problem() -> None:
    x = rand(100)
    with pytest.raises(TypeError, match="__dlpack__"):
        kernels.topk([1.0, 2.0], 1)
    with pytest.raises(TypeError, match="add must be"):
        kernels.topk(x, 1, add="nope")
    ro = x.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        kernels.reduce(x, x, out=ro)
    with pytest.raises(ValueError, match="read-only"):
        kernels.topk(ro, 3, error_feedback=True)
    assert np.array_equal(kernels.topk(ro, 3)[1], kernels.topk(x, 3)[1])  # reading a read-only array is fine
    with pytest.raises(ValueError, match="contiguous"):
        kernels.topk(rand(100)[::2], 3)
    with pytest.raises(TypeError, match="float32"):
        kernels.topk(x.astype(np.float64), 3)
    with pytest.raises(ValueError, match="sizes differ"):
        kernels.reduce(x, rand(99))
    with pytest.raises(ValueError, match="op must be"):
        kernels.reduce(x, x, op="mean")
    with pytest.raises(ValueError, match="bits must be"):
        kernels.quantize(x, 3)
    with pytest.raises(ValueError, match="give n"):
        kernels.dequantize(*kernels.quantize(x.copy(), 8), 8)
    with pytest.raises(ValueError, match="k <= 100"):
        kernels.randomk(x, 101, seed=1)
    with pytest.raises(TypeError, match="unknown dtype"):
        kernels.cast(x, "float17")
    if not agentcomm.cuda_built():
        with pytest.raises(ValueError, match="CUDA"):
            kernels.reduce(torch.ones(4, device="meta"), torch.ones(4, device="meta"))


def test_one_version_everywhere() -> None:
    """The native code's version (CMake's project VERSION) is the package's (pyproject.toml)."""
    import importlib.metadata

    assert _C.version() == agentcomm.__version__ == importlib.metadata.version("agentcomm")
