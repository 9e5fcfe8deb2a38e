"""Functions run in spawned child processes by the tests (servers and clients of packet-ipc)."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from typing import Any

import packet_ipc as pipc


def connected_pair(server: pipc.Server, **client_kw: Any) -> tuple[pipc.Connection, pipc.Client]:
    """A connection and its client in this process: the client connects from a thread while we accept."""
    import threading

    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("client", pipc.Client(server.name, timeout=10, **client_kw)))
    t.start()
    conn = server.accept(timeout=10)
    t.join()
    return conn, box["client"]


def make_packets(count: int, seed: int = 0, max_len: int = 1500) -> list[pipc.Packet]:
    """Deterministic packets whose timestamp is their sequence number and whose bytes encode it."""
    out = []
    for i in range(count):
        n = (i * 7919 + seed) % (max_len + 1)
        head = (i + seed).to_bytes(8, "little")
        body = (head * (n // 8 + 1))[:n]
        out.append(pipc.Packet(1_700_000_000_000_000_000 + i, body, orig_len=n + (i % 3)))
    return out


def digest(packets: Any) -> str:
    h = hashlib.sha256()
    for p in packets:
        h.update(p.timestamp.to_bytes(8, "little"))
        h.update(p.orig_len.to_bytes(4, "little"))
        h.update(bytes(p.data))
    return h.hexdigest()


def serve_packets(name_q: Any, count: int, seed: int, capacity: int, batch: int) -> None:
    """Server: one client, `count` generated packets, end of stream."""
    with pipc.Server(capacity=capacity) as server:
        name_q.put(server.name)
        conn = server.accept(timeout=30)
        pipc.transfer_ipc(make_packets(count, seed), conn, batch_size=batch)
        conn.close()


def serve_then_hang(name_q: Any, done_q: Any, count: int) -> None:
    """Server: sends `count` packets, reports it, then waits to be killed (never ends the stream)."""
    server = pipc.Server(capacity=1 << 20)
    name_q.put(server.name)
    conn = server.accept(timeout=30)
    conn.send(make_packets(count))
    done_q.put(count)
    signal.pause()


def receive_all(name: str, result_q: Any, max_packets: int = 256, delay: float = 0.0) -> None:
    """Client: receives until end of stream, optionally slowly; reports (count, digest, error name)."""
    client = pipc.Client(name, timeout=30)
    got = []
    error = None
    try:
        while (pk := client.receive_packets(max_packets, timeout=30)) is not None:
            got.extend(pipc.Packet(p.timestamp, p.tobytes(), p.orig_len) for p in pk)
            if delay:
                time.sleep(delay)  # a deliberately slow consumer, not synchronisation
    except pipc.PacketIpcError as e:
        error = type(e).__name__
    result_q.put((len(got), digest(got), [p.timestamp for p in got][:5], error))


def connect_and_idle(name: str, ready_q: Any) -> None:
    """Client: connects, reports its pid, and never reads."""
    client = pipc.Client(name, timeout=30)
    ready_q.put(os.getpid())
    signal.pause()
    client.close()


def canonical_flow(linktype: int, data: bytes) -> tuple | None:
    """The direction-free flow key of a packet (None for non-IP), from the C parser checked against dpkt."""
    key = pipc._core.flow_key(linktype, data)
    if key is None:
        return None
    family, proto, a, pa, b, pb, frag = key
    ends = sorted([(a, 0 if frag else pa), (b, 0 if frag else pb)])
    return (family, proto, *ends[0], *ends[1])


def collect(
    name: str, result_q: Any, overflow: str | None = None, started: Any = None, stall: Any = None, delay: float = 0.0
) -> None:
    """Worker: receives until end of stream, reports (pid, [(timestamp, flow)], dropped, error).

    `started` (an Event) is set after the first packet; `stall` (an Event) makes it stop reading until set;
    `delay` makes it a slow consumer (a pause after each batch).
    """
    client = pipc.Client(name, timeout=30, overflow=overflow)
    got: list = []
    error = None
    try:
        if stall is not None:
            stall.wait(60)
        while (batch := client.receive_batch(512, timeout=30)) is not None:
            with batch:
                for p in batch:
                    got.append((p.timestamp, canonical_flow(p.linktype, p.tobytes())))
            if started is not None and not started.is_set():
                started.set()
            if delay:
                time.sleep(delay)  # a deliberately slow consumer, not synchronisation
    except pipc.PacketIpcError as e:
        error = type(e).__name__
    result_q.put((os.getpid(), got, client.stats().dropped_packets, error))


def batch_columns(n: int, seed: int, max_len: int = 1518) -> tuple[bytes, bytes, bytes]:
    """Deterministic columnar data: u64 timestamps, u32 lengths, and the payloads back to back."""
    import array
    import random

    rng = random.Random(seed)
    lens = array.array("I", (rng.randint(0, max_len) for _ in range(n)))
    ts = array.array("Q", (1_700_000_000_000_000_000 + seed * 1_000_000 + i for i in range(n)))
    blob = rng.randbytes(sum(lens))
    return ts.tobytes(), lens.tobytes(), blob


def serve_batches(name_q: Any, batches: int, n: int, capacity: int) -> None:
    """Server: sends `batches` columnar batches of n packets (seeds 0..batches-1), then ends the stream."""
    with pipc.Server(capacity=capacity) as server:
        name_q.put(server.name)
        conn = server.accept(timeout=30)
        for seed in range(batches):
            conn.send_batch(pipc.PacketBatch.from_buffers(*batch_columns(n, seed)), timeout=30)
        conn.send(None)
        conn.close()
