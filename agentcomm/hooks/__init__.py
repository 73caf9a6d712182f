"""DDP communication hooks for gradient compression, and the compressed all-reduces under them.

Strategies (state class + hook, torch's ``(state, bucket) -> Future[Tensor]`` shape):
top-k / DGC (:class:`TopKState`, :func:`topk_hook`), random-k (:class:`RandomKState`,
:func:`randomk_hook`), 8/4/1-bit quantization (:class:`QuantizeState`,
:func:`quantize_hook`), fp16/bf16 (:class:`CastState`, :func:`cast_hook`), and compressors written in Python
(:class:`Compressor`, :class:`PythonCompressionState`, :func:`python_compressor_hook`). Any of
the native states takes ``hierarchical=True``: dense inside a host, compressed between hosts
(:mod:`agentcomm.hooks.hierarchical`). The ops
(:mod:`agentcomm.hooks.ops`) can be used without DDP.

Example:
    >>> import agentcomm.hooks as H
    >>> state = H.QuantizeState(bits=8, warmup_iters=10)                     # doctest: +SKIP
    >>> ddp_model.register_comm_hook(state, H.quantize_hook)                  # doctest: +SKIP
"""

from . import ops
from .compression import (
    CastState,
    CompressionState,
    CompressionStats,
    QuantizeState,
    RandomKState,
    TopKState,
    bf16_compress_hook,
    cast_hook,
    fp16_compress_hook,
    quantize_hook,
    randomk_hook,
    topk_hook,
)
from .custom import BucketInfo, Compressor, PythonCompressionState, TopKCompressor, python_compressor_hook
from .hierarchical import HostGroups

__all__ = [
    "ops",
    "CastState",
    "CompressionState",
    "CompressionStats",
    "QuantizeState",
    "RandomKState",
    "TopKState",
    "bf16_compress_hook",
    "cast_hook",
    "fp16_compress_hook",
    "quantize_hook",
    "randomk_hook",
    "topk_hook",
    "BucketInfo",
    "Compressor",
    "HostGroups",
    "PythonCompressionState",
    "TopKCompressor",
    "python_compressor_hook",
]
