"""packet_ipc.aio: the asyncio API, under the default loop and uvloop, against real (spawned) processes.

Each test runs its coroutine with ``asyncio.Runner(loop_factory=...)`` (no pytest-asyncio needed); the
``loop_factory`` fixture is parametrized over the default loop and uvloop. Children are spawned, never forked.
"""

from __future__ import annotations

import array
import asyncio
import hashlib
import os
import random
import signal
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import packet_ipc as pipc
from packet_ipc import aio
from helpers.peers import collect, connect_and_idle, digest, make_packets, receive_all, serve_packets, serve_then_hang

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the `test` extra
    uvloop = None

LOOPS = ["asyncio", "uvloop"]


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        assert uvloop is not None
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[Any]], Any]:
    """Runs a coroutine to completion on a fresh loop of the parametrized kind."""
    kind = request.param
    if kind == "uvloop" and uvloop is None:
        pytest.skip("uvloop is not installed (pip install packet-ipc[test])")

    def runner(coro: Awaitable[Any]) -> Any:
        with asyncio.Runner(loop_factory=lambda: new_loop(kind)) as r:
            return r.run(coro)  # type: ignore[arg-type]

    runner.kind = kind  # type: ignore[attr-defined]
    return runner


async def connected_pair(server: aio.Server, **kw: Any) -> tuple[aio.Connection, aio.Client]:
    accepting = asyncio.create_task(server.accept(timeout=10))
    client = await aio.Client.connect(server.name, timeout=10, **kw)
    return await accepting, client


def copy(packets: Any) -> list[pipc.Packet]:
    return [pipc.Packet(p.timestamp, p.tobytes(), p.orig_len) for p in packets]


# ------------------------------------------------------------------------------------------------------------
# children (spawned: module-level functions)


async def _many_clients(name: str, n: int, result_q: Any) -> None:
    async def one() -> tuple[int, int, str, str | None]:
        got: list[pipc.Packet] = []
        error = None
        try:
            async with aio.Client.connect(name, timeout=60) as client:
                async for batch in client:
                    got.extend(copy(batch))
                    batch.release()
        except pipc.PacketIpcError as e:
            error = type(e).__name__
        seed = got[0].timestamp if got else -1
        return seed, len(got), digest(got), error

    result_q.put(await asyncio.gather(*(one() for _ in range(n))))


def many_clients(name: str, n: int, loop_kind: str, result_q: Any) -> None:
    """Client process: n asyncio clients at once on one loop; reports (seed, count, digest, error) for each."""
    with asyncio.Runner(loop_factory=lambda: new_loop(loop_kind)) as r:
        r.run(_many_clients(name, n, result_q))


def serve_bursts(name_q: Any, count: int, seed: int, capacity: int) -> None:
    """Server: sends `count` packets in random-sized bursts with short random pauses, so the consumer both finds
    packets waiting and has to wait for them (the pauses shape the traffic; they synchronise nothing)."""
    rng = random.Random(seed)
    packets = make_packets(count, seed)
    with pipc.Server(capacity=capacity) as server:
        name_q.put(server.name)
        conn = server.accept(timeout=30)
        i = 0
        while i < count:
            k = rng.randint(1, 300)
            conn.send(packets[i : i + k], timeout=60)
            i += k
            if rng.random() < 0.3:
                time.sleep(rng.random() * 0.002)
        conn.send(None)
        conn.close()


def serve_forever_fast(name_q: Any, stop: Any, size: int) -> None:
    """Server: sends `size`-byte packets as fast as it can until `stop` is set (then ends the stream)."""
    batch = pipc.PacketBatch.from_packets([pipc.Packet(i, bytes(size)) for i in range(256)])
    with pipc.Server(capacity=1 << 22) as server:
        name_q.put(server.name)
        conn = server.accept(timeout=30)
        try:
            while not stop.is_set():
                conn.send_batch(batch, timeout=30)
            conn.send(None)
        except pipc.ConnectionLostError:
            pass
        conn.close()


