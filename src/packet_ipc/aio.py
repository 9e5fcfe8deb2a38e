"""asyncio API: :mod:`packet_ipc` for coroutines, name for name (as ``zmq.asyncio`` mirrors ``zmq``).

Every call that blocks in :mod:`packet_ipc` is a coroutine here (``await server.accept()``,
``await conn.send(...)``, ``await client.receive_batch()``, ``async for batch in client``); the others keep
their plain form. Waiting plugs into the running event loop with ``loop.add_reader`` on the peer's eventfd
*and* its control socket (so a dead peer wakes the waiter too), following the ring's own protocol: try without
blocking; else arm the waiting flag (``prepare_wait``), sleep only if it says so, disarm (``finish_wait``) and
try again (after a bounded spin of :data:`SPIN_S`, as the C core does). No thread waits for packets or space
and nothing polls with a sleep. The two handshakes are the exception: the C handshake is one blocking call, so
it runs in a short-lived thread that ends with it (see :meth:`Client.connect` and :meth:`Server.accept`). A
stream that never stalls yields to the loop every :data:`YIELD_INTERVAL_S`, so other tasks keep running.

Cancellation (``task.cancel()``, ``asyncio.timeout()``) leaves every object consistent. A receive takes packets
only after its last ``await``, synchronously, so a cancelled receive took nothing: the next receive gets them.
A send writes packets in order; when it is cancelled (or times out, or the client dies) the first
``conn.last_send_progress`` packets of that call are in the ring and none of the others: resume with
``packets[conn.last_send_progress:]``, nothing is lost or duplicated.
"""

from __future__ import annotations

import array
import asyncio
import errno
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Generator, Iterable, Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar

from . import _core, errors
from .batch import PacketBatch
from .client import Client as _SyncClient
from .packet import AsIpcPacket, Packet
from .server import DEFAULT_CAPACITY, Distribution, Overflow, ServerStats
from .server import Connection as _SyncConnection
from .server import Server as _SyncServer
from .stats import Stats

__all__ = ["Server", "Connection", "Client", "transfer_ipc"]

YIELD_INTERVAL_S = 0.002
"""Longest time a coroutine keeps returning ready packets (or writing into free space) without letting the
event loop run: past it, the next call yields once (``await asyncio.sleep(0)``) before it takes or writes, so a
stream that never stalls cannot starve the loop's other tasks."""

RESUME_CHUNK = 4096
"""Packets converted per call when a send resumes after waiting for space: a resumed send never re-converts
the whole remainder of a large list at each wake-up."""

SPIN_S = _core.SPIN_NS / 1e9
"""Before it arms the wake-up and sleeps, a receive (or a send facing a full ring) retries for this long: the
peer usually publishes again within microseconds, and a retry costs far less than an eventfd write, a trip
through the event loop and a read. Like the C core's own spin (20 us), it is bounded, so the loop stays
responsive; 0 disables it."""

HANDSHAKE_BOUND_S = _core.HANDSHAKE_MS / 1000 + 1.0
"""Bound on one server-side handshake run off the loop (the C core itself gives a client 2 s for its HELLO)."""

_T = TypeVar("_T")
_monotonic = time.monotonic  # not loop.time(): uvloop's is the cached time of the loop iteration

_TIMEOUT = "timeout"
_CLOSED = "closed"
_DATA = "data"
_PEER = "peer"


