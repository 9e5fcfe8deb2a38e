"""Reading pcap and pcapng: :class:`CaptureReader` (memory-mapped files, or streams read in chunks)."""

from __future__ import annotations

import mmap
import os
import stat
import struct
from itertools import islice
from typing import IO, TYPE_CHECKING, Any, Iterator

# CaptureError(PacketIpcError, ValueError): its message is one line naming the file, the byte offset of
# the damage and the index of the packet being read (the number of packets read before it).
from ..errors import CaptureError

if TYPE_CHECKING:
    from .._core import PacketBatch

from ._format import (
    CaptureRecord,
    _new_record,
    _set_timestamp,
    _set_data,
    _set_orig_len,
    _set_linktype,
    _set_ifindex,
    MAX_CAPLEN,
    _CHUNK_BYTES,
    _PCAP_MAGICS,
    _PCAPNG_SHB,
    _PCAPNG_BOM,
    _BT_IDB,
    _BT_PB,
    _BT_SPB,
    _BT_EPB,
    _OPT_END,
    _OPT_IF_TSRESOL,
    _OPT_IF_TSOFFSET,
    _MAX_BLOCK_BYTES,
    _U32_LE,
    _STRUCTS,
    _Interface,
)


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
        from .._core import PacketBatch, pcap_batch

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
        from .._core import pcap_batch

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
