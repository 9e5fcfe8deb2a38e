"""PCAP-over-IP end to end: real ``packet-ipc`` processes, real TCP on loopback, real tshark / tcpdump / nc /
socat on the other end.

Out: ``replay FILE`` -> ``dump --listen`` -> ``tshark -i TCP@127.0.0.1:PORT -w out``, compared with tshark's
reading of the original (fields and frame bytes, through test_cli's helpers). In: ``tcpdump -w - | nc``, a
Python writer and ``socat`` -> ``replay --listen`` -> ``dump -w``. packet-ipc to packet-ipc: ``dump --connect``
into ``replay --listen``, four workers on each side. Then peers that go away mid-stream, every bad input of the
issue, ``--allow``, and a stream of several link types.

Timestamps: ``dump --listen`` writes microsecond pcap unless ``--nanoseconds``; ``dump -w`` writes nanosecond
pcap. The byte-exact checks therefore send a nanosecond stream with the header ``dump -w`` writes (snaplen
262144), made by a Python writer from a shared capture; the tcpdump stream (microseconds) is compared packet
by packet (time, bytes, wire length, link type), which is exact for microsecond captures.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import packet_ipc as pipc
from packet_ipc.pcap import CaptureWriter, read_capture
from test_cli import CLI, LOCAL, SHARED_PCAPS, Replay, comparable, compare_tshark, unique_name

TSHARK = shutil.which("tshark")
TCPDUMP = shutil.which("tcpdump")
NC = shutil.which("nc")
SOCAT = shutil.which("socat")
needs_tshark = pytest.mark.skipif(TSHARK is None or shutil.which("mergecap") is None, reason="tshark not installed")

pytestmark = pytest.mark.timeout(180)


# ---- helpers ---------------------------------------------------------------------------------------------


def start(*args: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([str(CLI), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def port_of(proc: subprocess.Popen[str]) -> int:
    """The port a ``--listen 0`` process printed (its first stderr line says where it listens)."""
    assert proc.stderr is not None
    line = proc.stderr.readline()
    match = re.search(r" on 127\.0\.0\.1:(\d+)$", line.strip())
    if not match:
        proc.kill()
        raise AssertionError(f"no listening line: {line}{proc.communicate()[1]}")
    return int(match.group(1))


def wait_for_line(proc: subprocess.Popen[str], text: str) -> str:
    assert proc.stderr is not None
    while line := proc.stderr.readline():
        if text in line:
            return line
    raise AssertionError(f"{text!r} never printed; exit {proc.wait(30)}")


@contextmanager
def processes() -> Iterator[list[subprocess.Popen[Any]]]:
    """Every process a test starts; whatever still runs at the end is killed and reaped."""
    procs: list[subprocess.Popen[Any]] = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            if p.stdin is not None:
                p.stdin = None  # a test may have closed it; nothing more goes in
            p.communicate()


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def error_line(err: str, command: str) -> str:
    """The last stderr line, which must be the command's one error line; no traceback anywhere."""
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"packet-ipc {command}: error: "), err
    return last


def nanosecond_stream(source: Path, tmp: Path) -> bytes:
    """The records of ``source`` as the nanosecond pcap ``dump -w`` writes (snaplen 262144): a Python writer."""
    records = read_capture(source)
    path = tmp / "stream.pcap"
    with CaptureWriter(path, linktype=records[0].linktype, snaplen=262144, nanosecond=True) as writer:
        writer.write_many(records)
    return path.read_bytes()


def pcap_header(snaplen: int = 65535, magic: int = 0xA1B2C3D4, linktype: int = 1) -> bytes:
    return struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)


def record(data: bytes, seconds: int = 1_700_000_000) -> bytes:
    return struct.pack("<IIII", seconds, 0, len(data), len(data)) + data


def micro_capture() -> Path:
    """A microsecond Ethernet capture: the shared ndpi_zoom2.pcap (11,977 packets, 9 MB, 5 flows) or a
    shipped one. (merged-ether.pcap holds times beyond 2106, which pcap output refuses.)"""
    shared = SHARED_PCAPS / "more" / "ndpi_zoom2.pcap"
    return shared if shared.exists() else LOCAL / "QinQpacket.pcap"


