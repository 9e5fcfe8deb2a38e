"""Records gathered from a received batch into NATS messages (``RecordBuilder.gather``, C ``gather_records``):
cut where a message would outgrow its room, every field and byte kept through a round trip with the message
parser, one record alone when it is larger than the room, and bad indices refused. No cluster needed."""

from __future__ import annotations

import array
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers.nats_cluster import udp_packet  # noqa: E402

from packet_ipc import Packet, PacketBatch  # noqa: E402
from packet_ipc._core import gather_records  # noqa: E402
from packet_ipc.nats.wire import HEADER, RECORD_OVERHEAD, RecordBuilder, decode  # noqa: E402


def _batch(n: int) -> PacketBatch:
    """n packets of different sizes, caplens below origlens for some, two linktypes and interfaces."""
    packets = []
    for i in range(n):
        data = udp_packet(i, i % 7, size=60 + 37 * i % 900)
        packets.append(Packet(1_700_000_000_000_000_000 + 1000 * i, data, len(data) + (i % 3) * 10,
                              1 if i % 5 else 101, i % 4))
    return PacketBatch.from_packets(packets)


def _fields(batch: PacketBatch, i: int) -> tuple[int, bytes, int, int, int]:
    p = batch[i]
    return p.timestamp, bytes(p.data), p.orig_len, p.linktype, p.ifindex


def test_gathered_records_round_trip_byte_exact_and_cut_at_the_room() -> None:
    batch = _batch(200)
    idx = array.array("I", [i for i in range(200) if i % 3 != 1]).tobytes()  # one partition's share, in order
    want = [i for i in range(200) if i % 3 != 1]
    room = 16_000
    messages, builder, start = [], RecordBuilder(4), 0
    while start < len(want):
        start = builder.gather(batch, idx, start, room - builder.size)
        assert builder.size <= room
        if start < len(want):
            messages.append(builder.take().seal(len(messages) + 1)[0])
    messages.append(builder.seal(len(messages) + 1)[0])
    assert len(messages) > 3  # it did cut
    got = []
    for m in messages:
        assert len(m) <= room
        msg = decode(m)
        assert msg.partition == 4 and msg.batch is not None
        got.extend(_fields(msg.batch, j) for j in range(len(msg.batch)))
    assert got == [_fields(batch, i) for i in want]


def test_a_record_larger_than_the_room_goes_alone() -> None:
    batch = _batch(20)
    idx = array.array("I", range(20)).tobytes()
    b = RecordBuilder(0)
    assert b.gather(batch, idx, 5, 10) == 6  # empty builder: one record, though it does not fit
    assert len(b) == 1 and b.size == HEADER.size + RECORD_OVERHEAD + len(batch[5].data)
    assert b.gather(batch, idx, 6, 10) == 6  # not empty: nothing more
    msg = decode(b.seal(1)[0])
    assert msg.batch is not None and _fields(msg.batch, 0) == _fields(batch, 5)


def test_messages_with_more_records_than_the_room_and_then_within_it() -> None:
    # 600 small records: more than the first message's room (512), so that one is put together in one copy; the
    # next builder keeps room for a quarter more, and its message is the data bytearray itself, viewed
    batch = _batch(600)
    idx = array.array("I", range(600)).tobytes()
    b = RecordBuilder(1)
    assert b.gather(batch, idx, 0, 1 << 30) == 600
    first, n, nbytes = b.seal_view(1)
    assert n == 600 and nbytes == sum(len(batch[i].data) for i in range(600))
    assert b.gather(batch, idx, 0, 1 << 30) == 600
    second, _, _ = b.seal_view(2)
    assert isinstance(first.obj, bytes) and isinstance(second.obj, bytearray) and len(first) == len(second)
    for view, seq in ((first, 1), (second, 2)):
        msg = decode(view)
        assert msg.seq == seq and msg.batch is not None
        assert [_fields(msg.batch, j) for j in range(600)] == [_fields(batch, i) for i in range(600)]
    assert bytes(first)[HEADER.size:] == bytes(second)[HEADER.size:]  # the same body either way


def test_bad_indices_are_refused() -> None:
    batch = _batch(4)
    cols = (bytearray(), bytearray(), bytearray(), bytearray(), bytearray(), bytearray())
    with pytest.raises(ValueError, match="out of the batch"):
        gather_records(batch, array.array("I", [0, 4]).tobytes(), 0, 1 << 20, RECORD_OVERHEAD, True, cols)
    with pytest.raises(ValueError):
        gather_records(batch, b"\x00\x00\x00", 0, 1 << 20, RECORD_OVERHEAD, True, cols)  # not uint32s
    with pytest.raises(ValueError):
        gather_records(batch, array.array("I", [0]).tobytes(), 2, 1 << 20, RECORD_OVERHEAD, True, cols)  # start
    with pytest.raises(TypeError):
        gather_records(b"not a batch", b"", 0, 0, RECORD_OVERHEAD, True, cols)
    assert all(len(c) == 0 for c in cols)  # nothing appended by a refused call