# ------------------------------------------------------------------------------------------------------------
# 1. many connections on one loop


def test_one_loop_serves_64_concurrent_connections_each_with_its_own_verified_stream(run, ctx):
    processes, per_process, count = 4, 16, 800
    result_q = ctx.Queue()

    async def main() -> list[Any]:
        async with aio.Server(capacity=1 << 16) as server:  # small rings: every stream waits for space often
            children = [
                ctx.Process(target=many_clients, args=(server.name, per_process, run.kind, result_q))
                for _ in range(processes)
            ]
            for c in children:
                c.start()

            async def feed(conn: aio.Connection, seed: int) -> int:
                async with conn:
                    stream = [pipc.Packet(seed, b"seed")] + make_packets(count, seed)
                    return await aio.transfer_ipc(stream, conn, batch_size=64, timeout=60)

            feeders = []
            for seed in range(processes * per_process):
                conn = await server.accept(timeout=60)
                feeders.append(asyncio.create_task(feed(conn, seed)))
            sent = await asyncio.gather(*feeders)
            assert sent == [count + 1] * len(feeders)
            reports = [r for _ in children for r in await asyncio.to_thread(result_q.get, True, 120)]
            for c in children:
                await asyncio.to_thread(c.join, 30)
            return reports

    reports = run(main())
    expected = {
        seed: (count + 1, digest([pipc.Packet(seed, b"seed")] + make_packets(count, seed)), None)
        for seed in range(processes * per_process)
    }
    assert {seed: (n, d, err) for seed, n, d, err in reports} == expected


# ------------------------------------------------------------------------------------------------------------
# 2. cancellation


def test_receives_cancelled_at_random_points_lose_and_duplicate_nothing(run, ctx):
    count, seed = 30000, 7
    name_q = ctx.Queue()
    server = ctx.Process(target=serve_bursts, args=(name_q, count, seed, 1 << 15))
    server.start()
    rng = random.Random(1234)

    async def main() -> tuple[list[pipc.Packet], dict[str, int]]:
        got: list[pipc.Packet] = []
        outcomes = {"done": 0, "cancelled": 0, "timed_out": 0}
        name = await asyncio.to_thread(name_q.get, True, 30)
        async with aio.Client.connect(name, timeout=30) as client:
            while True:
                receive = rng.choice([client.receive_batch, client.receive_packets])
                action = rng.random()
                result: Any = "nothing"
                if action < 0.35:  # asyncio.timeout at a random instant
                    try:
                        async with asyncio.timeout(rng.random() * 0.002):
                            result = await receive(rng.randint(1, 400))
                    except TimeoutError:
                        outcomes["timed_out"] += 1
                elif action < 0.7:  # task.cancel() after a random number of loop iterations
                    task = asyncio.create_task(receive(rng.randint(1, 400)))
                    for _ in range(rng.randint(0, 3)):
                        await asyncio.sleep(0)
                    task.cancel()
                    try:
                        result = await task  # a cancel that came too late: the result is real
                    except asyncio.CancelledError:
                        outcomes["cancelled"] += 1
                    del task  # a finished task holds its result: received packets pin their ring space
                else:
                    result = await receive(rng.randint(1, 400), timeout=30)
                if result is None:
                    break
                if result != "nothing":
                    outcomes["done"] += 1
                    got.extend(copy(result))
                    if isinstance(result, pipc.PacketBatch):
                        result.release()
        return got, outcomes

    got, outcomes = run(main())
    server.join(30)
    assert [p.timestamp for p in got] == [p.timestamp for p in make_packets(count, seed)]
    assert digest(got) == digest(make_packets(count, seed))
    assert outcomes["cancelled"] > 10 and outcomes["timed_out"] > 0, outcomes  # both paths were exercised


