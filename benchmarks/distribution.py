"""Distribution throughput: one server process feeding K worker processes, "flow" against "round_robin".

Run: ``python -m benchmarks.distribution [--seconds S] [--workers 1,2,4]``. Packets are IMIX-sized
(64/594/1518 in 7:4:1) Ethernet/IPv4/TCP frames of 4096 flows, pre-built as 256-packet PacketBatches, so the
measured cost is distribution (flow hash and partition in C, one send per worker) and the IPC, not encoding.
Each worker receives batches and counts packets and bytes; the parent checks the totals (nothing lost) and
prints packets/s per configuration. On a 2-core machine, 4 workers plus the server oversubscribe the CPU:
compare configurations within one run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import struct
import time

import packet_ipc as pipc


def imix_frames(count: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    sizes = [64] * 7 + [594] * 4 + [1518]
    frames = []
    for _ in range(count):
        size = rng.choice(sizes)
        flow = rng.randrange(4096)
        src, dst = struct.pack("!I", 0x0A000000 + flow), struct.pack("!I", 0xC0A80000 + flow % 251)
        sport, dport = 1024 + flow, 443
        if rng.random() < 0.5:  # both directions
            src, dst, sport, dport = dst, src, dport, sport
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size - 14, 0, 0, 64, 6, 0, src, dst)
        tcp = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 0x50, 0x10, 65535, 0, 0)
        head = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp
        frames.append(head + bytes(size - len(head)))
    return frames


def worker(name: str, out: mp.Queue) -> None:
    client = pipc.Client(name, timeout=60)
    packets = nbytes = 0
    while (batch := client.receive_batch(1024, timeout=60)) is not None:
        with batch:
            packets += len(batch)
            nbytes += batch.nbytes
    out.put((packets, nbytes))


def run(distribution: str, workers: int, batches: list[pipc.PacketBatch], seconds: float) -> tuple[float, int]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with pipc.Server(distribution=distribution, capacity=8 << 20) as server:
        procs = [ctx.Process(target=worker, args=(server.name, out)) for _ in range(workers)]
        for p in procs:
            p.start()
        server.wait_for_clients(workers, timeout=60)
        sent = 0
        start = time.perf_counter()
        end = start + seconds
        i = 0
        while time.perf_counter() < end:
            sent += server.send_batch(batches[i % len(batches)])
            i += 1
        server.send(None)
        got = sum(out.get(timeout=60)[0] for _ in procs)
        elapsed = time.perf_counter() - start
        for p in procs:
            p.join(30)
    if got != sent:
        raise SystemExit(f"FAILED: {distribution}/{workers}: sent {sent}, workers received {got}")
    return sent / elapsed, sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--workers", default="1,2,4")
    args = parser.parse_args()
    frames = imix_frames(256 * 64)
    batches = [pipc.PacketBatch.from_packets([pipc.Packet(i, f) for i, f in enumerate(frames[k : k + 256])], 1)
               for k in range(0, len(frames), 256)]
    print(f"{'distribution':<12} {'workers':>7} {'Mpkt/s':>8} {'vs round_robin':>15}")
    for k in [int(x) for x in args.workers.split(",")]:
        rr, _ = run("round_robin", k, batches, args.seconds)
        fl, _ = run("flow", k, batches, args.seconds)
        print(f"{'round_robin':<12} {k:>7} {rr / 1e6:>8.2f} {1.0:>14.2f}x")
        print(f"{'flow':<12} {k:>7} {fl / 1e6:>8.2f} {fl / rr:>14.2f}x")


if __name__ == "__main__":
    main()
