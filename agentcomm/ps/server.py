"""Parameter server on agentcomm: sharded servers, asynchronous and stale-synchronous SGD.

Roles. Every rank of the group builds one :class:`ParameterServer` (a collective call).
With ``servers=None`` every rank hosts a shard and trains (colocated); with
``servers=[...]`` those ranks only serve and the others train; ``workers=[...]`` says who
trains explicitly (a rank may serve and train). The flat float32 parameter
vector is cut into one contiguous range per server, equal in size (BytePS's balance by
bytes), each range with its own optimizer (any ``torch.optim`` optimizer: its state lives
with the shard).

Steps. A worker's :meth:`ParameterServer.step` packs its gradients, encodes each shard's
part (dense, or top-k / quantized with error feedback), sends it to the shard's server
and receives the shard's parameters back into the model. The bytes move on agentcomm's
native point-to-point path (a large message inside a host by rendezvous: the receiver
copies it out of the sender's memory once); Python only moves headers.

Consistency (see docs/ps.md). Each worker's clock counts its pushes.

* ``mode="async"``: a push is applied when it arrives; a pull returns the parameters as
  they are (Hogwild-style; nothing waits for anyone).
* ``mode="ssp", staleness=s``: a pull by a worker at clock c is answered once every live
  worker has pushed at least c - s times, so no worker runs more than s clocks ahead of the
  slowest (Ho et al., 2013). ``s = 0`` is synchronous: the server averages the clock's
  pushes and takes one optimizer step, exactly synchronous data-parallel SGD.

Invariants (server side, per shard): the parameter tensor is written only by the optimizer
step, with no pull reading it (``_readers == 0``); a pull's reply is sent while it holds a
reader slot, so a reply is never torn. All shard state is guarded by ``_cond``.

Example (one dedicated server, three workers, SSP with bound 2)::

    >>> ps = ParameterServer(model, lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    ...                      servers=[0], mode="ssp", staleness=2)       # doctest: +SKIP
    >>> if ps.is_server:
    ...     ps.serve()                     # until every worker closed  # doctest: +SKIP
    ... else:
    ...     for x, y in loader:
    ...         model.zero_grad(); loss_fn(model(x), y).backward()
    ...         ps.step()                  # push, pull (waits only as the bound says)
    ...     ps.close()                                                   # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from agentcomm.averaging.flat import FlatParameters, collect
from agentcomm.ps.codec import Codec, codec_from

__all__ = ["ParameterServer", "PSError", "PullLogEntry"]

_log = logging.getLogger("agentcomm.ps")

# Request kinds (worker -> server header[0]).
_PUSH, _PULL, _PUSH_PULL, _CLOSE = 1, 2, 3, 4
# Reply status (server -> worker reply[0]).
_OK, _FAILED, _ERROR = 0, 1, 2  # _FAILED: a dead worker breaks the bound; _ERROR: the server failed
_HEADER = 4  # int64 words in a request and in a reply
# Tags: one block of four per ParameterServer instance, far from user tags.
_TAG_BASE = 0x50530000
_instances = 0


class PSError(RuntimeError):
    """A parameter-server operation that cannot complete (a worker died under a staleness
    bound, a server was lost, bad use)."""


@dataclass(frozen=True)
class PullLogEntry:
    """One answered pull on a server: the pulling worker's clock and the slowest live
    worker's clock at that moment (``clock - min_clock <= staleness`` in SSP mode)."""

    worker: int
    clock: int
    min_clock: int
    version: int


