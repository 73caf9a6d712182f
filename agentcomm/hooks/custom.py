"""Compressors written in Python (GRACE-style), run through the same DDP hook machinery.

A researcher writes :class:`Compressor`'s two methods; :class:`PythonCompressionState` and
:func:`python_compressor_hook` give it what the native schemes have: error feedback (the
residual memory, kept per bucket and following its parameters when DDP re-buckets), warm-up,
stats (raw / sent bytes, encode and decode time), checkpoints (``state_dict``), hierarchical
mode (dense inside a host, compressed between hosts) and the time-to-accuracy runner
(``python -m agentcomm.bench.tta --strategies py-topk-ef``).

How a bucket travels: ``g`` (+ the residual, with error feedback) -> ``encode`` -> payload
tensors, packed into one byte buffer -> all_gather over the group -> every rank's payload
``decode``-d -> averaged into the bucket. The residual keeps ``g - decode(encode(g))``. A
payload must have the same shapes and dtypes on every rank for a given bucket (top-k with a
fixed k does; a threshold that keeps a varying count does not).

Example (the Python twin of the native top-k, :class:`TopKCompressor`)::

    class TopK(Compressor):
        def __init__(self, ratio):
            self.ratio = ratio
        def encode(self, g, ctx):
            k = max(1, int(g.numel() * self.ratio))
            idx = g.abs().topk(k, sorted=False).indices
            return [g[idx], idx.to(torch.int32)]
        def decode(self, payload, ctx):
            out = torch.zeros(ctx.numel)
            out[payload[1].long()] = payload[0]
            return out

    state = PythonCompressionState(TopK(0.01))      # error feedback on by default
    ddp_model.register_comm_hook(state, python_compressor_hook)
"""

# No `from __future__ import annotations`: DDP checks the hook's annotations as objects.
import dataclasses
import time
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist

from .compression import CompressionState, _compressed, _dense, _mix


@dataclasses.dataclass
class BucketInfo:
    """What a compressor may know about the bucket it encodes: its size, its index in the
    compression layout, the iteration, the group's size and a seed equal on every rank
    (for schemes that draw shared random indices)."""

    numel: int
    index: int
    iteration: int
    world: int
    seed: int


class Compressor:
    """Subclass and implement :meth:`encode` and :meth:`decode` (both pure: no communication).

    Example:
        >>> class Identity(Compressor):
        ...     def encode(self, g, ctx): return [g.clone()]
        ...     def decode(self, payload, ctx): return payload[0]
    """

    def encode(self, g: torch.Tensor, ctx: BucketInfo) -> List[torch.Tensor]:
        """The payload for the float32 vector ``g`` (with error feedback: gradient + residual)."""
        raise NotImplementedError

    def decode(self, payload: List[torch.Tensor], ctx: BucketInfo) -> torch.Tensor:
        """A float32 vector of ``ctx.numel`` elements from one rank's payload."""
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        """The compressor's own state for checkpoints (none by default)."""
        return {}

    def load_state_dict(self, sd: Dict[str, Any]) -> None:
        pass


class TopKCompressor(Compressor):
    """Top-k by magnitude in Python: the worked example, the twin of the native ``TopKState``.

    Example:
        >>> state = PythonCompressionState(TopKCompressor(ratio=0.01))   # doctest: +SKIP
    """

    def __init__(self, ratio: float = 0.01) -> None:
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        self.ratio = float(ratio)

    def encode(self, g: torch.Tensor, ctx: BucketInfo) -> List[torch.Tensor]:
        k = max(1, int(round(g.numel() * self.ratio)))
        idx = g.abs().topk(k, sorted=False).indices
        return [g[idx], idx.to(torch.int32)]

    def decode(self, payload: List[torch.Tensor], ctx: BucketInfo) -> torch.Tensor:
        values, idx = payload
        out = torch.zeros(ctx.numel, dtype=torch.float32, device=values.device)
        out[idx.long()] = values
        return out


