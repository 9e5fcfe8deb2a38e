"""The ``replay`` command: serve capture files to workers."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .common import capture_files, drain_wait, err, make_server, parse_speed, print_summary, add_server_options

def cmd_replay(args: argparse.Namespace) -> int:
    """Serves captures to K workers and prints a summary.

    Every capture is read through once before the server listens: a damaged one, or one with a timestamp
    packet-ipc cannot carry, fails here with one line and nothing is served. (A capture that changes while
    it is replayed, damage in a piped capture, or Ctrl-C, stops the replay mid-stream: the streams are
    aborted, so each worker gets the whole packets sent before and then ConnectionLostError, never a clean
    end it could mistake for the whole capture.)
    """
    from ..pcap import open_capture
    from ..replay import check_captures, replay

    files = capture_files(args.files)
    if not files:
        raise FileNotFoundError(2, "no capture files given")
    if args.loop > 1 and not all(f.is_file() for f in files):
        raise ValueError("--loop needs regular files: a capture from a pipe can be read only once")
    total = check_captures(files)
    # The first capture's header gives the server's linktype. A pipe (/dev/stdin) is read once: the
    # replay goes on from this reader instead of opening it again.
    with open_capture(files[0]) as first, make_server(args, first.linktype) as server:
        sources: list[Any] = list(files) if files[0].is_file() else [first, *files[1:]]
        err(f"packet-ipc: serving {len(files)} capture(s) at {server.name}; waiting for {args.workers} worker(s)")
        server.wait_for_clients(args.workers, timeout=args.accept_timeout)
        try:
            summary = replay(
                sources, server, speed=args.speed, loop=args.loop, batch_size=args.batch,
                progress=not args.no_progress and sys.stderr.isatty(),
                total_packets=None if total is None else total * args.loop,
            )
        except BaseException:
            server.abort_connections()  # the workers must not take a cut stream for the whole capture
            raise
        drain_wait(server)
        workers = server.stats().connections
        server.close_connections()
    print_summary(summary.packets, summary.bytes, summary.seconds, workers, summary.lost_packets, args.json)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("replay", help="serve capture files to workers",
                       description="Replay pcap/pcapng files to K workers through packet-ipc.")
    p.add_argument("files", nargs="+", help="capture files or directories (searched for .pcap/.pcapng)")
    add_server_options(p)
    p.add_argument("--speed", type=parse_speed, default=None, help="'max' (default) or a factor of real time")
    p.add_argument("--loop", type=int, default=1, help="replay the files this many times (1)")
    p.add_argument("--batch", type=int, default=256, help="packets per batch (256)")
    p.set_defaults(func=cmd_replay)