class _Shard:
    """One server's range ``[lo, hi)`` of the flat parameters and its optimizer."""

    def __init__(self, lo: int, hi: int, init: torch.Tensor, make_optimizer: Callable, workers: Sequence[int],
                 mode: str, staleness: int, scale: float) -> None:
        self.lo, self.hi = lo, hi
        self.param = torch.nn.Parameter(init.detach().clone())
        self.optimizer = make_optimizer([self.param])
        self.mode, self.staleness, self.scale = mode, staleness, scale
        self.sync = mode == "ssp" and staleness == 0
        self._cond = threading.Condition()
        self.clocks = {w: 0 for w in workers}  # pushes received (applied, or accumulated in sync mode)
        self.closed: set[int] = set()
        self.dead: dict[int, str] = {}
        self.version = 0  # optimizer steps taken
        self.log: list[PullLogEntry] = []
        self._readers = 0
        self._acc = torch.zeros(hi - lo) if self.sync else None
        self._acc_count = 0
        self._applied_clock = 0  # sync mode: the last clock whose average was applied

    # -- under _cond -------------------------------------------------------------------------
    def _active(self) -> list[int]:
        return [w for w in self.clocks if w not in self.closed and w not in self.dead]

    def _min_clock(self) -> int:
        active = self._active()
        return min(self.clocks[w] for w in active) if active else max(self.clocks.values(), default=0)

    def _culprit(self, clock: int) -> int | None:
        """A dead worker that holds the bound for ``clock`` back (SSP), else None."""
        if self.mode != "ssp":
            return None
        for w in sorted(self.dead):
            if self.clocks[w] < clock - self.staleness:
                return w
        return None

    def _step(self, grad: torch.Tensor) -> None:
        self._cond.wait_for(lambda: self._readers == 0)
        self.param.grad = grad
        self.optimizer.step()
        self.param.grad = None
        self.version += 1

    def _maybe_apply_sync(self) -> None:
        """Sync mode: one optimizer step on the average once every active worker pushed."""
        active = self._active()
        if self._acc_count and self._acc_count >= len(active):
            clock = self._applied_clock + 1
            self._step(self._acc.div_(self._acc_count))
            self._acc.zero_()
            self._acc_count = 0
            self._applied_clock = clock
            self._cond.notify_all()

    # -- called by the server's threads (and by a colocated worker) -----------------------------
    def apply(self, worker: int, clock: int, grad: torch.Tensor) -> None:
        """``worker``'s push of ``clock`` (its gradient for this shard, decoded)."""
        with self._cond:
            if self.sync:
                # One accumulator: a push of clock c waits for clock c-1's step (a worker that
                # pushes twice without pulling).
                self._cond.wait_for(lambda: self._applied_clock >= clock - 1 or self._culprit(clock - 1) is not None)
                if self._applied_clock < clock - 1:
                    return  # the clock can never complete; the pull reports who is missing
                self._acc.add_(grad)
                self._acc_count += 1
                self.clocks[worker] = clock
                self._maybe_apply_sync()
            else:
                self._step(grad.mul_(self.scale) if self.scale != 1.0 else grad)
                self.clocks[worker] = clock
            self._cond.notify_all()

    def begin_pull(self, worker: int, clock: int) -> tuple[int, int, int, int]:
        """Waits until ``worker`` at ``clock`` may read, takes a reader slot; returns
        (status, min clock, version, culprit or -1). Call :meth:`end_pull` after sending."""
        with self._cond:
            def ready() -> bool:
                if self._culprit(clock) is not None:
                    return True
                if self.mode != "ssp":
                    return True
                return self._min_clock() >= clock - self.staleness and (not self.sync or self._applied_clock >= clock
                                                                          or not self._active())
            self._cond.wait_for(ready)
            culprit = self._culprit(clock)
            self._readers += 1
            if culprit is not None:
                return _FAILED, self._min_clock(), self.version, culprit
            entry = PullLogEntry(worker, clock, self._min_clock(), self.version)
            self.log.append(entry)
            return _OK, entry.min_clock, entry.version, -1

    def end_pull(self) -> None:
        with self._cond:
            self._readers -= 1
            self._cond.notify_all()

    def close(self, worker: int) -> None:
        with self._cond:
            self.closed.add(worker)
            if self.sync:
                self._maybe_apply_sync()
            self._cond.notify_all()

    def mark_dead(self, worker: int, why: str) -> None:
        with self._cond:
            if worker in self.closed or worker in self.dead:
                return
            self.dead[worker] = why
            self._cond.notify_all()
        _log.warning("agentcomm.ps: worker rank %d stopped (clock %d): %s", worker, self.clocks[worker], why)

    def wait_for_clocks(self, clocks: dict[int, int]) -> None:
        """Until every live worker's pushes up to ``clocks[w]`` are in (and, synchronous, applied)."""
        with self._cond:
            self._cond.wait_for(lambda: all(self.clocks[w] >= c or w in self.dead for w, c in clocks.items())
                                and (not self.sync or self._acc_count == 0))

    def state_dict(self) -> dict:
        with self._cond:
            self._cond.wait_for(lambda: self._readers == 0)
            return {"lo": self.lo, "hi": self.hi, "param": self.param.detach().clone(),
                    "optimizer": copy.deepcopy(self.optimizer.state_dict()), "clocks": dict(self.clocks),
                    "version": self.version, "applied_clock": self._applied_clock}

    def load_state_dict(self, sd: dict) -> None:
        if (sd["lo"], sd["hi"]) != (self.lo, self.hi):
            raise PSError(f"agentcomm.ps: checkpoint shard [{sd['lo']}, {sd['hi']}) does not match this server's "
                          f"[{self.lo}, {self.hi}) (a different model or number of servers)")
        with self._cond:
            self.param.data.copy_(sd["param"])
            self.optimizer.load_state_dict(sd["optimizer"])
            self.clocks.update(sd["clocks"])
            self.version, self._applied_clock = sd["version"], sd["applied_clock"]


