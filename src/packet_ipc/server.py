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
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from . import _core
from .batch import PacketBatch
from .endpoint import StatsService, remove_stale_socket, stats_address, sweep_stale_endpoints, unix_address_call
from .errors import ClosedError, ConnectionLostError
from .packet import AsIpcPacket
from .stats import Stats

Reservation = _core.Reservation

__all__ = [
    "Server",
    "Connection",
    "Reservation",
    "ServerStats",
    "transfer_ipc",
    "Overflow",
    "Distribution",
    "stats_address",
    "sweep_stale_endpoints",
    "remove_stale_socket",
    "unix_address_call",
]

Overflow = Literal["block", "drop"]
Distribution = Literal["flow", "round_robin", "broadcast"]
_OVERFLOW = {"block": _core.OVERFLOW_BLOCK, "drop": _core.OVERFLOW_DROP}
_OVERFLOW_NAME: dict[int, Overflow] = {_core.OVERFLOW_BLOCK: "block", _core.OVERFLOW_DROP: "drop"}
_DISTRIBUTION = {"flow": _core.DISTRIBUTION_FLOW, "round_robin": _core.DISTRIBUTION_ROUND_ROBIN,
                 "broadcast": _core.DISTRIBUTION_BROADCAST}
DEFAULT_CAPACITY = _core.DEFAULT_CAPACITY_BYTES


@dataclass(frozen=True)
class ServerStats:
    """Counters of a server: its totals and one :class:`Stats` per connection (dead ones included)."""

    name: str
    distribution: str
    workers: int
    sent_packets: int
    sent_bytes: int
    dropped_packets: int
    dropped_bytes: int
    lost_packets: int
    connections: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # sections added by Server.add_stats_source
    ended: bool = False  # the stream was ended (send(None)) for every worker

    def as_dict(self) -> dict[str, Any]:
        """The counters as a plain dict (JSON-friendly)."""
        return {
            "name": self.name,
            "distribution": self.distribution,
            "workers": self.workers,
            "sent_packets": self.sent_packets,
            "sent_bytes": self.sent_bytes,
            "dropped_packets": self.dropped_packets,
            "dropped_bytes": self.dropped_bytes,
            "lost_packets": self.lost_packets,
            "connections": self.connections,
            "ended": self.ended,
            **self.extra,
        }


