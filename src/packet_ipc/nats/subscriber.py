"""``Subscriber``: a packet-ipc server for local workers, fed from durable pull consumers of partition streams.

One task per partition handles that partition's messages strictly in order (the consumer has
``max_ack_pending=1``): it parses each strictly, writes its packets into the local rings through the server's
distribution (flow, round robin or broadcast; the server's own flow hash and fragment table) and only then
acknowledges it. The request for the next message leaves with that ack, in the same socket write, and the
server answers it once the ack is processed: no round trip per message besides the delivery. A crash between a
commit and its ack leaves exactly that one message to be delivered again after ``ack_wait``: a restart with
the same durable resumes there, and counts the packets of every redelivered message (``redelivered_packets``);
a message whose ack was lost, delivered again to the subscriber that committed it, is acknowledged again and
skipped. A message that is not a valid packet-ipc message is counted, terminated on the server (never
redelivered) and never reaches a worker.

Without ``follow`` the local stream ends once every partition read has delivered the end-of-stream marker of
``publishers`` publishers; with ``follow`` it runs until :meth:`Subscriber.stop`. With ``group`` the partitions
are shared with the other subscribers of that group through leases (see :mod:`packet_ipc.nats.group`).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ..aio import Server as AioServer
from ..server import DEFAULT_CAPACITY
from .common import NatsError, PartitionError, connect, stream_name, stream_partitions, subject_name, check_prefix
from .wire import KIND_END, WireFormatError, decode

__all__ = ["Subscriber", "SubscribeSummary", "parse_partitions", "DEFAULT_ACK_WAIT_S"]

DEFAULT_ACK_WAIT_S = 10.0
FETCH_WAIT_S = 1.0
STREAM_WAIT_S = 30.0
INACTIVE_S = 300.0
"""A consumer of a subscriber without ``durable`` is deleted by the server after this long without use."""


def parse_partitions(text: str | Sequence[int] | None) -> list[int] | None:
    """``"all"``/None -> None (every partition); ``"0,2,5"`` or a list -> sorted distinct ints. Raises
    :class:`PartitionError` for anything else."""
    if text is None or text == "all":
        return None
    if isinstance(text, str):
        try:
            items = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise PartitionError(f"partitions must be 'all' or numbers like 0,2,5, not {text!r}") from None
    else:
        items = [int(x) for x in text]
    if not items or any(x < 0 for x in items):
        raise PartitionError(f"partitions must be 'all' or non-negative numbers, not {text!r}")
    return sorted(set(items))


@dataclass
class SubscribeSummary:
    """What a :class:`Subscriber` did (totals and per partition)."""

    name: str
    packets: int = 0
    bytes: int = 0
    messages: int = 0
    redelivered_messages: int = 0
    redelivered_packets: int = 0
    corrupt_messages: int = 0
    partition_packets: dict[int, int] = field(default_factory=dict)
    ended_partitions: list[int] = field(default_factory=list)
    taken_over: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The summary as a plain dict (JSON-friendly)."""
        return asdict(self)


