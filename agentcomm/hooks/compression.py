"""Gradient-compression DDP comm hooks: top-k, random-k, quantized, fp16/bf16.

Each strategy is a state object plus a hook with torch's signature
``hook(state, bucket) -> Future[Tensor]``, registered with
``ddp_model.register_comm_hook(state, hook)``. The compression itself (selection,
quantization, error feedback, the compressed collective) runs natively on the
process group's worker thread (:mod:`agentcomm.hooks.ops`); the hook only
enqueues it, so backward keeps going while buckets are exchanged.

Common options (:class:`CompressionState`):
    error_feedback      keep what was not sent and add it to the next gradient
                        (residual per bucket, float32, reset when DDP rebuilds buckets).
    warmup_iters        iterations averaged uncompressed first (DDP rebuilds its
                        buckets after the first iteration; compressing from the
                        start of training also hurts accuracy most).
    min_compress_numel  buckets smaller than this are averaged uncompressed.
    seed                base of every random stream (random-k indices, stochastic
                        rounding); the streams also depend on iteration and bucket,
                        so a resumed run makes the same choices.

Accounting: ``state.stats()`` gives raw gradient bytes, bytes this rank put on
the wire, and encode/decode seconds, summed since the last ``reset_stats()``.

Checkpointing: ``state.state_dict()`` / ``load_state_dict()`` (iteration, residuals,
counters), and the states pickle without their process group (like torch's
PowerSGDState), so ``torch.save(state)`` works.

Example:
    >>> from agentcomm.hooks import TopKState, topk_hook
    >>> state = TopKState(ratio=0.01, warmup_iters=10)                       # doctest: +SKIP
    >>> ddp_model.register_comm_hook(state, topk_hook)                        # doctest: +SKIP
"""

# No `from __future__ import annotations` here: DDP checks the hook's annotations as objects.
import dataclasses
import logging
import time
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from .. import _C
from ..averaging.averagers import all_reduce_average
from . import ops
from .hierarchical import HostGroups, Launch

__all__ = [
    "CompressionStats",
    "CompressionState",
    "TopKState",
    "RandomKState",
    "QuantizeState",
    "CastState",
    "topk_hook",
    "randomk_hook",
    "quantize_hook",
    "cast_hook",
    "fp16_compress_hook",
    "bf16_compress_hook",
]

_log = logging.getLogger(__name__)
_MASK63 = (1 << 63) - 1


@dataclasses.dataclass
class CompressionStats:
    """Totals since the last reset.

    ``raw_bytes``: the gradients' bytes (what an uncompressed hook would reduce);
    ``sent_bytes``: bytes this rank put on the wire (dense buckets: the ring's
    2 (n-1)/n of their size); ``ratio``: raw / sent.

    Example:
        >>> CompressionStats(raw_bytes=400, sent_bytes=8).ratio
        50.0
    """

    raw_bytes: int = 0
    sent_bytes: int = 0
    encode_seconds: float = 0.0
    decode_seconds: float = 0.0
    compressed_buckets: int = 0
    dense_buckets: int = 0

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.sent_bytes if self.sent_bytes else float("inf")


