"""The ``replay`` command: serve capture files to workers, paced as tcpreplay paces them.

Every capture is read through once before the server listens: a damaged one, or one with a timestamp
packet-ipc cannot carry, fails here with one line and nothing is served (``--keep-going``: its whole packets
are served and unreadable files are skipped, one warning line each). Stopping (Ctrl-C, SIGTERM) prints the
summary: a finite replay cut short aborts the streams (each worker gets the whole packets sent before and
then ConnectionLostError, never a clean end it could mistake for the whole capture) and exits 130; a replay
looping forever (``-l 0``) has no other way to end, so there the streams end cleanly and it exits 0.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .common import (
    STOP, UsageError, add_server_options, capture_files, count_or_zero, drain_wait, err, make_server, parse_speed,
    positive_float, positive_int, print_summary, seconds,
)


def cmd_replay(args: argparse.Namespace) -> int:
    """Serves captures to K workers and prints a summary (always, also when stopped or left by workers).

    Exit status: 0 done (or ``-l 0`` stopped by a signal), 1 a worker using ``block`` left before the end
    (its packets are lost) or every worker left, 130 stopped by SIGINT/SIGTERM.
    """
    if args.listen is not None or any(f.startswith("tcp://") for f in args.files):
        from ..pcap_over_ip import replay_from_tcp

        return replay_from_tcp(args)  # PCAP-over-IP: a live stream, not files
    from ..pcap import open_capture
    from ..replay import ReplaySummary, replay, survey_captures

    if not args.files and not args.read:
        raise UsageError("give capture files or directories (FILE..., -r FILE, or - for stdin)")
    files = capture_files([*args.files, *(args.read or [])])
    if not files:
        raise FileNotFoundError(2, "no capture files given")
    if args.loop != 1 and not all(f.is_file() for f in files):
        raise ValueError("--loop needs regular files: a capture from a pipe can be read only once")
    kept, total = survey_captures(files, keep_going=args.keep_going, warn=lambda m: err(f"packet-ipc replay: warning: {m}"))
    if not kept:
        raise FileNotFoundError(2, "no readable capture left to replay")
    speed = args.multiplier
    pps, mbps = args.pps, args.mbps
    if args.topspeed:
        speed = pps = mbps = None
    # The first capture's header gives the server's linktype. A pipe (/dev/stdin) is read once: the
    # replay goes on from this reader instead of opening it again.
    summary = ReplaySummary(files=len(kept))
    stopped_by_signal = False
    with open_capture(kept[0]) as first, make_server(args, first.linktype) as server:
        sources: list[Any] = list(kept) if _is_file(kept[0]) else [first, *kept[1:]]
        err(f"packet-ipc: serving {len(kept)} capture(s) at {server.name}; waiting for {args.workers} worker(s)")
        try:
            server.wait_for_clients(args.workers, timeout=args.accept_timeout)
            replay(
                sources, server, speed=speed, pps=pps, mbps=mbps, loop=args.loop, limit=args.limit,
                batch_size=args.batch, progress=not args.no_progress and sys.stderr.isatty(),
                total_packets=None if total is None or args.loop == 0 else total * args.loop,
                keep_going=args.keep_going, rejoin_timeout=args.rejoin_timeout,
                warn=lambda m: err(f"packet-ipc replay: warning: {m}"), summary=summary,
            )
        except KeyboardInterrupt:
            stopped_by_signal = True
            with STOP.protected():
                if args.loop == 0:
                    server.send(None)  # looping forever: a signal is the normal way to end
                else:
                    server.abort_connections()  # the workers must not take a cut stream for the whole capture
        except BaseException:
            server.abort_connections()
            raise
        with STOP.protected():
            drain_wait(server, 0.5 if stopped_by_signal else 5.0)
            workers = server.stats().connections
            server.close_connections()
    lost_workers = [w for w in workers if not w["live"] and w["overflow"] == "block"]
    if stopped_by_signal:
        summary.stopped = summary.stopped or f"interrupted by {STOP.name}"
    extra = {"stopped": summary.stopped, "workers_lost": len(lost_workers)}
    print_summary(summary.packets, summary.bytes, summary.seconds, workers, summary.lost_packets, args.json, extra)
    if summary.stopped:
        err(f"packet-ipc replay: {summary.stopped}")
    for w in lost_workers:
        err(f"packet-ipc replay: worker {w['index']} (pid {w['peer_pid']}, policy block) left before the end "
            "of the stream")
    if stopped_by_signal:
        return 0 if args.loop == 0 else 130
    return 1 if lost_workers or summary.stopped else 0


def _is_file(path: Any) -> bool:
    import os

    return os.path.isfile(path)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Registers ``replay`` and its options (tcpreplay's names where it has them)."""
    p = sub.add_parser(
        "replay", help="serve capture files to workers",
        description="Replay pcap/pcapng files to K workers through packet-ipc. Pacing: by default as fast as "
                    "the workers take the packets (-t, top speed; unlike tcpreplay, whose default is the "
                    "capture's own timing, -x 1). -x/-p/-M pace each packet by the capture's timestamps, a "
                    "packet rate or a bit rate.",
        epilog="Exit codes: 0 done, 1 runtime error or a worker lost under 'block', 2 usage error, "
               "130 stopped by SIGINT/SIGTERM (0 with -l 0).",
    )
    p.add_argument("files", nargs="*", help="capture files or directories (searched for .pcap/.pcapng); - is stdin")
    p.add_argument("-r", "--read", action="append", metavar="FILE", help="a capture file to replay (repeatable)")
    add_server_options(p)
    pacing = p.add_mutually_exclusive_group()
    pacing.add_argument("-x", "--multiplier", "--speed", dest="multiplier", type=parse_speed, default=None,
                        metavar="X", help="the capture's own timing, X times faster (1.0 = real time; 'max' = -t)")
    pacing.add_argument("-p", "--pps", type=positive_float, default=None, help="send at this many packets per second")
    pacing.add_argument("-M", "--mbps", type=positive_float, default=None,
                        help="send at this many megabits per second (of captured bytes)")
    pacing.add_argument("-t", "--topspeed", action="store_true", help="as fast as the workers take it (the default)")
    p.add_argument("-l", "--loop", type=count_or_zero, default=1, help="replay the files this many times; 0 = forever (1)")
    p.add_argument("-L", "--limit", type=positive_int, default=None, help="stop after sending this many packets")
    p.add_argument("--batch", type=positive_int, default=256, help="packets per batch at most (256)")
    p.add_argument("--keep-going", action="store_true",
                   help="serve the whole packets of a damaged capture and skip unreadable files (a warning each)")
    p.add_argument("--rejoin-timeout", type=seconds, default=None, metavar="S",
                   help="when every worker has left, wait S seconds for a replacement (default: stop); workers "
                        "may also join while the replay runs")
    from ..pcap_over_ip import add_replay_options

    add_replay_options(p)
    p.set_defaults(func=cmd_replay)
