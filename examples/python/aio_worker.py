"""An asyncio worker: counts packets and bytes per linktype while the event loop keeps serving other tasks.

    python examples/python/aio_worker.py                 # self-contained: an asyncio server feeds 4 workers
    python examples/python/aio_worker.py NAME            # one worker of a running server, for instance
        packet-ipc replay --name @demo --workers 1 tests/data/   then   aio_worker.py @demo

The self-contained run serves every worker from one event loop (the server side of packet_ipc.aio) and
runs the workers on the same loop, then checks that each received exactly what was sent.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import sys
import time

import packet_ipc as pipc
from packet_ipc import aio


async def worker(name: str) -> tuple[int, int, str]:
    """Receives until end of stream; returns (packets, bytes, sha256 of the payloads)."""
    packets = nbytes = 0
    linktypes: collections.Counter[int] = collections.Counter()
    digest = hashlib.sha256()
    async with aio.Client.connect(name, timeout=10) as client:
        async for batch in client:  # ends at end of stream; ConnectionLostError if the server died
            with batch:  # gives the ring space back at once
                packets += len(batch)
                nbytes += batch.nbytes
                digest.update(batch.data)  # every payload back to back, read in place in the ring
                linktypes.update(p.linktype for p in batch)
    print(f"worker: {packets} packets, {nbytes} bytes, linktypes {dict(linktypes)}")
    return packets, nbytes, digest.hexdigest()


async def heartbeat(stop: asyncio.Event) -> None:
    """Another task on the same loop: it keeps its 100 ms rhythm while the workers run at full speed."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    while not stop.is_set():
        before = loop.time()
        await asyncio.sleep(0.1)
        worst = max(worst, loop.time() - before - 0.1)
    print(f"heartbeat: worst lateness {worst * 1000:.1f} ms")


async def demo(workers: int = 4, count: int = 200_000) -> None:
    payloads = [bytes([i % 251]) * (60 + i % 1400) for i in range(1000)]
    expected = hashlib.sha256()
    for i in range(count):
        expected.update(payloads[i % 1000])
    stop = asyncio.Event()
    beat = asyncio.create_task(heartbeat(stop))
    async with aio.Server(capacity=1 << 20) as server:
        tasks = [asyncio.create_task(worker(server.name)) for _ in range(workers)]

        async def feed(conn: aio.Connection) -> None:
            async with conn:
                now = time.time_ns()
                stream = (pipc.Packet(now + i, payloads[i % 1000]) for i in range(count))
                await aio.transfer_ipc(stream, conn, batch_size=256)

        feeders = [asyncio.create_task(feed(await server.accept(timeout=10))) for _ in range(workers)]
        await asyncio.gather(*feeders)
        results = await asyncio.gather(*tasks)
    stop.set()
    await beat
    assert all(r[0] == count and r[2] == expected.hexdigest() for r in results), results
    print(f"{workers} workers each received all {count} packets intact")


def main() -> None:
    if len(sys.argv) > 1:
        asyncio.run(worker(sys.argv[1]))
    else:
        asyncio.run(demo())


if __name__ == "__main__":
    main()
