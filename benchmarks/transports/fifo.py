"""faster-fifo peer: a shared-memory circular buffer guarded by a process-shared mutex and condvars.

Messages are written as raw bytes (``dumps``/``loads`` set to identity, so nothing is pickled): batch
mode puts the four parts of a batch (header, timestamps, lengths, payloads) with one ``put_many`` call,
which the queue stores atomically; objects mode puts the 256 packets of a chunk with one ``put_many``
(one message per packet, one lock round per call) and reads with ``get_many``. The buffer is 8 MiB,
room for many 256 x 1518 B batches. ``get_many`` copies messages into a private buffer that the next
call reuses, so the memoryviews handed out are valid until then, which is all the consumer needs.
"""

from __future__ import annotations

from queue import Empty

import faster_fifo

from . import CAPACITY_BYTES, END, PACKET_HEADER, Consumer, Producer, Transport, batch_header
from ..workloads import Packet

_pack_header = PACKET_HEADER.pack
_unpack_header = PACKET_HEADER.unpack_from
_HSIZE = PACKET_HEADER.size
_TIMEOUT = 30.0


def _identity(x):
    return x


class _Producer(Producer):
    def __init__(self, q) -> None:
        self.q = q

    def send_batch(self, batch) -> None:
        self.q.put_many([batch_header(batch), batch.timestamps, batch.caplens, batch.data], timeout=_TIMEOUT)

    def send_packets(self, packets) -> None:
        self.q.put_many([_pack_header(p.timestamp, p.orig_len) + p.data for p in packets], timeout=_TIMEOUT)

    def end(self) -> None:
        self.q.put(END, timeout=_TIMEOUT)


class _Consumer(Consumer):
    def __init__(self, q) -> None:
        self.q = q
        self.pending: list = []

    def _get(self, n: int):
        while True:
            try:
                return self.q.get_many(timeout=_TIMEOUT, max_messages_to_get=n)
            except Empty:
                continue

    def recv_batch(self):
        parts = self.pending
        while not parts or (len(parts[0]) >= 8 and len(parts) < 4):
            parts.extend(self._get(4 - len(parts) if parts else 4))
        if len(parts[0]) < 8:
            parts.clear()
            return None
        self.pending = []
        count = int.from_bytes(parts[0][0:4], "little")
        assert len(parts[1]) == 8 * count
        return parts[1], parts[2], parts[3]

    def consume_packets(self, on_packet) -> None:
        get = self._get
        while True:
            for frame in get(256):
                if len(frame) < _HSIZE:
                    return
                ts, orig_len = _unpack_header(frame)
                on_packet(Packet(ts, frame[_HSIZE:], orig_len))


class FifoTransport(Transport):
    name = "fifo"
    label = "faster-fifo"
    method = "8 MiB shared circular buffer, raw bytes (no pickle), put_many/get_many per 256, blocking"

    def make_channel(self, ctx):
        return faster_fifo.Queue(max_size_bytes=CAPACITY_BYTES, loads=_identity, dumps=_identity)

    def producer(self, channel, rendezvous):
        return _Producer(channel)

    def consumer(self, channel, rendezvous):
        return _Consumer(channel)


TRANSPORT = FifoTransport