def test_sends_cancelled_at_random_points_report_exact_progress_and_resume_without_loss(run, ctx):
    count = 20000
    packets = make_packets(count, 3, max_len=600)
    result_q = ctx.Queue()
    rng = random.Random(99)

    async def main() -> dict[str, int]:
        outcomes = {"cancelled": 0, "partial": 0, "timed_out": 0}
        async with aio.Server(capacity=1 << 14) as server:  # 16 KiB: a 500-packet send fills it many times
            child = ctx.Process(target=receive_all, args=(server.name, result_q, 128, 0.0005))
            child.start()
            conn = await server.accept(timeout=30)
            i = 0
            while i < count:
                chunk = packets[i : i + rng.randint(1, 500)]
                how = rng.random()
                if how < 0.4:
                    task = asyncio.create_task(conn.send(chunk))
                    for _ in range(rng.randint(0, 4)):
                        await asyncio.sleep(0)
                    task.cancel()
                    try:
                        assert await task == len(chunk)
                    except asyncio.CancelledError:
                        outcomes["cancelled"] += 1
                elif how < 0.7:
                    try:
                        async with asyncio.timeout(rng.random() * 0.003):
                            await conn.send(chunk)
                    except TimeoutError:
                        outcomes["timed_out"] += 1
                else:
                    try:
                        await conn.send(chunk, timeout=rng.random() * 0.003)
                    except pipc.TimeoutError as e:
                        assert e.sent == conn.last_send_progress
                        outcomes["timed_out"] += 1
                progress = conn.last_send_progress  # the first `progress` packets of chunk are in the ring
                assert 0 <= progress <= len(chunk)
                if 0 < progress < len(chunk):
                    outcomes["partial"] += 1
                i += progress
            await conn.send(None)
            report = await asyncio.to_thread(result_q.get, True, 60)
            await asyncio.to_thread(child.join, 30)
            conn.close()
        n, d, head, error = report
        assert (n, d, error) == (count, digest(packets), None)
        return outcomes

    outcomes = run(main())
    assert outcomes["cancelled"] > 10 and outcomes["partial"] > 10, outcomes


HELLO = struct.pack("<QIII12x", 0x4F4C454843504950, pipc.WIRE_VERSION, pipc.ABI_VERSION, 0)  # docs/wire-format.md


def test_cancelled_accept_does_not_lose_the_client(run):
    async def main() -> None:
        async with aio.Server() as server:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await server.accept()
            # A client whose HELLO comes late: accept() waits on its socket (the C core keeps the half-done
            # handshake), is cancelled meanwhile, and the next accept() resumes that handshake.
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as raw:
                raw.connect(server.name)
                accepting = asyncio.create_task(server.accept())
                await asyncio.sleep(0.05)
                assert not accepting.done()
                accepting.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await accepting
                raw.send(HELLO)
                conn = await server.accept(timeout=10)
                assert conn.peer_pid == os.getpid()
                welcome, fds, _, _ = socket.recv_fds(raw, 256, 3)
                assert len(welcome) == 256 and struct.unpack_from("<i", welcome, 12)[0] == 0 and len(fds) == 3
                for fd in fds:
                    os.close(fd)
                conn.close()
            # An accept cancelled at any point while a real client connects: the client is accepted next time.
            for delay in range(8):
                connecting = asyncio.create_task(aio.Client.connect(server.name, timeout=10))
                accepting = asyncio.create_task(server.accept())
                for _ in range(delay):
                    await asyncio.sleep(0)
                accepting.cancel()
                try:
                    conn = await accepting
                except asyncio.CancelledError:
                    conn = await server.accept(timeout=10)
                async with await connecting as client:
                    await conn.send([pipc.Packet(1, b"hello")])
                    conn.close()
                    assert [p.tobytes() for p in await client.receive_packets()] == [b"hello"]
                    assert await client.receive_packets() is None

    run(main())


