"""The crash matrix: a peer killed (kill -9) or stopped (SIGSTOP) at each stage of a connection.

For each: the surviving side gets a typed exception promptly (well inside its own timeout, checked against
that timeout rather than by sleeping), leaks no fd and no ring mapping, and can accept or connect again.
What a killed server leaves in the filesystem is pinned here too. test_failures.py covers a server killed
after sending (the client drains, then ConnectionLostError) and a client killed while the ring is full.
"""

from __future__ import annotations

import errno
import mmap
import os
import signal
import socket
import stat
import struct
import threading
import time

import pytest

import packet_ipc as pipc
from helpers.crashers import (
    assert_nothing_leaked,
    connect_and_report,
    connect_raw_and_idle,
    remove_stale_endpoint,
    serve_blocked_send,
    serve_in_two_halves,
    serve_then_end_and_hang,
    serve_until_a_client_waits,
    snapshot,
)
from helpers.peers import connect_and_idle, digest, make_packets, receive_all

pytestmark = pytest.mark.timeout(60)


def wait_until(condition, timeout: float = 10.0) -> None:
    """Polls a condition on shared state (not a sleep standing in for synchronisation)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def exchange_once(server: pipc.Server) -> None:
    """The surviving side still works: one client, one packet, end of stream."""
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("conn", server.accept(timeout=10)))
    t.start()
    with pipc.Client(server.name, timeout=10) as client:
        t.join()
        box["conn"].send([pipc.Packet(7, b"again")])
        box["conn"].close()
        assert [p.tobytes() for p in client.receive_packets(10, timeout=5)] == [b"again"]
        assert client.receive_packets(10, timeout=5) is None


def received(client: pipc.Client, timeout: float = 5) -> tuple[list[pipc.Packet], BaseException | None]:
    """Everything the client can still receive, and how it ended (None at end of stream)."""
    got = []
    try:
        while (packets := client.receive_packets(512, timeout=timeout)) is not None:
            got.extend(pipc.Packet(p.timestamp, p.tobytes(), p.orig_len) for p in packets)
    except pipc.PacketIpcError as e:
        return got, e.with_traceback(None)  # its frames would hold the last received packets (and the ring)
    return got, None


# ---------------------------------------------------------------------------------------------------------
# the server dies


def test_client_waiting_in_connect_gets_connect_error_when_server_killed_before_accept(ctx):
    name_q, waiting_q = ctx.Queue(), ctx.Queue()
    server = ctx.Process(target=serve_until_a_client_waits, args=(name_q, waiting_q))
    server.start()
    name = name_q.get(timeout=30)
    before = snapshot()
    killer = threading.Thread(target=lambda: (waiting_q.get(timeout=30), os.kill(server.pid, signal.SIGKILL)))
    killer.start()
    start = time.monotonic()
    with pytest.raises(pipc.ConnectError):
        pipc.Client(name, timeout=30)  # queued on the listening socket when the server dies
    elapsed = time.monotonic() - start
    killer.join()
    server.join(30)
    assert elapsed < 10, "the death must be seen, not the 30 s timeout waited out"
    assert_nothing_leaked(before)

    # What a kill -9 leaves: the socket file (and the stats socket beside it) in the private 0700 directory;
    # nobody was left to remove them. No ring: memfds die with their last fd and mapping.
    directory = os.path.dirname(name)
    left = sorted(os.listdir(directory))
    assert os.path.basename(name) in left and set(left) <= {os.path.basename(name), os.path.basename(name) + ".stats"}
    assert all(stat.S_ISSOCK(os.stat(os.path.join(directory, f)).st_mode) for f in left)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    with pytest.raises(pipc.ConnectError) as refused:  # refused at once, not a hang
        pipc.Client(name, timeout=30)
    assert refused.value.errno == errno.ECONNREFUSED
    # A new server at that path sees that nobody listens behind the stale file and takes the name over
    # (issue 12: before, "address in use" until someone removed the file by hand).
    with pipc.Server(name) as again:
        assert again.name == name
        exchange_once(again)
    assert sorted(os.listdir(directory)) == []  # it removed its socket (and .stats) when it closed
    os.rmdir(directory)
    with pipc.Server() as fresh:
        exchange_once(fresh)


def test_abstract_name_leaves_nothing_after_server_kill_and_is_reusable_at_once(ctx):
    name = f"@packet-ipc-test-{os.getpid()}-{time.monotonic_ns()}"
    name_q, waiting_q = ctx.Queue(), ctx.Queue()
    server = ctx.Process(target=serve_until_a_client_waits, args=(name_q, waiting_q, name))
    server.start()
    assert name_q.get(timeout=30) == name
    os.kill(server.pid, signal.SIGKILL)
    server.join(30)
    with open("/proc/net/unix") as f:
        assert name[1:] not in f.read()  # the kernel dropped the name with the last socket
    with pytest.raises(pipc.ConnectError):
        pipc.Client(name, timeout=5)
    with pipc.Server(name) as again:  # no stale file to trip over
        exchange_once(again)


def test_client_drains_then_connection_lost_when_server_killed_in_a_blocked_send(ctx):
    name_q = ctx.Queue()
    server = ctx.Process(target=serve_blocked_send, args=(name_q, 2000))
    server.start()
    name = name_q.get(timeout=30)
    before = snapshot()
    client = pipc.Client(name, timeout=30)
    fd = os.open(f"/proc/self/fd/{client._c.fds()[2]}", os.O_RDWR)
    with mmap.mmap(fd, 4096) as header:
        # producer_waiting (offset 92): the server has filled the ring and sleeps on it
        wait_until(lambda: struct.unpack_from("<I", header, 92)[0] == 1)
        committed = struct.unpack_from("<Q", header, 64)[0]  # write_slot
    os.close(fd)
    os.kill(server.pid, signal.SIGKILL)
    server.join(30)
    start = time.monotonic()
    got, ending = received(client, timeout=5)
    assert isinstance(ending, pipc.ConnectionLostError)
    assert time.monotonic() - start < 5
    assert 0 < committed < 2000
    assert len(got) == committed  # everything committed before the death, nothing more, in order
    assert digest(got) == digest(make_packets(2000, 5, max_len=600)[:committed])
    client.close()
    remove_stale_endpoint(name)
    del client
    assert_nothing_leaked(before)


def test_end_of_stream_committed_before_a_server_kill_is_still_a_clean_end(ctx):
    name_q, done_q = ctx.Queue(), ctx.Queue()
    server = ctx.Process(target=serve_then_end_and_hang, args=(name_q, done_q, 3000))
    server.start()
    name = name_q.get(timeout=30)
    before = snapshot()
    client = pipc.Client(name, timeout=30)
    assert done_q.get(timeout=30) == 3000  # sent and ended, not yet drained
    os.kill(server.pid, signal.SIGKILL)
    server.join(30)
    got, ending = received(client)
    assert ending is None  # the end was committed: None, not ConnectionLostError
    assert digest(got) == digest(make_packets(3000, 9))
    assert client.receive_packets(1, timeout=1) is None  # and it stays ended
    client.close()
    remove_stale_endpoint(name)
    del client
    assert_nothing_leaked(before)


# ---------------------------------------------------------------------------------------------------------
# the client dies


def test_server_sees_an_idle_client_killed_and_keeps_serving(ctx):
    ready_q = ctx.Queue()
    with pipc.Server(capacity=1 << 14) as server:
        before = snapshot()
        child = ctx.Process(target=connect_and_idle, args=(server.name, ready_q))
        child.start()
        conn = server.accept(timeout=30)
        assert ready_q.get(timeout=30) == child.pid
        assert conn.alive
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
        child.close()
        assert not conn.alive  # the socket's hang-up is visible at once
        # A send that fits still lands in the (orphaned) ring; the first one that must wait sees the death
        # at once instead of waiting out its timeout.
        start = time.monotonic()
        with pytest.raises(pipc.ConnectionLostError):
            for _ in range(100):
                conn.send(make_packets(50), timeout=5)
        assert time.monotonic() - start < 5
        with pytest.raises(pipc.ConnectionLostError):  # sticky
            conn.send(make_packets(1), timeout=5)
        conn.close()
        del conn
        assert_nothing_leaked(before)
        exchange_once(server)


def test_accept_drops_a_client_that_never_says_hello_within_the_handshake_bound(ctx):
    result_q = ctx.Queue()
    with pipc.Server(capacity=1 << 16) as server:
        before = snapshot()
        silent = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        silent.connect(server.name)  # first in the queue, never sends HELLO
        taken = time.monotonic()
        with pytest.raises(pipc.TimeoutError):  # the caller's timeout is honoured...
            server.accept(timeout=0.5)
        assert time.monotonic() - taken < 2
        real = ctx.Process(target=connect_and_report, args=(server.name, result_q))
        real.start()
        conn = server.accept(timeout=10)  # ...and the silent peer is dropped at its own 2 s bound, then the
        waited = time.monotonic() - taken  # real client is accepted
        assert conn.peer_pid == real.pid
        assert 1.5 < waited < 5.0, waited
        assert server._s.counters[1] == 1  # counted as a failed handshake
        assert silent.recv(16) == b""  # and its socket was closed
        silent.close()
        assert result_q.get(timeout=30) == ("connected", real.pid)
        pipc.transfer_ipc(make_packets(100), conn)
        assert result_q.get(timeout=30) == ("done", 100)
        conn.close()
        real.join(30)
        real.close()
        del conn
        assert_nothing_leaked(before)


def test_a_hello_arriving_after_the_callers_timeout_is_not_dropped():
    # A server that polls accept() with short timeouts (to check a stop flag, say) must not reset clients
    # whose HELLO lags their connect: the next accept() resumes the handshake the timeout interrupted.
    with pipc.Server(capacity=1 << 16) as server:
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        raw.connect(server.name)
        with pytest.raises(pipc.TimeoutError):
            server.accept(timeout=0.05)  # took the connection, no HELLO yet
        raw.send(struct.pack("<QIII12x", 0x4F4C454843504950, pipc.WIRE_VERSION, pipc.ABI_VERSION, 0))
        conn = server.accept(timeout=5)
        msg, fds, _, _ = socket.recv_fds(raw, 256, 3)
        assert struct.unpack_from("<QIi", msg) == (0x434C455743504950, pipc.WIRE_VERSION, 0)  # WELCOME, status 0
        assert len(fds) == 3 and server._s.counters[1] == 0
        for fd in fds:
            os.close(fd)
        conn.close()
        raw.close()


def test_accept_drops_a_client_killed_mid_handshake_and_takes_the_next(ctx):
    ready_q, result_q = ctx.Queue(), ctx.Queue()
    with pipc.Server(capacity=1 << 16) as server:
        before = snapshot()
        half = ctx.Process(target=connect_raw_and_idle, args=(server.name, ready_q))
        half.start()
        assert ready_q.get(timeout=30) == half.pid  # connected, no HELLO
        os.kill(half.pid, signal.SIGKILL)
        half.join(30)
        half.close()
        real = ctx.Process(target=connect_and_report, args=(server.name, result_q))
        real.start()
        start = time.monotonic()
        conn = server.accept(timeout=10)
        assert conn.peer_pid == real.pid
        assert time.monotonic() - start < 2  # a dead peer's EOF is seen at once, no 2 s wait
        assert server._s.counters[1] == 1
        assert result_q.get(timeout=30) == ("connected", real.pid)
        conn.close()
        assert result_q.get(timeout=30) == ("done", 0)
        real.join(30)
        real.close()
        del conn
        assert_nothing_leaked(before)


# ---------------------------------------------------------------------------------------------------------
# a peer is stopped (SIGSTOP), then continued


def test_stopped_client_makes_send_time_out_then_the_stream_continues_without_loss(ctx):
    result_q = ctx.Queue()
    packets = make_packets(3000, 4)
    with pipc.Server(capacity=1 << 16) as server:
        child = ctx.Process(target=receive_all, args=(server.name, result_q))
        child.start()
        conn = server.accept(timeout=30)
        os.kill(child.pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            with pytest.raises(pipc.TimeoutError) as full:
                conn.send(packets, timeout=0.5)
            assert 0.5 <= time.monotonic() - start < 3
            assert 0 < full.value.sent < len(packets)
            assert conn.alive  # stopped is not dead
        finally:
            os.kill(child.pid, signal.SIGCONT)
        pipc.transfer_ipc(packets[full.value.sent :], conn, timeout=30)
        count, dig, _, error = result_q.get(timeout=30)
        conn.close()
    child.join(30)
    assert (count, error) == (3000, None)
    assert dig == digest(packets)


def test_stopped_server_makes_receive_time_out_then_the_stream_continues_without_loss(ctx):
    name_q, half_q, go_q = ctx.Queue(), ctx.Queue(), ctx.Queue()
    server = ctx.Process(target=serve_in_two_halves, args=(name_q, half_q, go_q, 4000))
    server.start()
    client = pipc.Client(name_q.get(timeout=30), timeout=30)
    got = []
    while len(got) < 2000:  # the first half (more than the ring holds: read while it comes)
        got.extend(pipc.Packet(p.timestamp, p.tobytes(), p.orig_len) for p in client.receive_packets(512, timeout=5))
    assert half_q.get(timeout=30) == len(got)  # the server is done with it and waits for `go`
    os.kill(server.pid, signal.SIGSTOP)
    try:
        go_q.put(True)  # the server cannot act on it while stopped
        start = time.monotonic()
        with pytest.raises(pipc.TimeoutError):  # not ConnectionLostError: a stopped server is alive
            client.receive_packets(512, timeout=0.5)
        assert 0.5 <= time.monotonic() - start < 3
    finally:
        os.kill(server.pid, signal.SIGCONT)
    rest, ending = received(client, timeout=30)
    assert ending is None
    assert digest(got + rest) == digest(make_packets(4000, 3))
    client.close()
    server.join(30)
    assert server.exitcode == 0


def test_files_of_a_killed_server_are_swept_and_a_live_servers_are_not(ctx):
    from pathlib import Path

    from packet_ipc.server import sweep_stale_endpoints
    from helpers.peers import connected_pair, serve_then_hang

    name_q, done_q = ctx.Queue(), ctx.Queue()
    child = ctx.Process(target=serve_then_hang, args=(name_q, done_q, 0))
    child.start()
    dead_dir = Path(name_q.get(timeout=30)).parent
    client = pipc.Client(str(dead_dir / "socket"), timeout=30)
    done_q.get(timeout=30)
    os.kill(child.pid, signal.SIGKILL)
    child.join(30)
    client.close()
    assert (dead_dir / "socket").exists()  # what a kill -9 leaves behind
    with pipc.Server() as live:
        removed = sweep_stale_endpoints(min_age_s=0)
        assert str(dead_dir) in removed and not dead_dir.exists()
        assert Path(live.name).exists()  # a live server's endpoint is never touched
        conn, client2 = connected_pair(live)
        conn.send([pipc.Packet(1, b"still serving")])
        assert client2.receive_packets(1, timeout=5)[0].tobytes() == b"still serving"
