"""The ``packet-ipc`` command: replay captures into workers, dump what a worker gets, show counters, build flags.

Each subcommand is a small function over the library. Errors a user will meet (a missing capture, a server
that is not there, no permission) print one line and exit non-zero; ``--debug`` shows the traceback.

Damaged captures: ``replay`` reads every capture through before it listens, so a capture cut short, with a
bad magic or an absurd length, or with a timestamp beyond 64-bit nanoseconds, makes it exit 1 with one line
naming the file, the byte offset and the packet index, and no worker is served anything of it. ``dump``
writes only whole packets as they arrived; if the server goes away without ending the stream it keeps what
it wrote and exits 1.

Exit codes: 0 success; 1 a runtime error (the line on stderr says which); 2 a usage error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from . import __version__, get_include, get_library_dir

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
    parser.add_argument("--version", action="version", version=f"packet-ipc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


# ---- shared pieces ------------------------------------------------------------------------------------


def packet_checksum(packets: Iterable[Any]) -> int:
    """Order-independent checksum of packets: the sum mod 2**64 of each packet's 64-bit BLAKE2b over its
    timestamp, wire length and bytes. Workers' sums add up to the sender's whatever the distribution."""
    total = 0
    for p in packets:
        h = hashlib.blake2b(digest_size=8)
        h.update(p.timestamp.to_bytes(8, "little"))
        h.update(p.orig_len.to_bytes(4, "little"))
        h.update(p.data)
        total += int.from_bytes(h.digest(), "little")
    return total & 0xFFFF_FFFF_FFFF_FFFF


def _err(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def _parse_speed(text: str) -> float | None:
    if text == "max":
        return None
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("speed must be 'max' or a positive factor (1.0 = real time)")
    return value


def _capture_files(items: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in (".pcap", ".pcapng")))
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(2, "no such capture file", str(path))
    return files


def _worker_table(workers: list[dict[str, Any]], title: str) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for col in ("worker", "pid", "policy", "sent", "bytes", "dropped", "in ring", "blocked s", "state"):
        table.add_column(col, justify="right")
    for w in workers:
        table.add_row(
            str(w["index"]), str(w["peer_pid"]), w["overflow"], f"{w['packets']:,}", f"{w['bytes']:,}",
            f"{w['dropped_packets']:,}", f"{w['ring_used_slots']:,}", f"{w['blocked_ns'] / 1e9:.3f}",
            "live" if w["live"] else "gone",
        )
    return table


# ---- replay / capture ---------------------------------------------------------------------------------


def _make_server(args: argparse.Namespace, linktype: int = 1) -> Any:
    from .server import Server

    return Server(
        args.name, capacity=args.capacity, linktype=linktype, distribution=args.distribution, overflow=args.overflow
    )


def _drain_wait(server: Any, seconds: float = 5.0) -> None:
    """After end of stream, give workers a moment to drain so 'in ring' shows what they did not take."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if all(c.stats().ring_used_slots == 0 or not c.alive for c in server.connections):
            return
        time.sleep(0.02)


def cmd_replay(args: argparse.Namespace) -> int:
    """Serves captures to K workers and prints a summary.

    Every capture is read through once before the server listens: a damaged one, or one with a timestamp
    packet-ipc cannot carry, fails here with one line and nothing is served. (A capture that changes while
    it is replayed, damage in a piped capture, or Ctrl-C, stops the replay mid-stream: the streams are
    aborted, so each worker gets the whole packets sent before and then ConnectionLostError, never a clean
    end it could mistake for the whole capture.)
    """
    from .pcap import open_capture
    from .replay import check_captures, replay

    files = _capture_files(args.files)
    if not files:
        raise FileNotFoundError(2, "no capture files given")
    if args.loop > 1 and not all(f.is_file() for f in files):
        raise ValueError("--loop needs regular files: a capture from a pipe can be read only once")
    total = check_captures(files)
    # The first capture's header gives the server's linktype. A pipe (/dev/stdin) is read once: the
    # replay goes on from this reader instead of opening it again.
    with open_capture(files[0]) as first, _make_server(args, first.linktype) as server:
        sources: list[Any] = list(files) if files[0].is_file() else [first, *files[1:]]
        _err(f"packet-ipc: serving {len(files)} capture(s) at {server.name}; waiting for {args.workers} worker(s)")
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
        _drain_wait(server)
        workers = server.stats().connections
        server.close_connections()
    _print_summary(summary.packets, summary.bytes, summary.seconds, workers, summary.lost_packets, args.json)
    return 0


def _print_summary(packets: int, nbytes: int, seconds: float, workers: list[dict[str, Any]], lost: int,
                   as_json: bool) -> None:
    if as_json:
        print(json.dumps({"packets": packets, "bytes": nbytes, "seconds": seconds, "lost_packets": lost,
                          "workers": workers}))
        return
    from rich.console import Console

    console = Console(stderr=True)
    rate = packets / seconds if seconds else 0.0
    console.print(_worker_table(workers, "per worker"))
    console.print(
        f"sent {packets:,} packets, {nbytes:,} bytes in {seconds:.3f} s: {rate:,.0f} packets/s, "
        f"{nbytes * 8 / seconds / 1e9 if seconds else 0:.3f} Gbit/s; lost with dead workers: {lost}"
    )


