"""The ``packet-ipc capture`` command: live capture (:mod:`packet_ipc.capture`) served to K workers.

The capture is opened first (every interface, the filter compiled), so a bad interface, filter or
permission fails with one line before any server socket exists. Then the server listens, waits for its
workers, and the capture loop runs entirely in C (:meth:`LiveCapture.run`: libpcap straight into the
workers' rings, no Python per packet or per batch, in a thread so the main thread keeps its signals) until
``--count`` packets, ``--duration`` seconds, or SIGINT / SIGTERM, which both end the stream cleanly:
workers see end of stream, the summary (with libpcap's per-interface counters) is printed, exit 0. While it runs, ``packet-ipc stats NAME`` shows the same counters under ``capture``.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from .capture import MAX_SNAPLEN, CaptureRun, LiveCapture, open_live

__all__ = ["run_capture", "add_capture_arguments", "snaplen_arg", "interface_lines"]


class _Stop(Exception):
    """A stop signal arrived while waiting for workers."""


def snaplen_arg(text: str) -> int:
    """argparse type of ``--snaplen``: 1 to 262144 bytes (anything else is a usage error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"snaplen must be an integer, not {text!r}") from None
    if not 1 <= value <= MAX_SNAPLEN:
        raise argparse.ArgumentTypeError(f"snaplen must be between 1 and {MAX_SNAPLEN}, not {value}")
    return value


def add_capture_arguments(p: argparse.ArgumentParser) -> None:
    """The capture-specific options of ``packet-ipc capture`` (the server options are added by the CLI).
    Every out-of-range value is a usage error (exit 2) before anything starts."""
    from .commands.common import count_or_zero, positive_float, positive_int

    p.add_argument("-i", "--interface", action="append", required=True,
                   help="interface to capture on (repeat for several: one stream, packets keep their ifindex)")
    p.add_argument("--filter", default=None, help="BPF filter (tcpdump syntax), applied on every interface")
    p.add_argument("--snaplen", type=snaplen_arg, default=MAX_SNAPLEN, help="bytes to capture per packet (262144)")
    p.add_argument("--no-promisc", action="store_true", help="do not put the interface in promiscuous mode")
    p.add_argument("-B", "--buffer-size", type=count_or_zero, default=8192,
                   help="libpcap's kernel buffer per interface in KiB, as tcpdump -B (8192)")
    p.add_argument("--immediate", action="store_true", help="deliver each packet at once (more CPU per packet)")
    p.add_argument("--linger-ms", type=count_or_zero, default=0,
                   help="once a read has packets, wait up to this long (ms) for more to fill the batch (0: libpcap "
                        "already hands over whole kernel blocks)")
    p.add_argument("-c", "--count", type=positive_int, default=None, help="stop after this many packets")
    p.add_argument("--duration", type=positive_float, default=None, help="stop after this many seconds")
    p.add_argument("--batch", type=positive_int, default=4096, help="packets per batch at most (4096)")


def interface_lines(interfaces: list[dict[str, Any]]) -> list[str]:
    """One readable line per captured interface (for the summary and ``packet-ipc stats``)."""
    return [f"{i['name']} (ifindex {i['ifindex']}): received {i['received']:,}, dropped {i['dropped']:,}, "
            f"interface dropped {i['if_dropped']:,}, captured {i['captured']:,}" for i in interfaces]


@contextmanager
def _stop_signals(cap: LiveCapture) -> Iterator[dict[str, Any]]:
    """SIGINT and SIGTERM stop the capture: before it starts by raising _Stop, once it runs by a flag
    (and waking a read that is waiting)."""
    state: dict[str, Any] = {"running": False, "stop": False}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        state["stop"] = True
        cap.breakloop()
        if not state["running"]:
            raise _Stop

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _run_in_thread(cap: LiveCapture, server: Any, args: argparse.Namespace) -> CaptureRun:
    """Runs :meth:`LiveCapture.run` (one GIL-released C call: capture and distribution) in a thread, so that
    this, the main thread, keeps handling SIGINT / SIGTERM (their handler calls ``cap.breakloop()``, which
    makes the run return). Returns what it did, or raises what it raised."""
    result: list[CaptureRun] = []
    failed: list[BaseException] = []

    def body() -> None:
        try:
            result.append(cap.run(server, count=args.count, duration=args.duration, batch=args.batch,
                                  linger_ms=args.linger_ms))
        except BaseException as e:  # handed to the main thread
            failed.append(e)

    worker = threading.Thread(target=body, name="packet-ipc-capture", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.25)  # returns to the interpreter now and then: the signal handlers run
    if failed:
        raise failed[0]
    return result[0]


def run_capture(args: argparse.Namespace) -> int:
    """Runs ``packet-ipc capture`` (see the module's docstring); returns the exit code."""
    from .commands.common import drain_wait as _drain_wait, err as _err, make_server as _make_server
    from .commands.common import print_summary as _print_summary

    if args.batch < 1 or args.linger_ms < 0:
        raise ValueError("--batch must be at least 1 and --linger-ms at least 0")
    if args.buffer_size < 0 or args.buffer_size >= 1 << 21:
        raise ValueError(f"--buffer-size {args.buffer_size} KiB is out of range (0 to 2097151)")
    names: list[str] = args.interface
    with open_live(names, args.snaplen, args.filter, not args.no_promisc, buffer_bytes=args.buffer_size * 1024,
                   immediate=args.immediate) as cap, _stop_signals(cap) as state:
        with _make_server(args, cap.linktype) as server:
            server.add_stats_source("capture", lambda: {"interfaces": [s.as_dict() for s in cap.interface_stats()]})
            _err(f"packet-ipc: capturing on {', '.join(names)} into {server.name}; "
                 f"waiting for {args.workers} worker(s)")
            packets = nbytes = staged = 0
            start = time.monotonic()
            try:
                server.wait_for_clients(args.workers, timeout=args.accept_timeout)
                state["running"] = True
                if state["stop"]:
                    raise _Stop
                _err("packet-ipc: capturing (Ctrl-C or SIGTERM to stop)")
                start = time.monotonic()
                done = _run_in_thread(cap, server, args)  # the whole loop in C; signals still reach us here
                packets, nbytes, staged = done.packets, done.bytes, done.staged
            except _Stop:
                pass
            state["running"] = True  # from here a signal only sets the flag: the stream ends cleanly regardless
            server.send(None)
            seconds = time.monotonic() - start
            _drain_wait(server)
            interfaces = [s.as_dict() for s in cap.interface_stats()]
            stats = server.stats()
            server.close_connections()
    if args.json:
        print(json.dumps({"packets": packets, "bytes": nbytes, "seconds": seconds, "lost_packets": stats.lost_packets,
                          "staged": staged, "workers": stats.connections, "interfaces": interfaces}), flush=True)
    else:
        _print_summary(packets, nbytes, seconds, stats.connections, stats.lost_packets, False)
        if staged:
            _err(f"staged: {staged:,} of the packets were copied twice (their worker's ring was full, or broadcast)")
        for line in interface_lines(interfaces):
            _err(f"kernel: {line}")
    return 0
