"""pipc_capture_run: the capture loop in C, from libpcap straight into a server's workers.

``tests/c/capture_run_check.c`` (built with ``packet-ipc config --cflags --libs``) captures on one end of a
veth pair whose peer is in a network namespace this test creates (names starting with ``pipc14b``), serving
two Python worker processes by flow. Frames of several UDP flows sent into the peer must each reach exactly
one worker, byte-exact, every frame of a flow on the same worker and in order; ``pipc_capture_breakloop``
from another thread and from a signal handler must stop a run; the argument errors are the documented ones.
The ``capture`` command over the same path is tests/test_live_capture.py's. Needs root (skipped otherwise).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from helpers.cbuild import build_c_program

REPO = Path(__file__).resolve().parents[1]
SOURCE_MAC = bytes.fromhex("020000000b14")
FLOWS = 12

SENDER = Path(__file__).resolve().parent / "helpers" / "send_frames.py"  # frames into an interface, in order

WORKER = textwrap.dedent(
    """
    import json, sys
    from packet_ipc import Client
    got = []
    with Client(sys.argv[1], timeout=30) as client:
        for batch in client:
            with batch:
                for p in batch:
                    got.append(bytes(p.data).hex())
    print(json.dumps(got), flush=True)
    """
)


def udp_frames(count: int) -> list[bytes]:
    """IPv4/UDP frames to port 7777 from FLOWS source ports, numbered in their payload, of varied sizes."""
    out = []
    for i in range(count):
        payload = i.to_bytes(4, "big") + bytes((i + k) & 0xFF for k in range(18 + (i * 53) % 900))
        udp = struct.pack("!HHHH", 30000 + i % FLOWS, 7777, 8 + len(payload), 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                         bytes([10, 14, 11, 1]), bytes([10, 14, 11, 2])) + udp
        out.append(b"\xff" * 6 + SOURCE_MAC + b"\x08\x00" + ip)
    return out


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def veth() -> Iterator[tuple[str, str, str]]:
    """(namespace, its end, our end) of a veth pair made for this test and removed after it."""
    if os.geteuid() != 0:
        pytest.skip("capturing on a veth pair needs root (ip netns, CAP_NET_RAW)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2's ip is not installed")
    tag = f"{os.getpid() % 100000}"
    netns, inside, outside = f"pipc14b-{tag}", f"pipc14bi{tag}", f"pipc14bo{tag}"
    created = ip("netns", "add", netns)
    if created.returncode != 0:
        pytest.skip(f"ip netns is unavailable here: {created.stderr.strip()}")
    try:
        for command in (["link", "add", outside, "type", "veth", "peer", "name", inside],
                        ["link", "set", inside, "netns", netns],
                        ["-n", netns, "link", "set", inside, "up"],
                        ["link", "set", outside, "up"]):
            result = ip(*command)
            assert result.returncode == 0, (command, result.stderr)
        yield netns, inside, outside
    finally:
        ip("netns", "del", netns)
        if ip("link", "show", outside).returncode == 0:
            ip("link", "del", outside)


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_c_program("capture_run_check", tmp_path_factory.mktemp("capture_run"), "-pthread")


def test_capture_run_delivers_each_frame_once_by_flow_and_breakloop_stops_it(
    program: Path, veth: tuple[str, str, str], tmp_path: Path
) -> None:
    netns, inside, outside = veth
    count = 3000
    sent = udp_frames(count)
    name = str(tmp_path / "srv")
    check = subprocess.Popen([str(program), outside, name, str(count)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    workers: list[subprocess.Popen[str]] = []
    try:
        assert check.stdout is not None
        line = check.stdout.readline()
        assert line == "listening\n", line + check.stdout.read() + check.stderr.read()  # type: ignore[union-attr]
        (tmp_path / "worker.py").write_text(WORKER)
        workers = [subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), name], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for _ in range(2)]
        line = check.stdout.readline()
        assert line == "ready\n", line + check.stdout.read()
        blob = tmp_path / "frames.bin"
        blob.write_bytes(b"".join(len(f).to_bytes(4, "little") + f for f in sent))
        sender = subprocess.run(["ip", "netns", "exec", netns, sys.executable, str(SENDER), inside,
                                 str(blob)], capture_output=True, text=True, timeout=60)
        assert sender.returncode == 0, sender.stderr
        out, err = check.communicate(timeout=60)
        assert check.returncode == 0 and out.startswith("ok "), out + err
        packets, nbytes = (int(v) for v in out.split()[1:3])
        assert packets == count and nbytes == sum(len(f) for f in sent)
        got = []
        for w in workers:
            wout, werr = w.communicate(timeout=60)
            assert w.returncode == 0, werr
            got.append([bytes.fromhex(h) for h in json.loads(wout)])
    finally:
        for p in (check, *workers):
            if p.poll() is None:
                p.kill()
                p.wait()
    # every frame exactly once across the two workers, byte-exact
    assert sorted(got[0] + got[1]) == sorted(sent)
    # by flow: each flow on one worker only, in the order sent; both workers had flows
    flows_of = [{struct.unpack_from("!H", f, 34)[0] for f in frames} for frames in got]
    assert flows_of[0] and flows_of[1] and not flows_of[0] & flows_of[1]
    for frames in got:
        numbers = [int.from_bytes(f[42:46], "big") for f in frames]
        assert numbers == sorted(numbers)


@contextmanager
def serving_two_workers(veth: tuple[str, str, str], tmp_path: Path, sent: list[bytes], distribution: str = "flow",
                        overflow: str = "block", linger_ms: int = 0,
                        small_rings: bool = False) -> Iterator[tuple[Any, Any, list[list[bytes]]]]:
    """A live capture on our end of the veth pair and a server with two worker threads, with `sent` already
    written into the peer: yields (capture, server, what each worker received); on the way out ends the stream,
    waits for the workers and checks that the kernel dropped nothing. Small rings (8 KiB, 16 slots) come with
    slow workers, so the rings fill within most reads. With a linger, immediate mode: packets come a few at a
    time and a read makes many passes (libpcap then gives each packet a frame of the snaplen: a small one keeps
    its buffer from filling)."""
    import threading
    import time

    from packet_ipc import Client, Server
    from packet_ipc.capture import open_live

    netns, inside, outside = veth
    rings = {"capacity": 8192, "max_packets": 16} if small_rings else {}
    with open_live(outside, bpf_filter="udp dst port 7777", immediate=linger_ms > 0, snaplen=2048) as cap, \
            Server(distribution=distribution, **rings) as server:  # type: ignore[arg-type]
        got: list[list[bytes]] = [[], []]

        def worker(k: int, client: Client) -> None:
            with client:
                for batch in client:
                    with batch:
                        got[k].extend(bytes(p.data) for p in batch)
                    if small_rings:  # slower than the capture: the rings fill
                        time.sleep(0.002 if linger_ms else 0.0002)

        clients: list[Client] = []
        connect = threading.Thread(target=lambda: clients.extend(
            Client(server.name, timeout=10, overflow=overflow) for _ in range(2)))  # type: ignore[arg-type]
        connect.start()
        server.wait_for_clients(2, timeout=10)
        connect.join()
        threads = [threading.Thread(target=worker, args=(k, c)) for k, c in enumerate(clients)]
        for t in threads:
            t.start()
        blob = tmp_path / "frames.bin"
        blob.write_bytes(b"".join(len(f).to_bytes(4, "little") + f for f in sent))
        sender = subprocess.run(["ip", "netns", "exec", netns, sys.executable, str(SENDER), inside,
                                 str(blob)], capture_output=True, text=True, timeout=60)
        assert sender.returncode == 0, sender.stderr
        yield cap, server, got
        server.send(None)
        for t in threads:
            t.join(60)
        assert cap.interface_stats()[0].dropped == 0, cap.interface_stats()


def test_live_capture_run_from_python_serves_workers_and_stops_on_breakloop(
    veth: tuple[str, str, str], tmp_path: Path
) -> None:
    import threading

    count = 500
    sent = udp_frames(count)
    with serving_two_workers(veth, tmp_path, sent) as (cap, server, got):
        with pytest.raises(ValueError):
            cap.run(server, count=0)
        done = cap.run(server, count=count, batch=100)
        assert (done.packets, done.stopped) == (count, "count") and done.bytes == sum(len(f) for f in sent)
        stopper = threading.Timer(0.3, cap.breakloop)
        stopper.start()
        again = cap.run(server)  # nothing more to capture: only the break ends it
        stopper.join()
        assert (again.packets, again.stopped) == (0, "break")
        assert cap.interface_stats()[0].captured == count
    assert sorted(got[0] + got[1]) == sorted(sent)
    assert got[0] and got[1]


def capture_into_workers(veth: tuple[str, str, str], tmp_path: Path, distribution: str, overflow: str = "block",
                         linger_ms: int = 0, small_rings: bool = False, count: int = 3000,
                         batch: int = 4096) -> tuple[Any, list[list[bytes]], int, list[bytes]]:
    """Sends `count` frames into the peer while LiveCapture.run serves two worker threads (serving_two_workers);
    returns the run's result, what each worker received, the packets the connections dropped, and the frames
    sent."""
    sent = udp_frames(count)
    with serving_two_workers(veth, tmp_path, sent, distribution, overflow, linger_ms, small_rings) as (cap, server, got):
        done = cap.run(server, count=count, duration=60, batch=batch, linger_ms=linger_ms)  # duration: not to hang
        dropped = sum(c.stats().dropped_packets for c in server.connections)
    assert (done.packets, done.stopped) == (count, "count") and done.bytes == sum(len(f) for f in sent)
    return done, got, dropped, sent


def in_order(frames: list[bytes]) -> bool:
    """The frames' numbers (udp_frames) ascend: they came in the order sent."""
    numbers = [int.from_bytes(f[42:46], "big") for f in frames]
    return numbers == sorted(numbers)


