"""Time to accuracy: which communication scheme reaches the target first on *this* cluster?

One command trains a task once per strategy (sync DDP on Gloo and on agentcomm, torch's fp16
and PowerSGD hooks (its bf16 hook needs CUDA), agentcomm's bf16 and top-k/DGC/random-k/8/4/1-bit
with and without error feedback and hierarchical, a compressor written in Python, local SGD,
hierarchical and asynchronous averaging) on the same data from the same initialisation, on an emulated cluster (``--cluster 4x1@1gbit``, root) or on this machine,
and writes a table, JSON and plots: time to the target accuracy, final accuracy, speed-up over
the fair baseline (16-bit DDP, as Agarwal et al., MLSys 2022, argue), bytes on the wire,
encode/decode time, and the step time the cost model predicts beside the one measured.

    sudo python -m agentcomm.bench.tta --task digits --cluster 4x1@1gbit --host-rate 3=100mbit \\
        --target 0.95 --out tta-digits
    python -m agentcomm.bench.tta --task digits --ranks 2 --strategies ddp,bf16,topk-ef --max-steps 100
    python -m agentcomm.bench.tta --config run.json      # the same options as a JSON object

Timing: each rank's clock runs through its training steps only; every ``eval_every`` steps the
clock stops, rank 0 evaluates its model on the held-out set (with local SGD and averaging:
its own replica, as a deployment would) and the ranks agree (on Gloo) whether to stop: target
reached, time budget spent, or ``max_steps`` done. A slow rank (``--slow-rank R=F``) sleeps
``(F - 1)`` times the task's measured compute time before each step.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from agentcomm.bench.harness import median_seconds
from agentcomm.bench.tasks import TASKS, Task
from agentcomm.emulate import index_value

log = logging.getLogger("agentcomm.bench.tta")


# ---- strategies ------------------------------------------------------------------------------
class Strategy:
    """How one rank trains: the module it runs, its optimiser step, what follows it, and its stats.

    ``optimizer_step(opt)`` replaces ``opt.step()`` (a parameter server steps on its servers).
    ``independent``: ranks never wait for each other to decide when to stop (rank 0 posts the
    stop in the store; the others look every ``eval_every`` steps), so an asynchronous scheme
    keeps its head start; rank 0's clock then includes its evaluations (the others train on).
    """

    def __init__(self, module: torch.nn.Module, after_step: Callable[[], None] = lambda: None,
                 finish: Callable[[], None] = lambda: None, state: Any = None,
                 optimizer_step: Callable[[torch.optim.Optimizer], None] = lambda opt: opt.step(),
                 independent: bool = False) -> None:
        self.module, self.after_step, self.finish, self.state = module, after_step, finish, state
        self.optimizer_step, self.independent = optimizer_step, independent

    def stats(self) -> dict[str, float] | None:
        """The compression hook's own accounting (agentcomm's hooks), else None."""
        if self.state is None or not hasattr(self.state, "stats"):
            return None
        s = self.state.stats()
        return {"raw_bytes": s.raw_bytes, "sent_bytes": s.sent_bytes, "encode_s": s.encode_seconds,
                "decode_s": s.decode_seconds}


def _ddp(model: torch.nn.Module, group: dist.ProcessGroup, hook: tuple | None = None) -> Strategy:
    ddp = torch.nn.parallel.DistributedDataParallel(model, process_group=group)
    if hook is not None:
        ddp.register_comm_hook(*hook)
    return Strategy(ddp, state=hook[0] if hook else None)


def _averaging(model: torch.nn.Module, averager: Any) -> Strategy:
    from agentcomm.averaging import AsyncAverager

    params = list(model.parameters())
    finish = (lambda: averager.synchronize(params)) if isinstance(averager, AsyncAverager) else (lambda: None)
    return Strategy(model, after_step=lambda: averager.average_parameters(params), finish=finish)


def _parameter_server(model: torch.nn.Module, group: dist.ProcessGroup, lr: float, mode: str,
                      staleness: int = 0) -> Strategy:
    """agentcomm.ps with one server on the last rank, which also trains (every rank trains);
    the server runs the runner's optimiser (SGD, momentum 0.9). One server, not a shard per
    rank: a small model's step is bounded by messages, and this layout sends a third as many."""
    from agentcomm.ps import ParameterServer

    world = dist.get_world_size(group)
    ps = ParameterServer(model, lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9), servers=[world - 1],
                         workers=range(world), mode=mode, staleness=staleness, group=group)
    return Strategy(model, optimizer_step=lambda opt: ps.step(), finish=ps.close, independent=mode == "async" or
                    staleness > 0)


