"""Live capture into the IPC: libpcap driven from C, delivering :class:`PacketBatch` objects.

:func:`open_live` opens one or more interfaces (snap length, BPF filter, promiscuous mode, kernel buffer) and
yields batches of what arrived. The capturing is the C library's (``pipc_capture_*`` in ``libpacketipc.so``,
see docs/c-api.md): libpcap, loaded at run time, is polled and read in C with the GIL released, and each
packet is copied once, from libpcap's ring into the batch's data buffer, with no Python object or call per
packet. Timestamps are nanoseconds where the kernel gives them; each packet carries its interface's ifindex
and linktype. :meth:`LiveCapture.stats` and :meth:`LiveCapture.interface_stats` give libpcap's counters.

No Python package is needed, only libpcap itself (Debian: ``libpcap0.8``); without it, opening fails with a
:class:`CaptureOpenError` saying what to install.
"""

from __future__ import annotations

import ctypes
import errno
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import _core
from .batch import PacketBatch
from .errors import ConnectionLostError, PacketIpcError, from_code

if TYPE_CHECKING:
    from .server import Server

__all__ = ["CaptureRun", "CaptureStats", "InterfaceStats", "LiveCapture", "open_live", "CaptureOpenError",
           "MAX_SNAPLEN"]

MAX_SNAPLEN = _core.DEFAULT_SNAPLEN


class CaptureOpenError(PacketIpcError):
    """The interface cannot be captured on: it does not exist, no permission, a bad BPF filter, or libpcap
    is not installed. The message names the interface or the filter."""


@dataclass(frozen=True)
class CaptureStats:
    """libpcap's counters summed over the interfaces: received by the filter, dropped by the kernel,
    dropped by the interface."""

    received: int
    dropped: int
    if_dropped: int


@dataclass(frozen=True)
class InterfaceStats:
    """One interface of a capture: its identity, the packets packet-ipc took from it (``captured``) and
    libpcap's counters (``received``, ``dropped`` by the kernel, ``if_dropped`` by the interface)."""

    name: str
    ifindex: int
    linktype: int
    nanosecond: bool
    captured: int
    received: int
    dropped: int
    if_dropped: int

    def as_dict(self) -> dict[str, Any]:
        """The counters as a plain dict (JSON-friendly)."""
        return asdict(self)


@dataclass(frozen=True)
class CaptureRun:
    """What :meth:`LiveCapture.run` did: packets and bytes captured and handed to the workers (written, or
    dropped and counted by a worker whose overflow policy is ``"drop"``), reads that handed over packets
    (``batches``), why it stopped (``"count"``, ``"duration"`` or ``"break"``), and of ``packets`` those that
    were ``staged``: copied into a buffer and sent after the read, because their worker's ring could not take
    them at once (or the distribution is broadcast), instead of written straight from libpcap's ring."""

    packets: int
    bytes: int
    batches: int
    stopped: str
    staged: int = 0


_STOPPED = {1: "count", 2: "duration", 3: "break"}


class _RunOptions(ctypes.Structure):
    _fields_ = [
        ("struct_bytes", ctypes.c_size_t),
        ("count", ctypes.c_uint64),
        ("duration_ms", ctypes.c_uint64),
        ("batch", ctypes.c_uint32),
        ("linger_ms", ctypes.c_int),
    ]


class _RunResult(ctypes.Structure):
    _fields_ = [
        ("struct_bytes", ctypes.c_size_t),
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("batches", ctypes.c_uint64),
        ("not_sent", ctypes.c_uint64),
        ("staged", ctypes.c_uint64),
    ]


class _Options(ctypes.Structure):
    _fields_ = [
        ("struct_bytes", ctypes.c_size_t),
        ("interfaces", ctypes.POINTER(ctypes.c_char_p)),
        ("n_interfaces", ctypes.c_size_t),
        ("snaplen", ctypes.c_uint32),
        ("promisc", ctypes.c_int),
        ("filter", ctypes.c_char_p),
        ("buffer_bytes", ctypes.c_uint32),
        ("immediate", ctypes.c_int),
        ("timeout_ms", ctypes.c_int),
        ("linger_ms", ctypes.c_int),
    ]


class _IfStats(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char * 48),
        ("ifindex", ctypes.c_uint32),
        ("linktype", ctypes.c_uint32),
        ("nanosecond", ctypes.c_int),
        ("captured", ctypes.c_uint64),
        ("received", ctypes.c_uint64),
        ("dropped", ctypes.c_uint64),
        ("if_dropped", ctypes.c_uint64),
    ]


