"""torch.topk on the same problem as agentcomm_cuda_bench's top-k line (1% of 25M float32).

    python3 bench/cuda/torch_topk.py
"""

import torch


def median_ms(fn, reps: int = 20) -> float:
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(3):
        fn()
    ms = []
    for _ in range(reps):
        s.record()
        fn()
        e.record()
        e.synchronize()
        ms.append(s.elapsed_time(e))
    return sorted(ms)[len(ms) // 2]


def main() -> None:
    x = torch.randn(25_000_000, device="cuda")
    k = 250_000
    print(f"torch.topk(|x|, 1% of 25M, sorted=False): {median_ms(lambda: torch.topk(x.abs(), k, sorted=False)):.3f} ms")
    y = torch.empty_like(x)
    print(f"torch copy_ 25M float32: {median_ms(lambda: y.copy_(x)):.3f} ms")


if __name__ == "__main__":
    main()