def test_accept_and_connect_start_no_thread(run):
    async def main() -> None:
        async with aio.Server(stats_socket=False) as server:
            before = {t.ident for t in threading.enumerate()}
            seen = set(before)
            stop = False

            async def watch() -> None:  # every loop iteration: which threads exist
                while not stop:
                    seen.update(t.ident for t in threading.enumerate())
                    await asyncio.sleep(0)

            watcher = asyncio.create_task(watch())
            for _ in range(5):
                accepting = asyncio.create_task(server.accept(timeout=10))
                await asyncio.sleep(0.01)  # accept waits on the listening socket first
                async with aio.Client.connect(server.name, timeout=10) as client:
                    conn = await accepting
                    await conn.send([pipc.Packet(7, b"x")])
                    assert [p.timestamp for p in await client.receive_packets()] == [7]
                    conn.close()
            with pytest.raises(pipc.TimeoutError):  # nobody accepts: the connect times out on the loop
                await aio.Client.connect(server.name, timeout=0.05)
            stop = True
            await watcher
            assert seen == before  # no thread started (threads of earlier tests may have ended)

    run(main())


# ------------------------------------------------------------------------------------------------------------
# server-level sends (many workers) from the loop


def test_async_server_send_spreads_flows_over_two_workers_exactly_once(run, ctx):
    from test_distribution import assert_flow_affinity, synthetic_flows

    packets = synthetic_flows(400, 6)

    async def main() -> list[Any]:
        # Small rings and a slow worker: sends stall on full rings, wait on that worker's fds, and resume.
        async with aio.Server(capacity=1 << 14, distribution="flow") as server:
            result_q = ctx.Queue()
            procs = [ctx.Process(target=collect, args=(server.name, result_q)) for _ in range(2)]
            for p in procs:
                p.start()
            assert len(await server.wait_for_clients(2, timeout=30)) == 2
            sent = 0
            for i in range(0, len(packets), 500):
                part = packets[i : i + 500]
                if i // 500 % 2:
                    sent += await server.send_batch(pipc.PacketBatch.from_packets(part), timeout=30)
                else:
                    sent += await server.send(part, timeout=30)
            assert sent == len(packets) and server.last_send_unsent == []
            assert await server.send(None) == 0
            results = [result_q.get(timeout=60) for _ in procs]
            for p in procs:
                p.join(30)
            stats = server.stats()
            assert stats.sent_packets == len(packets) and stats.lost_packets == 0
            server.close_connections()
            return results

    results = run(main())
    assert_flow_affinity(packets, results, 2)


def test_broadcast_timeouts_abort_and_worker_checks_from_the_loop(run):
    async def drain(client: aio.Client) -> tuple[list[int], str | None]:
        got: list[int] = []
        try:
            async for batch in client:
                got.extend(p.timestamp for p in batch)
                batch.release()
        except pipc.ConnectionLostError as e:
            return got, str(e)
        return got, None

    async def main() -> None:
        async with aio.Server(capacity=1 << 13, distribution="broadcast") as server:
            accepting = asyncio.create_task(server.wait_for_clients(2, timeout=10))
            clients = [await aio.Client.connect(server.name, timeout=10) for _ in range(2)]
            conns = await accepting
            assert [c.index for c in conns] == [0, 1] and server.connections == conns
            packets = make_packets(500, max_len=200)
            readers = [asyncio.create_task(drain(c)) for c in clients]
            assert await server.send(packets, timeout=30) == 500  # rings of 8 KiB: both waits happen
            assert server.last_send_unsent is None and server.last_send_progress == 500
            await server.send(None)
            for got, error in await asyncio.gather(*readers):
                assert got == [p.timestamp for p in packets] and error is None
            for c in clients:
                c.close()
            assert server.check_workers() == conns and server.connections == []  # both clients left
            server.close_connections()

        async with aio.Server(capacity=1 << 13) as server:  # flow: timeout=0 never waits
            accepting = asyncio.create_task(server.accept(timeout=10))
            client = await aio.Client.connect(server.name, timeout=10)
            conn = await accepting
            with pytest.raises(pipc.TimeoutError) as e:
                await server.send(make_packets(500, max_len=200), timeout=0)
            assert 0 < e.value.sent == server.last_send_progress < 500
            assert len(server.last_send_unsent) == 500 - e.value.sent
            server.abort_connections()  # the client drains what was sent, then learns the server failed
            got, error = await drain(client)
            assert len(got) == e.value.sent and error and "aborted" in error
            client.close()
            conn.close()
            with pytest.raises(pipc.ConnectionLostError):  # no worker left: nothing written
                await server.send(make_packets(3))
            assert server.last_send_progress == 0 and server.last_send_unsent == [0, 1, 2]

    run(main())


