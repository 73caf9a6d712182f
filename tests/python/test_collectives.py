"""Every collective x dtype x reduce op x size on agentcomm, compared with Gloo.

One world per world size runs the whole matrix (spawning ranks costs seconds).
Inputs are small integers, so every result is exact whatever the reduction
order, and equality with Gloo is required bit for bit. Where Gloo has no
implementation (AVG, PREMUL_SUM, some dtypes) the reference is the closed form
computed from Gloo-gathered inputs.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from harness import run_world

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.int16, torch.int32,
          torch.int64, torch.uint8, torch.bool, torch.complex64]
R = dist.ReduceOp


def make_input(rank: int, numel: int, dtype: torch.dtype, salt: int = 0, small: bool = False) -> torch.Tensor:
    """Deterministic small integers (exact in every dtype), different per rank."""
    g = torch.Generator().manual_seed(1000 * rank + 17 * numel + salt)
    hi = 3 if small else 10
    if dtype == torch.bool:
        return torch.randint(0, 2, (numel,), generator=g).bool()
    if dtype.is_complex:
        return torch.complex(torch.randint(1, hi, (numel,), generator=g).float(),
                             torch.randint(1, hi, (numel,), generator=g).float()).to(dtype)
    lo = 1 if small or dtype == torch.uint8 else -hi
    return torch.randint(lo, hi, (numel,), generator=g).to(dtype)


def ops_for(dtype: torch.dtype) -> list:
    if dtype == torch.bool:
        return [R.SUM, R.PRODUCT, R.MIN, R.MAX, R.BAND, R.BOR, R.BXOR]
    if dtype.is_complex:
        return [R.SUM, R.AVG, "premul"]
    if dtype.is_floating_point:
        return [R.SUM, R.AVG, R.PRODUCT, R.MIN, R.MAX, "premul"]
    return [R.SUM, R.AVG, R.PRODUCT, R.MIN, R.MAX, R.BAND, R.BOR, R.BXOR]


def local_reduce(stack: torch.Tensor, op, world: int) -> torch.Tensor:
    """Closed-form reduction of gathered inputs (rows = ranks), in rank order."""
    combine = {
        R.SUM: lambda a, b: a | b if a.dtype == torch.bool else a + b,
        R.PRODUCT: lambda a, b: a & b if a.dtype == torch.bool else a * b,
        R.MIN: torch.minimum,
        R.MAX: torch.maximum,
        R.BAND: torch.bitwise_and,
        R.BOR: torch.bitwise_or,
        R.BXOR: torch.bitwise_xor,
    }[R.SUM if op in ("premul", R.AVG) else op]
    acc = stack[0].clone()
    for row in stack[1:]:
        acc = combine(acc, row)
    if op == "premul":
        return acc * 0.5
    if op == R.AVG:
        if acc.dtype.is_complex:  # AVG divides real and imaginary parts (complex division rounds differently)
            return torch.view_as_complex(torch.view_as_real(acc) / world)
        if acc.dtype.is_floating_point:
            return acc / world
        return torch.div(acc, world, rounding_mode="trunc").to(acc.dtype)
    return acc.to(stack.dtype)


def reduce_op(op):
    return dist._make_nccl_premul_sum(0.5) if op == "premul" else op


class Checker:
    def __init__(self, rank: int, world: int, gloo) -> None:
        self.rank, self.world, self.gloo = rank, world, gloo
        self.failures: list[str] = []
        self.cases = 0
        self.gloo_cases = 0
        self.gloo_unsupported: set = set()

    def expect_equal(self, what: str, got: torch.Tensor, want: torch.Tensor) -> None:
        self.cases += 1
        if got.dtype != want.dtype or got.shape != want.shape or not torch.equal(got, want):
            diff = ""
            if got.shape == want.shape and got.numel():
                bad = (got != want).nonzero()
                diff = f" first bad index {bad[0].tolist() if len(bad) else '?'}: got {got[tuple(bad[0])] if len(bad) else '?'} want {want[tuple(bad[0])] if len(bad) else '?'}"
            self.failures.append(f"rank {self.rank}: {what}: got {got.dtype}{tuple(got.shape)} want "
                                 f"{want.dtype}{tuple(want.shape)}{diff}")

    def gathered(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's version of t, via Gloo."""
        raw = t.contiguous().reshape(-1).view(torch.uint8)  # as bytes: Gloo lacks some dtypes
        parts = [torch.empty_like(raw) for _ in range(self.world)]
        dist.all_gather(parts, raw, group=self.gloo)
        return torch.stack([p.view(t.dtype).view(t.shape) for p in parts])

    def gloo_all_reduce(self, t: torch.Tensor, op) -> torch.Tensor:
        """Gloo's all_reduce where Gloo implements (dtype, op); else the closed form."""
        if op not in (R.AVG, "premul") and not t.dtype.is_complex and (t.dtype, op) not in self.gloo_unsupported:
            ref = t.clone()
            try:
                dist.all_reduce(ref, op=op, group=self.gloo)
                self.gloo_cases += 1
                return ref
            except RuntimeError:  # e.g. "Invalid scalar type": Gloo lacks this dtype
                self.gloo_unsupported.add((t.dtype, op))
        return local_reduce(self.gathered(t), op, self.world)


