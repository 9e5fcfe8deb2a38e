"""The ``dump`` command: a worker that writes what it receives as pcap/pcapng (or counts it)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from .common import err, packet_checksum

def _connect_waiting(name: str, timeout: float, overflow: str | None) -> Any:
    """Connects, waiting up to ``timeout`` seconds for a server that is not listening yet (workers are
    often started before the replay)."""
    from ..client import Client
    from ..errors import ConnectError

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
    from ..pcap import CaptureWriter

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
        err(f"packet-ipc dump: {packets:,} packets, {nbytes:,} bytes{summed}, "
             f"dropped by the server {stats.dropped_packets:,}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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