def test_server_send_fails_with_exact_progress_when_the_only_worker_dies_while_it_waits(run, ctx):
    async def main() -> None:
        async with aio.Server(capacity=1 << 13) as server:
            stall, result_q = ctx.Event(), ctx.Queue()
            worker = ctx.Process(target=collect, args=(server.name, result_q), kwargs={"stall": stall})
            worker.start()
            await server.accept(timeout=30)
            sending = asyncio.create_task(server.send(make_packets(2000, max_len=200), timeout=60))
            while server.last_send_progress == 0:  # it filled the ring and waits for space now
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.05)
            assert not sending.done()
            os.kill(worker.pid, signal.SIGKILL)  # the wait wakes on the worker's socket, not on a timeout
            with pytest.raises(pipc.ConnectionLostError) as e:
                await sending
            assert e.value.sent == server.last_send_progress > 0
            assert server.last_send_progress + len(server.last_send_unsent) == 2000
            assert server.stats().lost_packets == server.last_send_progress  # all of it sat unread in its ring
            await asyncio.to_thread(worker.join, 30)

    run(main())


def test_cancelled_server_sends_resume_with_the_unsent_packets_exactly_once(run, ctx):
    from test_distribution import synthetic_flows

    packets = synthetic_flows(300, 10)

    async def main() -> list[Any]:
        async with aio.Server(capacity=1 << 13, distribution="flow") as server:
            result_q = ctx.Queue()
            procs = [ctx.Process(target=collect, args=(server.name, result_q), kwargs={"delay": 0.002}) for _ in range(2)]
            for p in procs:
                p.start()
            await server.wait_for_clients(2, timeout=30)
            rng = random.Random(7)
            todo = list(packets)
            cancelled = 0
            while todo:  # round 1: cancelled at random points, resumed with exactly the unsent packets
                task = asyncio.create_task(server.send(todo, timeout=60))
                for _ in range(rng.randrange(20)):
                    await asyncio.sleep(0)
                task.cancel()
                try:
                    await task
                    todo = []
                except asyncio.CancelledError:
                    cancelled += 1
                    assert server.last_send_progress + len(server.last_send_unsent) == len(todo)
                    todo = [todo[i] for i in server.last_send_unsent]
            assert cancelled > 3
            big = asyncio.create_task(server.send_batch(pipc.PacketBatch.from_packets(packets), timeout=60))
            while server.last_send_progress == 0 and not big.done():  # round 2: a send that stalls on full rings
                await asyncio.sleep(0.001)
            assert not big.done()  # the slow workers keep it waiting for space
            with pytest.raises(RuntimeError):  # one server-level send at a time
                await server.send(packets[:1])
            assert await big == len(packets)
            await server.send(None)
            results = [result_q.get(timeout=60) for _ in procs]
            for p in procs:
                p.join(30)
            return results

    results = run(main())
    assert all(error is None and dropped == 0 for _, _, dropped, error in results)
    stamps = sorted(ts for _, got, _, _ in results for ts, _ in got)
    assert stamps == sorted(list(range(len(packets))) * 2)  # every packet once per round: none lost, none twice


