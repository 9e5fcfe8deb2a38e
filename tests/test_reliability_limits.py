"""Resource limits: many clients on one server, and a server starved of memory or of file descriptors.

A starved accept raises a clear error naming what ran out, the refused client hears why, the clients
already connected keep receiving, nothing leaks, and the server accepts again once the resource is back.
(A name too long for sun_path is covered by test_failures.py.)
"""

from __future__ import annotations

import resource
from collections import defaultdict

import pytest

import packet_ipc as pipc
from helpers.crashers import assert_nothing_leaked, connect_and_report, hold_many_clients, serve_under_limit, snapshot

pytestmark = pytest.mark.timeout(120)


def test_256_clients_each_get_their_own_ring_and_stream(ctx):
    processes, per_process = 4, 64
    needed = processes * per_process * 4 + 200  # 4 fds per connection on the server side
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    result_q = ctx.Queue()
    try:
        with pipc.Server(capacity=64 << 10) as server:
            before = snapshot()
            children = [ctx.Process(target=hold_many_clients, args=(server.name, per_process, result_q))
                        for _ in range(processes)]
            for c in children:
                c.start()
            conns = [server.accept(timeout=30) for _ in range(processes * per_process)]
            assert sorted(result_q.get(timeout=60)[0] for _ in children) == ["connected"] * processes
            assert all(conn.alive for conn in conns)
            # Each Client() waits for its accept, so a process's connections arrive in its creation order.
            index: dict[int, int] = defaultdict(int)
            for conn in conns:
                k = index[conn.peer_pid]
                index[conn.peer_pid] += 1
                conn.send([pipc.Packet(j, f"{conn.peer_pid}:{k}:{j}".encode()) for j in range(3)])
                conn.send(None)
            for _ in children:
                _, pid, received = result_q.get(timeout=60)
                assert received == [[f"{pid}:{k}:{j}".encode() for j in range(3)] for k in range(per_process)]
            for c in children:
                c.join(30)
                c.close()
            for conn in conns:
                conn.close()
            del conns, conn
            assert_nothing_leaked(before)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def run_starved(ctx, kind: str, spare: int):
    """One client served, a second arrives while the server is starved, then the server recovers."""
    name_q, report_q, cmd_q, first_q, second_q, third_q = (ctx.Queue() for _ in range(6))
    server = ctx.Process(target=serve_under_limit, args=(kind, spare, name_q, report_q, cmd_q))
    server.start()
    name = name_q.get(timeout=30)
    first = ctx.Process(target=connect_and_report, args=(name, first_q))
    first.start()
    assert report_q.get(timeout=30) == ("first", first.pid)
    second = ctx.Process(target=connect_and_report, args=(name, second_q))
    second.start()
    cmd_q.put("second-is-waiting")
    what, accept_error, leaked = report_q.get(timeout=60)
    assert what == "starved"
    assert leaked == [], f"fds leaked by the failed accept: {leaked}"
    # the client connected before keeps receiving (10 before the starvation, 10 during it)
    assert first_q.get(timeout=30) == ("connected", first.pid)
    assert first_q.get(timeout=30) == ("done", 20)
    second_saw = second_q.get(timeout=30)
    if second_saw == ("connected", second.pid):  # it was never accepted: still queued, served on recovery
        expected = second.pid
        assert second_q.get(timeout=30) == ("done", 10)
    else:  # refused with a reason: a new client is served on recovery
        third = ctx.Process(target=connect_and_report, args=(name, third_q))
        third.start()
        expected = third.pid
        assert third_q.get(timeout=30) == ("connected", third.pid)
        assert third_q.get(timeout=30) == ("done", 10)
        third.join(30)
    assert report_q.get(timeout=30) == ("recovered", expected)
    for p in (server, first, second):
        p.join(30)
        assert p.exitcode == 0
    return accept_error, second_saw


def test_accept_raises_memory_error_when_no_ring_fits_and_keeps_serving(ctx):
    accept_error, second_saw = run_starved(ctx, "as", 0)
    assert accept_error[0] == "MemoryError"
    assert "cannot create a ring" in accept_error[2]
    assert second_saw[0] == "MemoryError" and "cannot create a ring" in second_saw[2]  # the client hears why


@pytest.mark.parametrize("spare", [0, 1, 2], ids=["at-accept", "at-memfd", "at-eventfd"])
def test_accept_raises_a_clear_error_when_out_of_fds_and_keeps_serving(ctx, spare):
    accept_error, second_saw = run_starved(ctx, "nofile", spare)
    kind, errno_, message = accept_error
    assert (kind, errno_) == ("PacketIpcError", 24), accept_error  # EMFILE
    assert "Too many open files" in message
    if spare == 0:
        assert "accept failed" in message
        assert second_saw[0] == "connected"  # left queued, accepted once fds were back
    else:
        assert "cannot create" in message
        assert second_saw[0] == "ProtocolError" and "Too many open files" in second_saw[2]
