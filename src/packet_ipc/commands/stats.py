"""The ``stats`` command: a running server's counters, read from another process."""

from __future__ import annotations

import argparse
import json
import socket
import time
from typing import Any

from .common import worker_table

__all__ = ["fetch_stats"]

def fetch_stats(name: str, timeout: float = 5.0) -> dict[str, Any]:
    """Asks a running server (by name) for its counters; raises ConnectError if it does not answer."""
    from ..errors import ConnectError
    from ..server import stats_address

    addr = stats_address(name)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect("\0" + addr[1:] if addr.startswith("@") else addr)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except OSError as e:
        raise ConnectError(e.errno or 0, f"no packet-ipc server answers statistics at {addr}: {e.strerror or e}") from None
    finally:
        sock.close()
    result: dict[str, Any] = json.loads(b"".join(chunks))
    return result


def cmd_stats(args: argparse.Namespace) -> int:
    """Prints a running server's counters, once or every --watch seconds."""
    from rich.console import Console

    console = Console()
    while True:
        data = fetch_stats(args.name)
        if args.json:
            print(json.dumps(data), flush=True)
        else:
            if args.watch:
                console.clear()
            console.print(worker_table(data["connections"], f"{data['name']} ({data['distribution']})"))
            console.print(f"workers {data['workers']}, sent {data['sent_packets']:,} packets "
                          f"{data['sent_bytes']:,} bytes, dropped {data['dropped_packets']:,}, "
                          f"lost with dead workers {data['lost_packets']:,}")
        if not args.watch:
            return 0
        time.sleep(args.watch)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("stats", help="show a running server's counters",
                       description="Show per-worker counters of the server NAME (from another process).")
    p.add_argument("name", help="the server's name")
    p.add_argument("--watch", type=float, nargs="?", const=1.0, default=None, help="refresh every S seconds (1)")
    p.add_argument("--json", action="store_true", help="JSON (one document per refresh)")
    p.set_defaults(func=cmd_stats)
