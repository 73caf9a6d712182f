"""Hierarchical compression: dense inside a host, compressed only between hosts.

Where compression pays in real clusters: links inside a host (shared memory) are an order of
magnitude faster than those between hosts, so compressing there only adds encode time and
error. With ``hierarchical=True`` a compression state sends each bucket through three steps:

1. **reduce** (sum, dense) to the host's leader (its lowest rank) over the host's own
   agentcomm group, i.e. shared memory;
2. the leaders run the compressed average (top-k / random-k / quantized, with error feedback
   on the leaders) over a group of the leaders only, i.e. TCP between hosts; each leader
   first scales its host's sum by hosts / world, so the average over leaders is the average
   over every rank, also with uneven hosts;
3. **broadcast** from the leader to its host's ranks, over shared memory again.

The steps of one bucket depend on each other, so they run on one thread per state, bucket
after bucket in DDP's order (the same order on every rank, so each group sees its collectives
in the same order everywhere); DDP's backward pass goes on meanwhile.

Invariant: every rank of the group constructs its :class:`HostGroups` (inside the state's
constructor) at the same point of the program, since creating subgroups is collective.

Example::

    state = TopKState(ratio=0.01, hierarchical=True)   # every rank, after init_process_group
    ddp_model.register_comm_hook(state, topk_hook)
"""

from __future__ import annotations

import concurrent.futures
from typing import Callable, Optional

import torch
import torch.distributed as dist

from .ops import native_backend

# launch(g, index, iteration) starts the compressed average of g (float32, reduced in place)
# as bucket `index` of the compression layout at `iteration` and returns its future.
Launch = Callable[[torch.Tensor, int, int], torch.futures.Future]


class HostGroups:
    """The hosts of ``group``: one agentcomm subgroup per host, and one of the hosts' leaders.

    ``hosts``: each host's group ranks (ascending, hosts ordered by their lowest rank);
    ``local``: this rank's host group; ``leaders``: the leaders' group (None on other ranks);
    ``leader``: the global rank of this host's leader; ``trivial``: one host, or one rank per
    host (nothing to gain: the flat compressed collective is used).

    Example::

        hg = HostGroups(dist.group.WORLD)   # on every rank
        hg.hosts                            # [[0, 1], [2, 3]] for 2 hosts x 2 ranks
    """

    def __init__(self, group: Optional[dist.ProcessGroup] = None) -> None:
        group = group if group is not None else dist.distributed_c10d._get_default_group()
        mine = list(native_backend(group).local_ranks)  # the communicator's same-host rule
        everyone: list = [None] * group.size()
        dist.all_gather_object(everyone, mine, group=group)
        hosts = sorted({tuple(r) for r in everyone}, key=lambda h: h[0])
        if sorted(r for h in hosts for r in h) != list(range(group.size())):
            raise RuntimeError(f"agentcomm: inconsistent host map {hosts} for a group of {group.size()} ranks")
        self.hosts = [list(h) for h in hosts]
        self.world = group.size()
        self.trivial = len(hosts) == 1 or len(hosts) == group.size()
        me = group.rank()
        to_global = [dist.get_global_rank(group, r) for r in range(group.size())]
        self.local: Optional[dist.ProcessGroup] = None
        self.leaders: Optional[dist.ProcessGroup] = None
        self.leader = to_global[next(h for h in hosts if me in h)[0]]
        self.is_leader = to_global[me] == self.leader
        if self.trivial:
            return
        for h in hosts:  # collective: every rank creates every host's group, in the same order
            g = dist.new_group([to_global[r] for r in h], backend="agentcomm")
            if me in h:
                self.local = g
        leaders = dist.new_group([to_global[h[0]] for h in hosts], backend="agentcomm")
        self.leaders = leaders if self.is_leader else None
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentcomm-hier")

    @property
    def host_count(self) -> int:
        return len(self.hosts)

    def across_hosts(self, launch: Launch) -> Launch:
        """``launch`` (a compressed average over the leaders' group) wrapped in the host-local
        reduce before it and broadcast after it; runs on this object's thread."""

        def run(g: torch.Tensor, index: int, iteration: int) -> torch.futures.Future:
            out: torch.futures.Future = torch.futures.Future()

            def steps() -> None:
                try:
                    dist.reduce(g, dst=self.leader, group=self.local)
                    if self.is_leader:
                        g.mul_(self.host_count / self.world)
                        launch(g, index, iteration).wait()
                    dist.broadcast(g, src=self.leader, group=self.local)
                    out.set_result(g)
                except Exception as e:  # noqa: BLE001 - handed to DDP through the future
                    out.set_exception(e)

            self._thread.submit(steps)
            return out

        return run
