"""Live capture on real interfaces made by the tests: veth pairs whose peers sit in a network namespace.

A small sender run in the namespace with ``ip netns exec`` writes known Ethernet frames to a raw AF_PACKET
socket on the peer; the capture (the C path, ``pipc_capture_*`` through :mod:`packet_ipc.capture`, and the
``packet-ipc capture`` command) listens on our end. Checked: frames arrive byte-exact, in order, with
nanosecond timestamps inside the send window; a BPF filter lets exactly the matching frames through; two
interfaces at once keep each frame's ifindex; killing a worker mid-capture moves its flows to the other;
SIGINT/SIGTERM end the stream cleanly; and every bad input fails with one line and leaves nothing behind.
Needs root and ``ip netns`` (skipped with the reason otherwise); the bad-input cases mostly need neither.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from packet_ipc.capture import CaptureOpenError, open_live
from packet_ipc.pcap import read_capture

CLI = Path(sys.executable).parent / "packet-ipc"
ETHERTYPE = 0x88B5  # IEEE 802 local experimental: nothing else on the link uses them
OTHER_ETHERTYPE = 0x88B6
SOURCE_MAC = bytes.fromhex("020000000001")

SENDER = Path(__file__).resolve().parent / "helpers" / "send_frames.py"  # frames into an interface, in order


def frames(count: int, ethertype: int = ETHERTYPE, tag: int = 0) -> list[bytes]:
    """Frames from the Ethernet minimum to near the MTU, each numbered (and tagged) in its payload."""
    out = []
    for i in range(count):
        size = 60 + (i * 37) % 1400
        header = b"\xff" * 6 + SOURCE_MAC + ethertype.to_bytes(2, "big")
        body = bytes([tag]) + i.to_bytes(4, "big") + bytes((i + k) & 0xFF for k in range(size - 19))
        out.append(header + body)
    return out


def udp_frames(count: int, flows: int, first: int = 0) -> list[bytes]:
    """IPv4/UDP frames to port 7777 from `flows` source ports (so `flows` flows), numbered from `first`."""
    out = []
    for i in range(first, first + count):
        payload = i.to_bytes(4, "big") + bytes(60)
        udp = struct.pack("!HHHH", 20000 + i % flows, 7777, 8 + len(payload), 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                         bytes([10, 14, 0, 1]), bytes([10, 14, 0, 2])) + udp
        out.append(b"\xff" * 6 + SOURCE_MAC + b"\x08\x00" + ip)
    return out


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


class Net:
    """A namespace and veth pairs: ``outside[i]`` here, ``inside[i]`` its peer in the namespace."""

    def __init__(self, netns: str, inside: list[str], outside: list[str], tmp: Path) -> None:
        self.netns, self.inside, self.outside, self.tmp = netns, inside, outside, tmp

    def send(self, pair: int, packets: list[bytes]) -> None:
        """Writes packets, in order, into the namespace's end of pair `pair` (they arrive on outside[pair])."""
        path = self.tmp / f"frames-{pair}.bin"
        path.write_bytes(b"".join(len(f).to_bytes(4, "little") + f for f in packets))
        sent = subprocess.run(["ip", "netns", "exec", self.netns, sys.executable, str(SENDER),
                               self.inside[pair], str(path)], capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr


def make_net(tmp: Path, pairs: int) -> Iterator[Net]:
    if os.geteuid() != 0:
        pytest.skip("live capture on a veth pair needs root (ip netns, CAP_NET_RAW)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2's ip is not installed")
    tag = f"{os.getpid() % 100000}"
    netns = f"pipc14-test-{tag}"
    inside = [f"pipc14{'ac'[k]}{tag}" for k in range(pairs)]
    outside = [f"pipc14{'bd'[k]}{tag}" for k in range(pairs)]
    created = ip("netns", "add", netns)
    if created.returncode != 0:
        pytest.skip(f"ip netns is unavailable here: {created.stderr.strip()}")
    try:
        for a, b in zip(inside, outside):
            for command in (
                ["link", "add", b, "type", "veth", "peer", "name", a],
                ["link", "set", a, "netns", netns],
                ["-n", netns, "link", "set", a, "up"],
                ["link", "set", b, "up"],
            ):
                result = ip(*command)
                assert result.returncode == 0, (command, result.stderr)
        yield Net(netns, inside, outside, tmp)
    finally:
        ip("netns", "del", netns)  # takes its ends, and so the pairs, with it
        for b in outside:
            if ip("link", "show", b).returncode == 0:
                ip("link", "del", b)


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    yield from make_net(tmp_path, 1)


@pytest.fixture
def net2(tmp_path: Path) -> Iterator[Net]:
    yield from make_net(tmp_path, 2)


def collect(cap: Any, want: int, seconds: float = 15.0) -> list[tuple[int, bytes, int, int, int]]:
    """(timestamp, data, orig_len, linktype, ifindex) of packets read until `want` or the deadline."""
    got: list[tuple[int, bytes, int, int, int]] = []
    deadline = time.monotonic() + seconds
    while len(got) < want and time.monotonic() < deadline:
        batch = cap.read_batch(256, 0.2)
        if batch is None:
            continue
        got.extend((p.timestamp, bytes(p.data), p.orig_len, p.linktype, p.ifindex) for p in batch)
    return got


# ---- the C path through the Python API ------------------------------------------------------------------


def test_frames_arrive_byte_exact_in_order_with_nanosecond_timestamps(net: Net) -> None:
    sent = frames(500)
    with open_live(net.outside[0], bpf_filter=f"ether proto {ETHERTYPE:#x}") as cap:
        assert cap.interfaces[0].nanosecond, "the kernel gives nanosecond timestamps on veth"
        start_ns = time.time_ns()
        net.send(0, sent)
        end_ns = time.time_ns()
        got = collect(cap, len(sent))
        per = cap.interface_stats()[0]
    assert [g[1] for g in got] == sent
    ifindex = socket.if_nametoindex(net.outside[0])
    assert all(orig == len(data) and lt == 1 and idx == ifindex for _, data, orig, lt, idx in got)
    stamps = [g[0] for g in got]
    assert all(start_ns <= t <= end_ns for t in stamps), (start_ns, stamps[:3], end_ns)
    assert stamps == sorted(stamps)
    assert any(t % 1000 for t in stamps), "nanosecond precision: not every stamp is a whole microsecond"
    assert per.captured == len(sent) and per.received >= len(sent) and per.dropped == 0


def test_a_bpf_filter_lets_exactly_the_matching_frames_through(net: Net) -> None:
    wanted, other = frames(200, ETHERTYPE, tag=1), frames(200, OTHER_ETHERTYPE, tag=2)
    mixed = [f for pair in zip(wanted, other) for f in pair]
    with open_live(net.outside[0], bpf_filter=f"ether proto {ETHERTYPE:#x}") as cap:
        net.send(0, mixed)
        got = collect(cap, len(wanted))
        got += collect(cap, 1, seconds=0.5)  # anything beyond the matching frames would show up here
    assert [g[1] for g in got] == wanted


def test_two_interfaces_at_once_keep_each_frames_ifindex(net2: Net) -> None:
    first, second = frames(150, tag=1), frames(150, tag=2)
    index = [socket.if_nametoindex(name) for name in net2.outside]
    with open_live(net2.outside, bpf_filter=f"ether proto {ETHERTYPE:#x}") as cap:
        assert [i.ifindex for i in cap.interfaces] == index
        net2.send(0, first)
        net2.send(1, second)
        got = collect(cap, len(first) + len(second))
        per = cap.interface_stats()
    assert [g[1] for g in got if g[4] == index[0]] == first
    assert [g[1] for g in got if g[4] == index[1]] == second
    assert len(got) == len(first) + len(second)
    assert [p.captured for p in per] == [len(first), len(second)]


def test_a_batch_kept_by_the_caller_is_not_overwritten_by_the_next(net: Net) -> None:
    sent = frames(300)
    with open_live(net.outside[0], bpf_filter=f"ether proto {ETHERTYPE:#x}") as cap:
        net.send(0, sent)
        kept, deadline = [], time.monotonic() + 15
        while sum(len(b) for b in kept) < len(sent) and time.monotonic() < deadline:
            batch = cap.read_batch(16, 0.2)  # small batches: many reads while earlier ones are still held
            if batch is not None:
                kept.append(batch)
    assert [bytes(p.data) for b in kept for p in b] == sent


# ---- the capture command ---------------------------------------------------------------------------------


def start_capture(args: list[str], name: str) -> subprocess.Popen[str]:
    capture = subprocess.Popen([str(CLI), "capture", *args, "--name", name, "--json", "--accept-timeout", "30"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert capture.stderr is not None
    line = capture.stderr.readline()  # printed once libpcap has every interface open, the filter set
    assert "capturing on" in line, line + capture.stderr.read()
    return capture


def start_dump(name: str, out: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([str(CLI), "dump", name, "--json", *(["-w", str(out)] if out else [])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stats_of(name: str) -> dict[str, Any]:
    result = subprocess.run([str(CLI), "stats", name, "--json"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def wait_sent(name: str, packets: int) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        data = stats_of(name)
        if data["sent_packets"] >= packets or time.monotonic() > deadline:
            return data
        time.sleep(0.05)  # polling another process's counters: there is nothing to wait on


def finish(*procs: subprocess.Popen[str] | None) -> None:
    for p in procs:
        if p is not None and p.poll() is None:
            p.kill()
            p.communicate()


def test_capture_command_serves_the_frames_to_a_dump_worker(net: Net, tmp_path: Path) -> None:
    sent = frames(300)
    name = f"@pipc14-test-{os.getpid()}"
    capture = start_capture(["-i", net.outside[0], "--filter", f"ether proto {ETHERTYPE:#x}", "--workers", "1",
                             "-c", str(len(sent))], name)
    dump = None
    try:
        dump = start_dump(name, tmp_path / "out.pcap")
        assert capture.stderr is not None
        assert "capturing (Ctrl-C" in capture.stderr.readline()  # the worker is connected
        start_ns = time.time_ns()
        net.send(0, sent)
        end_ns = time.time_ns()
        out, err = capture.communicate(timeout=60)
        dumped, dump_err = dump.communicate(timeout=60)
    finally:
        finish(capture, dump)
    assert capture.returncode == 0, err
    assert dump.returncode == 0, dump_err
    summary = json.loads(out)
    assert summary["packets"] == len(sent) and summary["workers"][0]["packets"] == len(sent)
    assert 0 <= summary["staged"] <= len(sent)  # copied twice: only what the worker's ring could not take at once
    [iface] = summary["interfaces"]
    assert iface["name"] == net.outside[0] and iface["captured"] == len(sent) and iface["dropped"] == 0
    assert json.loads(dumped)["packets"] == len(sent)
    records = read_capture(tmp_path / "out.pcap")
    assert [bytes(r.data) for r in records] == sent
    assert all(r.orig_len == len(r.data) and r.linktype == 1 for r in records)
    assert all(start_ns <= r.timestamp <= end_ns for r in records)
    assert [r.timestamp for r in records] == sorted(r.timestamp for r in records)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_the_stream_cleanly_with_counters(net: Net, signum: int) -> None:
    sent = frames(200)
    name = f"@pipc14-test-{os.getpid()}"
    capture = start_capture(["-i", net.outside[0], "--filter", f"ether proto {ETHERTYPE:#x}"], name)
    dump = None
    try:
        dump = start_dump(name)
        assert capture.stderr is not None
        assert "capturing (Ctrl-C" in capture.stderr.readline()
        net.send(0, sent)
        live = wait_sent(name, len(sent))
        assert live["capture"]["interfaces"][0]["captured"] == len(sent)  # counters live in `stats NAME`
        assert live["capture"]["interfaces"][0]["received"] >= len(sent)
        human = subprocess.run([str(CLI), "stats", name], capture_output=True, text=True, timeout=30)
        assert f"capture: {net.outside[0]} (ifindex" in human.stdout and "dropped 0" in human.stdout
        capture.send_signal(signum)
        out, err = capture.communicate(timeout=30)
        dumped, dump_err = dump.communicate(timeout=30)
    finally:
        finish(capture, dump)
    assert capture.returncode == 0, err
    assert "Traceback" not in err
    assert dump.returncode == 0, dump_err  # a clean end of stream, not a lost server
    assert json.loads(dumped)["packets"] == len(sent)
    summary = json.loads(out)
    assert summary["packets"] == len(sent) and summary["interfaces"][0]["captured"] == len(sent)


def test_killing_a_worker_mid_capture_moves_its_flows(net: Net, tmp_path: Path) -> None:
    before, after = udp_frames(400, flows=32), udp_frames(400, flows=32, first=400)
    name = f"@pipc14-test-{os.getpid()}"
    capture = start_capture(["-i", net.outside[0], "--filter", "udp dst port 7777", "--workers", "2"], name)
    keep = doomed = None
    try:
        keep = start_dump(name, tmp_path / "keep.pcap")
        doomed = start_dump(name)
        assert capture.stderr is not None
        assert "capturing (Ctrl-C" in capture.stderr.readline()
        net.send(0, before)
        first = wait_sent(name, len(before))
        by_pid = {w["peer_pid"]: w for w in first["connections"]}
        assert by_pid[doomed.pid]["packets"] > 0 and by_pid[keep.pid]["packets"] > 0  # both had flows
        doomed.kill()
        doomed.communicate()
        net.send(0, after)
        wait_sent(name, len(before) + len(after))
        capture.send_signal(signal.SIGTERM)
        out, err = capture.communicate(timeout=30)
        kept, keep_err = keep.communicate(timeout=30)
    finally:
        finish(capture, keep, doomed)
    assert capture.returncode == 0, err
    assert keep.returncode == 0, keep_err
    summary = json.loads(out)
    assert summary["packets"] == len(before) + len(after)
    states = {w["peer_pid"]: w["live"] for w in summary["workers"]}
    assert states == {keep.pid: True, doomed.pid: False}
    got = [bytes(r.data) for r in read_capture(tmp_path / "keep.pcap")]
    assert got[-len(after):] == after  # every flow, the dead worker's too, now reaches the one left


# ---- bad input: one line, the right exit code, nothing left behind -----------------------------------------


def run_capture_cli(*args: str, tmp: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = subprocess.run([str(CLI), "capture", *args, "-c", "1", "--accept-timeout", "1",
                             "--name", str(tmp / "endpoint")], capture_output=True, text=True, timeout=30,
                            env=None if env is None else {**os.environ, **env})
    assert "Traceback" not in result.stderr
    assert list(tmp.iterdir()) == [], "nothing may be left behind (no socket, no stats socket)"
    assert result.stdout == ""
    return result.returncode, result.stderr


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_capture_on_an_interface_that_does_not_exist_fails_in_one_line(tmp_path: Path) -> None:
    code, err = run_capture_cli("-i", "pipc14-nosuch", tmp=tmp_path)
    assert code == 1, err
    assert one_line(err).startswith("packet-ipc capture: error: cannot capture on 'pipc14-nosuch'")


def test_capture_with_a_filter_libpcap_cannot_compile_fails_in_one_line(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("opening lo for capture needs CAP_NET_RAW")
    code, err = run_capture_cli("-i", "lo", "--filter", "ether proto (", tmp=tmp_path)
    assert code == 1, err
    assert one_line(err).startswith("packet-ipc capture: error: bad capture filter 'ether proto (' on 'lo'")


def as_nobody(argv: list[str]) -> tuple[int, str]:
    """Runs the command line's main() in a forked child that dropped to uid/gid 65534 (no exec: the venv may
    not be readable by that uid). Returns its exit code and stderr."""
    from packet_ipc import capture, live
    from packet_ipc.cli import build_parser, main

    build_parser().parse_args(argv)  # imports what the child needs while this uid can still read it
    capture._library()
    assert live.run_capture
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 70
        try:
            os.dup2(w, 2)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            sys.stderr = os.fdopen(2, "w", closefd=False)
            code = main(argv)
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        err = f.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err


def test_capture_without_permission_fails_in_one_line(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("dropping to uid 65534 in a child needs root")
    os.chmod(tmp_path, 0o777)  # so that a server, if one were wrongly created first, could leave a socket here
    code, err = as_nobody(["capture", "-i", "lo", "-c", "1", "--accept-timeout", "1", "--name",
                           str(tmp_path / "endpoint")])
    assert code == 1, err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []
    line = one_line(err)
    assert line.startswith("packet-ipc capture: error: cannot capture on 'lo'") and "permission" in line, line


@pytest.mark.parametrize("snaplen", ["0", "262145", "-5"])
def test_a_snaplen_out_of_range_is_a_usage_error(snaplen: str, tmp_path: Path) -> None:
    code, err = run_capture_cli("-i", "lo", "--snaplen", snaplen, tmp=tmp_path)
    assert code == 2, err
    assert "snaplen must be between 1 and 262144" in err


def test_without_libpcap_capture_says_what_to_install(tmp_path: Path) -> None:
    # PACKET_IPC_LIBPCAP (a documented test hook) makes the library load this file instead of libpcap
    code, err = run_capture_cli("-i", "lo", tmp=tmp_path, env={"PACKET_IPC_LIBPCAP": "libpcap-pipc14-missing.so"})
    assert code == 1, err
    line = one_line(err)
    assert line.startswith("packet-ipc capture: error: live capture needs libpcap") and "install libpcap0.8" in line


def test_python_api_bad_input_raises_typed_errors() -> None:
    with pytest.raises(ValueError, match="snaplen"):
        open_live("lo", snaplen=0)
    with pytest.raises(ValueError, match="interface"):
        open_live([])
    with pytest.raises(CaptureOpenError, match="cannot capture on 'pipc14-nosuch'") as info:
        open_live("pipc14-nosuch")
    assert info.value.errno == 19  # ENODEV
