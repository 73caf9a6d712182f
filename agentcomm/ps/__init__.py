"""agentcomm.ps: a parameter server with asynchronous and stale-synchronous SGD.

Servers hold the parameters sharded by byte range, each shard with its optimizer;
workers push gradients (dense, top-k or quantized with error feedback) and pull
parameters over agentcomm's native point-to-point path. See :mod:`agentcomm.ps.server`
and docs/ps.md.

Example:
    >>> import agentcomm.ps as ps                                        # doctest: +SKIP
    >>> server = ps.ParameterServer(model, lambda p: torch.optim.SGD(p, lr=0.1),
    ...                             mode="ssp", staleness=2)             # doctest: +SKIP
    >>> loss.backward(); server.step()                                   # doctest: +SKIP
"""

from agentcomm.ps.codec import Codec, Dense, Quantize, TopK, codec_from
from agentcomm.ps.server import ParameterServer, PSError, PullLogEntry

__all__ = ["Codec", "Dense", "ParameterServer", "PSError", "PullLogEntry", "Quantize", "TopK", "codec_from"]
