"""asyncio API: :mod:`packet_ipc` for coroutines, name for name (as ``zmq.asyncio`` mirrors ``zmq``).

Every call that blocks in :mod:`packet_ipc` is a coroutine here (``await server.accept()``,
``await conn.send(...)``, ``await server.send(...)``, ``await client.receive_batch()``, ``async for batch in
client``); the others keep their plain form, and :class:`PacketBatch` is the same class (it never blocks).
tests/test_aio_contract.py checks the mirror name by name. Waiting plugs into the running event loop with
``loop.add_reader`` on the peer's eventfd *and* its control socket (so a dead peer wakes the waiter too),
following the ring's own protocol: try without blocking; else arm the waiting flag (``prepare_wait``), sleep
only if it says so, disarm (``finish_wait``) and try again (after a bounded spin of :data:`SPIN_S`, as the C
core does). No thread is used, for the handshakes neither: the C core connects in steps and keeps a half-done
handshake, and the loop waits on the socket it names. A stream that never stalls yields to the loop every
:data:`YIELD_INTERVAL_S`, so other tasks keep running.

Cancellation (``task.cancel()``, ``asyncio.timeout()``) leaves every object consistent. A receive takes packets
only after its last ``await``, synchronously, so a cancelled receive took nothing: the next receive gets them.
A send writes packets in order; when it is cancelled (or times out, or the client dies) the first
``conn.last_send_progress`` packets of that call are in the ring and none of the others: resume with
``packets[conn.last_send_progress:]``, nothing is lost or duplicated. A server-level send says which packets
it did not write in ``server.last_send_unsent``.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Coroutine, Iterable
from typing import Any

from .. import _core
from ..batch import PacketBatch
from ..packet import AsIpcPacket, Packet

__all__ = ["Server", "Connection", "Client", "PacketBatch", "Packet", "transfer_ipc"]

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

from .client import Client  # noqa: E402  (after the constants the submodules read)
from .server import Connection, Server, _BatchWriter, _PacketsWriter  # noqa: E402


def transfer_ipc(
    packets: AsyncIterable[AsIpcPacket] | AsyncIterable[PacketBatch] | Iterable[AsIpcPacket] | Iterable[PacketBatch],
    connection: Connection,
    *,
    batch_size: int = 256,
    timeout: float | None = None,
) -> Coroutine[Any, Any, int]:
    """Sends every packet of an async or sync iterable (of packets, or of :class:`PacketBatch`), then ends the
    stream: :func:`packet_ipc.transfer_ipc` for coroutines.

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
    conn = connection.sync

    async def push(item: Any) -> None:
        nonlocal sent, pending
        if isinstance(item, PacketBatch):
            if pending:
                batch, pending = pending, []
                sent += await connection._send(_PacketsWriter(conn, batch), timeout, sent)
            sent += await connection._send(_BatchWriter(conn, item, None), timeout, sent)
            return
        pending.append(item)
        if len(pending) >= batch_size:
            batch, pending = pending, []
            sent += await connection._send(_PacketsWriter(conn, batch), timeout, sent)

    if isinstance(packets, AsyncIterable):
        async for item in packets:
            await push(item)
    else:
        for item in packets:
            await push(item)
    if pending:
        sent += await connection._send(_PacketsWriter(conn, pending), timeout, sent)
    await connection.send(None)
    connection.last_send_progress = sent
    return sent
