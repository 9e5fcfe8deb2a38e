"""Tests of packet_ipc.pcap: reading pcap/pcapng against reference readers, round trips, damaged files.

Core cases use the small tcpdump captures shipped in tests/data (BSD, see LICENSE.tcpdump), so a clone
without ../shared still runs them. The sweep over every real capture in ../shared/data/pcaps compares
against dpkt and, where installed, tshark; it is skipped with a reason when that directory is absent.

Reference-reader findings these tests pin (tshark 4.0.17, dpkt 1.9.8):
- dpkt's pcapng Reader uses the first IDB's linktype and resolution for every packet and stops at a
  second section (gopacket_be_test202.pcapng: dpkt 3 packets, tshark and we 8; many_interfaces.pcapng:
  dpkt says Ethernet for the NULL/loopback packets). tshark is right; multi-interface files are compared
  against tshark only.
- dpkt's datalink() returns the raw pcap header word, FCS/reserved bits included (0x30000001); libpcap and
  tshark take the low 16 bits (LT_LINKTYPE), as we do.
- tshark lists non-packet pcapng blocks (custom blocks) as extra "frames" with no interface id
  (gopacket_be_test202.pcapng: 11 frames for 8 packets); they are not packets.
- tshark keeps nanoseconds in a 32-bit int and seconds as signed: records whose microsecond field is
  >= 10**6 or whose seconds are >= 2**31 (tcpdump's fuzz captures) print as wrapped or negative times.
  Ours are the exact arithmetic (sec * 10**9 + usec * 1000), which dpkt's float agrees with; tshark's
  timestamp is not compared for those packets.
- tshark strips the 4-byte SunATM pseudo-header (linktype 123) from frame.len and frame.cap_len.
- tshark refuses several link types it does not know (e.g. 182); only dpkt is compared there.
"""

from __future__ import annotations

import io
import os
import select
import shutil
import struct
import subprocess
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import pytest

from packet_ipc.pcap import (
    MAX_CAPLEN,
    CaptureError,
    CaptureRecord,
    CaptureWriter,
    open_capture,
    read_capture,
)

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    given = None

try:
    import dpkt
except ImportError:  # pragma: no cover
    dpkt = None

HERE = Path(__file__).resolve().parent
LOCAL_DATA = HERE / "data"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_PCAPS = SHARED_DATA / "pcaps"
BAD_CAPTURES = SHARED_DATA / "bad-captures"

TSHARK = shutil.which("tshark")
TCPDUMP = shutil.which("tcpdump")
LINKTYPE_ETHERNET = 1
LINKTYPE_NULL = 0
LINKTYPE_SUNATM = 123

LOCAL_CAPTURES = sorted(p for p in LOCAL_DATA.glob("*.pcap*"))
ETHER_LE = LOCAL_DATA / "HSRP_failover.pcap"
ETHER_BE = LOCAL_DATA / "pptp.pcap"
PCAPNG = LOCAL_DATA / "ahcp.pcapng"
LINUX_SLL = LOCAL_DATA / "babel.pcap"
QINQ = LOCAL_DATA / "QinQpacket.pcap"


def _shared_params() -> list[Any]:
    if not SHARED_PCAPS.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"shared captures not found at {SHARED_PCAPS}"))]
    files = sorted(p for p in SHARED_PCAPS.rglob("*") if p.suffix in (".pcap", ".pcapng"))
    return [pytest.param(p, id=str(p.relative_to(SHARED_PCAPS))) for p in files]


SHARED_CAPTURES = _shared_params()


def need_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found: {path}")
    return path


# -- reference readers -----------------------------------------------------------------------------


def dpkt_read(path: Path) -> tuple[int, list[tuple[Any, bytes]]]:
    """(linktype, [(timestamp as float or Decimal, data)]) as dpkt reads the file."""
    with open(path, "rb") as f:
        magic = f.read(4)
        f.seek(0)
        reader = dpkt.pcapng.Reader(f) if magic == b"\n\r\r\n" else dpkt.pcap.Reader(f)
        return reader.datalink(), [(ts, bytes(data)) for ts, data in reader]


