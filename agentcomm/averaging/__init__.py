"""Model-averaging strategies over agentcomm: local SGD and its relatives.

Every averager has one small interface: ``average_parameters(params)`` (call it once per
training step, after ``optimizer.step()``; it counts steps and averages when due, like
torch's ``PeriodicModelAverager``), ``state_dict()`` / ``load_state_dict()`` for
checkpoints, and ``step`` (iterations seen).

Parameters are averaged in place through one flat buffer per dtype that the parameters
become views of (so steady-state averaging is one in-place all_reduce with AVG fused into
its last pass: no flatten, no copy back, no Python loop over parameters).

Example:
    >>> from agentcomm.averaging import PeriodicAverager           # doctest: +SKIP
    >>> averager = PeriodicAverager(period=4, warmup_steps=100)     # doctest: +SKIP
    >>> for batch in loader:                                        # doctest: +SKIP
    ...     loss_fn(model(batch)).backward(); opt.step(); opt.zero_grad()
    ...     averager.average_parameters(model.parameters())
"""

from agentcomm.averaging.averagers import (
    Averager,
    AsyncAverager,
    HierarchicalAverager,
    PeriodicAverager,
    WeightedAverager,
)
from agentcomm.averaging.flat import FlatParameters
from agentcomm.averaging.hooks import LocalSGDState, post_local_sgd_hook

__all__ = ["Averager", "AsyncAverager", "FlatParameters", "HierarchicalAverager", "LocalSGDState",
           "PeriodicAverager", "WeightedAverager", "post_local_sgd_hook"]
