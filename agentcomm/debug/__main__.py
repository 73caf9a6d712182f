"""``python -m agentcomm.debug analyze DIR``: which ranks are behind, and on which collective.

Example:
    $ AGENTCOMM_TRACE_DIR=/tmp/traces torchrun --nproc-per-node 4 train.py   # a rank hangs
    $ python -m agentcomm.debug analyze /tmp/traces
    group '0' (4 ranks):
      rank 2 is behind: its last collective is #41 all_reduce(Float x 1000, completed); ranks 0,1,3 reached #42 ...
"""

from __future__ import annotations

import argparse
import sys

from . import analyze


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentcomm.debug", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("analyze", help="read every rank's dump in DIR and report lags and desyncs")
    a.add_argument("dir", help="the directory AGENTCOMM_TRACE_DIR named (or agentcomm.debug.dump wrote to)")
    args = parser.parse_args(argv)
    try:
        report = analyze(args.dir)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report)
    return 0 if all(g.ok() for g in report.groups) else 1


if __name__ == "__main__":
    sys.exit(main())
