"""The NATS message format of partitioned packet streams (version 1; documented in ``docs/wire-format.md``).

A message carries either a batch of packet records or one partition's end-of-stream marker. Everything is
little-endian. The 32-byte header::

    0  magic      4 bytes  b"PIPN"
    4  version    u8       1
    5  kind       u8       1 = packets, 2 = end of stream
    6  hdr_len    u16      32 (readers skip what lies beyond the fields they know)
    8  count      u32      records in the message (0 for end of stream)
    12 partition  u32      the partition (stream) it was published to
    16 seq        u64      the publisher's message sequence, from 1 (its Nats-Msg-Id is "<publisher id>-<seq>")
    24 body_len   u32      bytes after the header
    28 crc32      u32      CRC-32 (IEEE, zlib) of those bytes

A packets body is columnar (a reader takes each column with one copy): ``ts_ns`` u64[count], ``caplen``
u32[count], ``origlen`` u32[count], ``linktype`` u32[count], ``ifindex`` u32[count], then every packet's
captured bytes back to back (``sum(caplen)`` bytes). An end-of-stream body: packets u64, bytes u64 and
messages u64 (what that publisher published to this partition before the marker), then the publisher id
(UTF-8, the rest of the body).
"""

from __future__ import annotations

import array
import errno
import struct
import sys
from dataclasses import dataclass
from typing import Any

from .. import _core
from ..batch import PacketBatch
from ..errors import ProtocolError

try:  # ISA-L's CRC-32: the same value as zlib's, about 20 times faster (PCLMUL); zlib's when isal is absent
    from isal.isal_zlib import crc32
except ImportError:
    from zlib import crc32

__all__ = [
    "MAGIC", "VERSION", "KIND_PACKETS", "KIND_END", "HEADER", "RECORD_OVERHEAD", "MAX_CAPLEN",
    "WireFormatError", "Message", "EndOfStream", "RecordBuilder", "encode_end", "decode",
]

MAGIC = b"PIPN"
VERSION = 1
KIND_PACKETS = 1
KIND_END = 2
HEADER = struct.Struct("<4sBBHIIQII")
"""The 32-byte message header (see the module docstring)."""
RECORD_OVERHEAD = 24
"""Bytes per record besides its data (ts_ns 8 + caplen 4 + origlen 4 + linktype 4 + ifindex 4)."""
MAX_CAPLEN = 262144
"""Largest caplen a reader accepts (packet-ipc's own snaplen bound)."""
_END = struct.Struct("<QQQ")

if sys.byteorder != "little":  # the columns are copied as native arrays
    raise ImportError("packet_ipc.nats needs a little-endian machine")


class WireFormatError(ProtocolError):
    """A message on a partition subject is not a packet-ipc message of a known version, or is corrupt."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EPROTO, message)


@dataclass(frozen=True)
class EndOfStream:
    """One publisher's end-of-stream marker for one partition, with what it published there before."""

    publisher: str
    packets: int
    bytes: int
    messages: int


@dataclass(frozen=True)
class Message:
    """A decoded message: ``batch`` (packets) or ``end`` (end of stream) is set."""

    kind: int
    partition: int
    seq: int
    batch: PacketBatch | None = None
    end: EndOfStream | None = None