_lib: Any = None


def _library() -> Any:
    """libpacketipc.so.1 with the capture functions' signatures (ctypes releases the GIL during each call).

    The soname file is the one ``_core`` links: the dynamic loader then maps the library once, so a
    ``pipc_server *`` of the binding (``_core.Server._handle``) is an object of this very code and state."""
    global _lib
    if _lib is None:
        lib = ctypes.CDLL(str(Path(__file__).resolve().parent / "lib" / f"libpacketipc.so.{_core.ABI_VERSION}"))
        vp, sz = ctypes.c_void_p, ctypes.c_size_t
        lib.pipc_capture_open.argtypes = [ctypes.POINTER(_Options), ctypes.POINTER(vp)]
        lib.pipc_capture_open.restype = ctypes.c_int
        # pointers as plain addresses (the columns and buffers are ctypes arrays that never move): cheap calls
        lib.pipc_capture_next_columns.argtypes = [vp, sz, vp, vp, vp, vp, vp, vp, sz, ctypes.POINTER(sz), ctypes.c_int]
        lib.pipc_capture_next_columns.restype = ctypes.c_long
        lib.pipc_capture_count.argtypes = [vp]
        lib.pipc_capture_count.restype = sz
        for fn in (lib.pipc_capture_info, lib.pipc_capture_stats):
            fn.argtypes = [vp, sz, ctypes.POINTER(_IfStats)]
            fn.restype = ctypes.c_int
        lib.pipc_capture_run.argtypes = [vp, vp, ctypes.POINTER(_RunOptions), ctypes.POINTER(_RunResult)]
        lib.pipc_capture_run.restype = ctypes.c_long
        lib.pipc_capture_breakloop.argtypes = [vp]
        lib.pipc_capture_breakloop.restype = ctypes.c_int
        lib.pipc_capture_close.argtypes = [vp]
        lib.pipc_capture_close.restype = None
        lib.pipc_last_error.argtypes = []
        lib.pipc_last_error.restype = ctypes.c_char_p
        _lib = lib
    return _lib


def _last_error(lib: Any) -> str:
    return bytes(lib.pipc_last_error() or b"").decode(errors="replace")


