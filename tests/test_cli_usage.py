"""The command line as tcpdump/tcpreplay users expect it: usage errors found before anything starts (exit 2),
output paths checked before connecting (errors name the full path), ``--debug`` anywhere, a line saying what
``dump`` waits for, option names in messages, tables never cut in logs, a progress bar with total, % and ETA."""

from __future__ import annotations

import itertools
import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

CLI = Path(sys.executable).parent / "packet-ipc"
LOCAL = Path(__file__).resolve().parent / "data"
_names = itertools.count()


def unique_name(tag: str) -> str:
    return f"@pipc-test-usage-{os.getpid()}-{tag}-{next(_names)}"


def cli(*args: Any, timeout: float = 30, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, timeout=timeout, **kwargs)


# ---- usage errors: exit 2 before anything starts ------------------------------------------------------------

CAPTURE = str(LOCAL / "QinQpacket.pcap")
OUT_OF_RANGE = [
    ["replay", CAPTURE, "--workers", "0"], ["replay", CAPTURE, "--workers", "-1"], ["replay", CAPTURE, "--batch", "0"],
    ["replay", CAPTURE, "--loop", "-1"], ["replay", CAPTURE, "-l", "-3"], ["replay", CAPTURE, "--limit", "0"],
    ["replay", CAPTURE, "--capacity", "0"], ["replay", CAPTURE, "--accept-timeout", "-1"],
    ["replay", CAPTURE, "--rejoin-timeout", "-2"], ["replay", CAPTURE, "-x", "0"], ["replay", CAPTURE, "-x", "-2"],
    ["replay", CAPTURE, "-x", "nan"], ["replay", CAPTURE, "-p", "0"], ["replay", CAPTURE, "-M", "-1"],
    ["replay", CAPTURE, "-x", "2", "-p", "10"], ["replay", CAPTURE, "-t", "-M", "10"], ["replay"],
    ["capture", "-i", "lo", "--workers", "0"], ["capture", "-i", "lo", "-c", "0"], ["capture", "-i", "lo", "--batch", "0"],
    ["capture", "-i", "lo", "--duration", "-1"], ["capture", "-i", "lo", "--snaplen", "0"],
    ["dump", "@x", "-c", "0"], ["dump", "@x", "-c", "-5"], ["dump", "@x", "--timeout", "-1"],
    ["stats", "@x", "--watch", "0"], ["stats", "@x", "--watch", "-1"],
    ["demo", "--workers", "0"], ["demo", "--loop", "0"],
]


@pytest.mark.parametrize("args", OUT_OF_RANGE, ids=[" ".join(a[:1] + a[2:] if len(a) > 1 else a) for a in OUT_OF_RANGE])
def test_out_of_range_option_is_a_usage_error_before_anything_starts(args: list[str], tmp_path: Path) -> None:
    name = tmp_path / "server.sock"
    extra = ["--name", str(name)] if args[0] in ("replay", "capture") else []
    result = cli(*args, *extra, timeout=15)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "error:" in result.stderr
    assert "serving" not in result.stderr and "waiting" not in result.stderr
    assert not name.exists()  # nothing started: no server socket was created


# ---- output paths checked before connecting --------------------------------------------------------------


@pytest.mark.parametrize("where", ["missing-dir", "a-directory", "read-only-dir"])
def test_bad_output_path_fails_at_once_naming_the_full_path(where: str, tmp_path: Path) -> None:
    if where == "missing-dir":
        out = tmp_path / "nonexistent" / "dir" / "x.pcap"
    elif where == "a-directory":
        out = tmp_path
    else:
        if os.geteuid() == 0:
            pytest.skip("root may write into a read-only directory")
        (tmp_path / "ro").mkdir(mode=0o500)
        out = tmp_path / "ro" / "x.pcap"
    # No server exists: before, dump waited --timeout (here 60 s) for it and then named only the basename.
    result = cli("dump", unique_name("out"), "-w", out, "--timeout", "60", timeout=20)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("packet-ipc dump: error: "), result.stderr
    assert f"({out})" in lines[0]
    assert "waiting" not in result.stderr


