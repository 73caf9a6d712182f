"""Two "hosts": ranks in two network namespaces joined by a veth pair.

Exercises the cross-host path of the TCP transport (host ids differ, so peers
connect to the published address instead of loopback), with and without
AGENTCOMM_SOCKET_IFNAME. The namespaces and addresses are created by the test
and removed afterwards; it skips where it may not create them (not root, no
iproute2).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid

import pytest

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


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@pytest.fixture
def two_hosts():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create network namespaces")
    tag = uuid.uuid4().hex[:6]
    ns = [f"acn{tag}a", f"acn{tag}b"]
    dev = [f"acv{tag}a", f"acv{tag}b"]
    addr = ["10.231.77.1", "10.231.77.2"]  # only inside the namespaces this test creates
    try:
        for n in ns:
            run(["ip", "netns", "add", n])
        run(["ip", "link", "add", dev[0], "type", "veth", "peer", "name", dev[1]])
        for n, d, a in zip(ns, dev, addr):
            run(["ip", "link", "set", d, "netns", n])
            run(["ip", "-n", n, "addr", "add", f"{a}/24", "dev", d])
            run(["ip", "-n", n, "link", "set", d, "up"])
            run(["ip", "-n", n, "link", "set", "lo", "up"])
    except (subprocess.CalledProcessError, OSError) as e:
        for n in ns:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
        pytest.skip(f"cannot create network namespaces here: {e}")
    try:
        yield ns, dev, addr
    finally:
        for n in ns:
            subprocess.run(["ip", "netns", "del", n], capture_output=True, timeout=30)


@pytest.mark.parametrize("pin_interface", [False, True])
def test_ranks_on_two_hosts(two_hosts, pin_interface: bool, tmp_path) -> None:
    ns, dev, addr = two_hosts
    script = tmp_path / "rank.py"
    script.write_text(SCRIPT)
    init = f"tcp://{addr[0]}:29655"
    procs = []
    for rank in range(2):
        env = dict(os.environ)
        if pin_interface:
            env["AGENTCOMM_SOCKET_IFNAME"] = dev[rank]
        procs.append(subprocess.Popen(["ip", "netns", "exec", ns[rank], sys.executable, str(script), str(rank), init],
                                      env=env, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outputs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=120)
            outputs.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for rank, (code, out, err) in enumerate(outputs):
        assert code == 0 and f"ok {rank}" in out, f"rank {rank} exit {code}\n{out}\n{err[-3000:]}"


def test_hierarchical_two_hosts_two_ranks_each(two_hosts, tmp_path) -> None:
    ns, dev, addr = two_hosts
    script = tmp_path / "hier.py"
    script.write_text(HIER_SCRIPT)
    init = f"tcp://{addr[0]}:29657"
    procs = [subprocess.Popen(["ip", "netns", "exec", ns[rank // 2], sys.executable, str(script), str(rank), init],
                              cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in range(4)]
    outputs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=180)
            outputs.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for rank, (code, out, err) in enumerate(outputs):
        assert code == 0 and f"ok {rank}" in out, f"rank {rank} exit {code}\n{out}\n{err[-3000:]}"
