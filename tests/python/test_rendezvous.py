"""gather / scatter / all_to_all / send-recv by rendezvous: large payloads read from the holder's memory.

Ranks of one host move pieces of at least AGENTCOMM_RENDEZVOUS_BYTES (default
1 MiB) by sending only their address and letting the other rank read them
(process_vm_readv); smaller pieces stay eager TCP messages. The world here sets
the threshold to 4000 bytes so that small tensors cross it both ways: pieces of
1000 float32 go eagerly, 1001 by rendezvous, and one call mixes both when the
counts differ per rank. Results are checked against closed forms; counts that
disagree across the threshold (or on both sides of it) are a mismatch error on
every rank, not a hang. One more world uses the default threshold with 8 MB
pieces (the huge-page path of the holder's buffer).

send/recv: a large send offers its address; the receiver pulls the payload as
soon as the offer arrives, into the posted receive or a parked copy, so a send
completes without the receiver's program posting anything: blocking sends
before receives (both ranks, or before a barrier) must not deadlock, and the
sender may reuse its tensor once the send completed.
"""

from __future__ import annotations

import time
from datetime import timedelta

import torch
import torch.distributed as dist

from harness import run_world
from test_collectives import make_input
from test_errors import expect_raise

THRESHOLD = 4000  # bytes: 1000 float32 elements go eagerly, 1001 by rendezvous


class Tally:
    """Counts checks and keeps the failed ones (a rank reports them all at once)."""

    def __init__(self, rank: int) -> None:
        self.rank, self.cases, self.failures = rank, 0, []

    def __call__(self, what: str, got: torch.Tensor, want: torch.Tensor) -> None:
        self.cases += 1
        if not torch.equal(got, want):
            self.failures.append(f"rank {self.rank}: {what}")


def _cases(rank: int, world: int) -> dict:
    dist.init_process_group("agentcomm", timeout=timedelta(seconds=60))
    check = Tally(rank)

    # Equal counts, every root, sizes on both sides of the threshold, a few dtypes.
    for dtype in (torch.float32, torch.int8, torch.float64):
        for n in (0, 1, 999, 1000, 1001, 4001, 70_000):
            for root in range(world):
                x = make_input(rank, n, dtype, salt=root)
                glist = [torch.full((n,), -1, dtype=dtype) for _ in range(world)] if rank == root else None
                dist.gather(x, gather_list=glist, dst=root)
                if rank == root:
                    for j in range(world):
                        check(f"gather {dtype} n={n} root={root} from {j}", glist[j], make_input(j, n, dtype, salt=root))
                slist = [make_input(j, n, dtype, salt=100 + root) for j in range(world)] if rank == root else None
                out = torch.full((n,), -1, dtype=dtype)
                dist.scatter(out, scatter_list=slist, src=root)
                check(f"scatter {dtype} n={n} root={root}", out, make_input(rank, n, dtype, salt=100 + root))

    # Counts that differ per rank (agentcomm takes uneven gather/scatter): one
    # call mixes eager and rendezvous pieces.
    sizes = [300 + 2000 * (j % 2) + 17 * j for j in range(world)]  # 300 eager, 2317 rendezvous, ...
    for root in range(world):
        x = make_input(rank, sizes[rank], torch.float32, salt=7)
        glist = [torch.zeros(sizes[j]) for j in range(world)] if rank == root else None
        dist.gather(x, gather_list=glist, dst=root)
        if rank == root:
            for j in range(world):
                check(f"uneven gather root={root} from {j}", glist[j], make_input(j, sizes[j], torch.float32, salt=7))
        slist = [make_input(j, sizes[j], torch.float32, salt=8) for j in range(world)] if rank == root else None
        out = torch.zeros(sizes[rank])
        dist.scatter(out, scatter_list=slist, src=root)
        check(f"uneven scatter root={root}", out, make_input(rank, sizes[rank], torch.float32, salt=8))
    # all_to_all over TCP (forced for this world): blocks on both sides of the threshold, uneven.
    for n in (0, 7, 1001, 3000):
        ins = [make_input(rank, n + 500 * j * (rank + 1) % 3000, torch.float32, salt=60 + j) for j in range(world)]
        outs = [torch.full((n + 500 * rank * (j + 1) % 3000,), -1.0) for j in range(world)]
        dist.all_to_all(outs, ins)
        for j in range(world):
            check(f"all_to_all n={n} from {j}", outs[j],
                  make_input(j, n + 500 * rank * (j + 1) % 3000, torch.float32, salt=60 + rank))
    # A non-contiguous output and an input that is a view into the root's list.
    base = torch.zeros(2 * 3000)
    out = base[::2]
    slist = [torch.arange(3000, dtype=torch.float32) + j for j in range(world)] if rank == 0 else None
    dist.scatter(out, scatter_list=slist, src=0)
    check("scatter into a strided output", out, torch.arange(3000, dtype=torch.float32) + rank)
    check("scatter leaves the gaps alone", base[1::2], torch.zeros(3000))

    # Disagreeing counts: every rank raises a mismatch, promptly.
    problems = []
    for what, root_sends, rank1_expects in [
        ("rendezvous offered, eager expected", 2000, 500),
        ("eager sent, rendezvous expected", 500, 2000),
        ("rendezvous both, different sizes", 3000, 2000),
    ]:
        g = dist.new_group(backend="agentcomm", timeout=timedelta(seconds=20))
        counts = [root_sends if j == 1 else 10 for j in range(world)]
        slist = [torch.ones(c) for c in counts] if rank == 0 else None
        out = torch.zeros(rank1_expects if rank == 1 else 10)
        start = time.monotonic()
        # The rank that finds the mismatch raises in the call; a rank whose part
        # succeeded (an eager sender, a bystander) raises in its next collective.
        msg = expect_raise(lambda: (dist.scatter(out, scatter_list=slist, src=0, group=g), dist.barrier(group=g)),
                           "mismatch")
        if msg or time.monotonic() - start > 10:
            problems.append(f"scatter, {what}: {msg or 'slow'} ({time.monotonic() - start:.1f}s)")
        g = dist.new_group(backend="agentcomm", timeout=timedelta(seconds=20))
        x = torch.ones(rank1_expects if rank == 1 else 10)
        glist = [torch.zeros(c) for c in counts] if rank == 0 else None
        start = time.monotonic()
        msg = expect_raise(lambda: (dist.gather(x, gather_list=glist, dst=0, group=g), dist.barrier(group=g)),
                           "mismatch")
        if msg or time.monotonic() - start > 10:
            problems.append(f"gather, {what}: {msg or 'slow'} ({time.monotonic() - start:.1f}s)")
    dist.barrier()
    return {"cases": check.cases, "failures": check.failures, "problems": problems}


