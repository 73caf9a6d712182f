"""The flight recorder: what each rank's groups were doing when something went wrong.

Every agentcomm group keeps its last ``AGENTCOMM_TRACE_BUFFER`` operations (default 2000;
0 turns recording off) in a ring buffer: sequence number, collective, dtype, element
count, algorithm, state (scheduled / started / completed / failed), timestamps and the
error. When a group fails (a timeout, a peer's failure, ``abort()``) and
``AGENTCOMM_TRACE_DIR`` is set, every rank writes all its groups' records to
``$AGENTCOMM_TRACE_DIR/agentcomm_trace_rank<R>_pid<P>.json``; :func:`dump` writes the same
on demand. :func:`analyze` (or ``python -m agentcomm.debug analyze DIR``) reads every
rank's file and says which ranks are behind, on which collective, and which ranks called
something different at the same sequence number (a desync).

Example:
    >>> import agentcomm.debug
    >>> agentcomm.debug.dump("/tmp/traces")             # doctest: +SKIP
    '/tmp/traces/agentcomm_trace_rank0_pid4242.json'
    >>> print(agentcomm.debug.analyze("/tmp/traces"))   # doctest: +SKIP
    group '1' (4 ranks): rank 2 is behind: ...
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from typing import Optional

from .. import _C

__all__ = ["Desync", "GroupReport", "Lag", "Report", "analyze", "dump", "load", "process_costs", "records"]

# Collectives whose element count must be the same on every rank; elsewhere
# (gather, scatter, all_to_all) ranks legitimately pass different sizes.
_SAME_COUNT = {
    "all_reduce", "all_reduce_coalesced", "broadcast", "reduce", "all_gather", "all_gather_into_tensor",
    "reduce_scatter", "reduce_scatter_tensor", "barrier", "sparse_all_reduce", "quantized_all_reduce",
}


# The error of an op issued after its group had already failed (algorithms/communicator.cc's kUnusable):
# such records say nothing about where the rank was when the group failed.
_AFTER_FAILURE = "the communicator is unusable after an earlier error"


def process_costs() -> dict[str, float]:
    """What this process holds now: its threads, its sockets (descriptors that are sockets,
    the TCPStore's included) and its resident memory in MB, read from ``/proc/self`` (Linux).

    Example:
        >>> import agentcomm.debug
        >>> agentcomm.debug.process_costs()   # doctest: +SKIP
        {'threads': 4, 'sockets': 16, 'rss_mb': 223.1}
    """
    threads = len(os.listdir("/proc/self/task"))
    sockets = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            sockets += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:  # closed meanwhile (the listing's own descriptor, for one)
            pass
    with open("/proc/self/status") as status:
        rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return {"threads": threads, "sockets": sockets, "rss_mb": rss_kb / 1024}


def records(reason: str = "on demand") -> dict:
    """This process's flight records: every live agentcomm group, as the dump's dictionary.

    Example:
        >>> import agentcomm.debug
        >>> sorted(agentcomm.debug.records())[:3]
        ['groups', 'host', 'pid']
    """
    return json.loads(_C.flight_records(reason))


def dump(dir: Optional[str] = None, reason: str = "on demand") -> str:
    """Writes this process's flight records to ``dir`` (default ``$AGENTCOMM_TRACE_DIR``); returns the file.

    Call it on every rank (e.g. from a signal handler or a watchdog) to see where a running
    job stands; failed groups dump by themselves when ``AGENTCOMM_TRACE_DIR`` is set.

    Example:
        >>> import agentcomm.debug, tempfile
        >>> agentcomm.debug.dump(tempfile.mkdtemp()).endswith(".json")
        True
    """
    target = dir if dir is not None else os.environ.get("AGENTCOMM_TRACE_DIR", "")
    if not target:
        raise ValueError("agentcomm.debug.dump: no directory given and AGENTCOMM_TRACE_DIR is not set")
    return _C.write_flight_records(target, reason)


def load(dir: str) -> list[dict]:
    """Every dump in ``dir`` (one dictionary per process), oldest first.

    Example:
        >>> import agentcomm.debug, tempfile
        >>> agentcomm.debug.load(tempfile.mkdtemp())
        []
    """
    if not os.path.isdir(dir):
        raise ValueError(f"agentcomm.debug: {dir!r} is not a directory")
    dumps = []
    for path in sorted(glob.glob(os.path.join(dir, "agentcomm_trace_*.json"))):
        with open(path) as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"agentcomm.debug: {path} is not a flight-recorder dump: {e}") from None
        d["path"] = path
        dumps.append(d)
    return sorted(dumps, key=lambda d: d.get("time_ns", 0))


@dataclass
class Lag:
    """A rank that never issued the group's latest collective (or has not finished it)."""

    rank: int
    last_seq: int      # its highest sequence number (0: none recorded)
    last_op: str       # e.g. "all_reduce(Float x 1000, completed)"
    frontier_seq: int  # the highest sequence number any rank reached
    frontier_op: str
    frontier_ranks: list[int]

    def __str__(self) -> str:
        mine = f"its last collective is #{self.last_seq} {self.last_op}" if self.last_seq else "it recorded none"
        return (f"rank {self.rank} is behind: {mine}; ranks {_ranks(self.frontier_ranks)} reached "
                f"#{self.frontier_seq} {self.frontier_op}")


@dataclass
class Desync:
    """Ranks that called different collectives (or sizes) at the same sequence number."""

    seq: int
    calls: dict[str, list[int]]  # what was called -> the ranks that called it

    def odd_ranks(self) -> list[int]:
        """The ranks in the smaller camps: the likely culprits."""
        camps = sorted(self.calls.values(), key=len, reverse=True)
        return sorted(r for camp in camps[1:] for r in camp)

    def __str__(self) -> str:
        parts = "; ".join(f"ranks {_ranks(rs)} called {what}" for what, rs in self.calls.items())
        return f"desync at #{self.seq}: {parts}"


@dataclass
class GroupReport:
    """One group's state across the ranks that dumped it."""

    name: str
    size: int
    missing_ranks: list[int] = field(default_factory=list)
    behind: list[Lag] = field(default_factory=list)
    desyncs: list[Desync] = field(default_factory=list)
    waiting: dict[int, str] = field(default_factory=dict)  # rank -> the op it was inside when it dumped
    errors: dict[int, str] = field(default_factory=dict)   # rank -> its first failed op's error

    def ok(self) -> bool:
        return not (self.missing_ranks or self.behind or self.desyncs or self.waiting or self.errors)

    def __str__(self) -> str:
        lines = [f"group '{self.name}' ({self.size} ranks):"]
        if self.missing_ranks:
            lines.append(f"  no dump from ranks {_ranks(self.missing_ranks)} (not failed, killed, or elsewhere)")
        lines += [f"  {d}" for d in self.desyncs]
        lines += [f"  {lag}" for lag in self.behind]
        lines += [f"  rank {r} was inside {what}" for r, what in sorted(self.waiting.items())]
        lines += [f"  rank {r} failed: {err}" for r, err in sorted(self.errors.items())]
        if self.ok():
            lines.append("  every rank completed the same collectives")
        return "\n".join(lines)


@dataclass
class Report:
    """What :func:`analyze` found, per group."""

    groups: list[GroupReport]

    def group(self, name: str) -> GroupReport:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"no group {name!r} in the dumps (groups: {[g.name for g in self.groups]})")

    def __str__(self) -> str:
        return "\n".join(str(g) for g in self.groups) if self.groups else "no groups in the dumps"