class _Waiter:
    """One sleep of one coroutine: readers on the peer's fds, an optional deadline, and the future they resolve.

    The first of them to fire resolves the future with its reason and removes every reader at once (the fds are
    level-triggered: left registered they would fire on each loop iteration until the task runs). ``disarm`` is
    idempotent, so ``close()`` can remove the readers before it closes the fds, and the waiter's own cleanup
    afterwards cannot remove a reader that a reused fd number now belongs to.
    """

    __slots__ = ("loop", "future", "fds", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, fds: Sequence[tuple[int, str]], deadline: float | None):
        self.loop = loop
        self.future: asyncio.Future[str] = loop.create_future()
        self.fds: list[int] = []
        self.timer: asyncio.TimerHandle | None = None
        try:
            for fd, why in fds:
                loop.add_reader(fd, self.wake, why)
                self.fds.append(fd)
            if deadline is not None:
                self.timer = loop.call_at(deadline, self.wake, _TIMEOUT)
        except BaseException:
            self.disarm()
            raise

    def wake(self, why: str) -> None:
        if not self.future.done():
            self.future.set_result(why)
        self.disarm()

    def disarm(self) -> None:
        for fd in self.fds:
            self.loop.remove_reader(fd)
        self.fds.clear()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _peer_sent_data(fd: int) -> bool:
    """True if the control socket holds a message (the protocol has none after the handshake: a broken peer)."""
    sock = socket.socket(fileno=fd)
    try:
        return len(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)) > 0
    except OSError:
        return False  # nothing waiting (EAGAIN), or the peer is gone: the core reports that itself
    finally:
        sock.detach()  # the fd belongs to the core


def _timeout_error(message: str, sent: int | None = None) -> errors.TimeoutError:
    e = errors.TimeoutError(errno.ETIMEDOUT, message)
    if sent is not None:
        e.sent = sent
    return e


class _Pacer:
    """The state shared by :class:`Connection` and :class:`Client`: one operation at a time, fair yields, and
    the waiter that ``close()`` must wake."""

    __slots__ = ("_busy", "_waiter", "_ran_since")

    def __init__(self) -> None:
        self._busy = False
        self._waiter: _Waiter | None = None
        self._ran_since = 0.0  # loop time when this object last let the loop run

    def _enter(self, what: str) -> None:
        # Two coroutines waiting on the same fds would replace each other's readers (one would never wake), and a
        # take or write by one would disarm the other's waiting flag: like asyncio's streams, refuse it.
        if self._busy:
            raise RuntimeError(f"{what}() called while another coroutine is already using this {type(self).__name__}")
        self._busy = True

    async def _fair_yield(self) -> None:
        if _monotonic() - self._ran_since > YIELD_INTERVAL_S:
            await asyncio.sleep(0)
            self._ran_since = _monotonic()

    async def _sleep(
        self,
        loop: asyncio.AbstractEventLoop,
        fds: Sequence[tuple[int, str]],
        deadline: float | None,
        finish_wait: Callable[[], None],
    ) -> str:
        waiter = _Waiter(loop, fds, deadline)
        self._waiter = waiter
        try:
            return await waiter.future
        finally:
            waiter.disarm()
            self._waiter = None
            finish_wait()  # disarms the waiting flag and drains the eventfd, on every path (cancellation too)
            self._ran_since = _monotonic()

    def _wake_for_close(self) -> None:
        if self._waiter is not None:
            self._waiter.wake(_CLOSED)  # removes the readers before the fds are closed


# ------------------------------------------------------------------------------------------------------------
# server side


