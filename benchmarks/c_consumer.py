"""Throughput of the C ABI's consumer next to Python's, in one run: ``python -m benchmarks.c_consumer``.

Builds ``examples/c/consumer.c`` and ``examples/c/producer.c`` with ``packet-ipc config --cflags --libs`` and
measures, for 64-byte and 1518-byte packets, how many packets per second reach the consumer on these paths:

- C producer (``producer --pool 1``: one prebuilt 256-packet batch, as columns with its payloads back to back,
  sent again and again with ``pipc_conn_send_columns``: the Python row's input) -> C consumer
  (``consumer --columns``: ``pipc_client_receive_columns`` of up to 256, each batch released whole with
  ``pipc_client_release_range``, as Python's ``receive_batch`` does; every C consumer row below but one)
- C producer (the same) -> C consumer with descriptors (``pipc_client_receive``: a ``struct pipc_packet``
  per packet; every other batch released in reverse, one packet per call, as the example shows)
- C producer building every packet in its loop (``pipc_conn_send`` of 256 descriptors pointing into a 64 KiB
  pool: the generator's own work is in the figure) -> C consumer
- Python server (``Connection.send_batch`` of a prebuilt 256-packet ``PacketBatch``) -> C consumer
- Python server (same) -> Python ``Client.receive_batch(256)`` (the baseline of the last column)
- C producer -> Python ``Client.receive_batch(256)``

On these six the consumer receives, counts and releases: it reads the descriptors (lengths) but not the
payload bytes, so the figures are the transport's (the producer's copy into the ring is included, the
consumer's own work is not); the producer is the bottleneck. Consumer-bound rows follow: the C consumer
reading every payload byte (``--touch``: XOR of 8-byte words, about memory speed), the C consumer hashing
every byte (FNV-1a, byte at a time: slow by design, about 1 byte per 1.5 ns), and a Python consumer
touching each packet as a ``Packet`` object (``len(p.data)``), the least per-packet Python code pays.

Each consumer is its own process; the clock is the consumer's, from its first packet to the end of stream.
Before timing, one small run per path checks that counts, bytes (and for the C consumer, the FNV-1a
checksum) agree on both sides. Each cell is the median of ``--repeat`` runs. Gbit/s counts captured bytes.
Self-contained: it needs the installed package, a C compiler, and nothing from the rest of ``benchmarks/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import packet_ipc as pipc

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "c"
BATCH = 256
CAPACITY = 8 << 20  # the same in-flight budget as the main benchmark
BASELINE = "Python send_batch -> Python receive_batch"

# A Python consumer: the Python twin of consumer.c --no-checksum --json.
PY_CLIENT = textwrap.dedent(
    """
    import json, sys, time, packet_ipc as pipc
    per_packet = sys.argv[1] == "per-packet"
    client = pipc.Client(sys.argv[-1], timeout=30)
    count = nbytes = 0
    start = None
    while (batch := client.receive_batch({batch}, timeout=30)) is not None:
        if start is None:
            start = time.perf_counter_ns()
        count += len(batch)
        if per_packet:  # what per-packet Python code pays: one Packet object and one view per packet
            for p in batch:
                nbytes += len(p.data)
        else:
            nbytes += batch.nbytes
        batch.release()
    elapsed = time.perf_counter_ns() - start if start else 0
    print(json.dumps({{"packets": count, "bytes": nbytes, "elapsed_ns": elapsed}}))
    """
).format(batch=BATCH)


def config_flags() -> list[str]:
    script = Path(sys.executable).parent / "packet-ipc"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "packet_ipc.cli"]
    return shlex.split(subprocess.run(cmd + ["config", "--cflags", "--libs"], check=True, capture_output=True,
                                      text=True).stdout)


def build(out: Path) -> dict[str, Path]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        sys.exit("c_consumer: no C compiler (cc) on PATH")
    exes = {}
    for name in ("consumer", "producer"):
        exe = out / name
        subprocess.run([cc, "-std=c11", "-O2", "-Wall", "-Wextra", str(EXAMPLES / f"{name}.c"), "-o", str(exe),
                        *config_flags()], check=True)
        exes[name] = exe
    return exes


def python_batch(size: int) -> pipc.PacketBatch:
    """One prebuilt 256-packet batch of `size`-byte packets, sent over and over."""
    import array

    timestamps = array.array("Q", range(1_700_000_000_000_000_000, 1_700_000_000_000_000_000 + BATCH))
    lengths = array.array("I", [size] * BATCH)
    data = bytes((i * 7) & 0xFF for i in range(size * BATCH))
    return pipc.PacketBatch.from_buffers(timestamps, lengths, data)


def c_to_consumer(exes: dict[str, Path], consumer_cmd: list[str], count: int, size: int, checksum: bool,
                  pool: bool = True) -> dict:
    """C producer -> consumer_cmd (whose last argument, the name, is appended here); pool: one prebuilt batch
    sent again and again (--pool 1), else every packet built in the producer's loop."""
    args = [str(exes["producer"]), "--count", str(count), "--sizes", str(size), "--batch", str(BATCH),
            "--capacity", str(CAPACITY), "--json", "--timeout", "30000"] + (["--pool", "1"] if pool else [])
    producer = subprocess.Popen(args + ([] if checksum else ["--no-checksum"]), stdout=subprocess.PIPE, text=True)
    try:
        name = producer.stdout.readline().strip()
        got = json.loads(subprocess.run(consumer_cmd + [name], check=True, capture_output=True, text=True,
                                        timeout=300).stdout)
        sent = json.loads(producer.communicate(timeout=60)[0].splitlines()[-1])
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait()
    check(sent, got, checksum)
    return got


