"""agentcomm: a native collective-communication backend for torch.distributed.

Importing the package registers the ``"agentcomm"`` backend with
``torch.distributed``; existing code then only changes the backend name.

Example:
    >>> import torch.distributed as dist
    >>> import agentcomm  # registers the backend
    >>> dist.init_process_group("agentcomm", init_method="env://")  # doctest: +SKIP
    >>> t = torch.ones(4); dist.all_reduce(t)                         # doctest: +SKIP

Environment variables:
    AGENTCOMM_DEBUG        WARN (default) | INFO | TRACE, like NCCL_DEBUG.
    AGENTCOMM_SOCKET_IFNAME  interface to listen on (like GLOO_SOCKET_IFNAME).
    AGENTCOMM_ALGO         force an algorithm: ring | direct | tcp | shm_flat | shm_staged |
                           shm_cma | hierarchical, or ``collective:name,...``
                           (docs/algorithms.md).
    AGENTCOMM_CHUNK_BYTES  pipeline chunk size of the ring algorithms (a positive
                           number of bytes; anything else fails init naming it).
    (README.md lists every setting.)
    AGENTCOMM_CUDA_IPC     0 stages CUDA all-reduces through host memory even when
                           every rank is on this host (default 1: CUDA IPC).
"""

from __future__ import annotations

import logging

import torch  # noqa: F401  (the extension needs torch's libraries loaded first)
import torch.distributed as dist

from . import _C

__all__ = ["BACKEND_NAME", "__version__", "cuda_built", "is_registered"]

__version__: str = _C.version()
BACKEND_NAME = "agentcomm"

_log = logging.getLogger(__name__)


def _create_backend(dist_opts: "dist._DistributedBackendOptions", pg_opts: object) -> "_C.ProcessGroupAgentComm":
    """Creator called by torch.distributed for every process group using agentcomm.

    Example:
        >>> dist.new_group(ranks=[0, 1], backend="agentcomm")  # doctest: +SKIP
    """
    timeout = dist_opts.timeout.total_seconds()
    _log.debug("creating agentcomm backend rank %d/%d", dist_opts.group_rank, dist_opts.group_size)
    return _C.ProcessGroupAgentComm(
        dist_opts.store, dist_opts.group_rank, dist_opts.group_size, timeout, dist_opts.group_id
    )


def cuda_built() -> bool:
    """Whether this build of agentcomm takes CUDA tensors (it was compiled against a torch with CUDA).

    Example:
        >>> import agentcomm; isinstance(agentcomm.cuda_built(), bool)
        True
    """
    return bool(_C.cuda_built())


def is_registered() -> bool:
    """Whether torch.distributed knows the agentcomm backend.

    Example:
        >>> import agentcomm; agentcomm.is_registered()
        True
    """
    return BACKEND_NAME.upper() in dist.Backend._plugins


if not is_registered():
    # CUDA tensors are taken whatever the build: a build without CUDA support
    # then says so by name instead of torch's "no backend for device cuda".
    dist.Backend.register_backend(BACKEND_NAME, _create_backend, extended_api=True, devices=["cpu", "cuda"])
