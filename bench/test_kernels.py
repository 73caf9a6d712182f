"""Microbenchmarks of agentcomm's CPU reduction kernel (pytest-benchmark).

    pytest bench/test_kernels.py --benchmark-only --benchmark-group-by=param:case

compares out = a + b with agentcomm's kernel at each vector level against
torch.add(out=...) on one thread (a rank reduces on one core), for 256 KiB per
operand (in cache: the step size of the shared-memory reductions) and 16 MiB
(memory-bound). With --benchmark-disable (as in scripts/test.sh)
each case runs once and only the results are checked.
"""

from __future__ import annotations

import pytest
import torch

import agentcomm._C as C

SIZES = {"256K": 256 << 10, "16M": 16 << 20}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
IMPLS = ["torch", "agentcomm-scalar", "agentcomm-avx2", "agentcomm-avx512"]


def operands(dtype: torch.dtype, nbytes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = nbytes // torch.tensor([], dtype=dtype).element_size()
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, generator=g).to(dtype)
    b = torch.randn(n, generator=g).to(dtype)
    return a, b, torch.empty_like(a)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("size", list(SIZES))
def test_sum_kernel(benchmark, size: str, dtype: str, impl: str) -> None:
    a, b, out = operands(DTYPES[dtype], SIZES[size])
    benchmark.extra_info["case"] = f"sum {dtype} {size}"
    benchmark.extra_info["bytes_per_op"] = 3 * SIZES[size]  # read a, read b, write out
    if impl == "torch":
        benchmark(torch.add, a, b, out=out)
    else:
        level = impl.split("-")[1]
        benchmark(C.reduce_into, out, a, b, "sum", level)
    # Same result as torch (bitwise for float32/float64; 16-bit types round once, as torch does).
    assert torch.equal(out, a + b)
