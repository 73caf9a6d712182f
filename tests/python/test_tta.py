"""The time-to-accuracy runner (python -m agentcomm.bench.tta) on tiny configurations.

Differential: at W=2 DDP on agentcomm and on Gloo compute the same sums (a + b either way) from
the same start on the same batches, so their accuracy curves are equal point by point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import needs_namespaces

pytest.importorskip("sklearn")


def tta(args: list[str], tmp_path: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agentcomm.bench.tta", *args], cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=timeout)


def test_tiny_config_writes_json_table_and_plot(tmp_path: Path) -> None:
    config = {"task": "digits", "ranks": 2, "strategies": ["ddp-gloo", "ddp", "topk-ef", "async-avg", "ps-sync",
                                                       "ps-async"],
              "baseline": "ddp", "target": 0.99, "max_steps": 50, "eval_every": 25, "budget_s": 120,
              "out": str(tmp_path / "out")}
    (tmp_path / "run.json").write_text(json.dumps(config))
    p = tta(["--config", "run.json"], tmp_path)
    assert p.returncode == 0, p.stderr[-4000:]
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["strategy"] for r in report["results"]] == config["strategies"]
    assert report["config"]["target"] == 0.99 and report["link"] is None  # no emulated hosts: no link
    for r in report["results"]:
        assert r["world"] == 2 and r["steps"] == 50, r  # 0.99 is out of reach in 50 steps
        assert [pt["step"] for pt in r["curve"]] == [25, 50], r["curve"]
        assert all(0.0 <= pt["acc"] <= 1.0 and pt["loss"] > 0 for pt in r["curve"]), r["curve"]
        assert r["tta_s"] is None and r["final_acc"] == r["curve"][-1]["acc"]
        assert 0 < r["compute_s"] and 0 < r["step_s"] and r["time_s"] >= r["step_s"] * 50 * 0.5
    by = {r["strategy"]: r for r in report["results"]}
    assert [pt["acc"] for pt in by["ddp"]["curve"]] == [pt["acc"] for pt in by["ddp-gloo"]["curve"]]
    assert by["ddp"]["curve"][-1]["acc"] > 0.5  # it learns
    for ps in ("ps-sync", "ps-async"):  # the parameter server learns as well
        assert by[ps]["curve"][-1]["acc"] > 0.5, by[ps]["curve"]
    stats = by["topk-ef"]["stats"]
    assert stats and stats["raw_bytes"] > 5 * stats["sent_bytes"] > 0, stats  # top-k 1% sends far less
    assert by["ddp"]["stats"] is None
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| topk-ef | not reached |" in table and "speed-up vs ddp" in table, table
    assert (tmp_path / "out" / "accuracy.png").stat().st_size > 1000


def test_reaching_the_target_stops_early_and_bad_names_are_named(tmp_path: Path) -> None:
    p = tta(["--task", "digits", "--ranks", "2", "--strategies", "ddp", "--target", "0.5", "--max-steps", "400",
             "--eval-every", "10", "--out", "o", "--no-plot"], tmp_path)
    assert p.returncode == 0, p.stderr[-4000:]
    (r,) = json.loads((tmp_path / "o" / "results.json").read_text())["results"]
    assert r["tta_steps"] is not None and r["steps"] == r["tta_steps"] < 400, r
    assert r["curve"][-1]["acc"] >= 0.5 > max([pt["acc"] for pt in r["curve"][:-1]] + [0.0])
    assert not (tmp_path / "o" / "accuracy.png").exists()
    p = tta(["--strategies", "ddp,zip", "--ranks", "2"], tmp_path)
    assert p.returncode != 0 and "strategy 'zip': choose from" in p.stderr, p.stderr[-2000:]


def test_a_failing_strategy_is_reported_and_the_others_run(tmp_path: Path) -> None:
    # Rank 1 cuts its connections at op 40 of the agentcomm group: after the 30 ops of the
    # latency probe, inside ddp's training; ddp-gloo runs only the probe there.
    env = {**os.environ, "AGENTCOMM_FAULT": "drop:rank=1,op=40"}
    p = subprocess.run([sys.executable, "-m", "agentcomm.bench.tta", "--task", "digits", "--ranks", "2",
                        "--strategies", "ddp,ddp-gloo", "--max-steps", "30", "--eval-every", "10", "--out", "o",
                        "--no-plot"], cwd=str(tmp_path), capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode != 0 and "1 strategy run(s) failed: ddp (exit code 1)" in p.stderr, p.stderr[-3000:]
    report = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [r["strategy"] for r in report["results"]] == ["ddp-gloo"] and report["results"][0]["steps"] == 30
    assert report["failed"] == [{"strategy": "ddp", "exit_code": 1}], report["failed"]
    assert "ddp: its ranks exited with code 1 before writing results" in (tmp_path / "o" / "table.md").read_text()


@needs_namespaces
def test_on_an_emulated_cluster_the_link_and_wire_bytes_are_measured(tmp_path: Path) -> None:
    p = tta(["--task", "digits", "--cluster", "2x1@100mbit", "--strategies", "ddp,q8-ef", "--max-steps", "20",
             "--eval-every", "10", "--target", "0.99", "--out", "o", "--no-plot"], tmp_path)
    assert p.returncode == 0, p.stderr[-4000:]
    report = json.loads((tmp_path / "o" / "results.json").read_text())
    link = report["link"]
    assert 70e6 <= link["rate_bps"] <= 120e6 and link["rtt_s"] > 0, link
    by = {r["strategy"]: r for r in report["results"]}
    dense = 2 * 20 * report["param_bytes"]  # at W=2 each of the 2 hosts sends one model's bytes per step
    assert 0.9 * dense <= by["ddp"]["wire_bytes"] <= 1.5 * dense, (by["ddp"]["wire_bytes"], dense)
    assert by["q8-ef"]["wire_bytes"] < 0.6 * by["ddp"]["wire_bytes"], by["q8-ef"]["wire_bytes"]
    assert "predicted step (ms)" in (tmp_path / "o" / "table.md").read_text()