class LiveCapture:
    """An open live capture on one or more interfaces. Iterate it (or call :meth:`batches`) for
    :class:`PacketBatch` objects; use it as a context manager or call :meth:`close`."""

    def __init__(
        self,
        interfaces: Sequence[str],
        snaplen: int = MAX_SNAPLEN,
        bpf_filter: str | None = None,
        promisc: bool = True,
        timeout_ms: int = 100,
        buffer_bytes: int = 0,
        immediate: bool = False,
        linger_ms: int = 0,
    ) -> None:
        if isinstance(interfaces, str):
            interfaces = [interfaces]
        if not interfaces:
            raise ValueError("give at least one interface to capture on")
        if not 1 <= snaplen <= MAX_SNAPLEN:
            raise ValueError(f"snaplen {snaplen} is out of range (1 to {MAX_SNAPLEN})")
        if not 0 <= buffer_bytes < 1 << 31:
            raise ValueError("buffer_bytes must be between 0 (libpcap's default here: 8 MiB) and 2 GiB")
        self._lib = lib = _library()
        self._h: int | None = None
        names = (ctypes.c_char_p * len(interfaces))(*(name.encode() for name in interfaces))
        opts = _Options(ctypes.sizeof(_Options), names, len(interfaces), snaplen, int(promisc),
                        bpf_filter.encode() if bpf_filter else None, buffer_bytes, int(immediate), timeout_ms,
                        max(0, linger_ms))
        handle = ctypes.c_void_p()
        rc = lib.pipc_capture_open(ctypes.byref(opts), ctypes.byref(handle))
        if rc < 0:
            raise CaptureOpenError(-rc, _last_error(lib))
        self._h = handle.value
        self.snaplen = snaplen
        self._lock = threading.Lock()  # held by a read or a run: one reader at a time
        self._life = threading.Lock()  # close() against interface_stats() (the C side serialises libpcap calls)
        self.interfaces: list[InterfaceStats] = self._query(lib.pipc_capture_info)
        self.iface = interfaces[0]
        self.linktype: int = self.interfaces[0].linktype
        self._max = 0
        self._used = ctypes.c_size_t()
        self._used_ref = ctypes.byref(self._used)
        self._next = lib.pipc_capture_next_columns

    def _query(self, fn: Any) -> list[InterfaceStats]:
        out = []
        st = _IfStats()
        for i in range(int(self._lib.pipc_capture_count(self._handle()))):
            rc = fn(self._handle(), i, ctypes.byref(st))
            if rc < 0:
                raise PacketIpcError(-rc, _last_error(self._lib))
            out.append(InterfaceStats(st.name.decode(errors="replace"), st.ifindex, st.linktype, bool(st.nanosecond),
                                      st.captured, st.received, st.dropped, st.if_dropped))
        return out

    def _handle(self) -> int:
        if self._h is None:
            raise ValueError("the capture is closed")
        return self._h

    def _columns(self, max_packets: int) -> None:
        if max_packets != self._max:
            self._max = max_packets
            ts = (ctypes.c_uint64 * max_packets)()
            cols = [(ctypes.c_uint32 * max_packets)() for _ in range(4)]
            self._columns_kept = (ts, cols)
            self._views = [memoryview(ts), *(memoryview(c) for c in cols)]
            self._addrs = [ctypes.addressof(ts), *(ctypes.addressof(c) for c in cols)]
            self._buf_bytes = max(2 * self.snaplen, min(max_packets * 2048, 4 << 20))
            self._bufs: list[ctypes.Array[ctypes.c_char]] = []

    def _data_buffer(self) -> ctypes.Array[ctypes.c_char]:
        """A data buffer (a ctypes array: its address never moves) that no live batch uses. A batch holds a
        memoryview of its buffer, and so a reference to it: a buffer referenced only by the pool is free."""
        for buf in self._bufs:
            if sys.getrefcount(buf) <= 3:  # the pool's list, this loop's variable, getrefcount's argument
                return buf
        buf = (ctypes.c_char * self._buf_bytes)()
        if len(self._bufs) < 4:
            self._bufs.append(buf)
        return buf

    def read_batch(self, max_packets: int = 256, timeout: float | None = 0.1) -> PacketBatch | None:
        """Returns the packets that arrived (at most ``max_packets``, waiting up to ``timeout`` seconds for the
        first; ``None`` waits until one arrives), or None if none came or a signal interrupted the wait."""
        if max_packets < 1:
            raise ValueError("max_packets must be at least 1")
        self._columns(max_packets)
        buf = self._data_buffer()
        ms = -1 if timeout is None else max(0, int(timeout * 1000))
        ts, caplen, origlen, linktype, ifindex = self._addrs
        with self._lock:
            n = self._next(self._handle(), max_packets, ts, caplen, origlen, linktype, ifindex, ctypes.addressof(buf),
                           self._buf_bytes, self._used_ref, ms)
        if n <= 0:
            if n in (-errno.ETIMEDOUT, -errno.EINTR):
                return None
            raise PacketIpcError(-n, _last_error(self._lib))
        v = self._views
        return PacketBatch.from_buffers(v[0][:n], v[1][:n], memoryview(buf)[: self._used.value], v[2][:n],
                                        linktypes=v[3][:n], ifindexes=v[4][:n])

    def batches(
        self, max_packets: int = 256, *, count: int | None = None, duration: float | None = None
    ) -> Iterator[PacketBatch]:
        """Yields batches until ``count`` packets or ``duration`` seconds (forever if neither)."""
        seen = 0
        end = None if duration is None else time.monotonic() + duration
        while (count is None or seen < count) and (end is None or time.monotonic() < end):
            want = max_packets if count is None else min(max_packets, count - seen)
            wait = 0.1 if end is None else max(0.0, min(0.1, end - time.monotonic()))
            batch = self.read_batch(want, wait)
            if batch is not None:
                seen += len(batch)
                yield batch

    def __iter__(self) -> Iterator[PacketBatch]:
        return self.batches()

    def run(self, server: Server, *, count: int | None = None, duration: float | None = None,
            batch: int = 4096, linger_ms: int = 0) -> CaptureRun:
        """Captures straight into ``server``'s workers, the whole loop in C (``pipc_capture_run``) with the
        GIL released: each packet is copied once, from libpcap's ring into its worker's ring, by the server's
        distribution (what a full ring cannot take at once is staged and sent by the worker's overflow
        policy), with no Python per packet or per batch. Runs until ``count`` packets,
        ``duration`` seconds, or :meth:`breakloop` (from another thread or a signal handler; the main thread
        cannot run its signal handlers while it is in here, so call this from another thread when signals
        must stop it). ``linger_ms`` replaces the capture's own during the run: once a read has packets, how
        long it may wait for more (0 suits libpcap's delivery of whole kernel blocks). Does not end the stream (``server.send(None)`` does). Raises
        :class:`ConnectionLostError` when no worker is left (its ``sent`` counts the packets written), and
        :class:`PacketIpcError` when an interface fails."""
        if count is not None and count < 1:
            raise ValueError("count must be at least 1 (or None)")
        if duration is not None and duration <= 0:
            raise ValueError("duration must be > 0 seconds (or None)")
        if not 1 <= batch < 1 << 32:
            raise ValueError("batch must be at least 1")
        if not 0 <= linger_ms < 1 << 31:
            raise ValueError("linger_ms must be >= 0")
        opts = _RunOptions(ctypes.sizeof(_RunOptions), count or 0,
                           0 if duration is None else max(1, round(duration * 1000)), batch, linger_ms)
        res = _RunResult(ctypes.sizeof(_RunResult))
        srv = server._s._handle  # the server stays open: this call holds a reference to it
        with self._lock:  # one reader at a time (interface_stats() does not need this lock meanwhile)
            rc = self._lib.pipc_capture_run(self._handle(), srv, ctypes.byref(opts), ctypes.byref(res))
        if rc < 0:
            exc = from_code(-rc, _last_error(self._lib) + (f" ({res.not_sent:,} captured packets not sent)"
                                                           if res.not_sent else ""))
            if isinstance(exc, ConnectionLostError):
                exc.sent = int(res.packets)
            raise exc
        return CaptureRun(int(res.packets), int(res.bytes), int(res.batches), _STOPPED.get(rc, str(rc)),
                          int(res.staged))

    def stats(self) -> CaptureStats:
        """Kernel counters summed over the interfaces (received, dropped by the kernel, by the interface)."""
        per = self.interface_stats()
        return CaptureStats(sum(s.received for s in per), sum(s.dropped for s in per), sum(s.if_dropped for s in per))

    def interface_stats(self) -> list[InterfaceStats]:
        """Per interface: captured by packet-ipc, and libpcap's received / dropped / if_dropped (callable from
        another thread, e.g. the server's statistics thread)."""
        with self._life:
            return self._query(self._lib.pipc_capture_stats)

    def breakloop(self) -> None:
        """Makes a pending or the next read return at once with nothing, or a :meth:`run` return (safe from a
        signal handler and from any thread)."""
        if self._h is not None:
            self._lib.pipc_capture_breakloop(self._h)

    def close(self) -> None:
        """Closes the capture (idempotent; waits for a read or :meth:`run` in another thread to return)."""
        with self._lock, self._life:
            if self._h is not None:
                self._lib.pipc_capture_close(self._h)
                self._h = None

    def __enter__(self) -> LiveCapture:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_h", None) is not None:
            self.close()


def open_live(
    iface: str | Sequence[str],
    snaplen: int = MAX_SNAPLEN,
    bpf_filter: str | None = None,
    promisc: bool = True,
    timeout_ms: int = 100,
    *,
    buffer_bytes: int = 0,
    immediate: bool = False,
    linger_ms: int = 0,
) -> LiveCapture:
    """Opens ``iface`` (a name, or several) for live capture through libpcap. Raises ``ValueError`` for a
    snaplen outside 1..262144, and :class:`CaptureOpenError` with one clear line for an interface that does
    not exist, missing permission (capturing needs CAP_NET_RAW), a filter libpcap cannot compile, or libpcap
    not installed. ``buffer_bytes`` sizes libpcap's kernel ring per interface (0: 8 MiB); ``timeout_ms`` is
    how long the kernel may hold a partly filled block; ``immediate`` delivers every packet at once;
    ``linger_ms``: once a read has packets, how long it may wait for more to fill the batch (fewer, fuller
    batches: less CPU per packet, at most that much more latency)."""
    return LiveCapture([iface] if isinstance(iface, str) else list(iface), snaplen, bpf_filter, promisc,
                       timeout_ms, buffer_bytes, immediate, linger_ms)
