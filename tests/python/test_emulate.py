"""The emulated cluster (python -m agentcomm.emulate): setup, teardown on every exit, link rates.

Needs root and iproute2 (CI has both); the parsing tests run anywhere. Each test checks that
nothing is left: no namespace of the emulator's, no process of the ranks' (their children
included).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import needs_namespaces

from agentcomm.emulate import Cluster, ClusterSpec, EmulateError, Slowdown, parse_delay, parse_rate, slowdown_factor



def namespaces_of(pid: int) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"acemu{pid}x")]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (its parent, the emulator, has not reaped it yet).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def emulate(args: list[str], tmp_path: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "agentcomm.emulate", *args], cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


# A rank that records its environment and the pid of a child it leaves running, then does
# what argv[1] says: "ok", "fail" (exit 3 on rank 1), or "hang".
RANK_SCRIPT = r"""
import json, os, subprocess, sys, time
rank = int(os.environ["RANK"])
child = subprocess.Popen(["sleep", "300"])
keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
        "GLOO_SOCKET_IFNAME", "AGENTCOMM_EMULATE_HOST", "AGENTCOMM_EMULATE_SLOWDOWN")
addrs = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", "ac0"], capture_output=True, text=True).stdout
info = {k: os.environ.get(k) for k in keys}
info.update(pid=os.getpid(), child=child.pid, addr=addrs.split()[3] if addrs else None)
open(f"rank{rank}.json", "w").write(json.dumps(info))
mode = sys.argv[1]
if mode == "fail" and rank == 1:
    time.sleep(0.5)
    sys.exit(3)
if mode in ("fail", "hang"):
    time.sleep(300)
