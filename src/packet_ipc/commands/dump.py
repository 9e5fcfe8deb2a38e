"""The ``dump`` command: a worker that writes what it receives as pcap/pcapng (or counts it).

The output path is checked before connecting (a bad one fails at once, naming the full path), and the file
header is written when the file is opened. ``dump`` writes only whole packets as they arrived; SIGINT or
SIGTERM stop it cleanly: the file holds every whole packet received, the summary is printed, exit 0. If the
server goes away without ending the stream it keeps what it wrote and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from .common import STOP, check_output_path, err, packet_checksum, positive_int, seconds


def _connect_waiting(name: str, timeout: float, overflow: str | None) -> Any:
    """Connects, waiting up to ``timeout`` seconds for a server that is not listening yet (workers are
    often started before the replay); says once on stderr that it is waiting."""
    from ..client import Client
    from ..errors import ConnectError

    deadline = time.monotonic() + timeout
    said = False
    while True:
        try:
            return Client(name, timeout=max(0.0, deadline - time.monotonic()), overflow=overflow)  # type: ignore[arg-type]
        except ConnectError as e:
            if e.errno not in (2, 111) or time.monotonic() >= deadline:  # ENOENT, ECONNREFUSED: not there yet
                raise
            if not said:
                err(f"packet-ipc dump: waiting for server {name} (up to {timeout:g} s)")
                said = True
            time.sleep(0.05)  # polling for the server's socket to appear; nothing to wait on before it exists


def cmd_dump(args: argparse.Namespace) -> int:
    """A worker that writes what it receives as pcap/pcapng (or just counts it), or serves it as PCAP-over-IP."""
    if args.listen is not None or args.connect is not None:
        from ..pcap_over_ip import dump_to_tcp

        return dump_to_tcp(args, lambda: _connect_waiting(args.name, args.timeout, args.overflow))
    from ..pcap import CaptureWriter

    if args.write:
        check_output_path(args.write)
    client = _connect_waiting(args.name, args.timeout, args.overflow)
    out: Any = None
    writer: Any = None
    packets = nbytes = 0
    checksum = 0
    stopped = False
    try:
        if args.write:
            out = sys.stdout.buffer if args.write == "-" else open(args.write, "wb")
            with STOP.protected():
                writer = CaptureWriter(out, linktype=client.linktype, snaplen=client.snaplen, format=args.format)
        while args.count is None or packets < args.count:
            batch = client.receive_batch(1024, timeout=None)
            if batch is None:
                break
            with batch, STOP.protected():  # a stop request waits for the batch to be written whole
                if writer is None and not args.checksum and args.count is None:
                    packets += len(batch)  # only counting: no Python object per packet
                    nbytes += batch.nbytes
                    continue
                take = list(batch) if args.count is None else list(batch)[: args.count - packets]
                if writer is not None:
                    try:
                        writer.write_many(take)
                    except ValueError as e:
                        if "use format='pcapng'" in str(e):
                            raise ValueError(str(e).replace("use format='pcapng'", "use --format pcapng")) from None
                        raise
                if args.checksum:
                    checksum = (checksum + packet_checksum(take)) & 0xFFFF_FFFF_FFFF_FFFF
                packets += len(take)
                nbytes += sum(p.caplen for p in take)
                del take
    except KeyboardInterrupt:
        stopped = True  # SIGINT/SIGTERM: a clean stop, the file keeps every whole packet
    finally:
        with STOP.protected():
            if writer is not None:
                writer.close()
            if out is not None and out is not sys.stdout.buffer:
                out.close()
            stats = client.stats()
            client.close()
    result = {"pid": os.getpid(), "packets": packets, "bytes": nbytes,
              "checksum": f"{checksum:016x}" if args.checksum else None, "dropped_by_server": stats.dropped_packets,
              "stopped_by": STOP.name if stopped else None}
    if args.json:
        print(json.dumps(result), file=sys.stderr if args.write == "-" else sys.stdout, flush=True)
    else:
        summed = f", checksum {checksum:016x}" if args.checksum else ""
        why = f" (stopped by {STOP.name})" if stopped else ""
        err(f"packet-ipc dump: {packets:,} packets, {nbytes:,} bytes{summed}, "
            f"dropped by the server {stats.dropped_packets:,}{why}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Registers ``dump``."""
    p = sub.add_parser("dump", help="receive as a worker and write pcap/pcapng",
                       description="Connect to NAME as a worker; write what arrives (-w FILE, or -w - for stdout: "
                                   "packet-ipc dump NAME -w - | tcpdump -nr -). SIGINT/SIGTERM stop it cleanly.")
    p.add_argument("name", help="the server's name")
    p.add_argument("-w", "--write", default=None, help="output file, or - for stdout (default: only count)")
    p.add_argument("--format", choices=["pcap", "pcapng"], default="pcap", help="output format (pcap, nanosecond)")
    p.add_argument("-c", "--count", type=positive_int, default=None, help="stop after this many packets")
    p.add_argument("--timeout", type=seconds, default=30.0,
                   help="seconds to wait for the server to appear and accept (30)")
    p.add_argument("--overflow", choices=["block", "drop"], default=None, help="this worker's overflow policy")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--checksum", action="store_true",
                   help="also sum a 64-bit BLAKE2b of every packet (order-independent; what demo compares)")
    from ..pcap_over_ip import add_dump_options

    add_dump_options(p)
    p.set_defaults(func=cmd_dump)