# ---- out: dump --listen read by tshark -----------------------------------------------------------------


def tshark_params() -> list[Any]:
    params = [pytest.param(p, False, id=p.name) for p in sorted(LOCAL.glob("*.pcap*"))]
    for rel, nano in (("QinQpacket-nsec.pcap", True), ("more/ndpi_zoom2.pcap", False)):
        path = SHARED_PCAPS / rel
        mark = pytest.mark.skipif(not path.exists(), reason=f"shared capture {path} not present")
        params.append(pytest.param(path, nano, id=rel + ("-ns" if nano else ""), marks=[mark, pytest.mark.shared]))
    return params


@needs_tshark
@pytest.mark.parametrize(("capture", "nanoseconds"), tshark_params())
def test_tshark_reading_dump_listen_sees_the_original_capture(capture: Path, nanoseconds: bool, tmp_path: Path) -> None:
    out = tmp_path / "out.pcapng"
    with processes() as procs, Replay(capture, name=unique_name("tshark")) as replay:
        replay.serving()
        dump = start("dump", replay.name, "--listen", "127.0.0.1:0", "--json", *(["--nanoseconds"] * nanoseconds))
        procs.append(dump)
        port = port_of(dump)
        tshark = subprocess.Popen([TSHARK, "-i", f"TCP@127.0.0.1:{port}", "-w", str(out)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(tshark)
        _, tshark_err = tshark.communicate(timeout=120)  # tshark ends when dump ends the TCP stream
        code, dump_out, dump_err = finish(dump)
        assert code == 0, dump_err
        assert replay.finish()[0] == 0
    assert tshark.returncode == 0, tshark_err
    result = json.loads(dump_out)
    expected = read_capture(capture)
    assert result["packets"] == result["written"] == len(expected) and result["not_delivered"] == 0
    problems = compare_tshark([capture], out, tmp_path)
    assert not problems, "\n".join(problems)


@pytest.mark.skipif(TCPDUMP is None or NC is None, reason="tcpdump or nc (netcat-openbsd) not installed")
def test_nc_piped_into_tcpdump_reads_dump_listen_live() -> None:
    capture = LOCAL / "QinQpacket.pcap"
    with processes() as procs, Replay(capture, "--loop", "8", name=unique_name("nc")) as replay:
        replay.serving()
        dump = start("dump", replay.name, "--listen", "0")
        procs.append(dump)
        reading = subprocess.run(f"{NC} -d 127.0.0.1 {port_of(dump)} | {TCPDUMP} -nn -tt -r -", shell=True,
                                 capture_output=True, text=True, timeout=120)
        assert finish(dump)[0] == 0 and replay.finish()[0] == 0
    assert reading.returncode == 0, reading.stderr
    lines = reading.stdout.splitlines()
    assert len(lines) == 8 * len(read_capture(capture)), reading.stderr
    assert lines[0].startswith("1286466917.641254 ")  # the first packet's time, to the microsecond


def test_replay_listens_on_ipv6_loopback(tmp_path: Path) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError as e:
        pytest.skip(f"no IPv6 loopback: {e}")
    stream = nanosecond_stream(LOCAL / "babel.pcap", tmp_path)
    name = unique_name("v6")
    with processes() as procs:
        replay = start("replay", "--listen", "[::1]:0", "--name", name, "--json")
        procs.append(replay)
        assert replay.stderr is not None
        port = int(re.search(r"on \[::1\]:(\d+)$", replay.stderr.readline().strip()).group(1))  # type: ignore[union-attr]
        dump = start("dump", name, "-w", tmp_path / "out.pcap", "--timeout", "60")
        procs.append(dump)
        with socket.create_connection(("::1", port)) as sock:
            sock.sendall(stream)
        code, out, err = finish(replay)
        assert code == 0, err
        assert finish(dump)[0] == 0
    assert json.loads(out)["source"].startswith("tcp://[::1]:")
    assert (tmp_path / "out.pcap").read_bytes() == stream


# ---- in: writers into replay --listen ---------------------------------------------------------------------


@contextmanager
def listening_replay(*args: Any, out: Path | None = None, dump_timeout: float = 60
                     ) -> Iterator[tuple[subprocess.Popen[str], int, subprocess.Popen[str]]]:
    """``replay --listen 0`` and a ``dump -w out`` worker: yields (replay, port, dump)."""
    name = unique_name("listen")
    with processes() as procs:
        replay = start("replay", "--listen", "0", "--name", name, "--json", "--header-timeout", "30", *args)
        procs.append(replay)
        port = port_of(replay)
        dump = start("dump", name, *(["-w", out] if out else []), "--json", "--timeout", dump_timeout)
        procs.append(dump)
        yield replay, port, dump


@pytest.mark.skipif(TCPDUMP is None or NC is None, reason="tcpdump or nc (netcat-openbsd) not installed")
def test_tcpdump_piped_into_nc_is_replayed_to_a_worker_packet_for_packet(tmp_path: Path) -> None:
    capture, out = micro_capture(), tmp_path / "out.pcap"
    with listening_replay(out=out) as (replay, port, dump):
        writer = subprocess.run(f"{TCPDUMP} -r {capture} -w - | {NC} -N 127.0.0.1 {port}", shell=True,
                                capture_output=True, text=True, timeout=120)
        assert writer.returncode == 0, writer.stderr
        code, replay_out, err = finish(replay)
        assert code == 0, err
        assert finish(dump)[0] == 0
    expected = read_capture(capture)
    assert json.loads(replay_out)["packets"] == len(expected)
    assert comparable(read_capture(out)) == comparable(expected)


@pytest.mark.parametrize("writer", ["python", "socat"])
def test_a_writer_into_replay_listen_comes_out_of_dump_byte_exact(writer: str, tmp_path: Path) -> None:
    if writer == "socat" and SOCAT is None:
        pytest.skip("socat not installed")
    stream = nanosecond_stream(micro_capture(), tmp_path)
    (tmp_path / "stream.pcap").write_bytes(stream)
    out = tmp_path / "out.pcap"
    with listening_replay(out=out) as (replay, port, dump):
        if writer == "python":
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(stream)
        else:
            subprocess.run([SOCAT, "-u", f"OPEN:{tmp_path / 'stream.pcap'}", f"TCP:127.0.0.1:{port}"], check=True,
                           timeout=120)
        code, _, err = finish(replay)
        assert code == 0, err
        assert finish(dump)[0] == 0
    assert out.read_bytes() == stream


@pytest.mark.parametrize("nanosecond", [False, True])
def test_a_big_endian_stream_is_replayed_with_exact_times(nanosecond: bool, tmp_path: Path) -> None:
    """Readers must accept either byte order (Arkime once did not); the times come out exact."""
    records = read_capture(LOCAL / "pptp.pcap")
    magic, tick = (0xA1B23C4D, 1) if nanosecond else (0xA1B2C3D4, 1000)
    stream = struct.pack(">IHHiIII", magic, 2, 4, 0, 0, 65535, records[0].linktype) + b"".join(
        struct.pack(">IIII", r.timestamp // 10**9, r.timestamp % 10**9 // tick, len(r.data), r.orig_len) + r.data
        for r in records)
    out = tmp_path / "out.pcap"
    with listening_replay(out=out) as (replay, port, dump):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(stream)
        code, _, err = finish(replay)
        assert code == 0, err
        assert finish(dump)[0] == 0
    assert comparable(read_capture(out)) == comparable(records)


@pytest.mark.timeout(300)
def test_packet_ipc_to_packet_ipc_with_four_workers_on_each_side(tmp_path: Path) -> None:
    """Host A: replay FILE to 4 workers by flow, each ``dump --connect`` to its own port. Host B: 4 ``replay
    --listen``, one per port, each serving its own ``dump -w``. Every packet arrives once, each worker's in
    its original order, and no flow is split between workers."""
    capture = micro_capture()
    with processes() as procs:
        listeners = []
        for i in range(4):
            name = unique_name(f"b{i}")
            replay = start("replay", "--listen", "0", "--name", name, "--json", "--header-timeout", "60")
            procs.append(replay)
            port = port_of(replay)
            procs.append(start("dump", name, "-w", tmp_path / f"b{i}.pcap", "--json", "--timeout", "60"))
            listeners.append((replay, port, procs[-1]))
        with Replay(capture, "--workers", "4", "--distribution", "flow", name=unique_name("a")) as source:
            source.serving()
            pushers = [start("dump", source.name, "--connect", f"127.0.0.1:{port}", "--json") for _, port, _ in listeners]
            procs.extend(pushers)
            results = []
            for p in pushers:
                code, out, err = finish(p)
                assert code == 0, err
                results.append(json.loads(out))
            assert source.finish()[0] == 0
        for replay, _, dump in listeners:
            assert finish(replay)[0] == 0
            assert finish(dump)[0] == 0
    expected = read_capture(capture)
    parts = [read_capture(tmp_path / f"b{i}.pcap") for i in range(4)]
    assert [len(p) for p in parts] == [r["written"] for r in results]
    assert sum(1 for p in parts if p) >= 2, "the flows should be spread over several workers"
    assert sorted(comparable([r for p in parts for r in p])) == sorted(comparable(expected))
    order = {key: i for i, key in enumerate(comparable(expected))}
    for part in parts:  # each worker's packets in capture order (packets of a flow stay in order)
        positions = [order[key] for key in comparable(part)]
        assert positions == sorted(positions)


# ---- peers that go away mid-stream ------------------------------------------------------------------------

READER = """
import socket, sys, time
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
got = 0
while got < 200_000:
    got += len(sock.recv(65536))
print("read", flush=True)
time.sleep(600)
"""


def test_reader_killed_mid_stream_makes_dump_exit_1_counting_what_it_could_not_deliver() -> None:
    with processes() as procs, Replay(LOCAL / "QinQpacket.pcap", "--loop", "2000", name=unique_name("rk")) as replay:
        replay.serving()
        dump = start("dump", replay.name, "--listen", "0", "--json")
        procs.append(dump)
        reader = subprocess.Popen([sys.executable, "-c", READER, str(port_of(dump))], stdout=subprocess.PIPE, text=True)
        procs.append(reader)
        assert reader.stdout is not None and reader.stdout.readline() == "read\n"
        reader.send_signal(signal.SIGKILL)
        code, out, err = finish(dump)
        replay.proc.kill()  # its only worker is gone; what replay does then is test_cli's business
    assert code == 1
    assert "went away" in error_line(err, "dump")
    result = json.loads(out)
    assert result["outcome"] == "reader gone" and result["written"] > 0
    assert result["packets"] == result["written"] + result["not_delivered"]


WRITER = """
import socket, struct, sys, time
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
if sys.argv[2] == "reset":
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
sock.sendall(open(sys.argv[3], "rb").read())
print("sent", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("how", ["at a record boundary", "mid-record", "reset"])
def test_writer_killed_mid_stream_ends_or_aborts_the_workers_stream_like_a_file(how: str, tmp_path: Path) -> None:
    """Killed after whole records: the workers' stream ends, as a file that ends. Killed inside a record or
    with a reset connection: the workers' stream is aborted, as a file cut short; the worker keeps the
    whole packets before and exits 1."""
    records = read_capture(LOCAL / "QinQpacket.pcap")
    stream = nanosecond_stream(LOCAL / "QinQpacket.pcap", tmp_path)
    whole = 24 + sum(16 + len(r.data) for r in records[:100])
    cut = stream[: whole + (16 + len(records[100].data) // 2 if how == "mid-record" else 0)]
    (tmp_path / "cut.pcap").write_bytes(cut)
    out = tmp_path / "out.pcap"
    with listening_replay(out=out) as (replay, port, dump), processes() as procs:
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(port), "reset" if how == "reset" else "fin",
                                   str(tmp_path / "cut.pcap")], stdout=subprocess.PIPE, text=True)
        procs.append(writer)
        assert writer.stdout is not None and writer.stdout.readline() == "sent\n"
        wait_for_line(replay, "serving")  # the header was read: the stream is being served
        writer.send_signal(signal.SIGKILL)
        replay_code, replay_out, replay_err = finish(replay)
        dump_code, _, dump_err = finish(dump)
    assert out.read_bytes() == stream[:whole]  # the 100 whole packets, byte for byte
    if how == "at a record boundary":
        assert (replay_code, dump_code) == (0, 0), (replay_err, dump_err)
        assert json.loads(replay_out)["packets"] == 100
    else:
        assert replay_code == 1 and dump_code == 1
        line = error_line(replay_err, "replay")
        assert ("record cut short" in line) if how == "mid-record" else ("reset" in line)
        assert "aborted the workers' streams after 100 packets" in replay_err
        assert "aborted" in error_line(dump_err, "dump")


def test_an_aborted_stream_crosses_packet_ipc_to_packet_ipc_as_an_abort(tmp_path: Path) -> None:
    """A replay of a piped capture cut mid-record aborts its worker; that worker (``dump --connect``) resets
    the TCP stream after its packets were acknowledged; the replay on the other side aborts its own worker,
    which keeps the whole packets and exits 1."""
    records = read_capture(LOCAL / "QinQpacket.pcap")
    data = (LOCAL / "QinQpacket.pcap").read_bytes()
    whole = 24 + sum(16 + len(r.data) for r in records[:150])
    out = tmp_path / "out.pcap"
    with listening_replay(out=out) as (far, port, far_dump), processes() as procs:
        name = unique_name("near")
        near = subprocess.Popen([str(CLI), "replay", "/dev/stdin", "--name", name, "--json"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(near)
        assert near.stdin is not None
        near.stdin.write(data[:24])
        near.stdin.flush()
        pusher = start("dump", name, "--connect", f"127.0.0.1:{port}", "--json")
        procs.append(pusher)
        near.stdin.write(data[24 : whole + 30])  # 150 whole records, then part of one
        near.stdin.close()
        assert near.wait(60) == 1
        pusher_code, pusher_out, pusher_err = finish(pusher)
        far_code, _, far_err = finish(far)
        far_dump_code, _, far_dump_err = finish(far_dump)
    assert pusher_code == 1 and json.loads(pusher_out)["outcome"] == "aborted", pusher_err
    assert far_code == 1 and "reset" in error_line(far_err, "replay")
    assert far_dump_code == 1 and "aborted" in error_line(far_dump_err, "dump")
    assert comparable(read_capture(out)) == comparable(records[:150])  # microsecond times: exact


# ---- bad input ----------------------------------------------------------------------------------------------

BAD_STREAMS = {
    "an HTTP request, not pcap": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not a pcap"),
    "snaplen 0": (pcap_header(snaplen=0) + record(b"\0" * 60), "snaplen 0"),
    "snaplen over 262144": (pcap_header(snaplen=262145) + record(b"\0" * 60), "snaplen 262145"),
    "pcapng": ((LOCAL / "ahcp.pcapng").read_bytes(), "pcapng stream"),
    "a header cut short, then closed": (pcap_header()[:10], "truncated pcap file header"),
    "closed before any byte": (b"", "closed the connection before sending a pcap header"),
    "an unsupported version": (struct.pack("<IHHiIII", 0xA1B2C3D4, 3, 0, 0, 0, 65535, 1), "unsupported pcap version"),
}


@pytest.mark.parametrize("case", list(BAD_STREAMS))
def test_a_bad_stream_into_replay_listen_is_refused_in_one_line_and_nothing_is_served(case: str) -> None:
    data, words = BAD_STREAMS[case]
    with listening_replay(dump_timeout=3) as (replay, port, dump):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            code, _, err = finish(replay)
        dump_code, _, dump_err = finish(dump)
    assert code == 1 and words in error_line(err, "replay"), err
    assert "serving" not in err  # no packet-ipc server was ever created
    assert dump_code == 1 and error_line(dump_err, "dump")  # its server never appeared (3 s)


def test_a_first_record_cut_short_aborts_the_workers_stream_before_any_packet(tmp_path: Path) -> None:
    out = tmp_path / "out.pcap"
    with listening_replay(out=out) as (replay, port, dump):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(pcap_header() + record(b"\1" * 100)[:60])
            wait_for_line(replay, "serving")
        code, _, err = finish(replay)
        dump_code, _, dump_err = finish(dump)
    assert code == 1 and "record cut short (44 of 100 bytes)" in error_line(err, "replay")
    assert dump_code == 1 and "aborted" in error_line(dump_err, "dump")
    assert read_capture(out) == []


def test_a_peer_that_never_sends_the_header_times_out_in_one_line() -> None:
    name = unique_name("silent")
    with processes() as procs:
        replay = start("replay", "--listen", "0", "--name", name, "--header-timeout", "1")
        procs.append(replay)
        with socket.create_connection(("127.0.0.1", port_of(replay))) as sock:
            sock.sendall(pcap_header()[:12])  # part of a header, then silence
            code, _, err = finish(replay)
    assert code == 1 and "no pcap header within 1 s" in error_line(err, "replay")
    assert "serving" not in err


def test_replay_tcp_connects_to_a_server_and_refuses_its_bad_header() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with processes() as procs:
            replay = start("replay", f"tcp://127.0.0.1:{port}", "--name", unique_name("tcpbad"))
            procs.append(replay)
            peer, _ = server.accept()
            with peer:
                peer.sendall(pcap_header(snaplen=0))
                code, _, err = finish(replay)
    assert code == 1 and "snaplen 0" in error_line(err, "replay") and "serving" not in err


def test_replay_tcp_serves_what_a_pcap_over_ip_server_sends(tmp_path: Path) -> None:
    stream = nanosecond_stream(LOCAL / "HSRP_failover.pcap", tmp_path)
    name = unique_name("tcpgood")
    with socket.create_server(("127.0.0.1", 0)) as server, processes() as procs:
        replay = start("replay", f"tcp://127.0.0.1:{server.getsockname()[1]}", "--name", name, "--json")
        dump = start("dump", name, "-w", tmp_path / "out.pcap", "--timeout", "60")
        procs.extend([replay, dump])
        peer, _ = server.accept()
        with peer:
            peer.sendall(stream)
        code, out, err = finish(replay)
        assert code == 0, err
        assert finish(dump)[0] == 0
    assert (tmp_path / "out.pcap").read_bytes() == stream
    assert json.loads(out)["source"].startswith("tcp://127.0.0.1:")


@pytest.mark.parametrize("command", ["replay", "dump"])
def test_a_port_in_use_and_a_host_that_does_not_resolve_fail_in_one_line(command: str) -> None:
    name = unique_name("addr")
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = subprocess.run([str(CLI), command, *([] if command == "replay" else [name]), "--listen",
                                 f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Address already in use" in error_line(result.stderr, command)
    target = ["tcp://no-such-host.invalid:57012"] if command == "replay" else [name, "--connect",
                                                                            "no-such-host.invalid:57012"]
    result = subprocess.run([str(CLI), command, *target], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "does not resolve" in error_line(result.stderr, command)


@pytest.mark.parametrize("args", [["replay", "--listen", "0", "--loop", "2"], ["replay", "tcp://x:1", "--speed", "1"],
                                  ["replay", "--listen", "70000"], ["replay", "--listen", "0", "a.pcap"],
                                  ["replay", "tcp://127.0.0.1:1", "--allow", "127.0.0.1"],
                                  ["dump", "n", "--listen", "0", "-w", "x.pcap"],
                                  ["dump", "n", "--listen", "0", "--connect", "127.0.0.1:1"],
                                  ["dump", "n", "--listen", "0", "--allow", "10.0.0.0/33"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr


# ---- who may connect, one link type -------------------------------------------------------------------------


def read_stream(port: int, source: str | None = None) -> tuple[bytes, bool]:
    """Everything a PCAP-over-IP server sends, and whether it ended with a reset (an abort)."""
    sock = socket.socket()
    if source:
        sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    chunks = []
    with sock:
        try:
            while chunk := sock.recv(1 << 16):
                chunks.append(chunk)
        except ConnectionResetError:
            return b"".join(chunks), True
    return b"".join(chunks), False


def test_allow_refuses_other_peers_logs_and_counts_them_and_serves_an_allowed_one() -> None:
    capture = LOCAL / "HSRP_failover.pcap"
    with processes() as procs, Replay(capture, name=unique_name("allow")) as replay:
        replay.serving()
        dump = start("dump", replay.name, "--listen", "127.0.0.1:0", "--allow", "127.0.0.2/32", "--json")
        procs.append(dump)
        port = port_of(dump)
        refused = socket.create_connection(("127.0.0.1", port))  # from 127.0.0.1: not allowed
        with refused:
            with pytest.raises(ConnectionResetError):
                while refused.recv(1 << 16):
                    pass
        data, reset = read_stream(port, source="127.0.0.2")
        code, out, err = finish(dump)
        assert replay.finish()[0] == 0
    assert code == 0, err
    assert "refused a connection from 127.0.0.1:" in err
    assert json.loads(out)["refused_peers"] == 1
    expected = read_capture(capture)
    assert not reset and len(data) == 24 + sum(16 + len(r.data) for r in expected)


def test_several_link_types_are_refused_unless_one_is_chosen(tmp_path: Path) -> None:
    files = [LOCAL / "HSRP_failover.pcap", LOCAL / "babel.pcap"]  # Ethernet, then Linux SLL
    ethernet, sll = read_capture(files[0]), read_capture(files[1])
    for chosen in (None, 1):
        with processes() as procs, Replay(*files, name=unique_name("lt")) as replay:
            replay.serving()
            dump = start("dump", replay.name, "--listen", "0", "--json", *(["--linktype", chosen] if chosen else []))
            procs.append(dump)
            data, reset = read_stream(port_of(dump))
            code, out, err = finish(dump)
            replay.finish()
        (tmp_path / "got.pcap").write_bytes(data)
        got = read_capture(tmp_path / "got.pcap")
        assert [r.data for r in got] == [r.data for r in ethernet]  # whole packets before the refusal, or all
        if chosen is None:
            assert code == 1 and "link type 113" in error_line(err, "dump") and "--linktype" in err
            assert reset  # refused mid-stream: an abort, not a clean end
        else:
            assert code == 0 and not reset, err
            assert json.loads(out)["skipped_other_linktype"] == len(sll)


# ---- the writer's batch fast path ----------------------------------------------------------------------------


@pytest.mark.parametrize("nanosecond", [False, True])
def test_capture_writer_write_batch_writes_what_write_many_writes(nanosecond: bool, tmp_path: Path) -> None:
    records = read_capture(LOCAL / "QinQpacket.pcap")
    batch = pipc.PacketBatch.from_packets(records)
    for name, how in (("batch", CaptureWriter.write_batch), ("many", CaptureWriter.write_many)):
        with CaptureWriter(tmp_path / name, linktype=1, nanosecond=nanosecond) as writer:
            assert how(writer, batch) == len(records)
    assert (tmp_path / "batch").read_bytes() == (tmp_path / "many").read_bytes()


@pytest.mark.parametrize(("packet", "words"), [
    (pipc.Packet(1, b"x" * 200), "exceeds the snaplen 100"),
    (pipc.Packet(1, b"x" * 10, linktype=113), "linktype 113 differs"),
    (pipc.Packet(1 << 63, b"x" * 10), "beyond what pcap can hold"),
])
def test_capture_writer_write_batch_stops_at_what_pcap_cannot_hold_after_the_packets_before(
        packet: pipc.Packet, words: str, tmp_path: Path) -> None:
    good = [pipc.Packet(i * 1000, bytes([i]) * 60) for i in range(5)]
    batch = pipc.PacketBatch.from_packets([*good, packet, *good], linktype=1)
    with CaptureWriter(tmp_path / "out.pcap", linktype=1, snaplen=100, nanosecond=True) as writer:
        with pytest.raises(ValueError, match=words):
            writer.write_batch(batch)
    assert [(r.timestamp, r.data) for r in read_capture(tmp_path / "out.pcap")] == [(p.timestamp, bytes(p.data)) for p in good]
