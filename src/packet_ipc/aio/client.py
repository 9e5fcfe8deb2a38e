"""The client side of :mod:`packet_ipc.aio`: :class:`Client`, connected by ``await Client.connect(name)``."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from types import TracebackType
from typing import Any, Literal, TypeVar

from .. import errors
from ..batch import PacketBatch
from ..client import Client as _SyncClient
from ..client import _Handshake
from ..packet import Packet
from ..stats import Stats
from ._loop import AWAITABLE, DATA, PEER, TIMEOUT, Pacer, mirrors, peer_sent_data, settings, timeout_error
from ._loop import _monotonic, sleep_on

_T = TypeVar("_T")
_RECEIVE_NOTE = AWAITABLE + (
    " ``timeout=0`` never waits. A cancelled call takes no packet (the next receive gets them); "
    "``RuntimeError`` if another coroutine is receiving from this client."
)


class Client(Pacer):
    """The client side for asyncio: ``client = await Client.connect(name)``.

    ``Client(sync_client)`` wraps an already connected :class:`packet_ipc.Client`. Receives are coroutines
    that wait on the ring's eventfd and the control socket through the running loop; ``async for batch in
    client`` yields batches until end of stream. One coroutine receives from a client at a time.
    """

    __slots__ = ("_sync", "name", "__weakref__")

    def __init__(self, client: _SyncClient) -> None:
        if not isinstance(client, _SyncClient):
            raise TypeError("aio.Client wraps a connected packet_ipc.Client: use `await aio.Client.connect(name)`")
        super().__init__()
        self._sync = client
        self.name = client.name

    @classmethod
    def connect(
        cls,
        name: str,
        *,
        timeout: float | None = None,
        busy_poll: bool = False,
        overflow: Literal["block", "drop"] | None = None,
    ) -> _Connecting:
        """Connects to the server named ``name``, waiting up to ``timeout`` seconds for it to accept: the
        asyncio form of the :class:`packet_ipc.Client` constructor (same parameters and errors).

        ``await Client.connect(name)`` gives the client; ``async with Client.connect(name) as client`` also
        closes it. No thread: the C core connects and sends the HELLO without blocking
        (``pipc_client_connect_start``) and the loop waits on the socket for the server's answer. A cancelled
        connect leaves nothing behind (the server counts a failed handshake). When the server's backlog is full
        (no fd tells when it has room) it tries again every 10 ms until the timeout.
        """
        return _Connecting(cls, str(name), timeout, busy_poll, overflow)

    @property
    def sync(self) -> _SyncClient:
        """The wrapped :class:`packet_ipc.Client`."""
        return self._sync

    @mirrors(_SyncClient.receive_batch, _RECEIVE_NOTE)
    async def receive_batch(self, max_packets: int = 1024, timeout: float | None = None) -> PacketBatch | None:
        if not self._busy and _monotonic() - self._ran_since <= settings().YIELD_INTERVAL_S:
            # Fast path: no await before the take, so packets already waiting cost no trip through the loop.
            try:
                return self._sync.receive_batch(max_packets, 0)
            except errors.TimeoutError:
                if timeout == 0:
                    raise
            return await self._receive(self._sync.receive_batch, "receive_batch", max_packets, timeout, False)
        return await self._receive(self._sync.receive_batch, "receive_batch", max_packets, timeout, True)

    @mirrors(_SyncClient.receive_packets, _RECEIVE_NOTE)
    async def receive_packets(self, max_packets: int = 1024, timeout: float | None = None) -> list[Packet] | None:
        if not self._busy and _monotonic() - self._ran_since <= settings().YIELD_INTERVAL_S:
            try:
                return self._sync.receive_packets(max_packets, 0)
            except errors.TimeoutError:
                if timeout == 0:
                    raise
            return await self._receive(self._sync.receive_packets, "receive_packets", max_packets, timeout, False)
        return await self._receive(self._sync.receive_packets, "receive_packets", max_packets, timeout, True)

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
            spin_end = _monotonic() + settings().SPIN_S
            while _monotonic() < spin_end:  # see SPIN_S
                try:
                    return take(max_packets, 0)
                except errors.TimeoutError:
                    pass
            data_fd, sock_fd = self._sync._wait_fds()
            fds = ((data_fd, DATA), (sock_fd, PEER))
            while True:
                why = None
                if self._sync._prepare_wait():  # arms the flag; False: packets, the end or a dead peer are there
                    why = await self._sleep(loop, fds, deadline, self._sync._finish_wait)
                try:
                    return take(max_packets, 0)
                except errors.TimeoutError:
                    if why == TIMEOUT or (deadline is not None and loop.time() >= deadline):
                        raise timeout_error("no packet arrived within the timeout") from None
                    if why is not None and peer_sent_data(sock_fd):  # else the socket would wake us forever
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
    @mirrors(_SyncClient.linktype)
    def linktype(self) -> int:
        return self._sync.linktype

    @property
    @mirrors(_SyncClient.snaplen)
    def snaplen(self) -> int:
        return self._sync.snaplen

    @property
    @mirrors(_SyncClient.closed)
    def closed(self) -> bool:
        return self._sync.closed

    @mirrors(_SyncClient.stats)
    def stats(self) -> Stats:
        return self._sync.stats()

    @mirrors(_SyncClient.fileno)
    def fileno(self) -> int:
        return self._sync.fileno()

    @mirrors(_SyncClient.close, "A receive waiting on this client wakes and raises ``ClosedError``.")
    def close(self) -> None:
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

    __slots__ = ("_cls", "_name", "_timeout", "_busy_poll", "_overflow", "_client", "_coro", "_waiter")

    def __init__(
        self,
        cls: type[Client],
        name: str,
        timeout: float | None,
        busy_poll: bool,
        overflow: Literal["block", "drop"] | None,
    ) -> None:
        self._cls = cls
        self._name = name
        self._timeout = timeout
        self._busy_poll = busy_poll
        self._overflow = overflow
        self._client: Client | None = None
        self._waiter = None
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
        deadline = None if self._timeout is None else loop.time() + self._timeout
        handshake: _Handshake | None = None
        try:
            while (handshake := _SyncClient._start_connect(
                self._name, busy_poll=self._busy_poll, overflow=self._overflow
            )) is None:  # the server's backlog is full
                if deadline is not None and loop.time() >= deadline:
                    raise timeout_error(f"server at {self._name} did not accept in time")
                await asyncio.sleep(0.01)
            while (client := handshake.finish()) is None:
                if await sleep_on(self, loop, ((handshake.fileno(), DATA),), deadline) == TIMEOUT:
                    raise timeout_error(f"server at {self._name} did not accept in time")
            handshake = None  # finished: it belongs to the client now
            return self._cls(client)
        finally:
            if handshake is not None:  # timed out, failed or cancelled: drop the half-open connection
                handshake.cancel()
