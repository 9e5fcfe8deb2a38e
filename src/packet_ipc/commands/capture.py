"""The ``capture`` command: live capture from an interface into workers."""

from __future__ import annotations

import argparse
import time

from .common import add_server_options, drain_wait, err, make_server, positive_float, positive_int, print_summary

def cmd_capture(args: argparse.Namespace) -> int:
    """Captures live from an interface into the IPC."""
    from ..capture import open_live

    with open_live(args.interface, args.snaplen, args.filter, not args.no_promisc) as cap:
        with make_server(args, cap.linktype) as server:
            err(f"packet-ipc: capturing on {args.interface} into {server.name}; waiting for {args.workers} worker(s)")
            server.wait_for_clients(args.workers, timeout=args.accept_timeout)
            err("packet-ipc: capturing (Ctrl-C to stop)")
            packets = nbytes = 0
            start = time.monotonic()
            try:
                for batch in cap.batches(args.batch, count=args.count, duration=args.duration):
                    server.send_batch(batch)
                    packets += len(batch)
                    nbytes += batch.nbytes
            except KeyboardInterrupt:
                pass
            server.send(None)
            seconds = time.monotonic() - start
            drain_wait(server)
            kernel = cap.stats()
            workers = server.stats().connections
            server.close_connections()
    print_summary(packets, nbytes, seconds, workers, 0, args.json)
    err(f"kernel: received {kernel.received}, dropped {kernel.dropped}, interface dropped {kernel.if_dropped}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("capture", help="capture live from an interface into workers",
                       description="Live capture (libpcap) into packet-ipc workers. Needs CAP_NET_RAW.")
    p.add_argument("-i", "--interface", required=True, help="interface to capture on")
    p.add_argument("--filter", default=None, help="BPF filter (tcpdump syntax)")
    p.add_argument("--snaplen", type=positive_int, default=262144, help="bytes to capture per packet")
    p.add_argument("--no-promisc", action="store_true", help="do not put the interface in promiscuous mode")
    p.add_argument("-c", "--count", type=positive_int, default=None, help="stop after this many packets")
    p.add_argument("--duration", type=positive_float, default=None, help="stop after this many seconds")
    p.add_argument("--batch", type=positive_int, default=256, help="packets per batch at most (256)")
    add_server_options(p)
    p.set_defaults(func=cmd_capture)