class Connection(_Pacer):
    """The server's side of one client, for asyncio: wraps a :class:`packet_ipc.Connection`.

    Obtained from :meth:`Server.accept`; ``Connection(sync_connection)`` wraps one accepted by a sync server.
    ``last_send_progress`` counts the packets the most recent :meth:`send`, :meth:`send_batch`,
    :meth:`send_batch_indices` or :func:`transfer_ipc` on this connection has written so far, the first ones of
    its input, in order: after a cancellation, a timeout or a :class:`ConnectionLostError` it says exactly what
    reached the ring.
    """

    __slots__ = ("_sync", "_c", "last_send_progress", "__weakref__")

    def __init__(self, connection: _SyncConnection) -> None:
        super().__init__()
        self._sync = connection
        self._c = connection._c
        self.last_send_progress = 0

    @property
    def sync(self) -> _SyncConnection:
        """The wrapped :class:`packet_ipc.Connection` (for code that blocks on purpose, e.g. in a thread)."""
        return self._sync

    def send(self, packets: Sequence[AsIpcPacket] | None, timeout: float | None = None) -> Coroutine[Any, Any, int]:
        """Writes ``packets`` (in order) into the client's ring; ``None`` ends the stream. A coroutine.

        Waits (without blocking the loop) while the ring is full, up to ``timeout`` seconds in total (``None``:
        forever; ``0``: never waits). Returns the number of packets written (under ``overflow="drop"`` those
        that did not fit are counted as dropped, not included). Raises ``ValueError`` before writing anything if
        a packet is larger than the ring or the snaplen, ``TypeError`` for an object without
        ``.timestamp``/``.data``, ``TimeoutError`` (``sent`` counts packets written), ``ConnectionLostError``
        (the client is gone; ``sent`` as well), ``ClosedError`` after close or end of stream, ``RuntimeError``
        if another coroutine is sending on this connection. When cancelled, ``last_send_progress`` packets were
        written: the first ones of ``packets``. (``send`` is a plain method returning the coroutine, so that
        ``last_send_progress`` is reset the moment it is called: a task cancelled before it ever ran reports 0.)
        """
        self._reset_progress()
        if packets is None:
            return self._end()
        return self._send(_PacketsWriter(self._c, packets), timeout, 0)

    def send_batch(self, batch: PacketBatch, timeout: float | None = None) -> Coroutine[Any, Any, int]:
        """Writes a :class:`PacketBatch` (one copy into the ring). A coroutine; waiting, return value, errors and
        cancellation as :meth:`send`."""
        self._reset_progress()
        return self._send(_BatchWriter(self._c, batch, None), timeout, 0)

    def send_batch_indices(self, batch: PacketBatch, indices: Any, timeout: float | None = None) -> Coroutine[Any, Any, int]:
        """Writes the packets of ``batch`` at ``indices`` (a buffer of uint32 values, in that order). A coroutine,
        as :meth:`send`; ``last_send_progress`` counts positions in ``indices``."""
        self._reset_progress()
        return self._send(_BatchWriter(self._c, batch, indices), timeout, 0)

    def _reset_progress(self) -> None:
        if not self._busy:  # a call refused with RuntimeError must not clobber the running send's count
            self.last_send_progress = 0

    async def _end(self) -> int:
        self._enter("send")
        try:
            return int(self._c.send(None))
        finally:
            self._busy = False

    async def _send(self, writer: _Writer, timeout: float | None, base: int) -> int:
        self._enter("send")
        try:
            self.last_send_progress = base
            if _monotonic() - self._ran_since > YIELD_INTERVAL_S:
                await self._fair_yield()
            try:
                # The first attempt gets the whole input: the core checks every packet before it writes any, so
                # a bad packet raises ValueError/TypeError with nothing written, as in the sync API.
                sent = writer.write(0, writer.total)
                self.last_send_progress = base + sent
                return sent
            except (errors.TimeoutError, errors.ConnectionLostError) as e:
                sent = int(getattr(e, "sent", 0))
                self.last_send_progress = base + sent
                if isinstance(e, errors.ConnectionLostError) or timeout == 0:
                    raise
            return await self._send_rest(writer, timeout, base, sent)
        finally:
            self._busy = False

    async def _send_rest(self, writer: _Writer, timeout: float | None, base: int, sent: int) -> int:
        """The ring was full: wait for space, write, until everything is written."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        spin_end = _monotonic() + SPIN_S
        while _monotonic() < spin_end:  # see SPIN_S
            try:
                sent += writer.write(sent, min(writer.total, sent + RESUME_CHUNK))
            except errors.TimeoutError as e:
                sent += e.sent
            except errors.ConnectionLostError as e:
                e.sent = sent + e.sent
                self.last_send_progress = base + e.sent
                raise
            self.last_send_progress = base + sent
            if sent == writer.total:
                return sent
        space_fd, sock_fd = self._c.fds()
        fds = ((space_fd, _DATA), (sock_fd, _PEER))
        while sent < writer.total:
            why = None
            if self._c.prepare_wait(writer.caplen(sent)):  # arms the flag; False: space appeared meanwhile
                why = await self._sleep(loop, fds, deadline, self._c.finish_wait)
            end = min(writer.total, sent + RESUME_CHUNK)
            try:
                n = writer.write(sent, end)
            except (errors.TimeoutError, errors.ConnectionLostError) as e:
                n = int(getattr(e, "sent", 0))
                if isinstance(e, errors.ConnectionLostError):
                    e.sent = sent + n
                    self.last_send_progress = base + sent + n
                    raise
            sent += n
            self.last_send_progress = base + sent
            if n == 0 and why is not None:
                if why == _TIMEOUT:
                    raise _timeout_error("ring full: no space within the timeout", sent)
                if not self._c.alive():  # the socket woke us: the client is gone and will never free space
                    lost = errors.ConnectionLostError(errno.ECONNRESET, "client has gone")
                    lost.sent = sent
                    raise lost
                if why == _PEER and _peer_sent_data(sock_fd):
                    raise errors.ProtocolError(errno.EPROTO, "unexpected message from the client after the handshake")
        return sent

    def end(self) -> None:
        """Ends the stream (same as ``send(None)``): the client drains, then receives ``None``. Never blocks."""
        if self._busy:
            raise RuntimeError("end() called while another coroutine is sending on this connection")
        self._sync.end()

    @property
    def overflow(self) -> Overflow:
        """This connection's overflow policy, ``"block"`` or ``"drop"``."""
        return self._sync.overflow

    @property
    def index(self) -> int:
        """Order of acceptance on its server."""
        return self._sync.index

    @property
    def alive(self) -> bool:
        """True while the client is connected (checks the control socket; never blocks)."""
        return self._sync.alive

    @property
    def peer_pid(self) -> int:
        """Process id of the client (from ``SO_PEERCRED`` at accept time)."""
        return self._sync.peer_pid

    @property
    def ring_bytes(self) -> int:
        """Payload capacity of this connection's ring."""
        return self._sync.ring_bytes

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._sync.closed

    def stats(self) -> Stats:
        """Counters of this connection: sent, dropped, time blocked on a full ring, ring fill."""
        return self._sync.stats()

    def close(self) -> None:
        """Closes the connection (the client drains, then sees end of stream). A send waiting for space on it
        wakes and raises ``ClosedError``."""
        self._wake_for_close()
        self._sync.close()

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"peer_pid={self.peer_pid}"
        return f"<packet_ipc.aio.Connection {state} overflow={self.overflow!r}>"


