"""Zero-copy send (Connection.reserve / Reservation.commit, pipc_conn_reserve / pipc_conn_commit): packets built
in place in the ring reach the client as committed, and a reservation abandoned, dropped, closed over or held
by a producer killed with SIGKILL leaves the ring consistent: the client gets exactly what was committed."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

import packet_ipc as pipc


def drain(client: pipc.Client, timeout: float = 10) -> tuple[list[tuple[int, bytes, int, int]], BaseException | None]:
    """(timestamp ns, bytes, orig_len, linktype) of every packet until the end, and the error that ended it."""
    got: list[tuple[int, bytes, int, int]] = []
    try:
        while (b := client.receive_batch(256, timeout=timeout)) is not None:
            got += [(p.timestamp, bytes(p.data), p.orig_len, p.linktype) for p in b]
    except pipc.PacketIpcError as e:
        return got, e
    return got, None


def run_pair(produce, capacity: int = 1 << 16, **server_kw):
    """Runs produce(conn) against a client on a thread; returns (what the client got, how its stream ended)."""
    with pipc.Server(capacity=capacity, **server_kw) as srv:
        out: dict[str, object] = {}

        def consume() -> None:
            with pipc.Client(srv.name, timeout=10) as c:
                out["got"], out["error"] = drain(c)

        t = threading.Thread(target=consume)
        t.start()
        conn = srv.accept(10)
        try:
            produce(conn)
        finally:
            conn.close()
            t.join(30)
    return out["got"], out["error"]


def connect(srv: pipc.Server) -> tuple[pipc.Client, pipc.Connection]:
    """A client (connected on a thread, as connecting waits for the accept) and its connection."""
    box: list[pipc.Client] = []
    t = threading.Thread(target=lambda: box.append(pipc.Client(srv.name, timeout=10)))
    t.start()
    conn = srv.accept(10)
    t.join(10)
    return box[0], conn


def fill(r: pipc.Reservation, payloads: list[bytes], ts0: int = 1_000) -> None:
    """Writes payloads back to back into the reservation, with timestamps ts0, ts0 + 1, ..."""
    pos = 0
    for i, p in enumerate(payloads):
        r.data[pos : pos + len(p)] = p
        r.caplen[i] = len(p)
        r.ts_ns[i] = ts0 + i
        pos += len(p)


def test_committed_packets_arrive_with_their_columns_and_defaults():
    def produce(conn):
        r = conn.reserve(4, 300)
        assert (r.n_packets, r.n_bytes) == (4, 300)
        assert list(r.linktype) == [0xFFFFFFFF] * 4 and list(r.origlen) == [0] * 4
        fill(r, [b"a" * 60, b"bc", b"", b"d" * 200])
        r.origlen[1] = 1500  # truncated; 0 elsewhere means caplen
        r.linktype[3] = 101
        r.ifindex[0] = 7
        assert r.commit(4) == 4
        assert not r.open
        with pytest.raises(pipc.ClosedError):
            r.data

    got, err = run_pair(produce, linktype=1)
    assert err is None
    assert got == [(1000, b"a" * 60, 60, 1), (1001, b"bc", 1500, 1), (1002, b"", 0, 1), (1003, b"d" * 200, 200, 101)]


def test_abandoned_reservations_publish_nothing_and_the_next_send_reuses_their_space():
    def produce(conn):
        r = conn.reserve(3, 100)
        fill(r, [b"X" * 50, b"Y" * 50])
        r.abandon()  # explicit
        with conn.reserve(2, 100) as r:  # a with block left without commit
            fill(r, [b"Z" * 90])
        r = conn.reserve(2, 100)
        fill(r, [b"W" * 10])
        del r  # dropped
        r = conn.reserve(2, 100)
        fill(r, [b"first", b"second"])
        assert r.commit(1) == 1  # the second is not published
        conn.send([pipc.Packet(2, b"sent")])
        assert conn.stats().packets == 2

    got, err = run_pair(produce)
    assert err is None
    assert [g[1] for g in got] == [b"first", b"sent"]


def test_a_bad_commit_leaves_the_reservation_open_to_fix():
    def produce(conn):
        r = conn.reserve(2, 10)
        r.caplen[0], r.caplen[1] = 8, 8  # 16 bytes in a 10-byte reservation
        with pytest.raises(ValueError):
            r.commit(2)
        assert r.open
        r.linktype[0] = 0x10000  # linktypes are 16-bit
        r.caplen[1] = 2
        with pytest.raises(ValueError):
            r.commit(1)
        r.linktype[0] = 0xFFFFFFFF
        r.data[0:10] = b"0123456789"
        assert r.commit(2) == 2
        with pytest.raises(ValueError):
            conn.reserve(1, 1 << 20)  # more than half the ring
        with pytest.raises(ValueError):
            conn.reserve(0, 10)

    got, err = run_pair(produce)
    assert err is None
    assert [g[1] for g in got] == [b"01234567", b"89"]


def test_commit_refuses_while_a_view_of_the_reservation_is_alive():
    def produce(conn):
        r = conn.reserve(1, 4)
        part = r.data[0:4]
        part[:] = b"abcd"
        r.caplen[0] = 4
        with pytest.raises(BufferError):
            r.commit(1)
        assert r.open
        part.release()
        assert r.commit(1) == 1

    got, err = run_pair(produce)
    assert err is None and [g[1] for g in got] == [b"abcd"]


def test_other_threads_wait_for_the_commit_and_the_reserving_thread_is_told_not_to_wait_for_itself():
    order: list[str] = []

    def produce(conn):
        r = conn.reserve(1, 5)
        with pytest.raises(pipc.PacketIpcError):  # this thread would wait for its own commit
            conn.send([pipc.Packet(0, b"nope")], timeout=5)
        sender = threading.Thread(target=lambda: (conn.send([pipc.Packet(0, b"later")], timeout=10), order.append("send")))
        sender.start()
        sender.join(0.2)
        assert sender.is_alive()  # waits for the reservation
        fill(r, [b"first"])
        order.append("commit")
        r.commit(1)
        sender.join(10)

    got, err = run_pair(produce)
    assert err is None and order == ["commit", "send"]
    assert [g[1] for g in got] == [b"first", b"later"]


def test_commit_from_another_thread():
    def produce(conn):
        r = conn.reserve(1, 3)
        fill(r, [b"abc"])
        t = threading.Thread(target=r.commit, args=(1,))
        t.start()
        t.join(10)

    got, err = run_pair(produce)
    assert err is None and [g[1] for g in got] == [b"abc"]


def test_close_over_an_open_reservation_abandons_it_and_its_views_stay_writable():
    with pipc.Server(capacity=1 << 16) as srv:
        c, conn = connect(srv)
        conn.send([pipc.Packet(0, b"kept")])
        r = conn.reserve(1, 8)
        data = r.data
        conn.close()
        data[0:8] = b"harmless"  # the ring stays mapped while a view lives
        with pytest.raises(pipc.ClosedError):
            r.commit(1)
        del r, data  # the close completes when the last view of the ring is gone
        got, err = drain(c)
        assert err is None and [g[1] for g in got] == [b"kept"]
        c.close()


def test_drop_policy_never_waits_and_counts_the_reservation_as_dropped():
    with pipc.Server(capacity=1 << 12, overflow="drop") as srv:
        c, conn = connect(srv)
        r = conn.reserve(1, 2048)
        r.caplen[0] = 2048
        r.commit(1)
        r = conn.reserve(1, 2048)
        r.caplen[0] = 2048
        r.commit(1)
        assert conn.reserve(1, 100) is None  # ring full: counted, not waited for
        st = conn.stats()
        assert (st.dropped_packets, st.dropped_bytes) == (1, 100)
        conn.close()
        got, err = drain(c)
        assert err is None and len(got) == 2
        c.close()


def test_random_reservations_and_sends_interleaved_arrive_in_order_byte_for_byte():
    rng = random.Random(15)
    expected: list[bytes] = []

    def produce(conn):
        for _ in range(300):
            n = rng.randint(1, 40)
            payloads = [rng.randbytes(rng.randint(0, 350)) for _ in range(n)]
            if rng.random() < 0.3:
                conn.send([pipc.Packet(0, p) for p in payloads], timeout=10)
                expected.extend(payloads)
                continue
            r = conn.reserve(n + rng.randint(0, 5), sum(map(len, payloads)) + rng.randint(0, 100), timeout=10)
            fill(r, payloads)
            k = rng.randint(0, n)
            assert r.commit(k) == k
            expected.extend(payloads[:k])

    got, err = run_pair(produce, capacity=1 << 15)  # small: the ring wraps many times
    assert err is None
    assert [g[1] for g in got] == expected


PRODUCER = textwrap.dedent(
    """
    import os, signal, sys, packet_ipc as pipc
    srv = pipc.Server(capacity=1 << 16)
    print(srv.name, flush=True)
    conn = srv.accept(30)
    for i in range(10):
        r = conn.reserve(4, 400)
        for k in range(4):
            r.data[k * 100:(k + 1) * 100] = bytes([i * 4 + k]) * 100
            r.caplen[k] = 100
        r.commit(4)
    r = conn.reserve(4, 400)
    r.data[:] = b"U" * 400
    r.caplen[0] = 400
    print("holding", flush=True)
    sys.stdin.readline()
    """
)


def test_a_producer_killed_holding_a_reservation_leaves_what_it_committed_then_connection_lost():
    p = subprocess.Popen([sys.executable, "-c", PRODUCER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        name = p.stdout.readline().strip()
        client = pipc.Client(name, timeout=30)
        assert p.stdout.readline().strip() == "holding"
        os.kill(p.pid, signal.SIGKILL)
        p.wait(30)
        got, err = drain(client, timeout=10)
        assert isinstance(err, pipc.ConnectionLostError)
        assert [g[1] for g in got] == [bytes([j]) * 100 for j in range(40)]
        client.close()
    finally:
        p.kill()
        p.wait()
