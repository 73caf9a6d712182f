"""What a survivor sees when a peer dies inside a CUDA IPC all_reduce.

Two ranks share GPU 0 (the IPC path). The victim makes its caller stream busy
(torch.cuda._sleep), calls all_reduce (so its "ready" event is still pending
when the exchange is over), then kills itself with SIGKILL. The survivor calls
all_reduce with an idle stream and then waits for its result on the host
(work.wait() + torch.cuda.synchronize()) in a thread, up to --wait seconds,
printing what it sees as it goes. With AGENTCOMM_CUDA_STUCK unset (exit), a
stuck device wait ends the survivor (exit code -6, the reason in its log).

    python bench/cuda/peer_death.py --victim 1   # a non-leader dies (the leader waits on its ready event)
    python bench/cuda/peer_death.py --victim 0   # the leader dies (the other waits on its done event)
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def body(rank: int, world: int, port: int, victim: int, wait_s: float) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    import agentcomm  # noqa: F401

    dist.init_process_group("agentcomm", timeout=__import__("datetime").timedelta(seconds=20))
    torch.cuda.set_device(0)
    x = torch.full((1 << 20,), float(rank + 1), device="cuda")
    dist.all_reduce(x)  # mappings and events exchanged, cached
    torch.cuda.synchronize()
    dist.barrier()
    if rank == victim:
        torch.cuda._sleep(2_000_000_000)  # ~1 s of spinning on the caller's stream
        dist.all_reduce(x, async_op=True)
        time.sleep(0.3)  # the exchange is over; the device work is still queued
        os.kill(os.getpid(), signal.SIGKILL)
    t0 = time.monotonic()
    box = {}

    def waiter() -> None:
        try:
            w = dist.all_reduce(x, async_op=True)
            box["queued"] = time.monotonic() - t0
            w.wait()
            box["waited"] = time.monotonic() - t0
            torch.cuda.synchronize()
            box["synced"] = time.monotonic() - t0
            box["value"] = float(x[0].item())
        except Exception as e:  # noqa: BLE001
            box["error"] = f"{type(e).__name__}: {e}"[:400]
            box["error_at"] = time.monotonic() - t0

    th = threading.Thread(target=waiter, daemon=True)
    th.start()
    while th.is_alive() and time.monotonic() - t0 < wait_s:
        th.join(1.0)
        print(f"survivor rank {rank} at {time.monotonic() - t0:.1f} s: {box} error()={dist.group.WORLD._get_backend(x.device).error()}", flush=True)
    box["hung"] = th.is_alive()
    print(f"survivor rank {rank}: {box}", flush=True)
    os._exit(0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--victim", type=int, default=1)
    ap.add_argument("--wait", type=float, default=30.0)
    a = ap.parse_args()
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    ctx = mp.get_context("spawn")
    ps = [ctx.Process(target=body, args=(r, 2, port, a.victim, a.wait)) for r in range(2)]
    for p in ps:
        p.start()
    for r, p in enumerate(ps):
        p.join(a.wait + 60)
        if p.is_alive():
            p.kill()
        print(f"victim {a.victim}: rank {r} exit code {p.exitcode}", flush=True)


if __name__ == "__main__":
    main()