def _ranks(rs: list[int]) -> str:
    return ",".join(str(r) for r in sorted(rs))


def _describe(e: dict) -> str:
    return f"{e['op']}({e['dtype'] or '-'} x {e['count']}, {e['state']})"


def _signature(e: dict) -> str:
    if e["op"] in _SAME_COUNT:
        return f"{e['op']}({e['dtype'] or '-'} x {e['count']})"
    return f"{e['op']}({e['dtype'] or '-'})"


def analyze(dir: str) -> Report:
    """Lines up every rank's dump in ``dir`` by group and sequence number.

    Example:
        >>> import agentcomm.debug, tempfile
        >>> str(agentcomm.debug.analyze(tempfile.mkdtemp()))
        'no groups in the dumps'
    """
    # (group name, size) -> group rank -> that rank's newest dump of the group.
    groups: dict[tuple[str, int], dict[int, dict]] = {}
    for d in load(dir):  # oldest first: a later dump of the same rank replaces an earlier one
        for g in d.get("groups", []):
            groups.setdefault((g["name"], g["size"]), {})[g["rank"]] = g
    reports = []
    for (name, size), by_rank in sorted(groups.items()):
        rep = GroupReport(name=name, size=size, missing_ranks=sorted(set(range(size)) - set(by_rank)))
        colls = {r: {e["seq"]: e for e in g["entries"] if not e["p2p"] and _AFTER_FAILURE not in e["error"]}
                 for r, g in by_rank.items()}
        # Desyncs: the same sequence number, different calls.
        for seq in sorted({s for ops in colls.values() for s in ops}):
            calls: dict[str, list[int]] = {}
            for r, ops in colls.items():
                if seq in ops:
                    calls.setdefault(_signature(ops[seq]), []).append(r)
            if len(calls) > 1:
                rep.desyncs.append(Desync(seq, {k: sorted(v) for k, v in calls.items()}))
        # Lags: ranks that never issued the highest sequence number any rank reached.
        last = {r: max(ops) if ops else 0 for r, ops in colls.items()}
        if last:
            top = max(last.values())
            leaders = sorted(r for r, s in last.items() if s == top)
            top_op = _describe(colls[leaders[0]][top]) if top else ""
            for r, s in sorted(last.items()):
                if s < top:
                    rep.behind.append(Lag(r, s, _describe(colls[r][s]) if s else "", top, top_op, leaders))
        for r, g in by_rank.items():
            for e in (e for e in g["entries"] if _AFTER_FAILURE not in e["error"]):  # oldest first
                if e["state"] in ("scheduled", "started") and r not in rep.waiting:
                    peer = f" with rank {e['peer']}" if e["p2p"] and e["peer"] >= 0 else ""
                    seq = f"#{e['seq']} " if not e["p2p"] else ""
                    rep.waiting[r] = f"{seq}{_describe(e)}{peer}"
                if e["state"] == "failed" and r not in rep.errors:
                    rep.errors[r] = f"{_describe(e)}: {e['error']}"
        reports.append(rep)
    return Report(reports)