def python_to_consumer(consumer_cmd: list[str], count: int, size: int, checksum: bool) -> dict:
    """Python server with send_batch -> consumer_cmd."""
    batch = python_batch(size)
    with pipc.Server(capacity=CAPACITY, linktype=1) as server:
        consumer = subprocess.Popen(consumer_cmd + [server.name], stdout=subprocess.PIPE, text=True)
        try:
            conn = server.accept(timeout=30)
            for _ in range(count // BATCH):
                conn.send_batch(batch, timeout=30)
            conn.end()
            conn.close()
            got = json.loads(consumer.communicate(timeout=300)[0])
        finally:
            if consumer.poll() is None:
                consumer.kill()
                consumer.wait()
    sent_count = count // BATCH * BATCH
    sent = {"packets": sent_count, "bytes": sent_count * size}
    if checksum:  # only on the short check runs: FNV in Python is slow
        h = 0xCBF29CE484222325
        for _ in range(count // BATCH):
            for p in batch:
                h = fnv_packet(h, p.timestamp, p.orig_len, bytes(p.data))
        sent["checksum"] = f"0x{h:016x}"
    check(sent, got, checksum)
    return got


def fnv_packet(h: int, ts_ns: int, origlen: int, data: bytes) -> int:
    for b in ts_ns.to_bytes(8, "little") + origlen.to_bytes(4, "little") + len(data).to_bytes(4, "little") + data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def check(sent: dict, got: dict, checksum: bool) -> None:
    keys = ("packets", "bytes", "checksum") if checksum and "checksum" in got else ("packets", "bytes")
    if any(sent[k] != got[k] for k in keys):
        sys.exit(f"c_consumer: MISMATCH: sent {sent}, received {got}")


def rate(result: dict) -> tuple[float, float]:
    seconds = result["elapsed_ns"] / 1e9
    return result["packets"] / seconds, result["bytes"] * 8 / seconds / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.c_consumer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell (median reported; default 3)")
    parser.add_argument("--packets-64", type=int, default=8_000_000, help="packets per 64-byte run")
    parser.add_argument("--packets-1518", type=int, default=1_000_000, help="packets per 1518-byte run")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="pipc-bench-c-") as tmp:
        exes = build(Path(tmp))
        c_descriptors = [str(exes["consumer"]), "--json", "--batch", str(BATCH), "--timeout", "30000"]
        c_consumer = c_descriptors + ["--columns"]
        py_client = [sys.executable, "-c", PY_CLIENT, "batch"]
        py_per_packet = [sys.executable, "-c", PY_CLIENT, "per-packet"]
        paths = {
            "C producer -> C consumer": lambda n, s, ck: c_to_consumer(
                exes, c_consumer + ([] if ck else ["--no-checksum"]), n, s, ck),
            "C producer -> C consumer, descriptors": lambda n, s, ck: c_to_consumer(
                exes, c_descriptors + ([] if ck else ["--no-checksum"]), n, s, ck),
            "C producer building each packet -> C consumer": lambda n, s, ck: c_to_consumer(
                exes, c_consumer + ([] if ck else ["--no-checksum"]), n, s, ck, pool=False),
            "Python send_batch -> C consumer": lambda n, s, ck: python_to_consumer(
                c_consumer + ([] if ck else ["--no-checksum"]), n, s, ck),
            BASELINE: lambda n, s, ck: python_to_consumer(py_client, n, s, False),
            "C producer -> Python receive_batch": lambda n, s, ck: c_to_consumer(exes, py_client, n, s, False),
            # Consumer-bound: the consumer works on every packet.
            "C producer -> C consumer, reads every byte": lambda n, s, ck: c_to_consumer(
                exes, c_consumer + ["--no-checksum", "--touch"], n, s, False),
            "C producer -> C consumer, FNV-1a of every byte": lambda n, s, ck: c_to_consumer(
                exes, c_consumer, n, s, False),
            "C producer -> Python, len(p.data) per Packet": lambda n, s, ck: c_to_consumer(
                exes, py_per_packet, n, s, False),
        }
        for size in (64, 1518):  # correctness first, on short streams
            for run in paths.values():
                run(2 * BATCH, size, True)
        rows = []
        for size, count in ((64, args.packets_64), (1518, args.packets_1518)):
            for label, run in paths.items():
                results = [rate(run(count, size, False)) for _ in range(args.repeat)]
                pps = statistics.median(r[0] for r in results)
                gbps = statistics.median(r[1] for r in results)
                rows.append({"size": size, "path": label, "packets_per_s": pps, "gbit_per_s": gbps, "count": count})
                print(f"  {size:>5} B  {label:<48} {pps / 1e6:8.2f} Mpps {gbps:8.2f} Gbit/s", file=sys.stderr)

    print(f"\npacket-ipc C consumer throughput ({platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, batches of {BATCH}, {CAPACITY >> 20} MiB ring, median of "
          f"{args.repeat})\n")
    print(f"| size | path | packets/s | Gbit/s | vs {BASELINE} |")
    print("|---:|---|---:|---:|---:|")
    for size in (64, 1518):
        base = next(r for r in rows if r["size"] == size and r["path"] == BASELINE)
        for r in (r for r in rows if r["size"] == size):
            print(f"| {size} | {r['path']} | {r['packets_per_s'] / 1e6:.2f} M | {r['gbit_per_s']:.2f} | "
                  f"{r['packets_per_s'] / base['packets_per_s']:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