def _group_rank_list(group: dist.ProcessGroup, ranks: Iterable[int] | None, world: int, what: str) -> list[int]:
    out = sorted(set(int(r) for r in ranks)) if ranks is not None else list(range(world))
    bad = [r for r in out if not 0 <= r < world]
    if bad or not out:
        raise ValueError(f"agentcomm.ps: {what} must be ranks in [0, {world}) of the group, got {list(ranks or [])}")
    return out


class _Pending:
    """A worker's in-flight push and/or pull over every shard; :meth:`wait` finishes it."""

    def __init__(self, ps: "ParameterServer") -> None:
        self.ps = ps
        self.futures: list[torch.futures.Future] = []
        self.keep: list[torch.Tensor] = []  # sent buffers, alive until the sends complete
        self.replies: list[tuple[int, torch.Tensor]] = []  # (server, reply header)
        self.local: tuple[int, int, int, int] | None = None
        self.done = False

    def wait(self) -> "_Pending":
        """Blocks until every part completed; raises :class:`PSError` if a server refused (a dead
        worker under a staleness bound) or the transfer failed."""
        if self.done:
            return self
        self.done = True
        try:
            for f in self.futures:
                f.wait()
        except Exception as e:  # noqa: BLE001 - a transport error, with its own text
            raise PSError(f"agentcomm.ps: a push or pull failed: {e}") from e
        statuses = [(s, tuple(int(v) for v in r.tolist())) for s, r in self.replies]
        if self.local is not None:
            statuses.append((self.ps.rank, self.local))
        for server, (status, min_clock, _, culprit) in statuses:
            if status == _ERROR:
                raise PSError(f"agentcomm.ps: server rank {server} failed while applying this worker's push "
                              f"(clock {min_clock}); its log has the error")
            if status != _OK:
                raise PSError(
                    f"agentcomm.ps: worker rank {culprit} stopped (its last push was clock {min_clock}) and the "
                    f"staleness bound {self.ps.staleness} cannot hold without it (server rank {server}); "
                    f"use mode='async' to go on without it")
        return self


