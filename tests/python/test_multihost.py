"""Two "hosts": ranks in two network namespaces of an emulated cluster (agentcomm.emulate).

Exercises the cross-host path of the TCP transport (host ids differ, so peers
connect to the published address instead of loopback), with and without
AGENTCOMM_SOCKET_IFNAME. The emulator creates the namespaces and addresses and
removes them afterwards; the tests skip where it may not (not root, no iproute2).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentcomm.emulate import INTERFACE, Cluster, ClusterSpec, host_address
from harness import needs_namespaces

SCRIPT = r"""
import sys, torch, torch.distributed as dist, agentcomm
from datetime import timedelta
rank = int(sys.argv[1])
dist.init_process_group("agentcomm", init_method=sys.argv[2], rank=rank, world_size=2, timeout=timedelta(seconds=60))
t = torch.full((1 << 20,) if len(sys.argv) < 4 else (5,), float(rank + 1))
dist.all_reduce(t)
assert float(t.min()) == float(t.max()) == 3.0, t
b = torch.full((300_001,), float(rank))
dist.broadcast(b, src=1)
assert float(b.min()) == float(b.max()) == 1.0
outs = [torch.empty(3) for _ in range(2)]
dist.all_gather(outs, torch.full((3,), float(rank)))
assert [float(o[0]) for o in outs] == [0.0, 1.0]
dist.barrier()
dist.destroy_process_group()
print("ok", rank)
"""


# Four ranks, two per "host": the hierarchical all-reduce (shared memory inside
# each namespace, the two leaders over the veth pair), against closed forms.
HIER_SCRIPT = r"""
import sys, torch, torch.distributed as dist, agentcomm
from datetime import timedelta
rank = int(sys.argv[1])
dist.init_process_group("agentcomm", init_method=sys.argv[2], rank=rank, world_size=4, timeout=timedelta(seconds=60))
name = dist.group.WORLD._get_backend(torch.device("cpu")).transport
assert name.startswith("hierarchical(shm"), name
for n in (0, 1, 7, 1000, 1 << 20, 3_000_001):
    for op, want in ((dist.ReduceOp.SUM, 10.0), (dist.ReduceOp.AVG, 2.5), (dist.ReduceOp.MAX, 4.0)):
        t = torch.full((n,), float(rank + 1))
        dist.all_reduce(t, op=op)
        assert n == 0 or float(t.min()) == float(t.max()) == want, (n, op, t[:4])
x = torch.arange(1000, dtype=torch.float64) * (rank + 1)
dist.all_reduce(x)
assert torch.equal(x, torch.arange(1000, dtype=torch.float64) * 10)
b = torch.full((300_001,), float(rank))
dist.broadcast(b, src=3)
assert float(b.min()) == float(b.max()) == 3.0
outs = [torch.empty(3) for _ in range(4)]
dist.all_gather(outs, torch.full((3,), float(rank)))
assert [float(o[0]) for o in outs] == [0.0, 1.0, 2.0, 3.0]
# broadcast, all_gather and reduce_scatter run hierarchically too: every root, small and large.
for src in range(4):
    b = torch.full((70_001,), float(src) + 0.5 if rank == src else -1.0)
    dist.broadcast(b, src=src)
    assert float(b.min()) == float(b.max()) == src + 0.5, ("broadcast", src, b[:3])
for n in (3, 250_001):
    out = torch.empty(4 * n)
    dist.all_gather_into_tensor(out, torch.arange(n, dtype=torch.float32) + 1000 * rank)
    assert torch.equal(out, torch.cat([torch.arange(n, dtype=torch.float32) + 1000 * j for j in range(4)])), n
    inp = torch.cat([torch.full((n,), float((r + 1) * (rank + 1))) for r in range(4)])
    for op, want in ((dist.ReduceOp.SUM, 10.0), (dist.ReduceOp.AVG, 2.5), (dist.ReduceOp.MAX, 4.0)):
        o = torch.empty(n)
        dist.reduce_scatter_tensor(o, inp, op=op)
        assert float(o.min()) == float(o.max()) == want * (rank + 1), ("reduce_scatter", n, op, o[:3])