def _hierarchy(world: int, per_host: int) -> dict[int, int]:
    inner = per_host if 1 < per_host < world else (2 if world % 2 == 0 and world > 2 else world)
    return {2: inner, 8: world} if inner < world else {4: world}


def _strategies() -> dict[str, tuple[str, Callable[..., Strategy]]]:
    """name -> (what it is, factory(model, groups, world, per_host))."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

    import agentcomm.hooks as H
    from agentcomm.averaging import AsyncAverager, HierarchicalAverager, PeriodicAverager

    def ac(g: dict) -> dist.ProcessGroup:
        return g["agentcomm"]

    table: dict[str, tuple[str, Callable[..., Strategy]]] = {
        "ddp-gloo": ("DDP on Gloo, fp32", lambda m, g, w, r, lr: _ddp(m, g["gloo"])),
        "ddp": ("DDP on agentcomm, fp32", lambda m, g, w, r, lr: _ddp(m, ac(g))),
        "torch-fp16": ("torch's fp16_compress_hook", lambda m, g, w, r, lr: _ddp(m, ac(g), (ac(g), default_hooks.fp16_compress_hook))),
        "powersgd": ("torch's PowerSGD, rank 2", lambda m, g, w, r, lr: _ddp(m, ac(g), (powerSGD_hook.PowerSGDState(
            process_group=ac(g), matrix_approximation_rank=2, start_powerSGD_iter=10), powerSGD_hook.powerSGD_hook))),
        "bf16": ("agentcomm bf16 cast", lambda m, g, w, r, lr: _ddp(m, ac(g), (H.CastState(ac(g), dtype=torch.bfloat16), H.cast_hook))),
        "localsgd": ("local SGD, average every 4 steps", lambda m, g, w, r, lr: _averaging(m, PeriodicAverager(period=4))),
        "hier-avg": ("hierarchical averaging", lambda m, g, w, r, lr: _averaging(m, HierarchicalAverager(_hierarchy(w, r)))),
        "async-avg": ("asynchronous averaging, period 4, staleness 2",
                      lambda m, g, w, r, lr: _averaging(m, AsyncAverager(period=4, max_staleness=2))),
        "ps-sync": ("parameter server, synchronous (SSP bound 0), one server",
                    lambda m, g, w, r, lr: _parameter_server(m, ac(g), lr, "ssp", 0)),
        "ps-ssp": ("parameter server, stale-synchronous, bound 2, one server",
                   lambda m, g, w, r, lr: _parameter_server(m, ac(g), lr, "ssp", 2)),
        "ps-async": ("parameter server, asynchronous, one server",
                     lambda m, g, w, r, lr: _parameter_server(m, ac(g), lr, "async")),
    }
    schemes: dict[str, tuple[str, Callable[..., Any], Callable]] = {  # name -> (words, state(group, **kw), hook)
        "topk": ("top-k 1%", lambda g, **kw: H.TopKState(g, ratio=0.01, **kw), H.topk_hook),
        "dgc": ("DGC 1%", lambda g, **kw: H.TopKState(g, ratio=0.01, method="dgc", **kw), H.topk_hook),
        "randomk": ("random-k 1%", lambda g, **kw: H.RandomKState(g, ratio=0.01, **kw), H.randomk_hook),
        "q8": ("8-bit quantization", lambda g, **kw: H.QuantizeState(g, bits=8, **kw), H.quantize_hook),
        "q4": ("4-bit quantization", lambda g, **kw: H.QuantizeState(g, bits=4, **kw), H.quantize_hook),
        "q1": ("1-bit quantization", lambda g, **kw: H.QuantizeState(g, bits=1, **kw), H.quantize_hook),
        "py-topk": ("top-k 1% written in Python (agentcomm.hooks.TopKCompressor)",
                    lambda g, **kw: H.PythonCompressionState(H.TopKCompressor(0.01), g, **kw), H.python_compressor_hook),
    }
    for key, (words, state, hook) in schemes.items():
        for ef, hier in ((True, False), (False, False), (True, True)):
            name = key + ("-ef" if ef else "") + ("-hier" if hier else "")
            about = words + (" with EF" if ef else " without EF") + (
                ", dense in each host, compressed between hosts" if hier else "")
            table[name] = (about, lambda m, g, w, r, lr, ef=ef, hier=hier, state=state, hook=hook: _ddp(
                m, ac(g), (state(ac(g), error_feedback=ef, hierarchical=hier), hook)))
    return table


DEFAULT_STRATEGIES = ("ddp-gloo", "ddp", "torch-fp16", "powersgd", "bf16", "topk-ef", "topk", "dgc-ef", "randomk-ef",
                      "q8-ef", "q4-ef", "q1-ef", "q1", "py-topk-ef", "localsgd", "hier-avg", "async-avg")
# With several ranks per host, also the hierarchical variants (dense inside a host).
HIERARCHICAL_STRATEGIES = ("topk-ef-hier", "q8-ef-hier", "q4-ef-hier", "q1-ef-hier")


# ---- one strategy's run (every rank) -----------------------------------------------------------
def _wire_bytes() -> int:
    """Bytes this emulated host's interface sent so far (0 when not on an emulated cluster)."""
    if "AGENTCOMM_EMULATE_HOST" not in os.environ:
        return 0
    from agentcomm.emulate import INTERFACE
    try:
        return int(Path(f"/sys/class/net/{INTERFACE}/statistics/tx_bytes").read_text())
    except OSError:
        return 0