class ParameterServer:
    """A sharded parameter server for ``module``'s (or a parameter list's) float32 CPU parameters.

    Args:
        params: a module, or its parameters (all float32, on CPU).
        optimizer: ``make(params_list) -> torch.optim.Optimizer``, run on each server for its
            shard (one flat parameter), e.g. ``lambda p: torch.optim.Adam(p, lr=1e-3)``.
        servers: group ranks that hold a shard; None: every rank.
        workers: group ranks that train; None: every rank if ``servers`` is None, else the ranks
            that are not servers. A rank may be both (it reaches its own shard without messages).
        mode: ``"async"`` or ``"ssp"`` (with ``staleness``; 0 is synchronous SGD).
        staleness: the SSP bound s >= 0.
        compression: None (dense), a :class:`~agentcomm.ps.codec.Codec`, or "topk"/"q8"/"q4"/"q1".
        push_scale: the factor on each push before the optimizer sees it when pushes are applied
            one by one (async, SSP s > 0); default 1/workers, so a round of pushes moves the
            parameters as far as one synchronous step. Sync mode averages and ignores it.
        group: an agentcomm process group (default: the default group, which must be agentcomm).
        checkpoint: this rank's :meth:`state_dict` from an earlier run of the same layout to
            resume from (servers load their shard and optimizer, workers their clock and residuals,
            and pull the servers' parameters).

    Example:
        >>> ps = ParameterServer(model, lambda p: torch.optim.SGD(p, lr=0.1), mode="async")  # doctest: +SKIP
        >>> model.zero_grad(); loss.backward(); ps.step()                                   # doctest: +SKIP
    """

    def __init__(self, params: torch.nn.Module | Iterable, optimizer: Callable[[list], torch.optim.Optimizer], *,
                 servers: Sequence[int] | None = None, workers: Sequence[int] | None = None,
                 mode: str = "async", staleness: int = 0,
                 compression: Codec | str | None = None, push_scale: float | None = None,
                 group: dist.ProcessGroup | None = None, checkpoint: dict | None = None) -> None:
        global _instances
        if mode not in ("async", "ssp"):
            raise ValueError(f"agentcomm.ps: mode must be 'async' or 'ssp', got {mode!r}")
        if not isinstance(staleness, int) or staleness < 0:
            raise ValueError(f"agentcomm.ps: staleness must be an int >= 0, got {staleness!r}")
        self.group = group if group is not None else dist.group.WORLD
        if dist.get_backend(self.group) != "agentcomm":
            raise ValueError(f"agentcomm.ps: the group's backend is {dist.get_backend(self.group)!r}; pass an "
                             f"agentcomm group (dist.new_group(backend='agentcomm'))")
        self.rank, self.world = dist.get_rank(self.group), dist.get_world_size(self.group)
        self.mode, self.staleness = mode, staleness
        self.codec = codec_from(compression)
        self.servers = _group_rank_list(self.group, servers, self.world, "servers")
        if workers is not None:
            self.workers = _group_rank_list(self.group, workers, self.world, "workers")
        else:
            self.workers = list(range(self.world)) if servers is None else [r for r in range(self.world)
                                                                            if r not in self.servers]
        if not self.workers:
            raise ValueError(f"agentcomm.ps: every rank of the group is a server ({self.servers}); leave at least "
                             f"one worker, or pass servers=None to colocate")
        self.is_server = self.rank in self.servers
        self.is_worker = self.rank in self.workers
        self.push_scale = 1.0 / len(self.workers) if push_scale is None else float(push_scale)
        self._tag = _TAG_BASE + 4 * (_instances % 4096)
        _instances += 1

        plist = collect(params.parameters() if isinstance(params, torch.nn.Module) else params)
        for p in plist:
            if p.dtype != torch.float32 or p.device.type != "cpu":
                raise ValueError(f"agentcomm.ps: parameters must be float32 on CPU; got {p.dtype} on {p.device}")
        if not plist:
            raise ValueError("agentcomm.ps: no parameters")
        self.params = plist
        self._flat = FlatParameters().bind(plist)[0]  # the parameters are views of it from now on
        self.numel = self._flat.numel()
        self._grad = torch.zeros(self.numel)
        # Equal contiguous ranges, 16-element aligned; a server past the end holds an empty one.
        per = -(-self.numel // len(self.servers))
        per = -(-per // 16) * 16
        self.bounds = [(min(i * per, self.numel), min((i + 1) * per, self.numel)) for i in range(len(self.servers))]
        # Everyone starts from the same parameters (group rank 0's), as DDP does.
        dist.broadcast(self._flat, group=self.group, group_src=0)
        self.clock = 0
        self._residual: dict[int, torch.Tensor] = {}
        if self.is_worker and self.codec.error_feedback:
            self._residual = {s: torch.zeros(hi - lo) for s, (lo, hi) in zip(self.servers, self.bounds) if hi > lo}
        self._shard: _Shard | None = None
        self._threads: list[threading.Thread] = []
        self._pending: _Pending | None = None
        self._closed = False
        if self.is_server:
            lo, hi = self.bounds[self.servers.index(self.rank)]
            self._shard = _Shard(lo, hi, self._flat[lo:hi], optimizer, self.workers, mode, staleness,
                                 self.push_scale)
        if checkpoint is not None:
            self._load(checkpoint)
        if self._shard is not None and self._shard.hi > self._shard.lo:
            for w in self.workers:
                if w != self.rank:
                    t = threading.Thread(target=self._serve_worker, args=(w,), daemon=True,
                                         name=f"agentcomm-ps-{self.rank}<-{w}")
                    t.start()
                    self._threads.append(t)
        dist.barrier(group=self.group)
        if checkpoint is not None and self.is_worker:
            self.pull().wait()

    # ---- server side --------------------------------------------------------------------------
    def _recv(self, t: torch.Tensor, src: int, tag: int) -> None:
        # A future's wait has no deadline: a worker may compute for long between requests.
        dist.irecv(t, group=self.group, group_src=src, tag=tag).get_future().wait()

    def _send(self, t: torch.Tensor, dst: int, tag: int) -> None:
        dist.isend(t, group=self.group, group_dst=dst, tag=tag).get_future().wait()

    def _serve_worker(self, w: int) -> None:
        """One worker's requests, in order, until it closes or its connection fails.

        Invariant: until the worker closes, one receive for its next payload is posted here
        before the worker can send it (posted first, then again before the reply that lets the
        worker go on), so a large payload inside a host is copied once, straight from the
        worker's memory into ``payload``, never parked. A push-only request sent before the
        last one's apply finished may arrive first and be parked: correct, one copy slower.
        The worker's CLOSE is followed by one payload-sized message that takes that receive.
        """
        shard = self._shard
        assert shard is not None
        n = shard.hi - shard.lo
        count, dtype = self.codec.payload_shape(n)
        dense = torch.empty(n)
        payload = dense if self.codec.is_dense else torch.empty(count, dtype=dtype)
        header = torch.empty(_HEADER, dtype=torch.int64)
        tag = self._tag

        def post_payload() -> torch.futures.Future:
            return dist.irecv(payload, group=self.group, group_src=w, tag=tag + 1).get_future()

        incoming = post_payload()
        try:
            while True:
                self._recv(header, w, tag)
                kind, clock = int(header[0]), int(header[1])
                if kind == _CLOSE:
                    incoming.wait()  # the closing filler
                    shard.close(w)
                    return
                if kind in (_PUSH, _PUSH_PULL):
                    incoming.wait()
                    try:
                        if payload is not dense:
                            self.codec.decode(payload, dense)
                        shard.apply(w, clock, dense)
                    except Exception as e:  # noqa: BLE001 - a server bug or a bad optimizer: say so, do not hang
                        _log.exception("agentcomm.ps: server rank %d failed on worker %d's push", self.rank, w)
                        shard.mark_dead(w, f"server rank {self.rank} failed on its push: {e}")
                        if kind == _PUSH_PULL:  # keep the worker's receives matched, then stop serving it
                            self._send(torch.tensor([_ERROR, clock, shard.version, -1]), w, tag + 2)
                            self._send(shard.param.detach(), w, tag + 3)
                        return
                    incoming = post_payload()
                if kind in (_PULL, _PUSH_PULL):
                    reply = torch.tensor(shard.begin_pull(w, clock), dtype=torch.int64)
                    try:
                        sends = [dist.isend(t, group=self.group, group_dst=w, tag=tag + i).get_future()
                                 for i, t in ((2, reply), (3, shard.param.detach()))]
                        for f in sends:
                            f.wait()
                    finally:
                        shard.end_pull()
        except Exception as e:  # noqa: BLE001 - the worker is gone (or the group failed)
            shard.mark_dead(w, str(e).splitlines()[0] if str(e) else type(e).__name__)

    def serve(self, timeout: float | None = None) -> None:
        """On a server rank: blocks until every worker closed (or died). A colocated rank does
        this in :meth:`close`.

        Example:
            >>> if ps.is_server: ps.serve()   # doctest: +SKIP
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            raise PSError(f"agentcomm.ps: server rank {self.rank}: workers still connected after {timeout} s")

    @property
    def dead_workers(self) -> dict[int, str]:
        """Workers this server saw stop without closing: rank -> why."""
        return dict(self._shard.dead) if self._shard is not None else {}

    def server_log(self) -> list[PullLogEntry]:
        """Every pull this server answered (for checking the staleness bound)."""
        return list(self._shard.log) if self._shard is not None else []

    # ---- worker side --------------------------------------------------------------------------
    def _request(self, kind: int) -> _Pending:
        if not self.is_worker:
            raise PSError(f"agentcomm.ps: rank {self.rank} is a server only; push/pull/step are for workers "
                          f"{self.workers}")
        if self._closed:
            raise PSError("agentcomm.ps: this ParameterServer is closed")
        if self._pending is not None:
            self._pending.wait()  # the buffers of the last request are ours again
        pending = _Pending(self)
        push = kind in (_PUSH, _PUSH_PULL)
        if push:
            self.clock += 1
            self._pack_grads()
        local: tuple[int, int, int, int] | None = None
        local_server = None
        for s, (lo, hi) in zip(self.servers, self.bounds):
            if hi <= lo:
                continue
            if s == self.rank:
                local_server = (lo, hi)
                continue
            header = torch.tensor([kind, self.clock, 0, 0], dtype=torch.int64)
            pending.keep.append(header)
            pending.futures.append(dist.isend(header, group=self.group, group_dst=s, tag=self._tag).get_future())
            if push:
                payload = self.codec.encode(self._grad[lo:hi], self._residual.get(s), seed=self._seed(s))
                pending.keep.append(payload)
                pending.futures.append(dist.isend(payload, group=self.group, group_dst=s,
                                                  tag=self._tag + 1).get_future())
            if kind in (_PULL, _PUSH_PULL):
                reply = torch.empty(_HEADER, dtype=torch.int64)
                pending.replies.append((s, reply))
                pending.futures.append(dist.irecv(reply, group=self.group, group_src=s, tag=self._tag + 2).get_future())
                pending.futures.append(dist.irecv(self._flat[lo:hi], group=self.group, group_src=s,
                                                  tag=self._tag + 3).get_future())
        if local_server is not None:
            # Our own shard: no message; the same steps the server's thread would take.
            lo, hi = local_server
            shard = self._shard
            assert shard is not None
            if push:
                payload = self.codec.encode(self._grad[lo:hi], self._residual.get(self.rank), seed=self._seed(self.rank))
                dense = torch.empty(hi - lo)
                self.codec.decode(payload, dense)
                shard.apply(self.rank, self.clock, dense)
            if kind in (_PULL, _PUSH_PULL):
                local = shard.begin_pull(self.rank, self.clock)
                try:
                    if local[0] == _OK:
                        self._flat[lo:hi].copy_(shard.param.detach())
                finally:
                    shard.end_pull()
            pending.local = local
        self._pending = pending
        return pending

    def _pack_grads(self) -> None:
        """The gradients into the flat buffer; afterwards every ``.grad`` is a view of it (as
        DDP's ``gradient_as_bucket_view``), so a loop that zeroes gradients in place
        (``zero_grad(set_to_none=False)``) has backward write straight into the buffer and
        this copy is skipped. ``zero_grad()``'s default (None) costs one copy per push."""
        offset = 0
        for p in self.params:
            view = self._grad[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
            if p.grad is None:
                view.zero_()
            elif p.grad.data_ptr() != view.data_ptr() or p.grad.stride() != view.stride():
                view.copy_(p.grad)
            else:
                continue
            p.grad = view

    def _seed(self, server: int) -> int:
        return (self.rank * 1_000_003 + self.clock * 7919 + server) & 0x7FFFFFFF

    def push(self) -> _Pending:
        """Sends the parameters' ``.grad`` (each shard's part to its server); returns a handle
        whose ``wait()`` returns once the pushes are out. Advances this worker's clock.

        Example:
            >>> loss.backward(); ps.push().wait()   # doctest: +SKIP
        """
        return self._request(_PUSH)

    def pull(self) -> _Pending:
        """Receives the servers' parameters into the model; in SSP mode a server answers once the
        bound allows this worker's clock. Do not touch the parameters before ``wait()``.

        Example:
            >>> ps.pull().wait()   # the model now holds the servers' parameters  # doctest: +SKIP
        """
        return self._request(_PULL)

    def step(self) -> None:
        """Push this step's gradients and pull the updated parameters (one message each way per
        server); replaces ``optimizer.step()`` in a training loop.

        Example:
            >>> model.zero_grad(); loss_fn(model(x), y).backward(); ps.step()   # doctest: +SKIP
        """
        self._request(_PUSH_PULL).wait()

    def close(self) -> None:
        """A worker tells the servers it is done (it stops holding the staleness bound back); a
        colocated rank then serves until every other worker closed. Idempotent.

        Example:
            >>> ps.close()   # doctest: +SKIP
        """
        if self._closed:
            return
        if self._pending is not None:
            try:
                self._pending.wait()
            except PSError:
                pass
        if self.is_worker:
            for s, (lo, hi) in zip(self.servers, self.bounds):
                if hi <= lo:
                    continue
                if s == self.rank:
                    self._shard.close(self.rank)
                else:
                    self._send(torch.tensor([_CLOSE, self.clock, 0, 0], dtype=torch.int64), s, self._tag)
                    count, dtype = self.codec.payload_shape(hi - lo)
                    # The filler for the payload receive the server keeps posted (see _serve_worker).
                    filler = self._grad[lo:hi] if self.codec.is_dense else torch.zeros(count, dtype=dtype)
                    self._send(filler, s, self._tag + 1)
        self._closed = True
        if self.is_server:
            self.serve()

    # ---- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """This rank's state: its shard (parameters, optimizer, clocks) if it serves, its clock
        and error-feedback residuals if it trains. A collective call (every rank of the group,
        between steps): each server waits until it has applied every push the workers made
        before the call, so the ranks' states form one consistent checkpoint.

        Example:
            >>> torch.save(ps.state_dict(), f"ps.rank{rank}.pt")   # doctest: +SKIP
        """
        if self._pending is not None:
            self._pending.wait()
        clocks = torch.full((self.world,), -1, dtype=torch.int64)
        clocks[self.rank] = self.clock if self.is_worker else -1
        dist.all_reduce(clocks, op=dist.ReduceOp.MAX, group=self.group)
        if self._shard is not None:
            self._shard.wait_for_clocks({w: int(clocks[w]) for w in self.workers})
        sd: dict = {"layout": (self.numel, tuple(self.servers), tuple(self.workers)), "clock": self.clock,
                    "residual": {s: r.clone() for s, r in self._residual.items()}}
        if self._shard is not None:
            sd["shard"] = self._shard.state_dict()
        return sd

    def _load(self, sd: dict) -> None:
        layout = (self.numel, tuple(self.servers), tuple(self.workers))
        if tuple(sd.get("layout", ())) != layout:
            raise PSError(f"agentcomm.ps: checkpoint layout {sd.get('layout')} (parameters, servers, workers) "
                          f"differs from this one {layout}")
        self.clock = int(sd["clock"])
        for s, r in sd["residual"].items():
            self._residual[s].copy_(r)
        if self._shard is not None:
            self._shard.load_state_dict(sd["shard"])
