"""The ``demo`` command: replay captures to worker processes and check what arrived."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .common import capture_files, drain_wait, packet_checksum, positive_int, print_table

def _demo_captures(explicit: Sequence[str]) -> list[Path]:
    if explicit:
        return capture_files(explicit)
    # ../shared beside the working directory, or beside the source checkout (src/packet_ipc/cli.py).
    for candidate in (Path.cwd().parent / "shared" / "data" / "pcaps",
                      Path(__file__).resolve().parents[4] / "shared" / "data" / "pcaps"):
        if candidate.is_dir():
            return capture_files([str(candidate)])
    return [Path(__file__).resolve().parents[1] / "data" / "demo.pcap"]


def cmd_demo(args: argparse.Namespace) -> int:
    """Replays captures from this process to K worker processes (`packet-ipc dump`) and checks what arrived."""
    from rich.console import Console

    from ..pcap import read_capture
    from ..replay import replay
    from ..server import Server

    console = Console(stderr=True, soft_wrap=True)  # a log file gets whole lines, not 80 columns
    files = []
    expected_packets = expected_bytes = expected_sum = 0
    for f in _demo_captures(args.captures):
        try:
            records = read_capture(f)
        except ValueError as e:  # a damaged capture: say so and go on with the others
            console.print(f"[yellow]skipped[/] {f.name}: {e}")
            continue
        if any(not 0 <= r.timestamp < 1 << 64 for r in records):
            console.print(f"[yellow]skipped[/] {f.name}: a timestamp beyond 64-bit nanoseconds (after 2554)")
            continue
        files.append(f)
        expected_packets += len(records)
        expected_bytes += sum(len(r.data) for r in records)
        expected_sum = (expected_sum + packet_checksum(records)) & 0xFFFF_FFFF_FFFF_FFFF
    if not files:
        raise FileNotFoundError(2, "no usable capture to replay")
    console.print(f"[bold]packet-ipc demo[/]: {len(files)} capture(s) from {files[0].parent}, "
                  f"{expected_packets:,} packets, {expected_bytes:,} bytes -> {args.workers} worker processes "
                  f"({args.distribution})")
    with Server(distribution=args.distribution) as server:
        workers = [subprocess.Popen([sys.executable, "-m", "packet_ipc.cli", "dump", server.name, "--json", "--checksum"],
                                    stdout=subprocess.PIPE, text=True) for _ in range(args.workers)]
        try:
            server.wait_for_clients(args.workers, timeout=60)
            summary = replay(files, server, progress=True, total_packets=expected_packets * args.loop, loop=args.loop)
            drain_wait(server)
            sent = server.stats().connections
            server.close_connections()
            results = [json.loads(w.communicate(timeout=60)[0]) for w in workers]
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
    by_pid = {r["pid"]: r for r in results}
    rows = []
    for conn in sent:
        r = by_pid.get(conn["peer_pid"], {})
        rows.append([str(conn["peer_pid"]), f"{conn['packets']:,}", f"{r.get('packets', 0):,}",
                     f"{r.get('bytes', 0):,}", r.get("checksum", "-")])
    print_table("what each worker received", ("worker pid", "sent to it", "received", "bytes", "checksum"), rows,
                sys.stderr)
    got_packets = sum(r["packets"] for r in results)
    got_bytes = sum(r["bytes"] for r in results)
    got_sum = sum(int(r["checksum"], 16) for r in results) & 0xFFFF_FFFF_FFFF_FFFF
    want_sum = (expected_sum * args.loop) & 0xFFFF_FFFF_FFFF_FFFF
    ok = (got_packets, got_bytes, got_sum) == (expected_packets * args.loop, expected_bytes * args.loop, want_sum)
    console.print(f"sent {summary.packets:,} packets ({summary.bytes:,} bytes) in {summary.seconds:.3f} s "
                  f"= {summary.packets_per_second:,.0f} packets/s; received {got_packets:,} packets, "
                  f"{got_bytes:,} bytes")
    console.print(f"checksum sent {want_sum:016x}, received {got_sum:016x}: "
                  + ("[bold green]match[/]" if ok else "[bold red]MISMATCH[/]"))
    return 0 if ok else 1


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="replay captures to two worker processes and check what arrived",
                       description="Replay ../shared/data/pcaps (or a capture shipped in the package) from this "
                                   "process to worker processes and verify packets, bytes and checksum.")
    p.add_argument("captures", nargs="*", help="capture files or directories (default: ../shared/data/pcaps)")
    p.add_argument("--workers", type=positive_int, default=2, help="worker processes (2)")
    p.add_argument("--distribution", choices=["flow", "round_robin", "broadcast"], default="flow")
    p.add_argument("--loop", type=positive_int, default=1, help="replay this many times (1)")
    p.set_defaults(func=cmd_demo)
