"""``Publisher``: a packet-ipc client of a local server that publishes its stream into partitioned JetStream
streams.

Each packet goes to partition ``table[flow_hash & 4095]`` (``table[b] = b % P``), with the C flow hash and the
fragment table of local flow distribution: both directions of a flow, and every fragment of its datagrams, land
in one partition. Records are packed per partition into messages of at most ``max_message`` bytes, sealed early
after ``linger`` seconds. One task per partition publishes that partition's messages in order, a few at a time
(each names its predecessor in ``Nats-Expected-Last-Msg-Id``, so JetStream never stores them out of order),
each with ``Nats-Msg-Id: <publisher id>-<seq>``: a message whose ack was lost (a leader election, a reconnect)
is published again with the same id until acknowledged, and JetStream stores it once. Messages waiting for
their ack are held in a bounded buffer (``buffer_bytes``): under ``overflow="block"`` the publisher stops
reading when it is full (so the local server waits: nothing lost), under ``"drop"`` it drops the new message
and counts its packets. At end of the local stream it publishes an end-of-stream marker to every partition and
waits for every ack.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .. import _core
from ..aio import Client as AioClient
from ..errors import ConnectError, ConnectionLostError
from ..errors import TimeoutError as PipcTimeoutError
from .common import (
    MessageTooLargeError, NatsError, connect, ensure_streams, partition_table, new_fragment_table, check_prefix,
    stream_name, subject_name,
)
from .wire import HEADER, RECORD_OVERHEAD, RecordBuilder, encode_end

__all__ = ["Publisher", "PublishSummary", "DEFAULT_MAX_MESSAGE", "DEFAULT_LINGER_S", "DEFAULT_BUFFER_BYTES"]

_Item = tuple[bytes | memoryview, int, int, str]
"""A message waiting for its ack: payload (a view of its builder's bytearray, or bytes), packets (-1: an
end-of-stream marker), data bytes, Nats-Msg-Id."""

DEFAULT_MAX_MESSAGE = 256 * 1024
DEFAULT_LINGER_S = 0.005
DEFAULT_BUFFER_BYTES = 64 << 20
DEFAULT_WINDOW = 4
PUBLISH_TIMEOUT_S = 2.0
RETRY_BACKOFF_MAX_S = 0.5
STREAM_CHECK_EVERY = 3
"""After this many failed attempts in a row (and as many again), the publisher asks whether its stream still
exists: a deleted stream is a clear error, not an endless retry."""
IDLE_CHECK_S = 0.5


@dataclass
class PublishSummary:
    """What a :class:`Publisher` did: packets and bytes read and published, per partition, retries, drops."""

    publisher_id: str
    packets: int = 0
    bytes: int = 0
    messages: int = 0
    message_bytes: int = 0
    partition_packets: list[int] = field(default_factory=list)
    retries: int = 0
    duplicate_acks: int = 0
    dropped_packets: int = 0
    dropped_bytes: int = 0
    max_buffered_bytes: int = 0
    longest_stall_s: float = 0.0
    seconds: float = 0.0
    ended: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The summary as a plain dict (JSON-friendly)."""
        return asdict(self)


