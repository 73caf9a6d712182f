"""Output of the benchmark: the nccl-tests-style table, JSON, CSV, a plot and a progress bar.

Example::

    rows = [...]  # as produced by agentcomm.bench.cli
    print_header(["agentcomm", "gloo"], world=4)
    for row in rows:
        print_row(row, ["agentcomm", "gloo"])
    write_csv("out.csv", rows, meta)
"""

from __future__ import annotations

import csv
import json
import os
import platform
import sys
import time
from typing import TextIO


def human(n: int) -> str:
    """1048576 -> '1M'; sizes that are not whole units stay in bytes."""
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def machine_info() -> dict:
    """What a reader needs to compare runs: CPU model, cores, memory, OS, Python."""
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = None
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {"platform": platform.platform(), "cpu": model, "cpus": os.cpu_count(), "memory_gib": mem_gib,
            "python": platform.python_version(), "hostname": platform.node()}


def print_header(backends: list[str], world: int, file: TextIO = sys.stdout) -> None:
    cols = f"{'collective':>14} {'place':>5} {'size':>8} {'count':>11} {'type':>8} {'op':>4}"
    for b in backends:
        cols += f" | {b[:12]:>12} {'time(us)':>10} {'algbw':>7} {'busbw':>7} {'#wrong':>6}"
    if len(backends) > 1:
        cols += f" | {'vs ' + backends[-1]:>9}"
    print(f"# world size {world}; time: median over batches of the slowest rank's time per op; "
          f"algbw/busbw in GB/s (nccl-tests definitions); #wrong: -c check (-1: not checked)", file=file)
    print(cols, file=file)


def print_row(row: dict, backends: list[str], file: TextIO = sys.stdout) -> None:
    line = (f"{row['collective']:>14} {row['place']:>5} {human(row['bytes']):>8} {row['count']:>11} "
            f"{row['type']:>8} {row['op']:>4}")
    for b in backends:
        r = row[b]
        if r is None:  # not measured (a compressed all-reduce on another collective)
            line += f" | {'':>12} {'-':>10} {'-':>7} {'-':>7} {'-':>6}"
            continue
        line += f" | {'':>12} {r['time_us']:>10.1f} {r['algbw']:>7.3f} {r['busbw']:>7.3f} {r['wrong']:>6}"
    if len(backends) > 1 and row[backends[-1]] is not None:
        base = row[backends[-1]]["time_us"]
        line += " | " + " ".join(f"{base / row[b]['time_us']:>8.2f}x" if row[b] else f"{'-':>9}"
                                 for b in backends[:-1])
    print(line, file=file, flush=True)


def print_compression(rows: list[dict], backends: list[str], world: int, file: TextIO = sys.stdout) -> None:
    """The compressed backends' wire bytes, ratio against a dense ring, encode/decode time."""
    print(f"# compressed all-reduce, world size {world}: wire = bytes this rank sent per op; ratio = a dense "
          f"ring's 2(n-1)/n*S / wire; busbw above is effective (from the uncompressed size)", file=file)
    print(f"{'size':>8} {'scheme':>22} {'wire':>10} {'ratio':>8} {'encode(us)':>11} {'decode(us)':>11}", file=file)
    for row in rows:
        for b in backends:
            r = row.get(b)
            if r is None or "wire_bytes" not in r:
                continue
            wire = r["wire_bytes"]
            wire_text = f"{wire / 2**20:.2f}M" if wire >= 2**20 else f"{wire / 2**10:.1f}K"
            print(f"{human(row['bytes']):>8} {b:>22} {wire_text:>10} {r['ratio']:>7.1f}x "
                  f"{r['encode_us']:>11.1f} {r['decode_us']:>11.1f}", file=file)


def write_json(path: str, rows: list[dict], meta: dict) -> None:
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)


def write_csv(path: str, rows: list[dict], meta: dict) -> None:
    """One line per (row, backend); versions and machine repeated so every line stands alone."""
    fields = ["collective", "place", "bytes", "count", "type", "op", "world_size", "backend", "time_us", "algbw",
              "busbw", "wrong", "wire_bytes", "ratio", "encode_us", "decode_us", "agentcomm", "torch", "cpu", "cpus",
              "timestamp"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for row in rows:
            for b in meta["backends"]:
                r = row[b]
                if r is None:
                    continue
                w.writerow({"collective": row["collective"], "place": row["place"], "bytes": row["bytes"],
                            "count": row["count"], "type": row["type"], "op": row["op"],
                            "world_size": meta["world_size"], "backend": b, "time_us": f"{r['time_us']:.3f}",
                            "algbw": f"{r['algbw']:.4f}", "busbw": f"{r['busbw']:.4f}", "wrong": r["wrong"],
                            "wire_bytes": r.get("wire_bytes", ""), "ratio": r.get("ratio", ""),
                            "encode_us": r.get("encode_us", ""), "decode_us": r.get("decode_us", ""),
                            "agentcomm": meta["agentcomm"], "torch": meta["torch"], "cpu": meta["machine"]["cpu"],
                            "cpus": meta["machine"]["cpus"], "timestamp": meta["timestamp"]})


def plot(path: str, rows: list[dict], meta: dict) -> None:
    """busbw and latency against size, one line per backend, one row of panels per collective."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise SystemExit(f"--plot needs matplotlib (pip install matplotlib): {e}") from e
    series = sorted({(r["collective"], r["place"]) for r in rows})
    fig, axes = plt.subplots(len(series), 2, figsize=(11, 3.2 * len(series)), squeeze=False)
    for (coll, place), (ax_t, ax_b) in zip(series, axes):
        sel = sorted((r for r in rows if r["collective"] == coll and r["place"] == place), key=lambda r: r["bytes"])
        xs = [r["bytes"] for r in sel]
        for b in meta["backends"]:
            pts = [(x, r[b]) for x, r in zip(xs, sel) if r[b] is not None]
            if not pts:
                continue
            ax_t.plot([x for x, _ in pts], [v["time_us"] for _, v in pts], marker="o", label=b)
            ax_b.plot([x for x, _ in pts], [v["busbw"] for _, v in pts], marker="o", label=b)
        for ax, ylabel in ((ax_t, "time per op (us)"), (ax_b, "busbw (GB/s)")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("bytes")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            ax.set_title(f"{coll} ({place}), {meta['world_size']} ranks, {rows[0]['type']}")
        ax_t.set_yscale("log")
        ax_t.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal (or forced)."""

    def __init__(self, total: int, enabled: bool | None = None) -> None:
        self.total = max(1, total)
        self.done = 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.start = time.monotonic()

    def step(self, label: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        width = 30
        filled = int(width * self.done / self.total)
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                         f"{label:<40.40} {elapsed:5.0f}s, ~{eta:4.0f}s left")
        sys.stderr.flush()

    def clear(self) -> None:
        """Erases the bar so that a table row can be printed on a clean line."""
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
