"""The server (producer) side: an endpoint with a name, and one :class:`Connection` per accepted client.

A :class:`Server` listens on an ``AF_UNIX`` ``SOCK_SEQPACKET`` socket (by default in a fresh private 0700
directory; a name starting with ``@`` uses Linux's abstract namespace and leaves no file at all).
:meth:`Server.accept` performs the handshake with one client and hands it its own shared-memory ring
(a sealed memfd, never a guessable file). :meth:`Connection.send` writes packets into that ring: it blocks
while the ring is full (the lossless ``"block"`` policy) or, under ``overflow="drop"``, drops what does not fit
and counts it. ``send(None)`` ends the stream.
"""

from __future__ import annotations

import array
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from . import _core
from .batch import PacketBatch
from .endpoint import StatsService, remove_stale_socket, stats_address, sweep_stale_endpoints, unix_address_call
from .errors import ClosedError, ConnectionLostError
from .packet import AsIpcPacket
from .stats import Stats

__all__ = [
    "Server",
    "Connection",
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
DEFAULT_CAPACITY = 4 << 20
FLOW_BUCKETS = 4096  # flow hash -> bucket -> worker: only a leaving/joining worker's share of flows moves
LIVENESS_CHECK_S = 0.05  # how often server.send looks for workers that died while it was not blocked on them


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
        }


