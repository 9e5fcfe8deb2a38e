"""The server side of :mod:`packet_ipc.aio`: :class:`Server` and its :class:`Connection`."""

from __future__ import annotations

import array
import asyncio
import errno
from collections.abc import Callable, Coroutine, Iterable, Sequence
from types import TracebackType
from typing import Any

from .. import _core, errors
from ..batch import PacketBatch
from ..packet import AsIpcPacket
from ..server import DEFAULT_CAPACITY, Distribution, Overflow, ServerStats
from ..server import Connection as _SyncConnection
from ..server import Reservation
from ..server import Server as _SyncServer
from ..stats import Stats
from ._loop import AWAITABLE, CLOSED, DATA, PEER, TIMEOUT, Pacer, Waiter, mirrors, peer_sent_data, settings
from ._loop import _monotonic, sleep_on, timeout_error

_CANCEL_NOTE = (
    "When cancelled, ``last_send_progress`` packets were written: the first ones of the input. (A plain method "
    "returning the coroutine, so that ``last_send_progress`` is reset the moment it is called: a task cancelled "
    "before it ever ran reports 0.) ``RuntimeError`` if another coroutine is sending on this connection."
)


class Connection(Pacer):
    """The server's side of one client, for asyncio: wraps a :class:`packet_ipc.Connection`.

    Obtained from :meth:`Server.accept`; ``Connection(sync_connection)`` wraps one accepted by a sync server.
    ``last_send_progress`` counts the packets the most recent :meth:`send`, :meth:`send_batch`,
    :meth:`send_batch_indices` or :func:`transfer_ipc` on this connection has written so far, the first ones of
    its input, in order: after a cancellation, a timeout or a :class:`ConnectionLostError` it says exactly what
    reached the ring.
    """

    __slots__ = ("_sync", "last_send_progress", "__weakref__")

    def __init__(self, connection: _SyncConnection) -> None:
        super().__init__()
        self._sync = connection
        self.last_send_progress = 0

    @property
    def sync(self) -> _SyncConnection:
        """The wrapped :class:`packet_ipc.Connection` (for code that blocks on purpose, e.g. in a thread)."""
        return self._sync

    @mirrors(_SyncConnection.send, AWAITABLE + " ``timeout=0`` never waits. " + _CANCEL_NOTE)
    def send(self, packets: Sequence[AsIpcPacket] | None, timeout: float | None = None) -> Coroutine[Any, Any, int]:
        self._reset_progress()
        if packets is None:
            return self._end()
        return self._send(_PacketsWriter(self._sync, packets), timeout, 0)

    @mirrors(_SyncConnection.send_batch, AWAITABLE + " " + _CANCEL_NOTE)
    def send_batch(self, batch: PacketBatch, timeout: float | None = None) -> Coroutine[Any, Any, int]:
        self._reset_progress()
        return self._send(_BatchWriter(self._sync, batch, None), timeout, 0)

    @mirrors(_SyncConnection.send_batch_indices, AWAITABLE + " ``last_send_progress`` counts positions in ``indices``.")
    def send_batch_indices(self, batch: PacketBatch, indices: Any, timeout: float | None = None) -> Coroutine[Any, Any, int]:
        self._reset_progress()
        return self._send(_BatchWriter(self._sync, batch, indices), timeout, 0)

    def _reset_progress(self) -> None:
        if not self._busy:  # a call refused with RuntimeError must not clobber the running send's count
            self.last_send_progress = 0

    async def _end(self) -> int:
        self._enter("send")
        try:
            return self._sync.send(None)
        finally:
            self._busy = False

    async def _send(self, writer: _Writer, timeout: float | None, base: int) -> int:
        self._enter("send")
        try:
            self.last_send_progress = base
            if _monotonic() - self._ran_since > settings().YIELD_INTERVAL_S:
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
        spin_end = _monotonic() + settings().SPIN_S
        chunk = settings().RESUME_CHUNK
        while _monotonic() < spin_end:  # see SPIN_S
            try:
                sent += writer.write(sent, min(writer.total, sent + chunk))
            except errors.TimeoutError as e:
                sent += e.sent
            except errors.ConnectionLostError as e:
                e.sent = sent + e.sent
                self.last_send_progress = base + e.sent
                raise
            self.last_send_progress = base + sent
            if sent == writer.total:
                return sent
        while sent < writer.total:
            why = await self._wait_space(loop, writer.caplen(sent), deadline)
            try:
                n = writer.write(sent, min(writer.total, sent + chunk))
            except (errors.TimeoutError, errors.ConnectionLostError) as e:
                n = int(getattr(e, "sent", 0))
                if isinstance(e, errors.ConnectionLostError):
                    e.sent = sent + n
                    self.last_send_progress = base + sent + n
                    raise
            sent += n
            self.last_send_progress = base + sent
            if n == 0 and why is not None:
                self._check_wake(why, sent)
        return sent

    async def _wait_space(self, loop: asyncio.AbstractEventLoop, need: int, deadline: float | None) -> str | None:
        """Sleeps until the client frees ``need`` bytes (or goes, or the deadline); None: space was there."""
        if not self._sync._prepare_wait(need):  # arms the flag; False: space appeared meanwhile
            return None
        space_fd, sock_fd = self._sync._wait_fds()
        return await self._sleep(loop, ((space_fd, DATA), (sock_fd, PEER)), deadline, self._sync._finish_wait)

    def _check_wake(self, why: str, sent: int) -> None:
        """Nothing could be written after a wake-up for ``why``: raise what it means (else wait again)."""
        if why == TIMEOUT:
            raise timeout_error("ring full: no space within the timeout", sent)
        if not self._sync.alive:  # the socket woke us: the client is gone and will never free space
            lost = errors.ConnectionLostError(errno.ECONNRESET, "client has gone")
            lost.sent = sent
            raise lost
        if why == PEER and peer_sent_data(self._sync._wait_fds()[1]):
            raise errors.ProtocolError(errno.EPROTO, "unexpected message from the client after the handshake")

    async def _wait_for_server(self, need: int, deadline: float | None) -> str | None:
        """A server-level send stalled on this connection's full ring: wait for its space (one waiter at a time)."""
        self._enter("send")
        try:
            return await self._wait_space(asyncio.get_running_loop(), need, deadline)
        finally:
            self._busy = False

    @mirrors(_SyncConnection.reserve, AWAITABLE + " It waits for space on the event loop; ``commit`` never waits.")
    async def reserve(self, n_packets: int, n_bytes: int, timeout: float | None = None) -> Reservation | None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        self._enter("reserve")
        try:
            while True:
                try:
                    return self._sync.reserve(n_packets, n_bytes, 0)  # never blocks: space now, or TimeoutError
                except errors.TimeoutError:
                    if timeout == 0 or (deadline is not None and loop.time() >= deadline):
                        raise
                why = await self._wait_space(loop, n_bytes, deadline)
                if why is not None and why != DATA:  # the deadline, or the client's socket: look once more
                    try:
                        return self._sync.reserve(n_packets, n_bytes, 0)
                    except errors.TimeoutError:
                        self._check_wake(why, 0)
        finally:
            self._busy = False

    @mirrors(_SyncConnection.end)
    def end(self) -> None:
        if self._busy:
            raise RuntimeError("end() called while another coroutine is sending on this connection")
        self._sync.end()

    @mirrors(_SyncConnection.abort)
    def abort(self) -> None:
        if self._busy:
            raise RuntimeError("abort() called while another coroutine is sending on this connection")
        self._sync.abort()

    @property
    def overflow(self) -> Overflow:
        """This connection's overflow policy, ``"block"`` or ``"drop"``."""
        return self._sync.overflow

    @property
    def index(self) -> int:
        """Order of acceptance on its server."""
        return self._sync.index

    @property
    @mirrors(_SyncConnection.alive)
    def alive(self) -> bool:
        return self._sync.alive

    @property
    @mirrors(_SyncConnection.peer_pid)
    def peer_pid(self) -> int:
        return self._sync.peer_pid

    @property
    @mirrors(_SyncConnection.ring_bytes)
    def ring_bytes(self) -> int:
        return self._sync.ring_bytes

    @property
    @mirrors(_SyncConnection.closed)
    def closed(self) -> bool:
        return self._sync.closed

    @mirrors(_SyncConnection.stats)
    def stats(self) -> Stats:
        return self._sync.stats()

    @mirrors(_SyncConnection.close, "A send waiting for space on it wakes and raises ``ClosedError``.")
    def close(self) -> None:
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
    def __init__(self, conn: _SyncConnection, packets: Sequence[AsIpcPacket]) -> None:
        self.conn = conn
        self.packets = packets
        self.total = len(packets)

    def write(self, start: int, stop: int) -> int:
        if start == 0 and stop == self.total:
            return self.conn.send(self.packets, 0)
        if not isinstance(self.packets, list):
            self.packets = list(self.packets)  # once, for cheap slices
        return self.conn.send(self.packets[start:stop], 0)

    def caplen(self, i: int) -> int:
        return max(1, memoryview(self.packets[i].data).nbytes)  # what the core needs free before it writes it


