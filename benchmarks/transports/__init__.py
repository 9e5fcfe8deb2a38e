"""Transports under test: packet-ipc and its peers behind one small interface.

Each module defines a ``Transport`` subclass. The runner creates the transport in the parent (where
``make_channel`` may build objects both children inherit through ``fork``), then calls ``producer`` in
the producer process and ``consumer`` in the consumer process. The two sides may exchange setup data
(a server name, a "subscriber exists" signal) over ``rendezvous``, a duplex ``multiprocessing`` pipe.

Framing shared by the peers (packet-ipc has its own wire format):
- batch mode, one message per batch: ``BATCH_HEADER`` (u32 packet count, u32 payload bytes), then
  the u64 timestamp column, the u32 length column, the payloads back to back (zmq and faster-fifo send
  these four as parts of one message instead of concatenating them);
- objects mode, one message per packet: ``PACKET_HEADER`` (u64 timestamp, u32 orig_len) then the data;
- end of stream: a message shorter than any header (``END``).
"""

from __future__ import annotations

import importlib
import struct

BATCH_HEADER = struct.Struct("<II")
PACKET_HEADER = struct.Struct("<QI")
END = b"\x00"

# Display order; packet-ipc first, it is the reference for every ratio.
NAMES = ("packet_ipc", "pipe", "queue", "zmq", "fifo", "iceoryx2")

# In-flight budget, in bytes, that every bounded transport gets (packet-ipc's ring capacity).
CAPACITY_BYTES = 8 << 20


class Unavailable(Exception):
    """The transport cannot run here (import error, missing package); the message says why."""


class Producer:
    def send_batch(self, batch) -> None:
        raise NotImplementedError

    def send_inplace(self, batch) -> None:
        """The batch written straight into the transport's own shared memory (its zero-copy send)."""
        raise NotImplementedError

    def send_packets(self, packets) -> None:
        raise NotImplementedError

    def end(self) -> None:
        """Send end of stream."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class Consumer:
    def recv_batch(self):
        """Next batch as (timestamps, caplens, data) buffers, or None at end of stream.

        The buffers stay valid until ``release``.
        """
        raise NotImplementedError

    def release(self) -> None:
        pass

    def consume_packets(self, on_packet) -> None:
        """Call ``on_packet(packet)`` for each packet object until end of stream."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class Transport:
    name = "?"
    label = "?"
    # Short note on how it is driven, printed in the docs and JSON.
    method = ""
    # Has a zero-copy send (a loan or a reservation in its shared memory): runs in the "inplace" mode.
    inplace = False

    def __init__(self, mode: str, max_batch_bytes: int, max_packet_bytes: int) -> None:
        self.mode = mode
        self.max_batch_bytes = max_batch_bytes
        self.max_packet_bytes = max_packet_bytes

    @property
    def max_message_bytes(self) -> int:
        """Largest message this run can send in its mode, framing included."""
        if self.mode != "objects":
            return BATCH_HEADER.size + 12 * 256 + self.max_batch_bytes
        return PACKET_HEADER.size + self.max_packet_bytes

    def make_channel(self, ctx):
        return None

    def producer(self, channel, rendezvous) -> Producer:
        raise NotImplementedError

    def consumer(self, channel, rendezvous) -> Consumer:
        raise NotImplementedError


def load(name: str) -> type[Transport]:
    """Import one transport module; raises Unavailable with the reason when it cannot run."""
    if name not in NAMES:
        raise ValueError(f"unknown transport {name!r}; known: {', '.join(NAMES)}")
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ImportError as exc:
        raise Unavailable(f"import failed: {exc}") from exc
    return module.TRANSPORT


def split_batch(buf, n: int | None = None):
    """(timestamps, caplens, data) views of one framed batch message (header included)."""
    mv = memoryview(buf)
    count, nbytes = BATCH_HEADER.unpack_from(mv, 0)
    o = BATCH_HEADER.size
    return mv[o : o + 8 * count], mv[o + 8 * count : o + 12 * count], mv[o + 12 * count : o + 12 * count + nbytes]


def batch_header(batch) -> bytes:
    return BATCH_HEADER.pack(batch.count, len(batch.data))