class Connection:
    """The server's side of one client: its own ring. Created by :meth:`Server.accept`.

    Threads: safe to use from several threads. Sends are serialised (each packet written once, each thread's
    packets in order); :meth:`close` from another thread wakes a blocked send with ``ClosedError``.
    """

    __slots__ = ("_c", "overflow", "index", "__weakref__")

    def __init__(self, core: _core.Connection, index: int = 0) -> None:
        self._c = core
        self.overflow: Overflow = _OVERFLOW_NAME[core.info.overflow]
        self.index = index  # order of acceptance on its server

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

    def send_batch_indices(self, batch: PacketBatch, indices: bytes | None, timeout: float | None = None) -> int:
        """Writes the packets of ``batch`` at ``indices`` (uint32 values, in that order); as :meth:`send`."""
        return int(self._c.send_batch(batch, timeout, indices))

    def reserve(self, n_packets: int, n_bytes: int, timeout: float | None = None) -> Reservation | None:
        """Zero-copy send: reserves ``n_packets`` descriptors and ``n_bytes`` payload bytes in the client's ring.

        Build the packets in place through the returned :class:`Reservation`'s writable memoryviews: ``data``
        (packet i's bytes right after packet i-1's) and the columns ``ts_ns``, ``caplen``, ``origlen`` (0:
        ``caplen``), ``ifindex``, ``linktype`` (``0xffffffff``: the server's), then ``commit(n)`` publishes the
        first ``n`` packets; the client sees nothing before. ``abandon()``, leaving a ``with`` block without a
        commit, dropping the object, closing the connection or dying leave the ring as it was. At most half
        the ring; other sends (any thread) wait for the commit. Waits for space as :meth:`send` (``timeout``);
        under ``overflow="drop"`` it never waits and returns ``None`` when the ring is full (the packets and
        bytes are counted as dropped). Errors as :meth:`send`; ``ValueError`` for more than half the ring.
        """
        return self._c.reserve(n_packets, n_bytes, timeout)

    def end(self) -> None:
        """Ends the stream (same as ``send(None)``): the client drains, then receives ``None``."""
        self._c.send(None)

    def abort(self) -> None:
        """Aborts the stream because the server failed mid-way: the client drains what was sent and then gets
        :class:`ConnectionLostError` ("the server aborted the stream"), never a clean end. No-op after
        ``send(None)``."""
        self._c.abort()

    @property
    def alive(self) -> bool:
        """True while the client is connected (checks the control socket; never blocks)."""
        return bool(self._c.alive())

    @property
    def peer_pid(self) -> int:
        """Process id of the client (from ``SO_PEERCRED`` at accept time)."""
        return int(self._c.info.peer_pid)

    @property
    def ring_bytes(self) -> int:
        """Payload capacity of this connection's ring."""
        return int(self._c.info.ring_bytes)

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

    # ---- for an event loop (packet_ipc.aio), which waits for ring space itself: see pipc_conn_prepare_wait ----

    def _prepare_wait(self, need_bytes: int) -> bool:
        """Arms the space wake-up for ``need_bytes``; True: the caller may sleep on :meth:`_wait_fds`."""
        return bool(self._c.prepare_wait(need_bytes))

    def _wait_fds(self) -> tuple[int, int]:
        """(space eventfd, control socket): readable when the client freed space, or has gone."""
        return self._c.fds()

    def _finish_wait(self) -> None:
        """Disarms the wake-up and drains the eventfd (after the wait, whatever woke it)."""
        self._c.finish_wait()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"peer_pid={self.peer_pid}"
        return f"<packet_ipc.Connection {state} overflow={self.overflow!r}>"


