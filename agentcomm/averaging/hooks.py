"""DDP communication hook for post-local SGD: synchronous SGD first, local SGD after.

For ``start_localsgd_iter`` iterations the hook averages gradients over ``process_group``
(one all_reduce with AVG fused, on agentcomm); afterwards it averages them over
``subgroup`` only (e.g. the ranks of one host), or not at all when ``subgroup`` is None, and
a model averager (e.g. :class:`agentcomm.averaging.PeriodicAverager` with
``warmup_steps=start_localsgd_iter``) keeps the replicas together.

Example:
    >>> state = LocalSGDState(start_localsgd_iter=100)                       # doctest: +SKIP
    >>> ddp_model.register_comm_hook(state, post_local_sgd_hook)              # doctest: +SKIP
    >>> averager = PeriodicAverager(period=4, warmup_steps=100)               # doctest: +SKIP
"""

# No `from __future__ import annotations` here: DDP checks the hook's annotations as objects.
from typing import Optional

import torch
import torch.distributed as dist

from agentcomm.averaging.averagers import all_reduce_average


class LocalSGDState:
    """State of :func:`post_local_sgd_hook`: the groups, the switch point, the iteration count.

    Example:
        >>> state = LocalSGDState(start_localsgd_iter=10)  # doctest: +SKIP
    """

    def __init__(self, start_localsgd_iter: int, process_group: Optional[dist.ProcessGroup] = None,
                 subgroup: Optional[dist.ProcessGroup] = None) -> None:
        if start_localsgd_iter < 0:
            raise ValueError(f"start_localsgd_iter must be >= 0, got {start_localsgd_iter}")
        self.process_group = process_group
        self.subgroup = subgroup
        self.start_localsgd_iter = start_localsgd_iter
        self.iter = 0

    def __getstate__(self) -> dict:  # checkpoints carry the counter, not the groups
        return {"start_localsgd_iter": self.start_localsgd_iter, "iter": self.iter}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["start_localsgd_iter"])
        self.iter = state["iter"]


def _averaged(group: dist.ProcessGroup, tensor: torch.Tensor) -> torch.futures.Future[torch.Tensor]:
    work = all_reduce_average(tensor, group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def post_local_sgd_hook(state: LocalSGDState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Averages the bucket over the whole group before the switch, over ``state.subgroup``
    (or nowhere) after it. Counts iterations at each iteration's last bucket."""
    buf = bucket.buffer()
    if state.iter < state.start_localsgd_iter:
        if bucket.is_last():
            state.iter += 1
        return _averaged(state.process_group or dist.group.WORLD, buf)
    if state.subgroup is not None:
        return _averaged(state.subgroup, buf)
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(buf)
    return fut
