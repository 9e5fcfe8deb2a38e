"""What the publisher and the subscriber share: typed errors, connecting, and the partition streams.

Partition ``k`` of a stream prefix ``PREFIX`` is the JetStream stream ``PREFIX-<k>`` with the one subject
``PREFIX.<k>``. Every stream records in its metadata how many partitions the set has and the message
format version, so a subscriber learns ``P`` from ``PREFIX-0`` and nothing mixes two layouts.
"""

from __future__ import annotations

import array
import asyncio
import errno
import re
import time
from collections.abc import Sequence
from typing import Any

from .. import _core
from ..errors import ConnectError, PacketIpcError
from .wire import VERSION

__all__ = [
    "NatsError", "NatsUnreachableError", "StreamMismatchError", "MessageTooLargeError", "PartitionError",
    "FLOW_BUCKETS", "partition_table", "stream_name", "subject_name", "check_prefix", "parse_urls", "connect",
    "ensure_streams", "stream_partitions", "READ_BUFFER", "raise_read_buffer", "KEEP_HEAP_BYTES", "keep_heap",
]

FLOW_BUCKETS = 4096
"""Partition of a packet = ``table[flow_hash & (FLOW_BUCKETS - 1)]`` with ``table[b] = b % P``."""
_META_PARTITIONS = "packet-ipc-partitions"
_META_FORMAT = "packet-ipc-format"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class NatsError(PacketIpcError):
    """A NATS / JetStream operation failed (the message says which and why). Each subclass sets its errno in
    ``errno_code``; ``code`` overrides it."""

    errno_code = errno.EIO

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(self.errno_code if code is None else code, message)


class NatsUnreachableError(NatsError, ConnectError):
    """No NATS server answered at the URLs given."""

    errno_code = errno.ECONNREFUSED


class StreamMismatchError(NatsError, ValueError):
    """A partition stream exists with other settings (subjects, replicas, storage, partition count)."""

    errno_code = errno.EEXIST


class MessageTooLargeError(NatsError, ValueError):
    """The message size asked for is above the server's ``max_payload``."""

    errno_code = errno.EMSGSIZE


class PartitionError(NatsError, ValueError):
    """A partition number out of range, or a malformed partition list."""

    errno_code = errno.EINVAL


def partition_table(partitions: int) -> bytes:
    """The bucket -> partition table given to ``_core.partition_by_flow`` (uint16 ``b % partitions``)."""
    if not 1 <= partitions <= FLOW_BUCKETS:
        raise PartitionError(f"partitions must be 1..{FLOW_BUCKETS}, not {partitions}")
    return array.array("H", [b % partitions for b in range(FLOW_BUCKETS)]).tobytes()


def new_fragment_table() -> memoryview:
    """A zeroed, 8-byte aligned fragment table (later fragments follow their datagram's first one)."""
    return memoryview(array.array("Q", bytes(_core.FRAG_TABLE_BYTES))).cast("B")


def check_prefix(prefix: str) -> str:
    """Validates a stream prefix (letters, digits, ``-``, ``_``; it names streams and subjects)."""
    if not _NAME.match(prefix):
        raise ValueError(f"stream prefix {prefix!r} must be 1-64 letters, digits, '-' or '_'")
    return prefix


def stream_name(prefix: str, k: int) -> str:
    """The JetStream stream of partition ``k``."""
    return f"{prefix}-{k}"


def subject_name(prefix: str, k: int) -> str:
    """The subject of partition ``k``."""
    return f"{prefix}.{k}"


def parse_urls(urls: str | Sequence[str]) -> list[str]:
    """``"nats://a:4222,nats://b:4222"`` or a list of URLs -> list (``host:port`` gets ``nats://``)."""
    items = [u.strip() for u in (urls.split(",") if isinstance(urls, str) else urls)]
    out = []
    for u in items:
        if not u:
            continue
        if "://" not in u:
            u = "nats://" + u
        if not re.match(r"^(nats|tls|ws|wss)://[^\s/]+$", u):
            raise ValueError(f"not a NATS URL: {u!r}")
        out.append(u)
    if not out:
        raise ValueError("no NATS URL given")
    return out


READ_BUFFER = 1 << 20
"""nats-py's socket read size and stream-reader limit that :func:`raise_read_buffer` sets (its own is 32 KiB)."""


