"""The benchmark CLI end to end: every collective, both placements, the -c
check, JSON / CSV / plot output, on agentcomm and Gloo side by side."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest


def test_bench_sweep_checks_and_writes_every_output(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    cmd = [sys.executable, "-m", "agentcomm.bench", "--backends", "agentcomm,gloo", "-W", "3", "-b", "1K", "-e",
           "64K", "-f", "64", "-n", "3", "-w", "1", "-c", "1", "-I", "2", "--collectives", "all", "--json",
           "out.json", "--csv", "out.csv", "--plot", "out.png", "--no-progress"]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr[-4000:]
    rows = [ln.split() for ln in p.stdout.splitlines() if ln and not ln.startswith("#") and "collective" not in ln]
    # 2 sizes x (all_reduce, broadcast, all_to_all: 1 placement; all_gather, reduce_scatter: 2)
    assert len(rows) == 2 * 7, p.stdout
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["meta"]["world_size"] == 3 and data["meta"]["agentcomm"] and data["meta"]["machine"]["cpus"]
    for row in data["rows"]:
        for b in ("agentcomm", "gloo"):
            assert row[b]["wrong"] == 0, row
            assert row[b]["time_us"] > 0
    with open(tmp_path / "out.csv") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 2 * 7 * 2 and {ln["backend"] for ln in lines} == {"agentcomm", "gloo"}
    assert (tmp_path / "out.png").stat().st_size > 10_000
