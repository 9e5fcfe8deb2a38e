"""Replaying capture files into a server: pacing, looping, progress, and the summary a user reads at the end.

:func:`replay` reads captures with :mod:`packet_ipc.pcap` in batches, turns each into a
:class:`PacketBatch` and hands it to :meth:`Server.send_batch` (which distributes over the workers). With
``speed`` it keeps the captures' own timing (1.0 = real time, 2.0 = twice as fast); ``None`` is as fast as
the workers take it. A ``rich`` progress bar shows packets/s and Gbit/s while it runs.
"""

from __future__ import annotations

import bisect
import itertools
import os
import select
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .batch import PacketBatch
from .errors import CaptureError, ConnectionLostError
from .pcap import CaptureReader, open_capture
from .server import Server

__all__ = ["ReplaySummary", "replay", "batches_of", "check_captures", "survey_captures", "slice_batch"]


@dataclass
class ReplaySummary:
    """What a replay did: totals, time, and per-worker counters at the end."""

    files: int = 0
    packets: int = 0
    bytes: int = 0
    seconds: float = 0.0
    workers: list[dict[str, Any]] = field(default_factory=list)
    lost_packets: int = 0
    stopped: str | None = None  # why the replay ended before the captures did (None: it did not)

    @property
    def packets_per_second(self) -> float:
        """Average rate over the whole replay."""
        return self.packets / self.seconds if self.seconds else 0.0

    @property
    def gbits_per_second(self) -> float:
        """Average captured-bytes rate over the whole replay, in Gbit/s."""
        return self.bytes * 8 / self.seconds / 1e9 if self.seconds else 0.0


def batches_of(
    paths: Iterable[str | os.PathLike[str] | CaptureReader], batch_size: int = 256
) -> Iterator[PacketBatch]:
    """Every packet of the captures, in file order, as batches (each keeps its packets' linktypes).

    An open :class:`CaptureReader` among ``paths`` (a pipe whose header was read already) is read on from
    where it stands, and closed at its end."""
    for path in paths:
        with path if isinstance(path, CaptureReader) else open_capture(path) as reader:
            yield from reader.read_packet_batches(batch_size)


def survey_captures(
    paths: Iterable[str | os.PathLike[str]], *, keep_going: bool = False, warn: Callable[[str], None] | None = None
) -> tuple[list[str], int | None]:
    """Reads every capture through once, before anything is sent; returns (the captures to replay, packets).

    Regular files only are read (a pipe or device cannot be read twice: it is kept, unread, and the total is
    ``None``). Without ``keep_going`` the first problem raises: :class:`~packet_ipc.errors.CaptureError` for
    a damaged capture (the message names the file, the byte offset and the packet index) or a timestamp
    packet-ipc cannot carry (before 1970 or after 2554), ``OSError`` from opening a file. With
    ``keep_going``, each problem is one call of ``warn`` instead: a file that cannot be opened or has no
    whole packet is left out; a damaged one keeps its whole packets before the damage (as tcpdump reads a
    capture whose last record was cut by a full disk or a killed writer).
    """
    kept: list[str] = []
    total: int | None = 0
    for path in (os.fspath(p) for p in paths):
        if not os.path.isfile(path):
            kept.append(path)
            total = None
            continue
        count = 0
        try:
            with open_capture(path) as reader:
                for record in reader:
                    if not 0 <= record.timestamp < 1 << 64:
                        raise CaptureError(
                            f"{reader.name}: packet index {count} has timestamp {record.timestamp} ns, outside "
                            "what packet-ipc carries (0 to 2**64 ns since 1970: the years 1970 to 2554)"
                        )
                    count += 1
        except (OSError, ValueError) as e:  # CaptureError is both
            if not keep_going or (isinstance(e, CaptureError) and "timestamp" in str(e) and count):
                raise
            what = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            if count:
                if warn:
                    warn(f"{path}: keeping its {count:,} whole packets: {what}")
            else:
                if warn:
                    warn(f"{path}: skipped: {what}" + ("" if path in what else f" ({path})"))
                continue
        kept.append(path)
        if total is not None:
            total += count
    return kept, total


