"""The ``packet-ipc publish`` and ``packet-ipc subscribe`` commands (registered by ``packet_ipc.cli``).

Errors a user will meet (an unreachable URL, a stream with other settings, a partition out of range, a message
size above ``max_payload``) are typed exceptions here, which the command line prints as one line (exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

__all__ = ["add_publish", "add_subscribe", "cmd_publish", "cmd_subscribe"]


def _size(text: str) -> int:
    """``262144``, ``256k``, ``64M`` -> bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 262144, 256k, 64M)") from None


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return v


def _need_nats() -> None:
    try:
        import nats  # noqa: F401
    except ImportError:
        from .common import NatsError

        raise NatsError("this command needs nats-py: pip install 'packet-ipc[nats]'") from None


def _run(coro: Any) -> Any:
    """asyncio.run, with a NATS client error that got this far turned into one line (NatsError)."""
    import nats.errors

    from .common import NatsError, keep_heap, raise_read_buffer

    raise_read_buffer()  # this process is ours: 1 MiB socket reads instead of 32 KiB (see there)
    keep_heap()  # and its messages reuse the heap's memory instead of faulting in new pages (see there)

    try:
        return asyncio.run(coro)
    except nats.errors.Error as e:
        raise NatsError(f"NATS: {type(e).__name__}: {e}") from None


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _report(args: argparse.Namespace, summary: Any, line: str) -> int:
    """Prints a command's summary (JSON on stdout with ``--json``, else ``line`` on stderr); returns 0."""
    if args.json:
        print(json.dumps(summary.as_dict()), flush=True)
    else:
        _err(line)
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    """Publishes the stream of the local server NAME into partition streams (see ``packet_ipc.nats``)."""
    _need_nats()
    from .publisher import Publisher

    pub = Publisher(
        args.name, nats=args.nats, stream=args.stream, partitions=args.partitions, replicas=args.replicas,
        storage=args.storage, max_message=args.max_message, linger=args.linger_ms / 1000.0,
        buffer_bytes=args.buffer, overflow=args.overflow, publisher_id=args.id, window=args.window, connect_timeout=args.connect_timeout,
        local_timeout=args.timeout,
    )
    s = _run(pub.run())
    rate = s.bytes / s.seconds / 1e6 if s.seconds else 0.0
    return _report(args, s, f"packet-ipc publish: {s.packets:,} packets, {s.bytes:,} bytes in {s.messages:,} "
                   f"messages to {args.partitions} partition(s) of {args.stream} in {s.seconds:.2f} s ({rate:.1f} "
                   f"MB/s); retries {s.retries:,}, dropped {s.dropped_packets:,} packets; end-of-stream sent")


