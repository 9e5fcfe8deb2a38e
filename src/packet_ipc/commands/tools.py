"""The ``config`` (C build flags) and ``bench`` (benchmark suite) commands."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from .. import get_include, get_library_dir

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


def add_config_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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


def cmd_bench(args: argparse.Namespace) -> int:
    """Runs the benchmark suite (python -m benchmarks) from a source checkout."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "benchmarks" / "__main__.py").exists():
        root = Path.cwd()
    if not (root / "benchmarks" / "__main__.py").exists():
        raise FileNotFoundError(2, "the benchmarks/ folder of a source checkout is needed (run from it)")
    return subprocess.call([sys.executable, "-m", "benchmarks", *args.rest], cwd=root)


def add_bench_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("bench", help="run the benchmark suite against the peers (python -m benchmarks)",
                       description="Run benchmarks/ (from a source checkout; pip install '.[bench]').")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for python -m benchmarks (see --help)")
    p.set_defaults(func=cmd_bench)
