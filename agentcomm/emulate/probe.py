"""Measure an emulated link: round-trip time and stream rate between two hosts, over TCP.

The time-to-accuracy runner's cost model takes the link rate from here, and the tests use it to
check that a set rate is the rate a stream gets.

Example (root)::

    with Cluster(ClusterSpec(hosts=2, rate="100mbit")) as c:
        link = measure_link(c, 0, 1)
        print(f"{link.rate_bps / 1e6:.0f} Mbit/s, rtt {link.rtt_s * 1e6:.0f} us")
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

from agentcomm.emulate import Cluster, EmulateError, host_address

# The receiver: answers PINGS one-byte pings, then counts the stream, skipping its first WARM
# seconds (the token bucket's initial burst, TCP's slow start). Prints one JSON line.
_RECEIVER = r"""
import json, socket, sys, time
port, pings, warm = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", port)); srv.listen(1); print("ready", flush=True)
conn, _ = srv.accept(); conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
t0 = time.perf_counter()
for _ in range(pings):
    conn.recv(1); conn.sendall(b"p")
rtt = (time.perf_counter() - t0) / max(pings, 1)
start = time.perf_counter(); counted = 0; t_first = None
while True:
    chunk = conn.recv(1 << 20)
    if not chunk:
        break
    now = time.perf_counter()
    if now - start >= warm:
        if t_first is None:
            t_first = now
        else:
            counted += len(chunk)
        t_last = now
rate = counted * 8 / (t_last - t_first) if t_first is not None and t_last > t_first else 0.0
print(json.dumps({"rtt_s": rtt, "rate_bps": rate}), flush=True)
"""

_SENDER = r"""
import socket, sys, time
addr, port, pings, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.create_connection((addr, port), timeout=30); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for _ in range(pings):
    s.sendall(b"p"); s.recv(1)
block = b"\0" * (1 << 16); end = time.perf_counter() + seconds
while time.perf_counter() < end:
    s.sendall(block)
s.close()
"""


@dataclass
class LinkProbe:
    rtt_s: float     # one-byte TCP round trip, seconds
    rate_bps: float  # a stream's steady rate, bits per second


def measure_link(cluster: Cluster, src: int, dst: int, seconds: float = 1.5, pings: int = 200,
                 port: int = 29400) -> LinkProbe:
    """Round-trip time and stream rate from host ``src`` to host ``dst`` of a running cluster."""
    if src == dst:
        raise EmulateError("measure_link needs two different hosts")
    warm = min(0.5, seconds / 3)
    recv = cluster.spawn(dst, [sys.executable, "-c", _RECEIVER, str(port), str(pings), str(warm)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert recv.stdout is not None
        if recv.stdout.readline().strip() != b"ready":
            raise EmulateError(f"link probe receiver on host {dst} did not start: {recv.stderr.read().decode()[-2000:]}")
        send = cluster.spawn(src, [sys.executable, "-c", _SENDER, host_address(dst), str(port), str(pings),
                                   str(seconds)], stderr=subprocess.PIPE)
        _, err = send.communicate(timeout=seconds + 60)
        if send.returncode != 0:
            raise EmulateError(f"link probe sender on host {src} failed: {err.decode()[-2000:]}")
        out, err = recv.communicate(timeout=60)
        if recv.returncode != 0:
            raise EmulateError(f"link probe receiver on host {dst} failed: {err.decode()[-2000:]}")
        result = json.loads(out.decode().strip().splitlines()[-1])
        return LinkProbe(rtt_s=result["rtt_s"], rate_bps=result["rate_bps"])
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