@pytest.mark.parametrize("distribution,overflow,linger_ms", [
    ("flow", "block", 0), ("flow", "block", 20), ("round_robin", "block", 0), ("broadcast", "block", 0),
    ("flow", "drop", 0)])
def test_capture_run_into_small_rings_stages_what_does_not_fit_and_keeps_each_flow_in_order(
    veth: tuple[str, str, str], tmp_path: Path, distribution: str, overflow: str, linger_ms: int
) -> None:
    """Rings that fill within most reads: the run writes what fits straight from libpcap's ring and stages the
    rest (and the same worker's later packets), so both paths carry packets; every frame still arrives once
    (each worker once under broadcast) and byte-exact, each worker's in the order sent (so each flow's), or
    under "drop" is counted as dropped. With a linger, a read goes on polling once it has packets: nothing of a
    later pass may overtake what an earlier one staged."""
    done, got, dropped, sent = capture_into_workers(veth, tmp_path, distribution, overflow, linger_ms,
                                                    small_rings=True)
    if distribution == "broadcast":  # every worker gets every frame: nothing can be written straight
        assert done.staged == done.packets
        assert got[0] == sent and got[1] == sent
        return
    assert 0 < done.staged < done.packets, done  # both paths carried packets
    received = got[0] + got[1]
    if overflow == "drop":
        assert dropped > 0 and len(received) + dropped == len(sent)
        assert set(received) <= set(sent)
    else:
        assert dropped == 0 and sorted(received) == sorted(sent)
    assert got[0] and got[1] and in_order(got[0]) and in_order(got[1])
    if distribution == "flow":
        flows_of = [{struct.unpack_from("!H", f, 34)[0] for f in frames} for frames in got]
        assert not flows_of[0] & flows_of[1]


def test_capture_run_round_robin_takes_turns_when_every_packet_goes_straight(
    veth: tuple[str, str, str], tmp_path: Path
) -> None:
    """Round robin with rings that never fill: each read (of at most 100 packets) goes straight to one worker,
    the next read to the next worker, so both get packets, each in the order sent."""
    done, got, dropped, sent = capture_into_workers(veth, tmp_path, "round_robin", batch=100)
    assert done.staged == 0 and dropped == 0 and done.batches >= 2
    assert sorted(got[0] + got[1]) == sorted(sent)
    assert got[0] and got[1] and in_order(got[0]) and in_order(got[1])
