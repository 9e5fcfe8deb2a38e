"""Several threads on one object: sends and receives are serialised (each call's packets stay together and in
order, every packet arrives exactly once), and close() from another thread wakes a blocked call with
ClosedError instead of hanging or freeing memory under it."""

from __future__ import annotations

import struct
import threading
import time
from typing import Any

import pytest

import packet_ipc as pipc
from packet_ipc.errors import ClosedError

from helpers.peers import connected_pair

SMALL_RING = 1 << 16  # the ring: 64 KiB, so the senders spend most of their time waiting for space
PER_THREAD = 100_000
PACKET_BYTES = 600
CALL = 50  # packets per send() call


def tagged(thread: int, seq: int) -> pipc.Packet:
    """A packet that says who sent it and its place in that sender's sequence (checked byte for byte)."""
    head = struct.pack("<QQ", thread, seq)
    return pipc.Packet(seq, head + bytes([seq & 0xFF]) * (PACKET_BYTES - len(head)))


def check_packet(data: bytes) -> tuple[int, int]:
    thread, seq = struct.unpack_from("<QQ", data)
    if len(data) != PACKET_BYTES or data[16:] != bytes([seq & 0xFF]) * (PACKET_BYTES - 16):
        raise AssertionError(f"packet {thread}/{seq} corrupted")
    return thread, seq


def receive_tags(name: str, result_q: Any) -> None:
    """Worker process: receives until end of stream; reports [(thread, seq)] in arrival order, or the error."""
    try:
        client = pipc.Client(name, timeout=30)
        got: list[tuple[int, int]] = []
        while (batch := client.receive_batch(1024, timeout=60)) is not None:
            with batch:
                got.extend(check_packet(p.tobytes()) for p in batch)
        result_q.put((got, None))
    except Exception as e:  # reported to the test, which fails with it
        result_q.put(([], f"{type(e).__name__}: {e}"))


def send_from_threads(send: Any, threads: int = 2) -> list[BaseException]:
    """Runs `threads` senders of PER_THREAD tagged packets each, CALL packets per call; returns their errors."""
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def run(thread: int) -> None:
        try:
            start.wait()
            for first in range(0, PER_THREAD, CALL):
                packets = [tagged(thread, s) for s in range(first, first + CALL)]
                assert send(packets, timeout=60) == CALL
        except BaseException as e:  # noqa: BLE001 - reported to the test
            errors.append(e)

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert not w.is_alive(), "a sending thread hung"
    return errors


def assert_exactly_once_in_order(streams: list[list[tuple[int, int]]], threads: int = 2) -> None:
    """Every (thread, seq) exactly once over all streams; each thread's packets in order within each stream."""
    seen: set[tuple[int, int]] = set()
    for stream in streams:
        last = dict.fromkeys(range(threads), -1)
        for thread, seq in stream:
            assert (thread, seq) not in seen, f"packet {thread}/{seq} delivered twice"
            seen.add((thread, seq))
            assert seq > last[thread], f"thread {thread}'s packet {seq} arrived after {last[thread]}"
            last[thread] = seq
    assert len(seen) == threads * PER_THREAD


def test_two_threads_sending_on_one_connection_deliver_every_packet_once_in_order(ctx: Any) -> None:
    with pipc.Server(capacity=SMALL_RING, stats_socket=False) as server:
        q = ctx.Queue()
        worker = ctx.Process(target=receive_tags, args=(server.name, q))
        worker.start()
        conn = server.accept(timeout=30)
        errors = send_from_threads(conn.send)
        conn.send(None)
        got, error = q.get(timeout=120)
        worker.join(30)
    assert not errors, errors
    assert error is None, error
    assert_exactly_once_in_order([got])


@pytest.mark.parametrize("distribution", ["flow", "round_robin"])
def test_two_threads_sending_on_one_server_deliver_every_packet_once(ctx: Any, distribution: str) -> None:
    with pipc.Server(capacity=SMALL_RING, distribution=distribution, stats_socket=False) as server:
        q = ctx.Queue()
        workers = [ctx.Process(target=receive_tags, args=(server.name, q)) for _ in range(2)]
        for w in workers:
            w.start()
        server.wait_for_clients(2, timeout=30)
        errors = send_from_threads(server.send)
        server.send(None)
        results = [q.get(timeout=120) for _ in workers]
        for w in workers:
            w.join(30)
    assert not errors, errors
    assert [e for _, e in results] == [None, None]
    assert_exactly_once_in_order([got for got, _ in results])


