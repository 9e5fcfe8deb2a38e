"""The core transport between real processes: order, completeness, back-pressure, end of stream."""

from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import packet_ipc as pipc
from helpers.peers import connected_pair, digest, make_packets, receive_all, serve_packets


def test_packets_arrive_in_order_and_intact_across_processes(ctx):
    name_q, result_q = ctx.Queue(), ctx.Queue()
    server = ctx.Process(target=serve_packets, args=(name_q, 5000, 1, 1 << 16, 256))
    server.start()
    receive_all(name_q.get(timeout=30), result_q)
    count, dig, first, error = result_q.get(timeout=30)
    server.join(30)
    assert error is None
    assert count == 5000
    assert dig == digest(make_packets(5000, 1))
    assert server.exitcode == 0


def test_slow_consumer_with_ring_smaller_than_a_batch_loses_nothing(ctx):
    # 4 KiB of ring, batches of 256 packets up to 1500 bytes: the producer blocks on nearly every batch.
    name_q, result_q = ctx.Queue(), ctx.Queue()
    server = ctx.Process(target=serve_packets, args=(name_q, 3000, 7, 4096, 256))
    server.start()
    name = name_q.get(timeout=30)
    client = ctx.Process(target=receive_all, args=(name, result_q, 7, 0.0005))
    client.start()
    count, dig, first, error = result_q.get(timeout=60)
    server.join(30)
    client.join(30)
    assert (count, error) == (3000, None)
    assert dig == digest(make_packets(3000, 7))


def test_two_clients_each_get_their_own_stream(ctx):
    result_q = ctx.Queue()
    with pipc.Server(capacity=1 << 16) as server:
        clients = [ctx.Process(target=receive_all, args=(server.name, result_q)) for _ in range(2)]
        for c in clients:
            c.start()
        conns = [server.accept(timeout=30) for _ in range(2)]
        by_pid = {conn.peer_pid: conn for conn in conns}
        streams = {clients[0].pid: make_packets(1000, 11), clients[1].pid: make_packets(1700, 22)}
        threads = [
            threading.Thread(target=pipc.transfer_ipc, args=(streams[pid], by_pid[pid])) for pid in streams
        ]
        for t in threads:
            t.start()
        results = sorted(result_q.get(timeout=30) for _ in range(2))
        for t in threads:
            t.join()
    for c in clients:
        c.join(30)
    expected = sorted((len(s), digest(s)) for s in streams.values())
    assert [(r[0], r[1]) for r in results] == expected
    assert all(r[3] is None for r in results)


def test_end_of_stream_returns_none_after_draining_and_stays_none():
    with pipc.Server(capacity=1 << 16) as server:
        result = {}

        def consume():
            with pipc.Client(server.name, timeout=10) as client:
                got = []
                while (pk := client.receive_packets(100, timeout=10)) is not None:
                    got.extend(p.tobytes() for p in pk)
                result["got"] = got
                result["again"] = client.receive_packets(10, timeout=1)

        t = threading.Thread(target=consume)
        t.start()
        conn = server.accept(timeout=10)
        conn.send([pipc.Packet(i, bytes([i]) * i) for i in range(50)])
        conn.send(None)
        t.join(30)
    assert result["got"] == [bytes([i]) * i for i in range(50)]
    assert result["again"] is None


def test_close_without_end_of_stream_is_a_clean_end():
    with pipc.Server() as server:
        conn, client = connected_pair(server)
        conn.send([pipc.Packet(1, b"x")])
        conn.close()
        assert [p.tobytes() for p in client.receive_packets(10, timeout=5)] == [b"x"]
        assert client.receive_packets(10, timeout=5) is None


def test_receive_times_out_with_builtin_timeout_error():
    with pipc.Server() as server:
        conn, client = connected_pair(server)
        with pytest.raises(TimeoutError):
            client.receive_packets(10, timeout=0.05)
        with pytest.raises(pipc.TimeoutError):
            client.receive_batch(10, timeout=0)
        conn.send([pipc.Packet(5, b"abc")])  # still usable afterwards
        assert client.receive_packets(10, timeout=5)[0].tobytes() == b"abc"