class _Writer:
    """What a send writes: ``total`` packets; ``write(a, b)`` writes packets a..b without waiting; ``caplen(i)``."""

    total: int

    def write(self, start: int, stop: int) -> int:
        raise NotImplementedError

    def caplen(self, i: int) -> int:
        raise NotImplementedError


class _PacketsWriter(_Writer):
    def __init__(self, core: Any, packets: Sequence[AsIpcPacket]) -> None:
        self.core = core
        self.packets = packets
        self.total = len(packets)

    def write(self, start: int, stop: int) -> int:
        if start == 0 and stop == self.total:
            return int(self.core.send(self.packets, 0))
        if not isinstance(self.packets, list):
            self.packets = list(self.packets)  # once, for cheap slices
        return int(self.core.send(self.packets[start:stop], 0))

    def caplen(self, i: int) -> int:
        return max(1, memoryview(self.packets[i].data).nbytes)  # what the core needs free before it writes it


class _BatchWriter(_Writer):
    def __init__(self, core: Any, batch: PacketBatch, indices: Any) -> None:
        self.core = core
        self.batch = batch
        self.indices = None if indices is None else memoryview(indices).cast("B").cast("I")
        self.total = len(batch) if self.indices is None else len(self.indices)

    def write(self, start: int, stop: int) -> int:
        sel: memoryview | array.array[int] | None
        if start == 0 and stop == self.total:
            sel = self.indices
        elif self.indices is None:
            sel = array.array("I", range(start, stop))
        else:
            sel = self.indices[start:stop]
        return int(self.core.send_batch(self.batch, 0, sel))

    def caplen(self, i: int) -> int:
        j = i if self.indices is None else self.indices[i]
        return max(1, int(self.batch.caplens[j]))