class _BatchWriter(_Writer):
    def __init__(self, conn: _SyncConnection, batch: PacketBatch, indices: Any) -> None:
        self.conn = conn
        self.batch = batch
        self.indices = None if indices is None else memoryview(indices).cast("B").cast("I")
        self.total = len(batch) if self.indices is None else len(self.indices)

    def write(self, start: int, stop: int) -> int:
        if start == 0 and stop == self.total:
            sel = self.indices
        elif self.indices is None:
            sel = memoryview(array.array("I", range(start, stop)))
        else:
            sel = self.indices[start:stop]
        if sel is None:
            return self.conn.send_batch(self.batch, 0)
        return self.conn.send_batch_indices(self.batch, sel, 0)  # type: ignore[arg-type]

    def caplen(self, i: int) -> int:
        j = i if self.indices is None else self.indices[i]
        return max(1, int(self.batch.caplens[j]))


_SERVER_SEND_NOTE = (
    "asyncio: a coroutine; no thread. Each try never waits (``pipc_server_send_nowait``): when a worker's full "
    "ring stops it, the coroutine sleeps on that worker's fds only, then sends exactly the packets not yet "
    "written, so each arrives once and in its flow's order. ``last_send_progress`` counts the packets written "
    "so far and ``last_send_unsent`` lists the positions of the others (after a cancellation, a timeout or an "
    "error: resume with those). Under broadcast the packets go to each worker in turn (``last_send_unsent`` is "
    "then None). ``RuntimeError`` if another coroutine is sending on this server, or waiting on that worker."
)