def check_captures(paths: Iterable[str | os.PathLike[str]]) -> int | None:
    """Reads every capture through once and returns the number of packets, before anything is sent.

    Lets a caller refuse a capture it cannot replay whole before any worker is served. Does not block
    (regular files only: a pipe or device cannot be read twice, so it is not checked and the total is
    ``None``). Raises :class:`~packet_ipc.errors.CaptureError` for a damaged capture (the message names the
    file, the byte offset and the packet index) and for a packet whose timestamp packet-ipc cannot carry
    (before 1970 or beyond 2**64 ns, after the year 2554); ``FileNotFoundError`` and other ``OSError``
    from opening a file.
    """
    return survey_captures(paths)[1]


def slice_batch(batch: PacketBatch, start: int, stop: int) -> PacketBatch:
    """Packets ``start`` to ``stop`` of ``batch`` as a batch of their own (a copy; each keeps its linktype)."""
    if start == 0 and stop >= len(batch):
        return batch
    return PacketBatch.from_packets([batch[i] for i in range(start, min(stop, len(batch)))])


class _Pacer:
    """When each packet is due, in seconds after the replay's start: by the capture's own clock divided by
    ``speed``, at ``pps`` packets per second, or at ``mbps`` megabits per second (of captured bytes)."""

    def __init__(self, speed: float | None, pps: float | None, mbps: float | None) -> None:
        self.speed, self.pps, self.mbps = speed, pps, mbps
        self.active = any(v is not None for v in (speed, pps, mbps))
        self._first_ts: int | None = None
        self._base = 0.0  # when the current file's first packet is due
        self._last = 0.0  # when the last packet handed out is due
        self._packets = 0
        self._bits = 0

    def new_file(self) -> None:
        """The next capture's clock starts where the previous capture ended (as tcpreplay plays files)."""
        self._first_ts = None
        self._base = self._last

    def due(self, batch: PacketBatch) -> list[float]:
        """The due time of each packet of the batch (in order)."""
        out: list[float] = []
        if self.speed is not None:
            timestamps = batch.timestamps
            if self._first_ts is None and len(timestamps):
                self._first_ts = timestamps[0]
            first, base, factor = self._first_ts or 0, self._base, 1e-9 / self.speed
            # never earlier than the packet before: a capture's clock may step back, the replay's order does not
            out = list(itertools.accumulate((base + (ts - first) * factor for ts in timestamps), max))
        elif self.pps is not None:
            n, step = self._packets, 1.0 / self.pps
            out = [(n + i) * step for i in range(len(batch))]
            self._packets += len(batch)
        elif self.mbps is not None:
            bits, per_bit = self._bits, 1.0 / (self.mbps * 1e6)
            for caplen in batch.caplens:
                out.append(bits * per_bit)
                bits += caplen * 8
            self._bits = bits
        if out:
            self._last = max(self._last, out[-1])
        return out