def _latency_s(group: dist.ProcessGroup) -> float:
    """A 4-byte all_reduce's time on ``group`` (median of 30)."""
    t = torch.zeros(1)
    return median_seconds(lambda: dist.all_reduce(t, group=group), 30)


def _compute_seconds(task: Task, x: torch.Tensor, y: torch.Tensor) -> float:
    """One step's compute (forward, backward, optimiser) on a local replica (median of 20)."""
    model = task.model()
    opt = torch.optim.SGD(model.parameters(), lr=task.lr)

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[:task.batch]), y[:task.batch]).backward()
        opt.step()

    return median_seconds(step, 20)


def run_strategy(cfg: dict, strategy: str, out: Path) -> None:
    """Train ``cfg['task']`` with ``strategy`` on this rank (torchrun's environment); rank 0
    writes ``out`` (JSON)."""
    from agentcomm.emulate import slowdown_factor

    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    per_host = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    timeout = timedelta(seconds=float(cfg["budget_s"]) + 300)
    dist.init_process_group("gloo", timeout=timeout)
    groups = {"gloo": dist.group.WORLD, "agentcomm": dist.new_group(backend="agentcomm", timeout=timeout)}
    task = TASKS[cfg["task"]]
    xtr, ytr, xte, yte = task.data()
    xs, ys = xtr[rank::world], ytr[rank::world]
    compute_s = _compute_seconds(task, xs, ys)
    extra_s = (slowdown_factor() - 1.0) * compute_s
    torch.manual_seed(0)
    model = task.model()
    about, factory = _strategies()[strategy]
    strat = factory(model, groups, world, per_host, task.lr)
    opt = torch.optim.SGD(model.parameters(), lr=task.lr, momentum=0.9)
    gen = torch.Generator().manual_seed(1000 + rank)
    target, budget, eval_every = float(cfg["target"]), float(cfg["budget_s"]), int(cfg["eval_every"])
    curve: list[dict] = []
    clock, wire0, loss_sum, losses, step = 0.0, _wire_bytes(), 0.0, 0, 0
    store = dist.distributed_c10d._get_default_store()
    dist.barrier()
    latency = {name: _latency_s(g) for name, g in groups.items()}  # the cost model's per-collective time
    dist.barrier()
    while True:
        t0 = time.perf_counter()
        if extra_s:
            time.sleep(extra_s)
        idx = torch.randint(0, len(xs), (task.batch,), generator=gen)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(strat.module(xs[idx]), ys[idx])
        loss.backward()
        strat.optimizer_step(opt)
        strat.after_step()
        clock += time.perf_counter() - t0
        step += 1
        loss_sum += loss.item()
        losses += 1
        if step % eval_every and step < int(cfg["max_steps"]):
            continue
        t0 = time.perf_counter()
        acc = -1.0
        if rank == 0:
            with torch.no_grad():
                acc = float((model(xte).argmax(1) == yte).float().mean())
            curve.append({"t": clock, "step": step, "acc": acc, "loss": loss_sum / losses})
        loss_sum, losses = 0.0, 0
        done = clock >= budget or step >= int(cfg["max_steps"])
        if strat.independent:
            # No collective: rank 0 posts the stop, the others see it at their next look.
            if rank == 0 and (acc >= target or done):
                store.set("tta/stop", "1")
            clock += time.perf_counter() - t0 if rank == 0 else 0.0
            if done or store.check(["tta/stop"]):
                break
            continue
        stop = torch.tensor([float(acc >= target), float(done)])
        dist.all_reduce(stop, op=dist.ReduceOp.MAX)  # on Gloo; the clock is stopped
        if stop.max() > 0:
            break
    strat.finish()
    stats = strat.stats()
    totals = torch.tensor([clock, float(_wire_bytes() - wire0) if int(os.environ.get("LOCAL_RANK", "0")) == 0 else 0.0,
                           compute_s + extra_s], dtype=torch.float64)
    clocks = [torch.zeros(3, dtype=torch.float64) for _ in range(world)]
    dist.all_gather(clocks, totals)
    if rank == 0:
        hit = next((p for p in curve if p["acc"] >= target), None)
        result = {
            "strategy": strategy, "about": about, "world": world, "steps": step,
            "time_s": max(float(c[0]) for c in clocks), "step_s": clock / max(step, 1),
            "compute_s": max(float(c[2]) for c in clocks),  # the slowest rank's, its slowdown included
            "wire_bytes": sum(float(c[1]) for c in clocks), "final_acc": curve[-1]["acc"] if curve else None,
            "tta_s": hit["t"] if hit else None, "tta_steps": hit["step"] if hit else None,
            "stats": stats, "latency_s": latency, "curve": curve,
        }
        out.write_text(json.dumps(result))
    dist.destroy_process_group()


