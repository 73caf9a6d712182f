"""Compressed all-reduces as Python ops returning a ``torch.futures.Future``.

They run agentcomm's native compressed collectives (``csrc/algorithms/compressed.h``)
on the process group's worker thread, like any collective: the caller only
enqueues. The tensor is reduced in place; the future's value is the tensor.

Example:
    >>> import torch, torch.distributed as dist, agentcomm
    >>> from agentcomm.hooks import ops
    >>> g = torch.randn(1000)                                              # doctest: +SKIP
    >>> res = torch.zeros_like(g)                                          # doctest: +SKIP
    >>> ops.sparse_all_reduce(g, k=10, residual=res).wait()                # doctest: +SKIP
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from .. import _C

__all__ = ["sparse_all_reduce", "quantized_all_reduce", "quant_slice", "native_backend", "SPARSE_METHODS"]

SPARSE_METHODS = ("topk", "dgc", "randomk")


def native_backend(group: Optional[dist.ProcessGroup] = None) -> "_C.ProcessGroupAgentComm":
    """The agentcomm backend object behind ``group`` (default: the world group).

    Raises TypeError when the group runs another backend: compressed
    collectives are agentcomm's own.

    Example:
        >>> native_backend().transport                                     # doctest: +SKIP
        'shm+cma/tcp'
    """
    pg = group if group is not None else dist.distributed_c10d._get_default_group()
    try:
        backend = pg._get_backend(torch.device("cpu"))
    except RuntimeError as e:  # no CPU backend in this group
        raise TypeError(f"agentcomm compressed collectives need a CPU agentcomm backend in the group: {e}") from e
    if not isinstance(backend, _C.ProcessGroupAgentComm):
        raise TypeError(
            "agentcomm compressed collectives need a process group created with backend='agentcomm', "
            f"this group's CPU backend is {dist.get_backend(pg)!r}"
        )
    return backend


def _future(work: dist.Work, tensor: torch.Tensor) -> torch.futures.Future:
    def result(fut: torch.futures.Future) -> torch.Tensor:
        fut.value()  # re-raises the collective's error into the returned future
        return tensor

    return work.get_future().then(result)


def sparse_all_reduce(
    tensor: torch.Tensor,
    k: int,
    *,
    residual: Optional[torch.Tensor] = None,
    method: str = "topk",
    seed: int = 0,
    average: bool = True,
    group: Optional[dist.ProcessGroup] = None,
    stats: Optional[torch.Tensor] = None,
) -> torch.futures.Future:
    """Sparsified all-reduce of a contiguous float32 tensor, in place.

    CPU or CUDA: on CUDA the selection and the final decode run on the device
    (residual there too) and only the pairs and the dense result cross PCIe;
    ``AGENTCOMM_CUDA_ENCODE=0`` stages the whole tensor through the host instead.

    Each rank contributes the k elements ``method`` picks: ``"topk"`` (exact, by
    magnitude), ``"dgc"`` (top-k with a sampled threshold; same result, one
    pass) or ``"randomk"`` (indices from ``seed``, which must match across ranks;
    so must ``k``). With ``residual`` (error feedback, float32, same size), the
    selection runs on ``residual + tensor`` and ``residual`` keeps what was not
    sent. The result is the sum (``average``: the mean) of what the ranks sent,
    dense. ``stats``: an int64[4] tensor that (raw bytes, wire bytes, encode ns,
    decode ns) are added to.

    Example:
        >>> g = torch.randn(10_000); r = torch.zeros_like(g)                # doctest: +SKIP
        >>> sparse_all_reduce(g, 100, residual=r).wait() is g               # doctest: +SKIP
        True
    """
    if method not in SPARSE_METHODS:
        raise ValueError(f"method must be one of {SPARSE_METHODS}, got {method!r}")
    pg = group if group is not None else dist.distributed_c10d._get_default_group()
    scale = 1.0 / pg.size() if average else 1.0
    work = native_backend(pg).sparse_all_reduce(
        tensor, residual, k=int(k), method=method, seed=_u63(seed), scale=scale, stats=stats
    )
    return _future(work, tensor)


def quantized_all_reduce(
    tensor: torch.Tensor,
    *,
    bits: int = 8,
    block: int = 256,
    residual: Optional[torch.Tensor] = None,
    server_residual: Optional[torch.Tensor] = None,
    seed: int = 0,
    average: bool = True,
    group: Optional[dist.ProcessGroup] = None,
    stats: Optional[torch.Tensor] = None,
) -> torch.futures.Future:
    """Quantized all-reduce (compressed reduce-scatter + all-gather), in place.

    On CUDA tensors the quantization and the final dequantization run on the
    device; the codes and scales cross PCIe.

    ``bits`` 8 or 4: stochastic rounding with one scale per ``block`` elements
    (unbiased); 1: scaled sign (use error feedback). ``residual`` (the tensor's
    size) is this rank's error feedback; ``server_residual`` (``quant_slice(...)[1]``
    elements) is the error feedback of the second quantization, of the slice
    this rank reduces. ``bits`` and ``block`` must match across ranks.

    Example:
        >>> g = torch.randn(10_000)                                          # doctest: +SKIP
        >>> quantized_all_reduce(g, bits=8).wait()                           # doctest: +SKIP
    """
    pg = group if group is not None else dist.distributed_c10d._get_default_group()
    scale = 1.0 / pg.size() if average else 1.0
    work = native_backend(pg).quantized_all_reduce(
        tensor,
        residual,
        server_residual,
        bits=int(bits),
        block=int(block),
        seed=_u63(seed),
        scale=scale,
        stats=stats,
    )
    return _future(work, tensor)


def quant_slice(numel: int, block: int, group: Optional[dist.ProcessGroup] = None) -> tuple[int, int]:
    """(offset, count) of the slice this rank reduces in a quantized all-reduce.

    Example:
        >>> quant_slice(1000, 256)                                           # doctest: +SKIP
        (0, 512)
    """
    pg = group if group is not None else dist.distributed_c10d._get_default_group()
    return _C.quant_slice(int(numel), int(block), pg.rank(), pg.size())


def _u63(seed: int) -> int:
    return int(seed) & ((1 << 63) - 1)