def replay(
    paths: Iterable[str | os.PathLike[str] | CaptureReader],
    server: Server,
    *,
    speed: float | None = None,
    pps: float | None = None,
    mbps: float | None = None,
    loop: int = 1,
    limit: int | None = None,
    batch_size: int = 256,
    progress: bool = False,
    total_packets: int | None = None,
    keep_going: bool = False,
    rejoin_timeout: float | None = None,
    warn: Callable[[str], None] | None = None,
    summary: ReplaySummary | None = None,
) -> ReplaySummary:
    """Sends the captures ``loop`` times (0: until interrupted) through ``server``, then ends the stream.

    Pacing: ``speed`` keeps the captures' own timing, packet by packet (1.0 = real time, 2.0 = twice as
    fast; a batch is split where its packets are due at different times); ``pps`` sends at a fixed packet
    rate, ``mbps`` at a fixed bit rate; all ``None`` (the default) is as fast as the workers take it. At most
    one may be given. ``limit`` stops after that many packets. ``keep_going`` sends the whole packets of a
    damaged capture and goes on with the next one (``warn`` is called with one line for each). When the last
    worker leaves, ``rejoin_timeout`` seconds are given to a replacement (``None``: none); without one the
    replay stops, with ``summary.stopped`` saying why; the packets the departed workers did not get are in
    ``summary.lost_packets``. Workers connecting while the replay runs join it when ``rejoin_timeout`` is set.
    A ``summary`` given is filled in as the replay goes, so a caller interrupted (``KeyboardInterrupt``)
    still has what was sent; the stream is then not ended (the caller ends or aborts it).

    Blocks while workers are slow (``"block"`` policy). Returns a :class:`ReplaySummary`. Raises
    :class:`~packet_ipc.errors.CaptureError` for a damaged capture (nothing of the damaged batch is sent),
    ``FileNotFoundError`` for a missing one, ``ValueError`` for bad arguments (``loop`` other than 1 with an
    open reader among ``paths``: a pipe can be read only once).
    """
    if sum(v is not None for v in (speed, pps, mbps)) > 1:
        raise ValueError("give at most one of speed, pps and mbps")
    for label, value in (("speed", speed), ("pps", pps), ("mbps", mbps)):
        if value is not None and not value > 0:
            raise ValueError(f"{label} must be > 0, not {value}")
    if loop < 0 or (limit is not None and limit < 0) or batch_size < 1:
        raise ValueError("loop and limit must be >= 0, batch_size >= 1")
    sources: list[str | CaptureReader] = [p if isinstance(p, CaptureReader) else os.fspath(p) for p in paths]
    if loop != 1 and any(isinstance(p, CaptureReader) for p in sources):
        raise ValueError("a capture read from a pipe can be replayed only once (loop 1)")
    if summary is None:
        summary = ReplaySummary()
    summary.files = len(sources)
    if total_packets is not None and limit is not None:
        total_packets = min(total_packets, limit)
    bar = _Progress(total_packets, enabled=progress)
    pacer = _Pacer(speed, pps, mbps)
    feeder = _Feeder(server, summary, rejoin_timeout)
    start = time.monotonic()
    taken = 0  # packets read from the captures (sent, or counted as lost with the workers that left)
    try:
        with bar:
            try:
                for _ in range(loop) if loop else itertools.count():
                    taken_before = taken
                    for path in sources:
                        pacer.new_file()
                        for batch in _file_batches(path, batch_size, keep_going, warn):
                            if limit is not None and taken + len(batch) >= limit:
                                batch = slice_batch(batch, 0, limit - taken)
                            if pacer.active:
                                _send_paced(feeder, batch, pacer.due(batch), start)
                            else:
                                feeder.send(batch)
                            taken += len(batch)
                            bar.update(taken, summary.bytes, time.monotonic() - start)
                            if limit is not None and taken >= limit:
                                raise _Stop
                    if taken == taken_before:
                        break  # nothing in the captures: looping forever would send nothing forever
            except _Stop:
                pass
            bar.update(taken, summary.bytes, time.monotonic() - start, final=True)
            server.send(None)
    finally:
        summary.seconds = time.monotonic() - start
        stats = server.stats()
        summary.workers = stats.connections
        summary.lost_packets = stats.lost_packets + feeder.unsent
    return summary


class _Stop(Exception):
    """The replay ends early: the limit is reached or no worker is left."""


def _file_batches(
    path: str | CaptureReader, batch_size: int, keep_going: bool, warn: Callable[[str], None] | None
) -> Iterator[PacketBatch]:
    try:
        yield from batches_of([path], batch_size)
    except CaptureError as e:
        if not keep_going:
            raise
        if warn and not (isinstance(path, str) and os.path.isfile(path)):  # files were surveyed (and warned) first
            warn(f"{e}: the whole packets before it were sent")


def _send_paced(feeder: _Feeder, batch: PacketBatch, due: list[float], start: float) -> None:
    """Sends each packet when it is due: the packets due by now together, then a sleep until the next."""
    i, n = 0, len(batch)
    while i < n:
        now = time.monotonic() - start
        j = bisect.bisect_right(due, now + _PACING_SLACK_S, i)
        if j == i:
            time.sleep(due[i] - now)  # pacing to the capture's clock: nothing to wait on but time
            continue
        feeder.send(slice_batch(batch, i, j))
        i = j