def test_missing_capture_is_named_by_its_full_path(tmp_path: Path) -> None:
    result = cli("replay", tmp_path / "sub" / "missing.pcap")
    assert result.returncode == 1
    assert f"no such capture file ({tmp_path / 'sub' / 'missing.pcap'})" in result.stderr


# ---- --debug, waiting line, option names in messages ---------------------------------------------------------


@pytest.mark.parametrize("position", ["before", "after"])
def test_debug_works_before_and_after_the_subcommand(position: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pcap"
    args = ["--debug", "replay", missing] if position == "before" else ["replay", missing, "--debug"]
    result = cli(*args)
    assert result.returncode == 1 and "Traceback (most recent call last)" in result.stderr
    assert "FileNotFoundError" in result.stderr


def test_dump_says_which_server_it_waits_for() -> None:
    name = unique_name("late")
    dump = subprocess.Popen([str(CLI), "dump", name, "--timeout", "60"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert dump.stderr is not None
        line = dump.stderr.readline()  # printed at once, not after the 60 s
        assert line.strip() == f"packet-ipc dump: waiting for server {name} (up to 60 s)"
        replay = cli("replay", LOCAL / "QinQpacket.pcap", "--name", name, "--accept-timeout", "30", "--json")
        assert replay.returncode == 0, replay.stderr
        assert dump.wait(30) == 0
        assert "249 packets" in dump.stderr.read()
    finally:
        if dump.poll() is None:
            dump.kill()
            dump.wait()


def test_mixed_linktypes_into_pcap_names_the_command_line_option(tmp_path: Path) -> None:
    name = unique_name("mixed")
    replay = subprocess.Popen([str(CLI), "replay", LOCAL / "HSRP_failover.pcap", LOCAL / "babel.pcap", "--name", name,
                               "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        dump = cli("dump", name, "-w", tmp_path / "out.pcap")
        replay.communicate(timeout=30)
    finally:
        if replay.poll() is None:
            replay.kill()
            replay.communicate()
    assert dump.returncode == 1
    assert "use --format pcapng" in dump.stderr and "format='pcapng'" not in dump.stderr, dump.stderr


# ---- logs: tables never cut when not on a terminal ---------------------------------------------------------


def test_summary_written_to_a_file_is_never_cut(tmp_path: Path) -> None:
    name = unique_name("log")
    log = tmp_path / "replay.log"
    with open(log, "w") as stderr:
        replay = subprocess.Popen([str(CLI), "replay", LOCAL / "QinQpacket.pcap", "-l", "1000", "--name", name],
                                  stderr=stderr, env={**os.environ, "COLUMNS": "80"})
        dump = cli("dump", name, "--json", timeout=120)
        assert replay.wait(120) == 0
    assert dump.returncode == 0, dump.stderr
    text = log.read_text()
    assert "…" not in text  # rich cut cells to fit 80 columns: "220,9…"
    assert f"{249 * 1000:,}" in text  # the sent column and the totals, whole
    header = next(line for line in text.splitlines() if "worker" in line and "pid" in line)
    assert header.split() == ["worker", "pid", "policy", "sent", "bytes", "dropped", "in", "ring", "blocked", "s", "state"]


# ---- progress: total, percentage and ETA when the total is known --------------------------------------------


def test_progress_on_a_terminal_shows_total_percent_and_eta(tmp_path: Path) -> None:
    name = unique_name("progress")
    leader, follower = pty.openpty()
    replay = subprocess.Popen([str(CLI), "replay", LOCAL / "QinQpacket.pcap", "-l", "8", "-p", "1000", "--name", name],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower,
                              env={**os.environ, "COLUMNS": "200", "TERM": "xterm"})
    os.close(follower)
    output = b""
    try:
        dump = subprocess.Popen([str(CLI), "dump", name, "--timeout", "30"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the replay closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
        dump.communicate(timeout=30)
        replay.wait(30)
    finally:
        os.close(leader)
        for p in (replay,):
            if p.poll() is None:
                p.kill()
                p.wait()
    text = output.decode(errors="replace")
    assert replay.returncode == 0, text
    assert f"of {249 * 8:,} packets" in text
    assert "%" in text and "ETA" in text
