"""Verification: every consumer proves it read every byte, in order.

The consumer keeps three running xxh3_64 digests, over the timestamp stream (u64 LE per packet),
the length stream and the payload stream, plus packet and byte counts, and sends them to the parent.
The parent recomputes the same digests from the workload pool and the number of batches the producer
says it sent. Because a streaming hash depends only on the concatenated bytes, updating per packet
(objects mode) or per column (batch mode) gives the same value, so the expected side is computed per
column whatever the mode. Any difference makes the run FAILED, never a figure.

Length stream: batch mode hashes the u32 caplen column; objects mode hashes (u32 caplen, u32 orig_len)
per packet, so that orig_len is carried and checked too.
"""

from __future__ import annotations

import struct

import xxhash

_TS = struct.Struct("<Q").pack
_LENS = struct.Struct("<II").pack


class StreamDigest:
    """Order-sensitive digests of what a consumer received."""

    __slots__ = ("ts", "lens", "data", "packets", "payload_bytes")

    def __init__(self) -> None:
        self.ts = xxhash.xxh3_64()
        self.lens = xxhash.xxh3_64()
        self.data = xxhash.xxh3_64()
        self.packets = 0
        self.payload_bytes = 0

    def update_batch(self, timestamps, caplens, data) -> None:
        """Batch mode: three buffers (u64 column, u32 column, payloads back to back)."""
        self.ts.update(timestamps)
        self.lens.update(caplens)
        self.data.update(data)
        self.packets += len(memoryview(caplens).cast("B")) // 4
        self.payload_bytes += memoryview(data).nbytes

    def update_packet(self, packet) -> None:
        """Objects mode: one packet object with .timestamp, .data, .orig_len."""
        data = packet.data
        n = len(data)
        self.ts.update(_TS(packet.timestamp))
        self.lens.update(_LENS(n, packet.orig_len))
        self.data.update(data)
        self.packets += 1
        self.payload_bytes += n

    def result(self) -> dict:
        return {
            "ts": self.ts.hexdigest(),
            "lens": self.lens.hexdigest(),
            "data": self.data.hexdigest(),
            "packets": self.packets,
            "payload_bytes": self.payload_bytes,
        }


def expected(workload, mode: str, batches_sent: int) -> dict:
    """The digests a correct consumer reports after ``batches_sent`` batches of the cyclic pool."""
    d = StreamDigest()
    pool = workload.batches
    for i in range(batches_sent):
        b = pool[i % len(pool)]
        d.ts.update(b.timestamps)
        d.lens.update(b.caplens if mode != "objects" else b.caplen_origlen)
        d.data.update(b.data)
        d.packets += b.count
        d.payload_bytes += len(b.data)
    return d.result()


def compare(got: dict, want: dict) -> str | None:
    """None when equal, else a one-line description of the first difference."""
    for key in ("packets", "payload_bytes", "ts", "lens", "data"):
        if got.get(key) != want.get(key):
            return f"{key}: got {got.get(key)}, expected {want.get(key)}"
    return None