class Server:
    """A packet-ipc endpoint for asyncio: :class:`packet_ipc.Server` with coroutines where it blocks.

    Same parameters and errors as :class:`packet_ipc.Server`. ``async with`` closes it. Accepting, the
    handshake and server-level sends never use a thread: the C core keeps a half-done handshake and a stalled
    send's unsent packets, and the loop waits on the fds it names.
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
        self._conns: dict[int, Connection] = {}  # by acceptance index
        self._waiter: Waiter | None = None
        self._accept_lock = asyncio.Lock()  # concurrent accepts are served one after the other
        self._sending = False
        self._ran_since = 0.0
        self.last_send_progress = 0
        self._unsent: array.array[int] | None = array.array("I")  # None: every packet of the last send
        self._send_total = 0
        self._broadcasting = False

    @property
    def sync(self) -> _SyncServer:
        """The wrapped :class:`packet_ipc.Server`."""
        return self._sync

    @property
    def distribution(self) -> Distribution:
        """How :meth:`send` spreads packets: ``"flow"``, ``"round_robin"`` or ``"broadcast"``."""
        return self._sync.distribution

    @property
    def overflow(self) -> Overflow:
        """The default overflow policy of its connections (a client may choose its own)."""
        return self._sync.overflow

    @property
    def linktype(self) -> int:
        """The default linktype of packets that do not carry their own."""
        return self._sync.linktype

    @property
    def snaplen(self) -> int:
        """The largest packet accepted."""
        return self._sync.snaplen

    @mirrors(
        _SyncServer.accept,
        "asyncio: a coroutine; no thread. It waits on the listening socket, then, while a client's HELLO is "
        "late, on that client's socket (``pipc_server_pending_fd``); the C core keeps the half-done handshake "
        "between tries. A stalled client is dropped after the core's bound (at most twice ``PIPC_HANDSHAKE_MS`` "
        "here). Cancelling it loses no client: the next ``accept()`` resumes the handshake. Concurrent calls "
        "are served one after the other.",
    )
    async def accept(self, timeout: float | None = None) -> Connection:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        async with self._accept_lock:
            while True:
                if self._sync.closed:
                    raise errors.ClosedError(errno.EPIPE, "server is closed")
                try:
                    return self._wrap(self._sync.accept(0))
                except errors.TimeoutError:
                    pass  # no client yet, or its HELLO is not there yet
                fd = self._sync._pending_handshake_fd()
                if fd >= 0:  # wake when its HELLO arrives, and look again after the core's bound at the latest
                    bound = loop.time() + _core.HANDSHAKE_MS / 1000
                    why = await sleep_on(self, loop, ((fd, DATA),), bound if deadline is None else min(deadline, bound))
                else:
                    why = await sleep_on(self, loop, ((self._sync.fileno(), DATA),), deadline)
                if why == TIMEOUT and deadline is not None and loop.time() >= deadline:
                    raise timeout_error("no client connected in time")

    def _wrap(self, conn: _SyncConnection) -> Connection:
        aconn = self._conns.get(conn.index)
        if aconn is None or aconn._sync is not conn:
            aconn = self._conns[conn.index] = Connection(conn)
        return aconn

    @mirrors(_SyncServer.wait_for_clients, AWAITABLE)
    async def wait_for_clients(self, n: int, timeout: float | None = None) -> list[Connection]:
        if n < 0:
            raise ValueError(f"wait_for_clients needs a number of clients >= 0, not {n}")
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be None or >= 0, not {timeout}")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while len(self._sync.connections) < n:
            await self.accept(None if deadline is None else max(0.0, deadline - loop.time()))
        return self.connections

    @property
    @mirrors(_SyncServer.connections)
    def connections(self) -> list[Connection]:
        return [self._wrap(c) for c in self._sync.connections]

    @mirrors(_SyncServer.send, _SERVER_SEND_NOTE)
    def send(self, packets: Sequence[AsIpcPacket] | None, timeout: float | None = None) -> Coroutine[Any, Any, int]:
        if packets is None:
            return self._end()
        self._reset_progress(len(packets))
        return self._send(packets, timeout)

    @mirrors(_SyncServer.send_batch, _SERVER_SEND_NOTE)
    def send_batch(self, batch: PacketBatch, timeout: float | None = None) -> Coroutine[Any, Any, int]:
        self._reset_progress(len(batch))
        return self._send(batch, timeout)

    @property
    def last_send_unsent(self) -> list[int] | None:
        """Positions (in its input) of the packets the most recent :meth:`send` or :meth:`send_batch` has not
        written, ascending; ``[]`` once it completed. None under broadcast (each worker got a prefix)."""
        if self._broadcasting:
            return None
        return list(range(self._send_total)) if self._unsent is None else self._unsent.tolist()

    def _reset_progress(self, total: int) -> None:
        if not self._sending:  # a call refused with RuntimeError must not clobber the running send's state
            self.last_send_progress = 0
            self._unsent = None
            self._send_total = total
            self._broadcasting = self._sync.distribution == "broadcast"

    async def _end(self) -> int:
        if self._sending:
            raise RuntimeError("send(None) called while another coroutine is sending on this server")
        return self._sync.send(None)

    async def _send(self, items: Sequence[AsIpcPacket] | PacketBatch, timeout: float | None) -> int:
        if self._sending:
            raise RuntimeError("send() called while another coroutine is sending on this server")
        self._sending = True
        try:
            if _monotonic() - self._ran_since > settings().YIELD_INTERVAL_S:
                await asyncio.sleep(0)
                self._ran_since = _monotonic()
            if self._sync.closed:
                raise errors.ClosedError(errno.EBADF, f"server {self.name} is closed")
            if self._sync.distribution == "broadcast":
                return await self._broadcast(items, timeout)
            return await self._distribute(items, timeout)
        finally:
            self._sending = False

    async def _distribute(self, items: Sequence[AsIpcPacket] | PacketBatch, timeout: float | None) -> int:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        chunk, spin_end = settings().RESUME_CHUNK, None
        todo: array.array[int] | None = None  # positions not yet written (None: all of them)
        sent = 0
        while True:
            sel = None if todo is None else todo[:chunk].tobytes()
            try:
                n, unsent, conn, need = self._sync._send_nowait(items, sel)
            except errors.PacketIpcError as e:
                if e.errno == errno.EBUSY:  # another thread is inside a call on this server: rare, and no fd
                    await asyncio.sleep(0.001)  # tells when it leaves; look again shortly
                    continue
                self._progress(sent + int(getattr(e, "sent", 0)), todo, chunk, getattr(e, "unsent", None), len(items))
                setattr(e, "sent", self.last_send_progress)  # noqa: B010 (every error of a send carries it)
                raise
            sent += n
            todo = self._progress(sent, todo, chunk, unsent, len(items))
            if not todo:
                return sent
            if conn is None:  # it wrote what it could and someone else holds the rest: look again shortly
                await asyncio.sleep(0.001)
                continue
            if timeout == 0:
                raise timeout_error("a worker's ring is full", sent)
            if spin_end is None:
                spin_end = _monotonic() + settings().SPIN_S
            if _monotonic() < spin_end:  # see SPIN_S
                continue
            aconn = self._wrap(conn)
            why = await aconn._wait_for_server(need, deadline)
            self._ran_since = _monotonic()
            if why == TIMEOUT:
                raise timeout_error("a worker's ring is full: no space within the timeout", sent)
            if why == PEER and not conn.alive:
                self._sync.check_workers()  # it died with a full ring: its packets go to the others
            elif why is not None and why != CLOSED:
                if why == PEER and peer_sent_data(conn._wait_fds()[1]):
                    raise errors.ProtocolError(errno.EPROTO, "unexpected message from a client after the handshake")

    def _progress(
        self, sent: int, todo: array.array[int] | None, chunk: int, unsent: bytes | None, total: int
    ) -> array.array[int]:
        """Records what a try left: the positions not written (those of its chunk, then the ones after it)."""
        rest = array.array("I")
        if unsent is not None:  # the try's own list, then what was beyond its chunk
            rest.frombytes(unsent)
            if todo is not None:
                rest.extend(todo[chunk:])
        else:  # an error that wrote nothing
            rest.extend(range(total) if todo is None else todo)
        self.last_send_progress = sent
        self._unsent = rest
        return rest

    async def _broadcast(self, items: Sequence[AsIpcPacket] | PacketBatch, timeout: float | None) -> int:
        """Every worker gets every packet, one worker after the other (each send waits as Connection.send)."""
        written = 0
        for aconn in self.connections:
            writer: _Writer = (
                _BatchWriter(aconn._sync, items, None) if isinstance(items, PacketBatch) else _PacketsWriter(aconn._sync, items)
            )
            try:
                await aconn._send(writer, timeout, 0)
                written += 1
            except (errors.ConnectionLostError, errors.ClosedError):
                self._sync.check_workers()  # gone or closed meanwhile: not a worker any more
        if not written:
            raise errors.ConnectionLostError(errno.ECONNRESET, "no live worker is connected to this server")
        self.last_send_progress = len(items)
        return len(items)

    @mirrors(_SyncServer.check_workers)
    def check_workers(self) -> list[Connection]:
        return [self._wrap(c) for c in self._sync.check_workers()]

    @mirrors(_SyncServer.stats)
    def stats(self) -> ServerStats:
        return self._sync.stats()

    @mirrors(_SyncServer.add_stats_source)
    def add_stats_source(self, key: str, source: Callable[[], Any]) -> None:
        self._sync.add_stats_source(key, source)

    @mirrors(_SyncServer.fileno)
    def fileno(self) -> int:
        return self._sync.fileno()

    @property
    @mirrors(_SyncServer.closed)
    def closed(self) -> bool:
        return self._sync.closed

    @mirrors(_SyncServer.close, "A pending ``accept()`` wakes and raises ``ClosedError``.")
    def close(self) -> None:
        if self._waiter is not None:
            self._waiter.wake(CLOSED)  # removes its reader before the socket is closed
        self._sync.close()

    @mirrors(_SyncServer.abort_connections)
    def abort_connections(self) -> None:
        self._sync.abort_connections()

    @mirrors(_SyncServer.close_connections, "Sends waiting for space on them wake and raise ``ClosedError``.")
    def close_connections(self) -> None:
        for c in self._conns.values():
            c._wake_for_close()
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