def add_publish(sub: Any) -> None:
    """Registers ``packet-ipc publish``."""
    p = sub.add_parser(
        "publish", help="publish a local stream into partitioned NATS JetStream streams",
        description="Connect to the local server NAME as a worker and publish every packet to JetStream stream "
                    "PREFIX-<k> (subject PREFIX.<k>), k = flow hash mod P; end-of-stream markers at the end.")
    p.add_argument("name", help="the local packet-ipc server's name")
    p.add_argument("--nats", required=True, help="NATS URL(s), comma separated (nats://host:4222,...)")
    p.add_argument("--stream", required=True, help="stream prefix: streams PREFIX-<k>, subjects PREFIX.<k>")
    p.add_argument("--partitions", required=True, type=_positive_int, help="number of partitions P")
    p.add_argument("--replicas", type=_positive_int, default=1, help="replicas of each stream if created (1)")
    p.add_argument("--storage", choices=["file", "memory"], default="file", help="storage of created streams")
    p.add_argument("--max-message", type=_size, default=256 * 1024,
                   help="largest message in bytes (256k; at most the server's max_payload)")
    p.add_argument("--linger-ms", type=float, default=5.0, help="send a partly filled message after this (5 ms)")
    p.add_argument("--buffer", type=_size, default=64 << 20,
                   help="bytes of messages held until acknowledged (64M)")
    p.add_argument("--overflow", choices=["block", "drop"], default="block",
                   help="when that buffer is full: block the local server (lossless) or drop and count")
    p.add_argument("--window", type=_positive_int, default=4,
                   help="messages per partition in flight at once, kept in order (4; 1: one at a time)")
    p.add_argument("--id", default=None, help="publisher id in message ids, unique per run (default: host-pid-random)")
    p.add_argument("--connect-timeout", type=float, default=5.0, help="seconds to reach NATS (5)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the local server (30)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.set_defaults(func=cmd_publish)


def cmd_subscribe(args: argparse.Namespace) -> int:
    """Serves local workers from partition streams (see ``packet_ipc.nats``)."""
    _need_nats()
    from .subscriber import Subscriber, parse_partitions

    parse_partitions(args.partitions)  # a bad list fails before anything connects
    sub = Subscriber(
        nats=args.nats, stream=args.stream, partitions=args.partitions, name=args.name, workers=args.workers,
        distribution=args.distribution, durable=args.durable, follow=args.follow, group=args.group,
        publishers=args.publishers, capacity=args.capacity, ack_wait=args.ack_wait, lease=args.lease,
        connect_timeout=args.connect_timeout, accept_timeout=args.accept_timeout, stream_wait=args.stream_wait,
    )
    _err(f"packet-ipc subscribe: serving {args.stream} at {sub.name}; waiting for {args.workers} worker(s)")

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, sub.stop)
        return await sub.run()

    s = _run(main())
    return _report(args, s, f"packet-ipc subscribe: {s.packets:,} packets, {s.bytes:,} bytes from {s.messages:,} "
                   f"messages; redelivered {s.redelivered_packets:,} packets, corrupt messages skipped "
                   f"{s.corrupt_messages:,}")


def add_subscribe(sub: Any) -> None:
    """Registers ``packet-ipc subscribe``."""
    p = sub.add_parser(
        "subscribe", help="serve local workers from partitioned NATS JetStream streams",
        description="Be a packet-ipc server (NAME) for K local workers, fed from durable pull consumers of the "
                    "partitions; a message is acknowledged once its packets are in the local rings.")
    p.add_argument("--nats", required=True, help="NATS URL(s), comma separated")
    p.add_argument("--stream", required=True, help="stream prefix given to publish")
    p.add_argument("--partitions", default="all", help="'all' or a list like 0,2,5 (with --group: candidates)")
    p.add_argument("--name", default=None, help="local server name (default: a fresh private one, printed)")
    p.add_argument("--workers", type=_positive_int, default=1, help="local workers to wait for (1)")
    p.add_argument("--distribution", choices=["flow", "round_robin", "broadcast"], default="flow")
    p.add_argument("--durable", default=None, help="consumer name to resume from after a restart")
    p.add_argument("--follow", action="store_true", help="keep running after the end-of-stream markers")
    p.add_argument("--group", default=None, help="share the partitions with the subscribers of this group")
    p.add_argument("--publishers", type=_positive_int, default=1,
                   help="end-of-stream markers (distinct publishers) that end a partition (1)")
    p.add_argument("--capacity", type=_size, default=4 << 20, help="ring bytes per worker (4M)")
    p.add_argument("--ack-wait", type=float, default=10.0,
                   help="seconds before an unacknowledged message is delivered again (10)")
    p.add_argument("--lease", type=float, default=6.0, help="with --group: lease time in seconds (6)")
    p.add_argument("--connect-timeout", type=float, default=5.0, help="seconds to reach NATS (5)")
    p.add_argument("--accept-timeout", type=float, default=60.0, help="seconds to wait for the workers (60)")
    p.add_argument("--stream-wait", type=float, default=30.0, help="seconds to wait for the streams to exist (30)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.set_defaults(func=cmd_subscribe)