def _p2p(rank: int, world: int) -> dict:
    dist.init_process_group("agentcomm", timeout=timedelta(seconds=60))
    check = Tally(rank)

    right, left = (rank + 1) % world, (rank - 1) % world
    # A ring of isend/irecv, both sides of the threshold, a few dtypes.
    for dtype in (torch.float32, torch.bfloat16, torch.int8):
        for n in (0, 1, 1000, 1001, 5000, 300_001):
            x = make_input(rank, n, dtype, salt=30)
            y = torch.full((n,), -1, dtype=dtype)
            for w in [dist.irecv(y, left, tag=n % 1000), dist.isend(x, right, tag=n % 1000)]:
                w.wait()
            check(f"ring {dtype} n={n}", y, make_input(left, n, dtype, salt=30))
    big = 50_000  # 200 KB: by rendezvous here
    # Blocking sends before anyone receives: every rank sends right, then receives from the left.
    x = make_input(rank, big, torch.float32, salt=31)
    dist.send(x, right, tag=1)
    y = torch.empty(big)
    dist.recv(y, left, tag=1)
    check("blocking send before recv, all ranks", y, make_input(left, big, torch.float32, salt=31))
    # A send completed before the receiver posted (it is past a barrier): the sender reuses its tensor.
    if rank == 0:
        x = make_input(0, big, torch.float32, salt=32)
        dist.send(x, 1, tag=2)
        x.fill_(-7)
    dist.barrier()
    if rank == 1:
        y = torch.empty(big)
        dist.recv(y, 0, tag=2)
        check("recv after the send completed", y, make_input(0, big, torch.float32, salt=32))
    # Any source, into a strided destination, several in flight with two tags.
    if rank == 0:
        got = {}
        for _ in range(2 * (world - 1)):
            base = torch.zeros(2 * big)
            src = dist.recv(base[::2], tag=3)
            got.setdefault(src, []).append(base)
        for src, bases in got.items():
            for i, base in enumerate(bases):
                check(f"any source from {src} #{i}", base[::2], make_input(src, big, torch.float32, salt=33 + i))
                check(f"any source gaps {src} #{i}", base[1::2], torch.zeros(big))
    else:
        works = [dist.isend(make_input(rank, big, torch.float32, salt=33 + i), 0, tag=3) for i in range(2)]
        for w in works:
            w.wait()
    # Sizes that disagree (both by rendezvous). The receive was posted first: it names the
    # mismatch and the send is refused. The send came first: it was taken (parked, as an
    # eager message would be) and only the receive fails.
    problems = []
    g = dist.new_group(backend="agentcomm", timeout=timedelta(seconds=20))
    start = time.monotonic()
    if rank == 1:
        w = dist.irecv(torch.ones(1500), 0, group=g, tag=4)
    dist.barrier()
    if rank == 0:
        msg = expect_raise(lambda: dist.send(torch.ones(2000), 1, group=g, tag=4), "refused")
    elif rank == 1:
        msg = expect_raise(w.wait, "mismatch")
    else:
        msg = ""
    if msg or time.monotonic() - start > 10:
        problems.append(f"p2p size mismatch, receive first: {msg or 'slow'}")
    if rank == 0:
        dist.send(torch.ones(3000), 1, group=g, tag=5)
    dist.barrier()
    if rank == 1:
        msg = expect_raise(lambda: dist.recv(torch.ones(2500), 0, group=g, tag=5), "mismatch")
        if msg:
            problems.append(f"p2p size mismatch, send first: {msg}")
    dist.barrier()
    return {"cases": check.cases, "failures": check.failures, "problems": problems}


