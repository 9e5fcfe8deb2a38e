"""Live capture end to end: frames sent on a veth pair arrive at a ``packet-ipc dump`` worker unchanged.

One end of the veth pair sits in a network namespace of its own; a small helper run there with
``ip netns exec`` writes known Ethernet frames to a raw AF_PACKET socket on it, and ``packet-ipc capture``
(libpcap through pcapy-ng) listens on the other end with a BPF filter for their EtherType, serving one
``dump`` worker. The worker's file must hold exactly those frames, in order, with timestamps (libpcap's
microseconds) inside the test's wall-clock window. Needs root and ``ip netns``; skipped with the reason
otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from packet_ipc.pcap import read_capture

CLI = Path(sys.executable).parent / "packet-ipc"
ETHERTYPE = 0x88B5  # IEEE 802 local experimental: nothing else on the link uses it
SOURCE_MAC = bytes.fromhex("020000000001")
FRAMES = 300

SENDER = textwrap.dedent(
    """
    import socket, sys
    iface, count = sys.argv[1], int(sys.argv[2])
    sys.path.insert(0, sys.argv[3])
    from frames import frames
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((iface, 0))
        for frame in frames(count):
            s.send(frame)
    """
)

FRAMES_MODULE = textwrap.dedent(
    f"""
    def frames(count):
        out = []
        for i in range(count):
            size = 60 + (i * 37) % 1400  # lengths from the Ethernet minimum to near the MTU
            header = b"\\xff" * 6 + {SOURCE_MAC!r} + ({ETHERTYPE}).to_bytes(2, "big")
            body = i.to_bytes(4, "big") + bytes((i + k) & 0xFF for k in range(size - 18))
            out.append(header + body)
        return out
    """
)


def frames(count: int) -> list[bytes]:
    namespace: dict[str, object] = {}
    exec(FRAMES_MODULE, namespace)  # the very code the sender runs
    return namespace["frames"](count)  # type: ignore[operator, no-any-return]


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def veth() -> Iterator[tuple[str, str, str]]:
    """(namespace, its end of the pair, our end); removed afterwards whatever happened."""
    if os.geteuid() != 0:
        pytest.skip("live capture on a veth pair needs root (ip netns, CAP_NET_RAW)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2's ip is not installed")
    tag = f"{os.getpid() % 100000}"
    netns, inside, outside = f"pipc-test-{tag}", f"pipcA{tag}", f"pipcB{tag}"
    created = ip("netns", "add", netns)
    if created.returncode != 0:
        pytest.skip(f"ip netns is unavailable here: {created.stderr.strip()}")
    try:
        for command in (
            ["link", "add", outside, "type", "veth", "peer", "name", inside],
            ["link", "set", inside, "netns", netns],
            ["-n", netns, "link", "set", inside, "up"],
            ["link", "set", outside, "up"],
        ):
            result = ip(*command)
            assert result.returncode == 0, (command, result.stderr)
        yield netns, inside, outside
    finally:
        ip("netns", "del", netns)  # takes its end, and so the pair, with it
        if ip("link", "show", outside).returncode == 0:
            ip("link", "del", outside)


def test_frames_sent_on_a_veth_arrive_at_the_dump_worker(veth: tuple[str, str, str], tmp_path: Path) -> None:
    netns, inside, outside = veth
    (tmp_path / "frames.py").write_text(FRAMES_MODULE)
    (tmp_path / "send.py").write_text(SENDER)
    name = f"@pipc-test-live-{os.getpid()}"
    capture = subprocess.Popen(
        [str(CLI), "capture", "-i", outside, "--filter", f"ether proto {ETHERTYPE:#x}", "--workers", "1",
         "-c", str(FRAMES), "--name", name, "--json", "--accept-timeout", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    dump = None
    try:
        assert capture.stderr is not None
        line = capture.stderr.readline()  # printed once libpcap has the interface open, filter set
        assert f"capturing on {outside}" in line, line + capture.stderr.read()
        dump = subprocess.Popen([str(CLI), "dump", name, "-w", str(tmp_path / "out.pcap"), "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert "capturing (Ctrl-C" in capture.stderr.readline()  # the worker is connected
        start_ns = time.time_ns()
        send = subprocess.run(["ip", "netns", "exec", netns, sys.executable, str(tmp_path / "send.py"), inside,
                               str(FRAMES), str(tmp_path)], capture_output=True, text=True, timeout=60)
        end_ns = time.time_ns()
        assert send.returncode == 0, send.stderr
        out, err = capture.communicate(timeout=60)
        dumped, dump_err = dump.communicate(timeout=60)
    finally:
        for p in (capture, dump):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()
    assert capture.returncode == 0, err
    assert dump.returncode == 0, dump_err
    summary = json.loads(out)
    assert summary["packets"] == FRAMES and summary["workers"][0]["packets"] == FRAMES
    assert json.loads(dumped)["packets"] == FRAMES
    records = read_capture(tmp_path / "out.pcap")
    assert [bytes(r.data) for r in records] == frames(FRAMES)
    assert all(r.orig_len == len(r.data) and r.linktype == 1 for r in records)
    # libpcap's timestamps are microseconds: the window's start rounds down to one
    assert all(start_ns // 1000 * 1000 <= r.timestamp <= end_ns for r in records)
    assert [r.timestamp for r in records] == sorted(r.timestamp for r in records)
    assert all(r.timestamp % 1000 == 0 for r in records)


def test_capture_on_an_interface_that_does_not_exist_fails_in_one_line() -> None:
    result = subprocess.run([str(CLI), "capture", "-i", "pipc-nosuch0", "-c", "1", "--accept-timeout", "1"],
                            capture_output=True, text=True, timeout=30)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("packet-ipc capture: error: cannot capture on 'pipc-nosuch0'")


def test_capture_with_a_filter_libpcap_cannot_compile_fails_in_one_line() -> None:
    if os.geteuid() != 0:
        pytest.skip("opening lo for capture needs CAP_NET_RAW")
    result = subprocess.run([str(CLI), "capture", "-i", "lo", "--filter", "ether proto (", "-c", "1"],
                            capture_output=True, text=True, timeout=30)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("packet-ipc capture: error: bad capture filter")
