"""Pieces every command shares: the capture-file list, the server options, the per-worker summary table."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

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


def err(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def parse_speed(text: str) -> float | None:
    if text == "max":
        return None
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("speed must be 'max' or a positive factor (1.0 = real time)")
    return value


def capture_files(items: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in (".pcap", ".pcapng")))
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(2, "no such capture file", str(path))
    return files


def worker_table(workers: list[dict[str, Any]], title: str) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for col in ("worker", "pid", "policy", "sent", "bytes", "dropped", "in ring", "blocked s", "state"):
        table.add_column(col, justify="right")
    for w in workers:
        table.add_row(
            str(w["index"]), str(w["peer_pid"]), w["overflow"], f"{w['packets']:,}", f"{w['bytes']:,}",
            f"{w['dropped_packets']:,}", f"{w['ring_used_slots']:,}", f"{w['blocked_ns'] / 1e9:.3f}",
            "live" if w["live"] else "gone",
        )
    return table


# ---- replay / capture ---------------------------------------------------------------------------------


def make_server(args: argparse.Namespace, linktype: int = 1) -> Any:
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
                   as_json: bool) -> None:
    if as_json:
        print(json.dumps({"packets": packets, "bytes": nbytes, "seconds": seconds, "lost_packets": lost,
                          "workers": workers}))
        return
    from rich.console import Console

    console = Console(stderr=True)
    rate = packets / seconds if seconds else 0.0
    console.print(worker_table(workers, "per worker"))
    console.print(
        f"sent {packets:,} packets, {nbytes:,} bytes in {seconds:.3f} s: {rate:,.0f} packets/s, "
        f"{nbytes * 8 / seconds / 1e9 if seconds else 0:.3f} Gbit/s; lost with dead workers: {lost}"
    )


def add_server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default=None, help="server name (default: a fresh private path; '@x' is abstract)")
    p.add_argument("--workers", type=int, default=1, help="wait for this many workers before starting (1)")
    p.add_argument("--distribution", choices=["flow", "round_robin", "broadcast"], default="flow",
                   help="how packets are spread over workers (flow)")
    p.add_argument("--overflow", choices=["block", "drop"], default="block",
                   help="default policy when a worker's ring is full (block: lossless)")
    p.add_argument("--capacity", type=int, default=4 << 20, help="ring bytes per worker (4 MiB)")
    p.add_argument("--accept-timeout", type=float, default=None, help="give up waiting for workers after S seconds")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
