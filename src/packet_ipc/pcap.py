"""Capture files in and out: the pure-Python pcap and pcapng reader and writer.

This module is the edge of the system where packets enter from, or leave to, capture files. It turns a
classic pcap file (microsecond or nanosecond, either byte order, also the Kuznetzov "modified" variant) or a
pcapng file (any number of sections, each in its own byte order, several interfaces with their own
link types and timestamp resolutions) into a stream of :class:`CaptureRecord` objects whose timestamps are
exact integer nanoseconds, and writes such records back out as pcap or pcapng, also to a non-seekable
stream so that ``tcpdump -r -`` can follow it live. It depends on the standard library only: a file named by
path is mapped with ``mmap`` and parsed in place with precompiled ``struct.Struct`` objects; a file object
is read in large chunks. Damage in a file is reported as :class:`CaptureError`, never as garbage records.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from dataclasses import dataclass
from itertools import islice
from operator import index as _as_int
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Iterable, Iterator

# CaptureError(PacketIpcError, ValueError): its message is one line naming the file, the byte offset of
# the damage and the index of the packet being read (the number of packets read before it).
from .errors import CaptureError

if TYPE_CHECKING:
    from ._core import PacketBatch

__all__ = [
    "CaptureError",
    "CaptureRecord",
    "CaptureReader",
    "CaptureWriter",
    "open_capture",
    "read_capture",
    "MAX_CAPLEN",
]


@dataclass(frozen=True, slots=True)
class CaptureRecord:
    """One packet as read from a capture file.

    ``timestamp`` is in nanoseconds since the Unix epoch, exact (never a float); ``data`` holds the
    captured bytes (caplen is ``len(data)``); ``orig_len`` is the length on the wire; ``linktype`` the
    pcap ``LINKTYPE_*`` of the packet's interface; ``ifindex`` the interface's index in the file
    (counted across all pcapng sections; always 0 for classic pcap).
    """

    timestamp: int
    data: bytes
    orig_len: int
    linktype: int
    ifindex: int



# Building a frozen dataclass through its __init__ goes through object.__setattr__ once per field,
# about twice as slow as filling the slots directly; the readers below do the latter.
_new_record = object.__new__
_set_timestamp = CaptureRecord.timestamp.__set__  # type: ignore[attr-defined,misc]
_set_data = CaptureRecord.data.__set__  # type: ignore[attr-defined,misc]
_set_orig_len = CaptureRecord.orig_len.__set__  # type: ignore[attr-defined,misc]
_set_linktype = CaptureRecord.linktype.__set__  # type: ignore[attr-defined,misc]
_set_ifindex = CaptureRecord.ifindex.__set__  # type: ignore[attr-defined,misc]

#: Largest captured length accepted for one packet (256 MiB); anything larger is a corrupt length field.
MAX_CAPLEN = 256 * 1024 * 1024

_CHUNK_BYTES = 1 << 20  # read size when parsing a stream that cannot be mapped
_WRITE_BUFFER_BYTES = 1 << 20  # the writer hands its buffer to the file beyond this

# Classic pcap magics, as read with a little-endian "<I".
_PCAP_MAGICS = {
    # magic: (byte order, nanosecond, record header length)
    0xA1B2C3D4: ("<", False, 16),
    0xD4C3B2A1: (">", False, 16),
    0xA1B23C4D: ("<", True, 16),
    0x4D3CB2A1: (">", True, 16),
    0xA1B2CD34: ("<", False, 24),  # Kuznetzov's "modified" pcap: 8 more bytes per record header
    0x34CDB2A1: (">", False, 24),
}
_PCAPNG_SHB = 0x0A0D0D0A  # the same read in either byte order
_PCAPNG_BOM = 0x1A2B3C4D
_BT_IDB = 1
_BT_PB = 2  # obsolete Packet Block
_BT_SPB = 3
_BT_EPB = 6
_OPT_END = 0
_OPT_IF_TSRESOL = 9
_OPT_IF_TSOFFSET = 14
_MAX_BLOCK_BYTES = MAX_CAPLEN + (1 << 20)  # a packet block may carry options beyond its data

# magic, version major, minor, thiszone, sigfigs, snaplen, network (linktype)
_PCAP_FILE_HEADER = struct.Struct("<IHHiIII")
_U32_LE = struct.Struct("<I")


def _structs(order: str) -> dict[str, struct.Struct]:
    return {
        "file_header": struct.Struct(order + "IHHiIII"),
        "record16": struct.Struct(order + "IIII"),
        "record24": struct.Struct(order + "IIII8x"),
        "block": struct.Struct(order + "II"),
        "u32": struct.Struct(order + "I"),
        "shb": struct.Struct(order + "IIIHH"),
        "idb": struct.Struct(order + "HHI"),
        "option": struct.Struct(order + "HH"),
        "i64": struct.Struct(order + "q"),
        "epb": struct.Struct(order + "IIIII"),
        "pb": struct.Struct(order + "HHIIII"),
    }


_STRUCTS = {"<": _structs("<"), ">": _structs(">")}


class _Interface:
    """A pcapng interface: its link type, snaplen and how to turn its timestamp ticks into ns."""

    __slots__ = ("linktype", "snaplen", "multiplier", "divisor", "offset_ns", "ifindex")

    def __init__(self, linktype: int, snaplen: int, ifindex: int) -> None:
        self.linktype = linktype
        self.snaplen = snaplen
        self.ifindex = ifindex
        # ns = ticks * multiplier // divisor + offset_ns; the default resolution is microseconds.
        self.multiplier = 1000
        self.divisor = 1
        self.offset_ns = 0


class CaptureReader:
    """An open capture file: a context manager and an iterator of :class:`CaptureRecord`.

    Create it with :func:`open_capture`. ``format`` is ``"pcap"`` or ``"pcapng"``; ``linktype`` and
    ``snaplen`` are those of the file (pcap) or of its first interface (pcapng; ``linktype`` is -1 when
    a pcapng file declares no interface at all, ``snaplen`` 0 when it sets no limit).

    Iteration yields every packet in file order and then stops. When it reaches damage (a record or
    block cut short, a length that cannot be right, a packet on an undeclared interface) it first yields
    every good packet before the damage and then raises :class:`CaptureError`. Iterating again, or
    through :meth:`read_batches`, continues where the previous iteration stopped. Reading from a pipe
    blocks until data arrives or the writer closes it.
    """

    linktype: int
    snaplen: int
    format: str

    def __init__(self, name: str, file: IO[bytes] | None, owns_file: bool) -> None:
        # Use open_capture(); this constructor only sets up the byte source and parses the header.
        self.name = name
        self._file = file
        self._owns_file = owns_file
        self._map: mmap.mmap | None = None
        self._buf: bytes | mmap.mmap = b""
        self._pos = 0  # next byte to parse in _buf
        self._base = 0  # file offset of _buf[0], for error messages
        self._eof = True
        self._read_chunk: Any = None
        self._count = 0  # records yielded so far
        self._closed = False
        self._started = False  # iteration began (the C fast path can then no longer take over)
        self._fast: tuple[int, int, int, int] | None = None  # classic pcap: (big endian, header, ns/tick, swap)
        try:
            self._attach(file, owns_file)
            self._records = self._parse_header()
        except BaseException:
            self.close()
            raise

    # -- byte source -------------------------------------------------------------------------------

    def _attach(self, file: IO[bytes] | None, owns_file: bool) -> None:
        assert file is not None
        status = os.fstat(file.fileno()) if owns_file else None
        if status is not None and stat.S_ISREG(status.st_mode):
            if status.st_size > 0:
                # MAP_POPULATE: fault the whole file in with one call rather than a fault per page.
                flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
                self._map = mmap.mmap(file.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
                self._buf = self._map
            return
        # A named pipe, /dev/stdin or a caller's stream: read1 returns what is available instead of
        # waiting for a full chunk, so a live capture is parsed as it arrives.
        self._read_chunk = getattr(file, "read1", None) or file.read
        self._eof = False

    def _fill(self, need: int) -> bool:
        """Make at least ``need`` bytes available from ``_pos``; False if the input ends first."""
        while len(self._buf) - self._pos < need:
            if self._eof:
                return False
            chunk = self._read_chunk(max(_CHUNK_BYTES, need - (len(self._buf) - self._pos)))
            if not chunk:
                self._eof = True
                return False
            self._base += self._pos
            self._buf = self._buf[self._pos :] + chunk
            self._pos = 0
        return True

    def _error(self, what: str, offset: int) -> CaptureError:
        return CaptureError(f"{self.name}: {what} at byte offset {offset} (packet index {self._count})")

    # -- headers -----------------------------------------------------------------------------------

    def _parse_header(self) -> Iterator[CaptureRecord]:
        if not self._fill(4):
            have = len(self._buf) - self._pos
            what = "empty file" if have == 0 and self._base == 0 else f"truncated file header ({have} bytes)"
            raise self._error(what, self._base + self._pos)
        (magic,) = _U32_LE.unpack_from(self._buf, self._pos)
        if magic in _PCAP_MAGICS:
            return self._parse_pcap_header(magic)
        if magic == _PCAPNG_SHB:
            self.format = "pcapng"
            self._interfaces_total = 0
            self._peek_first_interface()
            return self._pcapng_records()
        raise self._error(f"not a pcap or pcapng file (magic 0x{magic:08x})", self._base + self._pos)

    def _parse_pcap_header(self, magic: int) -> Iterator[CaptureRecord]:
        self.format = "pcap"
        order, nanosecond, record_header_len = _PCAP_MAGICS[magic]
        s = _STRUCTS[order]
        if not self._fill(24):
            raise self._error("truncated pcap file header", self._base + len(self._buf))
        _, major, minor, _, _, snaplen, network = s["file_header"].unpack_from(self._buf, self._pos)
        if major != 2 or minor > 4:
            # libpcap reads 2.0 to 2.4 only; 1.x is its "archaic" format.
            raise self._error(f"unsupported pcap version {major}.{minor}", self._base + self._pos + 4)
        self.snaplen = snaplen
        # The upper 16 bits carry FCS information (LT_FCS_LENGTH) and reserved bits, not the type.
        self.linktype = network & 0xFFFF
        self._pos += 24
        # Versions before 2.3 stored caplen and len the other way round; 2.3 did it either way.
        swapped_lengths = 2 if minor < 3 else 1 if minor == 3 else 0
        record = s["record16"] if record_header_len == 16 else s["record24"]
        self._fast = (int(order == ">"), record_header_len, 1 if nanosecond else 1000, swapped_lengths)
        return self._pcap_records(record, record_header_len, 1 if nanosecond else 1000, swapped_lengths)

    def _peek_first_interface(self) -> None:
        """Set ``linktype``/``snaplen`` from the first IDB without consuming anything."""
        self.linktype, self.snaplen = -1, 0
        if not self._fill(12):
            raise self._error("truncated pcapng section header", self._base + len(self._buf))
        (bom,) = _U32_LE.unpack_from(self._buf, self._pos + 8)
        order = "<" if bom == _PCAPNG_BOM else ">" if bom == 0x4D3C2B1A else None
        if order is None:
            raise self._error(f"bad pcapng byte-order magic 0x{bom:08x}", self._base + self._pos + 8)
        s = _STRUCTS[order]
        relative = 0
        while self._fill(relative + 8):
            block_type, block_len = s["block"].unpack_from(self._buf, self._pos + relative)
            if block_type == _BT_IDB:
                if block_len >= 20 and self._fill(relative + 16):
                    linktype, _, snaplen = s["idb"].unpack_from(self._buf, self._pos + relative + 8)
                    self.linktype, self.snaplen = linktype, snaplen
                return
            if block_type in (_BT_EPB, _BT_SPB, _BT_PB) or (block_type == _PCAPNG_SHB and relative):
                return  # the iteration reports the missing interface
            if block_len < 12 or block_len % 4:
                return  # the iteration reports the bad block
            relative += block_len

    # -- record parsers ----------------------------------------------------------------------------

    def _pcap_records(
        self, record: struct.Struct, header_len: int, ns_per_tick: int, swapped_lengths: int
    ) -> Iterator[CaptureRecord]:
        unpack = record.unpack_from
        linktype = self.linktype
        new, set_ts, set_data, set_orig, set_lt, set_if = (
            _new_record, _set_timestamp, _set_data, _set_orig_len, _set_linktype, _set_ifindex,
        )
        cls = CaptureRecord
        buf, pos = self._buf, self._pos
        end = len(buf)
        count = self._count
        while True:
            if end - pos < header_len:
                self._pos, self._count = pos, count
                if not self._fill(header_len):
                    if len(self._buf) == self._pos:
                        return
                    raise self._error(
                        f"truncated record header ({len(self._buf) - self._pos} of {header_len} bytes)",
                        self._base + self._pos,
                    )
                buf, pos = self._buf, self._pos
                end = len(buf)
            seconds, fraction, caplen, orig_len = unpack(buf, pos)
            if swapped_lengths and (swapped_lengths == 2 or caplen > orig_len):
                caplen, orig_len = orig_len, caplen
            start = pos + header_len
            stop = start + caplen
            if stop > end:
                self._pos, self._count = pos, count
                if caplen > MAX_CAPLEN:
                    raise self._error(f"absurd caplen {caplen}", self._base + pos + 8)
                if not self._fill(header_len + caplen):
                    raise self._error(
                        f"record cut short ({len(self._buf) - self._pos - header_len} of {caplen} bytes)",
                        self._base + self._pos,
                    )
                buf, pos = self._buf, self._pos
                end = len(buf)
                start = pos + header_len
                stop = start + caplen
            elif caplen > MAX_CAPLEN:
                self._pos, self._count = pos, count
                raise self._error(f"absurd caplen {caplen}", self._base + pos + 8)
            rec = new(cls)
            set_ts(rec, seconds * 1_000_000_000 + fraction * ns_per_tick)
            set_data(rec, buf[start:stop])
            set_orig(rec, orig_len)
            set_lt(rec, linktype)
            set_if(rec, 0)
            pos = stop
            count += 1
            yield rec

    def _pcapng_records(self) -> Iterator[CaptureRecord]:
        new, set_ts, set_data, set_orig, set_lt, set_if = (
            _new_record, _set_timestamp, _set_data, _set_orig_len, _set_linktype, _set_ifindex,
        )
        cls = CaptureRecord
        interfaces: list[_Interface] = []
        s = _STRUCTS["<"]
        block_unpack = s["block"].unpack_from
        epb_unpack = s["epb"].unpack_from
        u32_unpack = s["u32"].unpack_from
        buf, pos = self._buf, self._pos
        end = len(buf)
        count = self._count
        while True:
            if end - pos < 12:
                self._pos, self._count = pos, count
                if not self._fill(12):
                    if len(self._buf) == self._pos:
                        return
                    raise self._error(
                        f"truncated block header ({len(self._buf) - self._pos} bytes)", self._base + self._pos
                    )
                buf, pos = self._buf, self._pos
                end = len(buf)
            block_type, block_len = block_unpack(buf, pos)
            if block_type == _PCAPNG_SHB:
                # A new section may switch byte order; the type reads the same either way.
                (bom,) = _U32_LE.unpack_from(buf, pos + 8)
                order = "<" if bom == _PCAPNG_BOM else ">" if bom == 0x4D3C2B1A else None
                if order is None:
                    self._pos, self._count = pos, count
                    raise self._error(f"bad pcapng byte-order magic 0x{bom:08x}", self._base + pos + 8)
                s = _STRUCTS[order]
                block_unpack = s["block"].unpack_from
                epb_unpack = s["epb"].unpack_from
                u32_unpack = s["u32"].unpack_from
                block_type, block_len = block_unpack(buf, pos)
            if block_len < 12 or block_len & 3 or block_len > _MAX_BLOCK_BYTES:
                self._pos, self._count = pos, count
                raise self._error(f"bad block length {block_len} (block type {block_type})", self._base + pos + 4)
            if pos + block_len > end:
                self._pos, self._count = pos, count
                if not self._fill(block_len):
                    raise self._error(
                        f"block cut short ({len(self._buf) - self._pos} of {block_len} bytes)", self._base + self._pos
                    )
                buf, pos = self._buf, self._pos
                end = len(buf)
            stop = pos + block_len
            if u32_unpack(buf, stop - 4)[0] != block_len:
                self._pos, self._count = pos, count
                raise self._error(f"block length {block_len} does not match its trailer", self._base + stop - 4)
            if block_type == _BT_EPB:
                if block_len < 32:
                    self._pos, self._count = pos, count
                    raise self._error(f"enhanced packet block too short ({block_len} bytes)", self._base + pos)
                if_id, high, low, caplen, orig_len = epb_unpack(buf, pos + 8)
                if caplen > block_len - 32:
                    self._pos, self._count = pos, count
                    raise self._error(f"caplen {caplen} exceeds its block", self._base + pos + 20)
                try:
                    iface = interfaces[if_id]
                except IndexError:
                    self._pos, self._count = pos, count
                    raise self._error(f"packet on undeclared interface {if_id}", self._base + pos + 8) from None
                rec = new(cls)
                set_ts(rec, (high << 32 | low) * iface.multiplier // iface.divisor + iface.offset_ns)
                set_data(rec, buf[pos + 28 : pos + 28 + caplen])
                set_orig(rec, orig_len)
                set_lt(rec, iface.linktype)
                set_if(rec, iface.ifindex)
                pos = stop
                count += 1
                yield rec
                continue
            self._pos, self._count = pos, count
            if block_type == _PCAPNG_SHB:
                interfaces = self._parse_shb(s, pos, block_len)
            elif block_type == _BT_IDB:
                interfaces.append(self._parse_idb(s, pos, block_len))
            elif block_type == _BT_SPB or block_type == _BT_PB:
                rec = self._parse_simple_or_obsolete(s, interfaces, block_type, pos, block_len)
                pos = stop
                count += 1
                self._pos, self._count = pos, count
                yield rec
                continue
            # Any other block (name resolution, statistics, custom, ...) carries no packet: skip it.
            pos = stop

    def _parse_shb(self, s: dict[str, struct.Struct], pos: int, block_len: int) -> list[_Interface]:
        if block_len < 28:
            raise self._error(f"section header block too short ({block_len} bytes)", self._base + pos)
        _, _, _, major, minor = s["shb"].unpack_from(self._buf, pos)
        if major != 1:
            raise self._error(f"unsupported pcapng version {major}.{minor}", self._base + pos + 12)
        return []  # a new section forgets the previous section's interfaces

    def _parse_idb(self, s: dict[str, struct.Struct], pos: int, block_len: int) -> _Interface:
        buf = self._buf
        if block_len < 20:
            raise self._error(f"interface description block too short ({block_len} bytes)", self._base + pos)
        linktype, _, snaplen = s["idb"].unpack_from(buf, pos + 8)
        iface = _Interface(linktype, snaplen, self._interfaces_total)
        self._interfaces_total += 1
        option_unpack = s["option"].unpack_from
        opt = pos + 16
        options_end = pos + block_len - 4
        while opt + 4 <= options_end:
            code, length = option_unpack(buf, opt)
            if code == _OPT_END:
                break
            value = opt + 4
            if value + length > options_end:
                raise self._error(f"interface option {code} overruns its block", self._base + opt)
            if code == _OPT_IF_TSRESOL and length >= 1:
                resolution = buf[value]
                exponent = resolution & 0x7F
                if resolution & 0x80:  # ticks of 2**-exponent seconds
                    iface.multiplier, iface.divisor = 1_000_000_000, 1 << exponent
                elif exponent <= 9:  # ticks of 10**-exponent seconds
                    iface.multiplier, iface.divisor = 10 ** (9 - exponent), 1
                else:  # finer than a nanosecond: truncate to whole nanoseconds
                    iface.multiplier, iface.divisor = 1, 10 ** (exponent - 9)
            elif code == _OPT_IF_TSOFFSET and length >= 8:
                iface.offset_ns = s["i64"].unpack_from(buf, value)[0] * 1_000_000_000
            opt = value + ((length + 3) & ~3)
        return iface

    def _parse_simple_or_obsolete(
        self, s: dict[str, struct.Struct], interfaces: list[_Interface], block_type: int, pos: int, block_len: int
    ) -> CaptureRecord:
        buf = self._buf
        if block_type == _BT_SPB:
            if block_len < 16:
                raise self._error(f"simple packet block too short ({block_len} bytes)", self._base + pos)
            if not interfaces:
                raise self._error("simple packet block before any interface", self._base + pos)
            iface = interfaces[0]
            (orig_len,) = s["u32"].unpack_from(buf, pos + 8)
            # The block does not store caplen: it is the wire length, cut at the snaplen and the block.
            caplen = min(orig_len, block_len - 16)
            if iface.snaplen:
                caplen = min(caplen, iface.snaplen)
            timestamp = 0  # a simple packet block carries no timestamp
            data = bytes(buf[pos + 12 : pos + 12 + caplen])
        else:
            if block_len < 32:
                raise self._error(f"packet block too short ({block_len} bytes)", self._base + pos)
            if_id, _, high, low, caplen, orig_len = s["pb"].unpack_from(buf, pos + 8)
            if caplen > block_len - 32:
                raise self._error(f"caplen {caplen} exceeds its block", self._base + pos + 20)
            if if_id >= len(interfaces):
                raise self._error(f"packet on undeclared interface {if_id}", self._base + pos + 8)
            iface = interfaces[if_id]
            timestamp = (high << 32 | low) * iface.multiplier // iface.divisor + iface.offset_ns
            data = bytes(buf[pos + 28 : pos + 28 + caplen])
        return CaptureRecord(timestamp, data, orig_len, iface.linktype, iface.ifindex)

    # -- public API --------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[CaptureRecord]:
        """Return the record iterator (one per reader: iterating twice continues, it does not rewind)."""
        if self._closed:
            raise ValueError(f"{self.name}: capture is closed")
        self._started = True
        return self._records

    def read_batches(self, max_packets: int = 256) -> Iterator[list[CaptureRecord]]:
        """Yield lists of up to ``max_packets`` records until the file ends.

        Blocks like iteration does; raises :class:`CaptureError` at damage after yielding, in earlier
        batches and in a final partial batch, every record before it.
        """
        if max_packets < 1:
            raise ValueError("max_packets must be at least 1")
        records = iter(self)
        while True:
            batch: list[CaptureRecord] = []
            try:
                batch.extend(islice(records, max_packets))
            except CaptureError:
                if batch:
                    yield batch
                raise
            if not batch:
                return
            yield batch

    def read_packet_batches(self, max_packets: int = 256) -> Iterator[PacketBatch]:
        """Yield :class:`~packet_ipc.PacketBatch` objects of up to ``max_packets`` packets until the file ends.

        Classic pcap takes the C fast path (``csrc/pcap.c``: no Python object per packet), from a path or a
        stream (a pipe, a socket: there a batch holds what has arrived, it does not wait for
        ``max_packets``); pcapng and a reader already iterated go through the records. Damage is reported
        as iteration reports it: every good packet first (in earlier and a final partial batch), then
        :class:`CaptureError` with the same message.
        """
        from ._core import PacketBatch, pcap_batch

        if max_packets < 1:
            raise ValueError("max_packets must be at least 1")
        if self._fast is not None and self._map is None and not self._started and not self._eof:
            yield from self._stream_packet_batches(max_packets)
            return
        if self._fast is None or self._map is None or self._started:
            for records in self.read_batches(max_packets):
                yield PacketBatch.from_packets(records)  # each record brings its own linktype and ifindex
            return
        self._started = True
        big, header_len, ns_per_tick, swapped = self._fast
        pos = self._pos
        while True:
            batch, pos, status = pcap_batch(
                self._map, pos, max_packets, big, header_len, ns_per_tick, swapped, MAX_CAPLEN, self.linktype
            )
            self._pos = pos
            if batch is not None:
                self._count += len(batch)
                yield batch
            if status == 0:
                continue
            if status == 1:
                return
            raise self._fast_error(status, pos, header_len, big)

    def _stream_packet_batches(self, max_packets: int) -> Iterator[PacketBatch]:
        """Classic pcap from a pipe or socket through the C fast path. A batch holds the whole records read
        so far (up to ``max_packets``): it never waits for a full batch, so a live stream is served as it
        arrives. More is read only when the buffer holds no whole record."""
        from ._core import pcap_batch

        assert self._fast is not None
        self._started = True
        big, header_len, ns_per_tick, swapped = self._fast
        while True:
            batch, pos, status = pcap_batch(
                self._buf, self._pos, max_packets, big, header_len, ns_per_tick, swapped, MAX_CAPLEN, self.linktype
            )
            self._pos = pos
            if batch is not None:
                self._count += len(batch)
                yield batch
            if status == 0:
                continue
            if status == 4:
                raise self._fast_error(status, pos, header_len, big)
            # The buffer ends at a record boundary (1) or inside a record (2, 3): read what has arrived.
            if not self._fill(len(self._buf) - self._pos + 1):
                if status == 1:
                    return
                raise self._fast_error(status, self._pos, header_len, big)

    def _fast_error(self, status: int, pos: int, header_len: int, big: int) -> CaptureError:
        end = len(self._buf)
        if status == 2:
            return self._error(f"truncated record header ({end - pos} of {header_len} bytes)", self._base + pos)
        caplen, orig_len = struct.unpack_from(">II" if big else "<II", self._buf, pos + 8)
        swapped = self._fast[3] if self._fast else 0
        if swapped and (swapped == 2 or caplen > orig_len):
            caplen = orig_len
        if status == 4:
            return self._error(f"absurd caplen {caplen}", self._base + pos + 8)
        return self._error(f"record cut short ({end - pos - header_len} of {caplen} bytes)", self._base + pos)

    def close(self) -> None:
        """Release the mapping and close the file if :func:`open_capture` opened it. Idempotent."""
        self._closed = True
        records = getattr(self, "_records", None)
        if records is not None:
            records.close()
        self._buf = b""
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._owns_file and self._file is not None:
            self._file.close()
        self._file = None

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<CaptureReader {self.name!r} format={getattr(self, 'format', '?')} linktype={getattr(self, 'linktype', '?')}>"


def _source_name(source: Any) -> str:
    if isinstance(source, (str, bytes, os.PathLike)):
        return os.fsdecode(source)
    name = getattr(source, "name", None)
    return os.fsdecode(name) if isinstance(name, (str, bytes)) else f"<{type(source).__name__}>"


def open_capture(path: str | os.PathLike[str] | BinaryIO) -> CaptureReader:
    """Open a pcap or pcapng capture, recognised by its magic number, and parse its file header.

    ``path`` is a file name (the file is memory-mapped and closed by :meth:`CaptureReader.close`) or a
    binary file object such as ``sys.stdin.buffer`` (read in chunks from its current position, left open).
    Opening a file name does not block; opening a pipe blocks until its header has arrived.

    Raises ``FileNotFoundError`` (and other ``OSError``) from opening the file, and
    :class:`CaptureError` for an empty file, an unknown magic number, a truncated file header or an
    unsupported format version.
    """
    if isinstance(path, (str, bytes, os.PathLike)):
        file: IO[bytes] = open(path, "rb")
        return CaptureReader(_source_name(path), file, owns_file=True)
    return CaptureReader(_source_name(path), path, owns_file=False)


def read_capture(path: str | os.PathLike[str] | BinaryIO) -> list[CaptureRecord]:
    """Read every record of a capture into a list.

    All or nothing: if the file is damaged anywhere this raises :class:`CaptureError` and returns no
    partial data (use :func:`open_capture` and iterate to get the records before the damage).
    Raises ``FileNotFoundError`` for a missing file.
    """
    with open_capture(path) as reader:
        return list(reader)


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
        from ._core import pcap_write

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