def check_all_reduce(c: Checker, sizes: list[int], dtypes: list) -> None:
    for dtype in dtypes:
        for op in ops_for(dtype):
            for n in sizes:
                x = make_input(c.rank, n, dtype, small=(op == R.PRODUCT))
                want = c.gloo_all_reduce(x, op)
                got = x.clone()
                dist.all_reduce(got, op=reduce_op(op))
                c.expect_equal(f"all_reduce {dtype} {op} n={n}", got, want)


def check_data_movement(c: Checker, sizes: list[int], dtypes: list) -> None:
    rank, world = c.rank, c.world
    for dtype in dtypes:
        for n in sizes:
            x = make_input(rank, n, dtype, salt=1)
            gx = c.gathered(x)  # every rank joins every Gloo call: never inside `if rank == root`
            for root in range(world):
                got = x.clone()
                dist.broadcast(got, src=root)
                c.expect_equal(f"broadcast {dtype} n={n} root={root}", got, gx[root])
            # all_gather (list) and all_gather_into_tensor
            outs = [torch.full((n,), 7).to(dtype) for _ in range(world)]
            dist.all_gather(outs, x)
            c.expect_equal(f"all_gather {dtype} n={n}", torch.stack(outs), gx)
            flat = torch.empty(world * n, dtype=dtype)
            dist.all_gather_into_tensor(flat, x)
            c.expect_equal(f"all_gather_into_tensor {dtype} n={n}", flat, gx.reshape(-1))
            # gather / scatter to every root
            for root in range(world):
                glist = [torch.empty(n, dtype=dtype) for _ in range(world)] if rank == root else None
                dist.gather(x, gather_list=glist, dst=root)
                if rank == root:
                    c.expect_equal(f"gather {dtype} n={n} root={root}", torch.stack(glist), gx)
                src_list = [make_input(r, n, dtype, salt=50 + root) for r in range(world)] if rank == root else None
                out = torch.empty(n, dtype=dtype)
                dist.scatter(out, scatter_list=src_list, src=root)
                c.expect_equal(f"scatter {dtype} n={n} root={root}", out, make_input(rank, n, dtype, salt=50 + root))
            # all_to_all_single with equal and uneven splits, all_to_all with lists
            inp = torch.cat([make_input(rank * 10 + p, n, dtype, salt=2) for p in range(world)])
            out = torch.empty_like(inp)
            dist.all_to_all_single(out, inp)
            want = torch.cat([make_input(p * 10 + rank, n, dtype, salt=2) for p in range(world)])
            c.expect_equal(f"all_to_all_single {dtype} n={n}", out, want)
            in_splits = [(rank + p) % 3 for p in range(world)]
            out_splits = [(p + rank) % 3 for p in range(world)]
            inp = torch.cat([make_input(rank * 10 + p, in_splits[p] * 2, dtype, salt=3) for p in range(world)])
            out = torch.empty(sum(out_splits) * 2, dtype=dtype)
            dist.all_to_all_single(out.view(-1, 2), inp.view(-1, 2), out_splits, in_splits)
            want = torch.cat([make_input(p * 10 + rank, out_splits[p] * 2, dtype, salt=3) for p in range(world)])
            c.expect_equal(f"all_to_all_single uneven {dtype}", out, want)
            ins = [make_input(rank * 10 + p, n + p, dtype, salt=4) for p in range(world)]
            outs = [torch.empty(n + rank, dtype=dtype) for _ in range(world)]
            dist.all_to_all(outs, ins)
            for p in range(world):
                c.expect_equal(f"all_to_all {dtype} n={n} from {p}", outs[p], make_input(p * 10 + rank, n + rank, dtype, salt=4))


