"""agentcomm's compute kernels for any DLPack-capable array.

The reduction, multi-tensor pack/unpack, cast, top-k, random-k and
quantization kernels that the backend and the compression hooks run, callable
directly on ``torch.Tensor``, NumPy, CuPy, JAX or any other array that
implements ``__dlpack__``. Arrays are shared, never copied: a CPU array runs
the CPU kernel on its memory, a CUDA array (CuPy, a CUDA tensor) the CUDA twin
on torch's current stream of its device (a build with CUDA; ``agentcomm.cuda_built()``).
The two are bitwise equal by construction.

Results come back as arrays of the first array argument's library (its
``from_dlpack``; a ``torch.Tensor`` where the library has none), so NumPy in
gives NumPy out. Arguments a kernel writes (``out``, and ``data`` when ``add``
or ``error_feedback`` is given) are written in place in the caller's memory;
a read-only NumPy array there is refused. CUDA work on a foreign array's
memory is complete when the call returns (DLPack leaves the caller's stream
unknown, so the kernel's stream is synchronized); results returned through
DLPack follow the consumer's stream as the protocol specifies.

Example:
    >>> import numpy as np
    >>> from agentcomm import kernels
    >>> x = np.array([0.5, -3.0, 2.0, 0.1], dtype=np.float32)
    >>> idx, val = kernels.topk(x, 2)
    >>> idx.tolist(), val.tolist()
    ([1, 2], [-3.0, 2.0])
    >>> kernels.reduce(x, x, op="max").tolist()
    [0.5, -3.0, 2.0, 0.10000000149011612]
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional, Sequence, Union

import torch

from . import _C

__all__ = [
    "Array",
    "cast",
    "dequantize",
    "pack",
    "quantize",
    "randomk",
    "randomk_indices",
    "randomk_scatter",
    "reduce",
    "topk",
    "unpack",
]

#: Anything with ``__dlpack__``: torch.Tensor, numpy.ndarray, cupy.ndarray, jax.Array, ...
Array = Any

# Where a library's from_dlpack lives when not at the top of its array type's module.
_FROM_DLPACK_HOME = {"jaxlib": "jax.numpy", "jax": "jax.numpy"}


class _Args:
    """The call's arrays as tensors sharing their memory, and how to hand results back.

    ``first`` (the first array argument) decides the kind of the results.
    Tensors that a kernel writes are registered with ``writes``; ``finish``
    synchronizes the device when one of them is a foreign CUDA array.
    """

    def __init__(self, op: str, first: Array, name: str, writes: bool = False) -> None:
        self.op = op
        self._export = _exporter(first)
        self._sync: Optional[torch.device] = None
        self.first = self.take(first, name, writes)

    def take(self, x: Array, name: str, writes: bool = False) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            return x
        if not hasattr(x, "__dlpack__"):
            raise TypeError(
                f"agentcomm.kernels.{self.op}: {name} must be a torch.Tensor or an array with __dlpack__ "
                f"(NumPy, CuPy, JAX, ...), got {type(x).__module__}.{type(x).__qualname__}"
            )
        if writes and getattr(getattr(x, "flags", None), "writeable", True) is False:
            raise ValueError(f"agentcomm.kernels.{self.op}: {name} is written in place but is a read-only array")
        try:
            t = torch.from_dlpack(x)
        except (BufferError, RuntimeError, TypeError) as e:
            raise TypeError(f"agentcomm.kernels.{self.op}: {name} could not be shared through DLPack: {e}") from e
        if writes and t.is_cuda:
            self._sync = t.device
        return t

    def writes(self, x: Array, name: str) -> torch.Tensor:
        return self.take(x, name, writes=True)

    def give(self, t: torch.Tensor) -> Array:
        return self._export(t)

    def finish(self) -> None:
        if self._sync is not None:
            torch.cuda.current_stream(self._sync).synchronize()


def _exporter(x: Array) -> Callable[[torch.Tensor], Array]:
    if isinstance(x, torch.Tensor):
        return lambda t: t
    top = type(x).__module__.partition(".")[0]
    lib = sys.modules.get(_FROM_DLPACK_HOME.get(top, top))
    convert = getattr(lib, "from_dlpack", None)
    return convert if callable(convert) else (lambda t: t)


def _torch_dtype(dtype: Union[str, torch.dtype, Any]) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    name = dtype if isinstance(dtype, str) else getattr(dtype, "name", None) or getattr(dtype, "__name__", None)
    got = getattr(torch, str(name), None)
    if not isinstance(got, torch.dtype):
        raise TypeError(f"agentcomm.kernels.cast: unknown dtype {dtype!r}")
    return got


def reduce(a: Array, b: Array, op: str = "sum", out: Optional[Array] = None) -> Array:
    """``out = a (op) b`` elementwise; op is sum, prod, min or max.

    CPU: every dtype the backend reduces (float32/64, float16, bfloat16,
    integers), with the vector loops the collectives use. CUDA: float32/64,
    float16, bfloat16. ``out`` may be ``a`` or ``b``; without it a new array
    is returned.

    Example:
        >>> import numpy as np; from agentcomm import kernels
        >>> kernels.reduce(np.ones(3, np.float32), np.full(3, 2, np.float32)).tolist()
        [3.0, 3.0, 3.0]
    """
    args = _Args("reduce", a, "a")
    tb = args.take(b, "b")
    to = torch.empty_like(args.first) if out is None else args.writes(out, "out")
    _C.reduce_into(to, args.first, tb, op)
    args.finish()
    return args.give(to) if out is None else out


def pack(
    arrays: Sequence[Array], out: Optional[Array] = None, *, divide_by: float = 1.0, multiply_by: float = 1.0
) -> Array:
    """Concatenates ``arrays`` (flattened) into one flat array, scaled, in one pass (one launch on CUDA).

    The multi-tensor kernel of apex's multi_tensor_apply kind: the averagers
    pack a model's parameters with it. Give ``divide_by`` or ``multiply_by``,
    not both. ``out`` must hold at least the total element count.

    Example:
        >>> import numpy as np; from agentcomm import kernels
        >>> kernels.pack([np.ones(2, np.float32), np.zeros(1, np.float32)], divide_by=2.0).tolist()
        [0.5, 0.5, 0.0]
    """
    arrays = list(arrays)
    if not arrays and out is None:
        raise ValueError("agentcomm.kernels.pack: no arrays and no out")
    args = _Args("pack", arrays[0] if arrays else out, "arrays[0]" if arrays else "out", writes=not arrays)
    ts = [args.take(x, f"arrays[{i}]") for i, x in enumerate(arrays)]
    if out is None:
        flat = torch.empty(sum(t.numel() for t in ts), dtype=ts[0].dtype, device=ts[0].device)
    else:
        flat = args.writes(out, "out") if arrays else args.first
    _C.pack_into(ts, flat, divide_by, multiply_by)
    args.finish()
    return args.give(flat) if out is None else out


def unpack(flat: Array, arrays: Sequence[Array], *, divide_by: float = 1.0, multiply_by: float = 1.0) -> None:
    """Writes consecutive slices of ``flat``, scaled, into ``arrays`` in place (pack's inverse).

    Example:
        >>> import numpy as np; from agentcomm import kernels
        >>> parts = [np.empty(2, np.float32), np.empty(1, np.float32)]
        >>> kernels.unpack(np.arange(3, dtype=np.float32), parts, multiply_by=10.0)
        >>> [p.tolist() for p in parts]
        [[0.0, 10.0], [20.0]]
    """
    args = _Args("unpack", flat, "flat")
    ts = [args.writes(x, f"arrays[{i}]") for i, x in enumerate(arrays)]
    _C.unpack_from(args.first, ts, divide_by, multiply_by)
    args.finish()


def cast(src: Array, dtype: Any = None, out: Optional[Array] = None, scale: float = 1.0) -> Array:
    """``src * scale`` converted between float32 and float16/bfloat16 (round to nearest even).

    Give the target ``dtype`` (``"float16"``, ``torch.bfloat16``, ``numpy.float16``...)
    or an ``out`` array of it.

    Example:
        >>> import numpy as np; from agentcomm import kernels
        >>> kernels.cast(np.array([1.0, 1 / 3], np.float32), "float16").tolist()
        [1.0, 0.333251953125]
    """
    args = _Args("cast", src, "src")
    if out is None:
        if dtype is None:
            raise ValueError("agentcomm.kernels.cast: give dtype or out")
        dst = torch.empty_like(args.first, dtype=_torch_dtype(dtype))
    else:
        dst = args.writes(out, "out")
    _C.cast_into(args.first, dst, scale)
    args.finish()
    return args.give(dst) if out is None else out


def topk(
    data: Array, k: int, *, add: Optional[Array] = None, error_feedback: bool = False, sampled: bool = False,
    seed: int = 0
) -> tuple[Array, Array]:
    """The ``k`` elements of largest magnitude: ``(indices int32 ascending, values)``.

    float32, contiguous, fewer than 2^31 elements. ``add`` is added into
    ``data`` first (an error-feedback residual); ``error_feedback`` then zeroes
    the selected elements in ``data``, leaving what was not sent. Ties at the
    boundary go to the lower index. ``sampled`` estimates the threshold from a
    sample first (DGC's trick; same result, one pass less when it hits). CPU:
    radix select; CUDA: a two-level histogram select, no sort.

    Example:
        >>> import numpy as np; from agentcomm import kernels
        >>> g = np.array([1.0, -4.0, 3.0], np.float32)
        >>> kernels.topk(g, 1, error_feedback=True)[0].tolist(), g.tolist()
        ([1], [1.0, 0.0, 3.0])
    """
    args = _Args("topk", data, "data", writes=add is not None or error_feedback)
    ta = None if add is None else args.take(add, "add")
    idx, val = _C.topk(args.first, k, add=ta, error_feedback=error_feedback, sampled=sampled, seed=seed)
    args.finish()
    return args.give(idx), args.give(val)


def randomk_indices(seed: int, n: int, k: int) -> Array:
    """The ``k`` indices random-k draws from ``n`` elements for ``seed``: one per stratum, ascending.

    Every rank computes the same indices from the same seed, so they are never
    sent. Returns an int64 ``torch.Tensor`` on the CPU.

    Example:
        >>> from agentcomm import kernels
        >>> idx = kernels.randomk_indices(7, 100, 10)
        >>> bool((idx[1:] > idx[:-1]).all()) and all(10 * j <= i < 10 * (j + 1) for j, i in enumerate(idx.tolist()))
        True
    """
    return _C.randomk_indices(seed, n, k)


def randomk(
    data: Array, k: int, seed: int, *, add: Optional[Array] = None, error_feedback: bool = False
) -> tuple[Array, Array]:
    """Random-k: ``(indices int32, values)`` at ``randomk_indices(seed, n, k)``.

    ``add`` and ``error_feedback`` as for :func:`topk`. The values alone
    suffice to rebuild the sparse tensor with :func:`randomk_scatter`.

    Example:
        >>> import numpy as np; from agentcomm import kernels
        >>> x = np.arange(8, dtype=np.float32)
        >>> idx, val = kernels.randomk(x, 4, seed=3)
        >>> bool((x[idx] == val).all())
        True
    """
    args = _Args("randomk", data, "data", writes=add is not None or error_feedback)
    ta = None if add is None else args.take(add, "add")
    val = _C.randomk(args.first, k, seed, add=ta, error_feedback=error_feedback)
    idx = _C.randomk_indices(seed, args.first.numel(), k).to(device=val.device, dtype=torch.int32)
    args.finish()
    return args.give(idx), args.give(val)


def randomk_scatter(values: Array, out: Array, seed: int, *, scale: float = 1.0) -> Array:
    """``out[randomk_indices(seed, out.size, values.size)] = values * scale``; the rest of ``out`` is left as it is.

    Example:
        >>> import numpy as np; from agentcomm import kernels
        >>> x = np.arange(8, dtype=np.float32); _, val = kernels.randomk(x, 4, seed=3)
        >>> y = kernels.randomk_scatter(val, np.zeros(8, np.float32), seed=3)
        >>> int((y != 0).sum()) <= 4 and bool(((y == 0) | (y == x)).all())
        True
    """
    args = _Args("randomk_scatter", values, "values")
    _C.randomk_scatter(args.first, args.writes(out, "out"), seed, scale)
    args.finish()
    return out


def quantize(
    data: Array, bits: int, *, block: int = 256, seed: int = 0, add: Optional[Array] = None,
    error_feedback: bool = False
) -> tuple[Array, Array]:
    """Block-scaled 8/4/1-bit quantization: ``(codes uint8, scales float32)``.

    One scale per ``block`` elements (8/4-bit: the block's largest magnitude,
    stochastic rounding from ``seed``; 1-bit: sign and mean magnitude).
    ``add`` is added into ``data`` first; ``error_feedback`` leaves
    ``data - dequantize(codes)`` in ``data``.

    Example:
        >>> import numpy as np; from agentcomm import kernels
        >>> x = np.linspace(-1, 1, 512, dtype=np.float32)
        >>> codes, scales = kernels.quantize(x, 8)
        >>> y = kernels.dequantize(codes, scales, 8, n=512)
        >>> bool(np.abs(y - x).max() <= scales.max() / 127)
        True
    """
    args = _Args("quantize", data, "data", writes=add is not None or error_feedback)
    ta = None if add is None else args.take(add, "add")
    codes, scales = _C.quantize(args.first, bits, block, seed, add=ta, error_feedback=error_feedback)
    args.finish()
    return args.give(codes), args.give(scales)


def dequantize(
    codes: Array, scales: Array, bits: int, *, n: Optional[int] = None, out: Optional[Array] = None,
    block: int = 256, alpha: float = 1.0, accumulate: bool = False
) -> Array:
    """Decodes :func:`quantize`'s output: ``out (+)= decode(codes, scales) * alpha``.

    Give ``out`` (float32, written or, with ``accumulate``, added to) or the
    element count ``n`` for a new array.

    Example:
        >>> import numpy as np; from agentcomm import kernels
        >>> codes, scales = kernels.quantize(np.ones(16, np.float32), 1, block=8)
        >>> kernels.dequantize(codes, scales, 1, n=16, block=8).tolist() == [1.0] * 16
        True
    """
    args = _Args("dequantize", codes, "codes")
    ts = args.take(scales, "scales")
    if out is None:
        if n is None:
            raise ValueError("agentcomm.kernels.dequantize: give n (the element count) or out")
        if accumulate:
            raise ValueError("agentcomm.kernels.dequantize: accumulate needs out")
        to = torch.empty(n, dtype=torch.float32, device=args.first.device)
    else:
        to = args.writes(out, "out")
        if n is not None and n != to.numel():
            raise ValueError(f"agentcomm.kernels.dequantize: n={n} but out has {to.numel()} elements")
    _C.dequantize(args.first, ts, to, bits, block, alpha, accumulate)
    args.finish()
    return args.give(to) if out is None else out
