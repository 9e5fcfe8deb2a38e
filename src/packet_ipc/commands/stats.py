"""The ``stats`` command: a running server's counters, read from another process.

``--watch`` prints a snapshot every S seconds (the server pushes them) with a timestamp and the per-second
rates since the previous one; on a terminal it redraws in place, elsewhere (a log, a pipe) it appends plain
aligned text, never cut. When the server closes, its last document says whether the stream had ended: exit 0
if it had, 1 if not (or if the server was killed). SIGINT/SIGTERM stop it with exit 0.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

from .common import WORKER_COLUMNS, err, positive_float, print_table, worker_rows

__all__ = ["fetch_stats", "watch_stats"]


def fetch_stats(name: str, timeout: float = 5.0) -> dict[str, Any]:
    """Asks a running server (by name) for its counters; raises ConnectError if it does not answer."""
    from ..errors import ConnectError
    from ..server import stats_address, unix_address_call

    addr = stats_address(name)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        unix_address_call(sock, addr, "connect")
        sock.shutdown(socket.SHUT_WR)  # no request: one document, then EOF
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except OSError as e:
        raise ConnectError(e.errno or 0, f"no packet-ipc server answers statistics at {addr}: {e.strerror or e}") from None
    finally:
        sock.close()
    result: dict[str, Any] = json.loads(b"".join(chunks))
    return result


def watch_stats(name: str, interval: float, timeout: float = 5.0) -> Iterator[dict[str, Any]]:
    """Yields a running server's counters every ``interval`` seconds, as the server pushes them, until it
    closes: its last document has ``"closed": true`` and says whether the stream had ``"ended"``. Raises
    ConnectError if nobody answers at first, ``ConnectionLostError`` if the server goes away without that
    last document (killed)."""
    from ..errors import ConnectError, ConnectionLostError
    from ..server import stats_address, unix_address_call

    addr = stats_address(name)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            unix_address_call(sock, addr, "connect")
            sock.sendall(f"watch {interval!r}\n".encode())
        except OSError as e:
            raise ConnectError(e.errno or 0, f"no packet-ipc server answers statistics at {addr}: {e.strerror or e}") from None
        sock.settimeout(None)
        pending = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionLostError(104, f"{name}: the server went away without ending its stream")
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                doc: dict[str, Any] = json.loads(line)
                yield doc
                if doc.get("closed"):
                    return
    finally:
        sock.close()


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


def _show(args: argparse.Namespace, data: dict[str, Any], previous: tuple[float, dict[str, Any]] | None,
          now: float) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    rates = _rates(data, previous, now)
    if args.json:
        print(json.dumps({**data, "time": stamp, **(rates if args.watch else {})}), flush=True)
        return
    if args.watch and sys.stdout.isatty():
        print("\x1b[H\x1b[2J", end="")  # redraw in place on a terminal only; a log gets every snapshot
    title = f"{data['name']} ({data['distribution']})" + (f" at {stamp}" if args.watch else "")
    print_table(title, WORKER_COLUMNS, worker_rows(data["connections"]), sys.stdout)
    line = (f"workers {data['workers']}, sent {data['sent_packets']:,} packets "
            f"{data['sent_bytes']:,} bytes, dropped {data['dropped_packets']:,}, "
            f"lost with dead workers {data['lost_packets']:,}")
    if args.watch:
        line += (f"; {rates['packets_per_second']:,.0f} packets/s, "
                 f"{rates['bits_per_second'] / 1e6:,.3f} Mbit/s, {rates['drops_per_second']:,.0f} drops/s")
    print(line, flush=True)
    if "capture" in data:  # a live capture's kernel counters per interface
        from ..live import interface_lines

        for capture_line in interface_lines(data["capture"]["interfaces"]):
            print(f"capture: {capture_line}", flush=True)


def cmd_stats(args: argparse.Namespace) -> int:
    """Prints a running server's counters, once or every --watch seconds (with rates and a timestamp).

    ``--watch`` exits 0 when the server closes after ending its stream, 1 when it closes without ending it
    or goes away (killed), 0 on SIGINT/SIGTERM."""
    if not args.watch:
        _show(args, fetch_stats(args.name), None, time.monotonic())
        return 0
    previous: tuple[float, dict[str, Any]] | None = None
    try:
        for data in watch_stats(args.name, args.watch):
            now = time.monotonic()
            _show(args, data, previous, now)
            previous = (now, data)
            if data.get("closed"):
                if data.get("ended"):
                    err(f"packet-ipc stats: {args.name}: the stream ended and the server closed")
                    return 0
                err(f"packet-ipc stats: error: {args.name}: the server closed without ending its stream")
                return 1
    except KeyboardInterrupt:
        return 0  # SIGINT/SIGTERM: the watch was asked to stop
    return 1  # not reached: the server's last document ends the loop


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Registers ``stats``."""
    p = sub.add_parser("stats", help="show a running server's counters",
                       description="Show per-worker counters of the server NAME (from another process).")
    p.add_argument("name", help="the server's name")
    p.add_argument("--watch", type=positive_float, nargs="?", const=1.0, default=None,
                   help="refresh every S seconds (1), with per-second rates and a timestamp")
    p.add_argument("--json", action="store_true", help="JSON (one document per refresh)")
    p.set_defaults(func=cmd_stats)
