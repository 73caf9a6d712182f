"""Parameters bound to views of flat buffers (one per dtype), packed by agentcomm's
multi-tensor kernel in one pass.

Example:
    >>> flat = FlatParameters()
    >>> bufs = flat.bind(list(model.parameters()))   # doctest: +SKIP
    >>> dist.all_reduce(bufs[0], op=dist.ReduceOp.AVG)  # averages the parameters in place  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from agentcomm import _C


def collect(params: Iterable) -> list[torch.Tensor]:
    """Parameters from ``model.parameters()`` or an optimizer's ``param_groups``."""
    out: list[torch.Tensor] = []
    for p in params:
        if isinstance(p, dict):
            out.extend(p["params"])
        else:
            out.append(p)
    return out


class FlatParameters:
    """Keeps a list of parameters as views of one flat buffer per dtype.

    The first :meth:`bind` packs them (one pass, agentcomm._C.pack_into) and rebinds every
    ``p.data`` to its slice; later calls with the same, untouched parameters return the same
    buffers at no cost. A parameter whose ``.data`` was replaced (or a different list) is
    packed again. In-place optimizer updates keep the binding.
    """

    def __init__(self) -> None:
        self._signature: tuple = ()
        self._buffers: list[torch.Tensor] = []

    @staticmethod
    def _sig(params: list[torch.Tensor]) -> tuple:
        return tuple((id(p), p.data_ptr(), p.numel(), p.dtype) for p in params)

    def bind(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        if params and self._sig(params) == self._signature:
            return self._buffers
        by_dtype: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        for p in params:
            if p.device.type not in ("cpu", "cuda"):
                raise ValueError(f"agentcomm averaging: parameter on {p.device}; CPU and CUDA parameters are supported")
            by_dtype.setdefault((p.device, p.dtype), []).append(p)
        buffers = []
        for (device, dtype), group in by_dtype.items():
            # CUDA: packed by the multi-tensor kernel on the current stream.
            flat = torch.empty(sum(p.numel() for p in group), dtype=dtype, device=device)
            _C.pack_into([p.data.contiguous() for p in group], flat)
            offset = 0
            for p in group:
                p.data = flat[offset:offset + p.numel()].view_as(p)
                offset += p.numel()
            buffers.append(flat)
        self._buffers = buffers
        self._signature = self._sig(params)
        return buffers