"""


def rank_infos(tmp_path: Path, world: int) -> list[dict]:
    import json
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]


def assert_nothing_left(emulator_pid: int, infos: list[dict]) -> None:
    assert namespaces_of(emulator_pid) == [], namespaces_of(emulator_pid)
    for info in infos:
        assert not alive(info["pid"]) and not alive(info["child"]), info


# ---- parsing (anywhere) ---------------------------------------------------------------------
def test_rates_delays_and_clusters_parse_or_are_named() -> None:
    assert parse_rate("1gbit") == 10**9 and parse_rate("100Mbit") == 10**8 and parse_rate("1mbps") == 8 * 10**6
    assert parse_rate("2.5gbit") == 25 * 10**8
    assert parse_delay("5ms") == pytest.approx(0.005) and parse_delay("200us") == pytest.approx(2e-4)
    spec = ClusterSpec.parse("4x2@1gbit")
    assert (spec.hosts, spec.ranks_per_host, spec.rate, spec.world_size) == (4, 2, "1gbit", 8)
    assert [spec.host_of(r) for r in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    for bad, words in (("fast", "bad link rate 'fast'"), ("10", "bad link rate '10'"), ("1kbit", "too slow")):
        with pytest.raises(EmulateError, match=words):
            parse_rate(bad)
    with pytest.raises(EmulateError, match="bad cluster '4by2'"):
        ClusterSpec.parse("4by2")
    with pytest.raises(EmulateError, match="bad link rate 'quick'"):
        ClusterSpec.parse("2x1@quick")
    with pytest.raises(EmulateError, match="host rate for host 5: there are hosts 0..1"):
        ClusterSpec(hosts=2, host_rates={5: "1gbit"}).validate()
    with pytest.raises(EmulateError, match="slow rank 2: there are ranks 0..1"):
        ClusterSpec(hosts=2, slow_ranks={2: 2.0}).validate()
    with pytest.raises(EmulateError, match="factor 0.5 must be"):
        ClusterSpec(hosts=2, slow_ranks={1: 0.5}).validate()
    with pytest.raises(EmulateError, match="hosts=0"):
        ClusterSpec(hosts=0).validate()


def test_cli_names_bad_arguments(tmp_path: Path) -> None:
    p = emulate(["--host-rate", "fast", "--", "true"], tmp_path)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "--host-rate 'fast': expected INDEX=VALUE" in err, err
    p = emulate(["--hosts", "2"], tmp_path)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "no command" in err, err


def test_slowdown_stretches_compute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTCOMM_EMULATE_SLOWDOWN", raising=False)
    assert slowdown_factor() == 1.0
    monkeypatch.setenv("AGENTCOMM_EMULATE_SLOWDOWN", "3")
    slow = Slowdown()
    assert slow.factor == 3.0
    t0 = time.perf_counter()
    with slow:
        end = time.perf_counter() + 0.05
        while time.perf_counter() < end:
            pass
    assert time.perf_counter() - t0 >= 3 * 0.05 * 0.99  # a lower bound: sleeping never returns early
    monkeypatch.setenv("AGENTCOMM_EMULATE_SLOWDOWN", "half")
    with pytest.raises(ValueError, match="AGENTCOMM_EMULATE_SLOWDOWN='half'"):
        Slowdown()


# ---- the cluster (root) ---------------------------------------------------------------------
@needs_namespaces
def test_every_rank_gets_its_host_and_environment_and_nothing_is_left(tmp_path: Path) -> None:
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    p = emulate(["--cluster", "3x2@1gbit", "--slow-rank", "4=2.5", "--master-port", "29411", "--",
                 sys.executable, "rank.py", "ok"], tmp_path)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "3 hosts x 2 ranks, links 1gbit, rank 4 2.5x slower" in err, err
    infos = rank_infos(tmp_path, 6)
    for r, info in enumerate(infos):
        assert info["RANK"] == str(r) and info["WORLD_SIZE"] == "6" and info["LOCAL_RANK"] == str(r % 2)
        assert info["LOCAL_WORLD_SIZE"] == "2" and info["GROUP_RANK"] == info["AGENTCOMM_EMULATE_HOST"] == str(r // 2)
        assert info["MASTER_ADDR"] == "10.233.0.1" and info["MASTER_PORT"] == "29411"
        assert info["GLOO_SOCKET_IFNAME"] == "ac0" and info["addr"] == f"10.233.0.{r // 2 + 1}/16", info
        assert info["AGENTCOMM_EMULATE_SLOWDOWN"] == ("2.5" if r == 4 else None), info
    assert_nothing_left(p.pid, infos)


@needs_namespaces
def test_a_failing_rank_stops_the_others(tmp_path: Path) -> None:
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    t0 = time.monotonic()
    p = emulate(["--hosts", "2", "--ranks-per-host", "2", "--", sys.executable, "rank.py", "fail"], tmp_path)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 3 and "rank 1 exited with code 3; stopping the other ranks" in err, err
    assert time.monotonic() - t0 < 60  # not the 300 s the others would sleep
    assert_nothing_left(p.pid, rank_infos(tmp_path, 4))


@needs_namespaces
@pytest.mark.parametrize("how", ["timeout", "SIGINT", "SIGTERM"])
def test_timeout_and_signals_tear_down(tmp_path: Path, how: str) -> None:
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    extra = ["--timeout", "3"] if how == "timeout" else []
    p = emulate(["--hosts", "2", *extra, "--", sys.executable, "rank.py", "hang"], tmp_path)
    if how != "timeout":
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"rank{r}.json").exists() for r in range(2)):
            assert time.monotonic() < deadline and p.poll() is None, p.communicate()
            time.sleep(0.1)
        p.send_signal(getattr(signal, how))
    _, err = p.communicate(timeout=120)
    want = {"timeout": 124, "SIGINT": 130, "SIGTERM": 128 + signal.SIGTERM}[how]
    assert p.returncode == want, (p.returncode, err)
    assert_nothing_left(p.pid, rank_infos(tmp_path, 2))


@needs_namespaces
def test_link_rates_are_what_a_stream_gets() -> None:
    from agentcomm.emulate.probe import measure_link
    with Cluster(ClusterSpec(hosts=3, rate="100mbit", host_rates={2: "20mbit"})) as cluster:
        fast = measure_link(cluster, 0, 1, seconds=1.5)
        into_slow = measure_link(cluster, 0, 2, seconds=1.5)   # limited by host 2's receiving
        out_of_slow = measure_link(cluster, 2, 1, seconds=1.5)  # and by its sending
        names = list(cluster.namespaces) + [cluster.switch]
    assert 80e6 <= fast.rate_bps <= 120e6, fast
    assert 16e6 <= into_slow.rate_bps <= 24e6, into_slow
    assert 16e6 <= out_of_slow.rate_bps <= 24e6, out_of_slow
    assert not set(names) & set(namespaces_of(os.getpid()))


@needs_namespaces
def test_a_delay_needs_netem_or_is_applied() -> None:
    from agentcomm.emulate.probe import measure_link
    try:
        with Cluster(ClusterSpec(hosts=2, delay="20ms")) as cluster:
            link = measure_link(cluster, 0, 1, seconds=0.5, pings=5)
    except EmulateError as e:
        assert "sch_netem" in str(e) and "AGENTCOMM_FAULT=delay" in str(e), e
    else:
        assert link.rtt_s >= 0.08, link  # 20 ms each way on both cables
    assert namespaces_of(os.getpid()) == []
