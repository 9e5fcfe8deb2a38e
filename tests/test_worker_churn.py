"""Workers come and go during a replay (issue 12, point 3): the replay keeps serving while one worker lives,
waits ``--rejoin-timeout`` for a replacement when none is left, always prints its summary, and exits 1 when a
worker using ``block`` left before the end (its packets are lost, and counted). Before, a single-worker replay
whose worker left exited 1 with "no live worker is connected" and no summary; one whose worker died
mid-stream among others exited 0."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from packet_ipc import Client
from packet_ipc.errors import ConnectError

CLI = Path(sys.executable).parent / "packet-ipc"
CAPTURE = Path(__file__).resolve().parent / "data" / "QinQpacket.pcap"  # 249 packets
_names = itertools.count()


def unique_name(tag: str) -> str:
    return f"@pipc-test-churn-{os.getpid()}-{tag}-{next(_names)}"


def connect(name: str) -> Client:
    deadline = time.monotonic() + 30
    while True:
        try:
            return Client(name, timeout=10)
        except ConnectError:
            assert time.monotonic() < deadline, "replay never listened"
            time.sleep(0.02)  # the replay process is starting: nothing to wait on before its socket exists


def take(client: Client, at_least: int) -> int:
    """Receives batches until at least ``at_least`` packets came; returns how many (all released)."""
    got = 0
    while got < at_least:
        batch = client.receive_batch(1024, timeout=30)
        assert batch is not None
        got += len(batch)
        batch.release()
    return got


def drain(client: Client) -> int:
    got = 0
    while (batch := client.receive_batch(1024, timeout=60)) is not None:
        got += len(batch)
        batch.release()
    return got


def start_replay(name: str, *args: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([str(CLI), "replay", str(CAPTURE), "--name", name, "--json", "--capacity", "65536",
                             "--distribution", "round_robin", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(replay: subprocess.Popen[str]) -> tuple[int, dict[str, Any], str]:
    try:
        out, err = replay.communicate(timeout=120)
    finally:
        if replay.poll() is None:
            replay.kill()
            replay.communicate()
    assert "Traceback" not in err, err
    return replay.returncode, json.loads(out), err


def test_single_worker_leaving_stops_the_replay_with_its_summary() -> None:
    name = unique_name("alone")
    replay = start_replay(name, "-l", "200")
    first = connect(name)
    got = take(first, 10)
    first.close()  # like dump -c 10: it leaves mid-stream
    code, summary, err = finish(replay)
    assert code == 1
    assert "every worker left" in err and "left before the end of the stream" in err
    assert summary["stopped"].startswith("every worker left")
    assert summary["workers"] and summary["workers"][0]["live"] is False
    assert 0 < got <= summary["packets"] < 249 * 200


def test_replacement_within_rejoin_timeout_gets_the_rest_and_nothing_is_lost_silently() -> None:
    name = unique_name("rejoin")
    total = 249 * 200
    replay = start_replay(name, "-l", "200", "--rejoin-timeout", "30")
    first = connect(name)
    got_first = take(first, 10)
    first.close()
    second = connect(name)  # the replay waits for it
    got_second = drain(second)
    second.close()
    code, summary, err = finish(replay)
    assert code == 1, err  # a worker using block was lost: its ring's packets are gone
    assert "worker 0" in err and "left before the end of the stream" in err
    assert summary["stopped"] is None
    assert got_second > 0
    # every packet: received by the first, lost in the first's ring (counted), or received by the second
    assert got_first + summary["lost_packets"] + got_second == total, (got_first, summary["lost_packets"], got_second)


def test_replay_goes_on_with_the_workers_left() -> None:
    name = unique_name("two")
    total = 249 * 200
    replay = start_replay(name, "-l", "200", "--workers", "2")
    a = connect(name)
    b = connect(name)
    got_a = take(a, 10)
    a.close()
    got_b = drain(b)
    b.close()
    code, summary, err = finish(replay)
    assert code == 1, err  # before: 0, with only "gone" in the table
    assert summary["stopped"] is None
    assert summary["workers_lost"] == 1
    assert got_a + summary["lost_packets"] + got_b == total


def test_no_replacement_within_rejoin_timeout_stops_with_the_summary() -> None:
    name = unique_name("nobody")
    replay = start_replay(name, "-l", "200", "--rejoin-timeout", "0.5")
    first = connect(name)
    take(first, 10)
    first.close()
    code, summary, err = finish(replay)
    assert code == 1
    assert "none joined within 0.5 s" in summary["stopped"]
