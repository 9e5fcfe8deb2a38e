"""Replaying capture files into a server: pacing, looping, progress, and the summary a user reads at the end.

:func:`replay` reads captures with :mod:`packet_ipc.pcap` in batches, turns each into a
:class:`PacketBatch` and hands it to :meth:`Server.send_batch` (which distributes over the workers). With
``speed`` it keeps the captures' own timing (1.0 = real time, 2.0 = twice as fast); ``None`` is as fast as
the workers take it. A ``rich`` progress bar shows packets/s and Gbit/s while it runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .batch import PacketBatch
from .errors import CaptureError
from .pcap import CaptureReader, open_capture
from .server import Server

__all__ = ["ReplaySummary", "replay", "batches_of", "check_captures"]


@dataclass
class ReplaySummary:
    """What a replay did: totals, time, and per-worker counters at the end."""

    files: int = 0
    packets: int = 0
    bytes: int = 0
    seconds: float = 0.0
    workers: list[dict[str, Any]] = field(default_factory=list)
    lost_packets: int = 0

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


def check_captures(paths: Iterable[str | os.PathLike[str]]) -> int | None:
    """Reads every capture through once and returns the number of packets, before anything is sent.

    Lets a caller refuse a capture it cannot replay whole before any worker is served. Does not block
    (regular files only: a pipe or device cannot be read twice, so it is not checked and the total is
    ``None``). Raises :class:`~packet_ipc.errors.CaptureError` for a damaged capture (the message names the
    file, the byte offset and the packet index) and for a packet whose timestamp packet-ipc cannot carry
    (before 1970 or beyond 2**64 ns, after the year 2554); ``FileNotFoundError`` and other ``OSError``
    from opening a file.
    """
    total: int | None = 0
    for path in paths:
        if not os.path.isfile(path):
            total = None
            continue
        count = 0
        with open_capture(path) as reader:
            for record in reader:
                if not 0 <= record.timestamp < 1 << 64:
                    raise CaptureError(
                        f"{reader.name}: packet index {count} has timestamp {record.timestamp} ns, outside what "
                        "packet-ipc carries (0 to 2**64 ns since 1970: the years 1970 to 2554)"
                    )
                count += 1
        if total is not None:
            total += count
    return total


def replay(
    paths: Iterable[str | os.PathLike[str] | CaptureReader],
    server: Server,
    *,
    speed: float | None = None,
    loop: int = 1,
    batch_size: int = 256,
    progress: bool = False,
    total_packets: int | None = None,
) -> ReplaySummary:
    """Sends the captures ``loop`` times through ``server`` (to its accepted workers), then ends the stream.

    Blocks while workers are slow (``"block"`` policy). Returns a :class:`ReplaySummary`. Raises
    :class:`~packet_ipc.errors.CaptureError` for a damaged capture (nothing of the damaged batch is sent),
    ``FileNotFoundError`` for a missing one, ``ValueError`` for ``loop`` > 1 with an open reader among
    ``paths`` (a pipe can be read only once).
    """
    paths = [p if isinstance(p, CaptureReader) else os.fspath(p) for p in paths]
    if loop > 1 and any(isinstance(p, CaptureReader) for p in paths):
        raise ValueError("a capture read from a pipe can be replayed only once (loop 1)")
    summary = ReplaySummary(files=len(paths))
    bar = _Progress(total_packets if total_packets is not None else None, enabled=progress)
    start = time.monotonic()
    first_ts: int | None = None
    with bar:
        for _ in range(loop):
            for batch in batches_of(paths, batch_size):
                if speed is not None and len(batch):
                    ts0 = batch.timestamps[0]
                    if first_ts is None:
                        first_ts = ts0
                    due = start + (ts0 - first_ts) / 1e9 / speed
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)  # pacing to the capture's clock
                server.send_batch(batch)
                summary.packets += len(batch)
                summary.bytes += batch.nbytes
                bar.update(summary.packets, summary.bytes, time.monotonic() - start)
            first_ts = None  # each loop restarts the capture's clock
        bar.update(summary.packets, summary.bytes, time.monotonic() - start, final=True)
        server.send(None)
    summary.seconds = time.monotonic() - start
    stats = server.stats()
    summary.workers = stats.connections
    summary.lost_packets = stats.lost_packets
    return summary


class _Progress:
    """A rich progress bar with packets/s and Gbit/s, or nothing (not a terminal, or disabled)."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        self._bar: Any = None
        self._last = 0.0
        if not enabled:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("[bold]replay"),
            BarColumn(),
            TextColumn("{task.completed:,} packets"),
            TextColumn("{task.fields[pps]:>10,.0f} pkt/s"),
            TextColumn("{task.fields[gbps]:>6.2f} Gbit/s"),
            TimeElapsedColumn(),
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
        self._bar.update(self._task, completed=packets, pps=rate, gbps=gbps, total=packets if final else None)
