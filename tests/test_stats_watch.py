"""``packet-ipc stats --watch`` (issue 12, point 9): every snapshot with a timestamp and per-second rates,
written whole to a pipe or log (never cut at 80 columns), and exit 0 when the stream ended cleanly (1 when
the server went away without ending it). Before, it showed no rates or time and exited 1 whenever the server
finished."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from packet_ipc import Server

CLI = Path(sys.executable).parent / "packet-ipc"
CAPTURE = Path(__file__).resolve().parent / "data" / "QinQpacket.pcap"  # 249 packets
_names = itertools.count()


def unique_name(tag: str) -> str:
    return f"@pipc-test-watch-{os.getpid()}-{tag}-{next(_names)}"


def test_watch_of_a_replay_shows_time_and_rates_and_exits_0_when_the_stream_ends() -> None:
    name = unique_name("replay")
    replay = subprocess.Popen([str(CLI), "replay", str(CAPTURE), "-l", "8", "-p", "1000", "--name", name, "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watch = None
    try:
        assert replay.stderr is not None and "serving" in replay.stderr.readline()
        watch = subprocess.Popen([str(CLI), "stats", name, "--watch", "0.25"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "40"})
        dump = subprocess.run([str(CLI), "dump", name, "--json"], capture_output=True, text=True, timeout=60)
        assert dump.returncode == 0, dump.stderr
        replay.wait(60)
        out, err = watch.communicate(timeout=30)
    finally:
        for p in (replay, watch):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()
    assert replay.returncode == 0
    assert watch.returncode == 0, err  # the stream ended cleanly
    assert "the stream ended" in err
    titles = re.findall(rf"^{re.escape(name)} \(flow\) at (\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{{4}})$", out, re.M)
    assert len(titles) >= 3, out  # a snapshot every 0.25 s over the ~2 s replay
    rates = [float(r.replace(",", "")) for r in re.findall(r"; ([\d,]+) packets/s,", out)]
    assert len(rates) == len(titles)
    assert any(400 < r < 2000 for r in rates), rates  # -p 1000: what the watch measured between snapshots
    assert "…" not in out  # never cut, though COLUMNS is 40
    assert f"sent {249 * 8:,} packets" in out  # the last snapshot: everything


def test_watch_exits_1_when_the_server_closes_without_ending_the_stream() -> None:
    server = Server(unique_name("abort"))
    watch = subprocess.Popen([str(CLI), "stats", server.name, "--watch", "0.1"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert watch.stdout is not None and server.name in watch.stdout.readline()
        server.close()  # never sent None: not a clean end
        _, err = watch.communicate(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate()
    assert watch.returncode == 1
    assert "without ending its stream" in err and "Traceback" not in err


def test_watch_exits_1_when_the_server_is_killed() -> None:
    name = unique_name("killed")
    server = subprocess.Popen([sys.executable, "-c", f"import packet_ipc, sys; s = packet_ipc.Server({name!r}); "
                                                     "print('up', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    watch = None
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "up"
        watch = subprocess.Popen([str(CLI), "stats", name, "--watch", "0.1", "--json"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        assert watch.stdout is not None
        first = json.loads(watch.stdout.readline())
        assert first["name"] == name and "time" in first and "packets_per_second" in first
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        _, err = watch.communicate(timeout=30)
    finally:
        for p in (server, watch):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()
    assert watch is not None and watch.returncode == 1
    assert "went away without ending its stream" in err and "Traceback" not in err


def test_one_shot_stats_answers_at_once_and_exits_0() -> None:
    with Server(unique_name("once")) as server:
        start = time.monotonic()
        result = subprocess.run([str(CLI), "stats", server.name, "--json"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["name"] == server.name
        assert time.monotonic() - start < 20