def _mix(*values: int) -> int:
    """A 63-bit hash of integers (splitmix64 steps), the same on every rank."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & _MASK63


class CompressionState:
    """Options, error-feedback residuals, iteration count and accounting of one DDP model.

    Example:
        >>> state = TopKState(ratio=0.01)       # a concrete strategy
        >>> state.iteration
        0
    """

    def __init__(
        self,
        process_group: Optional[dist.ProcessGroup] = None,
        *,
        error_feedback: bool = True,
        warmup_iters: int = 0,
        min_compress_numel: int = 1024,
        seed: int = 0,
        hierarchical: bool = False,
    ) -> None:
        if warmup_iters < 0:
            raise ValueError(f"warmup_iters must be >= 0, got {warmup_iters}")
        if min_compress_numel < 0:
            raise ValueError(f"min_compress_numel must be >= 0, got {min_compress_numel}")
        self.process_group = process_group
        self.error_feedback = bool(error_feedback)
        self.warmup_iters = int(warmup_iters)
        self.min_compress_numel = int(min_compress_numel)
        self.seed = int(seed)
        # hierarchical: dense over shared memory inside each host, compressed between hosts
        # (hooks/hierarchical.py). Building the host groups is collective: every rank
        # constructs its state at the same point.
        self.hierarchical = bool(hierarchical)
        self._hosts: Optional[HostGroups] = HostGroups(process_group) if self.hierarchical else None
        self.iteration = 0
        # Bucket layouts. A parameter's key is (bucket index, position) where this process
        # first saw it: DDP's first iteration lays buckets out the same way in every run
        # of a model, so keys agree between a run and its resumption. Each bucket is
        # compressed in an order of keys (its residual is laid out in that order).
        self.residuals: Dict[Any, torch.Tensor] = {}
        self._keys: Dict[int, Tuple[int, int]] = {}  # id(parameter) -> key (this process only)
        self._orders: Dict[int, Tuple[Tuple[int, int], ...]] = {}  # bucket index -> compression order
        self._sizes: Dict[Tuple[int, int], int] = {}  # key -> numel
        self._orphans: Dict[Tuple[int, int], torch.Tensor] = {}  # residual pieces between layouts
        self._iters_here = 0  # iterations run by this process (the first one's layout is provisional)
        self._group_of: Dict[Tuple[int, int], int] = {}  # key -> established bucket (regrouping)
        self._arrived: Dict[int, Dict[Tuple[int, int], Any]] = {}  # regrouping: pieces per bucket
        self._native = torch.zeros(4, dtype=torch.int64)  # raw, sent, encode ns, decode ns (native ops add)
        self._py = CompressionStats()  # dense buckets and Python-side casts

    # ---- the group

    def group(self) -> dist.ProcessGroup:
        return self.process_group if self.process_group is not None else dist.distributed_c10d._get_default_group()

    def _across_hosts(self) -> bool:
        return self._hosts is not None and not self._hosts.trivial

    def comm_group(self) -> dist.ProcessGroup:
        """The group the compressed collective runs over: the hosts' leaders when
        hierarchical (on a leader), else the whole group."""
        if self._across_hosts():
            assert self._hosts is not None and self._hosts.leaders is not None, "only leaders compress"
            return self._hosts.leaders
        return self.group()

    def _launcher(self, launch: Launch) -> Launch:
        """``launch`` itself, or wrapped in the host-local reduce and broadcast (hierarchical)."""
        if not self._across_hosts():
            return launch
        assert self._hosts is not None
        across = self._hosts.across_hosts(launch)

        def run(g: torch.Tensor, index: int, iteration: int) -> torch.futures.Future:
            if not self._hosts.is_leader:  # type: ignore[union-attr]
                self._py.raw_bytes += g.numel() * 4  # compressed by the leader, on behalf of the host
            return across(g, index, iteration)

        return run

    # ---- per-bucket state

    def _plan(self, bucket: dist.GradBucket) -> Optional[List[Tuple[int, int]]]:
        """Fixes the order this bucket is compressed in.

        Returns None to compress the bucket as laid out, or the (offset, numel) of its
        parameters in the order to compress them in. DDP lays buckets out in parameter
        order in its first iteration and rebuilds them in gradient-ready order after it:
        a resumed run's first iteration is therefore permuted into the order the
        checkpointed run used, which makes the resumption exact. Later layout changes
        are adopted, and error-feedback residuals follow their parameters.
        """
        index = bucket.index()
        order = self._see(bucket)
        known = self._orders.get(index)
        if known == order:
            return None
        if known is not None and sorted(known) == sorted(order):
            if self._iters_here == 0:  # provisional layout: keep the established order
                offsets, off = {}, 0
                for key in order:
                    offsets[key] = (off, self._sizes[key])
                    off += self._sizes[key]
                return [offsets[k] for k in known]
            self._split_residuals()
        elif known is not None:
            _log.info("DDP re-bucketed: error-feedback residuals move with their parameters")
            self._split_residuals()
        self._orders[index] = order
        if any(k in self._orphans for k in order):
            pieces = [self._orphans[k] for k in order if k in self._orphans]
            r = torch.zeros(sum(self._sizes[k] for k in order), dtype=torch.float32, device=pieces[0].device)
            off = 0
            for k in order:
                piece = self._orphans.pop(k, None)
                if piece is not None:
                    r[off:off + piece.numel()] = piece
                off += self._sizes[k]
            self.residuals[index] = r
        return None

    def _see(self, bucket: dist.GradBucket) -> Tuple[Tuple[int, int], ...]:
        """The keys of the bucket's parameters, in bucket order (assigned at first sight)."""
        index = bucket.index()
        keys = []
        for pos, p in enumerate(bucket.parameters()):
            key = self._keys.setdefault(id(p), (index, pos))
            self._sizes[key] = int(p.numel())
            keys.append(key)
        return tuple(keys)

    def _regrouping(self, bucket: dist.GradBucket) -> bool:
        """Whether this bucket must be regrouped into the checkpointed run's buckets: this
        process's first iteration, and the bucket's parameters are not exactly those of the
        established bucket with its index (but all belong to established buckets)."""
        if self._iters_here != 0 or not self._orders:
            return False
        keys = self._see(bucket)
        known = self._orders.get(bucket.index())
        if known is not None and sorted(known) == sorted(keys):
            return False
        if not self._group_of:
            self._group_of = {k: i for i, order in self._orders.items() for k in order}
        return all(k in self._group_of for k in keys)

    def _split_residuals(self) -> None:
        """Every bucket's worker residual into per-parameter pieces; second-stage
        residuals (a slice of a bucket's reduction) restart from zero."""
        for index, order in self._orders.items():
            r = self.residuals.get(index)
            off = 0
            for k in order:
                if r is not None:
                    self._orphans[k] = r[off:off + self._sizes[k]].clone()
                off += self._sizes[k]
        self.residuals.clear()
        self._orders.clear()

    def _residual(self, key: Any, numel: int, device: torch.device) -> torch.Tensor:
        """The float32 residual of ``key`` (a bucket index, or (index, "server")) on the
        gradients' device; zeros when new (one loaded from a checkpoint moves there)."""
        r = self.residuals.get(key)
        if r is None or r.numel() != numel:
            r = self.residuals[key] = torch.zeros(numel, dtype=torch.float32, device=device)
        elif r.device != device:
            r = self.residuals[key] = r.to(device)
        return r

    def _compress_now(self, numel: int) -> bool:
        return self.iteration >= self.warmup_iters and numel >= max(1, self.min_compress_numel)

    def _advance(self, bucket: dist.GradBucket) -> None:
        if bucket.is_last():
            self.iteration += 1
            self._iters_here += 1

    # ---- accounting

    def stats(self) -> CompressionStats:
        """Totals since the last :meth:`reset_stats` (native counters included).

        Example:
            >>> TopKState().stats().raw_bytes
            0
        """
        raw, sent, enc, dec = (int(v) for v in self._native.tolist())
        p = self._py
        return CompressionStats(
            raw_bytes=raw + p.raw_bytes,
            sent_bytes=sent + p.sent_bytes,
            encode_seconds=enc * 1e-9 + p.encode_seconds,
            decode_seconds=dec * 1e-9 + p.decode_seconds,
            compressed_buckets=p.compressed_buckets,
            dense_buckets=p.dense_buckets,
        )

    def reset_stats(self) -> None:
        self._native.zero_()
        self._py = CompressionStats()

    # ---- checkpoints

    def _config(self) -> Dict[str, Any]:
        return {
            "error_feedback": self.error_feedback,
            "warmup_iters": self.warmup_iters,
            "min_compress_numel": self.min_compress_numel,
            "seed": self.seed,
            "hierarchical": self.hierarchical,
        }

    def state_dict(self) -> Dict[str, Any]:
        """Everything a resumed run needs to continue exactly (not the process group).

        Example:
            >>> sd = TopKState(ratio=0.1).state_dict(); sd["iteration"]
            0
        """
        return {
            "kind": type(self).__name__,
            "config": self._config(),
            "iteration": self.iteration,
            "residuals": {k: v.clone() for k, v in self.residuals.items()},
            "orders": dict(self._orders),
            "sizes": dict(self._sizes),
            "native_stats": self._native.clone(),
            "stats": dataclasses.asdict(self._py),
        }

    def load_state_dict(self, sd: Dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s output; the strategy's kind must match.

        Example:
            >>> s = TopKState(); s.load_state_dict(TopKState().state_dict())
        """
        if sd.get("kind") != type(self).__name__:
            raise ValueError(f"state_dict is for {sd.get('kind')!r}, not {type(self).__name__!r}")
        if bool(sd["config"].get("hierarchical", False)) != self.hierarchical:
            raise ValueError(f"state_dict is of a {'' if sd['config'].get('hierarchical') else 'non-'}hierarchical "
                             f"state; this one is {'' if self.hierarchical else 'not '}hierarchical")
        for name, value in sd["config"].items():
            if name != "hierarchical":
                setattr(self, name, value)
        self.iteration = int(sd["iteration"])
        self.residuals = {k: v.clone() for k, v in sd["residuals"].items()}
        self._orders = dict(sd["orders"])
        self._sizes = dict(sd["sizes"])
        self._keys, self._orphans, self._iters_here = {}, {}, 0
        self._group_of, self._arrived = {}, {}
        self._native = sd["native_stats"].clone()
        self._py = CompressionStats(**sd["stats"])

    def __getstate__(self) -> Dict[str, Any]:
        if self.hierarchical:  # unpickling would have to create process groups, collectively
            raise TypeError("a hierarchical compression state holds process groups and does not pickle; "
                            "checkpoint it with state_dict() and load_state_dict() into a new hierarchical state")
        return self.state_dict()

    def __setstate__(self, sd: Dict[str, Any]) -> None:
        self.__init__(**sd["config"])  # type: ignore[misc]
        self.load_state_dict(sd)


class TopKState(CompressionState):
    """Top-k sparsification: each rank sends its ``ratio`` largest-magnitude elements.

    ``method``: ``"topk"`` (exact selection) or ``"dgc"`` (DGC's sampled threshold,
    same result, usually one pass over the bucket instead of two).

    Example:
        >>> TopKState(ratio=0.01, method="dgc").ratio
        0.01
    """

    def __init__(self, process_group: Optional[dist.ProcessGroup] = None, *, ratio: float = 0.01,
                 method: str = "topk", **kwargs: Any) -> None:
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        if method not in ("topk", "dgc"):
            raise ValueError(f"method must be 'topk' or 'dgc', got {method!r}")
        super().__init__(process_group, **kwargs)
        self.ratio = float(ratio)
        self.method = method

    def _config(self) -> Dict[str, Any]:
        return {**super()._config(), "ratio": self.ratio, "method": self.method}


class RandomKState(CompressionState):
    """Random-k: k elements at indices drawn from a seed every rank shares, so only
    values travel (a dense all-reduce of k values). ``unbiased`` scales the result by
    n / k (use it without error feedback).

    Example:
        >>> RandomKState(ratio=0.05).ratio
        0.05
    """

    def __init__(self, process_group: Optional[dist.ProcessGroup] = None, *, ratio: float = 0.01,
                 unbiased: bool = False, **kwargs: Any) -> None:
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        super().__init__(process_group, **kwargs)
        self.ratio = float(ratio)
        self.unbiased = bool(unbiased)

    def _config(self) -> Dict[str, Any]:
        return {**super()._config(), "ratio": self.ratio, "unbiased": self.unbiased}


class QuantizeState(CompressionState):
    """Block-wise quantization: ``bits`` 8 / 4 (stochastic rounding, unbiased) or 1 (scaled
    sign), one scale per ``block`` elements. With error feedback the second stage (the
    reduced slice each rank re-quantizes) keeps its own residual too (DeepSpeed's
    compressed allreduce).

    Example:
        >>> QuantizeState(bits=4).bits
        4
    """

    def __init__(self, process_group: Optional[dist.ProcessGroup] = None, *, bits: int = 8, block: int = 256,
                 **kwargs: Any) -> None:
        if bits not in (8, 4, 1):
            raise ValueError(f"bits must be 8, 4 or 1, got {bits}")
        if block <= 0 or block % 8:
            raise ValueError(f"block must be a positive multiple of 8, got {block}")
        super().__init__(process_group, **kwargs)
        self.bits = int(bits)
        self.block = int(block)

    def _config(self) -> Dict[str, Any]:
        return {**super()._config(), "bits": self.bits, "block": self.block}


class CastState(CompressionState):
    """fp16 / bf16 compression: cast with the division by the world size fused in (so
    the sum cannot overflow float16), all-reduce in half precision, cast back.

    Example:
        >>> CastState(dtype=torch.bfloat16).dtype
        torch.bfloat16
    """

    def __init__(self, process_group: Optional[dist.ProcessGroup] = None, *, dtype: torch.dtype = torch.float16,
                 **kwargs: Any) -> None:
        if dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be torch.float16 or torch.bfloat16, got {dtype}")
        kwargs.setdefault("error_feedback", False)
        super().__init__(process_group, **kwargs)
        self.dtype = dtype

    def _config(self) -> Dict[str, Any]:
        return {**super()._config(), "dtype": self.dtype}


# ---------------------------------------------------------------------- hooks


def _dense(state: CompressionState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Uncompressed average (warm-up, small buckets)."""
    buf = bucket.buffer()
    state._see(bucket)  # parameters get their keys in the first iteration, compressed or not
    group = state.group()
    n = group.size()
    state._py.raw_bytes += buf.numel() * buf.element_size()
    state._py.sent_bytes += 2 * (n - 1) * buf.numel() * buf.element_size() // n
    state._py.dense_buckets += 1
    work = all_reduce_average(buf, group, async_op=True)
    state._advance(bucket)
    return work.get_future().then(lambda fut: fut.value()[0])


def _as_float32(buf: torch.Tensor, plan: Optional[List[Tuple[int, int]]]) -> torch.Tensor:
    """The bucket as a float32 buffer in compression order: the bucket itself when possible;
    a copy for AMP buckets (float16/bfloat16) or a permuted layout."""
    if buf.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"agentcomm compression hooks support float32/float16/bfloat16 gradients, got {buf.dtype}")
    if plan is not None:
        return torch.cat([buf[off:off + n] for off, n in plan]).float()
    return buf if buf.dtype == torch.float32 else buf.float()


