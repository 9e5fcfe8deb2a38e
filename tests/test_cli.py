"""The ``packet-ipc`` command end to end: real ``replay``, ``dump``, ``stats`` and ``demo`` processes.

What is compared is always the real path: ``packet-ipc replay FILES --name N`` serving through the IPC to
``packet-ipc dump N -w OUT``, and the file it wrote read back by tshark and tcpdump next to the original.
Every shared capture (../shared/data/pcaps, 551 files) goes through it in 37 replay/dump pairs, run three at
a time: one pair per (format, first link type), written in the input's format (pcapng also for the two
pcap captures whose times pcap cannot hold). The originals of a pair are concatenated with ``mergecap -a``
for tshark (one tshark run instead of 551) and split back per file by their packet counts; the packets'
time, bytes, lengths and link types are also compared through our reader.

Reference-tool findings the comparison allows for (tshark 4.0.17, tcpdump 4.99.3 / libpcap 1.10):
- tshark and libpcap keep the microsecond field of a pcap record as is: tcpdump's fuzz captures with a
  field >= 10**6 print as wrapped or impossible times. We carry the exact sum (sec * 10**9 + usec * 1000)
  and write it normalised, so for those packets the time is checked against that sum, not the tool's.
- tshark lists non-packet pcapng blocks (custom blocks) as "frames" with no encapsulation; they are no
  packets and are left out on both sides.
- tshark does not know some link types (182, 281, 282, 284, 285, and juniper_es_oobr's header word
  0x30000084): those captures are compared with ``tcpdump -nn -xx`` instead, times left out (above).
- A pcapng Decryption Secrets Block (TLS/QUIC keys) is not a packet and does not travel through packet-ipc:
  tshark decrypts less of the output (challenge01_ooo_stream.pcapng, quic_follow_multistream.pcapng), so
  there the output's frame.protocols must be a prefix of the original's.
- libpcap cuts a record longer than its file's snaplen to the snaplen (frf16_magic_ie-oobr.pcap: snaplen 6,
  a 68-byte record); we keep the record whole, so tcpdump reads the original with that field raised.

Captures mixing link types, LINKTYPE_NULL (0, BSD loopback) among them (many_interfaces.pcapng,
gopacket_be_test202.pcapng), have a test of their own: each packet must keep its own link type.

Damaged captures (see the cli module): replay reads every capture through before it listens, so a damaged
one fails with one line and nothing of it is served. A capture read from a pipe cannot be read twice: it is
streamed, and damage in it stops the replay after the whole packets before it.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from packet_ipc.pcap import CaptureRecord, open_capture, read_capture

CLI = Path(sys.executable).parent / "packet-ipc"
HERE = Path(__file__).resolve().parent
LOCAL = HERE / "data"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_PCAPS = SHARED_DATA / "pcaps"
BAD_CAPTURES = SHARED_DATA / "bad-captures"
TSHARK = shutil.which("tshark")
TCPDUMP = shutil.which("tcpdump")
MERGECAP = shutil.which("mergecap")
FIELDS = ["frame.time_epoch", "frame.len", "frame.cap_len", "frame.protocols", "frame.md5_hash", "frame.encap_type"]
NS = 10**9
PCAP_MAX_NS = (1 << 32) * NS  # classic pcap's 32-bit seconds
IPC_MAX_NS = 1 << 64  # packet-ipc's 64-bit nanoseconds

_names = itertools.count()

needs_tshark = pytest.mark.skipif(TSHARK is None or MERGECAP is None, reason="tshark/mergecap not installed")
needs_tcpdump = pytest.mark.skipif(TCPDUMP is None, reason="tcpdump not installed")


def unique_name(tag: str) -> str:
    """An abstract socket name no other test (or test run) uses: nothing to clean up."""
    return f"@pipc-test-cli-{os.getpid()}-{tag}-{next(_names)}"


def shared_captures() -> list[Path]:
    if not SHARED_PCAPS.is_dir():
        pytest.skip(f"shared captures not present at {SHARED_PCAPS} (a clone without ../shared)")
    return sorted(p for p in SHARED_PCAPS.rglob("*") if p.suffix in (".pcap", ".pcapng"))


def cli(*args: Any, timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, timeout=timeout, **kwargs)


def assert_one_line_error(result: Any, command: str) -> str:
    """Exit 1, one line on stderr in the CLI's format, no traceback."""
    stderr = result.stderr if isinstance(result.stderr, str) else result.stderr.decode()
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert result.returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith(f"packet-ipc {command}: error: "), stderr
    return lines[0]


