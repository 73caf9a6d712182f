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
    # 2 sizes x (all_reduce, broadcast, all_to_all, reduce, gather, scatter, sendrecv: 1 placement;
    # all_gather, reduce_scatter: 2)
    assert len(rows) == 2 * 11, p.stdout
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["meta"]["world_size"] == 3 and data["meta"]["agentcomm"] and data["meta"]["machine"]["cpus"]
    for row in data["rows"]:
        for b in ("agentcomm", "gloo"):
            assert row[b]["wrong"] == 0, row
            assert row[b]["time_us"] > 0
    with open(tmp_path / "out.csv") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 2 * 11 * 2 and {ln["backend"] for ln in lines} == {"agentcomm", "gloo"}
    assert (tmp_path / "out.png").stat().st_size > 10_000


def test_bench_compressed_backends_report_wire_bytes(tmp_path) -> None:
    schemes = ["agentcomm:topk=0.01", "agentcomm:dgc=0.05", "agentcomm:randomk=0.01", "agentcomm:q8",
               "agentcomm:q1", "agentcomm:bf16"]
    cmd = [sys.executable, "-m", "agentcomm.bench", "--backends", ",".join(schemes + ["agentcomm"]), "-W", "2",
           "-b", "64K", "-e", "256K", "-f", "4", "-n", "2", "-w", "1", "--collectives", "all_reduce,broadcast",
           "--csv", "out.csv", "--no-progress"]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr[-4000:]
    table = [ln.split() for ln in p.stdout.splitlines() if ln.strip().startswith(("64K", "256K"))]
    assert {row[1] for row in table} == set(schemes), p.stdout
    with open(tmp_path / "out.csv") as f:
        lines = list(csv.DictReader(f))
    for ln in lines:
        if ln["backend"] in schemes:
            assert ln["collective"] == "all_reduce" and float(ln["wire_bytes"]) > 0, ln
            # 2 ranks: a dense ring sends S per rank; top-k 1% sends ~8% of that, 8-bit ~26%, bf16 50%.
            ratio = float(ln["ratio"])
            expect = {"agentcomm:topk=0.01": 8, "agentcomm:q8": 3.5, "agentcomm:q1": 20, "agentcomm:bf16": 1.9}
            assert ratio >= expect.get(ln["backend"], 1.0), ln
    # broadcast has no compressed form: only plain agentcomm rows
    assert {ln["backend"] for ln in lines if ln["collective"] == "broadcast"} == {"agentcomm"}
    bad = [ln for ln in p.stdout.splitlines() if "Traceback" in ln]
    assert not bad, p.stdout