def check_reduce_family(c: Checker, sizes: list[int], dtypes: list) -> None:
    rank, world = c.rank, c.world
    for dtype in dtypes:
        for op in ops_for(dtype):
            for n in sizes:
                x = make_input(rank, n, dtype, small=(op == R.PRODUCT), salt=5)
                want = c.gloo_all_reduce(x, op)
                for root in range(world):
                    got = x.clone()
                    dist.reduce(got, dst=root, op=reduce_op(op))
                    c.expect_equal(f"reduce {dtype} {op} n={n} root={root}", got, want if rank == root else x)
                # reduce_scatter_tensor: block r of everyone's input reduced on rank r
                big = torch.cat([make_input(rank * 7 + k, n, dtype, small=(op == R.PRODUCT), salt=6)
                                 for k in range(world)])
                out = torch.empty(n, dtype=dtype)
                dist.reduce_scatter_tensor(out, big, op=reduce_op(op))
                c.expect_equal(f"reduce_scatter_tensor {dtype} {op} n={n}", out,
                               c.gloo_all_reduce(big, op)[rank * n:(rank + 1) * n])
                out2 = torch.empty(n, dtype=dtype)
                dist.reduce_scatter(out2, list(big.chunk(world)) if n else [big[:0]] * world, op=reduce_op(op))
                c.expect_equal(f"reduce_scatter {dtype} {op} n={n}", out2, out)


