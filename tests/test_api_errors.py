"""Clear errors from the API where a user would trip (issue 12, points 4, 8 and 11): bad packet lengths and
buffers, a closed server, negative counts; a stale socket left by a killed server is reused; a name of 102 to
107 bytes keeps its statistics socket; the guide's batch loop runs to the end of the stream."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import packet_ipc as pipc
from packet_ipc.cli import fetch_stats
from packet_ipc.errors import ClosedError, ConnectError

REPO = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "packet-ipc"


# ---- Packet ----------------------------------------------------------------------------------------------


def test_packet_rejects_orig_len_below_caplen() -> None:
    with pytest.raises(ValueError, match=r"orig_len must be an int from caplen \(4\)"):
        pipc.Packet(1, b"abcd", orig_len=3)
    assert pipc.Packet(1, b"abcd", orig_len=4).orig_len == 4
    assert pipc.Packet(1, b"abcd", orig_len=1500).orig_len == 1500


@pytest.mark.parametrize("bad", [-1, 1 << 32, -(1 << 70)])
def test_packet_orig_len_out_of_range_is_a_clear_value_error(bad: int) -> None:
    with pytest.raises(ValueError, match="orig_len must be an int from caplen"):
        pipc.Packet(1, b"abcd", orig_len=bad)


def test_packet_orig_len_of_the_wrong_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="orig_len must be an int or None"):
        pipc.Packet(1, b"abcd", orig_len="4")  # type: ignore[arg-type]


def test_non_contiguous_memoryview_is_named_as_such() -> None:
    strided = memoryview(b"abcdefgh")[::2]
    with pytest.raises(ValueError, match="must be contiguous bytes"):
        pipc.Packet(1, strided)
    assert pipc.Packet(1, bytes(strided)).tobytes() == b"aceg"
    with pytest.raises(TypeError, match="buffer protocol"):
        pipc.Packet(1, 12345)  # type: ignore[arg-type]


# ---- Server ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [-1, -100])
def test_wait_for_clients_refuses_a_negative_count(n: int) -> None:
    with pipc.Server() as server, pytest.raises(ValueError, match="number of clients >= 0"):
        server.wait_for_clients(n, timeout=0.1)


def test_wait_for_clients_refuses_a_negative_timeout() -> None:
    with pipc.Server() as server, pytest.raises(ValueError, match="timeout"):
        server.wait_for_clients(1, timeout=-1)


def _accept_one(server: pipc.Server) -> pipc.Client:
    got: list[pipc.Client] = []
    t = threading.Thread(target=lambda: got.append(pipc.Client(server.name, timeout=10)))
    t.start()
    server.accept(timeout=10)
    t.join()
    return got[0]


def test_server_send_after_close_raises_closed_error() -> None:
    server = pipc.Server()
    client = _accept_one(server)
    server.close_connections()  # the caller closed every connection: not a worker that left
    with pytest.raises(ClosedError):
        server.send([pipc.Packet(1, b"x")])
    with pytest.raises(ClosedError):
        server.send_batch(pipc.PacketBatch.from_packets([pipc.Packet(1, b"x")]))
    server.close()
    with pytest.raises(ClosedError):
        server.send([pipc.Packet(1, b"x")])
    client.close()
    never_used = pipc.Server()
    never_used.close()
    with pytest.raises(ClosedError):
        never_used.send([pipc.Packet(1, b"x")])


# ---- names -------------------------------------------------------------------------------------------------


def test_stale_explicit_name_of_a_killed_server_is_reused(tmp_path: Path) -> None:
    name = tmp_path / "server.sock"
    child = subprocess.Popen(
        [sys.executable, "-c", f"import packet_ipc, sys; s = packet_ipc.Server({str(name)!r}); print('up', flush=True); "
                               "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "up"
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    assert name.exists()  # kill -9 left the socket file behind
    with pipc.Server(name) as server:  # before: "Address already in use"
        client = _accept_one(server)
        server.send([pipc.Packet(5, b"again")])
        server.send(None)
        assert [p.tobytes() for p in client.receive_packets(10)] == [b"again"]
        client.close()


def test_name_of_a_live_server_is_not_taken_over(tmp_path: Path) -> None:
    name = tmp_path / "server.sock"
    with pipc.Server(name):
        with pytest.raises(OSError):
            pipc.Server(name)
        assert pipc.server.remove_stale_socket(str(name)) is False


def test_a_regular_file_at_the_name_is_left_alone(tmp_path: Path) -> None:
    name = tmp_path / "not-a-socket"
    name.write_text("keep me")
    with pytest.raises(OSError):
        pipc.Server(name)
    assert name.read_text() == "keep me"


@pytest.mark.parametrize("length", [102, 104, 107])
def test_long_path_name_keeps_its_stats_socket(length: int, tmp_path: Path) -> None:
    base = str(tmp_path) + "/"
    if len(base) > length - 10:
        pytest.skip("the temporary directory's path is too long for this name length")
    name = base + "s" * (length - len(base))
    assert len(name.encode()) == length
    with pipc.Server(name) as server:  # before: NAME.stats (108+ bytes) failed silently: no statistics
        stats = fetch_stats(server.name)
        assert stats["name"] == name
        result = subprocess.run([str(CLI), "stats", name, "--json"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
    assert not os.path.exists(name + ".stats")


@pytest.mark.parametrize("length", [102, 107])
def test_long_abstract_name_keeps_its_stats_socket(length: int) -> None:
    prefix = f"@pipc-test-long-{os.getpid()}-"
    name = prefix + "a" * (length - len(prefix))
    with pipc.Server(name) as server:
        assert fetch_stats(server.name)["name"] == name
    with pytest.raises(ConnectError):
        fetch_stats(name, timeout=1)


# ---- the guide's batch loop --------------------------------------------------------------------------------


def test_the_guides_batch_loop_runs_to_the_end_of_the_stream() -> None:
    guide = (REPO / "docs" / "guide.md").read_text()
    assert "with client.receive_batch(1024) as batch:" not in guide.replace(
        "`with client.receive_batch(1024) as batch:` cannot", "")
    loop = re.search(r"^while \(batch := client\.receive_batch\(1024\)\) is not None:.*\n    with batch:", guide, re.M)
    assert loop is not None
    with pipc.Server() as server:
        client = _accept_one(server)
        server.send([pipc.Packet(i, bytes([i]) * 10) for i in range(50)])
        server.send(None)
        seen = 0
        while (batch := client.receive_batch(1024)) is not None:  # the guide's loop, verbatim
            with batch:
                seen += len(batch)
        assert seen == 50
        client.close()
