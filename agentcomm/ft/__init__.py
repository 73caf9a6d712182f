"""agentcomm under torchft: per-step fault tolerance across replica groups.

`torchft <https://github.com/pytorch/torchft>`_ keeps training when a replica group fails:
a lighthouse forms a quorum every step, the survivors go on without the failed group, and a
restarted group rejoins and heals from a peer's checkpoint. It needs a process group it can
``configure`` for every quorum (a fresh store prefix each time), ``abort`` from any thread,
and ask whether it ``errored``. :class:`ProcessGroupAgentComm` is that group over agentcomm
(torchft's ``ProcessGroupGloo`` counterpart): every quorum gets a new agentcomm group,
``abort()`` fails blocked collectives within milliseconds (shared memory and TCP), and
``errored()`` returns the group's first failure.

Requires ``pip install torchft==0.2.0`` (the test setup installs it).

Example:
    >>> from datetime import timedelta
    >>> from torchft import Manager
    >>> from agentcomm.ft import ProcessGroupAgentComm
    >>> pg = ProcessGroupAgentComm(timeout=timedelta(seconds=10))
    >>> manager = Manager(pg=pg, min_replica_size=1, load_state_dict=..., state_dict=...)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist

from .. import _C

try:
    from torchft.process_group import ProcessGroupWrapper
except ImportError as e:  # pragma: no cover - exercised only without torchft
    raise ImportError(
        f"agentcomm.ft needs torchft (pip install torchft==0.2.0); importing it failed: {e}"
    ) from e

__all__ = ["ProcessGroupAgentComm"]

_log = logging.getLogger(__name__)


class ProcessGroupAgentComm(ProcessGroupWrapper):
    """A torchft process group on agentcomm, reconfigured for every quorum.

    Args:
        timeout: the timeout of setup and of every collective of each quorum's group.

    Example:
        >>> from agentcomm.ft import ProcessGroupAgentComm
        >>> pg = ProcessGroupAgentComm()
        >>> pg.getBackendName()
        'torchft-agentcomm'
        >>> pg.errored() is None
        True
    """

    def __init__(self, timeout: timedelta = timedelta(seconds=60)) -> None:
        super().__init__(timeout=timeout)
        self._backend: Optional[_C.ProcessGroupAgentComm] = None
        self._retired: list[_C.ProcessGroupAgentComm] = []

    def getBackendName(self) -> str:
        return "torchft-agentcomm"

    def _create_pg(self, store: dist.Store, rank: int, world_size: int) -> dist.ProcessGroup:
        # The previous quorum's group was aborted by configure(); its threads
        # and shared memory go now, on this (the configuring) thread.
        self._release_retired()
        name = f"torchft_{self._replica_id}_quorum{self._quorum_id}"
        backend = _C.ProcessGroupAgentComm(store, rank, world_size, self._timeout.total_seconds(), name)
        pg = dist.ProcessGroup(store, rank, world_size)
        pg._set_default_backend(dist.ProcessGroup.BackendType.CUSTOM)
        pg._register_backend(torch.device("cpu"), dist.ProcessGroup.BackendType.CUSTOM, backend)
        if torch.cuda.is_available():
            pg._register_backend(torch.device("cuda"), dist.ProcessGroup.BackendType.CUSTOM, backend)
        self._backend = backend
        _log.info("agentcomm.ft: quorum %s: rank %d of %d over %s", self._quorum_id, rank, world_size,
                  backend.transport)
        return pg

    def abort(self, errored: bool = True) -> None:
        """Fails every op of the current group from any thread (blocked ones within milliseconds)."""
        backend = self._backend
        if backend is not None:
            backend.abort()
            self._retired.append(backend)
            self._backend = None
        super().abort(errored=errored)

    def errored(self) -> Optional[Exception]:
        """The current group's first failure as an exception, or None while it works."""
        backend = self._backend
        why = backend.error() if backend is not None else None
        return dist.DistBackendError(why) if why else None

    def shutdown(self) -> None:
        """Releases the current and retired groups (threads, sockets, shared memory)."""
        if self._backend is not None:
            self._retired.append(self._backend)
            self._backend = None
        self._release_retired()
        super().shutdown()

    def _release_retired(self) -> None:
        while self._retired:
            self._retired.pop().shutdown()