def check_misc(c: Checker) -> None:
    rank, world = c.rank, c.world
    # Non-contiguous tensors: a transposed view, in place.
    base = make_input(rank, 12, torch.float32).view(3, 4)
    t = base.t()
    want = c.gloo_all_reduce(t.contiguous(), R.SUM)
    dist.all_reduce(t)
    c.expect_equal("all_reduce non-contiguous", t.contiguous(), want)
    c.expect_equal("all_reduce non-contiguous wrote through the view", base.t().contiguous(), want)
    strided = make_input(rank, 20, torch.float32)[::2]
    gs = c.gathered(strided.contiguous())
    for root in range(world):
        s = strided.clone()[::1] if rank == root else torch.zeros(20)[::2]
        dist.broadcast(s, src=root)
        c.expect_equal("broadcast strided", s, gs[root])
    # Coalesced all_reduce of several tensors.
    ts = [make_input(rank, n, torch.float32, salt=9) for n in (3, 0, 5)]
    wants = [c.gloo_all_reduce(x, R.SUM) for x in ts]
    dist.all_reduce_coalesced(ts)
    for i, (g, w) in enumerate(zip(ts, wants)):
        c.expect_equal(f"all_reduce_coalesced[{i}]", g, w)
    # PREMUL_SUM with a different factor on every rank (torch's semantics: each
    # rank scales its own input before the sum), for all_reduce, reduce and reduce_scatter.
    x = make_input(rank, 10 * world, torch.float32, salt=13)
    gx = c.gathered(x)
    want = sum(gx[r] * (r + 1) for r in range(world))
    got = x.clone()
    dist.all_reduce(got, op=dist._make_nccl_premul_sum(float(rank + 1)))
    c.expect_equal("all_reduce premul per-rank factor", got, want)
    got = x.clone()
    dist.reduce(got, dst=0, op=dist._make_nccl_premul_sum(float(rank + 1)))
    c.expect_equal("reduce premul per-rank factor", got, want if rank == 0 else x)
    out = torch.empty(10, dtype=torch.float32)
    dist.reduce_scatter_tensor(out, x, op=dist._make_nccl_premul_sum(float(rank + 1)))
    c.expect_equal("reduce_scatter premul per-rank factor", out, want[rank * 10:(rank + 1) * 10])
    # Multi-dimensional shapes and scalars.
    m = make_input(rank, 24, torch.int64).view(2, 3, 4)
    w = c.gloo_all_reduce(m, R.MAX)
    dist.all_reduce(m, op=R.MAX)
    c.expect_equal("all_reduce 3-d", m, w)
    s = torch.tensor(float(rank + 1))
    dist.all_reduce(s)
    c.expect_equal("all_reduce scalar", s, torch.tensor(float(world * (world + 1) // 2)))
    # Objects (pickled bytes through all_gather / broadcast).
    objs = [None] * world
    dist.all_gather_object(objs, {"rank": rank, "payload": list(range(rank))})
    c.expect_equal("all_gather_object", torch.tensor([o["rank"] for o in objs]), torch.arange(world))
    lst = [f"from {rank}"]
    dist.broadcast_object_list(lst, src=world - 1)
    c.cases += 1
    if lst != [f"from {world - 1}"]:
        c.failures.append(f"broadcast_object_list: {lst}")
    # Point to point: a ring of send/recv, isend/irecv, batch_isend_irecv, recv from any source.
    if world > 1:
        right, left = (rank + 1) % world, (rank - 1) % world
        for dtype in (torch.float32, torch.int8, torch.bfloat16):
            out = make_input(rank, 33, dtype, salt=11)
            inc = torch.empty(33, dtype=dtype)
            reqs = [dist.isend(out, right, tag=3), dist.irecv(inc, left, tag=3)]
            for r_ in reqs:
                r_.wait()
            c.expect_equal(f"isend/irecv ring {dtype}", inc, make_input(left, 33, dtype, salt=11))
        ops = [dist.P2POp(dist.isend, make_input(rank, 5, torch.float64, salt=12), right),
               dist.P2POp(dist.irecv, torch.empty(5, dtype=torch.float64), left)]
        for req in dist.batch_isend_irecv(ops):
            req.wait()
        c.expect_equal("batch_isend_irecv", ops[1].tensor, make_input(left, 5, torch.float64, salt=12))
        # The futures of p2p works: taken before completion (the callback runs, with the data), and
        # taken only after wait() (a receive done on the reader thread marks its future then).
        seen = []
        inc = torch.empty(7)
        early = dist.irecv(inc, left, tag=20).get_future().then(lambda f: seen.append(f.value()[0].clone()))
        dist.isend(make_input(rank, 7, torch.float32, salt=13), right, tag=20).wait()
        early.wait()
        c.expect_equal("irecv future taken early", seen[0] if seen else torch.empty(0),
                       make_input(left, 7, torch.float32, salt=13))
        inc = torch.empty(9)
        late = dist.irecv(inc, left, tag=21)
        sent = dist.isend(make_input(rank, 9, torch.float32, salt=14), right, tag=21)
        late.wait()
        sent.wait()
        c.expect_equal("irecv future taken late", late.get_future().wait()[0], make_input(left, 9, torch.float32, salt=14))
        c.expect_equal("isend future", sent.get_future().wait()[0], make_input(rank, 9, torch.float32, salt=14))
        # Two messages with different tags arrive in either order.
        if rank == 0:
            a, b = torch.empty(4), torch.empty(4)
            wb = dist.irecv(b, 1, tag=8)
            wa = dist.irecv(a, 1, tag=7)
            wa.wait()
            wb.wait()
            c.expect_equal("recv by tag (7)", a, torch.full((4,), 7.0))
            c.expect_equal("recv by tag (8)", b, torch.full((4,), 8.0))
            senders = set()
            for _ in range(world - 1):
                buf = torch.empty(2)
                src = dist.recv(buf)  # any source
                senders.add(src)
                c.expect_equal(f"recv any source from {src}", buf, torch.full((2,), float(src)))
            c.cases += 1
            if senders != set(range(1, world)):
                c.failures.append(f"recv any source saw {senders}")
        else:
            if rank == 1:
                dist.send(torch.full((4,), 7.0), 0, tag=7)
                dist.send(torch.full((4,), 8.0), 0, tag=8)
            dist.send(torch.full((2,), float(rank)), 0)
    # Subgroups: evens and odds, and a group of one.
    evens = dist.new_group([r for r in range(world) if r % 2 == 0], backend="agentcomm")
    odds = dist.new_group([r for r in range(world) if r % 2 == 1], backend="agentcomm") if world > 1 else None
    mine = evens if rank % 2 == 0 else odds
    t = torch.tensor([float(rank)])
    dist.all_reduce(t, group=mine)
    members = [r for r in range(world) if r % 2 == rank % 2]
    c.expect_equal("subgroup all_reduce", t, torch.tensor([float(sum(members))]))
    dist.barrier(group=mine)
    dist.barrier()
    c.cases += 1
    if dist.get_backend() != "agentcomm":
        c.failures.append(f"get_backend() = {dist.get_backend()}")


def collective_matrix(rank: int, world: int, full: bool) -> tuple:
    dist.init_process_group("agentcomm", timeout=timedelta(seconds=120))
    gloo = dist.new_group(backend="gloo", timeout=timedelta(seconds=120))
    c = Checker(rank, world, gloo)
    small = [0, 1, 7, 1000]
    check_all_reduce(c, small, DTYPES if full else [torch.float32, torch.int32, torch.bfloat16])
    check_data_movement(c, [0, 1, 7, 1000], DTYPES if full else [torch.float32, torch.uint8])
    check_reduce_family(c, [0, 1, 7, 1000] if full else [5], DTYPES if full else [torch.float32, torch.int64])
    # A few MiB, not divisible by the world size: the chunked, pipelined paths.
    big = [1_000_003]
    check_all_reduce(c, big, [torch.float32, torch.bfloat16, torch.int64])
    check_data_movement(c, [300_001], [torch.float32])
    check_misc(c)
    dist.barrier()
    return c.cases, c.failures


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_matrix_against_gloo(world: int) -> None:
    results = run_world(collective_matrix, world, True, timeout=900)
    failures = [f for _, fs in results for f in fs]
    assert results[0][0] > 500, f"only {results[0][0]} cases ran"
    assert not failures, "\n".join(failures[:50])


def test_matrix_world_8_subset() -> None:
    results = run_world(collective_matrix, 8, False, timeout=900)
    failures = [f for _, fs in results for f in fs]
    assert not failures, "\n".join(failures[:50])


def test_matrix_over_a_full_tcp_mesh() -> None:
    """Every collective and send/recv over a TCP full mesh made at setup (AGENTCOMM_EAGER_CONNECT=1;
    the default connects other hosts on demand), shared memory off so every byte crosses a
    socket, odd world, against Gloo."""
    env = {"AGENTCOMM_SHM": "0", "AGENTCOMM_EAGER_CONNECT": "1"}
    results = run_world(collective_matrix, 5, False, timeout=900, env=env)
    failures = [f for _, fs in results for f in fs]
    assert results[0][0] > 100, f"only {results[0][0]} cases ran"
    assert not failures, "\n".join(failures[:50])
