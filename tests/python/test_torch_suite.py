"""A broad selection of torch's own distributed tests, run against agentcomm.

The list, and why the rest is left out, is in torch_suite/selection.txt. Each
of torch's tests spawns its own ranks (WORLD_SIZE=2), so the selection runs in
one pytest subprocess; this test fails if any selected test fails, and prints
the suite's own skip reasons.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_suite")


def selected(name: str) -> list[str]:
    with open(os.path.join(HERE, name)) as f:
        return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


def run_selection(tmp_path, selection: str, extra_env: dict) -> tuple[list, list, list]:
    report = tmp_path / (selection + ".xml")
    ids = [f"torch_distributed_suite.py::TestAgentcommWithSpawn::{name}" for name in selected(selection)]
    env = dict(os.environ, WORLD_SIZE="2", OMP_NUM_THREADS="1", **extra_env)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                           "--timeout=600", *ids], cwd=HERE, env=env, capture_output=True, text=True, timeout=1500)
    assert report.exists(), proc.stdout[-4000:] + proc.stderr[-4000:]
    passed, skipped, failed = [], [], []
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("name")
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            failed.append(f"{name}: {(bad.get('message') or '')[:500]}")
        elif case.find("skipped") is not None:
            skipped.append(f"{name}: {case.find('skipped').get('message')}")
        else:
            passed.append(name)
    assert len(passed) + len(skipped) + len(failed) == len(ids), f"ran {len(passed) + len(skipped)} of {len(ids)}"
    return passed, skipped, failed


def test_torch_distributed_suite(tmp_path) -> None:
    passed, skipped, failed = run_selection(tmp_path, "selection.txt", {})
    init = f"file://{tmp_path}/as_gloo_init"
    p2, s2, f2 = run_selection(tmp_path, "selection_as_gloo.txt", {"AGENTCOMM_AS_GLOO": "1", "INIT_METHOD": init})
    passed, skipped, failed = passed + p2, skipped + s2, failed + f2
    print(f"torch suite: {len(passed)} passed, {len(skipped)} skipped by the suite's own rules, {len(failed)} failed")
    for s in skipped:
        print("  skipped", s)
    assert not failed, "\n".join(failed)
    assert len(passed) >= 45, f"only {len(passed)} passed; skipped: {skipped}"
