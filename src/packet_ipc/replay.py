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
from .pcap import open_capture
from .server import Server

__all__ = ["ReplaySummary", "replay", "batches_of"]


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


def batches_of(paths: Iterable[str | os.PathLike[str]], batch_size: int = 256) -> Iterator[PacketBatch]:
    """Every packet of the captures, in file order, as batches (each keeps its packets' linktypes)."""
    for path in paths:
        with open_capture(path) as reader:
            for records in reader.read_batches(batch_size):
                yield PacketBatch.from_packets(records, reader.linktype)


def replay(
    paths: Iterable[str | os.PathLike[str]],
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
    ``FileNotFoundError`` for a missing one.
    """
    paths = [os.fspath(p) for p in paths]
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
