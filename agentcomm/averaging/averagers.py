"""Periodic, hierarchical, weighted and asynchronous (bounded-staleness) model averaging.

All averagers share :class:`Averager`'s interface. Example (local SGD after 100 steps of
synchronous DDP, as torch's post-local-SGD recipe)::

    >>> averager = PeriodicAverager(period=4, warmup_steps=100)     # doctest: +SKIP
    >>> for step, batch in enumerate(loader):                        # doctest: +SKIP
    ...     loss_fn(model(batch)).backward(); opt.step(); opt.zero_grad()
    ...     averager.average_parameters(model.parameters())
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from agentcomm.averaging.flat import FlatParameters, collect

_log = logging.getLogger(__name__)


def _is_agentcomm(group: dist.ProcessGroup) -> bool:
    try:
        return dist.get_backend(group) == "agentcomm"
    except (RuntimeError, ValueError):
        return False


def all_reduce_average(buf: torch.Tensor, group: dist.ProcessGroup, async_op: bool = False):
    """In-place average over ``group``: AVG fused into the reduction on agentcomm;
    elsewhere (Gloo has no AVG) divide first, then SUM, as torch's averagers do.

    Example:
        >>> all_reduce_average(torch.ones(4), dist.group.WORLD)  # doctest: +SKIP
    """
    if _is_agentcomm(group):
        return dist.all_reduce(buf, op=dist.ReduceOp.AVG, group=group, async_op=async_op)
    buf.div_(dist.get_world_size(group))
    return dist.all_reduce(buf, group=group, async_op=async_op)


class Averager:
    """Common interface: ``average_parameters(params)`` once per step, ``step``, checkpoints.

    Subclasses implement :meth:`_due` (whether this step averages, and over which group).

    Example:
        >>> class Every(Averager):
        ...     def _due(self):
        ...         return self.process_group
    """

    def __init__(self, process_group: dist.ProcessGroup | None = None, warmup_steps: int = 0) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.process_group = process_group if process_group is not None else dist.group.WORLD
        self.warmup_steps = warmup_steps
        self.step = 0
        self._flat = FlatParameters()

    def _due(self) -> dist.ProcessGroup | None:
        raise NotImplementedError

    def _group_now(self) -> dist.ProcessGroup | None:
        """The group to average over at this step: past warm-up, due, and this rank in it."""
        group = self._due() if self.step >= self.warmup_steps else None
        return None if group is None or dist._rank_not_in_group(group) else group

    def average_parameters(self, params: Iterable) -> bool:
        """Averages ``params`` (parameters or optimizer param groups) if this step is due.
        Returns whether it averaged. Counts the step either way."""
        group = self._group_now()
        if group is not None:
            for buf in self._flat.bind(collect(params)):
                all_reduce_average(buf, group)
        self.step += 1
        return group is not None

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


class PeriodicAverager(Averager):
    """Local SGD: average every ``period`` steps once ``warmup_steps`` have passed.

    Same schedule as torch's ``PeriodicModelAverager`` (steps ``warmup_steps``,
    ``warmup_steps + period``, ...); same parameters after the same steps (bitwise when the
    group size is a power of two: torch divides before summing, agentcomm after, and
    scaling by 2^-k commutes with rounding).

    Example:
        >>> averager = PeriodicAverager(period=4, warmup_steps=10)  # doctest: +SKIP
    """

    def __init__(self, period: int, warmup_steps: int = 0, process_group: dist.ProcessGroup | None = None) -> None:
        super().__init__(process_group, warmup_steps)
        if period < 1:
            raise ValueError(f"period must be >= 1, got {period}")
        self.period = period

    def _due(self) -> dist.ProcessGroup | None:
        return self.process_group if (self.step - self.warmup_steps) % self.period == 0 else None


class HierarchicalAverager(Averager):
    """Averages inside small groups often and across larger ones rarely.

    ``period_group_size_dict`` maps period -> group size, ascending, the last size being the
    whole group: ``{2: 2, 8: 4}`` averages pairs of ranks every 2 steps and all 4 every 8.
    At a step divisible by several periods only the largest applies. Same semantics and
    subgroups (``dist.new_subgroups``) as torch's ``HierarchicalModelAverager``; consecutive
    ranks share a subgroup, so with one host's ranks numbered together the frequent
    averaging stays in shared memory.

    Example:
        >>> averager = HierarchicalAverager({2: 2, 8: 4}, warmup_steps=10)  # doctest: +SKIP
    """

    def __init__(self, period_group_size_dict: dict[int, int], warmup_steps: int = 0,
                 process_group: dist.ProcessGroup | None = None) -> None:
        super().__init__(process_group, warmup_steps)
        if not period_group_size_dict:
            raise ValueError("period_group_size_dict must not be empty")
        self._periods = list(period_group_size_dict)
        if self._periods != sorted(self._periods) or self._periods[0] <= 0:
            raise ValueError(f"periods must be positive and ascending, got {self._periods}")
        world = dist.get_world_size(self.process_group)
        sizes = list(period_group_size_dict.values())
        if sizes[-1] != world:
            raise ValueError(f"the last group size ({sizes[-1]}) must be the size of the process group ({world})")
        self._groups: OrderedDict[int, dist.ProcessGroup] = OrderedDict()
        for period, size in period_group_size_dict.items():
            if size == world:
                self._groups[period] = self.process_group
            else:
                self._groups[period], _ = dist.new_subgroups(group_size=size, group=self.process_group)

    def _due(self) -> dist.ProcessGroup | None:
        for period in reversed(self._periods):
            if self.step % period == 0:
                return self._groups[period]
        return None


class WeightedAverager(PeriodicAverager):
    """Weighted averaging: ``p = sum_i w_i p_i / sum_i w_i`` with a weight per rank and step
    (e.g. the samples each rank saw: uneven shards).

    The weights are summed first (one tiny all_reduce); the parameters then go through one
    PREMUL_SUM all_reduce with this rank's factor ``w_i / sum w`` (agentcomm scales each
    rank's input in the pass that feeds the reduction).

    Example:
        >>> averager = WeightedAverager(period=1)                                   # doctest: +SKIP
        >>> averager.average_parameters(model.parameters(), weight=len(local_batch))  # doctest: +SKIP
    """

    def __init__(self, period: int = 1, warmup_steps: int = 0, process_group: dist.ProcessGroup | None = None) -> None:
        super().__init__(period, warmup_steps, process_group)

    def average_parameters(self, params: Iterable, weight: float = 1.0) -> bool:  # type: ignore[override]
        if not weight >= 0:
            raise ValueError(f"weight must be a non-negative number, got {weight}")
        group = self._group_now()
        if group is not None:
            total = torch.tensor([float(weight)], dtype=torch.float64)
            dist.all_reduce(total, group=group)
            if total.item() <= 0:
                raise ValueError("WeightedAverager: the weights of all ranks sum to zero")
            factor = float(weight) / total.item()
            for buf in self._flat.bind(collect(params)):
                if _is_agentcomm(group) and buf.is_floating_point():
                    dist.all_reduce(buf, op=dist._make_nccl_premul_sum(factor), group=group)
                else:
                    buf.mul_(factor)
                    dist.all_reduce(buf, group=group)
        self.step += 1
        return group is not None


@dataclass
class _Pending:
    launched: int                 # step at which the averaging was issued
    works: list                   # one async all_reduce per flat buffer
    snapshots: list[torch.Tensor]  # the local parameters it averages
    averages: list[torch.Tensor]   # becomes the average when the works complete


class AsyncAverager(PeriodicAverager):
    """Averaging in the background with bounded staleness.

    Every ``period`` steps it snapshots the parameters and issues a non-blocking all_reduce
    of the snapshot; training goes on. The result is merged as soon as it has arrived, and
    at the latest ``max_staleness`` steps after it was issued (then it waits), keeping the
    local progress made meanwhile: ``p <- p + (average - snapshot)``. With
    ``max_staleness=0`` this is :class:`PeriodicAverager`. At most one averaging is in flight.

    Example:
        >>> averager = AsyncAverager(period=4, max_staleness=2)  # doctest: +SKIP
    """

    def __init__(self, period: int, max_staleness: int = 1, warmup_steps: int = 0,
                 process_group: dist.ProcessGroup | None = None) -> None:
        super().__init__(period, warmup_steps, process_group)
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        self.max_staleness = max_staleness
        self._pending: _Pending | None = None
        self.merged = 0  # averagings merged so far

    def _merge(self, bufs: list[torch.Tensor], wait: bool) -> None:
        pending = self._pending
        if pending is None:
            return
        if not wait and not all(w.is_completed() for w in pending.works):
            return
        for w in pending.works:
            w.wait()
        for buf, snap, avg in zip(bufs, pending.snapshots, pending.averages):
            if self.step == pending.launched:
                buf.copy_(avg)  # no local progress since the snapshot: exactly the average
            else:
                buf.add_(avg.sub_(snap))  # p + (average - snapshot)
        self._pending = None
        self.merged += 1

    def average_parameters(self, params: Iterable) -> bool:
        bufs = self._flat.bind(collect(params))
        if self._pending is not None:
            self._merge(bufs, wait=self.step - self._pending.launched >= self.max_staleness)
        group = self._group_now()
        launched = False
        if group is not None and self._pending is None:
            snapshots = [b.clone() for b in bufs]
            averages = [s.clone() for s in snapshots]
            works = [all_reduce_average(a, group, async_op=True) for a in averages]
            self._pending = _Pending(self.step, works, snapshots, averages)
            launched = True
            if self.max_staleness == 0:
                self._merge(bufs, wait=True)
        self.step += 1
        return launched

    def synchronize(self, params: Iterable) -> None:
        """Waits for and merges an averaging in flight (before evaluation or a checkpoint)."""
        if self._pending is not None:
            self._merge(self._flat.bind(collect(params)), wait=True)

    def state_dict(self) -> dict:
        if self._pending is not None:
            raise RuntimeError("AsyncAverager.state_dict(): an averaging is in flight; call synchronize(params) first")
        return {"step": self.step, "merged": self.merged}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.merged = int(state.get("merged", 0))