class Replay:
    """A running ``packet-ipc replay`` process; ``serving()`` waits for its listening line on stderr."""

    def __init__(self, *args: Any, name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [str(CLI), "replay", *map(str, args), "--name", name, "--json", "--accept-timeout", "60"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def serving(self) -> None:
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # replay flushes this line once it listens
        if "serving" not in line:
            self.proc.wait(30)
            raise AssertionError(f"replay did not start serving: {line}{self.proc.stderr.read()}")

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def __enter__(self) -> Replay:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


def replay_into_dump(files: Sequence[Path], out: Path, fmt: str, *replay_args: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``replay FILES`` -> IPC -> ``dump -w OUT``; returns (replay summary, dump summary)."""
    with Replay(*files, *replay_args, name=unique_name("rt")) as replay:
        replay.serving()
        dump = cli("dump", replay.name, "-w", out, "--format", fmt, "--json", timeout=120)
        code, out_text, err = replay.finish()
    assert dump.returncode == 0, dump.stderr
    assert code == 0, err
    return json.loads(out_text), json.loads(dump.stdout)


# ---- reading the originals and the outputs ---------------------------------------------------------


def comparable(records: Sequence[CaptureRecord]) -> list[tuple[int, bytes, int, int]]:
    return [(r.timestamp, bytes(r.data), r.orig_len, r.linktype) for r in records]


def pcap_quirks(path: Path) -> tuple[set[int], bool]:
    """For a classic pcap: indices of records whose sub-second field is out of range (tools print those
    raw), and whether a record is longer than the file's snaplen (libpcap cuts it). Parsed here from the
    raw headers, independently of packet_ipc.pcap."""
    data = path.read_bytes()
    if len(data) < 24 or data[:4] not in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1",
                                          b"\xa1\xb2\x3c\x4d", b"\x34\xcd\xb2\xa1", b"\xa1\xb2\xcd\x34"):
        return set(), False
    order = "<" if data[0] in (0xD4, 0x4D, 0x34) else ">"
    limit = NS if data[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 10**6
    header = 24 if data[:4] in (b"\x34\xcd\xb2\xa1", b"\xa1\xb2\xcd\x34") else 16
    (snaplen,) = struct.unpack_from(order + "I", data, 16)
    out_of_range, beyond_snaplen = set(), False
    pos, index = 24, 0
    while pos + header <= len(data):
        _, fraction, caplen, _ = struct.unpack_from(order + "IIII", data, pos)
        if fraction >= limit:
            out_of_range.add(index)
        beyond_snaplen |= caplen > snaplen
        pos += header + caplen
        index += 1
    return out_of_range, beyond_snaplen


def pcapng_has_secrets(path: Path) -> bool:
    """True if a pcapng file carries a Decryption Secrets Block (TLS/QUIC keys): not a packet, so it does
    not travel through packet-ipc, and tshark decodes the encrypted payloads of the output less deeply."""
    data = path.read_bytes()
    if data[:4] != b"\x0a\x0d\x0d\x0a":
        return False
    pos, order = 0, "<"
    while pos + 12 <= len(data):
        if data[pos:pos + 4] == b"\x0a\x0d\x0d\x0a":
            order = "<" if data[pos + 8:pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
        block_type, block_len = struct.unpack_from(order + "II", data, pos)
        if block_type == 0x0A:
            return True
        if block_len < 12:
            return False
        pos += block_len
    return False


def tshark_rows(path: Path) -> list[list[str]]:
    """FIELDS of every packet as tshark decodes it (non-packet pcapng blocks left out)."""
    command = [TSHARK, "-n", "-r", str(path), "-o", "frame.generate_md5_hash:TRUE", "-T", "fields"]
    for field in FIELDS:
        command += ["-e", field]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    return [row for row in rows if row[-1] != ""]  # no encapsulation: a custom block, not a packet


_TIMESTAMP = re.compile(r"^(\d+\.\d+|\[Error converting time\]) ", re.M)


def tcpdump_text(path: Path) -> str:
    """tcpdump's decode and hex of every packet, timestamps left out (they are compared exactly apart)."""
    result = subprocess.run([TCPDUMP, "-r", str(path), "-nn", "-tt", "-xx"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return _TIMESTAMP.sub("", result.stdout)


def compare_tshark(originals: Sequence[Path], out: Path, tmp: Path) -> list[str]:
    """tshark on the output against tshark on the originals (concatenated by mergecap); [] or problems."""
    reference = tmp / (out.name + ".reference.pcapng")
    merge = subprocess.run([MERGECAP, "-a", "-F", "pcapng", "-w", str(reference), *map(str, originals)],
                           capture_output=True, text=True, timeout=120)
    if merge.returncode != 0:
        return compare_tcpdump(originals, out, tmp)  # a link type Wireshark does not know
    want, got = tshark_rows(reference), tshark_rows(out)
    spans = []  # (original, first row, row count, packets whose time tools print raw, has TLS keys)
    total = 0
    for original in originals:
        count = len(read_capture(original))
        spans.append((original, total, count, pcap_quirks(original)[0], pcapng_has_secrets(original)))
        total += count
    if not len(want) == len(got) == total:
        return [f"{out.name}: tshark reads {len(want)} packets in the originals, {len(got)} in the output; "
                f"we sent {total}"]
    records = read_capture(out)
    problems = []
    protocols = FIELDS.index("frame.protocols")
    for original, first, count, raw_times, secrets in spans:
        for i in range(first, first + count):
            w, g = list(want[i]), list(got[i])
            if secrets and w[protocols].startswith(g[protocols]):  # decrypted in the original only
                w[protocols] = g[protocols]
            if i - first in raw_times:  # tshark shows the raw field: the output must carry the exact sum
                exact = Decimal(records[i].timestamp) / NS
                if Decimal(g[0]) not in (exact, exact - (1 << 32)):  # tshark's seconds are signed 32-bit
                    problems.append(f"{original.name} packet {i - first}: time {g[0]}, exact {exact}")
                w, g = w[1:], g[1:]
            if w != g:
                problems.append(f"{original.name} packet {i - first}: tshark reads {w} in it, {g} in the output")
                break
    return problems


def compare_tcpdump(originals: Sequence[Path], out: Path, tmp: Path) -> list[str]:
    readable = []
    for original in originals:
        if pcap_quirks(original)[1]:  # libpcap would cut a record at the header's snaplen: raise it
            copy = tmp / (original.name + ".snaplen")
            data = bytearray(original.read_bytes())
            order = "<" if data[0] in (0xD4, 0x4D, 0x34) else ">"
            struct.pack_into(order + "I", data, 16, 262144)
            copy.write_bytes(bytes(data))
            original = copy
        readable.append(original)
    want = "".join(tcpdump_text(p) for p in readable)
    got = tcpdump_text(out)
    if want != got:
        return [f"{out.name}: tcpdump decodes the output differently from {[p.name for p in originals]}"]
    return []


def check_round_trip(originals: Sequence[Path], fmt: str, tmp: Path) -> list[str]:
    """Replays ``originals`` into a dump writing ``fmt`` and compares; returns the problems found."""
    out = tmp / f"{originals[0].stem}-{len(originals)}.{fmt}"
    summary, dumped = replay_into_dump(originals, out, fmt)
    expected = [r for f in originals for r in read_capture(f)]
    problems = []
    if summary["packets"] != len(expected) or dumped["packets"] != len(expected):
        problems.append(f"{out.name}: sent {summary['packets']}, dumped {dumped['packets']}, want {len(expected)}")
    if comparable(read_capture(out)) != comparable(expected):
        problems.append(f"{out.name}: the packets written differ from the originals (time, bytes, length or linktype)")
    return problems + compare_tshark(originals, out, tmp)


# ---- 1. every capture in, the same capture out -------------------------------------------------------


def plan_shared(captures: list[Path]) -> tuple[dict[tuple[str, int], list[Path]], list[Path], list[Path], list[Path]]:
    """Groups captures into replay/dump pairs: {(output format, first linktype): files}. Apart: captures
    packet-ipc refuses (a time beyond 64-bit ns), those only pcapng can hold (a time beyond 2106; they join
    the pcapng pairs), and those whose LINKTYPE_NULL packets follow another linktype (tested on their own)."""
    groups: dict[tuple[str, int], list[Path]] = {}
    refused, beyond_pcap, mixed_null = [], [], []
    for path in captures:
        with open_capture(path) as reader:
            records = list(reader)
            key = (reader.format, reader.linktype)
        if any(not 0 <= r.timestamp < IPC_MAX_NS for r in records):
            refused.append(path)
            continue
        if key[1] != 0 and any(r.linktype == 0 for r in records):
            mixed_null.append(path)
            continue
        if any(r.timestamp >= PCAP_MAX_NS for r in records):
            beyond_pcap.append(path)
            key = ("pcapng", key[1])
        groups.setdefault(key, []).append(path)
    return groups, refused, beyond_pcap, mixed_null


@pytest.mark.shared
@needs_tshark
@needs_tcpdump
@pytest.mark.timeout(300)
def test_every_shared_capture_comes_out_of_dump_as_tshark_read_it(tmp_path: Path) -> None:
    groups, _, _, _ = plan_shared(shared_captures())
    assert sum(map(len, groups.values())) > 500
    with ThreadPoolExecutor(3) as lanes:  # a replay, a dump and a tshark at a time per lane
        results = list(lanes.map(lambda item: check_round_trip(item[1], item[0][0], tmp_path), groups.items()))
    problems = [p for r in results for p in r]
    assert not problems, "\n".join(problems[:40])


@pytest.mark.shared
@needs_tshark
@pytest.mark.parametrize("rel", ["wireshark/many_interfaces.pcapng", "more/gopacket_be_test202.pcapng"])
def test_pcapng_with_several_interfaces_keeps_each_packets_linktype(rel: str, tmp_path: Path) -> None:
    path = SHARED_PCAPS / rel
    if not path.exists():
        pytest.skip(f"{path} not present")
    assert path in plan_shared([path])[3]  # null (loopback) packets after Ethernet ones
    replay_into_dump([path], tmp_path / "out.pcapng", "pcapng")
    assert [r.linktype for r in read_capture(tmp_path / "out.pcapng")] == [r.linktype for r in read_capture(path)]
    problems = check_round_trip([path], "pcapng", tmp_path)
    assert not problems, "\n".join(problems)


@pytest.mark.shared
def test_capture_with_time_beyond_64_bit_ns_is_refused_in_one_line(tmp_path: Path) -> None:
    _, refused, _, _ = plan_shared(shared_captures())
    assert SHARED_PCAPS / "tcpdump" / "smb_data_print-segv.pcapng" in refused
    for path in refused:
        name = unique_name("refused")
        result = cli("replay", path, "--name", name, "--accept-timeout", "5")
        line = assert_one_line_error(result, "replay")
        assert path.name in line and "2**64" in line
        assert "serving" not in result.stdout + result.stderr
        # it never listened: a worker finds nobody there
        assert_one_line_error(cli("dump", name, "--timeout", "0"), "dump")


@pytest.mark.shared
def test_time_beyond_pcap_needs_pcapng_and_dump_says_so_in_one_line(tmp_path: Path) -> None:
    path = SHARED_PCAPS / "tcpdump" / "ldp-ldp_tlv_print-oobr.pcap"
    if not path.exists():
        pytest.skip(f"{path} not present")
    with Replay(path, name=unique_name("beyond")) as replay:
        replay.serving()
        dump = cli("dump", replay.name, "-w", tmp_path / "out.pcap")
        replay.finish()  # it delivered its one packet: the worker failed after
    assert "beyond what pcap can hold" in assert_one_line_error(dump, "dump")
    replay_into_dump([path], tmp_path / "out.pcapng", "pcapng")  # pcapng holds it
    assert comparable(read_capture(tmp_path / "out.pcapng")) == comparable(read_capture(path))


def single_capture_params() -> list[Any]:
    params = [pytest.param(p, id=f"tests/data/{p.name}") for p in sorted(LOCAL.glob("*.pcap*"))]
    for rel in ("QinQpacket-nsec.pcap",
                "more/wireshark_dhcp-nanosecond.pcapng", "more/ndpi_zoom2.pcap"):
        path = SHARED_PCAPS / rel
        mark = pytest.mark.skipif(not path.exists(), reason=f"shared capture {path} not present")
        params.append(pytest.param(path, id=rel, marks=[mark, pytest.mark.shared]))
    return params


@needs_tshark
@pytest.mark.parametrize("path", single_capture_params())
def test_replay_of_one_capture_dumps_what_tshark_reads_in_it(path: Path, tmp_path: Path) -> None:
    fmt = "pcapng" if path.suffix == ".pcapng" else "pcap"
    problems = check_round_trip([path], fmt, tmp_path)
    assert not problems, "\n".join(problems)


def test_pcap_output_refuses_a_second_linktype_in_one_line(tmp_path: Path) -> None:
    files = [LOCAL / "HSRP_failover.pcap", LOCAL / "babel.pcap"]  # Ethernet, then Linux SLL
    with Replay(*files, name=unique_name("lt")) as replay:
        replay.serving()
        dump = cli("dump", replay.name, "-w", tmp_path / "out.pcap")
        replay.finish()
    assert "linktype" in assert_one_line_error(dump, "dump")
    summary, _ = replay_into_dump(files, tmp_path / "out.pcapng", "pcapng")
    assert comparable(read_capture(tmp_path / "out.pcapng")) == comparable([r for f in files for r in read_capture(f)])


# ---- 2. dump into a pipe, read live by tcpdump and tshark ------------------------------------------


@contextmanager
def dump_to_pipe(name: str, fmt: str, reader: list[str]) -> Iterator[tuple[subprocess.Popen[bytes], subprocess.Popen[str]]]:
    dump = subprocess.Popen([str(CLI), "dump", name, "-w", "-", "--format", fmt, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert dump.stdout is not None
    tool = subprocess.Popen(reader, stdin=dump.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dump.stdout.close()  # the tool holds the only read end: dump sees EPIPE if the tool dies
    try:
        yield dump, tool
    finally:
        for p in (tool, dump):
            if p.poll() is None:
                p.kill()
            p.communicate()


@needs_tcpdump
@pytest.mark.parametrize("tool", ["tcpdump", "tshark"])
@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_dump_to_stdout_is_read_live_by(tool: str, fmt: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")
    capture, loops = LOCAL / "QinQpacket.pcap", 16
    expected = len(read_capture(capture)) * loops  # 3,984 packets
    reader = [TCPDUMP, "-nn", "-tt", "-r", "-"] if tool == "tcpdump" else [TSHARK, "-n", "-r", "-", "-T", "fields",
                                                                         "-e", "frame.number", "-e", "frame.len"]
    with Replay(capture, "--loop", loops, name=unique_name("pipe")) as replay:
        replay.serving()
        with dump_to_pipe(replay.name, fmt, reader) as (dump, reading):
            out, err = reading.communicate(timeout=120)
            _, dump_err = dump.communicate(timeout=60)
        code, _, replay_err = replay.finish()
    assert code == 0, replay_err
    assert dump.returncode == 0 and reading.returncode == 0, (dump_err, err)
    assert json.loads(dump_err)["packets"] == expected
    lines = out.splitlines()
    if tool == "tcpdump":
        assert sum(1 for line in lines if _TIMESTAMP.match(line)) == expected, err
    else:
        assert len(lines) == expected and lines[-1].split("\t")[0] == str(expected)
        lengths = [int(line.split("\t")[1]) for line in lines]
        assert lengths == [r.orig_len for r in read_capture(capture)] * loops


# ---- 4. damaged captures ---------------------------------------------------------------------------


def damaged_captures(tmp: Path) -> dict[str, Path]:
    """Captures made broken from the shipped ones: cut mid-record, mid-header, bad magic, absurd caplen."""
    pcap = (LOCAL / "HSRP_failover.pcap").read_bytes()
    pcapng = (LOCAL / "ahcp.pcapng").read_bytes()
    (caplen,) = struct.unpack_from("<I", pcap, 24 + 8)
    second = 24 + 16 + caplen  # offset of the second record header
    (shb,) = struct.unpack_from("<I", pcapng, 4)  # offset of the block after the section header
    cases = {
        "empty.pcap": b"",
        "cut-in-file-header.pcap": pcap[:20],
        "cut-mid-record.pcap": pcap[: second + 16 + 10],
        "cut-mid-record-header.pcap": pcap[: second + 7],
        "cut-last-record.pcap": pcap[:-5],
        "bad-magic.pcap": b"\x00\x01\x02\x03" + pcap[4:],
        "absurd-caplen.pcap": pcap[:second + 8] + struct.pack("<I", 0x7FFFFFF0) + pcap[second + 12:],
        "cut-last-block.pcapng": pcapng[:-6],
        "bad-block-length.pcapng": pcapng[:shb + 4] + struct.pack("<I", 13) + pcapng[shb + 8:],
    }
    paths = {}
    for name, data in cases.items():
        (tmp / name).write_bytes(data)
        paths[name] = tmp / name
    if BAD_CAPTURES.is_dir():
        for path in sorted(BAD_CAPTURES.iterdir()):
            paths[f"shared:{path.name}"] = path
    return paths


def test_damaged_capture_is_refused_in_one_line_and_nothing_is_served(tmp_path: Path) -> None:
    for label, path in damaged_captures(tmp_path).items():
        name = unique_name("damaged")
        result = cli("replay", LOCAL / "babel.pcap", path, "--name", name, "--accept-timeout", "5")
        line = assert_one_line_error(result, "replay")
        assert path.name in line, (label, line)
        assert "serving" not in result.stderr, label
        assert_one_line_error(cli("dump", name, "--timeout", "0"), "dump")  # nobody listens at that name


def test_damage_in_a_piped_capture_stops_replay_after_whole_good_packets(tmp_path: Path) -> None:
    """A pipe cannot be checked first: the replay streams it, sends the whole packets before the damage,
    then exits 1 with one line. The worker's file holds exactly those packets, byte for byte."""
    good = read_capture(LOCAL / "QinQpacket.pcap")  # 249 packets
    data = (LOCAL / "QinQpacket.pcap").read_bytes()
    offsets = [24]
    for record in good:
        offsets.append(offsets[-1] + 16 + len(record.data))
    cut = 200  # keep 200 whole packets, then half of the 201st
    damaged = data[: offsets[cut] + 16 + len(good[cut].data) // 2]
    name = unique_name("piped")
    replay = subprocess.Popen([str(CLI), "replay", "/dev/stdin", "--name", name, "--batch", "64", "--json"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=False)
    try:
        assert replay.stdin is not None and replay.stderr is not None
        replay.stdin.write(damaged[:24])  # the header: replay listens after reading it
        replay.stdin.flush()
        assert b"serving" in replay.stderr.readline()
        dump = subprocess.Popen([str(CLI), "dump", name, "-w", str(tmp_path / "out.pcap")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        replay.stdin.write(damaged[24:])
        replay.stdin.close()
        err = replay.stderr.read().decode()
        replay.wait(60)
        dump.communicate(timeout=60)
    finally:
        for p in (replay,):
            if p.poll() is None:
                p.kill()
    assert replay.returncode == 1 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "record cut short" in err, err
    got = comparable(read_capture(tmp_path / "out.pcap"))
    assert got == comparable(good[:cut])


# ---- 5. help, exit codes, --debug --------------------------------------------------------------------

SUBCOMMANDS = ["demo", "replay", "capture", "dump", "stats", "bench", "config"]


@pytest.mark.parametrize("command", [None, *SUBCOMMANDS])
def test_help_works_on_every_subcommand(command: str | None) -> None:
    result = cli(*([command] if command else []), "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: packet-ipc{' ' + command if command else ''}")


@pytest.mark.parametrize("args", [[], ["nosuchcommand"], ["replay"], ["dump"], ["replay", "x.pcap", "--speed", "0"],
                                  ["replay", "x.pcap", "--loop", "two"], ["capture"], ["config"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = cli(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "packet-ipc" in result.stderr


def test_runtime_error_exits_1_in_one_line_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pcap"
    assert f"no such capture file ({missing})" in assert_one_line_error(cli("replay", missing), "replay")
    assert_one_line_error(cli("dump", unique_name("nobody"), "--timeout", "0"), "dump")
    assert_one_line_error(cli("stats", unique_name("nobody")), "stats")
    debug = cli("--debug", "replay", missing)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "FileNotFoundError" in debug.stderr


# ---- 6. stats from another process, demo ---------------------------------------------------------------


def test_stats_shows_per_worker_counters_of_a_running_replay() -> None:
    name = unique_name("stats")
    replay = Replay(LOCAL / "QinQpacket.pcap", "--workers", "2", "--distribution", "round_robin",
                    "--loop", "100000000", name=name)
    workers: list[subprocess.Popen[str]] = []
    try:
        replay.serving()
        workers = [subprocess.Popen([str(CLI), "dump", name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for _ in range(2)]
        deadline = time.monotonic() + 60
        while True:  # wait until both workers were served something, as stats itself reports it
            data = json.loads(cli("stats", name, "--json").stdout)
            if len(data["connections"]) == 2 and all(c["packets"] > 0 for c in data["connections"]):
                break
            assert time.monotonic() < deadline, data
            time.sleep(0.05)
        later = json.loads(cli("stats", name, "--json").stdout)
        assert later["name"] == name and later["workers"] == 2 and later["distribution"] == "round_robin"
        assert sorted(c["peer_pid"] for c in later["connections"]) == sorted(w.pid for w in workers)
        assert later["sent_packets"] >= data["sent_packets"] > 0  # a running replay: counters move forward
        for conn in later["connections"]:
            assert {"packets", "bytes", "dropped_packets", "ring_used_slots", "blocked_ns", "live"} <= conn.keys()
        table = cli("stats", name, env={**os.environ, "COLUMNS": "200"})
        assert table.returncode == 0, table.stderr
        for col in ("worker", "sent", "dropped", "in ring"):
            assert col in table.stdout
        assert all(str(w.pid) in table.stdout for w in workers)
        replay.proc.send_signal(signal.SIGINT)
        code, _, err = replay.finish(timeout=30)
        assert code == 130 and "interrupted" in err and "Traceback" not in err
    finally:
        replay.__exit__()
        for w in workers:
            w.kill()
            w.communicate()


def test_demo_with_the_capture_shipped_in_the_package(tmp_path: Path) -> None:
    result = subprocess.run([str(CLI), "demo"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "match" in result.stderr and "MISMATCH" not in result.stderr
    assert "1 capture(s)" in " ".join(result.stderr.split())


@pytest.mark.shared
def test_demo_with_the_shared_captures() -> None:
    shared_captures()
    result = subprocess.run([str(CLI), "demo"], cwd=HERE.parent, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stderr.split())
    assert "match" in text and "MISMATCH" not in text
    assert "smb_data_print-segv.pcapng" in text  # skipped with its reason, the others replayed
    assert re.search(r"(\d+) capture\(s\)", text) and int(re.search(r"(\d+) capture\(s\)", text).group(1)) > 500
