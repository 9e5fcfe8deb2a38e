"""SIGTERM (systemd, ``timeout``) is handled as SIGINT by every command: ``dump`` and ``stats --watch`` stop
cleanly (valid files, summary, exit 0), ``replay`` prints its summary (exit 130, or 0 when looping forever).
A pcap file's header is written when it is opened, so a dump stopped before its first packet leaves a valid
empty capture; one stopped mid-stream leaves a capture tcpdump reads whole."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from packet_ipc import Server
from packet_ipc.pcap import CaptureWriter, read_capture

CLI = Path(sys.executable).parent / "packet-ipc"
LOCAL = Path(__file__).resolve().parent / "data"
TCPDUMP = shutil.which("tcpdump")
_names = itertools.count()


def unique_name(tag: str) -> str:
    return f"@pipc-test-signals-{os.getpid()}-{tag}-{next(_names)}"


def wait_until(predicate: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)  # polling a file or a counter another process changes: nothing to wait on


def tcpdump_reads_whole(path: Path, expected: int) -> None:
    if TCPDUMP is None:
        return
    result = subprocess.run([TCPDUMP, "-nn", "-r", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "truncated" not in result.stderr, result.stderr
    assert len(result.stdout.splitlines()) == expected


def test_capture_writer_writes_the_header_at_open(tmp_path: Path) -> None:
    for fmt in ("pcap", "pcapng"):
        path = tmp_path / f"empty.{fmt}"
        writer = CaptureWriter(path, linktype=1, format=fmt)
        try:
            assert path.stat().st_size > 0  # before close: a killed writer still leaves a readable file
            assert read_capture(path) == []
        finally:
            writer.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_dump_stopped_before_the_first_packet_leaves_a_valid_empty_pcap(sig: int, tmp_path: Path) -> None:
    out = tmp_path / "out.pcap"
    with Server(unique_name("early")) as server:
        dump = subprocess.Popen([str(CLI), "dump", server.name, "-w", str(out), "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            server.accept(timeout=30)
            wait_until(lambda: out.exists() and out.stat().st_size >= 24, "dump never wrote the pcap header")
            dump.send_signal(sig)
            stdout, stderr = dump.communicate(timeout=30)
        finally:
            if dump.poll() is None:
                dump.kill()
                dump.communicate()
    assert dump.returncode == 0, stderr
    assert "Traceback" not in stderr
    summary = json.loads(stdout)
    assert summary["packets"] == 0 and summary["stopped_by"] == signal.Signals(sig).name
    assert read_capture(out) == []
    tcpdump_reads_whole(out, 0)


def test_dump_stopped_mid_stream_leaves_a_pcap_tcpdump_reads_whole(tmp_path: Path) -> None:
    out = tmp_path / "out.pcap"
    name = unique_name("mid")
    replay = subprocess.Popen([str(CLI), "replay", str(LOCAL / "QinQpacket.pcap"), "-l", "0", "-p", "20000",
                               "--name", name, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        dump = subprocess.Popen([str(CLI), "dump", name, "-w", str(out), "--json", "--timeout", "30"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: out.exists() and out.stat().st_size > 200_000, "dump wrote too little")
        dump.send_signal(signal.SIGTERM)  # while packets keep arriving
        stdout, stderr = dump.communicate(timeout=30)
    finally:
        for p in (replay,):
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert dump.returncode == 0, stderr
    summary = json.loads(stdout)
    got = read_capture(out)  # our reader: every record whole, none cut
    assert len(got) == summary["packets"] > 0
    original = read_capture(LOCAL / "QinQpacket.pcap")
    assert [r.data for r in got] == [r.data for r in (original * (len(got) // len(original) + 1))[: len(got)]]
    tcpdump_reads_whole(out, len(got))


def test_replay_stopped_by_sigterm_prints_its_summary(tmp_path: Path) -> None:
    out = tmp_path / "out.pcap"
    name = unique_name("replay")
    replay = subprocess.Popen([str(CLI), "replay", str(LOCAL / "QinQpacket.pcap"), "-l", "1000000", "-p", "20000",
                               "--name", name, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        dump = subprocess.Popen([str(CLI), "dump", name, "-w", str(out), "--json", "--timeout", "30"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: out.exists() and out.stat().st_size > 50_000, "nothing was replayed")
        replay.send_signal(signal.SIGTERM)
        stdout, stderr = replay.communicate(timeout=30)
        dump_out, dump_err = dump.communicate(timeout=30)
    finally:
        for p in (replay,):
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert replay.returncode == 130, stderr
    assert "interrupted by SIGTERM" in stderr and "Traceback" not in stderr
    summary = json.loads(stdout)
    assert summary["packets"] > 0 and summary["stopped"] == "interrupted by SIGTERM"
    # the worker was told the stream was cut (not a clean end) and its file holds every whole packet
    assert dump.returncode == 1 and "Traceback" not in dump_err
    got = read_capture(out)
    assert 0 < len(got) <= summary["packets"]
    tcpdump_reads_whole(out, len(got))


def test_stats_watch_stops_cleanly_on_sigterm() -> None:
    with Server(unique_name("watch")) as server:
        watch = subprocess.Popen([str(CLI), "stats", server.name, "--watch", "0.1"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            assert watch.stdout is not None
            assert server.name in watch.stdout.readline()  # it is watching
            watch.send_signal(signal.SIGTERM)
            _, stderr = watch.communicate(timeout=30)
        finally:
            if watch.poll() is None:
                watch.kill()
                watch.communicate()
    assert watch.returncode == 0, stderr
    assert "Traceback" not in stderr