def raise_read_buffer(size: int = READ_BUFFER) -> bool:
    """Makes nats-py read its sockets ``size`` bytes at a time (for connections made afterwards, in the whole
    process) instead of 32 KiB: a 256 KiB message then arrives in one read, not eight, and the reader stops
    pausing and resuming the socket several times per message, which costs the subscriber and the servers CPU
    (about 1 ms per MB in all on 2 cores, ``benchmarks/scale_out.py``). nats-py has no option for it, only the
    module constant ``nats.aio.client.DEFAULT_BUFFER_SIZE``; returns False (nothing changed) if that is missing.
    The ``publish`` and ``subscribe`` commands call it; a program of its own may."""
    import nats.aio.client as client

    if not isinstance(getattr(client, "DEFAULT_BUFFER_SIZE", None), int):
        return False
    client.DEFAULT_BUFFER_SIZE = max(size, client.DEFAULT_BUFFER_SIZE)
    return True


KEEP_HEAP_BYTES = 64 << 20
"""What :func:`keep_heap` lets the C heap keep and serve from itself (see there)."""


def keep_heap(nbytes: int = KEEP_HEAP_BYTES) -> bool:
    """Makes glibc's malloc serve blocks up to ``nbytes`` from its heap and keep up to ``nbytes`` freed at its
    top (``mallopt`` ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD``; its defaults move with the sizes seen, from
    128 KiB). The messages (256 KiB) and nats-py's read buffers (up to 1 MiB, :func:`raise_read_buffer`) are
    allocated and freed several times per message; past those thresholds each one is new memory from the kernel,
    faulted in and zeroed page by page: about an eighth of ``subscribe``'s CPU (reading 643 MB alone: 1.83-1.97 s
    without, 1.54-1.72 s with). The process holds on to that much memory more at most. Only for a process of ours (the ``publish`` and
    ``subscribe`` commands call it); returns False (nothing changed) without glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, nbytes)) and bool(mallopt(m_trim_threshold, nbytes))


async def connect(urls: str | Sequence[str], timeout: float = 5.0, name: str = "packet-ipc") -> Any:
    """Connects to NATS (reconnecting to the other URLs forever once connected). Raises
    :class:`NatsUnreachableError` when no server answers within ``timeout`` seconds."""
    import asyncio

    import nats.errors
    from nats.aio.client import Client as NatsClient

    servers = parse_urls(urls)

    async def quiet(e: Exception) -> None:  # reconnects are part of the job; errors surface where they matter
        return None

    nc = NatsClient()
    try:
        # Once connected, reconnect forever (a restarting cluster); the first connection is bounded here.
        options: dict[str, Any] = dict(
            servers=servers, name=name, connect_timeout=min(timeout, 2.0), reconnect_time_wait=0.1,
            max_reconnect_attempts=-1, allow_reconnect=True, error_cb=quiet, ping_interval=2, max_outstanding_pings=3,
        )
        await asyncio.wait_for(nc.connect(**options), timeout)
        return nc
    except (OSError, nats.errors.Error, TimeoutError) as e:
        try:
            await nc.close()
        except Exception:  # noqa: BLE001 - best effort on a connection that never came up
            pass
        why = "no answer" if isinstance(e, TimeoutError) else f"{type(e).__name__} {e}".strip()
        raise NatsUnreachableError(f"cannot reach NATS at {','.join(servers)} within {timeout:g} s ({why})") from None


def _storage(storage: str) -> Any:
    from nats.js.api import StorageType

    if storage not in ("file", "memory"):
        raise ValueError(f"storage must be 'file' or 'memory', not {storage!r}")
    return StorageType.FILE if storage == "file" else StorageType.MEMORY


SETUP_WAIT_S = 30.0  # how long setting up (streams, buckets) rides out a cluster that does not answer yet


def _transient() -> tuple[type[BaseException], ...]:
    """The errors of a cluster that is busy or electing a leader: no answer in time, nobody listening yet."""
    import nats.errors
    import nats.js.errors

    return (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError,
            TimeoutError)


async def retry_setup(what: str, call: Any, seconds: float = SETUP_WAIT_S) -> Any:
    """Awaits ``call()`` again while the cluster gives no answer (a leader election, or a loaded machine where a
    replicated stream or bucket takes longer to create than one request's timeout), up to ``seconds``; then
    :class:`NatsError` naming ``what``. Other errors go to the caller at once."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await call()
        except _transient() as e:
            if time.monotonic() >= deadline:
                raise NatsError(f"{what}: no answer from JetStream within {seconds:g} s ({type(e).__name__})") from None
            await asyncio.sleep(0.25)


async def ensure_streams(js: Any, prefix: str, partitions: int, replicas: int, storage: str,
                         max_msg_size: int) -> None:
    """Creates every missing partition stream; raises :class:`StreamMismatchError` if one exists with other
    settings, :class:`NatsError` if JetStream refuses (e.g. more replicas than servers)."""
    import nats.js.errors
    from nats.js.api import StreamConfig

    check_prefix(prefix)
    want_storage = _storage(storage)
    for k in range(partitions):
        name = stream_name(prefix, k)
        cfg = StreamConfig(
            name=name, subjects=[subject_name(prefix, k)], num_replicas=replicas, storage=want_storage,
            duplicate_window=120.0, max_msg_size=max_msg_size,
            metadata={_META_PARTITIONS: str(partitions), _META_FORMAT: str(VERSION)},
        )
        deadline = time.monotonic() + SETUP_WAIT_S
        created = False
        while True:
            try:
                info = await retry_setup(f"stream {name}", lambda: _stream_info(js, name))
            except nats.js.errors.Error as e:
                raise NatsError(f"JetStream did not answer about stream {name}: {e}") from None
            if info is not None:
                break
            try:
                await js.add_stream(cfg)
            except _transient() as e:
                # No answer in time, yet the stream may have been created (a replicated one takes a while on a
                # loaded cluster): look again before creating it again.
                if time.monotonic() >= deadline:
                    raise NatsError(f"cannot create stream {name}: no answer from JetStream within "
                                    f"{SETUP_WAIT_S:g} s ({type(e).__name__})") from None
                await asyncio.sleep(0.25)
                continue
            except nats.js.errors.BadRequestError as e:
                if e.err_code == 10058:  # created meanwhile by another publisher with other settings
                    raise StreamMismatchError(f"stream {name} exists with other settings") from None
                raise NatsError(f"cannot create stream {name}: {e.description}") from None
            except nats.js.errors.Error as e:
                raise NatsError(f"cannot create stream {name}: {getattr(e, 'description', None) or e}") from None
            created = True
            break
        if created:
            continue
        c = info.config
        meta = c.metadata or {}
        diffs = []
        if list(c.subjects or []) != [subject_name(prefix, k)]:
            diffs.append(f"subjects {c.subjects}")
        if (c.num_replicas or 1) != replicas:
            diffs.append(f"replicas {c.num_replicas} (asked {replicas})")
        have_storage = str(getattr(c.storage, "value", c.storage))
        if have_storage != want_storage.value:
            diffs.append(f"storage {have_storage} (asked {storage})")
        if meta.get(_META_PARTITIONS) != str(partitions):
            diffs.append(f"partitions {meta.get(_META_PARTITIONS, 'unknown')} (asked {partitions})")
        if c.max_msg_size not in (None, -1) and c.max_msg_size < max_msg_size:
            diffs.append(f"max message size {c.max_msg_size} (asked {max_msg_size})")
        if diffs:
            raise StreamMismatchError(f"stream {name} exists with other settings: {', '.join(diffs)}")


async def _stream_info(js: Any, name: str) -> Any:
    """The stream's info, or None when it does not exist."""
    import nats.js.errors

    try:
        return await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        return None


async def stream_partitions(js: Any, prefix: str) -> int | None:
    """How many partitions the stream set ``prefix`` has (from ``PREFIX-0``'s metadata); None if absent.
    Raises :class:`StreamMismatchError` for a stream that packet-ipc did not create."""
    import nats.js.errors

    check_prefix(prefix)
    name = stream_name(prefix, 0)
    try:
        info = await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        return None
    except nats.js.errors.Error as e:
        raise NatsError(f"JetStream did not answer about stream {name}: {e}") from None
    meta = info.config.metadata or {}
    if meta.get(_META_FORMAT) != str(VERSION) or not str(meta.get(_META_PARTITIONS, "")).isdigit():
        raise StreamMismatchError(f"stream {name} was not created by packet-ipc publish (no partition metadata)")
    return int(meta[_META_PARTITIONS])