_PACING_SLACK_S = 0.0002  # packets due within this much of now go in one send (below sleep's own precision)


class _Feeder:
    """Hands batches to the server; when no worker is left, waits for a replacement or stops the replay."""

    def __init__(self, server: Server, summary: ReplaySummary, rejoin_timeout: float | None) -> None:
        self.server, self.summary, self.rejoin_timeout = server, summary, rejoin_timeout
        self.unsent = 0  # packets no worker was there to take
        self._last_poll = 0.0

    def send(self, batch: PacketBatch) -> None:
        if self.rejoin_timeout is not None:
            self._accept_newcomers()
        while True:
            # With one worker the packets written before it left are a prefix of the batch: a replacement
            # gets exactly the rest. With several that all left at once, which ones arrived is not known:
            # the rest of the batch is counted as lost instead.
            single = len(self.server.connections) <= 1
            try:
                written = self.server.send_batch(batch)
            except ConnectionLostError as e:
                if self.server.connections:
                    raise
                written = getattr(e, "sent", 0)
            else:
                # Complete (under "drop" a short count means counted drops): the server-level send raises
                # ConnectionLostError, with `sent`, when the last worker leaves during the batch.
                self._count(batch)
                return
            written = max(0, min(written, len(batch)))
            self._count(slice_batch(batch, 0, written) if written else None)
            rest = slice_batch(batch, written, len(batch)) if written < len(batch) else None
            if rest is not None and not single:
                self.unsent += len(rest)
                rest = None
            try:
                self._await_replacement()
            except _Stop:
                if rest is not None:
                    self.unsent += len(rest)
                raise
            if rest is None:
                return
            batch = rest

    def _count(self, batch: PacketBatch | None) -> None:
        if batch is not None:
            self.summary.packets += len(batch)
            self.summary.bytes += batch.nbytes

    def _accept_newcomers(self) -> None:
        now = time.monotonic()
        if now - self._last_poll < 0.05:
            return
        self._last_poll = now
        while select.select([self.server.fileno()], [], [], 0)[0]:
            try:
                self.server.accept(timeout=1.0)
            except (TimeoutError, OSError):
                return

    def _await_replacement(self) -> None:
        if self.rejoin_timeout is None:
            self.summary.stopped = "every worker left (no --rejoin-timeout to wait for a replacement)"
            raise _Stop
        try:
            self.server.accept(timeout=self.rejoin_timeout)
        except TimeoutError:
            self.summary.stopped = f"every worker left and none joined within {self.rejoin_timeout:g} s"
            raise _Stop from None


class _Progress:
    """A rich progress bar with packets/s and Gbit/s, and when the total is known (regular files, not looping
    forever) the total, the percentage and the time left; or nothing (not a terminal, or disabled)."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        self._bar: Any = None
        self._last = 0.0
        if not enabled:
            return
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
        from rich.console import Console
        from rich.progress import TimeRemainingColumn

        known: list[Any] = [TaskProgressColumn(), TextColumn("ETA"), TimeRemainingColumn()] if total else []
        self._total = total
        self._bar = Progress(
            TextColumn("[bold]replay"),
            BarColumn(),
            TextColumn("{task.completed:,}" + (" of {task.total:,.0f}" if total else "") + " packets"),
            *known[:1],
            TextColumn("{task.fields[pps]:>10,.0f} pkt/s"),
            TextColumn("{task.fields[gbps]:>6.2f} Gbit/s"),
            TimeElapsedColumn(),
            *known[1:],
            console=Console(stderr=True),  # the bar is on stderr: stdout may be a pipe (--json) or a file
        )
        self._task = self._bar.add_task("replay", total=total, pps=0.0, gbps=0.0)

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, packets: int, nbytes: int, elapsed: float, final: bool = False) -> None:
        if self._bar is None or (not final and self._last and elapsed - self._last < 0.1):
            return
        self._last = elapsed
        rate = packets / elapsed if elapsed else 0.0
        gbps = nbytes * 8 / elapsed / 1e9 if elapsed else 0.0
        total = packets if final and self._total is None else self._total
        self._bar.update(self._task, completed=packets, pps=rate, gbps=gbps, total=total)