class Subscriber:
    """A local packet-ipc server (``name``; ``workers`` clients awaited) fed from partition streams.

    ``nats``: URL(s); ``stream``: the prefix; ``partitions``: ``"all"``, a list, or ``"0,3"``; ``durable``:
    the consumer name to resume from (None: an ephemeral consumer, starting at the beginning); ``follow``:
    keep running after the end-of-stream markers; ``group``: share the partitions with other subscribers of
    that group; ``publishers``: end-of-stream markers (from distinct publishers) that end a partition.
    ``await subscriber.run()`` returns a :class:`SubscribeSummary`. Raises :class:`NatsUnreachableError`,
    :class:`PartitionError`, :class:`StreamMismatchError`, :class:`NatsError`, and the local server's errors.
    """

    def __init__(
        self,
        *,
        nats: str | list[str],
        stream: str,
        partitions: str | Sequence[int] | None = "all",
        name: str | None = None,
        workers: int = 1,
        distribution: Literal["flow", "round_robin", "broadcast"] = "flow",
        durable: str | None = None,
        follow: bool = False,
        group: str | None = None,
        publishers: int = 1,
        capacity: int = DEFAULT_CAPACITY,
        ack_wait: float = DEFAULT_ACK_WAIT_S,
        lease: float = 6.0,
        connect_timeout: float = 5.0,
        accept_timeout: float | None = 60.0,
        stream_wait: float = STREAM_WAIT_S,
    ) -> None:
        check_prefix(stream)
        if workers < 1 or publishers < 1:
            raise ValueError("workers and publishers must be >= 1")
        if distribution not in ("flow", "round_robin", "broadcast"):
            raise ValueError(f"distribution must be 'flow', 'round_robin' or 'broadcast', not {distribution!r}")
        if durable is not None:
            check_prefix(durable)
        if group is not None:
            check_prefix(group)
        if ack_wait <= 0 or lease <= 0:
            raise ValueError("ack_wait and lease must be > 0")
        self.nats, self.stream, self.workers, self.distribution = nats, stream, workers, distribution
        self.wanted = parse_partitions(partitions)
        # Without a durable, a private consumer name all the same: a named consumer is replicated like its
        # stream and outlives the loss of a server (an ephemeral one is R1 and would vanish with its node,
        # leaving its partition stuck); it is deleted on exit, and by the server after INACTIVE_S otherwise.
        self.durable = durable or group or f"pipc-{uuid.uuid4().hex[:16]}"
        self._private = durable is None and group is None
        self.follow, self.group, self.publishers = follow, group, publishers
        self.capacity, self.ack_wait, self.lease = capacity, ack_wait, lease
        self.connect_timeout, self.accept_timeout, self.stream_wait = connect_timeout, accept_timeout, stream_wait
        self.server = AioServer(name, capacity=capacity, distribution=distribution)
        self.name = self.server.name
        self.summary = SubscribeSummary(self.name)
        self.partitions: list[int] = []
        self._send_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._done: set[int] = set()
        self._eos: dict[int, set[str]] = {}
        self._committed: dict[int, int] = {}  # stream sequence of the last message committed, per partition
        self._committing: dict[int, Any] = {}  # the message being written into the rings, per partition
        self._js: Any = None
        self._nc: Any = None
        self.on_ready: Any = None  # optional callable(subscriber) once workers are connected
        self.on_partition_end: Any = None  # optional coroutine function(k), awaited before the marker's ack
        self.on_marker: Any = None  # optional coroutine function(k, publisher) -> publishers whose marker k had

    def stop(self) -> None:
        """Asks :meth:`run` to finish: stop fetching, end the local stream, return the summary."""
        self._stopping.set()

    async def run(self) -> SubscribeSummary:
        """Connects, waits for the workers, forwards until done (see the class), ends the local stream."""
        started = time.monotonic()
        nc = await connect(self.nats, self.connect_timeout, f"packet-ipc subscribe {self.name}")
        clean = False
        try:
            self._nc, self._js = nc, nc.jetstream(timeout=5.0)
            total = await self._partition_count()
            bad = [k for k in (self.wanted or []) if k >= total]
            if bad:
                raise PartitionError(f"partition {bad[0]} is out of range: stream {self.stream} has {total} "
                                     f"partitions (0..{total - 1})")
            self.partitions = self.wanted if self.wanted is not None else list(range(total))
            await self.server.wait_for_clients(self.workers, timeout=self.accept_timeout)
            if self.on_ready is not None:
                self.on_ready(self)
            keeper = asyncio.create_task(self._keep_in_progress(), name="in progress")
            try:
                if self.group is not None:
                    from .group import GroupMember

                    await GroupMember(self, nc).run()
                else:
                    tasks = [asyncio.create_task(self.consume(k), name=f"consume {k}") for k in self.partitions]
                    await self._until_done(tasks)
            finally:
                keeper.cancel()
            clean = True
            return self.summary
        finally:
            self.summary.seconds = time.monotonic() - started
            if clean:
                self.server.sync.send(None)  # end of the local stream: every worker drains and sees the end
            else:
                self.server.sync.abort_connections()  # workers must not take a cut stream for the whole one
            self.server.close()
            try:
                await nc.close()
            except Exception:  # noqa: BLE001 - closing a connection that already failed
                pass

    async def _keep_in_progress(self) -> None:
        """Every ``ack_wait / 3``: a message still being committed since the last look (the workers' rings are
        full) is told ``in_progress``, so that JetStream does not deliver it again while it is being written."""
        seen: dict[int, Any] = {}
        while True:
            await asyncio.sleep(self.ack_wait / 3)
            for k, msg in list(self._committing.items()):
                still = seen.get(k) is msg  # (not narrowing msg to Optional)
                if still:
                    await _settle(msg.in_progress())
            seen = dict(self._committing)

    async def _until_done(self, tasks: list[asyncio.Task[None]]) -> None:
        stop = asyncio.create_task(self._stopping.wait())
        try:
            pending: set[asyncio.Future[Any]] = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending | {stop}, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    if t is not stop:
                        t.result()
                pending.discard(stop)
                if stop.done():
                    return
        finally:
            stop.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _partition_count(self) -> int:
        import nats.errors

        deadline = time.monotonic() + self.stream_wait
        while True:
            try:
                total = await stream_partitions(self._js, self.stream)
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError, TimeoutError):
                total = None  # no answer: an election (e.g. the meta leader was killed); ask again
            if total is not None:
                return total
            if time.monotonic() >= deadline:
                raise NatsError(f"no stream {stream_name(self.stream, 0)} on the NATS cluster (nothing published "
                                f"to {self.stream} yet?)")
            await asyncio.sleep(0.2)  # waiting for a publisher to create the streams

    async def _subscribe(self, k: int) -> _Puller:
        """The puller of partition ``k``: its durable consumer (created if missing, as ``pull_subscribe`` would)
        and an inbox for the messages it sends."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        stream = stream_name(self.stream, k)
        config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                                ack_wait=self.ack_wait, max_ack_pending=1, max_deliver=-1,
                                inactive_threshold=INACTIVE_S if self._private else None,
                                name=self.durable, durable_name=self.durable,
                                filter_subject=subject_name(self.stream, k))
        import nats.errors
        import nats.js.errors

        deadline = time.monotonic() + self.stream_wait
        while True:
            try:
                try:
                    await self._js.consumer_info(stream, self.durable)
                except nats.js.errors.NotFoundError:
                    await self._js.add_consumer(stream, config=config)  # NotFoundError: no stream yet
                return await _Puller.start(self._nc, stream, self.durable, FETCH_WAIT_S)
            except nats.js.errors.NotFoundError:
                if time.monotonic() >= deadline:
                    raise NatsError(f"no stream {stream} for partition {k}") from None
                await asyncio.sleep(0.2)  # the publisher creates the streams one after the other
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError, TimeoutError) as e:
                # No answer: the stream (or the meta) leader is being elected, e.g. after a node was killed;
                # creating the consumer goes through once there is a leader again.
                if time.monotonic() >= deadline:
                    raise NatsError(f"cannot consume partition {k} ({stream}): {e} "
                                    "(no leader answered in time)") from None
                await asyncio.sleep(0.5)
            except Exception as e:  # nats errors: one line naming the partition
                raise NatsError(f"cannot consume partition {k} ({stream}): {e}") from None

    def partition_done(self, k: int) -> bool:
        """True once partition ``k`` delivered its end-of-stream marker(s)."""
        return k in self._done

    async def consume(self, k: int, keep_going: Any = None) -> None:
        """Forwards partition ``k`` until its end of stream (or forever with ``follow``, or while
        ``keep_going()`` is true).

        The request for the next message goes out right after the current one's ack, in the same write to the
        socket (nats-py queues both before its flusher runs): the server processes the ack, then answers the
        request at once (``max_ack_pending=1``), so the partition stays strictly in order with at most one
        committed message unacknowledged, without a fetch round trip or an ack confirmation per message, and
        with one socket write per message (a request sent ahead, before the commit, costs a write of its own in
        the subscriber and a read in the server)."""
        import nats.errors

        puller = await self._subscribe(k)
        try:
            while not self._stopping.is_set() and (keep_going is None or keep_going()):
                if k in self._done and not self.follow:
                    return
                # Awaited here, not in a task: its request is queued before this coroutine first waits, so that it
                # leaves with the previous message's ack.
                try:
                    msg = await puller.next()
                except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
                        nats.errors.OutboundBufferLimitError, nats.errors.StaleConnectionError):
                    await asyncio.sleep(0.1)  # the request could not be sent: reconnecting
                    continue
                if msg is None:  # no answer at all (a reconnect, a lost request): ask again
                    continue
                status = msg.headers.get("Status") if msg.headers else None
                if status is not None:
                    if status in ("404", "408"):  # no message within FETCH_WAIT_S: ask again
                        continue
                    if status not in ("409", "503"):
                        raise NatsError(f"cannot fetch from partition {k}: status {status} "
                                        f"{msg.headers.get('Description', '')}".rstrip())
                    await asyncio.sleep(0.1)  # a leader change, no consumer leader yet, or a reconnect
                    continue
                if msg.metadata.sequence.stream <= self._committed.get(k, 0):
                    await _settle(msg.ack())  # its ack was lost: committed here already, not twice
                    continue
                await self._handle(k, msg)
        finally:
            await puller.close()  # a message it received and no one handled goes back to the stream (nak)
            try:
                if self._private and (k in self._done or self._stopping.is_set()):
                    await self._js.delete_consumer(stream_name(self.stream, k), self.durable)
            except Exception:  # noqa: BLE001 - the connection may be gone (the server deletes it after INACTIVE_S)
                pass

    async def _handle(self, k: int, msg: Any) -> None:
        s = self.summary
        try:
            m = decode(msg.data, self.server.sync.linktype)
            if m.partition != k:
                raise WireFormatError(f"message for partition {m.partition} on partition {k}'s subject")
        except WireFormatError:
            s.corrupt_messages += 1
            await _settle(msg.term())
            return
        if m.kind == KIND_END:
            assert m.end is not None
            seen = self._eos.setdefault(k, set())
            seen.add(m.end.publisher)
            if self.on_marker is not None:  # a group: the markers every member saw on k, recorded before the ack
                try:
                    seen |= await self.on_marker(k, m.end.publisher)
                except Exception:  # noqa: BLE001 - the bucket is electing a leader: unacked, it comes again
                    return
            if len(self._eos[k]) >= self.publishers and k not in self._done:
                if self.on_partition_end is not None:  # recorded before the ack: a crash cannot lose the end
                    await self.on_partition_end(k)
                self._done.add(k)
                s.ended_partitions.append(k)
            await _settle(msg.ack_sync())
            return
        assert m.batch is not None
        redelivered = msg.metadata.num_delivered > 1
        n = len(m.batch)
        # On the event loop (a try that never waits, then the ring's wake-up), not in a thread: no hand-over per
        # message. Workers may be slow: _keep_in_progress keeps the message ours while it waits for the rings
        # (or for another partition's message to be written).
        self._committing[k] = msg
        try:
            async with self._send_lock:
                await self.server.send_batch(m.batch)
        finally:
            del self._committing[k]
        self._committed[k] = msg.metadata.sequence.stream
        s.bytes += m.batch.nbytes
        m.batch.release()
        s.packets += n
        s.messages += 1
        s.partition_packets[k] = s.partition_packets.get(k, 0) + n
        if redelivered:
            s.redelivered_messages += 1
            s.redelivered_packets += n
        # Not confirmed: the next message is delivered only once this ack is processed, and an ack lost on the
        # way brings this message back to us after ack_wait, where it is skipped (committed already).
        await _settle(msg.ack())


class _Puller:
    """Pulls a consumer's messages one at a time, for :meth:`Subscriber.consume`.

    What ``PullSubscription.fetch(1)`` does on the wire, for less CPU per message: a pull request (``{"batch":
    1, "expires": ...}``, built once) published to the consumer's ``$JS.API.CONSUMER.MSG.NEXT`` subject with
    the puller's own inbox as reply subject, and the message (or a status: 404/408 nothing came, 409 a leader
    change, 503 no consumer leader) delivered to that inbox. nats-py's ``fetch(1)`` per message also makes a
    UUID, two tasks, ``asyncio.wait_for`` and a JSON request, and hands the message over through three task
    wake-ups; here one callback appends it and wakes the one waiting ``next()``. nats-py subscribes the inbox
    again after a reconnect; a request lost meanwhile is a local timeout, and the next one is sent.
    """

    def __init__(self, nc: Any, stream: str, consumer: str, timeout: float) -> None:
        self._nc, self._timeout = nc, timeout + 0.25  # the server's 408 at ``timeout`` normally comes first
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._request = json.dumps({"batch": 1, "expires": int(timeout * 1e9)}).encode()
        self._inbox = nc.new_inbox()
        self._msgs: deque[Any] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._sub: Any = None

    @classmethod
    async def start(cls, nc: Any, stream: str, consumer: str, timeout: float) -> _Puller:
        """Subscribes the inbox of a puller of ``consumer`` on ``stream`` (``timeout``: seconds per request)."""
        self = cls(nc, stream, consumer, timeout)
        self._sub = await nc.subscribe(self._inbox, cb=self._on_msg)
        return self

    async def _on_msg(self, msg: Any) -> None:
        self._msgs.append(msg)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self) -> Any:
        """The next message or status message for this inbox; None when nothing came within the timeout. A
        message left from an earlier request (it came after its local timeout) is returned first, with no
        new request: the request still open on the server brings the one after it."""
        while self._msgs:
            msg = self._msgs.popleft()
            if not msg.headers or "Status" not in msg.headers:
                return msg  # a status left over was meant for an earlier request: dropped
        await self._nc.publish(self._subject, self._request, reply=self._inbox)
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(self._timeout, _wake, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            timer.cancel()
        return self._msgs.popleft() if self._msgs else None

    async def close(self) -> None:
        """Unsubscribes; a message received and not taken goes back to the stream now (nak), not after
        ``ack_wait``."""
        for msg in self._msgs:
            if not msg.headers or "Status" not in msg.headers:
                await _settle(msg.nak())
        self._msgs.clear()
        try:
            await self._sub.unsubscribe()
        except Exception:  # noqa: BLE001 - the connection may be gone
            pass


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _settle(coro: Any) -> None:
    """Awaits a term/in_progress/ack; a lost one only means the message comes again (counted there)."""
    try:
        await coro
    except Exception:  # noqa: BLE001 - timeouts, reconnects: JetStream redelivers after ack_wait
        pass
