"""The ``packet-ipc`` command: replay captures into workers, dump what a worker gets, show counters, build flags.

Each subcommand is a small function over the library. Errors a user will meet (a missing capture, a server
that is not there, no permission) print one line and exit non-zero; ``--debug`` shows the traceback.

Exit codes: 0 success; 1 a runtime error (the line on stderr says which); 2 a usage error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import get_include, get_library_dir

__all__ = ["main", "build_parser"]

Handler = Callable[[argparse.Namespace], int]


def cmd_config(args: argparse.Namespace) -> int:
    """Prints compiler and linker flags for a C program using the packet-ipc C ABI (pkg-config style)."""
    out = []
    if args.cflags:
        out.append(f"-I{get_include()}")
    if args.libs:
        lib = get_library_dir()
        out.append(f"-L{lib} -Wl,-rpath,{lib} -lpacketipc")
    if args.include_dir:
        out.append(get_include())
    if args.library_dir:
        out.append(get_library_dir())
    if not out:
        print("packet-ipc config: say what to print: --cflags, --libs, --include-dir, --library-dir", file=sys.stderr)
        return 2
    print(" ".join(out))
    return 0


def _add_config(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "config",
        help="compiler/linker flags for the C ABI",
        description="Print flags to build a C program against packet-ipc: cc prog.c $(packet-ipc config --cflags --libs)",
    )
    p.add_argument("--cflags", action="store_true", help="-I flag for packet_ipc.h")
    p.add_argument("--libs", action="store_true", help="-L, rpath and -l flags for libpacketipc.so")
    p.add_argument("--include-dir", action="store_true", help="directory holding packet_ipc.h")
    p.add_argument("--library-dir", action="store_true", help="directory holding libpacketipc.so")
    p.set_defaults(func=cmd_config)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``packet-ipc`` command (every subcommand has ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="packet-ipc",
        description="Move captured packets between processes through shared memory.",
        epilog="Exit codes: 0 success, 1 runtime error, 2 usage error, 130 interrupted.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_config]  # type: ignore[type-arg]


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("packet-ipc: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError) as e:  # every packet-ipc error is an OSError or ValueError subclass
        if args.debug:
            raise
        where = f" ({Path(e.filename).name})" if isinstance(e, OSError) and e.filename else ""
        msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        print(f"packet-ipc {args.command}: error: {msg}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