# gather / scatter of 1.2 MB pieces: by rendezvous with the same-host rank, TCP across hosts.
big = 300_000
for root in (0, 3):
    parts = [torch.arange(big, dtype=torch.float32) + 10 * j for j in range(4)] if rank == root else None
    out = torch.empty(big)
    dist.scatter(out, parts, src=root)
    assert torch.equal(out, torch.arange(big, dtype=torch.float32) + 10 * rank), ("scatter", root, rank)
    got = [torch.empty(big) for _ in range(4)] if rank == root else None
    dist.gather(torch.arange(big, dtype=torch.float32) - rank, got, dst=root)
    if rank == root:
        for j in range(4):
            assert torch.equal(got[j], torch.arange(big, dtype=torch.float32) - j), ("gather", root, j)
# all_to_all of 1.2 MB blocks (TCP path in a group over several hosts): rendezvous on this host.
ins = [torch.arange(big, dtype=torch.float32) + 100 * rank + j for j in range(4)]
outs = [torch.empty(big) for _ in range(4)]
dist.all_to_all(outs, ins)
for j in range(4):
    assert torch.equal(outs[j], torch.arange(big, dtype=torch.float32) + 100 * j + rank), ("all_to_all", rank, j)
# send/recv of 1.2 MB: by rendezvous to the rank on this host, over TCP to the other host;
# blocking sends first, then the receives (must not deadlock either way).
for peer in (rank ^ 1, (rank + 2) % 4):
    x = torch.arange(big, dtype=torch.float32) + 10 * rank
    y = torch.empty(big)
    dist.send(x, peer)
    dist.recv(y, peer)
    assert torch.equal(y, torch.arange(big, dtype=torch.float32) + 10 * peer), (rank, peer)
dist.barrier()
dist.destroy_process_group()
print("ok", rank, name)
"""


@pytest.fixture
def two_hosts():
    """Two emulated hosts (agentcomm.emulate): namespaces, a switch, nothing left afterwards."""
    with Cluster(ClusterSpec(hosts=2)) as cluster:
        yield cluster


def run_ranks(cluster: Cluster, script: Path, world: int, port: int, env: dict[int, dict[str, str]] | None = None,
              timeout: float = 180) -> None:
    """Run ``script RANK tcp://host0:port`` once per rank on its host; assert each printed ok."""
    init = f"tcp://{host_address(0)}:{port}"
    procs = [cluster.spawn(cluster.spec.host_of(r), [sys.executable, str(script), str(r), init],
                           env={**os.environ, **(env or {}).get(r, {})}, cwd=str(script.parent),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in range(world)]
    outputs = []
    for p in procs:  # the cluster stops whatever is still running when the fixture ends
        out, err = p.communicate(timeout=timeout)
        outputs.append((p.returncode, out.decode(), err.decode()))
    for rank, (code, out, err) in enumerate(outputs):
        assert code == 0 and f"ok {rank}" in out, f"rank {rank} exit {code}\n{out}\n{err[-3000:]}"


@needs_namespaces
@pytest.mark.parametrize("pin_interface", [False, True])
def test_ranks_on_two_hosts(two_hosts, pin_interface: bool, tmp_path) -> None:
    script = tmp_path / "rank.py"
    script.write_text(SCRIPT)
    env = {r: {"AGENTCOMM_SOCKET_IFNAME": INTERFACE} for r in range(2)} if pin_interface else None
    run_ranks(two_hosts, script, 2, 29655, env, timeout=120)


@needs_namespaces
def test_hierarchical_two_hosts_two_ranks_each(tmp_path) -> None:
    script = tmp_path / "hier.py"
    script.write_text(HIER_SCRIPT)
    with Cluster(ClusterSpec(hosts=2, ranks_per_host=2)) as cluster:
        run_ranks(cluster, script, 4, 29657)
