"""How a worker's gradient shard travels to its server: dense, top-k or quantized, with
error feedback on the worker.

A codec turns ``n`` float32 gradient elements into one payload tensor whose size both
sides know from ``n`` alone (so the server posts its receive before the bytes arrive),
and turns a payload back into ``n`` dense elements on the server. The encode and decode
passes are agentcomm's native kernels (:mod:`agentcomm.kernels`); no Python loop touches
an element.

Example:
    >>> import torch
    >>> codec = TopK(ratio=0.5)
    >>> g = torch.tensor([0.1, -3.0, 2.0, 0.2])
    >>> residual = torch.zeros(4)
    >>> payload = codec.encode(g, residual, seed=0)
    >>> out = torch.empty(4); codec.decode(payload, out)
    >>> out.tolist(), residual.tolist()   # what was not sent stays in the residual
    ([0.0, -3.0, 2.0, 0.0], [0.10000000149011612, 0.0, 0.0, 0.20000000298023224])
"""

from __future__ import annotations

import torch

from agentcomm import kernels

__all__ = ["Codec", "Dense", "Quantize", "TopK", "codec_from"]


class Codec:
    """Encodes a float32 gradient shard into a payload of a size fixed by its length.

    ``error_feedback``: the worker keeps what a lossy encoding dropped (a residual per
    shard) and adds it to the next gradient before encoding (Seide et al. 2014; Stich et
    al. 2018), so nothing is lost, only delayed.

    Example:
        >>> Dense().payload_shape(10)
        (10, torch.float32)
    """

    name = "codec"
    error_feedback = False
    # True when the payload is the gradient itself (no decode); not inferable from the
    # payload's shape: top-k at ratio 0.5 also sends n float32.
    is_dense = False

    def payload_shape(self, n: int) -> tuple[int, torch.dtype]:
        """(element count, dtype) of the payload for an ``n``-element shard."""
        raise NotImplementedError

    def encode(self, grad: torch.Tensor, residual: torch.Tensor | None, seed: int) -> torch.Tensor:
        """The payload for ``grad`` (1-D float32); updates ``residual`` under error feedback.
        ``grad`` is not modified."""
        raise NotImplementedError

    def decode(self, payload: torch.Tensor, out: torch.Tensor) -> None:
        """Writes the dense gradient that ``payload`` encodes into ``out`` (1-D float32)."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.name + (" with EF" if self.error_feedback else "")


class Dense(Codec):
    """The gradient as it is (float32): the payload is the gradient itself, no copy.

    Example:
        >>> g = torch.ones(3); Dense().encode(g, None, 0) is g
        True
    """

    name = "dense"
    is_dense = True

    def payload_shape(self, n: int) -> tuple[int, torch.dtype]:
        return n, torch.float32

    def encode(self, grad: torch.Tensor, residual: torch.Tensor | None, seed: int) -> torch.Tensor:
        return grad

    def decode(self, payload: torch.Tensor, out: torch.Tensor) -> None:
        out.copy_(payload)


class TopK(Codec):
    """The ``ratio`` largest-magnitude elements (at least one) as (int32 index, float32 value)
    pairs, packed in one float32 payload of 2k elements.

    Example:
        >>> TopK(0.01).payload_shape(1000)
        (20, torch.float32)
    """

    name = "top-k"

    def __init__(self, ratio: float = 0.01, error_feedback: bool = True) -> None:
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"agentcomm.ps.TopK: ratio must be in (0, 1], got {ratio}")
        self.ratio, self.error_feedback = float(ratio), bool(error_feedback)

    def k(self, n: int) -> int:
        return min(n, max(1, int(n * self.ratio)))

    def payload_shape(self, n: int) -> tuple[int, torch.dtype]:
        return 2 * self.k(n), torch.float32

    def encode(self, grad: torch.Tensor, residual: torch.Tensor | None, seed: int) -> torch.Tensor:
        k = self.k(grad.numel())
        if self.error_feedback and residual is not None:
            idx, val = kernels.topk(residual, k, add=grad, error_feedback=True)
        else:
            idx, val = kernels.topk(grad, k)
        return torch.cat([idx.view(torch.float32), val])

    def decode(self, payload: torch.Tensor, out: torch.Tensor) -> None:
        k = payload.numel() // 2
        out.zero_()
        out.index_copy_(0, payload[:k].view(torch.int32).long(), payload[k:])

    def describe(self) -> str:
        return f"top-k {self.ratio:g}" + (" with EF" if self.error_feedback else "")


class Quantize(Codec):
    """Block-scaled 8/4/1-bit codes and one float32 scale per ``block`` elements, in one
    uint8 payload (stochastic rounding seeded per worker and clock). The scales come first
    so that their float32 view starts 4-byte aligned whatever the code length.

    Example:
        >>> Quantize(8).payload_shape(512)
        (520, torch.uint8)
    """

    name = "quantize"

    def __init__(self, bits: int = 8, error_feedback: bool = True, block: int = 256) -> None:
        if bits not in (1, 4, 8):
            raise ValueError(f"agentcomm.ps.Quantize: bits must be 1, 4 or 8, got {bits}")
        if block <= 0:
            raise ValueError(f"agentcomm.ps.Quantize: block must be positive, got {block}")
        self.bits, self.error_feedback, self.block = bits, bool(error_feedback), block
        self._sizes: dict[int, tuple[int, int]] = {}

    def _split(self, n: int) -> tuple[int, int]:
        """(code bytes, scale count) for n elements, as the kernel lays them out."""
        if n not in self._sizes:
            codes, scales = kernels.quantize(torch.zeros(n), self.bits, block=self.block)
            self._sizes[n] = (codes.numel(), scales.numel())
        return self._sizes[n]

    def payload_shape(self, n: int) -> tuple[int, torch.dtype]:
        codes, scales = self._split(n)
        return codes + 4 * scales, torch.uint8

    def encode(self, grad: torch.Tensor, residual: torch.Tensor | None, seed: int) -> torch.Tensor:
        if self.error_feedback and residual is not None:
            codes, scales = kernels.quantize(residual, self.bits, block=self.block, seed=seed, add=grad,
                                             error_feedback=True)
        else:
            codes, scales = kernels.quantize(grad, self.bits, block=self.block, seed=seed)
        return torch.cat([scales.view(torch.uint8), codes])

    def decode(self, payload: torch.Tensor, out: torch.Tensor) -> None:
        _, nscales = self._split(out.numel())
        scales = payload[:4 * nscales].view(torch.float32)
        kernels.dequantize(payload[4 * nscales:], scales, self.bits, out=out, block=self.block)

    def describe(self) -> str:
        return f"{self.bits}-bit" + (" with EF" if self.error_feedback else "")


def codec_from(compression: Codec | str | None) -> Codec:
    """A codec from an instance, a name (``"topk"``, ``"q8"``, ``"q4"``, ``"q1"``) or None (dense).

    Example:
        >>> codec_from("q4").describe()
        '4-bit with EF'
    """
    if compression is None or compression == "dense":
        return Dense()
    if isinstance(compression, Codec):
        return compression
    named = {"topk": lambda: TopK(0.01), "q8": lambda: Quantize(8), "q4": lambda: Quantize(4),
             "q1": lambda: Quantize(1)}
    if compression not in named:
        raise ValueError(f"agentcomm.ps: unknown compression {compression!r}; expected a Codec or one of "
                         f"{sorted(named)} or 'dense'")
    return named[compression]()