# ---- the driver ------------------------------------------------------------------------------
@dataclass
class Config:
    task: str = "digits"
    cluster: str | None = None          # HOSTSxRANKS[@RATE]; None: --ranks ranks on this machine
    ranks: int = 4
    host_rates: dict[str, str] = field(default_factory=dict)
    slow_ranks: dict[str, float] = field(default_factory=dict)
    strategies: list[str] | None = None  # None: DEFAULT_STRATEGIES (+ the hierarchical ones with ranks per host > 1)
    baseline: str = "bf16"  # 16-bit DDP (torch's bf16 hook refuses CPU tensors)
    target: float | None = None        # the task's default
    max_steps: int = 2000
    budget_s: float = 300.0
    eval_every: int = 25
    out: str = "tta-out"
    plot: bool = True

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r}: choose from {', '.join(TASKS)}")
        known = _strategies()
        for s in self.strategies or ():
            if s not in known:
                raise ValueError(f"strategy {s!r}: choose from {', '.join(known)}")
        if self.max_steps < 1 or self.eval_every < 1 or self.budget_s <= 0:
            raise ValueError("max_steps and eval_every must be >= 1 and budget_s > 0")


def _ring(n: int, nbytes: float) -> float:
    """Bytes each member of an n-member ring all-reduce sends: 2 (n-1)/n of the buffer."""
    return 2 * (n - 1) / n * nbytes if n > 1 else 0.0