def test_send_times_out_on_a_full_ring_and_reports_what_was_sent():
    with pipc.Server(capacity=4096) as server:
        conn, client = connected_pair(server)
        with pytest.raises(TimeoutError) as info:
            conn.send([pipc.Packet(i, b"z" * 1000) for i in range(10)], timeout=0.05)
        assert info.value.sent == 4  # 4 KiB ring: four 1000-byte packets fit
        got = client.receive_packets(100, timeout=5)  # one receive takes at most half the ring
        got += client.receive_packets(100, timeout=5)
        assert [p.timestamp for p in got] == [0, 1, 2, 3]


def test_packet_larger_than_ring_is_a_value_error_and_connection_stays_usable():
    with pipc.Server(capacity=4096) as server:
        conn, client = connected_pair(server)
        with pytest.raises(ValueError, match="more than the ring"):
            conn.send([pipc.Packet(1, b"a" * 10), pipc.Packet(2, b"b" * 5000)])
        conn.send([pipc.Packet(3, b"c" * 100)])
        got = client.receive_packets(10, timeout=5)
        assert [(p.timestamp, p.tobytes()) for p in got] == [(3, b"c" * 100)]  # nothing of the bad batch


def test_packet_larger_than_snaplen_is_a_value_error():
    with pipc.Server(snaplen=100) as server:
        t = threading.Thread(target=lambda: pipc.Client(server.name, timeout=10).receive_packets(1, timeout=5))
        t.start()
        conn = server.accept(timeout=10)
        with pytest.raises(ValueError, match="snaplen"):
            conn.send([pipc.Packet(1, b"a" * 101)])
        conn.send([pipc.Packet(1, b"a" * 100)])
        t.join()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    max_len=st.sampled_from([0, 64, 1518, 9000, 65535]),
    ring_scale=st.sampled_from([1, 2, 16, 256]),
)
def test_received_sequence_equals_sent_sequence_for_any_sizes_and_capacities(data, max_len, ring_scale):
    """Batches of 0..4096 packets of 0..65535 bytes through rings from one packet's worth (wraps on every
    batch) to large; a sender thread and this thread share the ring through real shared memory."""
    capacity = max(4096, 2 * max_len) * ring_scale  # a packet may use at most half the ring
    batches = data.draw(
        st.lists(st.integers(0, 4096), min_size=1, max_size=4).map(
            lambda sizes: [min(s, max(1, (4 << 20) // max(1, max_len))) for s in sizes]
        )
    )
    lens = data.draw(st.lists(st.integers(0, max_len), min_size=1, max_size=64))
    takes = data.draw(st.lists(st.integers(1, 5000), min_size=1, max_size=8))
    sent_batches = []
    seq = 0
    for size in batches:
        batch = []
        for _ in range(size):
            n = lens[seq % len(lens)]
            batch.append(pipc.Packet(seq, seq.to_bytes(4, "little") * (n // 4) + b"\x5a" * (n % 4), orig_len=n + 1))
            seq += 1
        sent_batches.append(batch)
    with pipc.Server(capacity=capacity, max_packets=16 * ring_scale) as server:
        conn, client = connected_pair(server)

        def produce():
            for b in sent_batches:
                conn.send(b, timeout=30)
            conn.send(None)

        producer = threading.Thread(target=produce)
        producer.start()
        received = []
        calls = 0
        while (batch := client.receive_batch(takes[calls % len(takes)], timeout=30)) is not None:
            calls += 1
            with batch:
                received.extend((p.timestamp, p.tobytes(), p.orig_len) for p in batch)
        producer.join(30)
        client.close()
    expected = [(p.timestamp, p.tobytes(), p.orig_len) for b in sent_batches for p in b]
    assert received == expected