class Server:
    """A packet-ipc endpoint. ``server.name`` is all a client needs to connect.

    Threads: safe to use from several threads. Server-level sends are serialised, and so are accepts;
    :meth:`close` from another thread wakes a blocked :meth:`accept` with ``ClosedError``.

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
        distribution: Distribution = "flow",
        stats_socket: bool = True,
    ) -> None:
        if overflow not in _OVERFLOW:
            raise ValueError(f"overflow must be 'block' or 'drop', not {overflow!r}")
        if distribution not in ("flow", "round_robin", "broadcast"):
            raise ValueError(f"distribution must be 'flow', 'round_robin' or 'broadcast', not {distribution!r}")
        self.distribution: Distribution = distribution
        if capacity <= 0 or max_packets < 0 or snaplen <= 0:
            raise ValueError("capacity and snaplen must be > 0, max_packets >= 0")
        self.overflow: Overflow = overflow
        self.linktype = linktype
        if name is None:
            sweep_stale_endpoints()
        else:
            remove_stale_socket(os.fspath(name))
        self.snaplen = snaplen
        self._s = _core.Server(
            None if name is None else os.fspath(name),
            capacity,
            max_packets,
            linktype,
            snaplen,
            _OVERFLOW[overflow],
            allow_any_uid,
            _DISTRIBUTION[distribution],
        )
        for uid in allowed_uids:
            self._s.allow_peer(int(uid), -1)
        for gid in allowed_gids:
            self._s.allow_peer(-1, int(gid))
        self.name: str = self._s.name
        self._lost_at_close = 0
        self._all: list[Connection] = []  # every accepted connection, by acceptance index (as C counts them)
        self._stats_sources: dict[str, Callable[[], Any]] = {}
        self._ended = False
        self._connections_closed = False
        self._closed_stats: dict[int, tuple[Stats, dict[str, Any]]] = {}
        self._stats_service = StatsService(self.name, lambda: self.stats().as_dict()) if stats_socket else None

    def accept(self, timeout: float | None = None) -> Connection:
        """Waits up to ``timeout`` seconds for one client, performs the handshake and returns its connection.

        May be called again for more clients; each is also one of the server's workers for :meth:`send`. A
        client that dies or stalls during its handshake is dropped and the wait goes on. Raises
        ``TimeoutError``, :class:`ProtocolError` (that client spoke the wrong version or is not packet-ipc),
        :class:`PermissionDeniedError` (its uid/gid is not allowed), ``ClosedError``; the server stays usable
        after each.
        """
        conn = Connection(self._s.accept(timeout), len(self._all))
        self._all.append(conn)
        return conn

    # ---- many workers: the distribution itself is in C (csrc/distribute.c) ----------------------------

    @property
    def connections(self) -> list[Connection]:
        """The live workers, in order of acceptance (dead or closed ones are dropped as found)."""
        if self._s.closed:  # its connections outlive it: the ones still connected
            return [c for c in self._all if not c.closed and c.alive]
        return [self._all[i] for i in self._s.workers()]

    def wait_for_clients(self, n: int, timeout: float | None = None) -> list[Connection]:
        """Accepts clients until ``n`` are connected (within ``timeout`` seconds in total); returns them.

        Raises ``ValueError`` for a negative ``n`` or ``timeout``, ``TimeoutError`` as :meth:`accept`.
        """
        if n < 0:
            raise ValueError(f"wait_for_clients needs a number of clients >= 0, not {n}")
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be None or >= 0, not {timeout}")
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(self._s.workers()) < n:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self.accept(left)
        return self.connections

    def send(self, packets: Sequence[AsIpcPacket] | None, timeout: float | None = None) -> int:
        """Distributes packets over every live connection by the server's ``distribution``; ``None`` ends
        every stream.

        ``"flow"``: both directions of a flow go to the same worker (symmetric 5-tuple hash), fragments with
        their datagram; ``"round_robin"``: the whole call goes to the next worker; ``"broadcast"``: every
        worker gets every packet. Blocks like :meth:`Connection.send` on a worker whose policy is
        ``"block"``. A worker that has died is dropped: its share of flows moves to the live ones, and packets
        of this call not yet written to it go to them instead (what was in its ring is counted as lost).
        Safe to call from several threads (calls are serialised). Returns the number of packets written
        (under broadcast, counted once per packet). Raises :class:`ConnectionLostError` when no worker is
        left, ``TimeoutError`` (its ``sent`` counts what was written) as :meth:`Connection.send`,
        ``ClosedError`` after :meth:`close`.
        """
        self._check_open()
        if packets is None:
            self._s.end()
            self._ended = True
            return 0
        return int(self._s.send(packets, timeout))

    def send_batch(self, batch: PacketBatch, timeout: float | None = None) -> int:
        """Distributes a :class:`PacketBatch` as :meth:`send` does (one copy into each ring it reaches)."""
        self._check_open()
        return int(self._s.send_batch(batch, timeout))

    def _check_open(self) -> None:
        if self._s.closed:
            raise ClosedError(9, f"server {self.name} is closed")
        if self._connections_closed and all(c.closed for c in self._all):  # closed by the caller, not workers that left
            raise ClosedError(9, f"server {self.name}: its connections were closed (close_connections)")

    def check_workers(self) -> list[Connection]:
        """Looks at every live worker now (one non-blocking check of its socket each) and drops those that
        have gone: their flows move to the others. Returns the dropped connections. ``send`` does this by
        itself at most every 50 ms, and always at end of stream; call it to react at once."""
        before = self._s.workers()
        self._s.check_workers()
        after = set(self._s.workers())
        return [self._all[i] for i in before if i not in after]

    # ---- for an event loop (packet_ipc.aio): calls that never wait --------------------------------------

    def _send_nowait(
        self, items: Sequence[AsIpcPacket] | PacketBatch, indices: bytes | None = None
    ) -> tuple[int, bytes, Connection | None, int]:
        """One try at distributing ``items`` (those at ``indices``, uint32 positions): never waits.

        Returns (packets written, positions not written as uint32 bytes, the connection whose full ring
        stopped it or None, the bytes its next packet needs). Errors carry ``sent`` (and ``unsent`` when some
        were written: every worker died mid-call; without it none was). Not under
        broadcast (a part of a broadcast cannot be resumed).
        """
        self._check_open()
        sent, unsent, stalled, need = self._s.send_nowait(items, indices)
        return int(sent), unsent, (self._all[stalled] if stalled >= 0 else None), int(need)

    def _pending_handshake_fd(self) -> int:
        """The socket of a client whose HELLO an ``accept(0)`` is waiting for (readable when it arrives), or -1."""
        return int(self._s.pending_fd()) if not self._s.closed else -1

    def stats(self) -> ServerStats:
        """Totals and per-connection counters (live and dead connections)."""
        live = set(self._s.workers()) if not self._s.closed else set()
        per = []
        totals = [0, 0, 0, 0]
        for conn in self._all:
            if conn.closed:
                if conn.index not in self._closed_stats:
                    continue
                st, d = self._closed_stats[conn.index]  # closed by close_connections(): its last counters
            else:
                st = conn.stats()
                d = st.as_dict()
                d.update(index=conn.index, peer_pid=conn.peer_pid, overflow=conn.overflow, live=conn.index in live)
            totals[0] += st.packets
            totals[1] += st.bytes
            totals[2] += st.dropped_packets
            totals[3] += st.dropped_bytes
            per.append(d)
        extra = {key: source() for key, source in list(self._stats_sources.items())}
        lost = self._s.stats()["lost_packets"] if not self._s.closed else self._lost_at_close
        return ServerStats(
            self.name, self.distribution, len(live), totals[0], totals[1], totals[2], totals[3], lost, per, extra,
            self._ended,
        )

    def add_stats_source(self, key: str, source: Callable[[], Any]) -> None:
        """Adds a section ``key`` to :meth:`stats` (and ``packet-ipc stats NAME``): ``source()``'s JSON-friendly
        result, called on every query, possibly from the statistics thread (e.g. a live capture's counters)."""
        if key in ServerStats.__dataclass_fields__:
            raise ValueError(f"{key!r} is a field of ServerStats already")
        self._stats_sources[key] = source

    def fileno(self) -> int:
        """The listening socket: readable when a client is waiting to be accepted."""
        return int(self._s.fileno())

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return bool(self._s.closed)

    def close(self) -> None:
        """Stops listening and removes the socket and private directory. Accepted connections stay usable."""
        if self._stats_service is not None:
            self._stats_service.close()  # watchers get a last document saying whether the stream ended
            self._stats_service = None
        if not self._s.closed:
            self._lost_at_close = self._s.stats()["lost_packets"]
        self._s.close()

    def abort_connections(self) -> None:
        """Aborts every live stream (see :meth:`Connection.abort`): for a server that cannot finish."""
        if not self._s.closed:
            self._s.abort()
            return
        for conn in self._all:
            try:
                conn.abort()
            except (ConnectionLostError, ClosedError):
                pass

    def close_connections(self) -> None:
        """Closes every accepted connection (each client sees end of stream after draining)."""
        live = set(self._s.workers()) if not self._s.closed else set()
        for conn in self._all:
            if not conn.closed:  # keep its counters: stats() after the end still shows what each worker got
                st = conn.stats()
                d = st.as_dict()
                d.update(index=conn.index, peer_pid=conn.peer_pid, overflow=conn.overflow, live=conn.index in live)
                self._closed_stats[conn.index] = (st, d)
            conn.close()
        self._connections_closed = True

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
