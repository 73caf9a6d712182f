"""An emulated cluster on one Linux box: hosts as network namespaces behind one switch.

Each emulated host is a network namespace with one interface, ``ac0``, cabled by a veth pair
to a bridge in a switch namespace. A host's link rate is a token bucket (``tc tbf``) on both
ends of its cable, so it limits what the host sends and what it receives, as a NIC does. A
host's ranks share its namespace, so agentcomm sees them as one host (shared memory inside,
TCP to the others) and Gloo sees distinct addresses. Nothing outside the namespaces made here
is touched: the addresses (10.233.0.0/16) exist only inside them.

Invariants:
  * every namespace is named ``acemu<pid>x<n>...`` after the emulator's process; teardown
    removes all of them, and :func:`remove_stale` removes those of emulators that died
    without tearing down (``python -m agentcomm.emulate --cleanup``);
  * every rank runs in a session of its own, so teardown can kill it and whatever it spawned
    before the namespaces go (a namespace with processes in it outlives its name).

Compute stragglers: ``ClusterSpec(slow_ranks={3: 2.0})`` gives rank 3 the environment
``AGENTCOMM_EMULATE_SLOWDOWN=2.0``; a training loop that wraps its compute in
:class:`Slowdown` takes twice as long there (the bench's runners do).

Example (root)::

    spec = ClusterSpec.parse("4x2@1gbit")            # 4 hosts x 2 ranks, 1 Gbit/s links
    spec.host_rates[3] = "100mbit"                     # one slow host
    with Cluster(spec) as cluster:
        code = cluster.launch([sys.executable, "train.py"])   # RANK, WORLD_SIZE, MASTER_ADDR... set
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Sequence

log = logging.getLogger("agentcomm.emulate")

INTERFACE = "ac0"          # every host's one interface (names are per namespace)
SUBNET_PREFIX = "10.233"   # 10.233.0.0/16, inside the namespaces only
NAME_PREFIX = "acemu"
SLOWDOWN_ENV = "AGENTCOMM_EMULATE_SLOWDOWN"
_counter = itertools.count()


class EmulateError(RuntimeError):
    """The emulated cluster cannot be built or used as asked; the message says why."""


_RATE = re.compile(r"^(\d+(?:\.\d+)?)([kmgt]?)(bit|bps)$", re.IGNORECASE)
_SCALE = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def parse_rate(text: str) -> int:
    """A link rate in tc's words (``100mbit``, ``1gbit``, ``125mbps`` = bytes) as bits per second.

    Example::

        assert parse_rate("1gbit") == 1_000_000_000 and parse_rate("1mbps") == 8_000_000
    """
    m = _RATE.match(text.strip())
    if not m:
        raise EmulateError(f"bad link rate {text!r}: expected a number and a unit such as 100mbit, 1gbit, 10gbit "
                           "(bit = bits per second, bps = bytes per second)")
    bits = float(m.group(1)) * _SCALE[m.group(2).lower()] * (8 if m.group(3).lower() == "bps" else 1)
    if bits < 8000:
        raise EmulateError(f"link rate {text!r} is below 8kbit, too slow to carry a handshake")
    return int(bits)


def parse_delay(text: str) -> float:
    """A one-way link delay (``5ms``, ``200us``, ``0.1s``) in seconds."""
    m = re.match(r"^(\d+(?:\.\d+)?)(us|ms|s)$", text.strip())
    if not m:
        raise EmulateError(f"bad link delay {text!r}: expected e.g. 200us, 5ms or 0.1s")
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[m.group(2)]


@dataclass
class ClusterSpec:
    """What to emulate: ``hosts`` x ``ranks_per_host`` ranks, links, stragglers.

    ``rate`` is every host's link rate (None: unshaped, veth speed); ``host_rates`` overrides
    it per host index; ``delay`` is a one-way delay per link (needs the kernel's sch_netem);
    ``slow_ranks`` maps a rank to its compute slowdown factor (see :class:`Slowdown`).

    Example::

        ClusterSpec(hosts=2, ranks_per_host=2, rate="1gbit", host_rates={1: "100mbit"})
    """

    hosts: int
    ranks_per_host: int = 1
    rate: str | None = None
    host_rates: dict[int, str] = field(default_factory=dict)
    delay: str | None = None
    slow_ranks: dict[int, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "ClusterSpec":
        """``HxR[@RATE]``, e.g. ``4x2@1gbit``: 4 hosts of 2 ranks behind 1 Gbit/s links."""
        m = re.match(r"^(\d+)x(\d+)(?:@(\S+))?$", text.strip())
        if not m:
            raise EmulateError(f"bad cluster {text!r}: expected HOSTSxRANKS[@RATE], e.g. 4x2@1gbit")
        spec = cls(hosts=int(m.group(1)), ranks_per_host=int(m.group(2)), rate=m.group(3))
        spec.validate()
        return spec

    @property
    def world_size(self) -> int:
        return self.hosts * self.ranks_per_host

    def host_of(self, rank: int) -> int:
        return rank // self.ranks_per_host

    def rate_of(self, host: int) -> str | None:
        return self.host_rates.get(host, self.rate)

    def validate(self) -> None:
        """Raise :class:`EmulateError` naming the first bad field."""
        if not 1 <= self.hosts <= 1000:
            raise EmulateError(f"hosts={self.hosts}: expected 1..1000")
        if not 1 <= self.ranks_per_host <= 256:
            raise EmulateError(f"ranks_per_host={self.ranks_per_host}: expected 1..256")
        for host, rate in self.host_rates.items():
            if not 0 <= host < self.hosts:
                raise EmulateError(f"host rate for host {host}: there are hosts 0..{self.hosts - 1}")
            parse_rate(rate)
        if self.rate is not None:
            parse_rate(self.rate)
        if self.delay is not None:
            parse_delay(self.delay)
        for rank, factor in self.slow_ranks.items():
            if not 0 <= rank < self.world_size:
                raise EmulateError(f"slow rank {rank}: there are ranks 0..{self.world_size - 1}")
            if not (math.isfinite(factor) and factor >= 1.0):
                raise EmulateError(f"slow rank {rank}: factor {factor} must be a finite number >= 1")

    def describe(self) -> str:
        links = self.rate or "unshaped"
        extra = "".join(f", host {h} at {r}" for h, r in sorted(self.host_rates.items()))
        delay = f", {self.delay} delay" if self.delay else ""
        slow = "".join(f", rank {r} {f:g}x slower" for r, f in sorted(self.slow_ranks.items()))
        return f"{self.hosts} hosts x {self.ranks_per_host} ranks, links {links}{extra}{delay}{slow}"


def index_value(kind: str, convert: Callable[[str], Any]) -> Callable[[str], tuple[int, Any]]:
    """An argparse ``type`` for ``INDEX=VALUE`` options (``--host-rate 3=100mbit``,
    ``--slow-rank 5=2.0``): the pair, or an error naming the option and the bad text.

    Example::

        p.add_argument("--slow-rank", action="append", type=index_value("--slow-rank", float))
    """

    def parse(text: str) -> tuple[int, Any]:
        key, sep, value = text.partition("=")
        if not sep or not key.strip().isdigit():
            raise argparse.ArgumentTypeError(f"{kind} {text!r}: expected INDEX=VALUE")
        try:
            return int(key), convert(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{kind} {text!r}: bad value {value!r}") from None

    return parse


def host_address(host: int) -> str:
    """Host ``host``'s address on the emulated network (inside the namespaces only)."""
    n = host + 1
    return f"{SUBNET_PREFIX}.{n // 256}.{n % 256}"


def _run(cmd: Sequence[str]) -> None:
    try:
        subprocess.run(list(cmd), check=True, capture_output=True, text=True, timeout=60)
    except subprocess.CalledProcessError as e:
        raise EmulateError(f"`{' '.join(cmd)}` failed: {(e.stderr or e.stdout).strip()}") from None
    except subprocess.TimeoutExpired:
        raise EmulateError(f"`{' '.join(cmd)}` did not finish in 60 s") from None


def _namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Delete the namespaces of emulators whose process is gone; returns their names."""
    gone = []
    for name in _namespaces():
        m = re.match(rf"^{NAME_PREFIX}(\d+)x\d+(?:h\d+|sw)$", name)
        if m and not _alive(int(m.group(1))):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
            gone.append(name)
    return gone


class Cluster:
    """The namespaces, cables and rate limits of one :class:`ClusterSpec`, while in a ``with``.

    Example::

        with Cluster(ClusterSpec(hosts=2, rate="100mbit")) as c:
            assert c.launch(["python", "-c", "import os; print(os.environ['RANK'])"]) == 0
    """

    def __init__(self, spec: ClusterSpec, master_port: int = 29500, isolate: bool = True) -> None:
        spec.validate()
        if not isolate and (spec.hosts != 1 or spec.rate or spec.host_rates or spec.delay):
            raise EmulateError("only one host without links can run unisolated (on this machine's own network)")
        self.spec = spec
        self.master_port = master_port
        self.isolate = isolate
        tag = f"{NAME_PREFIX}{os.getpid()}x{next(_counter)}"
        self.switch = f"{tag}sw"
        self.namespaces = [f"{tag}h{h}" for h in range(spec.hosts)]
        self._made: list[str] = []
        self._up = False
        self._procs: list[subprocess.Popen] = []

    @classmethod
    def local(cls, ranks: int, slow_ranks: dict[int, float] | None = None) -> "Cluster":
        """``ranks`` ranks on this machine as it is (no namespaces, no root): the same launch,
        environment and teardown, for runs that need no emulated network."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return cls(ClusterSpec(hosts=1, ranks_per_host=ranks, slow_ranks=dict(slow_ranks or {})), port, isolate=False)

    # -- life ---------------------------------------------------------------------------------
    def __enter__(self) -> "Cluster":
        if not self.isolate:
            self._up = True
            return self
        if os.geteuid() != 0:
            raise EmulateError("an emulated cluster needs root (network namespaces, veth pairs, tc)")
        for tool in ("ip", "tc"):
            if shutil.which(tool) is None:
                raise EmulateError(f"an emulated cluster needs iproute2's `{tool}`, which is not on PATH")
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        self._up = True
        log.info("emulated cluster up: %s", self.spec.describe())
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _build(self) -> None:
        sw = self.switch
        _run(["ip", "netns", "add", sw])
        self._made.append(sw)
        _run(["ip", "-n", sw, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", sw, "link", "set", "br0", "up"])
        for h, ns in enumerate(self.namespaces):
            _run(["ip", "netns", "add", ns])
            self._made.append(ns)
            port = f"h{h}"
            _run(["ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", INTERFACE, "netns", ns])
            _run(["ip", "-n", sw, "link", "set", port, "master", "br0"])
            _run(["ip", "-n", sw, "link", "set", port, "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{host_address(h)}/16", "dev", INTERFACE])
            _run(["ip", "-n", ns, "link", "set", INTERFACE, "up"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            # Both ends: the host's sending (its ac0) and its receiving (the switch's port).
            for where, dev in ((ns, INTERFACE), (sw, port)):
                self._shape(where, dev, self.spec.rate_of(h))

    def _shape(self, ns: str, dev: str, rate: str | None) -> None:
        tbf: list[str] = []
        if rate is not None:
            bits = parse_rate(rate)
            # The bucket holds 2 ms of traffic (at least 32 KiB, so a GSO burst passes); the
            # queue holds 50 ms, then drops, as a switch port's buffer does.
            burst = max(32 * 1024, bits // 8 // 500)
            tbf = ["tbf", "rate", f"{bits}bit", "burst", str(burst), "latency", "50ms"]
        if self.spec.delay is not None:
            delay_us = int(parse_delay(self.spec.delay) * 1e6)
            try:
                _run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem",
                      "delay", f"{delay_us}us"])
            except EmulateError as e:
                raise EmulateError(
                    "a link delay needs the kernel's netem queueing discipline (sch_netem), which this "
                    f"kernel does not offer ({e}); run without a delay, or delay chosen ops with "
                    "AGENTCOMM_FAULT=delay:rank=R,op=N,ms=M") from None
            if tbf:
                _run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", *tbf])
        elif tbf:
            _run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", *tbf])

    def close(self) -> None:
        """Stop every process started here, then delete every namespace made here (idempotent)."""
        self._stop(self._procs)
        self._procs.clear()
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self._made.clear()
        self._up = False

    # -- processes ----------------------------------------------------------------------------
    def rank_env(self, rank: int) -> dict[str, str]:
        """torchrun's environment for ``rank`` (plus GLOO_SOCKET_IFNAME and the emulator's own)."""
        spec = self.spec
        host = spec.host_of(rank)
        env = {
            "RANK": str(rank), "WORLD_SIZE": str(spec.world_size),
            "LOCAL_RANK": str(rank % spec.ranks_per_host), "LOCAL_WORLD_SIZE": str(spec.ranks_per_host),
            "GROUP_RANK": str(host), "NODE_RANK": str(host), "ROLE_RANK": str(rank),
            "MASTER_ADDR": host_address(0) if self.isolate else "127.0.0.1", "MASTER_PORT": str(self.master_port),
        }
        if self.isolate:
            # Gloo resolves the host name (127.0.0.1 inside a namespace): name its interface.
            env.update(GLOO_SOCKET_IFNAME=INTERFACE, AGENTCOMM_EMULATE_HOST=str(host))
        if rank in spec.slow_ranks:
            env[SLOWDOWN_ENV] = repr(float(spec.slow_ranks[rank]))
        return env

    def spawn(self, host: int, cmd: Sequence[str], env: dict[str, str] | None = None,
              stdout: IO[Any] | int | None = None, stderr: IO[Any] | int | None = None,
              cwd: str | None = None) -> subprocess.Popen:
        """Start ``cmd`` inside host ``host``'s namespace (its own session; stopped by close())."""
        if not self._up:
            raise EmulateError("the cluster is not up: use it inside `with Cluster(spec) as cluster:`")
        if not 0 <= host < self.spec.hosts:
            raise EmulateError(f"host {host}: there are hosts 0..{self.spec.hosts - 1}")
        where = ["ip", "netns", "exec", self.namespaces[host]] if self.isolate else []
        proc = subprocess.Popen([*where, *cmd], env=env, stdout=stdout,
                                stderr=stderr, cwd=cwd, start_new_session=True)
        self._procs.append(proc)
        return proc

    def launch(self, cmd: Sequence[str], env: dict[str, str] | None = None, timeout: float | None = None,
               cwd: str | None = None, stdout: IO[Any] | int | None = None,
               stderr: IO[Any] | int | None = None) -> int:
        """Run ``cmd`` once per rank, each in its host's namespace with :meth:`rank_env`.

        Returns 0 when every rank exits 0. When one fails the others are stopped at once (as
        torchrun does) and its exit code is returned; past ``timeout`` seconds every rank is
        stopped and 124 returned. Ctrl-C stops them too and propagates.
        """
        base = dict(os.environ if env is None else env)
        procs = [self.spawn(self.spec.host_of(r), cmd, {**base, **self.rank_env(r)}, stdout, stderr, cwd)
                 for r in range(self.spec.world_size)]
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                codes = [p.poll() for p in procs]
                failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
                if failed:
                    rank, code = failed[0]
                    log.error("rank %d exited with code %d; stopping the other ranks", rank, code)
                    return code
                if all(c == 0 for c in codes):
                    return 0
                if deadline is not None and time.monotonic() > deadline:
                    log.error("ranks still running after %.0f s; stopping them", timeout)
                    return 124
                time.sleep(0.05)
        finally:
            self._stop(procs)

    @staticmethod
    def _stop(procs: Sequence[subprocess.Popen]) -> None:
        live = [p for p in procs if p.poll() is None]
        for p in live:
            _signal_group(p, signal.SIGTERM)
        end = time.monotonic() + 5.0
        for p in live:
            try:
                p.wait(timeout=max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in procs:
            _signal_group(p, signal.SIGKILL)  # the rank's children too, even when it exited
            if p.poll() is None:
                p.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def slowdown_factor() -> float:
    """This rank's compute slowdown set by the emulator (``AGENTCOMM_EMULATE_SLOWDOWN``), else 1."""
    text = os.environ.get(SLOWDOWN_ENV, "")
    if not text:
        return 1.0
    try:
        factor = float(text)
    except ValueError:
        factor = float("nan")
    if not (math.isfinite(factor) and factor >= 1.0):
        raise ValueError(f"{SLOWDOWN_ENV}={text!r}: expected a number >= 1 (how many times slower this rank computes)")
    return factor


class Slowdown:
    """Stretch a block of compute by a factor: after it ran for t, sleep (factor - 1) t.

    Sleeping rather than burning the CPU keeps a slow rank from slowing the others on a box
    with few cores, as a slow machine would not.

    Example::

        slow = Slowdown()            # AGENTCOMM_EMULATE_SLOWDOWN, else 1 (a no-op)
        for x, y in loader:
            with slow:
                loss_fn(model(x), y).backward()
    """

    def __init__(self, factor: float | None = None) -> None:
        self.factor = slowdown_factor() if factor is None else float(factor)
        if not (math.isfinite(self.factor) and self.factor >= 1.0):
            raise ValueError(f"Slowdown factor {factor}: expected a number >= 1")
        self._start = 0.0

    def __enter__(self) -> "Slowdown":
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.factor > 1.0:
            time.sleep((self.factor - 1.0) * (time.perf_counter() - self._start))


__all__ = ["Cluster", "ClusterSpec", "EmulateError", "Slowdown", "host_address", "index_value", "parse_delay", "parse_rate",
           "remove_stale", "slowdown_factor"]