class Publisher:
    """Publishes the stream of the local packet-ipc server ``name`` into ``partitions`` JetStream streams.

    ``nats``: URL(s) of the cluster (comma separated or a list); ``stream``: the prefix (streams
    ``PREFIX-<k>``, subjects ``PREFIX.<k>``, created if missing with ``replicas`` and ``storage``);
    ``max_message`` bytes per message (at most the server's ``max_payload``), ``linger`` seconds before a
    partly filled message goes out; ``buffer_bytes`` bounds the messages held until acknowledged;
    ``overflow`` ``"block"`` or ``"drop"`` when that bound is reached; ``window`` messages per partition in
    flight at once (kept in order by ``Nats-Expected-Last-Msg-Id``; 1: one at a time). ``await publisher.run()`` returns a
    :class:`PublishSummary`. Raises :class:`NatsUnreachableError`, :class:`StreamMismatchError`,
    :class:`MessageTooLargeError`, :class:`NatsError`, and the local client's errors (``ConnectError``...);
    ``ConnectionLostError`` if the local server vanished without ending its stream (what was read was
    published; no end-of-stream marker was).
    """

    def __init__(
        self,
        name: str,
        *,
        nats: str | list[str],
        stream: str,
        partitions: int,
        replicas: int = 1,
        storage: Literal["file", "memory"] = "file",
        max_message: int = DEFAULT_MAX_MESSAGE,
        linger: float = DEFAULT_LINGER_S,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        overflow: Literal["block", "drop"] = "block",
        publisher_id: str | None = None,
        window: int = DEFAULT_WINDOW,
        connect_timeout: float = 5.0,
        local_timeout: float = 30.0,
    ) -> None:
        check_prefix(stream)
        self._table = partition_table(partitions)
        if not 1 <= replicas <= 5:
            raise ValueError(f"replicas must be 1..5, not {replicas}")
        if storage not in ("file", "memory"):
            raise ValueError(f"storage must be 'file' or 'memory', not {storage!r}")
        if max_message < HEADER.size + RECORD_OVERHEAD + 1500:
            raise ValueError(f"max_message must be at least {HEADER.size + RECORD_OVERHEAD + 1500} bytes")
        if linger < 0 or buffer_bytes < 1:
            raise ValueError("linger must be >= 0 and buffer_bytes >= 1")
        if overflow not in ("block", "drop"):
            raise ValueError(f"overflow must be 'block' or 'drop', not {overflow!r}")
        if not 1 <= window <= 64:
            raise ValueError(f"window must be 1..64, not {window}")
        self.window = window
        self.name, self.nats, self.stream, self.partitions = name, nats, stream, partitions
        self.replicas, self.storage, self.max_message, self.linger = replicas, storage, max_message, linger
        self.buffer_bytes, self.overflow = buffer_bytes, overflow
        self.connect_timeout, self.local_timeout = connect_timeout, local_timeout
        self.id = publisher_id or f"{os.uname().nodename[:24]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.summary = PublishSummary(self.id, partition_packets=[0] * partitions)
        self._seq = 0
        self._queues: list[deque[_Item | None]] = [deque() for _ in range(partitions)]
        self._ready = [asyncio.Event() for _ in range(partitions)]
        self._space = asyncio.Event()
        self._buffered = 0
        self._sent = [[0, 0, 0] for _ in range(partitions)]  # acked packets, bytes, messages per partition
        self._js: Any = None
        self._acks: _PubAcks = None  # type: ignore[assignment]  # set in run()
        self._senders: list[asyncio.Task[None]] = []

    # ---- the publishing side -------------------------------------------------------------------------

    def _next_id(self) -> tuple[int, str]:
        self._seq += 1
        return self._seq, f"{self.id}-{self._seq}"

    async def _enqueue(self, k: int, payload: bytes | memoryview, packets: int, nbytes: int,
                       force: bool = False) -> None:
        """Queues a sealed message for partition k, waiting for buffer space (block) or dropping (drop)."""
        size = len(payload)
        while not force and self._buffered and self._buffered + size > self.buffer_bytes:
            if self.overflow == "drop":
                self.summary.dropped_packets += packets
                self.summary.dropped_bytes += nbytes
                return
            self._space.clear()
            await self._space.wait()
            for t in self._senders:  # a sender that failed for good frees no space: raise its error
                if t.done():
                    t.result()
        _, msg_id = self._next_id()
        self._buffered += size
        self.summary.max_buffered_bytes = max(self.summary.max_buffered_bytes, self._buffered)
        self._queues[k].append((payload, packets, nbytes, msg_id))
        self._ready[k].set()

    async def _publish(self, subject: str, stream: str, item: _Item,
                       expect: str | None) -> asyncio.Future[Any]:
        """Publishes ``item`` (see :class:`_PubAcks`); returns the future of its PubAck, or of the error."""
        headers = {"Nats-Msg-Id": item[3], "Nats-Expected-Stream": stream}
        if expect is not None:
            headers["Nats-Expected-Last-Msg-Id"] = expect
        return await self._acks.publish(subject, item[0], headers)

    async def _stream_gone(self, stream: str) -> bool:
        """True only when JetStream answers that ``stream`` does not exist (an election answers nothing, or
        something else: the publisher keeps retrying then)."""
        import nats.js.errors

        try:
            await self._js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            return True
        except Exception:  # noqa: BLE001 - no answer (an election, a reconnect): not a verdict
            return False
        return False

    async def _sender(self, k: int) -> None:
        """Publishes partition k's messages in order, each until acknowledged; ends after the None sentinel.

        Up to ``window`` messages are in flight, each naming its predecessor in ``Nats-Expected-Last-Msg-Id``:
        JetStream stores a message only right after the one before it, so the partition stays in order even
        when a message is lost in an election. On any failure the sender waits for what is in flight, then
        publishes again from the oldest unacknowledged message (its ``Nats-Msg-Id`` makes JetStream answer a
        duplicate ack if it had been stored). If another publisher writes the same partition (the chain check
        fails with nothing of ours failing), the partition falls back to one message at a time, unchained.
        """
        try:
            await self._send_partition(k)
        finally:
            self._space.set()  # wakes a reader waiting for space, to see this sender's end

    async def _send_partition(self, k: int) -> None:
        import nats.errors
        import nats.js.errors

        retryable = (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError,
                     nats.js.errors.ServiceUnavailableError, nats.errors.ConnectionReconnectingError,
                     nats.errors.ConnectionClosedError, nats.errors.StaleConnectionError,
                     nats.errors.OutboundBufferLimitError, TimeoutError)
        queue, subject, stream = self._queues[k], subject_name(self.stream, k), stream_name(self.stream, k)
        window, chained = self.window, self.window > 1
        last_acked: str | None = None  # Nats-Msg-Id of our last message acknowledged on this partition
        inflight: deque[tuple[_Item, asyncio.Future[Any]]] = deque()
        attempt, first_fail = 0, 0.0
        while True:
            # fill the window from the queue (inflight are queue[0:len(inflight)])
            while len(inflight) < window and len(inflight) < len(queue) and queue[len(inflight)] is not None:
                item = queue[len(inflight)]
                assert item is not None
                expect = (inflight[-1][0][3] if inflight else last_acked) if chained else None
                inflight.append((item, await self._publish(subject, stream, item, expect)))
            if not inflight:
                if queue and queue[0] is None:
                    return
                self._ready[k].clear()
                await self._ready[k].wait()
                continue
            item, task = inflight[0]
            try:
                ack = await task
            except retryable:
                failed = True
            except nats.js.errors.APIError as e:
                if e.err_code == 10070 and attempt == 0 and chained:  # someone else writes this partition
                    chained, window = False, 1
                elif e.err_code != 10070 and e.code not in (503, 408, None) and e.err_code not in (10008, 10077):
                    raise NatsError(f"JetStream refused a message on {subject}: {e.description}") from None
                failed = True
            else:
                failed = False
            if failed:
                for _, t in inflight:  # settle what is in flight, then start again from the oldest
                    try:
                        await t
                    except Exception:  # noqa: BLE001 - published again below
                        pass
                inflight.clear()
                attempt += 1
                self.summary.retries += 1
                if attempt == 1:
                    first_fail = time.monotonic()
                if attempt % STREAM_CHECK_EVERY == 0 and await self._stream_gone(stream):
                    held = sum(1 for it in queue if it is not None)
                    raise NatsError(f"stream {stream} was deleted while publishing: {held:,} message(s) of "
                                    f"partition {k} cannot be published")
                await asyncio.sleep(min(RETRY_BACKOFF_MAX_S, 0.02 * (2 ** min(attempt, 5))))
                continue
            inflight.popleft()
            if attempt:
                self.summary.longest_stall_s = max(self.summary.longest_stall_s, time.monotonic() - first_fail)
                attempt = 0
            if ack.duplicate:
                self.summary.duplicate_acks += 1
            last_acked = item[3]
            queue.popleft()
            payload, packets, nbytes, _ = item
            self._buffered -= len(payload)
            self._space.set()
            if packets >= 0:
                sent = self._sent[k]
                sent[0] += packets
                sent[1] += nbytes
                sent[2] += 1
                self.summary.messages += 1
                self.summary.message_bytes += len(payload)

    # ---- the reading side ----------------------------------------------------------------------------

    async def _seal(self, b: RecordBuilder) -> None:
        seq = self._seq + 1  # the sequence _enqueue will give it (nothing runs in between)
        payload, n, nbytes = b.seal_view(seq)
        await self._enqueue(b.partition, payload, n, nbytes)

    async def run(self) -> PublishSummary:
        """Connects to NATS and the local server, publishes until the local stream ends, then the
        end-of-stream markers; returns the summary once every message is acknowledged."""
        started = time.monotonic()
        nc = await connect(self.nats, self.connect_timeout, f"packet-ipc publish {self.id}")
        senders: list[asyncio.Task[None]] = []
        try:
            if self.max_message > nc.max_payload:
                raise MessageTooLargeError(
                    f"message size {self.max_message} is above the NATS server's max_payload {nc.max_payload}")
            self._js = nc.jetstream(timeout=PUBLISH_TIMEOUT_S)
            self._acks = await _PubAcks.start(nc, PUBLISH_TIMEOUT_S)
            await ensure_streams(self._js, self.stream, self.partitions, self.replicas, self.storage, nc.max_payload)
            senders = [asyncio.create_task(self._sender(k), name=f"publish {k}") for k in range(self.partitions)]
            self._senders = senders
            ended = await self._pump(nc.max_payload, senders)
            for k in range(self.partitions):  # end-of-stream markers: never dropped, never held back
                if ended:
                    seq, msg_id = self._next_id()
                    p, nbytes, msgs = self._sent[k]
                    p += sum(it[1] for it in self._queues[k] if it is not None)
                    nbytes += sum(it[2] for it in self._queues[k] if it is not None)
                    msgs += len(self._queues[k])
                    marker = encode_end(k, seq, self.id, p, nbytes, msgs)
                    self._buffered += len(marker)
                    self._queues[k].append((marker, -1, 0, msg_id))
                self._queues[k].append(None)
                self._ready[k].set()
            await _wait_all(senders)
            self.summary.ended = ended
            if not ended:
                raise ConnectionLostError(
                    errno.ECONNRESET, f"the local server {self.name} went away without ending its stream: "
                    f"{self.summary.packets:,} packets published, no end-of-stream marker sent")
            return self.summary
        finally:
            for t in senders:
                t.cancel()
            self.summary.seconds = time.monotonic() - started
            try:
                await nc.close()
            except Exception:  # noqa: BLE001 - closing a connection that already failed
                pass

    async def _connect_local(self) -> AioClient:
        """Connects to the local server, waiting up to ``local_timeout`` s for it to appear (it may start later)."""
        deadline = time.monotonic() + self.local_timeout
        while True:
            try:
                return await AioClient.connect(self.name, timeout=max(0.0, deadline - time.monotonic()))
            except ConnectError as e:
                if e.errno not in (errno.ENOENT, errno.ECONNREFUSED) or time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.05)  # no socket to wait on before the server creates it

    async def _pump(self, max_payload: int, senders: list[asyncio.Task[None]]) -> bool:
        """Reads the local stream into per-partition messages. True at a clean end of stream."""
        builders = [RecordBuilder(k) for k in range(self.partitions)]
        fragments = new_fragment_table()
        client = await self._connect_local()
        linktype = client.linktype
        try:
            while True:
                pending = [b for b in builders if len(b)]
                timeout = IDLE_CHECK_S  # an idle local stream still looks at the senders (a failure ends the run)
                if pending:
                    timeout = min(timeout, max(0.0, min(b.started for b in pending) + self.linger - time.monotonic()))
                idle = lost = False
                batch = None
                try:
                    batch = await client.receive_batch(4096, timeout=timeout)
                except PipcTimeoutError:
                    idle = True
                except ConnectionLostError:
                    lost = True
                for t in senders:
                    if t.done():  # a sender failed for good (e.g. the stream was deleted)
                        t.result()
                if batch is None and not idle:
                    for b in builders:
                        if len(b):
                            await self._seal(b)
                    return not lost
                full: list[RecordBuilder] = []
                if batch is not None:
                    now = time.monotonic()
                    with batch:  # gathered straight from the ring (one copy), then its space goes back
                        self.summary.packets += len(batch)
                        self.summary.bytes += batch.nbytes
                        parts = _core.partition_by_flow(batch, self._table, self.partitions, linktype, fragments)
                        for k, part in enumerate(parts):
                            if not part:
                                continue
                            b = builders[k]
                            n = len(part) // 4
                            self.summary.partition_packets[k] += n
                            start = 0
                            while start < n:  # cut where a message would outgrow max_message
                                if not len(b):
                                    b.started = now
                                start = b.gather(batch, part, start, self.max_message - b.size)
                                if start < n:
                                    full.append(b.take())
                    for f in full:
                        await self._seal(f)
                now = time.monotonic()
                for b in builders:
                    if len(b) and now - b.started >= self.linger:
                        await self._seal(b)
        finally:
            client.close()


