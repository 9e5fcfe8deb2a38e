"""The ``packet-ipc`` command: replay captures into workers, dump what a worker gets, show counters, build flags.

Each subcommand is a small function over the library. Errors a user will meet (a missing capture, a server
that is not there, no permission) print one line and exit non-zero; ``--debug`` shows the traceback.

Damaged captures: ``replay`` reads every capture through before it listens, so a capture cut short, with a
bad magic or an absurd length, or with a timestamp beyond 64-bit nanoseconds, makes it exit 1 with one line
naming the file, the byte offset and the packet index, and no worker is served anything of it. ``dump``
writes only whole packets as they arrived; if the server goes away without ending the stream it keeps what
it wrote and exits 1.

Signals: SIGTERM is handled as SIGINT by every command. ``dump``, ``capture`` and ``stats --watch`` take it
as a request to stop: clean end, valid files, summary, exit 0. ``replay`` prints its summary and exits 130
(its workers see the stream aborted, never a clean end), or 0 when looping forever (``-l 0``).

Exit codes: 0 success; 1 a runtime error (the line on stderr says which); 2 a usage error (every
out-of-range option is one, found before anything starts); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable, Sequence

from . import __version__
from .commands import capture, demo, dump, replay, stats, tools
from .commands.common import STOP, UsageError, packet_checksum
from .commands.stats import fetch_stats

__all__ = ["main", "build_parser", "packet_checksum", "fetch_stats"]

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``packet-ipc`` command (every subcommand has ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="packet-ipc",
        description="Move captured packets between processes through shared memory.",
        epilog="Exit codes: 0 success, 1 runtime error, 2 usage error, 130 interrupted.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("--version", action="version", version=f"packet-ipc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    for command in sub.choices.values():  # --debug also after the subcommand (SUPPRESS: keeps the first one's)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of errors")
    return parser


from .nats.command import add_publish, add_subscribe  # noqa: E402 - the NATS commands (packet_ipc/nats/)

_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [  # type: ignore[type-arg]
    demo.add_parser, replay.add_parser, capture.add_parser, dump.add_parser, stats.add_parser,
    tools.add_bench_parser, tools.add_config_parser, add_publish, add_subscribe,
]

def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors exit 2 here, before anything starts
    if threading.current_thread() is threading.main_thread():
        STOP.install()  # SIGTERM is handled as SIGINT by every command
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("packet-ipc: interrupted", file=sys.stderr)
        return 130
    except UsageError as e:
        print(f"packet-ipc {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:  # every packet-ipc error is an OSError or ValueError subclass
        if args.debug:
            raise
        where = f" ({e.filename})" if isinstance(e, OSError) and e.filename else ""
        msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        print(f"packet-ipc {args.command}: error: {msg}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