class Connection:
    """The server's side of one client: its own ring. Created by :meth:`Server.accept`."""

    __slots__ = ("_c", "overflow", "index", "__weakref__")

    def __init__(self, core: _core.Connection, index: int = 0) -> None:
        self._c = core
        self.overflow: Overflow = _OVERFLOW_NAME[core.info[1]]
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
        )
        for uid in allowed_uids:
            self._s.allow_peer(int(uid), -1)
        for gid in allowed_gids:
            self._s.allow_peer(-1, int(gid))
        self.name: str = self._s.name
        self._lock = threading.RLock()
        self._all: list[Connection] = []
        self._live: list[Connection] = []
        self._table = bytearray(2 * FLOW_BUCKETS)
        # where each datagram's later fragments go (csrc/flowhash.h: pipc_frag_table); 8-byte aligned
        self._fragments = memoryview(array.array("Q", bytes(_core.FRAG_TABLE_BYTES))).cast("B")
        self._rr = 0
        self._lost = 0
        self._last_liveness = 0.0
        self._ended = False
        self._connections_closed = False
        self._closed_stats: dict[int, tuple[Stats, dict[str, Any]]] = {}
        self._stats_service = StatsService(self.name, lambda: self.stats().as_dict()) if stats_socket else None

    def accept(self, timeout: float | None = None) -> Connection:
        """Waits up to ``timeout`` seconds for one client, performs the handshake and returns its connection.

        May be called again for more clients. A client that dies or stalls during its handshake is dropped
        and the wait goes on. Raises ``TimeoutError``, :class:`ProtocolError` (that client spoke the wrong
        version or is not packet-ipc), :class:`PermissionDeniedError` (its uid/gid is not allowed),
        ``ClosedError``; the server stays usable after each.
        """
        with self._lock:
            conn = Connection(self._s.accept(timeout), len(self._all))
            self._all.append(conn)
            self._live.append(conn)
            self._rebalance_join(conn)
        return conn

    # ---- many workers --------------------------------------------------------------------------------

    @property
    def connections(self) -> list[Connection]:
        """The live connections, in order of acceptance (dead or closed ones are dropped as found)."""
        return list(self._live)

    def wait_for_clients(self, n: int, timeout: float | None = None) -> list[Connection]:
        """Accepts clients until ``n`` are connected (within ``timeout`` seconds in total); returns them.

        Raises ``ValueError`` for ``n`` < 0 or a negative ``timeout``, ``TimeoutError`` when they do not come.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"wait_for_clients needs a number of clients >= 0, not {n!r}")
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be None or >= 0 seconds, not {timeout!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(self._live) < n:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self.accept(left)
        return self.connections

    def send(self, packets: Sequence[AsIpcPacket] | None, timeout: float | None = None) -> int:
        """Distributes packets over every live connection by the server's ``distribution``; ``None`` ends
        every stream.

        ``"flow"``: both directions of a flow go to the same worker (symmetric 5-tuple hash, computed in C);
        ``"round_robin"``: the whole call goes to the next worker; ``"broadcast"``: every worker gets every
        packet. Blocks like :meth:`Connection.send` on a worker whose policy is ``"block"``. A worker that
        has died is dropped: its share of flows moves to the live ones, and packets of this call not yet
        written to it go to them instead (what was in its ring is counted as lost). Returns the number of
        packets written (under broadcast, counted once per packet). Raises :class:`ConnectionLostError` when
        no worker is left, :class:`ClosedError` when none is left because this server was closed (:meth:`close`
        with no connection, or :meth:`close_connections`), ``TimeoutError`` as :meth:`Connection.send`.
        """
        if packets is None:
            return self._end_all()
        return self.send_batch(PacketBatch.from_packets(packets, self.linktype), timeout)

    def send_batch(self, batch: PacketBatch, timeout: float | None = None) -> int:
        """Distributes a :class:`PacketBatch` as :meth:`send` does (one copy into each ring it reaches)."""
        self._check_liveness()
        if self.distribution == "broadcast":
            return self._broadcast(batch, timeout)
        if self.distribution == "round_robin":
            return self._round_robin(batch, timeout)
        return self._by_flow(batch, None, timeout)

    def _by_flow(self, batch: PacketBatch, subset: bytes | None, timeout: float | None) -> int:
        live = self._require_live()
        if len(live) == 1:  # one worker owns every flow: no hashing needed
            written, rest = self._send_part(live[0], batch, subset, timeout)
            if rest:
                return written + self._by_flow(batch, _pack(rest), timeout)
            return written
        parts = _core.partition_by_flow(batch, self._table, len(live), self.linktype, self._fragments)
        if subset is not None:  # re-distribution of one dead worker's remainder: keep only those packets
            wanted = set(memoryview(subset).cast("I"))
            parts = [_select(p, wanted) for p in parts]
        sent = 0
        retry: list[int] = []
        for conn, part in zip(live, parts):
            if not part:
                continue
            written, lost_rest = self._send_part(conn, batch, part, timeout)
            sent += written
            if lost_rest is not None:
                retry.extend(lost_rest)
        if retry:  # packets that were bound for a worker that died: the live ones take them
            sent += self._by_flow(batch, _pack(retry), timeout)
        return sent

    def _round_robin(self, batch: PacketBatch, timeout: float | None) -> int:
        written, part = 0, None
        while True:  # the whole batch to the next live worker; if it dies mid-way, the rest to the next
            live = self._require_live()
            conn = live[self._rr % len(live)]
            self._rr += 1
            more, rest = self._send_part(conn, batch, part, timeout)
            written += more
            if not rest:
                return written
            part = _pack(rest)

    def _broadcast(self, batch: PacketBatch, timeout: float | None) -> int:
        live = self._require_live()
        for conn in live:
            self._send_part(conn, batch, None, timeout)  # a dead worker just leaves the set
        return len(batch)

    def _send_part(
        self, conn: Connection, batch: PacketBatch, part: bytes | None, timeout: float | None
    ) -> tuple[int, list[int] | None]:
        """Sends batch[part] to conn. Returns (written, None), or (written, unsent indices) if conn died."""
        try:
            return conn.send_batch_indices(batch, part, timeout), None
        except ConnectionLostError as e:
            written = getattr(e, "sent", 0)
            self._drop(conn)
            indices = list(memoryview(part).cast("I")) if part is not None else list(range(len(batch)))
            return written, indices[written:]

    def _require_live(self) -> list[Connection]:
        live = list(self._live)  # a snapshot: a worker found dead mid-send leaves self._live, not this list
        if not live:
            if self._s.closed or self._connections_closed:  # the caller closed it: not a worker that left
                raise ClosedError(9, "server is closed: no connection is left to send to")
            raise ConnectionLostError(104, "no live worker is connected to this server")
        return live

    def _check_liveness(self) -> None:
        # A dead worker is noticed at once when a send must wait on it; otherwise at most every
        # LIVENESS_CHECK_S, so that the fast path makes no system call per batch.
        if time.monotonic() - self._last_liveness >= LIVENESS_CHECK_S:
            self.check_workers()

    def check_workers(self) -> list[Connection]:
        """Looks at every live worker now (one non-blocking check of its socket each) and drops those that
        have gone: their flows move to the others. Returns the dropped connections. ``send`` does this by
        itself at most every 50 ms, and always at end of stream; call it to react at once."""
        self._last_liveness = time.monotonic()
        gone = [conn for conn in list(self._live) if not conn.alive]
        for conn in gone:
            self._drop(conn)
        return gone

    def _drop(self, conn: Connection) -> None:
        with self._lock:
            if conn not in self._live:
                return
            self._lost += conn.stats().ring_used_slots
            position = self._live.index(conn)
            self._live.remove(conn)
            self._rebalance_leave(position)

    def _rebalance_join(self, conn: Connection) -> None:
        """A new worker takes every n-th bucket of each existing worker: 1/n of everyone's flows, no more."""
        n = len(self._live)
        table = memoryview(self._table).cast("H")
        if n == 1:
            for b in range(FLOW_BUCKETS):
                table[b] = 0
            return
        seen = [0] * n
        for b in range(FLOW_BUCKETS):
            w = table[b]
            seen[w] += 1
            if seen[w] % n == 0:
                table[b] = n - 1

    def _rebalance_leave(self, position: int) -> None:
        """The leaving worker's buckets go round-robin to the survivors; indices above it shift down."""
        n = len(self._live)
        table = memoryview(self._table).cast("H")
        k = 0
        for b in range(FLOW_BUCKETS):
            w = table[b]
            if w == position:
                table[b] = k % n if n else 0
                k += 1
            elif w > position:
                table[b] = w - 1

    def _end_all(self) -> int:
        self.check_workers()  # what went to a worker that died unnoticed is counted as lost, not ended
        for conn in list(self._live):
            try:
                conn.end()
            except ConnectionLostError:
                self._drop(conn)
        self._ended = True
        return 0

    def stats(self) -> ServerStats:
        """Totals and per-connection counters (live and dead connections)."""
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
                d.update(index=conn.index, peer_pid=conn.peer_pid, overflow=conn.overflow, live=conn in self._live)
            totals[0] += st.packets
            totals[1] += st.bytes
            totals[2] += st.dropped_packets
            totals[3] += st.dropped_bytes
            per.append(d)
        return ServerStats(
            self.name, self.distribution, len(self._live), totals[0], totals[1], totals[2], totals[3], self._lost, per,
            self._ended,
        )

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
            self._stats_service.close()
            self._stats_service = None
        self._s.close()

    def abort_connections(self) -> None:
        """Aborts every live stream (see :meth:`Connection.abort`): for a server that cannot finish."""
        for conn in list(self._live):
            try:
                conn.abort()
            except (ConnectionLostError, ClosedError):
                pass

    def close_connections(self) -> None:
        """Closes every accepted connection (each client sees end of stream after draining)."""
        for conn in self._all:
            if not conn.closed:  # keep its counters: stats() after the end still shows what each worker got
                st = conn.stats()
                d = st.as_dict()
                d.update(index=conn.index, peer_pid=conn.peer_pid, overflow=conn.overflow, live=conn in self._live)
                self._closed_stats[conn.index] = (st, d)
            conn.close()
        self._live.clear()
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


def _pack(indices: list[int]) -> bytes:
    return array.array("I", indices).tobytes()


def _select(part: bytes, wanted: set[int]) -> bytes:
    return _pack([i for i in memoryview(part).cast("I") if i in wanted])
