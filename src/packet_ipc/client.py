"""The client (consumer) side: connect to a server by name and receive packets with no copy.

A :class:`Client` owns one shared-memory ring fed by one server connection. ``receive_batch`` returns a
columnar :class:`~packet_ipc.PacketBatch` viewing the ring; ``receive_packets`` returns a list of
:class:`~packet_ipc.Packet` viewing it. Both return ``None`` once the server ended the stream (``send(None)``
or a clean close) and everything was drained; if the server vanished instead, the client drains what was
committed and then raises :class:`~packet_ipc.errors.ConnectionLostError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Literal

from . import _core
from .batch import PacketBatch
from .packet import Packet
from .stats import Stats

__all__ = ["Client"]


class Client:
    """Connects to the server named ``name`` (blocking until it accepts, up to ``timeout`` seconds).

    ``busy_poll=True`` spins instead of sleeping while waiting for packets: the lowest latency, at the cost of
    one CPU core. ``overflow`` chooses this client's policy when its ring is full (``"block"``: the server
    waits, lossless; ``"drop"``: the server drops and counts, never slowed by this client); ``None`` takes
    the server's default. Raises :class:`~packet_ipc.errors.ConnectError` (no server at that name, refused),
    :class:`~packet_ipc.errors.PermissionDeniedError` (credentials refused), ``TimeoutError``,
    :class:`~packet_ipc.errors.ProtocolError` (version mismatch or not a packet-ipc server), ``ValueError``
    (a name too long for a unix socket).

    Threads: safe to use from several threads. Receives are serialised (each packet received once); received
    packets may be released from any thread. Each receiving thread must let go of its previous packets before
    it receives again (a receive takes at most half the ring, so two threads holding theirs could hold all of
    it). :meth:`close` from another thread wakes a blocked receive with ``ClosedError``.
    """

    __slots__ = ("_c", "name", "__weakref__")

    def __init__(
        self,
        name: str,
        *,
        timeout: float | None = None,
        busy_poll: bool = False,
        overflow: Literal["block", "drop"] | None = None,
    ) -> None:
        self.name = str(name)
        self._c = _core.Client(self.name, timeout, busy_poll, _overflow_code(overflow))

    @classmethod
    def _from_core(cls, name: str, core: _core.Client) -> Client:
        """A client over an already connected core (see :meth:`_start_connect`)."""
        self = cls.__new__(cls)
        self.name = name
        self._c = core
        return self

    @classmethod
    def _start_connect(
        cls, name: str, *, busy_poll: bool = False, overflow: Literal["block", "drop"] | None = None
    ) -> _Handshake | None:
        """Starts connecting without blocking (for an event loop): the HELLO is sent; None when the server's
        backlog is full (try again a little later). Raises as the constructor."""
        name = str(name)
        pending = _core.PendingClient(name, busy_poll, _overflow_code(overflow))
        return None if pending is None else _Handshake(cls, name, pending)

    # ---- for an event loop (packet_ipc.aio), which waits for packets itself: see pipc_client_prepare_wait ----

    def _prepare_wait(self) -> bool:
        """Arms the data wake-up; True: the caller may sleep on :meth:`_wait_fds`."""
        return bool(self._c.prepare_wait())

    def _wait_fds(self) -> tuple[int, int]:
        """(data eventfd, control socket): readable when packets may be waiting, or the server has gone."""
        data_fd, sock_fd, _ = self._c.fds()
        return data_fd, sock_fd

    def _finish_wait(self) -> None:
        """Disarms the wake-up and drains the eventfd."""
        self._c.finish_wait()

    def receive_batch(self, max_packets: int = 1024, timeout: float | None = None) -> PacketBatch | None:
        """Waits for at least one packet and returns a batch of at most ``max_packets``, viewing the ring.

        Returns ``None`` at end of stream. The batch's ring space is returned when the batch is released
        (``with`` block, ``release()``, or garbage collection) and no packet or view taken from it is alive.
        Raises ``TimeoutError`` (nothing within ``timeout`` seconds), ``ConnectionLostError`` (server gone, all
        committed packets drained), ``ProtocolError`` (corrupt ring), ``ClosedError``.
        """
        return self._c.receive_batch(max_packets, timeout)

    def receive_packets(self, max_packets: int = 1024, timeout: float | None = None) -> list[Packet] | None:
        """Like :meth:`receive_batch`, but returns a list of :class:`Packet` (each viewing the ring).

        Returns ``None`` at end of stream. The ring space of the returned packets is returned when the last of
        them (and of any memoryview of their data) is gone. Raises as :meth:`receive_batch`.
        """
        return self._c.receive_packets(max_packets, timeout)

    def __iter__(self) -> Iterator[PacketBatch]:
        """Yields batches until end of stream (``ConnectionLostError`` if the server vanishes)."""
        while (batch := self._c.receive_batch(1024, None)) is not None:
            yield batch

    @property
    def linktype(self) -> int:
        """The server's default linktype (each packet also carries its own)."""
        return int(self._c.info.linktype)

    @property
    def snaplen(self) -> int:
        """The server's snaplen."""
        return int(self._c.info.snaplen)

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return bool(self._c.closed)

    def stats(self) -> Stats:
        """Counters of this client (received, dropped by the server, time blocked, ring fill)."""
        return Stats._from_tuple(self._c.stats())

    def fileno(self) -> int:
        """An eventfd that becomes readable when packets may be waiting (see :mod:`packet_ipc.aio`)."""
        return int(self._c.fds()[0])

    def close(self) -> None:
        """Disconnects. Packets already received stay readable until they are released."""
        self._c.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<packet_ipc.Client name={self.name!r}{' closed' if self.closed else ''}>"


def _overflow_code(overflow: Literal["block", "drop"] | None) -> int:
    if overflow not in (None, "block", "drop"):
        raise ValueError(f"overflow must be None, 'block' or 'drop', not {overflow!r}")
    return -1 if overflow is None else (_core.OVERFLOW_DROP if overflow == "drop" else _core.OVERFLOW_BLOCK)


class _Handshake:
    """A connect in progress that never blocks (``Client._start_connect``): poll :meth:`fileno` for
    readability, then :meth:`finish`; :meth:`cancel` drops it (so does garbage collection)."""

    __slots__ = ("_cls", "_name", "_pending")

    def __init__(self, cls: type[Client], name: str, pending: _core.PendingClient) -> None:
        self._cls = cls
        self._name = name
        self._pending = pending

    def fileno(self) -> int:
        """The socket: readable when the server answered (or went away)."""
        return self._pending.fileno()

    def finish(self) -> Client | None:
        """The connected :class:`Client`, or None while the server has not answered. Raises as the
        constructor; after a result or an error the handshake is over."""
        core = self._pending.finish()
        return None if core is None else self._cls._from_core(self._name, core)

    def cancel(self) -> None:
        """Drops the connect (closes its socket; the server counts a failed handshake)."""
        self._pending.cancel()