class Server:
    """A packet-ipc endpoint for asyncio: a :class:`packet_ipc.Server` whose :meth:`accept` is a coroutine.

    Same parameters and errors as :class:`packet_ipc.Server`. ``async with`` closes it.
    """

    def __init__(
        self,
        name: Any = None,
        *,
        capacity: int = DEFAULT_CAPACITY,
        max_packets: int = 0,
        linktype: int = 1,
        snaplen: int = 262144,
        overflow: Overflow = "block",
        allowed_uids: Iterable[int] = (),
        allowed_gids: Iterable[int] = (),
        allow_any_uid: bool = False,
        distribution: Distribution = "flow",
        stats_socket: bool = True,
    ) -> None:
        self._sync = _SyncServer(
            name,
            capacity=capacity,
            max_packets=max_packets,
            linktype=linktype,
            snaplen=snaplen,
            overflow=overflow,
            allowed_uids=allowed_uids,
            allowed_gids=allowed_gids,
            allow_any_uid=allow_any_uid,
            distribution=distribution,
            stats_socket=stats_socket,
        )
        self.name: str = self._sync.name
        self._conns: list[Connection] = []
        self._ready: deque[Connection] = deque()  # handshakes completed for an accept() that was cancelled
        self._handshake: asyncio.Future[None] | None = None
        self._waiter: _Waiter | None = None
        self._accept_lock = asyncio.Lock()
        self._state_lock = threading.Lock()  # with the handshake thread: close() must not free the server under it
        self._closing = False
        self._in_handshake = False

    @property
    def sync(self) -> _SyncServer:
        """The wrapped :class:`packet_ipc.Server`."""
        return self._sync

    async def accept(self, timeout: float | None = None) -> Connection:
        """Waits up to ``timeout`` seconds for one client, performs the handshake and returns its connection.

        The wait for a client is a reader on the listening socket. The handshake (a blocking C call, usually
        microseconds: the client sends its HELLO right after connecting) then runs in a short-lived thread, so
        a slow or stalled client never blocks the loop; it is bounded by the core's handshake timeout. A
        handshake that completes after its ``accept()`` was cancelled or timed out is not lost: the next
        ``accept()`` returns it. Concurrent calls are served one after the other. Raises ``TimeoutError``,
        :class:`ProtocolError`, :class:`PermissionDeniedError`, ``ClosedError`` (the server stays usable after
        each but the last).
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        async with self._accept_lock:
            while True:
                if self._ready:
                    return self._ready.popleft()
                if self._closing:
                    raise errors.ClosedError(errno.EPIPE, "server is closed")
                if self._handshake is None:
                    waiter = _Waiter(loop, ((self._sync.fileno(), _DATA),), deadline)
                    self._waiter = waiter
                    try:
                        why = await waiter.future
                    finally:
                        waiter.disarm()
                        self._waiter = None
                    if why == _TIMEOUT:
                        raise _timeout_error("no client connected in time")
                    if why == _CLOSED:
                        continue
                    self._handshake = self._start_handshake(loop)
                left = None if deadline is None else max(0.0, deadline - loop.time())
                done, _ = await asyncio.wait((self._handshake,), timeout=left)  # never cancels the handshake
                if not done:
                    raise _timeout_error("no client connected in time")
                handshake, self._handshake = self._handshake, None
                handshake.result()  # ProtocolError, PermissionDeniedError...: that client only

    def _start_handshake(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        future: asyncio.Future[None] = loop.create_future()

        def finish(conn: _SyncConnection | None, exc: BaseException | None) -> None:  # on the loop
            if conn is not None:
                self._ready.append(self._wrap(conn))
            if isinstance(exc, errors.TimeoutError):
                exc = None  # the client vanished or stalled before its HELLO: the core dropped it; wait again
            if exc is not None:
                future.set_exception(exc)
                future.exception()  # nobody may await it (accept cancelled): no "never retrieved" warning
            else:
                future.set_result(None)

        def run() -> None:  # in the thread
            conn: _SyncConnection | None = None
            exc: BaseException | None = None
            try:
                conn = self._sync.accept(HANDSHAKE_BOUND_S)
            except BaseException as e:  # delivered to the loop
                exc = e
            with self._state_lock:
                self._in_handshake = False
                if self._closing:
                    self._sync.close()
            try:
                loop.call_soon_threadsafe(finish, conn, exc)
            except RuntimeError:  # the loop is closed: nobody will ever take this connection
                if conn is not None:
                    conn.close()

        with self._state_lock:
            self._in_handshake = True
        threading.Thread(target=run, name=f"packet-ipc accept {self.name}", daemon=True).start()
        return future

    def _wrap(self, conn: _SyncConnection) -> Connection:
        aconn = Connection(conn)
        self._conns.append(aconn)
        return aconn

    async def wait_for_clients(self, n: int, timeout: float | None = None) -> list[Connection]:
        """Accepts clients until ``n`` are connected (within ``timeout`` seconds in total); returns them."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while len(self._sync.connections) < n:
            await self.accept(None if deadline is None else max(0.0, deadline - loop.time()))
        return self.connections

    @property
    def connections(self) -> list[Connection]:
        """The live connections, in order of acceptance."""
        live = self._sync.connections
        return [c for c in self._conns if any(c._sync is s for s in live)]

    def stats(self) -> ServerStats:
        """Totals and per-connection counters (see :meth:`packet_ipc.Server.stats`)."""
        return self._sync.stats()

    def fileno(self) -> int:
        """The listening socket: readable when a client is waiting to be accepted."""
        return self._sync.fileno()

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closing or self._sync.closed

    def close(self) -> None:
        """Stops listening and removes the socket. Accepted connections stay usable. A pending ``accept()``
        raises ``ClosedError``; a handshake in flight completes first (its connection stays reachable through
        ``accept()``, which returns it before reporting the close)."""
        if self._waiter is not None:
            self._waiter.wake(_CLOSED)
        with self._state_lock:
            self._closing = True
            if not self._in_handshake:
                self._sync.close()

    def close_connections(self) -> None:
        """Closes every accepted connection (each client sees end of stream after draining)."""
        for c in self._conns:
            c.close()
        self._sync.close_connections()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<packet_ipc.aio.Server name={self.name!r}{' closed' if self.closed else ''}>"