def _compressed(state: CompressionState, bucket: dist.GradBucket, launch: Launch) -> torch.futures.Future[torch.Tensor]:
    """Runs ``launch`` on the bucket in its compression layout and copies the result back."""
    buf = bucket.buffer()
    if state._regrouping(bucket):
        fut = _regrouped(state, bucket, launch)
        if bucket.is_last():
            _launch_groups(state, list(state._arrived), launch)  # parameters that never arrived (unused)
    else:
        plan = state._plan(bucket)
        g = _as_float32(buf, plan)
        done = state._launcher(launch)(g, bucket.index(), state.iteration)

        def copy_back(f: torch.futures.Future) -> torch.Tensor:
            f.value()  # propagates a failed collective
            if plan is not None:
                pos = 0
                for off, n in plan:
                    buf[off:off + n].copy_(g[pos:pos + n])
                    pos += n
            elif g is not buf:
                buf.copy_(g)
            return buf

        fut = done.then(copy_back)
    state._py.compressed_buckets += 1
    state._advance(bucket)
    return fut


def _regrouped(state: CompressionState, bucket: dist.GradBucket, launch: Launch) -> torch.futures.Future[torch.Tensor]:
    """First iteration after resuming, when DDP's provisional buckets group parameters
    differently than the checkpointed run's: each checkpointed bucket is compressed once
    all its parameters have arrived (from whichever buckets hold them now), and a bucket's
    future completes when every group holding its parameters is done. DDP launches every
    bucket's hook before it waits on any future, so this cannot deadlock."""
    buf = bucket.buffer()
    out: torch.futures.Future = torch.futures.Future()
    pending = {"left": len(bucket.parameters()), "out": out, "buf": buf}
    off = 0
    for p in bucket.parameters():
        key = state._keys[id(p)]
        n = int(p.numel())
        group = state._group_of[key]
        arrived = state._arrived.setdefault(group, {})
        arrived[key] = (buf[off:off + n], pending)
        off += n
        if len(arrived) == len(state._orders[group]):
            _launch_groups(state, [group], launch)
    return out


