"""The raw nats-py pipeline of ``benchmarks/scale_out.py``: publish -> JetStream -> pull consumer, no packet-ipc.

Two roles, each run as its own process by ``scale_out.py`` (like ``packet-ipc publish`` and ``subscribe``), so
that each one's CPU is its own:

- ``pub``: publishes ``--messages`` random messages of ``--size`` bytes into ``--partitions`` streams, one task
  per stream with ``--window`` publishes in flight (1: each ack awaited before the next, as the raw row), each
  with a ``Nats-Msg-Id`` like packet-ipc's;
- ``sub``: one durable pull consumer per stream (created before ``pub`` starts), read concurrently until every
  message has arrived, with ``--mode``:

  - ``ours``: the acks ``packet-ipc subscribe`` needs, with nats-py's fetch: explicit acks,
    ``max_ack_pending=1``, ``fetch(1)`` with the next request sent before the current message is acked (an ack
    not awaited);
  - ``ackall``: AckAll, ``fetch(--batch)`` and one ack of the batch's last message;
  - ``none``: AckNone and ``fetch(--batch)``: the least work nats-py can do per message.

``--read-buffer N`` (both roles) sets nats-py's socket read size and reader limit (``DEFAULT_BUFFER_SIZE``,
32 KiB by default) before connecting, as ``packet-ipc publish`` / ``subscribe`` do (1 MiB).

Each prints one JSON line: CLOCK_MONOTONIC (system-wide on Linux) at the start / end of its data phase, its CPU
seconds (user + system) in that phase, and the messages and bytes it moved. Not a test; a measuring tool.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


async def publish(url: str, prefix: str, partitions: int, messages: int, size: int, window: int) -> dict[str, Any]:
    """Publishes ``messages`` messages (split over the partitions), ``window`` in flight per partition."""
    import nats

    nc = await nats.connect(url.split(","))
    js = nc.jetstream(timeout=10)
    payload = os.urandom(size)
    per = messages // partitions

    async def one(k: int) -> None:
        pending: list[asyncio.Future[Any]] = []
        for i in range(per):
            pending.append(asyncio.ensure_future(js.publish(
                f"{prefix}.{k}", payload, stream=f"{prefix}-{k}", headers={"Nats-Msg-Id": f"rawp-{k}-{i}"})))
            if len(pending) >= window:
                await pending.pop(0)
        for f in pending:
            await f

    start, cpu0 = time.monotonic(), _cpu()
    await asyncio.gather(*(one(k) for k in range(partitions)))
    end, cpu = time.monotonic(), _cpu() - cpu0
    await nc.close()
    return {"start": start, "end": end, "cpu": cpu, "messages": per * partitions, "bytes": per * partitions * size}


async def subscribe(url: str, prefix: str, partitions: int, messages: int, mode: str, batch: int) -> dict[str, Any]:
    """Reads ``messages // partitions`` messages from each partition's stream; prints ``ready`` once every
    consumer exists."""
    import nats
    import nats.errors
    import nats.js.errors
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    nc = await nats.connect(url.split(","))
    js = nc.jetstream(timeout=10)
    policy = {"ours": AckPolicy.EXPLICIT, "ackall": AckPolicy.ALL, "none": AckPolicy.NONE}[mode]
    config = ConsumerConfig(ack_policy=policy, deliver_policy=DeliverPolicy.ALL, ack_wait=10,
                            max_ack_pending=1 if mode == "ours" else -1, max_deliver=-1)
    subs = [await js.pull_subscribe(f"{prefix}.{k}", durable=f"rawc-{mode}", stream=f"{prefix}-{k}", config=config,
                                    pending_bytes_limit=256 << 20) for k in range(partitions)]
    per = messages // partitions
    got = [0, 0]  # messages, bytes
    first: list[float] = []
    print("ready", flush=True)

    async def ours(sub: Any) -> None:
        n = 0
        fetch: asyncio.Future[Any] | None = asyncio.ensure_future(sub.fetch(1, timeout=1.0))
        while n < per:
            assert fetch is not None
            try:
                msgs = await fetch
            except (nats.errors.TimeoutError, TimeoutError):
                fetch = asyncio.ensure_future(sub.fetch(1, timeout=1.0))
                continue
            except nats.js.errors.ServiceUnavailableError:  # no consumer leader for a moment (a busy cluster)
                await asyncio.sleep(0.1)
                fetch = asyncio.ensure_future(sub.fetch(1, timeout=1.0))
                continue
            fetch = asyncio.ensure_future(sub.fetch(1, timeout=1.0)) if n + len(msgs) < per else None
            for m in msgs:
                if not first:
                    first.append(time.monotonic())
                n += 1
                got[0] += 1
                got[1] += len(m.data)
                await m.ack()  # not confirmed, like packet-ipc subscribe

    async def batched(sub: Any) -> None:
        n = 0
        while n < per:
            try:
                msgs = await sub.fetch(min(batch, per - n), timeout=1.0)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            except nats.js.errors.ServiceUnavailableError:  # no consumer leader for a moment (a busy cluster)
                await asyncio.sleep(0.1)
                continue
            if not first:
                first.append(time.monotonic())
            for m in msgs:
                got[0] += 1
                got[1] += len(m.data)
            n += len(msgs)
            if mode == "ackall" and msgs:
                await msgs[-1].ack()

    cpu0 = _cpu()
    await asyncio.gather(*((ours if mode == "ours" else batched)(s) for s in subs))
    end, cpu = time.monotonic(), _cpu() - cpu0
    await nc.close()
    return {"first": first[0] if first else end, "end": end, "cpu": cpu, "messages": got[0], "bytes": got[1]}


def main(argv: list[str] | None = None) -> int:
    """Runs one role and prints its JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("role", choices=("pub", "sub"))
    ap.add_argument("--url", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--messages", type=int, required=True)
    ap.add_argument("--size", type=int, default=256 * 1024)
    ap.add_argument("--window", type=int, default=1)
    ap.add_argument("--mode", choices=("ours", "ackall", "none"), default="ours")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--read-buffer", type=int, default=0, help="nats-py's DEFAULT_BUFFER_SIZE (0: nats-py's own)")
    a = ap.parse_args(argv)
    if a.read_buffer:
        import nats.aio.client

        nats.aio.client.DEFAULT_BUFFER_SIZE = a.read_buffer
    if a.role == "pub":
        out = asyncio.run(publish(a.url, a.prefix, a.partitions, a.messages, a.size, a.window))
    else:
        out = asyncio.run(subscribe(a.url, a.prefix, a.partitions, a.messages, a.mode, a.batch))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
