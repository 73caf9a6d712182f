"""Run a command once per rank on an emulated cluster (root on Linux), then tear it down.

    python -m agentcomm.emulate --hosts 4 --ranks-per-host 2 --rate 1gbit --host-rate 3=100mbit \\
        --slow-rank 5=2.0 -- python train.py --epochs 3
    python -m agentcomm.emulate --cluster 4x2@1gbit -- python -m agentcomm.bench -b 4K -e 64M
    python -m agentcomm.emulate --cleanup      # remove namespaces left by an emulator that was killed

Every rank gets torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...). The
exit code is the first failing rank's (the others are stopped at once), 124 after --timeout,
130 after Ctrl-C; the namespaces are gone in every case.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from agentcomm.emulate import Cluster, ClusterSpec, EmulateError, index_value, remove_stale


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m agentcomm.emulate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cluster", help="HOSTSxRANKS[@RATE], e.g. 4x2@1gbit (instead of the next three)")
    p.add_argument("--hosts", type=int, default=2)
    p.add_argument("--ranks-per-host", type=int, default=1)
    p.add_argument("--rate", help="every host's link rate, e.g. 1gbit (default: unshaped)")
    p.add_argument("--host-rate", action="append", default=[], type=index_value("--host-rate", str),
                   metavar="HOST=RATE", help="one host's link rate, e.g. 3=100mbit (repeatable)")
    p.add_argument("--delay", help="one-way delay per link, e.g. 5ms (needs the kernel's sch_netem)")
    p.add_argument("--slow-rank", action="append", default=[], type=index_value("--slow-rank", float),
                   metavar="RANK=FACTOR", help="that rank computes FACTOR times slower (repeatable)")
    p.add_argument("--master-port", type=int, default=29500)
    p.add_argument("--timeout", type=float, default=None, help="stop every rank after this many seconds")
    p.add_argument("--cleanup", action="store_true", help="remove namespaces of dead emulators, then exit")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command each rank runs")
    return p


def spec_from(args: argparse.Namespace) -> ClusterSpec:
    spec = ClusterSpec.parse(args.cluster) if args.cluster else ClusterSpec(
        hosts=args.hosts, ranks_per_host=args.ranks_per_host, rate=args.rate)
    spec.host_rates.update(dict(args.host_rate))
    spec.slow_ranks.update(dict(args.slow_rank))
    spec.delay = args.delay
    spec.validate()
    return spec


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the cluster's teardown


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[agentcomm.emulate] %(message)s")
    if args.cleanup:
        gone = remove_stale()
        logging.info("removed %d stale namespace(s)%s", len(gone), (": " + " ".join(gone)) if gone else "")
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        build_parser().error("no command: put it after --")
    signal.signal(signal.SIGTERM, _terminate)
    try:
        spec = spec_from(args)
        with Cluster(spec, master_port=args.master_port) as cluster:
            return cluster.launch(command, timeout=args.timeout)
    except EmulateError as e:
        logging.error("%s", e)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