def _add_server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default=None, help="server name (default: a fresh private path; '@x' is abstract)")
    p.add_argument("--workers", type=int, default=1, help="wait for this many workers before starting (1)")
    p.add_argument("--distribution", choices=["flow", "round_robin", "broadcast"], default="flow",
                   help="how packets are spread over workers (flow)")
    p.add_argument("--overflow", choices=["block", "drop"], default="block",
                   help="default policy when a worker's ring is full (block: lossless)")
    p.add_argument("--capacity", type=int, default=4 << 20, help="ring bytes per worker (4 MiB)")
    p.add_argument("--accept-timeout", type=float, default=None, help="give up waiting for workers after S seconds")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_replay(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("replay", help="serve capture files to workers",
                       description="Replay pcap/pcapng files to K workers through packet-ipc.")
    p.add_argument("files", nargs="+", help="capture files or directories (searched for .pcap/.pcapng)")
    _add_server_options(p)
    p.add_argument("--speed", type=_parse_speed, default=None, help="'max' (default) or a factor of real time")
    p.add_argument("--loop", type=int, default=1, help="replay the files this many times (1)")
    p.add_argument("--batch", type=int, default=256, help="packets per batch (256)")
    p.set_defaults(func=cmd_replay)


def cmd_capture(args: argparse.Namespace) -> int:
    """Captures live from one or more interfaces into the IPC (logic in packet_ipc.live)."""
    from .live import run_capture

    return run_capture(args)


def _add_capture(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from .live import add_capture_arguments

    p = sub.add_parser("capture", help="capture live from interfaces into workers",
                       description="Live capture (libpcap, driven from C) into packet-ipc workers. Needs CAP_NET_RAW.")
    add_capture_arguments(p)
    _add_server_options(p)
    p.set_defaults(func=cmd_capture)


# ---- dump ---------------------------------------------------------------------------------------------


def _connect_waiting(name: str, timeout: float, overflow: str | None) -> Any:
    """Connects, waiting up to ``timeout`` seconds for a server that is not listening yet (workers are
    often started before the replay)."""
    from .client import Client
    from .errors import ConnectError

    deadline = time.monotonic() + timeout
    while True:
        try:
            return Client(name, timeout=max(0.0, deadline - time.monotonic()), overflow=overflow)  # type: ignore[arg-type]
        except ConnectError as e:
            if e.errno not in (2, 111) or time.monotonic() >= deadline:  # ENOENT, ECONNREFUSED: not there yet
                raise
            time.sleep(0.05)  # polling for the server's socket to appear; nothing to wait on before it exists


def cmd_dump(args: argparse.Namespace) -> int:
    """A worker that writes what it receives as pcap/pcapng (or just counts it)."""
    from .pcap import CaptureWriter

    client = _connect_waiting(args.name, args.timeout, args.overflow)
    out: Any = None
    writer: Any = None
    if args.write:
        out = sys.stdout.buffer if args.write == "-" else open(args.write, "wb")
        writer = CaptureWriter(out, linktype=client.linktype, snaplen=client.snaplen, format=args.format)
    packets = nbytes = 0
    checksum = 0
    try:
        while args.count is None or packets < args.count:
            batch = client.receive_batch(1024, timeout=None)
            if batch is None:
                break
            with batch:
                if writer is None and not args.checksum and args.count is None:
                    packets += len(batch)  # only counting: no Python object per packet
                    nbytes += batch.nbytes
                    continue
                take = list(batch) if args.count is None else list(batch)[: args.count - packets]
                if writer is not None:
                    writer.write_many(take)
                if args.checksum:
                    checksum = (checksum + packet_checksum(take)) & 0xFFFF_FFFF_FFFF_FFFF
                packets += len(take)
                nbytes += sum(p.caplen for p in take)
                del take
    finally:
        if writer is not None:
            writer.close()
        if out is not None and out is not sys.stdout.buffer:
            out.close()
        stats = client.stats()
        client.close()
    result = {"pid": os.getpid(), "packets": packets, "bytes": nbytes,
              "checksum": f"{checksum:016x}" if args.checksum else None, "dropped_by_server": stats.dropped_packets}
    if args.json:
        print(json.dumps(result), file=sys.stderr if args.write == "-" else sys.stdout, flush=True)
    else:
        summed = f", checksum {checksum:016x}" if args.checksum else ""
        _err(f"packet-ipc dump: {packets:,} packets, {nbytes:,} bytes{summed}, "
             f"dropped by the server {stats.dropped_packets:,}")
    return 0


def _add_dump(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("dump", help="receive as a worker and write pcap/pcapng",
                       description="Connect to NAME as a worker; write what arrives (-w FILE, or -w - for stdout: "
                                   "packet-ipc dump NAME -w - | tcpdump -nr -).")
    p.add_argument("name", help="the server's name")
    p.add_argument("-w", "--write", default=None, help="output file, or - for stdout (default: only count)")
    p.add_argument("--format", choices=["pcap", "pcapng"], default="pcap", help="output format (pcap, nanosecond)")
    p.add_argument("-c", "--count", type=int, default=None, help="stop after this many packets")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds to wait for the server to appear and accept (30)")
    p.add_argument("--overflow", choices=["block", "drop"], default=None, help="this worker's overflow policy")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--checksum", action="store_true",
                   help="also sum a 64-bit BLAKE2b of every packet (order-independent; what demo compares)")
    p.set_defaults(func=cmd_dump)


# ---- stats --------------------------------------------------------------------------------------------


def fetch_stats(name: str, timeout: float = 5.0) -> dict[str, Any]:
    """Asks a running server (by name) for its counters; raises ConnectError if it does not answer."""
    from .errors import ConnectError
    from .server import stats_address

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
            console.print(_worker_table(data["connections"], f"{data['name']} ({data['distribution']})"))
            console.print(f"workers {data['workers']}, sent {data['sent_packets']:,} packets "
                          f"{data['sent_bytes']:,} bytes, dropped {data['dropped_packets']:,}, "
                          f"lost with dead workers {data['lost_packets']:,}")
            if "capture" in data:
                from .live import interface_lines

                for line in interface_lines(data["capture"]["interfaces"]):
                    console.print(f"capture: {line}")
        if not args.watch:
            return 0
        time.sleep(args.watch)


def _add_stats(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("stats", help="show a running server's counters",
                       description="Show per-worker counters of the server NAME (from another process).")
    p.add_argument("name", help="the server's name")
    p.add_argument("--watch", type=float, nargs="?", const=1.0, default=None, help="refresh every S seconds (1)")
    p.add_argument("--json", action="store_true", help="JSON (one document per refresh)")
    p.set_defaults(func=cmd_stats)


# ---- demo ---------------------------------------------------------------------------------------------


def _demo_captures(explicit: Sequence[str]) -> list[Path]:
    if explicit:
        return _capture_files(explicit)
    # ../shared beside the working directory, or beside the source checkout (src/packet_ipc/cli.py).
    for candidate in (Path.cwd().parent / "shared" / "data" / "pcaps",
                      Path(__file__).resolve().parents[3] / "shared" / "data" / "pcaps"):
        if candidate.is_dir():
            return _capture_files([str(candidate)])
    return [Path(__file__).resolve().parent / "data" / "demo.pcap"]


def cmd_demo(args: argparse.Namespace) -> int:
    """Replays captures from this process to K worker processes (`packet-ipc dump`) and checks what arrived."""
    from rich.console import Console

    from .pcap import read_capture
    from .replay import replay
    from .server import Server

    console = Console(stderr=True)
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
            _drain_wait(server)
            sent = server.stats().connections
            server.close_connections()
            results = [json.loads(w.communicate(timeout=60)[0]) for w in workers]
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
    by_pid = {r["pid"]: r for r in results}
    from rich.table import Table

    table = Table(title="what each worker received")
    for col in ("worker pid", "sent to it", "received", "bytes", "checksum"):
        table.add_column(col, justify="right")
    for conn in sent:
        r = by_pid.get(conn["peer_pid"], {})
        table.add_row(str(conn["peer_pid"]), f"{conn['packets']:,}", f"{r.get('packets', 0):,}",
                      f"{r.get('bytes', 0):,}", r.get("checksum", "-"))
    console.print(table)
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


def _add_demo(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="replay captures to two worker processes and check what arrived",
                       description="Replay ../shared/data/pcaps (or a capture shipped in the package) from this "
                                   "process to worker processes and verify packets, bytes and checksum.")
    p.add_argument("captures", nargs="*", help="capture files or directories (default: ../shared/data/pcaps)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    p.add_argument("--distribution", choices=["flow", "round_robin", "broadcast"], default="flow")
    p.add_argument("--loop", type=int, default=1, help="replay this many times (1)")
    p.set_defaults(func=cmd_demo)


def cmd_bench(args: argparse.Namespace) -> int:
    """Runs the benchmark suite (python -m benchmarks) from a source checkout."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "benchmarks" / "__main__.py").exists():
        root = Path.cwd()
    if not (root / "benchmarks" / "__main__.py").exists():
        raise FileNotFoundError(2, "the benchmarks/ folder of a source checkout is needed (run from it)")
    return subprocess.call([sys.executable, "-m", "benchmarks", *args.rest], cwd=root)


def _add_bench(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("bench", help="run the benchmark suite against the peers (python -m benchmarks)",
                       description="Run benchmarks/ (from a source checkout; pip install '.[bench]').")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for python -m benchmarks (see --help)")
    p.set_defaults(func=cmd_bench)


from .nats.command import add_publish, add_subscribe  # noqa: E402 - the NATS commands (packet_ipc/nats/)

_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [  # type: ignore[type-arg]
    _add_demo, _add_replay, _add_capture, _add_dump, _add_stats, _add_bench, _add_config, add_publish, add_subscribe,
]


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
