"""``python -m benchmarks.aio_vs_sync``: receive throughput of ``packet_ipc.aio`` next to the sync API, same run.

Method: a spawned producer process sends one pre-built :class:`~packet_ipc.PacketBatch` of 256 packets of
SIZE bytes over and over (``Connection.send_batch``, 8 MiB ring, lossless ``"block"`` policy), until the
consumer tells it to stop. The consumer, in this process, takes batches of up to 256 packets and releases
each at once (``len(batch)`` and ``batch.nbytes`` are read; the payload is not touched, so what is measured
is the cost of the receive path itself), for SECONDS after its first batch; packets/s is packets received in
that window divided by its length. Consumers: the sync ``Client.receive_batch``; ``aio.Client.receive_batch``
under the default asyncio loop; the same under uvloop (if installed). ``--packets`` adds
``receive_packets(256)`` (a list of packet objects) for each. Each cell is the median of REPEAT runs; the
consumers alternate within a repetition, so they see the same machine state. Prints a Markdown table, and the
machine (CPU model, cores, kernel, Python).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import statistics
import sys
import time
from typing import Any

import packet_ipc as pipc
from packet_ipc import aio

RING_BYTES = 8 << 20
BATCH = 256


def produce(name_q: Any, stop: Any, size: int) -> None:
    """Producer process: the same 256-packet batch until `stop` is set, then end of stream."""
    batch = pipc.PacketBatch.from_packets([pipc.Packet(i, bytes([i & 0xFF]) * size) for i in range(BATCH)])
    with pipc.Server(capacity=RING_BYTES, stats_socket=False) as server:
        name_q.put(server.name)
        conn = server.accept(timeout=30)
        try:
            while not stop.is_set():
                conn.send_batch(batch, timeout=30)
            conn.send(None)
        except pipc.ConnectionLostError:
            pass
        conn.close()


def consume_sync(name: str, stop: Any, seconds: float, method: str) -> tuple[int, float]:
    with pipc.Client(name, timeout=30) as client:
        receive = getattr(client, method)
        first = receive(BATCH, 30)
        t0 = time.perf_counter()
        end = t0 + seconds
        n = 0
        del first
        while True:
            got = receive(BATCH, 30)
            n += len(got)
            if method == "receive_batch":
                got.nbytes  # noqa: B018 - read like a consumer would
                got.release()
            del got
            if time.perf_counter() >= end:
                break
        elapsed = time.perf_counter() - t0
        stop.set()
        while receive(BATCH, 30) is not None:  # drain to the end of stream
            pass
    return n, elapsed


async def consume_aio(name: str, stop: Any, seconds: float, method: str) -> tuple[int, float]:
    async with aio.Client.connect(name, timeout=30) as client:
        receive = getattr(client, method)
        first = await receive(BATCH, 30)
        t0 = time.perf_counter()
        end = t0 + seconds
        n = 0
        del first
        while True:
            got = await receive(BATCH, 30)
            n += len(got)
            if method == "receive_batch":
                got.nbytes  # noqa: B018
                got.release()
            del got
            if time.perf_counter() >= end:
                break
        elapsed = time.perf_counter() - t0
        stop.set()
        while await receive(BATCH, 30) is not None:
            pass
    return n, elapsed


def loop_factories() -> dict[str, Any]:
    out: dict[str, Any] = {"aio (asyncio loop)": asyncio.new_event_loop}
    try:
        import uvloop

        out["aio (uvloop)"] = uvloop.new_event_loop
    except ImportError:
        print("uvloop not installed: its column is skipped", file=sys.stderr)
    return out


def one_run(ctx: Any, consumer: str, size: int, seconds: float, method: str) -> float:
    name_q, stop = ctx.Queue(), ctx.Event()
    producer = ctx.Process(target=produce, args=(name_q, stop, size))
    producer.start()
    try:
        name = name_q.get(timeout=30)
        if consumer == "sync":
            n, elapsed = consume_sync(name, stop, seconds, method)
        else:
            with asyncio.Runner(loop_factory=loop_factories()[consumer]) as runner:
                n, elapsed = runner.run(consume_aio(name, stop, seconds, method))
    finally:
        stop.set()
        producer.join(30)
    return n / elapsed


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}, packet-ipc {pipc.__version__}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.aio_vs_sync", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=1.0, help="measured window per run (default 1)")
    p.add_argument("--repeat", type=int, default=3, help="runs per cell, median reported (default 3)")
    p.add_argument("--sizes", default="64,1518", help="packet sizes in bytes (default 64,1518)")
    p.add_argument("--packets", action="store_true", help="also measure receive_packets (packet objects)")
    p.add_argument("--quick", action="store_true", help="0.3 s windows, 1 run")
    p.add_argument("--spin-us", type=float, default=None, help=f"aio.SPIN_S in microseconds (default {aio.SPIN_S * 1e6:g})")
    args = p.parse_args(argv)
    if args.spin_us is not None:
        aio.SPIN_S = args.spin_us * 1e-6
    if args.quick:
        args.seconds, args.repeat = 0.3, 1
    sizes = [int(s) for s in args.sizes.split(",")]
    methods = ["receive_batch"] + (["receive_packets"] if args.packets else [])
    consumers = ["sync", *loop_factories()]
    ctx = multiprocessing.get_context("spawn")
    print(f"machine: {machine()}", file=sys.stderr)
    rows = []
    for method in methods:
        for size in sizes:
            results: dict[str, list[float]] = {c: [] for c in consumers}
            for _ in range(args.repeat):
                for c in consumers:
                    results[c].append(one_run(ctx, c, size, args.seconds, method))
            med = {c: statistics.median(v) for c, v in results.items()}
            rows.append((method, size, med))
            print(f"{method} {size} B: " + ", ".join(f"{c} {v / 1e6:.2f} M/s" for c, v in med.items()), file=sys.stderr)
    header = "| call | packet size | " + " | ".join(consumers) + " |"
    print(f"\nReceive throughput, packets/s (median of {args.repeat} x {args.seconds:g} s; batches of {BATCH}; "
          f"aio.SPIN_S = {aio.SPIN_S * 1e6:g} us; aio relative to sync in parentheses)\n")
    print(header)
    print("|" + "---|" * (2 + len(consumers)))
    for method, size, med in rows:
        base = med["sync"]
        cells = [f"{med['sync'] / 1e6:.2f} M"] + [
            f"{med[c] / 1e6:.2f} M ({med[c] / base:.0%})" for c in consumers[1:]
        ]
        print(f"| `{method}` | {size} B | " + " | ".join(cells) + " |")
    print(f"\n{machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
