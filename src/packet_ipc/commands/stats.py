"""The ``stats`` command: a running server's counters, read from another process.

``--watch`` prints a snapshot every S seconds with a timestamp and the per-second rates since the previous
one; on a terminal it redraws in place, elsewhere (a log, a pipe) it appends plain aligned text, never cut.
When the server goes away it exits 0 if the stream had ended cleanly (its last answer said so, or its socket
was removed as a server closing normally does) and 1 otherwise. SIGINT/SIGTERM stop it with exit 0.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from typing import Any

from .common import WORKER_COLUMNS, err, positive_float, print_table, worker_rows

__all__ = ["fetch_stats"]


def fetch_stats(name: str, timeout: float = 5.0) -> dict[str, Any]:
    """Asks a running server (by name) for its counters; raises ConnectError if it does not answer."""
    from ..errors import ConnectError
    from ..server import stats_address, unix_address_call

    addr = stats_address(name)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        unix_address_call(sock, addr, "connect")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except OSError as e:
        raise ConnectError(e.errno or 0, f"no packet-ipc server answers statistics at {addr}: {e.strerror or e}") from None
    finally:
        sock.close()
    result: dict[str, Any] = json.loads(b"".join(chunks))
    return result


def _rates(data: dict[str, Any], previous: tuple[float, dict[str, Any]] | None, now: float) -> dict[str, float]:
    if previous is None or now <= previous[0]:
        return {"packets_per_second": 0.0, "bits_per_second": 0.0, "drops_per_second": 0.0}
    dt = now - previous[0]
    before = previous[1]
    return {
        "packets_per_second": (data["sent_packets"] - before["sent_packets"]) / dt,
        "bits_per_second": (data["sent_bytes"] - before["sent_bytes"]) * 8 / dt,
        "drops_per_second": (data["dropped_packets"] - before["dropped_packets"]) / dt,
    }


def cmd_stats(args: argparse.Namespace) -> int:
    """Prints a running server's counters, once or every --watch seconds (with rates and a timestamp)."""
    previous: tuple[float, dict[str, Any]] | None = None
    tty = sys.stdout.isatty()
    try:
        while True:
            try:
                data = fetch_stats(args.name)
            except OSError:
                if previous is None:
                    raise
                return _gone(args.name, previous[1])
            now = time.monotonic()
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            rates = _rates(data, previous, now)
            if args.json:
                doc = {**data, "time": stamp, **(rates if args.watch else {})}
                print(json.dumps(doc), flush=True)
            else:
                if args.watch and tty:
                    print("\x1b[H\x1b[2J", end="")  # redraw in place on a terminal only
                title = f"{data['name']} ({data['distribution']})" + (f" at {stamp}" if args.watch else "")
                print_table(title, WORKER_COLUMNS, worker_rows(data["connections"]), sys.stdout)
                line = (f"workers {data['workers']}, sent {data['sent_packets']:,} packets "
                        f"{data['sent_bytes']:,} bytes, dropped {data['dropped_packets']:,}, "
                        f"lost with dead workers {data['lost_packets']:,}")
                if args.watch:
                    line += (f"; {rates['packets_per_second']:,.0f} packets/s, "
                             f"{rates['bits_per_second'] / 1e6:,.3f} Mbit/s, {rates['drops_per_second']:,.0f} drops/s")
                print(line, flush=True)
            if not args.watch:
                return 0
            previous = (now, data)
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0  # SIGINT/SIGTERM: the watch was asked to stop


def _gone(name: str, last: dict[str, Any]) -> int:
    """The server stopped answering: 0 if its stream had ended cleanly, else 1 with one line."""
    clean = bool(last.get("ended")) or (not name.startswith("@") and not os.path.exists(name))
    if clean:
        err(f"packet-ipc stats: {name}: the stream ended and the server closed")
        return 0
    err(f"packet-ipc stats: error: {name}: the server went away without ending its stream")
    return 1


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Registers ``stats``."""
    p = sub.add_parser("stats", help="show a running server's counters",
                       description="Show per-worker counters of the server NAME (from another process).")
    p.add_argument("name", help="the server's name")
    p.add_argument("--watch", type=positive_float, nargs="?", const=1.0, default=None,
                   help="refresh every S seconds (1), with per-second rates and a timestamp")
    p.add_argument("--json", action="store_true", help="JSON (one document per refresh)")
    p.set_defaults(func=cmd_stats)
