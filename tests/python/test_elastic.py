"""Elastic restarts: torchrun --max-restarts with workers killed mid-training, resumed from a checkpoint.

Each case runs the same DDP job twice under torchrun: once uninterrupted, once with a worker
killed at step KILL_STEP of attempt 0 (os._exit, SIGKILL or SIGSEGV; static and c10d
rendezvous; 2 and 4 workers; bench/recovery/elastic_vs_gloo.py runs a fourth case beside Gloo). Attempt 1 resumes from
the last checkpoint (every CKPT_EVERY steps, written atomically by rank 0) and must finish
with bit-identical parameters: same data per step, deterministic reductions. Rank 0 of
attempt 1 also waits before joining, so its peers read torchrun's store first (where the
previous attempt's keys still are). Afterwards no worker process and no /dev/shm segment
may be left (conftest checks the segments).
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

from harness import free_port

TOTAL_STEPS = 24
KILL_STEP = 13
CKPT_EVERY = 5

WORKER = r'''
import os, resource, signal, sys, time
from datetime import timedelta
import torch, torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
import agentcomm

TOTAL, KILL, EVERY = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
death, ckpt_dir, backend = sys.argv[4], sys.argv[5], sys.argv[6]
attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
rank = int(os.environ["RANK"])
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the SIGSEGV case must not leave a core file
if attempt > 0 and rank == 0:
    time.sleep(1.5)  # the others read the store first: the previous attempt's keys are still there
dist.init_process_group(backend, timeout=timedelta(seconds=30))
world = dist.get_world_size()
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 8))
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
ddp = DDP(model)
path = os.path.join(ckpt_dir, "ckpt.pt")
start = 0
if os.path.exists(path):
    ck = torch.load(path)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optim"])
    start = ck["step"]
print(f"attempt {attempt} rank {rank} resumes at step {start}", flush=True)
for step in range(start, TOTAL):
    g = torch.Generator().manual_seed(1000 * step + rank)
    x, y = torch.randn(16, 32, generator=g), torch.randn(16, 8, generator=g)
    opt.zero_grad()
    nn.functional.mse_loss(ddp(x), y).backward()
    opt.step()
    if attempt == 0 and rank == world - 1 and step == KILL and death != "none":
        if death == "exit":
            os._exit(3)
        os.kill(os.getpid(), signal.SIGKILL if death == "sigkill" else signal.SIGSEGV)
    if (step + 1) % EVERY == 0:
        dist.barrier()  # every rank finished the step: the checkpoint is consistent
        if rank == 0:
            torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "step": step + 1}, path + ".tmp")
            os.replace(path + ".tmp", path)
if rank == 0:
    torch.save([p.detach() for p in model.parameters()], os.path.join(ckpt_dir, "final.pt"))
print(f"attempt {attempt} rank {rank} finished", flush=True)
dist.destroy_process_group()
'''


def torchrun(tmp_path, name: str, nproc: int, rdzv: str, death: str, backend: str = "agentcomm"):
    """Runs the worker under torchrun; returns (completed process, final parameters or None)."""
    import torch

    work = tmp_path / name
    work.mkdir()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = free_port()
    rdzv_args = (["--rdzv-backend=static", f"--master-port={port}"] if rdzv == "static"
                 else ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id={name}"])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--max-restarts=1",
         "--monitor-interval=0.2", *rdzv_args, str(script), str(TOTAL_STEPS), str(KILL_STEP), str(CKPT_EVERY),
         death, str(work), backend],
        capture_output=True, text=True, timeout=300, env=env, cwd="/tmp")
    final = work / "final.pt"
    return proc, (torch.load(final) if final.exists() else None)


def leftover_workers(tmp_path) -> list[str]:
    found = []
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(cmdline, "rb") as f:
                text = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(tmp_path) in text:
            found.append(text)
    return found


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run's final parameters, per worker count (the rendezvous does not change them)."""
    cache: dict = {}

    def get(nproc: int):
        if nproc not in cache:
            tmp = tmp_path_factory.mktemp(f"reference{nproc}")
            ref, want = torchrun(tmp, "reference", nproc, "static", "none")
            assert ref.returncode == 0 and want is not None, ref.stdout[-2000:] + ref.stderr[-3000:]
            assert "attempt 1" not in ref.stdout
            cache[nproc] = want
        return cache[nproc]

    return get


@pytest.mark.parametrize("nproc,rdzv,death", [
    (2, "static", "exit"),
    (2, "c10d", "sigsegv"),
    (4, "c10d", "sigkill"),
])
def test_restart_resumes_from_checkpoint_to_the_same_parameters(tmp_path, reference, nproc, rdzv, death):
    import torch

    want = reference(nproc)
    run, got = torchrun(tmp_path, "killed", nproc, rdzv, death)
    log = run.stdout[-3000:] + run.stderr[-4000:]
    assert run.returncode == 0 and got is not None, log
    resumed_at = (KILL_STEP // CKPT_EVERY) * CKPT_EVERY
    for rank in range(nproc):
        assert f"attempt 1 rank {rank} resumes at step {resumed_at}" in run.stdout, log
        assert f"attempt 1 rank {rank} finished" in run.stdout, log
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert torch.equal(a, b), "the resumed run's parameters differ from the uninterrupted run's"
    assert leftover_workers(tmp_path) == []
