"""``packet-ipc replay`` paces every packet as tcpreplay does: by the capture's own clock (``-x``, ``--speed``),
at a packet rate (``-p``) or a bit rate (``-M``); loops (``-l``, 0 = forever), stops at a limit (``-L``), reads
stdin (``-``) and ``-r FILE``.

Pacing is the function under test here, so time is what these tests check: a synthesized 30 s capture played
at ``-x 10`` must take 3.0 s within 1 % (30 ms), measured where the packets arrive (a real client in this
process), and 95 % of the packets must arrive within that 1 % of their due time (every one within 10 %). Before packets were paced
one by one, only the first packet of each 256-packet batch was timed: the 30 s capture went out in a few ms.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from packet_ipc import Client
from packet_ipc.errors import ConnectError
from packet_ipc.pcap import CaptureRecord, CaptureWriter, read_capture

CLI = Path(sys.executable).parent / "packet-ipc"
LOCAL = Path(__file__).resolve().parent / "data"
NS = 10**9
T0 = 1_700_000_000 * NS
_names = itertools.count()


def unique_name(tag: str) -> str:
    return f"@pipc-test-pacing-{os.getpid()}-{tag}-{next(_names)}"


def frame(i: int, size: int = 60) -> bytes:
    """An Ethernet/IPv4/UDP-looking frame whose payload numbers it."""
    head = bytes.fromhex("ffffffffffff020000000001" "0800" "45000000000000004011000a0000010a000002")
    body = i.to_bytes(4, "big") * ((size - len(head)) // 4 + 1)
    return (head + body)[:size]


def synthesize(path: Path, offsets_ns: list[int], size: int = 60) -> list[CaptureRecord]:
    with CaptureWriter(path, linktype=1) as writer:
        for i, off in enumerate(offsets_ns):
            writer.write(CaptureRecord(T0 + off, frame(i, size), size, 1, 0))
    return read_capture(path)


def thirty_second_offsets() -> list[int]:
    """301 packets over exactly 30 s: irregular gaps (1 ms to 0.4 s), bursts of packets with one timestamp."""
    rng = random.Random(12)
    offsets = sorted(rng.randrange(0, 30 * NS) for _ in range(280))
    offsets += [offsets[100]] * 10 + [offsets[200]] * 9  # bursts: same time, must go together
    return sorted([0, *offsets, 30 * NS])


class Receiver:
    """A real client in this process: connects to the replay and notes when each packet arrives."""

    def __init__(self, name: str) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client = Client(name, timeout=10)
                break
            except ConnectError:
                assert time.monotonic() < deadline, "replay never listened"
                time.sleep(0.02)
        self.arrivals: list[tuple[float, bytes]] = []

    def run(self) -> list[tuple[float, bytes]]:
        with self.client:
            while (batch := self.client.receive_batch(1024, timeout=60)) is not None:
                now = time.monotonic()
                with batch:
                    self.arrivals.extend((now, p.tobytes()) for p in batch)
        return self.arrivals


def replay_and_receive(*args: Any) -> tuple[subprocess.CompletedProcess[str], list[tuple[float, bytes]]]:
    name = unique_name("r")
    proc = subprocess.Popen([str(CLI), "replay", *map(str, args), "--name", name, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        arrivals = Receiver(name).run()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), arrivals


def check_timing(arrivals: list[tuple[float, bytes]], due_s: list[float], records: list[CaptureRecord]) -> None:
    """Every packet arrived, in order, each within 1 % of the whole duration of its due time; and the
    whole replay took the capture's (scaled) duration within 1 %."""
    assert [data for _, data in arrivals] == [r.data for r in records]
    duration = due_s[-1] - due_s[0]
    start = arrivals[0][0]
    elapsed = arrivals[-1][0] - start
    assert abs(elapsed - duration) <= 0.01 * duration, (elapsed, duration)
    # Each packet on time: 95 % of them within 1 % of the duration, every one within 10 % (room for a
    # scheduling hiccup on a loaded machine; paced per batch, most packets were off by up to the duration).
    errors = sorted(abs((t - start) - (d - due_s[0])) for (t, _), d in zip(arrivals, due_s))
    assert errors[int(len(errors) * 0.95)] <= 0.01 * duration, (errors[int(len(errors) * 0.95)], duration)
    assert errors[-1] <= 0.1 * duration, (errors[-1], duration)


