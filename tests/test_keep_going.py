"""``replay --keep-going`` (issue 12, point 6): a capture whose last record is cut (a full disk, a killed
tcpdump) is served up to its last whole packet, as tcpdump reads it, and unreadable files of a directory are
skipped with one warning line each. Without it the replay still refuses them before serving anything."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from packet_ipc import Client
from packet_ipc.errors import ConnectError
from packet_ipc.pcap import read_capture

CLI = Path(sys.executable).parent / "packet-ipc"
LOCAL = Path(__file__).resolve().parent / "data"
TCPDUMP = shutil.which("tcpdump")
_names = itertools.count()


def unique_name(tag: str) -> str:
    return f"@pipc-test-keep-{os.getpid()}-{tag}-{next(_names)}"


def cut_capture(tmp_path: Path) -> tuple[Path, int]:
    """QinQpacket.pcap with its last record cut in half: 248 whole packets."""
    data = (LOCAL / "QinQpacket.pcap").read_bytes()
    records = read_capture(LOCAL / "QinQpacket.pcap")
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) - len(records[-1].data) // 2])
    return cut, len(records) - 1


def serve(*args: object) -> tuple[subprocess.CompletedProcess[str], list[bytes]]:
    name = unique_name("s")
    proc = subprocess.Popen([str(CLI), "replay", *map(str, args), "--name", name, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client = Client(name, timeout=10)
                break
            except ConnectError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out, err = proc.communicate()
                    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), got
                time.sleep(0.02)  # the replay is reading its captures before it listens
        with client:
            while (batch := client.receive_batch(1024, timeout=60)) is not None:
                with batch:
                    got.extend(p.tobytes() for p in batch)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), got


def test_truncated_capture_is_refused_without_keep_going(tmp_path: Path) -> None:
    cut, _ = cut_capture(tmp_path)
    result, got = serve(cut)
    assert result.returncode == 1 and got == []
    assert "record cut short" in result.stderr


def test_keep_going_serves_every_whole_packet_of_a_truncated_capture(tmp_path: Path) -> None:
    cut, whole = cut_capture(tmp_path)
    if TCPDUMP:  # what tcpdump reads of it: the same whole packets
        listing = subprocess.run([TCPDUMP, "-nn", "-r", str(cut)], capture_output=True, text=True, timeout=60)
        assert len(listing.stdout.splitlines()) == whole
    result, got = serve(cut, "--keep-going")
    assert result.returncode == 0, result.stderr
    assert got == [r.data for r in read_capture(LOCAL / "QinQpacket.pcap")[:whole]]
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and str(cut) in warnings[0] and f"keeping its {whole} whole packets" in warnings[0]
    assert json.loads(result.stdout)["packets"] == whole


def test_keep_going_skips_unreadable_files_of_a_directory_one_line_each(tmp_path: Path) -> None:
    folder = tmp_path / "captures"
    folder.mkdir()
    shutil.copy(LOCAL / "QinQpacket.pcap", folder / "a.pcap")
    (folder / "b.pcap").write_bytes(b"this is not a capture at all")
    (folder / "c.pcap").write_bytes(b"")
    shutil.copy(LOCAL / "babel.pcap", folder / "d.pcap")
    refused, _ = serve(folder)
    assert refused.returncode == 1  # without --keep-going one bad file refuses the directory
    result, got = serve(folder, "--keep-going", "--distribution", "round_robin")
    assert result.returncode == 0, result.stderr
    expected = read_capture(folder / "a.pcap") + read_capture(folder / "d.pcap")
    assert got == [r.data for r in expected]
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 2, result.stderr
    assert any(str(folder / "b.pcap") in w and "skipped" in w for w in warnings)
    assert any(str(folder / "c.pcap") in w and "skipped" in w for w in warnings)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_keep_going_skips_a_file_without_read_permission(tmp_path: Path) -> None:
    folder = tmp_path / "captures"
    folder.mkdir()
    shutil.copy(LOCAL / "QinQpacket.pcap", folder / "a.pcap")
    shutil.copy(LOCAL / "babel.pcap", folder / "b.pcap")
    (folder / "b.pcap").chmod(0)
    result, got = serve(folder, "--keep-going")
    assert result.returncode == 0, result.stderr
    assert len(got) == len(read_capture(folder / "a.pcap"))
    assert "b.pcap" in result.stderr and "skipped" in result.stderr