class RecordBuilder:
    """Accumulates packet records for one partition until :meth:`seal` makes a message of them.

    The columns are bytearrays in the message's layout (little-endian u64 / u32), filled by :meth:`gather` (C,
    straight from a received batch) or :meth:`add` (one packet). The packet data goes into its bytearray after
    room kept free at its front for the header and the other columns (``room`` bytes, sized on the builder's
    previous message): :meth:`seal` writes them there, and the message is that bytearray, not a copy of it (a
    message of 256 KiB copied costs the publisher about as much as its CRC). A message with more records than
    the room holds is put together in one copy instead."""

    __slots__ = ("partition", "ts", "caplen", "origlen", "linktype", "ifindex", "data", "count", "started", "room")

    def __init__(self, partition: int, room_records: int = 512) -> None:
        self.partition = partition
        self._reset(room_records)

    def _reset(self, room_records: int) -> None:
        self.ts = bytearray()
        self.caplen = bytearray()
        self.origlen = bytearray()
        self.linktype = bytearray()
        self.ifindex = bytearray()
        self.room = HEADER.size + RECORD_OVERHEAD * room_records
        self.data = bytearray(self.room)  # the packet data follows the room
        self.count = 0
        self.started = 0.0  # monotonic time of the first record (for the linger)

    def _next_room(self) -> int:
        """Records the next message's room is made for: this one's and a quarter more (at least 64, at most 8192):
        the room left unused is a quarter of the columns at most, 7 % of a message of 64-byte packets."""
        return min(8192, max(64, self.count + self.count // 4 + 16))

    def __len__(self) -> int:
        return self.count

    @property
    def size(self) -> int:
        """Bytes of the message :meth:`seal` would make now."""
        return HEADER.size + RECORD_OVERHEAD * self.count + len(self.data) - self.room

    def add(self, batch: PacketBatch, index: int) -> None:
        """Appends packet ``index`` of ``batch`` (its data is copied)."""
        self.gather(batch, array.array("I", [index]).tobytes(), 0, 1 << 62)

    def gather(self, batch: PacketBatch, indices: bytes, start: int, room: int) -> int:
        """Appends the packets of ``batch`` at ``indices[start:]`` (uint32) that fit in ``room`` more bytes of
        message (at least one when the builder is empty); returns the index into ``indices`` it stopped at."""
        end, _ = _core.gather_records(batch, indices, start, room, RECORD_OVERHEAD, not self.count,
                                      (self.ts, self.caplen, self.origlen, self.linktype, self.ifindex, self.data))
        self.count += end - start
        return int(end)

    def take(self) -> RecordBuilder:
        """Moves the records into a new builder (to seal later) and leaves this one empty."""
        out = RecordBuilder.__new__(RecordBuilder)
        out.partition = self.partition
        out.ts, out.caplen, out.origlen, out.linktype, out.ifindex = self.ts, self.caplen, self.origlen, self.linktype, self.ifindex
        out.data, out.count, out.started, out.room = self.data, self.count, self.started, self.room
        self._reset(self._next_room())
        return out

    def seal(self, seq: int) -> tuple[bytes, int, int]:
        """The message of every record added so far, as ``(payload, packets, data bytes)``; empties the builder."""
        payload, n, nbytes = self.seal_view(seq)
        return bytes(payload), n, nbytes

    def seal_view(self, seq: int) -> tuple[memoryview, int, int]:
        """:meth:`seal` without a copy: the payload is a view of the builder's data bytearray, which the builder
        lets go of (it takes new ones)."""
        n, nbytes = self.count, len(self.data) - self.room
        cols = (self.ts, self.caplen, self.origlen, self.linktype, self.ifindex)
        start = self.room - HEADER.size - RECORD_OVERHEAD * n
        buf = self.data
        if start >= 0:  # the header and the columns go into the room, right before the data
            pos = start + HEADER.size
            for col in cols:
                buf[pos:pos + len(col)] = col  # same length: the bytearray does not move
                pos += len(col)
            view = memoryview(buf)
            crc = crc32(view[start + HEADER.size:])
            HEADER.pack_into(buf, start, MAGIC, VERSION, KIND_PACKETS, HEADER.size, n, self.partition, seq,
                             RECORD_OVERHEAD * n + nbytes, crc)
            payload = view[start:]
        else:  # more records than the room holds: one copy
            data = memoryview(buf)[self.room:]
            crc = 0
            for part in (*cols, data):  # the CRC over the pieces, so that the message is put together in one copy
                crc = crc32(part, crc)
            head = HEADER.pack(MAGIC, VERSION, KIND_PACKETS, HEADER.size, n, self.partition, seq,
                               RECORD_OVERHEAD * n + nbytes, crc)
            payload = memoryview(b"".join((head, *cols, data)))
            data.release()
        self._reset(self._next_room())
        return payload, n, nbytes


def encode_end(partition: int, seq: int, publisher: str, packets: int, nbytes: int, messages: int) -> bytes:
    """The end-of-stream marker of ``publisher`` for ``partition``."""
    body = _END.pack(packets, nbytes, messages) + publisher.encode()
    return HEADER.pack(MAGIC, VERSION, KIND_END, HEADER.size, 0, partition, seq, len(body), crc32(body)) + body


def decode(payload: Any, linktype: int = 1) -> Message:
    """Parses one message strictly. Raises :class:`WireFormatError` for anything that is not a whole,
    intact message of version 1: wrong magic or version, unknown kind, lengths that do not add up, a CRC
    mismatch, a caplen above :data:`MAX_CAPLEN` or above its origlen.

    The returned batch views ``payload`` (no copy of packet data); ``linktype`` is unused unless records
    carry linktype 0xFFFFFFFF (the "server default" value).
    """
    view = memoryview(payload).cast("B")
    if len(view) < HEADER.size:
        raise WireFormatError(f"message of {len(view)} bytes is shorter than the {HEADER.size}-byte header")
    magic, version, kind, hdr_len, count, partition, seq, body_len, crc = HEADER.unpack_from(view)
    if magic != MAGIC:
        raise WireFormatError(f"not a packet-ipc message (magic {bytes(magic)!r})")
    if version != VERSION:
        raise WireFormatError(f"message format version {version} is not supported (this reader knows {VERSION})")
    if hdr_len < HEADER.size or hdr_len + body_len != len(view):
        raise WireFormatError(f"lengths do not add up: header {hdr_len} + body {body_len} != {len(view)} bytes")
    body = view[hdr_len:]
    if crc32(body) != crc:
        raise WireFormatError("CRC mismatch: the message is corrupt")
    if kind == KIND_END:
        if count != 0 or body_len < _END.size:
            raise WireFormatError("malformed end-of-stream marker")
        packets, nbytes, messages = _END.unpack_from(body)
        try:
            publisher = bytes(body[_END.size:]).decode()
        except UnicodeDecodeError:
            raise WireFormatError("end-of-stream marker with a publisher id that is not UTF-8") from None
        return Message(kind, partition, seq, end=EndOfStream(publisher, packets, nbytes, messages))
    if kind != KIND_PACKETS:
        raise WireFormatError(f"unknown message kind {kind}")
    if count == 0 or RECORD_OVERHEAD * count > body_len:
        raise WireFormatError(f"{count} records cannot fit in a {body_len}-byte body")
    n8, n4 = 8 * count, 4 * count
    ts = body[:n8]
    caplen = body[n8:n8 + n4]
    origlen = body[n8 + n4:n8 + 2 * n4]
    lts = body[n8 + 2 * n4:n8 + 3 * n4]
    ifx = body[n8 + 3 * n4:n8 + 4 * n4]
    data = body[RECORD_OVERHEAD * count:]
    caps_raw, origs_raw = bytes(caplen), bytes(origlen)
    caps, origs = _u32(caps_raw), _u32(origs_raw)
    # Every caplen is below 0x40000 (so within MAX_CAPLEN) when each one's byte 3 is 0 and byte 2 below 4: checked
    # on the bytes, without an int per record (max() over the column costs as much as the CRC); the exact bound
    # only when that fails.
    if (caps_raw[3::4].count(0) != count or max(caps_raw[2::4]) >= 4) and max(caps) > MAX_CAPLEN:
        raise WireFormatError(f"a record's caplen {max(caps)} is above {MAX_CAPLEN}")
    if caps_raw != origs_raw and any(c > o for c, o in zip(caps, origs)):  # equal: nothing cut
        raise WireFormatError("a record's caplen is above its origlen")
    lt_bytes = bytes(lts)
    uniform, lt = lt_bytes == lt_bytes[:4] * count, int.from_bytes(lt_bytes[:4], "little")
    if any(v > 0xFFFF and v != 0xFFFFFFFF for v in ({lt} if uniform else set(_u32(lt_bytes)))):
        raise WireFormatError("a record's linktype is not a 16-bit LINKTYPE value")
    if uniform and bytes(ifx).count(0) == n4:  # the usual case: one copy, no objects
        try:  # from_buffers checks that the caplens add up to the data (no int per record here either)
            batch = PacketBatch.from_buffers(ts.cast("Q"), memoryview(caps), data, memoryview(origs),
                                             linktype if lt == 0xFFFFFFFF else lt)
        except ValueError:
            raise WireFormatError(f"caplens add up to {sum(caps)} bytes but the message holds {len(data)}") from None
    else:
        if sum(caps) != len(data):
            raise WireFormatError(f"caplens add up to {sum(caps)} bytes but the message holds {len(data)}")
        tsa, lta, ifa = array.array("Q"), _u32(lts), _u32(ifx)
        tsa.frombytes(ts)
        packets, off = [], 0
        for i in range(count):
            lt_i = linktype if lta[i] == 0xFFFFFFFF else lta[i]
            packets.append(_core.Packet(tsa[i], data[off:off + caps[i]], origs[i], lt_i, ifa[i]))
            off += caps[i]
        batch = PacketBatch.from_packets(packets)
    return Message(kind, partition, seq, batch=batch)


def _u32(raw: Any) -> array.array[int]:
    out = array.array("I")
    out.frombytes(raw)
    return out