def transfer_ipc(
    packets: AsyncIterable[AsIpcPacket] | AsyncIterable[PacketBatch] | Iterable[AsIpcPacket] | Iterable[PacketBatch],
    connection: Connection,
    *,
    batch_size: int = 256,
    timeout: float | None = None,
) -> Coroutine[Any, Any, int]:
    """Sends every packet of an async or sync iterable (of packets, or of :class:`PacketBatch`), then ends the
    stream.

    Packets are grouped into batches of ``batch_size``; batches are sent as they come. Returns the number of
    packets written. Waits as :meth:`Connection.send` (``timeout`` applies to each batch). A sync iterable is
    iterated on the loop: keep it cheap (a list, a generator over memory), or wrap slow sources as async
    iterables. The stream is ended only when the iterable was exhausted: an exception or a cancellation leaves
    it open, and ``connection.last_send_progress`` then counts the packets of this transfer that were written
    (the first ones of the iterable, in order). Like :meth:`Connection.send`, a plain function returning the
    coroutine: the count is reset when it is called.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    connection._reset_progress()
    return _transfer(packets, connection, batch_size, timeout)


async def _transfer(packets: Any, connection: Connection, batch_size: int, timeout: float | None) -> int:
    sent = 0
    pending: list[Any] = []

    async def push(item: Any) -> None:
        nonlocal sent, pending
        if isinstance(item, PacketBatch):
            if pending:
                batch, pending = pending, []
                sent += await connection._send(_PacketsWriter(connection._c, batch), timeout, sent)
            sent += await connection._send(_BatchWriter(connection._c, item, None), timeout, sent)
            return
        pending.append(item)
        if len(pending) >= batch_size:
            batch, pending = pending, []
            sent += await connection._send(_PacketsWriter(connection._c, batch), timeout, sent)

    if isinstance(packets, AsyncIterable):
        async for item in packets:
            await push(item)
    else:
        for item in packets:
            await push(item)
    if pending:
        sent += await connection._send(_PacketsWriter(connection._c, pending), timeout, sent)
    await connection.send(None)
    connection.last_send_progress = sent
    return sent


# ------------------------------------------------------------------------------------------------------------
# client side


class Client(_Pacer):
    """The client side for asyncio: ``client = await Client.connect(name)``.

    ``Client(sync_client)`` wraps an already connected :class:`packet_ipc.Client`. Receives are coroutines
    that wait on the ring's eventfd and the control socket through the running loop; ``async for batch in
    client`` yields batches until end of stream. One coroutine receives from a client at a time.
    """

    __slots__ = ("_sync", "_c", "name", "__weakref__")

    def __init__(self, client: _SyncClient) -> None:
        if not isinstance(client, _SyncClient):
            raise TypeError("aio.Client wraps a connected packet_ipc.Client: use `await aio.Client.connect(name)`")
        super().__init__()
        self._sync = client
        self._c = client._c
        self.name = client.name

    @classmethod
    def connect(
        cls, name: str, *, timeout: float | None = None, overflow: Literal["block", "drop"] | None = None
    ) -> _Connecting:
        """Connects to the server named ``name``, waiting up to ``timeout`` seconds for it to accept.

        ``await Client.connect(name)`` gives the client; ``async with Client.connect(name) as client`` also
        closes it. The handshake is one blocking C call that returns as soon as the server accepts; it runs in
        a short-lived daemon thread (not the loop's default executor: a cancelled connect with no timeout may
        wait for a server that never accepts, and such a thread must not hold up the loop's shutdown). A
        connection that completes after its ``connect()`` was cancelled is closed at once. Raises as
        :class:`packet_ipc.Client`: ``ConnectError``, ``PermissionDeniedError``, ``TimeoutError``,
        ``ProtocolError``, ``ValueError``.
        """
        return _Connecting(cls, str(name), timeout, overflow)

    @property
    def sync(self) -> _SyncClient:
        """The wrapped :class:`packet_ipc.Client`."""
        return self._sync

    async def receive_batch(self, max_packets: int = 1024, timeout: float | None = None) -> PacketBatch | None:
        """Waits for at least one packet and returns a batch of at most ``max_packets``, viewing the ring.

        Returns ``None`` at end of stream. Waits up to ``timeout`` seconds (``None``: forever; ``0``: never
        waits) without blocking the loop. Raises ``TimeoutError``, ``ConnectionLostError`` (server gone, all
        committed packets drained), ``ProtocolError``, ``ClosedError``, ``RuntimeError`` (another coroutine is
        receiving from this client). A cancelled call takes no packet.
        """
        if not self._busy and _monotonic() - self._ran_since <= YIELD_INTERVAL_S:
            # Fast path: no await before the take, so packets already waiting cost no trip through the loop.
            try:
                return self._c.receive_batch(max_packets, 0)
            except errors.TimeoutError:
                if timeout == 0:
                    raise
            return await self._receive(self._c.receive_batch, "receive_batch", max_packets, timeout, False)
        return await self._receive(self._c.receive_batch, "receive_batch", max_packets, timeout, True)

    async def receive_packets(self, max_packets: int = 1024, timeout: float | None = None) -> list[Packet] | None:
        """Like :meth:`receive_batch`, but returns a list of :class:`Packet` (each viewing the ring)."""
        if not self._busy and _monotonic() - self._ran_since <= YIELD_INTERVAL_S:
            try:
                return self._c.receive_packets(max_packets, 0)
            except errors.TimeoutError:
                if timeout == 0:
                    raise
            return await self._receive(self._c.receive_packets, "receive_packets", max_packets, timeout, False)
        return await self._receive(self._c.receive_packets, "receive_packets", max_packets, timeout, True)

    async def _receive(
        self, take: Callable[[int, float], _T | None], what: str, max_packets: int, timeout: float | None, first: bool
    ) -> _T | None:
        """The general path: ``first`` when nothing was tried yet (this call yields to the loop first)."""
        self._enter(what)
        try:
            loop = asyncio.get_running_loop()
            deadline = None if timeout is None else loop.time() + timeout
            if first:
                await self._fair_yield()
                # From here to each `return take(...)` there is no await: a cancelled call took nothing.
                try:
                    return take(max_packets, 0)
                except errors.TimeoutError:
                    if timeout == 0:
                        raise
            spin_end = _monotonic() + SPIN_S
            while _monotonic() < spin_end:  # see SPIN_S
                try:
                    return take(max_packets, 0)
                except errors.TimeoutError:
                    pass
            data_fd, sock_fd, _ = self._c.fds()
            fds = ((data_fd, _DATA), (sock_fd, _PEER))
            while True:
                why = None
                if self._c.prepare_wait():  # arms the flag; False: packets, the end or a dead peer are there
                    why = await self._sleep(loop, fds, deadline, self._c.finish_wait)
                try:
                    return take(max_packets, 0)
                except errors.TimeoutError:
                    if why == _TIMEOUT or (deadline is not None and loop.time() >= deadline):
                        raise _timeout_error("no packet arrived within the timeout") from None
                    if why is not None and _peer_sent_data(sock_fd):  # else the socket would wake us forever
                        raise errors.ProtocolError(
                            errno.EPROTO, "unexpected message from the server after the handshake"
                        ) from None
        finally:
            self._busy = False

    def __aiter__(self) -> AsyncIterator[PacketBatch]:
        return self

    async def __anext__(self) -> PacketBatch:
        """The next batch (up to 1024 packets); ends at end of stream (``ConnectionLostError`` if the server
        vanished)."""
        batch = await self.receive_batch(1024)
        if batch is None:
            raise StopAsyncIteration
        return batch

    @property
    def linktype(self) -> int:
        """The server's default linktype (each packet also carries its own)."""
        return self._sync.linktype

    @property
    def snaplen(self) -> int:
        """The server's snaplen."""
        return self._sync.snaplen

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._sync.closed

    def stats(self) -> Stats:
        """Counters of this client (received, dropped by the server, time blocked, ring fill)."""
        return self._sync.stats()

    def fileno(self) -> int:
        """The fd that becomes readable when packets may be waiting or the server went away."""
        return self._sync.fileno()

    def close(self) -> None:
        """Disconnects. A receive waiting on this client wakes and raises ``ClosedError``; packets already
        received stay readable until they are released."""
        self._wake_for_close()
        self._sync.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<packet_ipc.aio.Client name={self.name!r}{' closed' if self.closed else ''}>"


class _Connecting(Coroutine[Any, Any, Client]):
    """What :meth:`Client.connect` returns: a coroutine (``await`` it, or hand it to ``asyncio.create_task``)
    that is also an async context manager (``async with Client.connect(name) as client``), as aiohttp does."""

    __slots__ = ("_cls", "_name", "_timeout", "_overflow", "_client", "_coro")

    def __init__(
        self, cls: type[Client], name: str, timeout: float | None, overflow: Literal["block", "drop"] | None
    ) -> None:
        self._cls = cls
        self._name = name
        self._timeout = timeout
        self._overflow = overflow
        self._client: Client | None = None
        self._coro = self._connect()

    def send(self, value: Any) -> Any:
        return self._coro.send(value)

    def throw(self, *args: Any) -> Any:
        return self._coro.throw(*args)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, Client]:
        return self._coro.__await__()

    async def __aenter__(self) -> Client:
        self._client = await self._coro
        return self._client

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._client is not None:
            self._client.close()

    async def _connect(self) -> Client:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_SyncClient] = loop.create_future()
        name, timeout, overflow = self._name, self._timeout, self._overflow

        def deliver(client: _SyncClient | None, exc: BaseException | None) -> None:  # on the loop
            if future.cancelled():
                if client is not None:
                    client.close()
            elif exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(client)  # type: ignore[arg-type]

        def run() -> None:  # in the thread
            client: _SyncClient | None = None
            exc: BaseException | None = None
            try:
                client = _SyncClient(name, timeout=timeout, overflow=overflow)
            except BaseException as e:
                exc = e
            try:
                loop.call_soon_threadsafe(deliver, client, exc)
            except RuntimeError:  # the loop is closed
                if client is not None:
                    client.close()

        threading.Thread(target=run, name=f"packet-ipc connect {name}", daemon=True).start()
        try:
            return self._cls(await future)
        except asyncio.CancelledError:
            # Cancelled after the result arrived but before this task ran again: do not leak the connection.
            if future.done() and not future.cancelled() and future.exception() is None:
                future.result().close()
            raise