class PythonCompressionState(CompressionState):
    """A :class:`Compressor` with the machinery of the native schemes (see the module's text).

    Example:
        >>> state = PythonCompressionState(TopKCompressor(0.01), warmup_iters=10)   # doctest: +SKIP
    """

    def __init__(self, compressor: Compressor, process_group: Optional[dist.ProcessGroup] = None,
                 **kwargs: Any) -> None:
        if not isinstance(compressor, Compressor):
            raise TypeError(f"compressor must be an agentcomm.hooks.Compressor, got {type(compressor).__name__}")
        super().__init__(process_group, **kwargs)
        self.compressor = compressor

    def state_dict(self) -> Dict[str, Any]:
        return {**super().state_dict(), "compressor": self.compressor.state_dict()}

    def load_state_dict(self, sd: Dict[str, Any]) -> None:
        super().load_state_dict(sd)
        self.compressor.load_state_dict(sd.get("compressor", {}))

    def __setstate__(self, sd: Dict[str, Any]) -> None:
        raise TypeError("a PythonCompressionState is restored with load_state_dict() into a new state "
                        "built with its compressor, not unpickled")


# Each payload tensor starts at a multiple of 8 bytes of the packed buffer, so that every
# rank's piece of the gathered buffer can be viewed back as its dtypes without a copy.
_ALIGN = 8


def _padded(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


def _pack(payload: List[torch.Tensor]) -> torch.Tensor:
    sizes = [p.numel() * p.element_size() for p in payload]
    flat = torch.zeros(sum(_padded(n) for n in sizes), dtype=torch.uint8,
                       device=payload[0].device if payload else "cpu")
    off = 0
    for p, n in zip(payload, sizes):
        flat[off:off + n] = p.contiguous().reshape(-1).view(torch.uint8)
        off += _padded(n)
    return flat


def _unpack(flat: torch.Tensor, like: List[torch.Tensor]) -> List[torch.Tensor]:
    out, off = [], 0
    for p in like:
        n = p.numel() * p.element_size()
        out.append(flat[off:off + n].view(p.dtype).reshape(p.shape))
        off += _padded(n)
    return out


# torch 2.13 renamed all_gather_into_tensor (and warns on the old name).
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def python_compressor_hook(state: PythonCompressionState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Averages the bucket through ``state.compressor`` (encode, all_gather, decode, average).

    Example:
        >>> ddp_model.register_comm_hook(PythonCompressionState(TopKCompressor(0.01)),
        ...                              python_compressor_hook)   # doctest: +SKIP
    """
    if not state._compress_now(bucket.buffer().numel()):
        return _dense(state, bucket)

    def launch(g: torch.Tensor, index: int, iteration: int) -> torch.futures.Future:
        group = state.comm_group()
        world = group.size()
        n = g.numel()
        ctx = BucketInfo(numel=n, index=index, iteration=iteration, world=world, seed=_mix(state.seed, iteration, index))
        t0 = time.perf_counter()
        residual = state._residual(index, n, g.device) if state.error_feedback else None
        if residual is not None:
            g.add_(residual)
        payload = state.compressor.encode(g, ctx)
        # With error feedback this rank's own decode is needed now (the residual keeps what it
        # lost) and again in the average: decode it once. A decode that views g is copied,
        # since g is overwritten before the average.
        own = None
        if residual is not None:
            own = state.compressor.decode(payload, ctx)
            if own.untyped_storage().data_ptr() == g.untyped_storage().data_ptr():
                own = own.clone()
            residual.copy_(g).sub_(own)
        me = group.rank()
        mine = _pack(payload)
        t1 = time.perf_counter()
        state._py.encode_seconds += t1 - t0
        state._py.raw_bytes += n * 4
        state._py.sent_bytes += (world - 1) * mine.numel()  # a ring all_gather's share
        gathered = torch.empty(world * mine.numel(), dtype=torch.uint8, device=mine.device)
        work = _all_gather(gathered, mine, group=group, async_op=True)

        def decode(done: torch.futures.Future) -> torch.Tensor:
            done.value()  # propagates a failed collective
            t2 = time.perf_counter()
            g.zero_()
            for r in range(world):
                if r == me and own is not None:
                    g.add_(own)
                    continue
                piece = gathered[r * mine.numel():(r + 1) * mine.numel()]
                g.add_(state.compressor.decode(_unpack(piece, payload), ctx))
            g.div_(world)
            state._py.decode_seconds += time.perf_counter() - t2
            return g

        return work.get_future().then(decode)

    return _compressed(state, bucket, launch)
