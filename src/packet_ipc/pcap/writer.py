"""Writing pcap and pcapng: :class:`CaptureWriter` (files or non-seekable streams, read live by tcpdump)."""

from __future__ import annotations

import os
import struct
from operator import index as _as_int
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Iterable

# CaptureError(PacketIpcError, ValueError): its message is one line naming the file, the byte offset of
# the damage and the index of the packet being read (the number of packets read before it).

if TYPE_CHECKING:
    from .._core import PacketBatch

from ._format import (
    _WRITE_BUFFER_BYTES,
    _PCAPNG_SHB,
    _PCAPNG_BOM,
    _BT_IDB,
    _BT_EPB,
    _OPT_END,
    _OPT_IF_TSRESOL,
    _PCAP_FILE_HEADER,
    _U32_LE,
)


class CaptureWriter:
    """Write packets to a pcap or pcapng capture; a context manager.

    ``file`` is a file name (created or truncated, closed by :meth:`close`) or a writable binary file
    object (flushed but left open by :meth:`close`); it is never seeked, so a pipe such as
    ``sys.stdout.buffer`` works and ``tcpdump -r -`` can read the stream live.

    ``format="pcap"`` writes classic pcap in little-endian byte order, with the nanosecond magic
    (0xa1b23c4d) by default; ``nanosecond=False`` writes the microsecond format, and choosing it is the
    explicit request to truncate each timestamp to the microsecond below it. A pcap file has one link
    type, so a packet whose ``linktype`` differs from ``linktype`` raises ``ValueError``.

    ``format="pcapng"`` writes one section whose first interface has ``linktype``; the first packet of
    each other link type adds an interface. Every interface has ``if_tsresol`` = 9 (nanoseconds) and
    packets go out as enhanced packet blocks (``nanosecond`` is ignored).

    Output is buffered: :meth:`write_many`, :meth:`flush` and :meth:`close` hand it to the file and
    flush the file, so a reader on the other end of a pipe sees every packet written so far.
    """

    def __init__(
        self,
        file: str | os.PathLike[str] | BinaryIO,
        *,
        linktype: int,
        snaplen: int = 262144,
        format: str = "pcap",
        nanosecond: bool = True,
    ) -> None:
        """Open ``file`` and write the file header (pcap) or section header and first interface (pcapng)
        to it at once (flushed).

        Raises ``ValueError`` for an unknown format or a link type or snaplen that does not fit the
        format's fields, and ``OSError`` from creating the file.
        """
        if format not in ("pcap", "pcapng"):
            raise ValueError(f"unknown capture format {format!r} (expected 'pcap' or 'pcapng')")
        if not 0 <= linktype <= 0xFFFF:
            raise ValueError(f"linktype {linktype} does not fit in 16 bits")
        if not 0 <= snaplen <= 0xFFFFFFFF:
            raise ValueError(f"snaplen {snaplen} does not fit in 32 bits")
        self.format = format
        self.linktype = linktype
        self.snaplen = snaplen
        self.nanosecond = nanosecond if format == "pcap" else True
        self._parts: list[bytes] = []
        self._buffered = 0
        self._interfaces: dict[int, int] = {}  # pcapng: linktype -> interface id
        self._closed = False
        if isinstance(file, (str, bytes, os.PathLike)):
            self._file: IO[bytes] = open(file, "wb")
            self._owns_file = True
        else:
            self._file = file
            self._owns_file = False
        self._record_header = struct.Struct("<IIII")
        self._epb_header = struct.Struct("<IIIIIII")
        if format == "pcap":
            magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
            self._append(_PCAP_FILE_HEADER.pack(magic, 2, 4, 0, 0, snaplen, linktype))
        else:
            # SHB: byte-order magic, version 1.0, section length unknown (-1), no options.
            self._append(struct.pack("<IIIHHqI", _PCAPNG_SHB, 28, _PCAPNG_BOM, 1, 0, -1, 28))
            self._add_interface(linktype)
        # The header reaches the file at once: a writer stopped before its first packet (SIGTERM, a server
        # that never sends) leaves a valid empty capture, not a 0-byte file no reader accepts.
        self.flush()

    def _append(self, part: bytes) -> None:
        self._parts.append(part)
        self._buffered += len(part)

    def _add_interface(self, linktype: int) -> int:
        if not 0 <= linktype <= 0xFFFF:
            raise ValueError(f"linktype {linktype} does not fit in 16 bits")
        # IDB with if_tsresol = 9 (nanoseconds), then opt_endofopt.
        body = struct.pack("<HHI", linktype, 0, self.snaplen) + struct.pack("<HHB3x", _OPT_IF_TSRESOL, 1, 9)
        body += struct.pack("<HH", _OPT_END, 0)
        length = 12 + len(body)
        self._append(struct.pack("<II", _BT_IDB, length) + body + struct.pack("<I", length))
        interface_id = len(self._interfaces)
        self._interfaces[linktype] = interface_id
        return interface_id

    def write(self, record_or_packet: Any) -> None:
        """Append one packet: any object with ``.timestamp`` (int ns since the epoch) and ``.data`` (a
        bytes-like object), and optionally ``.orig_len`` (default: the captured length) and ``.linktype``
        (default: the writer's).

        Does not block on the file unless its buffer is full. Raises ``ValueError`` for a timestamp the
        format cannot hold, data longer than ``snaplen`` (readers would silently cut it), an orig_len or
        length beyond 32 bits, or (pcap) a second link type; ``TypeError`` for a non-integer timestamp.
        """
        if self._closed:
            raise ValueError("write to a closed CaptureWriter")
        packet = record_or_packet
        timestamp = _as_int(packet.timestamp)
        data = packet.data
        if type(data) is not bytes:
            data = bytes(data)  # copy now: a caller's buffer may be reused after write returns
        caplen = len(data)
        orig_len = getattr(packet, "orig_len", None)
        orig_len = caplen if orig_len is None else _as_int(orig_len)
        linktype = getattr(packet, "linktype", None)
        if caplen > self.snaplen:
            raise ValueError(f"packet of {caplen} bytes exceeds the snaplen {self.snaplen}")
        if not 0 <= orig_len <= 0xFFFFFFFF:
            raise ValueError(f"orig_len {orig_len} does not fit in 32 bits")
        if timestamp < 0:
            raise ValueError(f"timestamp {timestamp} is before the epoch")
        if self.format == "pcap":
            if linktype is not None and linktype != self.linktype:
                raise ValueError(
                    f"packet linktype {linktype} differs from the file's {self.linktype}; use format='pcapng'"
                )
            seconds, nanoseconds = divmod(timestamp, 1_000_000_000)
            if seconds > 0xFFFFFFFF:
                raise ValueError(f"timestamp {timestamp} is beyond what pcap can hold (year 2106)")
            fraction = nanoseconds if self.nanosecond else nanoseconds // 1000
            self._parts.append(self._record_header.pack(seconds, fraction, caplen, orig_len))
            self._parts.append(data)
            self._buffered += 16 + caplen
        else:
            if linktype is None:
                linktype = self.linktype
            interface_id = self._interfaces.get(linktype)
            if interface_id is None:
                interface_id = self._add_interface(linktype)
            if timestamp > 0xFFFFFFFFFFFFFFFF:
                raise ValueError(f"timestamp {timestamp} does not fit in 64 bits")
            padding = -caplen & 3
            length = 32 + caplen + padding
            self._parts.append(
                self._epb_header.pack(
                    _BT_EPB, length, interface_id, timestamp >> 32, timestamp & 0xFFFFFFFF, caplen, orig_len
                )
            )
            self._parts.append(data)
            self._parts.append(b"\0" * padding + _U32_LE.pack(length))
            self._buffered += length
        if self._buffered >= _WRITE_BUFFER_BYTES:
            self._drain()

    def write_many(self, iterable: Iterable[Any]) -> int:
        """Write every packet of ``iterable`` (as :meth:`write`), then :meth:`flush`; return the count.

        Raises what :meth:`write` raises; the packets before the failing one stay written.
        """
        count = 0
        write = self.write
        try:
            for packet in iterable:
                write(packet)
                count += 1
        finally:
            self.flush()
        return count

    def write_batch(self, batch: PacketBatch) -> int:
        """Write every packet of a :class:`~packet_ipc.PacketBatch`, then :meth:`flush`; return the count.

        Classic pcap takes the C fast path (``csrc/pcap.c``: the records are built from the batch's columns,
        no Python object per packet); pcapng goes packet by packet. Raises what :meth:`write` raises, with
        the same message; the packets before the failing one stay written.
        """
        if self.format != "pcap":
            return self.write_many(batch)
        if self._closed:
            raise ValueError("write to a closed CaptureWriter")
        from .._core import pcap_write

        records, count, status = pcap_write(batch, self.nanosecond, self.snaplen, self.linktype)
        self._append(records)
        try:
            if status:
                self.write(batch[count])  # the packet pcap cannot hold: write() raises its error
                raise AssertionError(f"pcap_write refused packet {count} (status {status}) that write() took")
        finally:
            self.flush()
        return int(count)

    def _drain(self) -> None:
        if self._parts:
            self._file.write(b"".join(self._parts))
            self._parts.clear()
            self._buffered = 0

    def flush(self) -> None:
        """Hand the buffered output to the file and flush it. Blocks while a pipe reader lags."""
        if self._file is None:
            return
        self._drain()
        self._file.flush()

    def close(self) -> None:
        """Flush, and close the file if the writer opened it (a caller's file object stays open).
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
        finally:
            if self._owns_file:
                self._file.close()

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
