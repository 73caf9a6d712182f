"""agentcomm under the launchers and debug modes users run it with."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from harness import ROOT, free_port, run_world


def test_torchrun_four_processes() -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=4", f"--master-port={free_port()}",
         os.path.join(ROOT, "examples", "ddp_demo.py"), "--backend", "both", "--steps", "8"],
        capture_output=True, text=True, timeout=300, env=env, cwd="/tmp")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "losses agree with Gloo step by step: True" in proc.stdout, proc.stdout


def detail_mode(rank: int, world: int) -> list:
    # TORCH_DISTRIBUTED_DEBUG=DETAIL wraps the backend in ProcessGroupWrapper, which
    # checks every collective's fingerprint through a Gloo helper group.
    dist.init_process_group("agentcomm", timeout=timedelta(seconds=60))
    t = torch.full((5,), float(rank))
    dist.all_reduce(t)
    out = [torch.empty(2) for _ in range(world)]
    dist.all_gather(out, torch.full((2,), float(rank)))
    dist.barrier()
    backend = dist.distributed_c10d._get_default_group()._get_backend(torch.device("cpu"))
    seq = backend._get_sequence_number_for_group()
    problems = []
    if not torch.equal(t, torch.full((5,), float(sum(range(world))))):
        problems.append(f"all_reduce gave {t}")
    if seq < 3:
        problems.append(f"sequence number {seq}")
    # The wrapper turns mismatched shapes into its own clear error before we run.
    try:
        dist.all_reduce(torch.ones(3 + rank))
        problems.append("mismatched shapes did not raise")
    except RuntimeError as e:
        if "mismatch" not in str(e).lower() and "detected" not in str(e).lower():
            problems.append(f"unclear mismatch error: {e}")
    return problems


def test_torch_distributed_debug_detail() -> None:
    results = run_world(detail_mode, 2, env={"TORCH_DISTRIBUTED_DEBUG": "DETAIL"}, timeout=180)
    assert results == [[], []], results


def init_methods(rank: int, world: int, method: str) -> float:
    kwargs = {}
    if method == "file":
        kwargs["init_method"] = f"file:///tmp/agentcomm_filestore_{os.environ['MASTER_PORT']}"
    elif method == "tcp":
        kwargs["init_method"] = f"tcp://127.0.0.1:{os.environ['MASTER_PORT']}"
    dist.init_process_group("agentcomm", rank=rank, world_size=world, timeout=timedelta(seconds=60), **kwargs)
    t = torch.tensor([1.0])
    dist.all_reduce(t)
    dist.barrier()
    return float(t)


def test_init_methods() -> None:
    for method in ("env", "tcp", "file"):
        assert run_world(init_methods, 3, method, timeout=120) == [3.0, 3.0, 3.0], method


def socket_ifname(rank: int, world: int) -> float:
    dist.init_process_group("agentcomm", timeout=timedelta(seconds=60))
    t = torch.tensor([float(rank)])
    dist.all_reduce(t)
    return float(t)


def test_socket_ifname_selects_interface() -> None:
    assert run_world(socket_ifname, 2, env={"AGENTCOMM_SOCKET_IFNAME": "lo"}, timeout=120) == [1.0, 1.0]
    try:
        run_world(socket_ifname, 2, env={"AGENTCOMM_SOCKET_IFNAME": "no_such_if0"}, timeout=120)
    except AssertionError as e:
        assert "names no up interface" in str(e), str(e)[-2000:]
    else:
        raise AssertionError("a missing interface did not raise")


def test_agentcomm_debug_trace_logs_setup_and_ops() -> None:
    script = (
        "import torch, torch.distributed as dist, agentcomm\n"
        f"dist.init_process_group('agentcomm', init_method='tcp://127.0.0.1:{free_port()}', rank=0, world_size=1)\n"
        "t = torch.ones(3); dist.all_reduce(t); dist.destroy_process_group()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd="/tmp",
                          env=dict(os.environ, AGENTCOMM_DEBUG="TRACE"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "agentcomm 0.1.0: group" in proc.stderr, proc.stderr[-2000:]
    assert "ALLREDUCE done" in proc.stderr, proc.stderr[-2000:]
    assert "[agentcomm pid" in proc.stderr and "rank 0]" in proc.stderr
    quiet = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd="/tmp")
    assert "agentcomm" not in quiet.stderr, quiet.stderr[-2000:]  # WARN (default) says nothing when all is well


ELASTIC_WORKER = '''
import os, sys, time
from datetime import timedelta
import torch, torch.distributed as dist
import agentcomm
attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
rank = int(os.environ["RANK"])
if attempt == 1 and rank == 0:
    time.sleep(2.0)  # the others read the store first: the previous attempt's keys are still there
dist.init_process_group("agentcomm", timeout=timedelta(seconds=30))
t = torch.zeros(4)
for step in range(10):
    t += 1
    dist.all_reduce(t)
    if attempt == 0 and rank == 1 and step == 5:
        os._exit(3)  # a worker dies mid-training: torchrun restarts every worker
print(f"attempt {attempt} rank {rank} result {t[0].item():.0f}", flush=True)
dist.destroy_process_group()
'''


def test_torchrun_restart_builds_a_fresh_group(tmp_path) -> None:
    # torchrun keeps its store across restarts: a restarted worker must not read what the
    # previous attempt published (it dialed a dead port, or waited for a hello forever).
    script = tmp_path / "worker.py"
    script.write_text(ELASTIC_WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--max-restarts=1",
         "--rdzv-backend=static", f"--master-port={free_port()}", str(script)],
        capture_output=True, text=True, timeout=240, env=env, cwd="/tmp")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # t starts at 0; each step adds 1 on both ranks and sums: t = 2t + 2, ten times.
    want = 0
    for _ in range(10):
        want = 2 * (want + 1)
    for rank in (0, 1):
        assert f"attempt 1 rank {rank} result {want}" in proc.stdout, proc.stdout[-3000:]
