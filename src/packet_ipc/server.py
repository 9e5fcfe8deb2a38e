"""The server (producer) side: an endpoint with a name, and one :class:`Connection` per accepted client.

A :class:`Server` listens on an ``AF_UNIX`` ``SOCK_SEQPACKET`` socket (by default in a fresh private 0700
directory; a name starting with ``@`` uses Linux's abstract namespace and leaves no file at all).
:meth:`Server.accept` performs the handshake with one client and hands it its own shared-memory ring
(a sealed memfd, never a guessable file). :meth:`Connection.send` writes packets into that ring: it blocks
while the ring is full (the lossless ``"block"`` policy) or, under ``overflow="drop"``, drops what does not fit
and counts it. ``send(None)`` ends the stream.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Literal

from . import _core
from .batch import PacketBatch
from .packet import AsIpcPacket
from .stats import Stats

__all__ = ["Server", "Connection", "transfer_ipc", "Overflow"]

Overflow = Literal["block", "drop"]
_OVERFLOW = {"block": _core.OVERFLOW_BLOCK, "drop": _core.OVERFLOW_DROP}
DEFAULT_CAPACITY = 4 << 20


class Connection:
    """The server's side of one client: its own ring. Created by :meth:`Server.accept`."""

    __slots__ = ("_c", "overflow", "__weakref__")

    def __init__(self, core: _core.Connection, overflow: Overflow) -> None:
        self._c = core
        self.overflow: Overflow = overflow

    def send(self, packets: Sequence[AsIpcPacket] | None, timeout: float | None = None) -> int:
        """Writes ``packets`` (in order) into the client's ring; ``None`` ends the stream.

        Blocks while the ring is full, up to ``timeout`` seconds in total (``None``: forever). Returns the
        number of packets written (under ``overflow="drop"``, those that did not fit are counted as dropped
        and not included). Raises ``ValueError`` before writing anything if a packet is larger than the ring
        or the snaplen, ``TypeError`` for an object without ``.timestamp``/``.data``,
        ``TimeoutError`` (its ``sent`` attribute counts packets already written), ``ConnectionLostError`` if
        the client is gone, ``ClosedError`` after close or end of stream.
        """
        return int(self._c.send(packets, timeout))

    def send_batch(self, batch: PacketBatch, timeout: float | None = None) -> int:
        """Writes a :class:`PacketBatch` (one copy into the ring; adjacent payloads in one ``memcpy``).

        Blocking, return value and errors as :meth:`send`.
        """
        return int(self._c.send_batch(batch, timeout))

    def end(self) -> None:
        """Ends the stream (same as ``send(None)``): the client drains, then receives ``None``."""
        self._c.send(None)

    @property
    def alive(self) -> bool:
        """True while the client is connected (checks the control socket; never blocks)."""
        return bool(self._c.alive())

    @property
    def peer_pid(self) -> int:
        """Process id of the client (from ``SO_PEERCRED`` at accept time)."""
        return int(self._c.info[0])

    @property
    def ring_bytes(self) -> int:
        """Payload capacity of this connection's ring."""
        return int(self._c.info[3])

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return bool(self._c.closed)

    def stats(self) -> Stats:
        """Counters of this connection: sent, dropped, time blocked on a full ring, ring fill."""
        return Stats._from_tuple(self._c.stats())

    def close(self) -> None:
        """Closes the connection. Without a prior ``send(None)`` it still ends the stream cleanly."""
        self._c.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"peer_pid={self.peer_pid}"
        return f"<packet_ipc.Connection {state} overflow={self.overflow!r}>"


class Server:
    """A packet-ipc endpoint. ``server.name`` is all a client needs to connect.

    Parameters: ``name`` (``None``: a fresh private path; a path; or ``"@name"`` for the abstract namespace),
    ``capacity`` (payload bytes of each client's ring, rounded up to a power of two), ``max_packets``
    (descriptors per ring; default ``capacity // 128``), ``linktype`` (pcap LINKTYPE of packets that do not
    carry their own; 1 is Ethernet), ``snaplen`` (largest packet accepted), ``overflow`` (``"block"``:
    lossless, or ``"drop"``: counted drops, never blocks), ``allowed_uids``/``allowed_gids`` (who else may
    connect besides this uid and root), ``allow_any_uid``.
    Raises ``ValueError`` (bad sizes, a name too long for a unix socket), :class:`PacketIpcError` (cannot
    listen, e.g. the path exists).
    """

    def __init__(
        self,
        name: str | os.PathLike[str] | None = None,
        *,
        capacity: int = DEFAULT_CAPACITY,
        max_packets: int = 0,
        linktype: int = 1,
        snaplen: int = 262144,
        overflow: Overflow = "block",
        allowed_uids: Iterable[int] = (),
        allowed_gids: Iterable[int] = (),
        allow_any_uid: bool = False,
    ) -> None:
        if overflow not in _OVERFLOW:
            raise ValueError(f"overflow must be 'block' or 'drop', not {overflow!r}")
        if capacity <= 0 or max_packets < 0 or snaplen <= 0:
            raise ValueError("capacity and snaplen must be > 0, max_packets >= 0")
        self.overflow: Overflow = overflow
        self.linktype = linktype
        self.snaplen = snaplen
        self._s = _core.Server(
            None if name is None else os.fspath(name),
            capacity,
            max_packets,
            linktype,
            snaplen,
            _OVERFLOW[overflow],
            allow_any_uid,
        )
        for uid in allowed_uids:
            self._s.allow_peer(int(uid), -1)
        for gid in allowed_gids:
            self._s.allow_peer(-1, int(gid))
        self.name: str = self._s.name

    def accept(self, timeout: float | None = None) -> Connection:
        """Waits up to ``timeout`` seconds for one client, performs the handshake and returns its connection.

        May be called again for more clients. A client that dies or stalls during its handshake is dropped
        and the wait goes on. Raises ``TimeoutError``, :class:`ProtocolError` (that client spoke the wrong
        version or is not packet-ipc), :class:`PermissionDeniedError` (its uid/gid is not allowed),
        ``ClosedError``; the server stays usable after each.
        """
        return Connection(self._s.accept(timeout), self.overflow)

    def fileno(self) -> int:
        """The listening socket: readable when a client is waiting to be accepted."""
        return int(self._s.fileno())

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return bool(self._s.closed)

    def close(self) -> None:
        """Stops listening and removes the socket and private directory. Accepted connections stay usable."""
        self._s.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<packet_ipc.Server name={self.name!r}{' closed' if self.closed else ''}>"


def transfer_ipc(
    packets: Iterable[AsIpcPacket] | Iterable[PacketBatch],
    connection: Connection,
    *,
    batch_size: int = 256,
    timeout: float | None = None,
) -> int:
    """Sends every packet of an iterable (of packets, or of :class:`PacketBatch`) then ends the stream.

    Packets are grouped into batches of ``batch_size``; batches are sent as they come. Returns the number of
    packets written. Blocks as :meth:`Connection.send` (``timeout`` applies to each batch). The stream is ended
    only when the iterable was exhausted: an exception leaves it open so the caller can decide.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    sent = 0
    pending: list[AsIpcPacket] = []
    for item in packets:
        if isinstance(item, PacketBatch):
            if pending:
                sent += connection.send(pending, timeout)
                pending = []
            sent += connection.send_batch(item, timeout)
            continue
        pending.append(item)
        if len(pending) >= batch_size:
            sent += connection.send(pending, timeout)
            pending = []
    if pending:
        sent += connection.send(pending, timeout)
    connection.send(None)
    return sent