def test_thirty_second_capture_at_x10_takes_three_seconds_within_one_percent(tmp_path: Path) -> None:
    records = synthesize(tmp_path / "30s.pcap", thirty_second_offsets())
    result, arrivals = replay_and_receive(tmp_path / "30s.pcap", "-x", "10")
    assert result.returncode == 0, result.stderr
    check_timing(arrivals, [(r.timestamp - T0) / NS / 10 for r in records], records)


def test_speed_is_an_alias_of_multiplier(tmp_path: Path) -> None:
    records = synthesize(tmp_path / "30s.pcap", thirty_second_offsets())
    result, arrivals = replay_and_receive(tmp_path / "30s.pcap", "--speed", "15")
    assert result.returncode == 0, result.stderr
    check_timing(arrivals, [(r.timestamp - T0) / NS / 15 for r in records], records)


def test_pps_sends_at_a_fixed_packet_rate(tmp_path: Path) -> None:
    records = synthesize(tmp_path / "burst.pcap", [0] * 201)  # all at one instant: -p spreads them
    result, arrivals = replay_and_receive(tmp_path / "burst.pcap", "-p", "100")
    assert result.returncode == 0, result.stderr
    check_timing(arrivals, [i / 100 for i in range(201)], records)


def test_mbps_sends_at_a_fixed_bit_rate(tmp_path: Path) -> None:
    records = synthesize(tmp_path / "big.pcap", [0] * 201, size=1250)  # 10,000 bits each: 100 packets/s at 1 Mbit/s
    result, arrivals = replay_and_receive(tmp_path / "big.pcap", "-M", "1")
    assert result.returncode == 0, result.stderr
    check_timing(arrivals, [i * 10_000 / 1e6 for i in range(201)], records)


def test_help_states_the_default_pacing() -> None:
    text = " ".join(subprocess.run([str(CLI), "replay", "--help"], capture_output=True, text=True).stdout.split())
    assert "by default as fast as the workers take the packets (-t, top speed" in text
    for option in ("-x X, --multiplier X, --speed X", "-p PPS, --pps PPS", "-M MBPS, --mbps MBPS", "-t, --topspeed",
                   "-l LOOP, --loop LOOP", "-L LIMIT, --limit LIMIT", "-r FILE, --read FILE"):
        assert option in text, option


def test_loop_zero_with_limit_sends_exactly_the_limit() -> None:
    original = read_capture(LOCAL / "QinQpacket.pcap")  # 249 packets
    result, arrivals = replay_and_receive(LOCAL / "QinQpacket.pcap", "-l", "0", "-L", "1000")
    assert result.returncode == 0, result.stderr
    assert [d for _, d in arrivals] == [r.data for r in (original * 5)[:1000]]


def test_limit_stops_a_single_pass_early() -> None:
    original = read_capture(LOCAL / "QinQpacket.pcap")
    result, arrivals = replay_and_receive(LOCAL / "QinQpacket.pcap", "-L", "7", "--batch", "4")
    assert result.returncode == 0, result.stderr
    assert [d for _, d in arrivals] == [r.data for r in original[:7]]


def test_loop_zero_runs_until_sigterm_then_ends_the_stream_cleanly(tmp_path: Path) -> None:
    name = unique_name("forever")
    proc = subprocess.Popen([str(CLI), "replay", LOCAL / "QinQpacket.pcap", "-l", "0", "--name", name, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        receiver = Receiver(name)
        got = 0
        while got < 249 * 3:  # three whole loops and more: forever really loops
            batch = receiver.client.receive_batch(1024, timeout=30)
            assert batch is not None
            got += len(batch)
            batch.release()
        proc.send_signal(signal.SIGTERM)
        while (batch := receiver.client.receive_batch(1024, timeout=30)) is not None:  # a clean end, not lost
            got += len(batch)
            batch.release()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert f'"packets": {got}' in out  # the summary counts what the worker got


@pytest.mark.parametrize("how", ["dash", "read-option"])
def test_stdin_and_read_option(how: str) -> None:
    capture = LOCAL / "QinQpacket.pcap"
    original = read_capture(capture)
    name = unique_name(how)
    args = ["-"] if how == "dash" else ["-r", capture]
    with open(capture, "rb") as stdin:
        proc = subprocess.Popen([str(CLI), "replay", *map(str, args), "--name", name, "--json"],
                                stdin=subprocess.PIPE if how == "dash" else stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    try:
        if how == "dash":
            assert proc.stdin is not None
            proc.stdin.write(capture.read_bytes())  # a pipe: read once, as it streams
            proc.stdin.close()
        arrivals = Receiver(name).run()
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert [d for _, d in arrivals] == [r.data for r in original]