def test_two_threads_receiving_on_one_client_share_the_stream_exactly_once() -> None:
    with pipc.Server(capacity=SMALL_RING, stats_socket=False) as server:
        conn, client = connected_pair(server)
        got: list[list[tuple[int, int]]] = [[], []]
        errors: list[BaseException] = []

        def receive(k: int) -> None:
            # Each receiver lets go of its packets before the next receive: a take is at most half the ring, so
            # two threads that both held their last batch while waiting could hold all of it (see the guide).
            try:
                while True:
                    packets = client.receive_packets(64, timeout=60)
                    if packets is None:
                        return
                    got[k].extend(check_packet(p.tobytes()) for p in packets)
                    del packets
            except BaseException as e:  # noqa: BLE001 - reported to the test
                errors.append(e)

        readers = [threading.Thread(target=receive, args=(k,)) for k in range(2)]
        for r in readers:
            r.start()
        assert not send_from_threads(conn.send, threads=1)
        conn.send(None)
        for r in readers:
            r.join(120)
            assert not r.is_alive(), "a receiving thread hung"
        client.close()
    assert not errors, errors
    everything = sorted(got[0] + got[1])
    assert everything == [(0, s) for s in range(PER_THREAD)]
    for stream in got:  # each receive takes the next packets: within one thread, order is kept
        assert stream == sorted(stream)


def test_close_from_another_thread_wakes_a_send_blocked_on_a_full_ring() -> None:
    with pipc.Server(capacity=SMALL_RING, stats_socket=False) as server:
        conn, client = connected_pair(server)  # the client never reads: the ring fills
        outcome: list[BaseException | int] = []
        started = threading.Event()

        def flood() -> None:
            started.set()
            try:
                while True:
                    conn.send([tagged(0, s) for s in range(CALL)])
            except BaseException as e:  # noqa: BLE001 - reported to the test
                outcome.append(e)

        sender = threading.Thread(target=flood)
        sender.start()
        started.wait(10)
        deadline = time.monotonic() + 30
        while conn.stats().ring_used_bytes < SMALL_RING // 2:  # wait until the sender must be blocked on space
            assert time.monotonic() < deadline, "the ring never filled"
            time.sleep(0.01)
        conn.close()
        sender.join(10)
        assert not sender.is_alive(), "close() did not wake the blocked send"
        assert conn.closed
        assert len(outcome) == 1 and isinstance(outcome[0], ClosedError), outcome
        client.close()


def test_close_from_another_thread_wakes_a_blocked_receive() -> None:
    with pipc.Server(capacity=SMALL_RING, stats_socket=False) as server:
        conn, client = connected_pair(server)
        outcome: list[BaseException | None] = []

        def wait_forever() -> None:
            try:
                client.receive_packets(16)  # no timeout: only the close can end it
                outcome.append(None)
            except BaseException as e:  # noqa: BLE001 - reported to the test
                outcome.append(e)

        reader = threading.Thread(target=wait_forever)
        reader.start()
        time.sleep(0.2)  # let it reach its sleep on the eventfd (a close before that is checked as well)
        client.close()
        reader.join(10)
        assert not reader.is_alive(), "close() did not wake the blocked receive"
        assert len(outcome) == 1 and isinstance(outcome[0], ClosedError), outcome
        assert client.closed
        conn.close()


def test_close_from_another_thread_wakes_a_blocked_accept() -> None:
    server = pipc.Server(stats_socket=False)
    outcome: list[BaseException | None] = []

    def accept_forever() -> None:
        try:
            server.accept()
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - reported to the test
            outcome.append(e)

    acceptor = threading.Thread(target=accept_forever)
    acceptor.start()
    time.sleep(0.2)
    server.close()
    acceptor.join(10)
    assert not acceptor.is_alive(), "close() did not wake the blocked accept"
    assert len(outcome) == 1 and isinstance(outcome[0], ClosedError), outcome
    assert server.closed
