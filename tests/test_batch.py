"""PacketBatch: columnar round trip between processes, zero-copy views, out-of-order release, the wrap."""

from __future__ import annotations

import array

import pytest

import packet_ipc as pipc
from helpers.peers import batch_columns, connected_pair, serve_batches


def pair(capacity: int = 1 << 20, **kw) -> tuple[pipc.Server, pipc.Connection, pipc.Client]:
    server = pipc.Server(capacity=capacity, **kw)
    return (server, *connected_pair(server))


def test_columnar_round_trip_between_processes_is_exact(ctx):
    name_q = ctx.Queue()
    server = ctx.Process(target=serve_batches, args=(name_q, 40, 300, 1 << 18))
    server.start()
    client = pipc.Client(name_q.get(timeout=30), timeout=30)
    sent_ts, sent_lens, sent_blob = b"", b"", b""
    for seed in range(40):
        ts, lens, blob = batch_columns(300, seed)
        sent_ts, sent_lens, sent_blob = sent_ts + ts, sent_lens + lens, sent_blob + blob
    got_ts, got_lens, got_blob = bytearray(), bytearray(), bytearray()
    while (batch := client.receive_batch(1000, timeout=30)) is not None:
        with batch:
            got_ts += batch.timestamps
            got_lens += batch.caplens
            assert bytes(batch.origlens) == bytes(batch.caplens)
            offsets = batch.offsets.tolist()
            assert offsets == [sum(batch.caplens.tolist()[:i]) for i in range(len(batch))]
            got_blob += batch.data  # one contiguous view of every payload, read in place
    server.join(30)
    assert (bytes(got_ts), bytes(got_lens)) == (sent_ts, sent_lens)
    assert bytes(got_blob) == sent_blob


def test_numpy_reads_the_columns_without_copies():
    np = pytest.importorskip("numpy")
    server, conn, client = pair()
    ts, lens, blob = batch_columns(100, 3)
    conn.send_batch(pipc.PacketBatch.from_buffers(np.frombuffer(ts, np.uint64), np.frombuffer(lens, np.uint32), blob))
    with client.receive_batch(1000, timeout=5) as batch:
        assert np.array_equal(np.frombuffer(batch.timestamps, np.uint64), np.frombuffer(ts, np.uint64))
        assert int(np.frombuffer(batch.caplens, np.uint32).sum()) == len(blob) == batch.nbytes
        assert np.frombuffer(batch.data, np.uint8).tobytes() == blob
    server.close()


def test_payloads_are_contiguous_across_the_ring_wrap():
    server, conn, client = pair(capacity=4096)
    for seed in range(50):  # 1,000..1,700-byte batches in a 4 KiB ring: most wrap at some point
        ts, lens, blob = batch_columns(3, seed, max_len=560)
        conn.send_batch(pipc.PacketBatch.from_buffers(ts, lens, blob))
        got = bytearray()
        while len(got) < len(blob):
            with client.receive_batch(10, timeout=5) as batch:
                got += batch.data
                for i, p in enumerate(batch):
                    start = batch.offsets[i]
                    assert p.tobytes() == bytes(batch.data[start : start + batch.caplens[i]])
        assert bytes(got) == blob
    server.close()


def test_views_outlive_the_batch_and_hold_its_ring_space_until_they_go():
    server, conn, client = pair(capacity=1 << 16)
    ts, lens, blob = batch_columns(10, 1, max_len=200)
    conn.send_batch(pipc.PacketBatch.from_buffers(ts, lens, blob))
    batch = client.receive_batch(100, timeout=5)
    data_view = batch.data
    first = batch[0]
    batch.release()
    with pytest.raises(ValueError, match="released"):
        batch.data
    del batch
    assert bytes(data_view) == blob  # still valid: the view keeps the region
    assert conn.stats().ring_used_slots == 10  # and the server has not got the space back
    del data_view
    assert first.tobytes() == blob[: lens and array.array("I", lens)[0]]
    del first
    assert conn.stats().ring_used_slots == 0  # last view gone: space returned
    server.close()


def test_batches_released_out_of_order_return_space_only_as_a_prefix():
    server, conn, client = pair(capacity=1 << 16)
    for seed in range(4):
        conn.send_batch(pipc.PacketBatch.from_buffers(*batch_columns(5, seed, max_len=100)))
    held = [client.receive_batch(5, timeout=5) for _ in range(4)]
    assert conn.stats().ring_used_slots == 20
    held[2].release()
    held[3].release()
    assert conn.stats().ring_used_slots == 20  # 0 and 1 still held: nothing can be reused yet
    held[0].release()
    assert conn.stats().ring_used_slots == 15  # batch 0 returned; 1 still blocks 2 and 3
    held[1].release()
    assert conn.stats().ring_used_slots == 0
    conn.send_batch(pipc.PacketBatch.from_buffers(*batch_columns(5, 9, max_len=100)))  # the ring is reusable
    with client.receive_batch(5, timeout=5) as b:
        assert bytes(b.data) == batch_columns(5, 9, max_len=100)[2]
    server.close()


