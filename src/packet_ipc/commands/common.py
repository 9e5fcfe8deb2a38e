"""Pieces every command shares: the capture-file list, the server options, the per-worker summary table."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any

__all__ = ["packet_checksum"]


def packet_checksum(packets: Iterable[Any]) -> int:
    """Order-independent checksum of packets: the sum mod 2**64 of each packet's 64-bit BLAKE2b over its
    timestamp, wire length and bytes. Workers' sums add up to the sender's whatever the distribution."""
    total = 0
    for p in packets:
        h = hashlib.blake2b(digest_size=8)
        h.update(p.timestamp.to_bytes(8, "little"))
        h.update(p.orig_len.to_bytes(4, "little"))
        h.update(p.data)
        total += int.from_bytes(h.digest(), "little")
    return total & 0xFFFF_FFFF_FFFF_FFFF


class UsageError(Exception):
    """A usage error found by a command before it starts anything (exit 2, as argparse's own)."""


def err(*parts: object) -> None:
    """One line on stderr, flushed at once (tests and supervisors read it as it comes)."""
    print(*parts, file=sys.stderr, flush=True)


# ---- argument types: every out-of-range value is a usage error (exit 2) before anything starts ------------


def _number(kind: type, text: str, low: float, what: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not value >= low or value != value:  # NaN compares false
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (argparse type)."""
    return int(_number(int, text, 1, "a whole number >= 1"))


def count_or_zero(text: str) -> int:
    """An integer >= 0 (argparse type)."""
    return int(_number(int, text, 0, "a whole number >= 0"))


def positive_float(text: str) -> float:
    """A number > 0 (argparse type)."""
    value = float(_number(float, text, 0, "a number > 0"))
    if value == 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number > 0")
    return value


def seconds(text: str) -> float:
    """A duration in seconds >= 0 (argparse type)."""
    value = float(_number(float, text, 0, "a number of seconds >= 0"))
    if value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def parse_speed(text: str) -> float | None:
    """``max`` (top speed: None) or a factor of real time > 0 (argparse type)."""
    if text == "max":
        return None
    try:
        return positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the multiplier must be 'max' or a positive factor (1.0 = real time)"
        ) from None


# ---- signals: SIGTERM is SIGINT ---------------------------------------------------------------------------


class StopSignals:
    """SIGINT and SIGTERM (Ctrl-C, systemd, ``timeout``) both ask the command to stop: ``KeyboardInterrupt``
    is raised once, and never inside a :meth:`protected` section (a pcap record half written): there it is
    raised when the section ends. ``signum`` says which signal came."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._depth = 0
        self._raised = False

    def install(self) -> None:
        """Handle SIGINT and SIGTERM in this (main) thread from now on."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        if self._depth == 0 and not self._raised:
            self._raised = True
            raise KeyboardInterrupt

    def __enter__(self) -> StopSignals:
        self._depth += 1
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: object) -> None:
        self._depth -= 1
        if self._depth == 0 and et is None and self.signum is not None and not self._raised:
            self._raised = True
            raise KeyboardInterrupt

    @property
    def name(self) -> str:
        """The signal that asked to stop, by name (``SIGTERM``), or ``""``."""
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def protected(self) -> StopSignals:
        """A ``with`` block no stop request interrupts."""
        return self


STOP = StopSignals()


# ---- files --------------------------------------------------------------------------------------------------


def capture_files(items: Sequence[str]) -> list[Path]:
    """The captures named on the command line: files as given (``-`` is stdin), directories searched for
    .pcap/.pcapng files (sorted). Raises ``FileNotFoundError`` naming the full path of a missing one."""
    files: list[Path] = []
    for item in items:
        path = Path("/dev/stdin") if item == "-" else Path(item)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in (".pcap", ".pcapng") and not p.is_dir()))
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(2, "no such capture file", str(path.absolute()))
    return files


def check_output_path(path: str) -> None:
    """Fails now, before connecting to anything, if ``path`` cannot be created or written: the error names
    the full path. ``-`` (stdout) always passes."""
    if path == "-":
        return
    full = Path(path).absolute()
    parent = full.parent
    if full.is_dir():
        raise IsADirectoryError(21, "the output is a directory", str(full))
    if not parent.is_dir():
        raise FileNotFoundError(2, "the output's directory does not exist", str(full))
    target = full if full.exists() else parent
    if not os.access(target, os.W_OK):
        raise PermissionError(13, "no permission to write the output", str(full))


# ---- tables: rich on a terminal, plain aligned text (never cut) elsewhere -----------------------------------

WORKER_COLUMNS = ("worker", "pid", "policy", "sent", "bytes", "dropped", "in ring", "blocked s", "state")


def worker_rows(workers: list[dict[str, Any]]) -> list[list[str]]:
    """One row of :data:`WORKER_COLUMNS` per worker."""
    return [
        [str(w["index"]), str(w["peer_pid"]), w["overflow"], f"{w['packets']:,}", f"{w['bytes']:,}",
         f"{w['dropped_packets']:,}", f"{w['ring_used_slots']:,}", f"{w['blocked_ns'] / 1e9:.3f}",
         "live" if w["live"] else "gone"]
        for w in workers
    ]


def print_table(title: str, columns: Sequence[str], rows: list[list[str]], file: IO[str]) -> None:
    """A table with a title: drawn by rich on a terminal, else plain text right-aligned in columns as wide
    as their widest cell (a log file or pipe never gets a cell cut to fit 80 columns)."""
    if file.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for col in columns:
            table.add_column(col, justify="right")
        for row in rows:
            table.add_row(*row)
        Console(file=file).print(table)
        return
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    lines = [title, "  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    print("\n".join(lines), file=file, flush=True)


# ---- replay / capture ---------------------------------------------------------------------------------


def make_server(args: argparse.Namespace, linktype: int = 1) -> Any:
    """The server of a replay or capture, from the common options."""
    from ..server import Server

    return Server(
        args.name, capacity=args.capacity, linktype=linktype, distribution=args.distribution, overflow=args.overflow
    )


def drain_wait(server: Any, seconds: float = 5.0) -> None:
    """After end of stream, give workers a moment to drain so 'in ring' shows what they did not take."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if all(c.stats().ring_used_slots == 0 or not c.alive for c in server.connections):
            return
        time.sleep(0.02)


def print_summary(packets: int, nbytes: int, seconds: float, workers: list[dict[str, Any]], lost: int,
                  as_json: bool, extra: dict[str, Any] | None = None) -> None:
    """The end-of-run summary: per-worker table and totals on stderr, or one JSON document on stdout."""
    if as_json:
        print(json.dumps({"packets": packets, "bytes": nbytes, "seconds": seconds, "lost_packets": lost,
                          "workers": workers, **(extra or {})}), flush=True)
        return
    rate = packets / seconds if seconds else 0.0
    print_table("per worker", WORKER_COLUMNS, worker_rows(workers), sys.stderr)
    err(f"sent {packets:,} packets, {nbytes:,} bytes in {seconds:.3f} s: {rate:,.0f} packets/s, "
        f"{nbytes * 8 / seconds / 1e9 if seconds else 0:.3f} Gbit/s; lost with dead workers: {lost}")


def add_server_options(p: argparse.ArgumentParser) -> None:
    """Options of every command that serves workers (replay, capture)."""
    p.add_argument("--name", default=None, help="server name (default: a fresh private path; '@x' is abstract)")
    p.add_argument("--workers", type=positive_int, default=1, help="wait for this many workers before starting (1)")
    p.add_argument("--distribution", choices=["flow", "round_robin", "broadcast"], default="flow",
                   help="how packets are spread over workers (flow)")
    p.add_argument("--overflow", choices=["block", "drop"], default="block",
                   help="default policy when a worker's ring is full (block: lossless)")
    p.add_argument("--capacity", type=positive_int, default=4 << 20, help="ring bytes per worker (4 MiB)")
    p.add_argument("--accept-timeout", type=seconds, default=None, help="give up waiting for workers after S seconds")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