def _powersgd_bytes(shapes: list[tuple[int, ...]], rank: int = 2) -> float:
    """One PowerSGD step's all-reduced bytes: P and Q (rank x (rows + cols)) per matrix that
    compression shrinks, the rest (vectors, small matrices) uncompressed."""
    total = 0.0
    for shape in shapes:
        numel = math.prod(shape)
        rows, cols = (shape[0], numel // shape[0]) if len(shape) >= 2 else (numel, 1)
        total += 4 * (rank * (rows + cols) if len(shape) >= 2 and rank * (rows + cols) < numel else numel)
    return total


def traffic(result: dict, shapes: list[tuple[int, ...]], hosts: int, per_host: int) -> tuple[float, float]:
    """(collectives per step, bytes the busiest host sends to other hosts per step) of a result's
    strategy: from the hook's own accounting where it has one, else from the scheme's shape."""
    strategy, steps, world = result["strategy"], max(result["steps"], 1), result["world"]
    P = 4.0 * sum(math.prod(s) for s in shapes)
    stats = result.get("stats")
    if strategy.startswith("ps-"):  # the server's host sends P to (and receives P from) each other host's rank
        return 2.0, P * (world - per_host)
    if strategy in ("localsgd", "async-avg"):  # period 4 over the world (leaders' ring across hosts)
        return 0.25, _ring(hosts, P) / 4
    if strategy == "hier-avg":  # at a step, the largest due period's group averages
        schedule = _hierarchy(world, per_host)
        cycle = max(schedule)
        ops = nbytes = 0.0
        for step in range(cycle):
            due = [p for p in schedule if step % p == 0]
            if due:
                size = schedule[max(due)]
                ops += 1
                nbytes += _ring(max(1, -(-size // per_host)), P)
        return ops / cycle, nbytes / cycle
    if strategy == "powersgd":  # dense until iteration 10, then P and Q plus the vectors: 3 all-reduces
        dense = min(steps, 10)
        return (dense + 3 * (steps - dense)) / steps, (
            dense * _ring(hosts, P) + (steps - dense) * _ring(hosts, _powersgd_bytes(shapes))) / steps
    if strategy in ("bf16", "torch-fp16"):  # dense all-reduce in 16 bits: hierarchical across hosts
        return 1.0, _ring(hosts, P / 2)
    if stats and stats["sent_bytes"] and strategy.endswith("-hier"):
        # rank 0 is its host's leader, the only rank that crosses hosts; plus the host-local
        # reduce and broadcast: 3 collectives
        return 3.0, stats["sent_bytes"] / steps
    if stats and stats["sent_bytes"]:  # flat: every rank sends, (world - per_host) / (world - 1) of it away
        return 1.0, per_host * stats["sent_bytes"] / steps * (world - per_host) / max(world - 1, 1)
    if strategy == "ddp-gloo":  # a ring over every rank, hosts contiguous: one edge leaves each host
        return 1.0, _ring(world, P)
    return 1.0, _ring(hosts, P)  # agentcomm: hierarchical, the leaders' ring across hosts


def predict_step_s(result: dict, link: dict | None, shapes: list[tuple[int, ...]], hosts: int,
                   per_host: int) -> float | None:
    """The cost model's step time (docs/research_bench.md):
    compute + encode/decode + collectives x their latency + host bytes / link rate."""
    if link is None:
        return None
    ops, host_bytes = traffic(result, shapes, hosts, per_host)
    stats = result.get("stats")
    codec = (stats["encode_s"] + stats["decode_s"]) / max(result["steps"], 1) if stats else 0.0
    latency = result["latency_s"]["gloo" if result["strategy"] == "ddp-gloo" else "agentcomm"]
    return result["compute_s"] + codec + ops * latency + host_bytes * 8.0 / link["rate_bps"]


def _table(cfg: Config, results: list[dict], link: dict | None, hosts: int, per_host: int,
           shapes: list[tuple[int, ...]]) -> str:
    base = next((r for r in results if r["strategy"] == cfg.baseline), None)
    lines = [f"| strategy | time to {cfg.target:.0%} (s) | steps | final acc | step (ms) | predicted step (ms) | "
             f"wire MB | encode+decode (ms/step) | speed-up vs {cfg.baseline} |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        pred = predict_step_s(r, link, shapes, hosts, per_host)
        codec = (r["stats"]["encode_s"] + r["stats"]["decode_s"]) / max(r["steps"], 1) * 1e3 if r["stats"] else None
        speed = (base["tta_s"] / r["tta_s"]) if base and base["tta_s"] and r["tta_s"] else None
        lines.append(
            f"| {r['strategy']} | {r['tta_s']:.2f} | {r['tta_steps']} |" if r["tta_s"] is not None else
            f"| {r['strategy']} | not reached | - |")
        lines[-1] += (f" {r['final_acc']:.3f} | {r['step_s'] * 1e3:.1f} | "
                      f"{'-' if pred is None else f'{pred * 1e3:.1f}'} | {r['wire_bytes'] / 1e6:.1f} | "
                      f"{'-' if codec is None else f'{codec:.2f}'} | {'-' if speed is None else f'{speed:.2f}x'} |")
    return "\n".join(lines)


def _plot(results: list[dict], path: Path, target: float) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plots")
        return
    fig, grid = plt.subplots(2, 2, figsize=(13, 10))
    curves, bars = grid[0], grid[1]
    names = [r["strategy"] for r in results]
    colors = [plt.cm.tab20(i % 20) for i in range(len(results))]
    for i, r in enumerate(results):  # 20 colours, then dashed: every strategy tells apart
        style = {"color": colors[i], "linestyle": ("-", "--", ":")[i // 20 % 3], "label": r["strategy"]}
        for ax, key in zip(curves, ("t", "step")):
            ax.plot([p[key] for p in r["curve"]], [p["acc"] for p in r["curve"]], **style)
    for ax, xlabel in zip(curves, ("training time (s, rank 0's clock)", "steps")):
        ax.axhline(target, color="grey", linestyle=":")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out accuracy")
        ax.grid(alpha=0.3)
    curves[1].legend(fontsize=7, ncol=2)
    per_step = [max(r["steps"], 1) for r in results]
    wire = [r["wire_bytes"] / n / 1e6 for r, n in zip(results, per_step)]
    codec = [(r["stats"]["encode_s"] + r["stats"]["decode_s"]) / n * 1e3 if r["stats"] else 0.0
             for r, n in zip(results, per_step)]
    for ax, values, label in ((bars[0], wire, "bytes on the wire per step, all hosts (MB)"),
                              (bars[1], codec, "encode + decode per step (ms; torch's hooks: not counted)")):
        ax.barh(names, values, color=colors)
        ax.invert_yaxis()
        ax.set_xlabel(label)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def drive(cfg: Config) -> dict:
    """Run every strategy of ``cfg``; write results.json, table.md and accuracy.png under cfg.out."""
    from agentcomm.emulate import Cluster, ClusterSpec
    from agentcomm.emulate.probe import measure_link

    cfg.validate()
    task = TASKS[cfg.task]
    cfg.target = task.target if cfg.target is None else cfg.target
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    slow = {int(k): float(v) for k, v in cfg.slow_ranks.items()}
    if cfg.cluster:
        spec = ClusterSpec.parse(cfg.cluster)
        spec.host_rates.update({int(k): v for k, v in cfg.host_rates.items()})
        spec.slow_ranks.update(slow)
        spec.validate()
        cluster = Cluster(spec)
    else:
        cluster = Cluster.local(cfg.ranks, slow)
        spec = cluster.spec
    if cfg.strategies is None:
        cfg.strategies = list(DEFAULT_STRATEGIES) + (list(HIERARCHICAL_STRATEGIES) if spec.ranks_per_host > 1 else [])
    shapes = [tuple(p.shape) for p in task.model().parameters()]
    param_bytes = 4 * sum(math.prod(s) for s in shapes)
    results: list[dict] = []
    failed: list[dict] = []
    link = None
    with cluster:
        if spec.hosts > 1:  # the slowest link's rate (and round trip), for the cost model
            slowest = min(range(spec.hosts), key=lambda h: _rate_or_inf(spec.rate_of(h)))
            probe = measure_link(cluster, (slowest + 1) % spec.hosts, slowest, seconds=1.0)
            link = {"rtt_s": probe.rtt_s, "rate_bps": probe.rate_bps, "host": slowest}
            log.info("slowest link (host %d): rtt %.0f us, %.1f Mbit/s", slowest, probe.rtt_s * 1e6, probe.rate_bps / 1e6)
        cfg_json = out / "config.json"
        cfg_json.write_text(json.dumps(asdict(cfg)))
        for name in cfg.strategies:
            path = out / f"{name}.json"
            path.unlink(missing_ok=True)
            code = cluster.launch([sys.executable, "-m", "agentcomm.bench.tta", "--worker", str(cfg_json), name,
                                   str(path)], timeout=cfg.budget_s + 600)
            if not path.exists():  # one strategy failing (a user's compressor raising) loses no other
                log.error("%-12s failed: its ranks exited with code %d before writing results", name, code)
                failed.append({"strategy": name, "exit_code": code})
                continue
            r = json.loads(path.read_text())
            if code != 0:
                log.error("%-12s its ranks exited with code %d after rank 0 wrote its results", name, code)
                r["exit_code"] = code
                failed.append({"strategy": name, "exit_code": code})
            results.append(r)
            log.info("%-12s %s, final accuracy %.3f, %.1f ms/step", name,
                     f"{cfg.target:.0%} after {r['tta_s']:.2f} s" if r["tta_s"] is not None else "target not reached",
                     r["final_acc"], r["step_s"] * 1e3)
    table = _table(cfg, results, link, spec.hosts, spec.ranks_per_host, shapes)
    for f in failed:
        table += f"\n\n{f['strategy']}: its ranks exited with code {f['exit_code']}" + (
            "" if any(r["strategy"] == f["strategy"] for r in results) else " before writing results (no row)")
    header = (f"task {cfg.task} ({param_bytes / 1e6:.2f} MB of fp32 parameters), {spec.describe()}, "
              f"target {cfg.target:.0%}, eval every {cfg.eval_every} steps, budget {cfg.budget_s:g} s")
    report = {"config": asdict(cfg), "cluster": spec.describe(), "link": link, "param_bytes": param_bytes,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
              "results": results, "failed": failed}
    (out / "results.json").write_text(json.dumps(report, indent=1))
    (out / "table.md").write_text(header + "\n\n" + table + "\n")
    if cfg.plot:
        _plot(results, out / "accuracy.png", cfg.target)
    print(header)
    print(table)
    return report


def _rate_or_inf(rate: str | None) -> float:
    from agentcomm.emulate import parse_rate
    return math.inf if rate is None else parse_rate(rate)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        run_strategy(json.loads(Path(argv[1]).read_text()), argv[2], Path(argv[3]))
        return
    p = argparse.ArgumentParser(prog="python -m agentcomm.bench.tta", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="a JSON object with the options below (command-line flags override it)")
    p.add_argument("--task", choices=sorted(TASKS))
    p.add_argument("--cluster", help="HOSTSxRANKS[@RATE] emulated cluster (root), e.g. 4x1@1gbit")
    p.add_argument("--ranks", type=int, help="without --cluster: ranks on this machine (default 4)")
    p.add_argument("--host-rate", action="append", default=[], metavar="HOST=RATE", type=index_value("--host-rate", str))
    p.add_argument("--slow-rank", action="append", default=[], metavar="RANK=FACTOR",
                   type=index_value("--slow-rank", float))
    p.add_argument("--strategies", help=f"comma-separated (default: {','.join(DEFAULT_STRATEGIES)}; with several ranks per host also {','.join(HIERARCHICAL_STRATEGIES)})")
    p.add_argument("--baseline", help="the strategy speed-ups are measured against (default bf16: 16-bit DDP)")
    p.add_argument("--target", type=float, help="held-out accuracy to reach (default: the task's)")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--budget-s", type=float, help="training seconds per strategy (default 300)")
    p.add_argument("--eval-every", type=int)
    p.add_argument("--out", help="output folder (default tta-out)")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[tta] %(message)s")
    base = json.loads(Path(args.config).read_text()) if args.config else {}
    unknown = set(base) - set(Config.__dataclass_fields__)
    if unknown:
        raise SystemExit(f"--config {args.config}: unknown keys {sorted(unknown)}")
    cfg = Config(**base)
    for key in ("task", "cluster", "ranks", "baseline", "target", "max_steps", "budget_s", "eval_every", "out"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    if args.strategies:
        cfg.strategies = args.strategies.split(",")
    cfg.host_rates.update({str(h): r for h, r in args.host_rate})
    cfg.slow_ranks.update({str(r): f for r, f in args.slow_rank})
    cfg.plot = cfg.plot and not args.no_plot
    try:
        report = drive(cfg)
    except (ValueError, RuntimeError) as e:
        raise SystemExit(f"tta: {e}") from None
    if report["failed"]:
        raise SystemExit(f"tta: {len(report['failed'])} strategy run(s) failed: "
                         + ", ".join(f"{f['strategy']} (exit code {f['exit_code']})" for f in report["failed"]))


if __name__ == "__main__":
    main()