def test_from_buffers_checks_its_columns_and_pins_a_mutable_blob():
    ts, lens, blob = batch_columns(4, 2, max_len=50)
    with pytest.raises(ValueError, match="add up"):
        pipc.PacketBatch.from_buffers(ts, lens, blob + b"x")
    with pytest.raises(ValueError, match="timestamps"):
        pipc.PacketBatch.from_buffers(ts[:-8], lens, blob)
    buf = bytearray(blob)
    batch = pipc.PacketBatch.from_buffers(array.array("Q", array.array("Q", ts)), array.array("I", lens), buf)
    with pytest.raises(BufferError):
        buf.extend(b"more")  # the batch references it without a copy
    packet = batch[1]
    batch.release()
    with pytest.raises(BufferError):
        buf.extend(b"more")  # a packet taken from the batch still pins it
    del packet
    buf.extend(b"more")
    assert len(batch) == 4


def test_from_packets_iteration_and_indexing():
    packets = [pipc.Packet(i, bytes([i]) * i, orig_len=i + 10, linktype=228) for i in range(6)]
    batch = pipc.PacketBatch.from_packets(packets)
    assert len(batch) == 6 and batch.nbytes == sum(range(6))
    assert [(p.timestamp, p.tobytes(), p.orig_len, p.linktype) for p in batch] == [
        (i, bytes([i]) * i, i + 10, 228) for i in range(6)
    ]
    with pytest.raises(IndexError):
        batch[6]
    assert list(batch.linktypes) == [228] * 6


def test_a_batch_larger_than_the_free_space_resumes_with_every_column_aligned():
    """send_batch goes straight from the batch's columns (pipc_conn_send_columns); a batch the ring cannot hold
    at once is sent in pieces as the client frees space, and each piece must start at the right packet's
    bytes and column entries (timestamps, lengths, origlens, linktypes, ifindexes)."""
    import threading

    server, conn, client = pair(capacity=1 << 14)  # 16 KiB: the batch below is 8 times that
    n = 1200
    lens = [40 + (i * 37) % 160 for i in range(n)]
    blob = b"".join(bytes([i % 251]) * ln for i, ln in enumerate(lens))
    batch = pipc.PacketBatch.from_buffers(
        array.array("Q", [10_000 + i for i in range(n)]), array.array("I", lens), blob,
        array.array("I", [ln + i % 5 for i, ln in enumerate(lens)]),
        linktypes=array.array("I", [1 if i % 3 else 105 for i in range(n)]),
        ifindexes=array.array("I", [i % 7 for i in range(n)]))
    got: list[tuple[int, int, int, int, int, bytes]] = []

    def drain() -> None:
        while len(got) < n and (b := client.receive_batch(64, timeout=10)) is not None:
            with b:
                got.extend((p.timestamp, p.caplen, p.orig_len, p.linktype, p.ifindex, bytes(p.data)) for p in b)

    t = threading.Thread(target=drain)
    t.start()
    assert conn.send_batch(batch, timeout=30) == n
    t.join(30)
    want = [(10_000 + i, ln, ln + i % 5, 1 if i % 3 else 105, i % 7, bytes([i % 251]) * ln) for i, ln in enumerate(lens)]
    assert got == want
    conn.close()
    client.close()
    server.close()


def test_a_batch_that_does_not_fit_under_drop_is_counted_not_lost_silently():
    server, conn, client = pair(capacity=1 << 14, overflow="drop")
    lens = [1000] * 40  # 40,000 bytes: more than the 16 KiB ring holds
    batch = pipc.PacketBatch.from_buffers(array.array("Q", range(40)), array.array("I", lens), bytes(40_000))
    sent = conn.send_batch(batch)
    stats = conn.stats()
    assert 0 < sent < 40
    assert stats.packets == sent and stats.dropped_packets == 40 - sent
    assert stats.dropped_bytes == 1000 * (40 - sent)
    conn.close()
    client.close()
    server.close()


def test_column_views_are_typed_read_only_and_outlive_the_release():
    server, conn, client = pair()
    conn.send_batch(pipc.PacketBatch.from_buffers(array.array("Q", [5, 6, 7]), array.array("I", [1, 2, 3]), b"abbccc"))
    batch = client.receive_batch(10, timeout=10)
    ts, lens, offsets = batch.timestamps, batch.caplens, batch.offsets
    assert (ts.format, ts.itemsize, ts.tolist()) == ("Q", 8, [5, 6, 7])
    assert (lens.format, lens.tolist(), offsets.tolist()) == ("I", [1, 2, 3], [0, 1, 3])
    assert ts.readonly and lens.readonly
    with pytest.raises(TypeError):
        ts[0] = 9
    batch.release()  # the ring space goes back; the columns are the batch's own copy and stay readable
    assert ts.tolist() == [5, 6, 7] and bytes(lens) == array.array("I", [1, 2, 3]).tobytes()
    with pytest.raises(ValueError, match="released"):
        batch.timestamps
    conn.close()
    client.close()
    server.close()