def is_multi_interface_pcapng(path: Path) -> bool:
    """True if the file has more than one section or interface, which dpkt cannot read right."""
    if path.suffix != ".pcapng":
        return False
    data = path.read_bytes()
    order = "<" if data[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
    pos, sections, interfaces = 0, 0, 0
    while pos + 8 <= len(data):
        block_type, block_len = struct.unpack_from(order + "II", data, pos)
        if block_type == 0x0A0D0D0A:
            sections += 1
        elif block_type == 1:
            interfaces += 1
        if block_len < 12:
            break
        pos += block_len
    return sections > 1 or interfaces > 1


def tshark_read(path: Path) -> list[tuple[str, int, int, str, str]] | None:
    """[(time_epoch, len, cap_len, interface_id, encap_type)] for packet frames, None if tshark refuses."""
    fields = ["frame.time_epoch", "frame.len", "frame.cap_len", "frame.interface_id", "frame.encap_type"]
    command = [TSHARK, "-n", "-r", str(path), "-T", "fields", "-E", "separator=/t"]
    for field in fields:
        command += ["-e", field]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        return None
    rows = []
    for line in result.stdout.splitlines():
        time_epoch, length, cap_len, interface_id, encap = line.split("\t")
        if path.suffix == ".pcapng" and interface_id == "":
            continue  # a non-packet block (custom, ...) that tshark shows as a frame
        rows.append((time_epoch, int(length), int(cap_len), interface_id, encap))
    return rows


def assert_matches_dpkt(path: Path, records: list[CaptureRecord]) -> None:
    linktype, packets = dpkt_read(path)
    assert len(records) == len(packets)
    for i, ((ts, data), record) in enumerate(zip(packets, records)):
        assert record.data == data, f"packet {i}"
        if isinstance(ts, Decimal):  # dpkt reads nanosecond pcap exactly
            assert record.timestamp == int(ts * 10**9), f"packet {i}"
        else:  # a float: equal to within its own rounding
            assert abs(ts - record.timestamp / 1e9) <= 1e-6 + abs(ts) * 1e-15, f"packet {i}"
        assert record.linktype == linktype & 0xFFFF, f"packet {i}"


def assert_matches_tshark(path: Path, records: list[CaptureRecord]) -> None:
    rows = tshark_read(path)
    if rows is None:
        pytest.skip("tshark refuses this file (unsupported link type)")
    assert len(records) == len(rows)
    encap_to_linktype: dict[str, int] = {}
    for i, (row, record) in enumerate(zip(rows, records)):
        time_epoch, length, cap_len, _, encap = row
        header = 4 if record.linktype == LINKTYPE_SUNATM else 0  # tshark strips the SunATM pseudo-header
        assert (length + header, cap_len + header) == (record.orig_len, len(record.data)), f"packet {i}"
        if time_epoch == "":
            assert record.timestamp == 0, f"packet {i}: a simple packet block has no timestamp"
        else:
            seconds, _, fraction = time_epoch.partition(".")
            if int(seconds) == record.timestamp // 10**9:  # else tshark's 32-bit fields wrapped (see above)
                assert record.timestamp == int(seconds) * 10**9 + int(fraction.ljust(9, "0")[:9]), f"packet {i}"
        # tshark's encapsulation numbers are not linktypes, but the two must map one to one.
        assert encap_to_linktype.setdefault(encap, record.linktype) == record.linktype, f"packet {i}"
    assert len(set(encap_to_linktype.values())) == len(encap_to_linktype)


# -- reading: core cases on shipped captures -------------------------------------------------------


@pytest.mark.parametrize("path", LOCAL_CAPTURES, ids=lambda p: p.name)
def test_shipped_capture_matches_dpkt(path: Path) -> None:
    if dpkt is None:
        pytest.skip("dpkt is not installed")
    assert_matches_dpkt(path, read_capture(path))


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
@pytest.mark.parametrize("path", LOCAL_CAPTURES, ids=lambda p: p.name)
def test_shipped_capture_matches_tshark(path: Path) -> None:
    assert_matches_tshark(path, read_capture(path))


def test_reader_reports_format_linktype_and_snaplen() -> None:
    with open_capture(ETHER_LE) as reader:
        assert (reader.format, reader.linktype, reader.snaplen) == ("pcap", LINKTYPE_ETHERNET, 8192)
    with open_capture(ETHER_BE) as reader:  # big-endian classic pcap
        assert (reader.format, reader.linktype) == ("pcap", LINKTYPE_ETHERNET)
    with open_capture(LINUX_SLL) as reader:
        assert (reader.format, reader.linktype) == ("pcap", 113)
    with open_capture(PCAPNG) as reader:
        assert (reader.format, reader.linktype) == ("pcapng", LINKTYPE_ETHERNET)


def test_records_carry_exact_nanosecond_timestamps_and_lengths() -> None:
    records = read_capture(ETHER_BE)
    first = records[0]
    assert isinstance(first.timestamp, int)
    assert first.timestamp == 954147395148077000  # 2000-03-27 08:56:35.148077 UTC, microsecond file
    assert (len(first.data), first.orig_len, first.linktype, first.ifindex) == (62, 62, LINKTYPE_ETHERNET, 0)
    assert all(type(r.data) is bytes for r in records)


def test_records_are_frozen() -> None:
    record = read_capture(QINQ)[0]
    with pytest.raises(AttributeError):
        record.timestamp = 0  # type: ignore[misc]


def test_reads_from_file_object_and_from_path_alike() -> None:
    for path in LOCAL_CAPTURES:
        with open(path, "rb") as f:
            assert read_capture(f) == read_capture(path)
        assert read_capture(io.BytesIO(path.read_bytes())) == read_capture(path)


class TrickleStream(io.RawIOBase):
    """A stream that returns at most `step` bytes per read, like a slow pipe."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._step, len(self._data) - self._pos)
        buffer[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


@pytest.mark.parametrize("step", [1, 7, 4096])
def test_reads_stream_that_arrives_in_small_pieces(step: int) -> None:
    for path in (QINQ, PCAPNG):
        assert read_capture(TrickleStream(path.read_bytes(), step)) == read_capture(path)


@pytest.mark.parametrize("format", ["pcap", "pcapng"])
def test_reader_follows_a_live_pipe(format: str) -> None:
    """Records come out as they arrive: the first one is read while the writer still holds the pipe."""
    records = read_capture(QINQ)[:20]  # small enough to fit in the pipe buffer
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb") as read_end, os.fdopen(write_fd, "wb") as write_end:
        writer = CaptureWriter(write_end, linktype=records[0].linktype, format=format)
        writer.write_many(records[:1])
        with open_capture(read_end) as reader:
            live = iter(reader)
            assert next(live) == records[0]
            writer.write_many(records[1:])
            writer.close()
            write_end.close()
            assert [records[0], *live] == records


def test_reads_a_named_pipe_by_path(tmp_path: Path) -> None:
    """A FIFO has no size to map: it is read as a stream."""
    fifo = tmp_path / "capture.fifo"
    os.mkfifo(fifo)
    feeder = threading.Thread(target=lambda: fifo.write_bytes(ETHER_BE.read_bytes()))
    feeder.start()
    try:
        assert read_capture(fifo) == read_capture(ETHER_BE)
    finally:
        feeder.join(timeout=30)


def test_read_batches_splits_without_losing_packets() -> None:
    expected = read_capture(QINQ)
    with open_capture(QINQ) as reader:
        batches = list(reader.read_batches(100))
    assert [len(b) for b in batches[:-1]] == [100] * (len(batches) - 1)
    assert 0 < len(batches[-1]) <= 100
    assert [r for b in batches for r in b] == expected


def test_iteration_continues_where_it_stopped() -> None:
    expected = read_capture(ETHER_LE)
    with open_capture(ETHER_LE) as reader:
        first = [r for _, r in zip(range(5), reader)]
        rest = list(reader)
    assert first + rest == expected


# -- pcapng features built byte by byte ------------------------------------------------------------


def block(order: str, block_type: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) & 3)
    length = 12 + len(body)
    return struct.pack(order + "II", block_type, length) + body + struct.pack(order + "I", length)


def shb(order: str) -> bytes:
    return block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(order: str, linktype: int, snaplen: int = 0, tsresol: int | None = None, tsoffset: int | None = None) -> bytes:
    options = b""
    if tsresol is not None:
        options += struct.pack(order + "HHB3x", 9, 1, tsresol)
    if tsoffset is not None:
        options += struct.pack(order + "HHq", 14, 8, tsoffset)
    if options:
        options += struct.pack(order + "HH", 0, 0)
    return block(order, 1, struct.pack(order + "HHI", linktype, 0, snaplen) + options)


def epb(order: str, interface: int, ticks: int, data: bytes, orig_len: int | None = None) -> bytes:
    header = struct.pack(order + "IIIII", interface, ticks >> 32, ticks & 0xFFFFFFFF, len(data),
                         len(data) if orig_len is None else orig_len)
    return block(order, 6, header + data)


def test_pcapng_sections_switch_byte_order_and_reset_interfaces() -> None:
    data = (
        shb(">") + idb(">", LINKTYPE_ETHERNET) + epb(">", 0, 1_000_000, b"big")
        + shb("<") + idb("<", LINKTYPE_NULL) + idb("<", LINKTYPE_ETHERNET) + epb("<", 1, 2_000_000, b"little")
        + epb("<", 0, 3_000_000, b"null")
    )
    records = read_capture(io.BytesIO(data))
    assert [(r.timestamp, r.data, r.linktype, r.ifindex) for r in records] == [
        (1_000_000_000, b"big", LINKTYPE_ETHERNET, 0),
        (2_000_000_000, b"little", LINKTYPE_ETHERNET, 2),
        (3_000_000_000, b"null", LINKTYPE_NULL, 1),
    ]


def test_pcapng_interface_of_a_previous_section_is_unknown() -> None:
    data = shb("<") + idb("<", 1) + idb("<", 1) + shb("<") + idb("<", 1) + epb("<", 1, 0, b"x")
    with pytest.raises(CaptureError, match="undeclared interface 1"):
        read_capture(io.BytesIO(data))


@pytest.mark.parametrize(
    ("tsresol", "ticks", "expected_ns"),
    [
        (None, 1_500_000, 1_500_000_000),  # default: microseconds
        (3, 1_500, 1_500_000_000),  # milliseconds
        (9, 1_500_000_001, 1_500_000_001),  # nanoseconds
        (12, 1_500_000_001_999, 1_500_000_001),  # picoseconds, truncated to ns
        (0x80 | 10, 1536, 1_500_000_000),  # 2**-10 s ticks
        (0x80 | 30, 3, 2),  # 3 * 2**-30 s = 2.79 ns, truncated
    ],
)
def test_pcapng_if_tsresol(tsresol: int | None, ticks: int, expected_ns: int) -> None:
    data = shb("<") + idb("<", 1, tsresol=tsresol) + epb("<", 0, ticks, b"p")
    assert read_capture(io.BytesIO(data))[0].timestamp == expected_ns


def test_pcapng_if_tsoffset_adds_seconds() -> None:
    data = shb(">") + idb(">", 1, tsresol=9, tsoffset=1_700_000_000) + epb(">", 0, 5, b"p")
    assert read_capture(io.BytesIO(data))[0].timestamp == 1_700_000_000_000_000_005


def test_pcapng_simple_and_obsolete_packet_blocks() -> None:
    order = "<"
    spb = block(order, 3, struct.pack(order + "I", 100) + b"A" * 100)  # orig 100, cut by snaplen 64
    pb = block(order, 2, struct.pack(order + "HHIIII", 0, 0, 0, 2_000_000, 3, 9) + b"old")
    unknown = block(order, 0x40000BAD, b"custom data")
    data = shb(order) + idb(order, 1, snaplen=64) + unknown + spb + pb
    records = read_capture(io.BytesIO(data))
    assert [(r.timestamp, r.data, r.orig_len) for r in records] == [(0, b"A" * 64, 100), (2_000_000_000, b"old", 9)]


def test_pcapng_without_interfaces_reads_as_empty() -> None:
    with open_capture(io.BytesIO(shb("<"))) as reader:
        assert (reader.format, reader.linktype, list(reader)) == ("pcapng", -1, [])


def test_kuznetzov_modified_pcap() -> None:
    header = struct.pack("<IHHiIII", 0xA1B2CD34, 2, 4, 0, 65535, 0, 1)
    record = struct.pack("<IIII", 10, 20, 3, 60) + struct.pack("<IHBB", 2, 0x800, 0, 0) + b"abc"
    assert read_capture(io.BytesIO(header + record)) == [CaptureRecord(10_000_020_000, b"abc", 60, 1, 0)]


# -- writing ---------------------------------------------------------------------------------------


def round_trip(records: list[CaptureRecord], **writer_options: Any) -> list[CaptureRecord]:
    buffer = io.BytesIO()
    snaplen = max([262144] + [len(r.data) for r in records])
    with CaptureWriter(buffer, linktype=records[0].linktype if records else 1, snaplen=snaplen,
                       **writer_options) as writer:
        assert writer.write_many(records) == len(records)
    return read_capture(io.BytesIO(buffer.getvalue()))


def comparable(records: list[CaptureRecord], keep_ifindex: bool = True) -> list[tuple[int, bytes, int, int, int]]:
    return [(r.timestamp, r.data, r.orig_len, r.linktype, r.ifindex if keep_ifindex else 0) for r in records]


def check_round_trips(path: Path) -> None:
    records = read_capture(path)
    single_linktype = len({r.linktype for r in records}) <= 1
    single_interface = len({r.ifindex for r in records}) <= 1
    fits_pcap = all(r.timestamp < 2**32 * 10**9 for r in records)  # fuzzed usec fields can carry past 2106
    if single_linktype and not fits_pcap:
        with pytest.raises(ValueError, match="2106"):
            round_trip(records, format="pcap")
    elif single_linktype:
        assert comparable(round_trip(records, format="pcap")) == comparable(records, single_interface)
        if all(r.timestamp % 1000 == 0 for r in records):
            assert round_trip(records, format="pcap", nanosecond=False) == round_trip(records, format="pcap")
    # pcapng keeps every packet's link type; our writer makes one interface per link type, and counts
    # nanoseconds in 64 bits (to 2554): tcpdump's fuzz captures reach beyond that.
    if not all(r.timestamp < 2**64 for r in records):
        with pytest.raises(ValueError, match="64 bits"):
            round_trip(records, format="pcapng")
        return
    written = round_trip(records, format="pcapng")
    assert [r[:4] for r in comparable(written)] == [r[:4] for r in comparable(records)]


@pytest.mark.parametrize("path", LOCAL_CAPTURES, ids=lambda p: p.name)
def test_shipped_capture_round_trips(path: Path) -> None:
    check_round_trips(path)


def test_pcap_writer_defaults_to_nanosecond_magic() -> None:
    buffer = io.BytesIO()
    with CaptureWriter(buffer, linktype=1) as writer:
        writer.write(CaptureRecord(1_600_000_000_123_456_789, b"x", 1, 1, 0))
    assert buffer.getvalue()[:4] == struct.pack("<I", 0xA1B23C4D)
    assert read_capture(io.BytesIO(buffer.getvalue()))[0].timestamp == 1_600_000_000_123_456_789


def test_microsecond_pcap_truncates_only_when_asked() -> None:
    buffer = io.BytesIO()
    with CaptureWriter(buffer, linktype=1, nanosecond=False) as writer:
        writer.write(CaptureRecord(1_600_000_000_123_456_789, b"x", 1, 1, 0))
    assert buffer.getvalue()[:4] == struct.pack("<I", 0xA1B2C3D4)
    assert read_capture(io.BytesIO(buffer.getvalue()))[0].timestamp == 1_600_000_000_123_456_000


class Packet:
    """A minimal packet: only .timestamp and .data, like packet_ipc.Packet."""

    def __init__(self, timestamp: int, data: Any) -> None:
        self.timestamp, self.data = timestamp, data


def test_writer_accepts_any_object_with_timestamp_and_buffer_data() -> None:
    buffer = io.BytesIO()
    with CaptureWriter(buffer, linktype=1, format="pcapng") as writer:
        writer.write(Packet(5, memoryview(b"abcde")[1:4]))
        writer.write(Packet(6, bytearray(b"zz")))
    assert read_capture(io.BytesIO(buffer.getvalue())) == [
        CaptureRecord(5, b"bcd", 3, 1, 0),
        CaptureRecord(6, b"zz", 2, 1, 0),
    ]


def test_writer_rejects_what_the_format_cannot_hold() -> None:
    writer = CaptureWriter(io.BytesIO(), linktype=1, snaplen=10)
    with pytest.raises(ValueError, match="linktype"):
        writer.write(CaptureRecord(0, b"x", 1, 113, 0))
    with pytest.raises(ValueError, match="snaplen"):
        writer.write(Packet(0, b"x" * 11))
    with pytest.raises(ValueError, match="epoch"):
        writer.write(Packet(-1, b"x"))
    with pytest.raises(ValueError, match="2106"):
        writer.write(Packet(2**32 * 10**9, b"x"))
    with pytest.raises(TypeError):
        writer.write(Packet(1.5, b"x"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="format"):
        CaptureWriter(io.BytesIO(), linktype=1, format="erf")


def test_pcapng_writer_adds_an_interface_per_linktype() -> None:
    records = [CaptureRecord(1, b"e", 1, 1, 0), CaptureRecord(2, b"n", 1, 0, 0), CaptureRecord(3, b"e2", 2, 1, 0)]
    written = round_trip(records, format="pcapng")
    assert [(r.data, r.linktype, r.ifindex) for r in written] == [(b"e", 1, 0), (b"n", 0, 1), (b"e2", 1, 0)]


def test_writer_to_path_closes_file(tmp_path: Path) -> None:
    target = tmp_path / "out.pcapng"
    records = read_capture(PCAPNG)
    with CaptureWriter(target, linktype=1, format="pcapng") as writer:
        writer.write_many(records)
    assert read_capture(target) == records


def test_empty_written_capture_reads_back_empty(tmp_path: Path) -> None:
    for format in ("pcap", "pcapng"):
        target = tmp_path / f"empty.{format}"
        CaptureWriter(target, linktype=113, format=format).close()
        with open_capture(target) as reader:
            assert (reader.linktype, list(reader)) == (113, [])


@pytest.mark.skipif(TCPDUMP is None, reason="tcpdump is not installed")
@pytest.mark.parametrize("format", ["pcap", "pcapng"])
def test_tcpdump_reads_a_live_stream_from_our_writer(format: str) -> None:
    """write_many flushes, so tcpdump -r - prints the first batch while the pipe is still open."""
    records = read_capture(QINQ)
    # -l: line-buffered output, else tcpdump holds its lines in a stdio buffer while stdout is a pipe.
    tcpdump = subprocess.Popen([TCPDUMP, "-l", "-n", "-r", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
    assert tcpdump.stdin is not None and tcpdump.stdout is not None
    try:
        writer = CaptureWriter(tcpdump.stdin, linktype=records[0].linktype, format=format)
        writer.write_many(records[:1])
        # tcpdump prints the first packet while our end of the pipe is still open (bounded wait).
        ready, _, _ = select.select([tcpdump.stdout], [], [], 30)
        assert ready, "tcpdump printed nothing for the first packet within 30 s"
        first_line = tcpdump.stdout.readline()
        assert first_line
        writer.write_many(records[1:])
        writer.close()
        tcpdump.stdin.close()
        rest = tcpdump.stdout.read().splitlines()
        assert tcpdump.wait(timeout=30) == 0
    finally:
        if tcpdump.poll() is None:
            tcpdump.kill()
            tcpdump.wait()
    assert 1 + len(rest) == len(records)


def tool_packet_count(tool: str, path: Path) -> int:
    if tool == "tcpdump":
        result = subprocess.run([TCPDUMP, "-n", "-r", str(path)], capture_output=True, text=True, timeout=120)
    else:
        result = subprocess.run([TSHARK, "-n", "-r", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return len(result.stdout.splitlines())


@pytest.mark.parametrize("tool", ["tcpdump", "tshark"])
@pytest.mark.parametrize("format", ["pcap", "pcapng"])
def test_external_tools_read_our_files(tool: str, format: str, tmp_path: Path) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    for path in (ETHER_LE, LINUX_SLL, QINQ):
        records = read_capture(path)
        target = tmp_path / f"{path.stem}.{format}"
        with CaptureWriter(target, linktype=records[0].linktype, format=format) as writer:
            writer.write_many(records)
        assert tool_packet_count(tool, target) == tool_packet_count(tool, path) == len(records)
        if tool == "tshark" and format == "pcapng":
            assert_matches_tshark(target, records)


# -- damaged files ---------------------------------------------------------------------------------


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_capture(tmp_path / "absent.pcap")


def test_empty_file_is_a_capture_error(tmp_path: Path) -> None:
    target = tmp_path / "empty.pcap"
    target.write_bytes(b"")
    with pytest.raises(CaptureError, match="empty file"):
        open_capture(target)
    with pytest.raises(CaptureError, match="empty file"):
        open_capture(io.BytesIO(b""))


def test_bad_magic_names_file_and_offset(tmp_path: Path) -> None:
    target = tmp_path / "text.pcap"
    target.write_bytes(b"GET / HTTP/1.1\r\n\r\n" * 4)
    with pytest.raises(CaptureError) as error:
        open_capture(target)
    message = str(error.value)
    assert str(target) in message and "byte offset 0" in message and "packet index 0" in message
    assert "\n" not in message


def test_unsupported_pcap_version() -> None:
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 1, 0, 0, 65535, 0, 1)
    with pytest.raises(CaptureError, match=r"unsupported pcap version 1\.0"):
        open_capture(io.BytesIO(header))


def test_absurd_caplen_is_rejected_without_reading_it() -> None:
    data = QINQ.read_bytes()
    bad = data[:24] + struct.pack("<IIII", 0, 0, MAX_CAPLEN + 1, 60) + b"x" * 100
    with pytest.raises(CaptureError, match=f"absurd caplen {MAX_CAPLEN + 1}.*byte offset 32"):
        read_capture(io.BytesIO(bad))


def test_records_before_damage_are_yielded_then_iteration_raises() -> None:
    data = ETHER_LE.read_bytes()
    good = read_capture(ETHER_LE)
    cut = data[: len(data) - 10]  # the last record loses its tail
    seen = []
    with pytest.raises(CaptureError) as error:
        with open_capture(io.BytesIO(cut)) as reader:
            for record in reader:
                seen.append(record)
    assert seen == good[:-1]
    assert f"packet index {len(good) - 1}" in str(error.value)
    with pytest.raises(CaptureError):
        read_capture(io.BytesIO(cut))  # all or nothing


def test_read_batches_yields_good_records_then_raises() -> None:
    data = ETHER_LE.read_bytes()
    good = read_capture(ETHER_LE)
    seen = []
    with pytest.raises(CaptureError):
        with open_capture(io.BytesIO(data[:-10])) as reader:
            for batch in reader.read_batches(16):
                seen.extend(batch)
    assert seen == good[:-1]


def test_pcapng_block_trailer_mismatch_is_an_error() -> None:
    data = bytearray(PCAPNG.read_bytes())
    first_block_len = struct.unpack_from("<I", data, 4)[0]
    data[first_block_len - 4 : first_block_len] = struct.pack("<I", first_block_len + 4)
    with pytest.raises(CaptureError, match="trailer"):
        read_capture(io.BytesIO(bytes(data)))


def test_pcapfix_damaged_capture() -> None:
    path = need_shared(BAD_CAPTURES / "pcapfix_test_damaged.pcap")
    with pytest.raises(CaptureError, match="pcapfix_test_damaged.pcap.*packet index 1"):
        read_capture(path)
    with open_capture(path) as reader:
        records = []
        with pytest.raises(CaptureError):
            for record in reader:
                records.append(record)
    assert len(records) == 1 and len(records[0].data) == 74  # as capinfos and tcpdump read it


def test_invalid_version_capture() -> None:
    path = need_shared(BAD_CAPTURES / "libpcap_pcap-invalid-version-1.pcap")
    with pytest.raises(CaptureError, match=r"libpcap_pcap-invalid-version-1.pcap: unsupported pcap version 1\."):
        open_capture(path)


def record_boundaries(data: bytes) -> set[int]:
    """Byte offsets at which a cut leaves a shorter but valid capture (pcap records or pcapng blocks)."""
    if data[:4] == b"\n\r\r\n":
        order = "<" if data[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
        pos, ends = 0, set()
        while pos < len(data):
            pos += struct.unpack_from(order + "I", data, pos + 4)[0]
            ends.add(pos)
        return ends
    order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    pos, ends = 24, {24}
    while pos < len(data):
        pos += 16 + struct.unpack_from(order + "I", data, pos + 8)[0]
        ends.add(pos)
    return ends


def check_truncation(data: bytes, cut: int, full: list[CaptureRecord], boundaries: set[int]) -> None:
    try:
        records = read_capture(io.BytesIO(data[:cut]))
    except CaptureError as error:
        assert cut not in boundaries, f"cut at a record boundary {cut} must read cleanly: {error}"
        assert "\n" not in str(error)
        return
    assert cut in boundaries, f"cut at {cut} inside a record read without error"
    assert records == full[: len(records)]


if given is not None:

    @pytest.mark.parametrize("path", [ETHER_BE, PCAPNG, LINUX_SLL], ids=lambda p: p.name)
    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(fraction=st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
    def test_capture_cut_anywhere_reads_cleanly_or_raises_capture_error(path: Path, fraction: float) -> None:
        data = path.read_bytes()
        check_truncation(data, int(len(data) * fraction), read_capture(path), record_boundaries(data))


def test_capture_cut_at_every_offset_of_a_small_pcapng() -> None:
    data = PCAPNG.read_bytes()
    full, boundaries = read_capture(PCAPNG), record_boundaries(data)
    for cut in range(len(data)):
        check_truncation(data, cut, full, boundaries)


# -- every real capture in ../shared ---------------------------------------------------------------


@pytest.mark.parametrize("path", SHARED_CAPTURES)
def test_shared_capture_matches_dpkt(path: Path) -> None:
    if dpkt is None:
        pytest.skip("dpkt is not installed")
    if is_multi_interface_pcapng(path):
        pytest.skip("dpkt reads only the first section and applies the first interface to all packets")
    assert_matches_dpkt(path, read_capture(path))


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
@pytest.mark.parametrize("path", SHARED_CAPTURES)
def test_shared_capture_matches_tshark(path: Path) -> None:
    assert_matches_tshark(path, read_capture(path))


@pytest.mark.parametrize("path", SHARED_CAPTURES)
def test_shared_capture_round_trips(path: Path) -> None:
    check_round_trips(path)


def test_many_interfaces_keeps_each_linktype_in_pcapng() -> None:
    path = need_shared(SHARED_PCAPS / "wireshark" / "many_interfaces.pcapng")
    records = read_capture(path)
    assert {r.linktype for r in records} == {LINKTYPE_ETHERNET, LINKTYPE_NULL}
    assert [r.linktype for r in round_trip(records, format="pcapng")] == [r.linktype for r in records]
    with pytest.raises(ValueError, match="linktype"):
        round_trip(records, format="pcap")


def test_big_endian_multi_section_pcapng() -> None:
    """tshark and capinfos read 8 packets (tshark also lists 3 custom blocks as frames); dpkt reads 3."""
    path = need_shared(SHARED_PCAPS / "more" / "gopacket_be_test202.pcapng")
    records = read_capture(path)
    assert [(r.linktype, r.ifindex, len(r.data), r.orig_len) for r in records] == [
        (1, 0, 96, 314), (1, 0, 96, 342), (0, 1, 168, 168),
        (1, 2, 128, 314), (1, 2, 128, 342), (1, 2, 128, 314), (1, 2, 128, 342),
        (0, 4, 168, 168),
    ]
    assert [r.timestamp for r in records if r.timestamp][:1] == [1340954905298858000]
    assert sum(r.timestamp == 0 for r in records) == 2  # simple packet blocks carry no timestamp


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
@pytest.mark.parametrize("name", ["more/gopacket_be_test202.pcapng", "wireshark/many_interfaces.pcapng",
                                  "more/wireshark_dhcp-nanosecond.pcapng", "merged-ether.pcap"])
def test_tshark_reads_our_pcapng_of_shared_captures(name: str, tmp_path: Path) -> None:
    path = need_shared(SHARED_PCAPS / name)
    records = read_capture(path)
    target = tmp_path / "out.pcapng"
    with CaptureWriter(target, linktype=records[0].linktype, format="pcapng") as writer:
        writer.write_many(records)
    assert_matches_tshark(target, records)
