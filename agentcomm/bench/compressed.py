"""Compressed all-reduce as benchmark "backends": ``agentcomm:<scheme>`` in ``--backends``.

Schemes: ``topk=R`` / ``dgc=R`` / ``randomk=R`` (ratio R of the elements, error feedback
on), ``q8`` / ``q4`` / ``q1`` (block quantization with both error-feedback stages),
``fp16`` / ``bf16`` (cast with the division fused, dense all-reduce in half precision).
Each averages a float32 buffer of the case's size, as a DDP hook would.

Reported besides time and (effective) bus bandwidth, i.e. the bandwidth an uncompressed
all-reduce would need to match: bytes this rank put on the wire per op, the compression
ratio against a dense ring's 2 (n-1)/n * S, and encode / decode time per op.

Example:
    python -m agentcomm.bench -W 4 -b 1M -e 64M --backends agentcomm:topk=0.01,agentcomm:q8,agentcomm,gloo
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from agentcomm import _C
from agentcomm.bench.harness import Case
from agentcomm.hooks import ops

SCHEMES = ("topk", "dgc", "randomk", "q8", "q4", "q1", "fp16", "bf16")


def split_backend(name: str) -> tuple[str, str]:
    """'agentcomm:topk=0.01' -> ('agentcomm', 'topk=0.01'); plain names -> (name, '').

    Example:
        >>> split_backend("agentcomm:q8")
        ('agentcomm', 'q8')
    """
    base, _, scheme = name.partition(":")
    if scheme:
        kind = scheme.split("=")[0]
        if base != "agentcomm" or kind not in SCHEMES:
            raise SystemExit(f"unknown compressed backend {name!r}: use agentcomm:<scheme>, scheme one of "
                             f"{', '.join(SCHEMES)} (topk/dgc/randomk take =ratio)")
    return base, scheme


@dataclass
class Counters:
    ops: int = 0
    stats: torch.Tensor = field(default_factory=lambda: torch.zeros(4, dtype=torch.int64))
    py_encode_s: float = 0.0
    py_decode_s: float = 0.0
    py_wire: int = 0

    def per_op(self) -> dict:
        n = max(1, self.ops)
        raw, wire, enc, dec = (int(v) for v in self.stats.tolist())
        return {"wire_bytes": (wire + self.py_wire) / n, "encode_us": (enc * 1e-3 + self.py_encode_s * 1e6) / n,
                "decode_us": (dec * 1e-3 + self.py_decode_s * 1e6) / n}


def make_compressed_case(scheme: str, nbytes: int, group: dist.ProcessGroup) -> tuple[Case, Counters]:
    """A float32 average of ``nbytes`` through ``scheme``, and its counters."""
    world = dist.get_world_size(group)
    count = max(1, nbytes // 4)
    kind, _, ratio_text = scheme.partition("=")
    ratio = float(ratio_text) if ratio_text else 0.01
    g = torch.Generator().manual_seed(dist.get_rank(group))
    grad = torch.randn(count, generator=g)
    buf = grad.clone()
    residual = torch.zeros(count)
    server = torch.zeros(ops.quant_slice(count, 256, group)[1])
    counters = Counters()

    if kind in ("topk", "dgc", "randomk"):
        k = max(1, int(count * ratio))
        method = kind

        def run() -> None:
            ops.sparse_all_reduce(buf, k, residual=residual, method=method, seed=counters.ops, group=group,
                                  stats=counters.stats).wait()
            counters.ops += 1
    elif kind in ("q8", "q4", "q1"):
        bits = int(kind[1:])

        def run() -> None:
            ops.quantized_all_reduce(buf, bits=bits, block=256, residual=residual, server_residual=server,
                                     seed=counters.ops, group=group, stats=counters.stats).wait()
            counters.ops += 1
    else:
        half = torch.empty(count, dtype=torch.float16 if kind == "fp16" else torch.bfloat16)

        def run() -> None:
            t0 = time.perf_counter()
            _C.cast_into(buf, half, 1.0 / world)
            counters.py_encode_s += time.perf_counter() - t0
            dist.all_reduce(half, group=group)
            t1 = time.perf_counter()
            _C.cast_into(half, buf, 1.0)
            counters.py_decode_s += time.perf_counter() - t1
            counters.py_wire += 2 * (world - 1) * count * 2 // world
            counters.ops += 1

    def reset() -> None:
        buf.copy_(grad)

    case = Case("all_reduce", "ip", count, torch.float32, "avg", group, run, reset, reset, lambda: buf,
                lambda: grad.double())
    return case, counters


def dense_ring_wire(nbytes: int, world: int) -> float:
    """Bytes a rank sends in a dense ring all-reduce of ``nbytes``."""
    return 2 * (world - 1) * nbytes / world if world > 1 else 0.0