def _p2p_shuffle(rank: int, world: int) -> list[str]:
    """Many messages per pair, eager and offered, two tags, receives posted before and after
    the sends in a shuffled order: each (source, tag) stream must arrive in order."""
    import random

    dist.init_process_group("agentcomm", timeout=timedelta(seconds=60))
    plan = random.Random(7)  # the same plan on every rank
    sizes = [0, 10, 999, 1001, 5000, 70_000]
    msgs = {(s, d): [(plan.choice((0, 1)), plan.choice(sizes)) for _ in range(12)]
            for s in range(world) for d in range(world) if s != d}

    def payload(src: int, dst: int, i: int, n: int) -> torch.Tensor:
        return torch.arange(n, dtype=torch.float32) + 1000 * i + 100_000 * src + 10 * dst

    incoming = [(src, i, tag, n) for (src, dst), lst in msgs.items() if dst == rank for i, (tag, n) in enumerate(lst)]
    # Each (source, tag) stream: a random head posted before the sends, the tail after.
    order = random.Random(rank)
    early, late = [], []
    for key in sorted({(m[0], m[2]) for m in incoming}):
        stream = sorted((m for m in incoming if (m[0], m[2]) == key), key=lambda m: m[1])
        cut = order.randint(0, len(stream))
        early += stream[:cut]
        late += stream[cut:]
    bufs, works = {}, []

    def post(batch) -> None:
        # Per (source, tag) the receives must be posted in message order.
        for src, i, tag, n in sorted(batch, key=lambda m: (m[0], m[2], m[1])):
            bufs[(src, i)] = torch.full((n,), -1.0)
            works.append(dist.irecv(bufs[(src, i)], src, tag=tag))

    post(early)
    sends = [dist.isend(payload(rank, dst, i, n), dst, tag=tag)
             for (src, dst), lst in msgs.items() if src == rank for i, (tag, n) in enumerate(lst)]
    post(late)
    for w in works + sends:
        w.wait()
    bad = [f"rank {rank}: message {i} from {src} (tag {tag}, {n})" for src, i, tag, n in incoming
           if not torch.equal(bufs[(src, i)], payload(src, rank, i, n))]
    dist.barrier()
    return bad


def test_send_recv_streams_keep_their_order() -> None:
    for bad in run_world(_p2p_shuffle, 3, timeout=300, env={"AGENTCOMM_RENDEZVOUS_BYTES": str(THRESHOLD)}):
        assert not bad, "\n".join(bad[:20])


def test_send_recv_eager_and_rendezvous() -> None:
    results = run_world(_p2p, 3, timeout=300, env={"AGENTCOMM_RENDEZVOUS_BYTES": str(THRESHOLD)})
    for r in results:
        assert r["cases"] >= 18
        assert not r["failures"], "\n".join(r["failures"][:20])
        assert not r["problems"], "\n".join(r["problems"])


def test_gather_scatter_eager_and_rendezvous() -> None:
    env = {"AGENTCOMM_RENDEZVOUS_BYTES": str(THRESHOLD), "AGENTCOMM_ALGO": "all_to_all:tcp"}
    results = run_world(_cases, 3, timeout=300, env=env)
    for r in results:
        assert r["cases"] > 100
        assert not r["failures"], "\n".join(r["failures"][:20])
        assert not r["problems"], "\n".join(r["problems"])


def _large(rank: int, world: int) -> list[str]:
    dist.init_process_group("agentcomm", timeout=timedelta(seconds=120))
    failures = []
    n = 2_000_003  # 8 MB pieces: rendezvous at the default threshold, the holder's buffer on huge pages
    for it in range(2):  # a buffer seen twice is collapsed into huge pages
        slist = [torch.arange(n, dtype=torch.float32) * (j + 1) for j in range(world)] if rank == 0 else None
        out = torch.empty(n)
        dist.scatter(out, scatter_list=slist, src=0)
        if not torch.equal(out, torch.arange(n, dtype=torch.float32) * (rank + 1)):
            failures.append(f"rank {rank} scatter {it}")
        x = torch.arange(n, dtype=torch.float32) - rank
        glist = [torch.empty(n) for _ in range(world)] if rank == world - 1 else None
        dist.gather(x, gather_list=glist, dst=world - 1)
        if rank == world - 1:
            for j in range(world):
                if not torch.equal(glist[j], torch.arange(n, dtype=torch.float32) - j):
                    failures.append(f"gather {it} from {j}")
    dist.barrier()
    return failures


def test_gather_scatter_large_default_threshold() -> None:
    for failures in run_world(_large, 2, timeout=300):
        assert not failures, failures
