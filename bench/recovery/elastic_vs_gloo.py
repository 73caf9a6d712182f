"""torchrun restarts resumed from a checkpoint, agentcomm beside Gloo (bench/RESULTS.md, issue 19).

Runs tests/python/test_elastic.py's worker under torchrun --max-restarts=1 with a worker killed
mid-training, for each backend, worker count, rendezvous and kind of death.

    python bench/recovery/elastic_vs_gloo.py
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tests" / "python"))
import test_elastic as te  # noqa: E402

CASES = [(2, "static", "exit"), (2, "c10d", "sigsegv"), (4, "c10d", "sigkill"), (4, "static", "sigsegv")]

if __name__ == "__main__":
    for backend in ("gloo", "agentcomm"):
        for nproc, rdzv, death in CASES:
            run, got = te.torchrun(pathlib.Path(tempfile.mkdtemp()), "killed", nproc, rdzv, death, backend=backend)
            errors = [line for line in (run.stdout + run.stderr).splitlines() if "Error" in line][-1:]
            print(backend, nproc, rdzv, death, "rc", run.returncode, "finished" if got is not None else "no result",
                  errors[0][:200] if errors and got is None else "", flush=True)