# ------------------------------------------------------------------------------------------------------------
# 3. the loop stays responsive


@pytest.mark.parametrize("side", ["receive", "send"])
def test_loop_keeps_running_other_tasks_during_a_full_speed_stream(run, ctx, side):
    stop = ctx.Event()
    name_q, result_q = ctx.Queue(), ctx.Queue()

    async def ticker(gaps: list[float], done: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = loop.time()
            gaps.append(now - last)
            last = now

    async def main() -> tuple[float, int]:
        gaps: list[float] = []
        done = asyncio.Event()
        tick = asyncio.create_task(ticker(gaps, done))
        moved = 0
        loop = asyncio.get_running_loop()
        if side == "receive":
            child = ctx.Process(target=serve_forever_fast, args=(name_q, stop, 64))
            child.start()
            name = await asyncio.to_thread(name_q.get, True, 30)
            async with aio.Client.connect(name, timeout=30) as client:
                end = loop.time() + 1.0
                async for batch in client:
                    moved += len(batch)
                    batch.release()
                    if loop.time() > end and not stop.is_set():
                        stop.set()
        else:
            async with aio.Server(capacity=1 << 20) as server:
                child = ctx.Process(target=receive_all, args=(server.name, result_q, 1024))
                child.start()
                conn = await server.accept(timeout=30)
                batch = pipc.PacketBatch.from_packets([pipc.Packet(i, bytes(64)) for i in range(256)])
                end = loop.time() + 1.0
                while loop.time() < end:
                    moved += await conn.send_batch(batch)
                await conn.send(None)
                n, _, _, error = await asyncio.to_thread(result_q.get, True, 60)
                assert (n, error) == (moved, None)
                conn.close()
        await asyncio.to_thread(child.join, 30)
        done.set()
        await tick
        return max(gaps), moved

    max_gap, moved = run(main())
    assert moved > 0
    assert max_gap < 0.2, f"the loop was blocked for {max_gap * 1000:.0f} ms"  # liveness, not performance


# ------------------------------------------------------------------------------------------------------------
# 4. end of stream and peer death, as in the sync API


def test_async_for_ends_at_end_of_stream_and_receive_then_returns_none(run, ctx):
    name_q, count = ctx.Queue(), 5000
    server = ctx.Process(target=serve_packets, args=(name_q, count, 5, 1 << 16, 100))
    server.start()

    async def main() -> list[pipc.Packet]:
        name = await asyncio.to_thread(name_q.get, True, 30)
        got: list[pipc.Packet] = []
        client = await aio.Client.connect(name, timeout=30)
        async with client:
            async for batch in client:
                got.extend(copy(batch))
            assert await client.receive_batch() is None
            assert await client.receive_packets(timeout=0) is None
        assert client.closed
        return got

    got = run(main())
    server.join(30)
    assert digest(got) == digest(make_packets(count, 5))


def test_client_drains_then_raises_connection_lost_when_server_killed(run, ctx):
    name_q, done_q = ctx.Queue(), ctx.Queue()
    server = ctx.Process(target=serve_then_hang, args=(name_q, done_q, 1000))
    server.start()

    async def main() -> list[int]:
        name = await asyncio.to_thread(name_q.get, True, 30)
        async with aio.Client.connect(name, timeout=30) as client:
            assert await asyncio.to_thread(done_q.get, True, 30) == 1000  # committed before the kill
            got = [p.timestamp for p in await client.receive_packets(600)]
            os.kill(server.pid, signal.SIGKILL)
            await asyncio.to_thread(server.join, 30)
            with pytest.raises(pipc.ConnectionLostError):
                while True:  # timeout=5: detection must come well before it
                    got.extend(p.timestamp for p in await client.receive_packets(300, timeout=5))
            with pytest.raises(pipc.ConnectionLostError):  # and it stays lost
                await client.receive_packets(1, timeout=5)
            return got

    assert run(main()) == [p.timestamp for p in make_packets(1000)]


def test_waiting_receive_wakes_with_connection_lost_when_server_killed(run, ctx):
    name_q, done_q = ctx.Queue(), ctx.Queue()
    server = ctx.Process(target=serve_then_hang, args=(name_q, done_q, 10))
    server.start()

    async def main() -> None:
        name = await asyncio.to_thread(name_q.get, True, 30)
        async with aio.Client.connect(name, timeout=30) as client:
            await asyncio.to_thread(done_q.get, True, 30)
            assert len(await client.receive_packets(100)) == 10
            waiting = asyncio.create_task(client.receive_packets(100, timeout=30))
            while client._waiter is None:  # until it sleeps on the eventfd and the socket
                await asyncio.sleep(0)
            os.kill(server.pid, signal.SIGKILL)
            started = time.monotonic()
            with pytest.raises(pipc.ConnectionLostError):
                await waiting
            assert time.monotonic() - started < 10  # woken by the socket, not by the timeout

    run(main())
    server.join(30)


def test_send_raises_connection_lost_when_client_killed(run, ctx):
    ready_q = ctx.Queue()

    async def main() -> None:
        async with aio.Server(capacity=1 << 14) as server:
            child = ctx.Process(target=connect_and_idle, args=(server.name, ready_q))
            child.start()
            conn = await server.accept(timeout=30)
            assert await asyncio.to_thread(ready_q.get, True, 30) == child.pid == conn.peer_pid
            packets = make_packets(2000, max_len=200)
            with pytest.raises(pipc.TimeoutError) as full:  # timeout=0: fills the ring, never waits
                await conn.send(packets, timeout=0)
            first = full.value.sent
            assert 0 < first < len(packets) and conn.last_send_progress == first
            sending = asyncio.create_task(conn.send(packets[first:]))
            while conn._waiter is None:  # until it waits for space
                await asyncio.sleep(0)
            os.kill(child.pid, signal.SIGKILL)
            with pytest.raises(pipc.ConnectionLostError) as lost:
                await sending
            assert lost.value.sent == conn.last_send_progress == 0  # nothing more was written
            assert not conn.alive
            with pytest.raises(pipc.ConnectionLostError):  # and it stays lost
                await conn.send(packets[:1])
            await asyncio.to_thread(child.join, 30)
            conn.close()

    run(main())


# ------------------------------------------------------------------------------------------------------------
# the rest of the contract


def test_timeouts_close_and_misuse_are_typed_errors(run):
    async def main() -> None:
        async with aio.Server() as server:
            with pytest.raises(pipc.TimeoutError):
                await server.accept(timeout=0.01)
            conn, client = await connected_pair(server)
            with pytest.raises(pipc.TimeoutError):
                await client.receive_batch(timeout=0)
            started = time.monotonic()
            with pytest.raises(pipc.TimeoutError):
                await client.receive_batch(timeout=0.05)
            assert time.monotonic() - started >= 0.04
            with pytest.raises(ValueError):  # checked before anything is written
                await conn.send([pipc.Packet(1, b"ok"), pipc.Packet(2, bytes(1 << 24))])
            assert conn.stats().packets == 0 and conn.last_send_progress == 0
            waiting = asyncio.create_task(client.receive_packets())
            await asyncio.sleep(0)
            with pytest.raises(RuntimeError):  # one receiver at a time
                await client.receive_packets()
            client.close()  # wakes the waiter
            with pytest.raises(pipc.ClosedError):
                await waiting
            await conn.send(None)
            with pytest.raises(pipc.ClosedError):
                await conn.send([pipc.Packet(1, b"late")])
            conn.close()
        assert server.closed
        with pytest.raises(pipc.ClosedError):
            await server.accept(timeout=1)

    run(main())


def test_close_wakes_a_send_waiting_for_space_with_closed_error(run):
    async def main() -> None:
        async with aio.Server(capacity=1 << 14) as server:
            conn, client = await connected_pair(server)
            sending = asyncio.create_task(conn.send(make_packets(1000, max_len=200)))
            while conn._waiter is None:  # until it waits for space
                await asyncio.sleep(0)
            written = conn.last_send_progress
            conn.close()
            with pytest.raises(pipc.ClosedError):
                await sending
            assert conn.last_send_progress == written > 0
            got = 0
            while (batch := await client.receive_batch(timeout=5)) is not None:  # the client drains, then ends
                got += len(batch)
                batch.release()
            assert got == written
            client.close()

    run(main())


def test_connect_errors_and_async_with_connect(run, tmp_path):
    async def main() -> None:
        with pytest.raises(pipc.ConnectError):
            await aio.Client.connect(str(tmp_path / "nobody"), timeout=1)
        async with aio.Server() as server:
            with pytest.raises(pipc.TimeoutError):  # nobody accepts
                await aio.Client.connect(server.name, timeout=0.1)
            accepting = asyncio.create_task(server.accept(timeout=10))
            async with aio.Client.connect(server.name, timeout=10) as client:
                conn = await accepting
                await aio.transfer_ipc(_agen(3), conn)
                assert [p.timestamp async for b in client for p in b] == [0, 1, 2]
            assert client.closed
            assert [c.index for c in server.connections] == [conn.index]
            conn.close()

    run(main())


async def _agen(n: int) -> Any:
    for i in range(n):
        await asyncio.sleep(0)
        yield pipc.Packet(i, i.to_bytes(4, "little"))


def test_no_fd_or_reader_is_left_behind(run):
    from conftest import open_fds

    async def main() -> None:
        for _ in range(20):
            async with aio.Server() as server:
                conn, client = await connected_pair(server)
                with pytest.raises(pipc.TimeoutError):
                    await client.receive_batch(timeout=0.001)
                await conn.send([pipc.Packet(1, b"x")])
                async with client, conn:
                    assert len(await client.receive_packets()) == 1

    run(main())  # warm-up: imports, the loop's own fds
    before = open_fds()
    run(main())
    assert open_fds() - before == set()


def test_package_digest_helper_matches_hashlib():  # keeps `digest` honest: the tests above rest on it
    p = [pipc.Packet(5, b"ab", orig_len=3)]
    h = hashlib.sha256((5).to_bytes(8, "little") + (3).to_bytes(4, "little") + b"ab").hexdigest()
    assert digest(p) == h


def test_reserve_waits_for_space_on_the_loop_and_commits_in_place(run):
    """aio Connection.reserve: waits (without blocking the loop) while the ring is full, then builds in place."""

    async def main() -> None:
        async with aio.Server(capacity=1 << 14) as server:
            client_task = asyncio.ensure_future(aio.Client.connect(server.name, timeout=10))
            conn = await server.accept(timeout=10)
            client = await client_task
            for n in (8, 4):  # 12 KiB of the 16 KiB ring (a reservation holds at most half of it)
                r = await conn.reserve(n, n * 1024)
                assert r is not None
                r.caplen[:] = array.array("I", [1024] * n)
                r.commit(n)
            waiting = asyncio.ensure_future(conn.reserve(8, 8 * 1024, timeout=10))  # 8 KiB more: must wait
            await asyncio.sleep(0.05)
            assert not waiting.done()
            batch = await client.receive_batch(16, timeout=10)  # a take is at most half the ring: the first 8
            assert batch is not None and len(batch) == 8
            batch.release()
            third = await asyncio.wait_for(waiting, 10)
            assert third is not None
            third.caplen[:] = array.array("I", [1024] * 8)
            third.commit(8)
            got = 0
            while got < 12:
                batch = await client.receive_batch(16, timeout=10)
                assert batch is not None
                got += len(batch)
                batch.release()
            assert got == 12
            conn.close()
            client.close()

    run(main())
