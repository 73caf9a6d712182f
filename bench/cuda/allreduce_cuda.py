"""all_reduce of CUDA tensors, several ranks sharing one GPU (nccl-tests' busbw).

Runs agentcomm (CUDA IPC, the default inside a host), agentcomm staged through
pinned host memory (AGENTCOMM_CUDA_IPC=0; "-serial": without overlapping the
copies, AGENTCOMM_CUDA_PIPELINE=0), Gloo on the same CUDA tensors, and
NCCL (which refuses two ranks on one GPU: the error is reported). busbw =
2 (n - 1) / n * bytes / time; the device-to-device copy bandwidth of the same
GPU (bytes copied / time) is measured in the same run for the ratio.
--op times agentcomm's compressed all-reduces on CUDA tensors instead
(encoded on the device; "agentcomm-host-encode": staged and encoded on the
host, AGENTCOMM_CUDA_ENCODE=0); busbw then counts the dense bytes.

    python bench/cuda/allreduce_cuda.py --world 2 --sizes 1K,1M,64M,256M
    python bench/cuda/allreduce_cuda.py --op topk --sizes 100M --backends agentcomm,agentcomm-host-encode
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from agentcomm.bench.cli import parse_size


# Named variants of a backend: (backend, environment of its ranks).
VARIANTS = {
    # Through pinned host memory, copies overlapped with the host algorithm (>= 8 MiB).
    "agentcomm-staged": ("agentcomm", {"AGENTCOMM_CUDA_IPC": "0"}),
    # The same without the overlap: copy all down, reduce, copy all up.
    "agentcomm-staged-serial": ("agentcomm", {"AGENTCOMM_CUDA_IPC": "0", "AGENTCOMM_CUDA_PIPELINE": "0"}),
    # Compressed ops encoding on the host (the whole tensor staged) instead of the device.
    "agentcomm-host-encode": ("agentcomm", {"AGENTCOMM_CUDA_ENCODE": "0"}),
}


def copy_bandwidth(nbytes: int) -> float:
    a = torch.empty(nbytes // 4, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(20):
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    return nbytes / sorted(times)[len(times) // 2]


def make_op(op: str, x: torch.Tensor, async_ops: bool):
    """One call of `op` on x: a dense all_reduce or an agentcomm compressed one
    (1% top-k / DGC / random-k, 8/4/1-bit quantization; error feedback on)."""
    if op == "all_reduce":
        if async_ops:
            return lambda: dist.all_reduce(x, async_op=True)
        return lambda: dist.all_reduce(x)
    from agentcomm.hooks import ops

    res = torch.zeros_like(x)
    if op in ("topk", "dgc", "randomk"):
        k = max(1, x.numel() // 100)
        return lambda: ops.sparse_all_reduce(x, k, residual=res, method=op)
    return lambda: ops.quantized_all_reduce(x, bits=int(op[1:]), residual=res)


def body(rank: int, world: int, port: int, backend: str, env: dict, sizes: list, iters: int, q,
         async_ops: bool = False, op: str = "all_reduce") -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), **env})
    import agentcomm  # noqa: F401

    torch.cuda.set_device(0)
    try:
        dist.init_process_group(backend, device_id=torch.device("cuda", 0) if backend == "nccl" else None)
        rows = []
        for nbytes in sizes:
            x = torch.randn(max(1, nbytes // 4), device="cuda")
            call = make_op(op, x, async_ops)
            n = iters if nbytes <= (64 << 20) else max(5, iters // 4)
            for _ in range(3):
                call()
            torch.cuda.synchronize()
            dist.barrier()
            t0 = time.perf_counter()
            # async: issued back to back, waited for at the end (DDP's buckets)
            pending = [call() for _ in range(n)]
            for w in pending:
                if w is not None:
                    w.wait()
            queued = (time.perf_counter() - t0) / n
            torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) / n
            rows.append((nbytes, dt, queued))
        if rank == 0:
            q.put((backend, env, rows, None))
        dist.barrier()
        dist.destroy_process_group()
    except Exception as e:  # noqa: BLE001 - reported as the backend's result
        if rank == 0:
            q.put((backend, env, [], f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--sizes", default="4K,1M,16M,64M,256M")
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--backends", default="agentcomm,agentcomm-staged,gloo,nccl")
    ap.add_argument("--op", default="all_reduce",
                    help="all_reduce, or a compressed one: topk, dgc, randomk (1%%), q8, q4, q1")
    ap.add_argument("--async-ops", action="store_true",
                    help="issue the ops with async_op=True and wait for them all at the end")
    args = ap.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    copy = copy_bandwidth(max(sizes))
    # What exporting a tensor's memory costs (the all-reduce does it per op).
    x = torch.empty(64 << 20, device="cuda")
    t0 = time.perf_counter()
    for _ in range(100):
        x.untyped_storage()._share_cuda_()
    print(f"cudaIpcGetMemHandle (through torch's _share_cuda_): {(time.perf_counter() - t0) * 1e4:.1f} us per call")
    print(f"device: {torch.cuda.get_device_name(0)}; {args.world} ranks on GPU 0; "
          f"{args.op}, {'async ops' if args.async_ops else 'blocking ops'}; "
          f"D2D copy {copy / 1e9:.0f} GB/s (bytes copied / time)")
    ctx = mp.get_context("spawn")
    results = []
    for name in args.backends.split(","):
        backend, env = VARIANTS.get(name, (name, {}))
        q = ctx.Queue()
        port = 29500 + len(results) * 7 + os.getpid() % 1000
        procs = [ctx.Process(target=body, args=(r, args.world, port, backend, env, sizes, args.iters, q,
                                                        args.async_ops, args.op))
                 for r in range(args.world)]
        for p in procs:
            p.start()
        try:
            got = q.get(timeout=300)
        except Exception:  # noqa: BLE001
            got = (backend, env, [], "timed out")
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
        results.append((name, got[2], got[3]))
    # "host us": how long rank 0's calls took to return (the host side's
    # rate); "time us" also waits for the device (the op's rate).
    print(f"{'backend':18s} {'bytes':>10s} {'time us':>10s} {'host us':>9s} {'busbw GB/s':>11s} {'of copy':>8s}")
    for name, rows, err in results:
        if err:
            print(f"{name:18s} failed: {err}")
        for nbytes, dt, queued in rows:
            bus = 2 * (args.world - 1) / args.world * nbytes / dt
            print(f"{name:18s} {nbytes:>10d} {dt * 1e6:>10.1f} {queued * 1e6:>9.1f} {bus / 1e9:>11.1f} "
                  f"{100 * bus / copy:>7.0f}%")


if __name__ == "__main__":
    main()