class _PubAck:
    """The part of a JetStream PubAck the publisher reads."""

    __slots__ = ("seq", "duplicate")

    def __init__(self, seq: int, duplicate: bool) -> None:
        self.seq, self.duplicate = seq, duplicate


class _PubAcks:
    """JetStream publishes whose PubAcks come back on one wildcard inbox subscription.

    What ``js.publish`` does per message, for less CPU: nats-py's ``JetStreamContext.publish`` is a request (a
    NUID token and random bytes, a future with a done callback, ``asyncio.wait_for``, a ``PubAck`` dataclass
    from the reply) that must also run in a task of its own to keep several in flight. Here a message is one
    ``nc.publish`` with the reply subject ``<inbox>.<n>``, a plain future and one timer; the reply is read
    with ``json.loads`` only. Same wire traffic, same errors: :class:`nats.errors.TimeoutError` when no reply
    comes within ``timeout`` s, :class:`nats.js.errors.NoStreamResponseError` on "no responders",
    :class:`nats.js.errors.APIError` when JetStream refuses the message, and whatever ``nc.publish`` raises
    (closed, reconnecting with a full buffer...). nats-py subscribes the inbox again after a reconnect; a reply
    lost meanwhile is a timeout, and the message is published again with its ``Nats-Msg-Id``.
    """

    def __init__(self, nc: Any, timeout: float) -> None:
        self._nc, self._timeout = nc, timeout
        self._prefix = nc.new_inbox() + "."
        self._n = 0
        self._waiting: dict[str, tuple[asyncio.Future[Any], asyncio.TimerHandle]] = {}
        self._loop = asyncio.get_running_loop()

    @classmethod
    async def start(cls, nc: Any, timeout: float) -> _PubAcks:
        """Subscribes the reply inbox of connection ``nc``; ``timeout``: seconds to wait for each PubAck."""
        self = cls(nc, timeout)
        await nc.subscribe(self._prefix + "*", cb=self._on_reply)
        return self

    async def publish(self, subject: str, payload: bytes | memoryview, headers: dict[str, str]) -> asyncio.Future[Any]:
        """Publishes ``payload`` on ``subject`` (queued for nats-py's flusher: this waits only when nats-py's
        pending buffer is over its bound); returns a future that gets the :class:`_PubAck` or the error."""
        import nats.errors

        self._n += 1
        reply = f"{self._prefix}{self._n}"
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._waiting[reply] = (fut, self._loop.call_later(self._timeout, self._expire, reply))
        try:
            await self._nc.publish(subject, payload, reply=reply, headers=headers)
        except (nats.errors.Error, OSError) as e:
            self._fail(reply, e)
        return fut

    def _fail(self, reply: str, error: BaseException) -> None:
        entry = self._waiting.pop(reply, None)
        if entry is not None:
            entry[1].cancel()
            if not entry[0].done():
                entry[0].set_exception(error)

    def _expire(self, reply: str) -> None:
        import nats.errors

        entry = self._waiting.pop(reply, None)
        if entry is not None and not entry[0].done():
            entry[0].set_exception(nats.errors.TimeoutError())

    async def _on_reply(self, msg: Any) -> None:
        entry = self._waiting.pop(msg.subject, None)
        if entry is None:  # too late (timed out, published again) or not ours
            return
        fut, timer = entry
        timer.cancel()
        if fut.done():
            return
        try:
            fut.set_result(_read_pub_ack(msg))
        except Exception as e:  # noqa: BLE001 - every outcome goes to the sender, which retries or gives up
            fut.set_exception(e)


def _read_pub_ack(msg: Any) -> _PubAck:
    """The PubAck in a reply to a JetStream publish; raises what ``js.publish`` would raise for it."""
    import nats.js.errors

    if msg.headers and msg.headers.get("Status") == "503":  # no responders: no stream leader right now
        raise nats.js.errors.NoStreamResponseError()
    try:
        resp = json.loads(msg.data)
    except ValueError:
        raise nats.js.errors.APIError(description=f"unreadable PubAck {bytes(msg.data[:80])!r}") from None
    if "error" in resp:
        try:  # from_error raises the APIError subclass of the error's code (it returns nothing)
            nats.js.errors.APIError.from_error(resp["error"])
        except nats.js.errors.APIError:
            raise
        except Exception:  # noqa: BLE001 - a malformed error object: still a refusal (the sender decides)
            raise nats.js.errors.APIError(description=f"malformed PubAck error {resp['error']!r}") from None
    return _PubAck(int(resp.get("seq", 0)), bool(resp.get("duplicate", False)))


async def _wait_all(tasks: list[asyncio.Task[None]]) -> None:
    """Waits for every task; the first failure is raised (the others are cancelled by the caller)."""
    pending = set(tasks)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            t.result()