def _launch_groups(state: CompressionState, groups: List[int], launch: Launch) -> None:
    """Compresses the regrouped buckets ``groups`` from the pieces that arrived, in the
    established order, and hands each piece's result back to its bucket."""
    for group in groups:
        arrived = state._arrived.pop(group)
        pieces = [arrived[k] for k in state._orders[group] if k in arrived]
        g = torch.cat([view for view, _ in pieces]).float()
        done = state._launcher(launch)(g, group, state.iteration)

        def scatter(f: torch.futures.Future, g: torch.Tensor = g, pieces: list = pieces) -> None:
            try:
                f.value()
            except Exception as e:  # noqa: BLE001 - handed to every waiting bucket
                for _, pend in pieces:
                    if not pend["out"].done():
                        pend["out"].set_exception(e)
                return
            pos = 0
            for view, pend in pieces:
                view.copy_(g[pos:pos + view.numel()])
                pos += view.numel()
                pend["left"] -= 1
                if pend["left"] == 0 and not pend["out"].done():
                    pend["out"].set_result(pend["buf"])

        done.then(scatter)


def topk_hook(state: TopKState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Averages the top ``state.ratio`` of each rank's bucket (by magnitude), with error feedback.

    Example:
        >>> ddp_model.register_comm_hook(TopKState(ratio=0.01), topk_hook)  # doctest: +SKIP
    """
    if not state._compress_now(bucket.buffer().numel()):
        return _dense(state, bucket)

    def launch(g: torch.Tensor, index: int, iteration: int) -> torch.futures.Future:
        n = g.numel()
        residual = state._residual(index, n, g.device) if state.error_feedback else None
        return ops.sparse_all_reduce(g, max(1, int(round(n * state.ratio))), residual=residual, method=state.method,
                                     seed=_mix(state.seed, iteration, index), group=state.comm_group(),
                                     stats=state._native)

    return _compressed(state, bucket, launch)


def randomk_hook(state: RandomKState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Averages k = ratio * n elements at indices every rank derives from the shared seed.

    Example:
        >>> ddp_model.register_comm_hook(RandomKState(ratio=0.05), randomk_hook)  # doctest: +SKIP
    """
    if not state._compress_now(bucket.buffer().numel()):
        return _dense(state, bucket)

    def launch(g: torch.Tensor, index: int, iteration: int) -> torch.futures.Future:
        n = g.numel()
        k = max(1, int(round(n * state.ratio)))
        residual = state._residual(index, n, g.device) if state.error_feedback else None
        fut = ops.sparse_all_reduce(g, k, residual=residual, method="randomk",
                                    seed=_mix(state.seed, iteration, index), group=state.comm_group(),
                                    stats=state._native)
        if state.unbiased and k < n:
            fut = fut.then(lambda f: f.value().mul_(n / k))
        return fut

    return _compressed(state, bucket, launch)


def quantize_hook(state: QuantizeState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Averages the bucket through a ``state.bits``-bit compressed reduce-scatter + all-gather.

    Example:
        >>> ddp_model.register_comm_hook(QuantizeState(bits=8), quantize_hook)  # doctest: +SKIP
    """
    if not state._compress_now(bucket.buffer().numel()):
        return _dense(state, bucket)

    def launch(g: torch.Tensor, index: int, iteration: int) -> torch.futures.Future:
        group = state.comm_group()
        n = g.numel()
        residual = server = None
        if state.error_feedback:
            residual = state._residual(index, n, g.device)
            server = state._residual((index, "server"), ops.quant_slice(n, state.block, group)[1], g.device)
        return ops.quantized_all_reduce(g, bits=state.bits, block=state.block, residual=residual,
                                        server_residual=server,
                                        seed=_mix(state.seed, iteration, index, group.rank()), group=group,
                                        stats=state._native)

    return _compressed(state, bucket, launch)


def cast_hook(state: CastState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Averages the bucket in ``state.dtype``: one fused cast-and-divide each way.

    Example:
        >>> ddp_model.register_comm_hook(CastState(dtype=torch.float16), cast_hook)  # doctest: +SKIP
    """
    buf = bucket.buffer()
    numel = buf.numel()
    if not state._compress_now(numel) or buf.dtype != torch.float32:
        return _dense(state, bucket)  # already half precision (AMP): nothing to gain
    group = state.group()
    n = group.size()
    t0 = time.perf_counter()
    half = torch.empty(numel, dtype=state.dtype, device=buf.device)
    _C.cast_into(buf, half, 1.0 / n)  # on CUDA: the CUDA twin, on the current stream
    state._py.encode_seconds += time.perf_counter() - t0
    state._py.raw_bytes += numel * 4
    state._py.sent_bytes += 2 * (n - 1) * numel * 2 // n
    state._py.compressed_buckets += 1
    work = dist.all_reduce(half, group=group, async_op=True)
    state._advance(bucket)

    def decode(done: torch.futures.Future) -> torch.Tensor:
        done.value()  # propagates a failed collective
        t1 = time.perf_counter()
        _C.cast_into(half, buf, 1.0)
        state._py.decode_seconds += time.perf_counter() - t1
        return buf

    return work.get_future().then(decode)


def fp16_compress_hook(state: CastState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """:func:`cast_hook` with float16 whatever ``state.dtype`` says (torch's hook's name).

    Example:
        >>> ddp_model.register_comm_hook(CastState(), fp16_compress_hook)  # doctest: +SKIP
    """
    state.dtype = torch.float16
    return cast_hook(state, bucket)


def bf16_compress_hook(state: CastState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """:func:`cast_hook` with bfloat16.

    Example:
        >>> ddp_model.register_comm_hook(CastState(dtype=torch.bfloat16), bf16_compress_hook)  # doctest: +SKIP
    """
    state.dtype = torch.bfloat16
    return cast_hook(state, bucket)
