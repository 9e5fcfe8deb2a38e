"""``python -m benchmarks.pcap_over_ip``: packets/s of PCAP-over-IP through packet-ipc next to tcpdump | nc.

Method: each workload of :mod:`benchmarks.workloads` (64 B, IMIX, 1518 B; fixed seeds) is written once as a
microsecond pcap file of PACKETS packets (its pool repeated; at most --max-mb, 300 MB, so the 1518 B file
holds fewer) in a temporary directory. Then, in one run, on loopback, each pipeline moves that file:

- ``packet-ipc``: ``packet-ipc replay FILE`` -> IPC -> ``packet-ipc dump --listen 127.0.0.1:P`` -> TCP ->
  ``packet-ipc replay tcp://127.0.0.1:P`` -> IPC -> ``packet-ipc dump`` (counting only);
- ``tcpdump | nc``: ``tcpdump -r FILE -w - | nc -N 127.0.0.1 P`` -> TCP -> a sink (``nc -l P > /dev/null``);
- the two halves apart: ``replay FILE -> dump --listen`` into the TCP sink (out), and ``tcpdump -r FILE
  -w - | nc`` into ``replay --listen -> dump`` (in).

packets/s = packets / streaming time, measured at the TCP receiver: from its first byte to the end of the
stream for a TCP sink (a Python ``recv_into`` loop into one 1 MiB buffer, in place of ``nc > /dev/null``, so
that it can time itself: rows ``tcpdump | nc`` and ``out``), and the summary ``seconds`` of the receiving
``packet-ipc replay`` (from its worker's connection to the end of the stream: rows ``packet-ipc`` and
``in``; what the writer sent before the worker connected waits in TCP buffers, a few MB, so this favours
packet-ipc by at most a few percent; in the ``out`` row, what sits in the worker's 4 MiB ring when the sink
connects favours it the same way). Process start-up and ``replay FILE``'s check pass over the file (about
1 s in all) are not counted. Each cell is the median of REPEAT runs, pipelines alternating within a
repetition. Prints a Markdown table and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.workloads import build

CLI = str(Path(sys.executable).parent / "packet-ipc")
PIPELINES = ("packet-ipc", "tcpdump | nc", "out: dump --listen -> sink", "in: tcpdump | nc -> replay --listen")


def write_capture(workload, packets: int, path: Path) -> int:
    """The workload's pool, repeated, as a microsecond pcap file of ``packets`` packets; returns its bytes."""
    from packet_ipc.pcap import CaptureWriter

    pool = [p for batch in workload.batches for p in batch.packets]
    step = pool[-1].timestamp - pool[0].timestamp + 1000
    with CaptureWriter(path, linktype=1, snaplen=262144, nanosecond=False) as writer:
        for i in range(packets):
            p = pool[i % len(pool)]
            writer.write(type("P", (), {"timestamp": p.timestamp + (i // len(pool)) * step, "data": p.data,
                                        "orig_len": p.orig_len})())
    return path.stat().st_size


SINK = """
import socket, sys, time
if sys.argv[1] == "listen":
    server = socket.create_server(("127.0.0.1", 0))
    print(server.getsockname()[1], flush=True)
    sock, _ = server.accept()
else:
    sock = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
buf = bytearray(1 << 20)
n = sock.recv_into(buf)
first = time.monotonic()
total = n
while n:
    n = sock.recv_into(buf)
    total += n
print(time.monotonic() - first, total, flush=True)
"""


def _port(proc: subprocess.Popen) -> int:
    while line := proc.stderr.readline():
        match = re.search(rb" on 127\.0\.0\.1:(\d+)", line)
        if match:
            return int(match.group(1))
    raise RuntimeError(f"no port printed: {proc.communicate()}")


def _popen(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=kw.pop("stdout", subprocess.DEVNULL), stderr=subprocess.PIPE, **kw)


def _wait_all(procs: list[subprocess.Popen], timeout: float = 600) -> None:
    for p in procs:
        p.wait(timeout)
        if p.returncode != 0:
            raise RuntimeError(f"{p.args} exited {p.returncode}: {p.stderr.read().decode(errors='replace')[-500:]}")


def _sink(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SINK, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _sink_seconds(sink: subprocess.Popen) -> float:
    out, err = sink.communicate(timeout=600)
    if sink.returncode != 0:
        raise RuntimeError(f"sink failed: {err.decode()[-500:]}")
    return float(out.split()[-2])


def _replay_seconds(replay: subprocess.Popen) -> float:
    out, err = replay.communicate(timeout=600)
    if replay.returncode != 0:
        raise RuntimeError(f"replay failed: {err.decode()[-500:]}")
    return float(json.loads(out)["seconds"])


def run_packet_ipc(path: Path, tag: str) -> float:
    a, b = f"@bench-poi-a-{os.getpid()}-{tag}", f"@bench-poi-b-{os.getpid()}-{tag}"
    source = _popen([CLI, "replay", str(path), "--name", a, "--no-progress", "--json"])
    out = _popen([CLI, "dump", a, "--listen", "127.0.0.1:0", "--json"])
    port = _port(out)
    into = _popen([CLI, "replay", f"tcp://127.0.0.1:{port}", "--name", b, "--json"], stdout=subprocess.PIPE)
    sink = _popen([CLI, "dump", b, "--json"])
    seconds = _replay_seconds(into)
    _wait_all([sink, out, source])
    return seconds


def run_tcpdump_nc(path: Path, tag: str) -> float:
    sink = _sink("listen")
    port = int(sink.stdout.readline())
    send = subprocess.Popen(f"tcpdump -r {path} -w - 2>/dev/null | nc -N 127.0.0.1 {port}", shell=True,
                            stderr=subprocess.PIPE)
    seconds = _sink_seconds(sink)
    _wait_all([send])
    return seconds


def run_out_half(path: Path, tag: str) -> float:
    a = f"@bench-poi-o-{os.getpid()}-{tag}"
    source = _popen([CLI, "replay", str(path), "--name", a, "--no-progress", "--json"])
    out = _popen([CLI, "dump", a, "--listen", "127.0.0.1:0", "--json"])
    sink = _sink("connect", str(_port(out)))
    seconds = _sink_seconds(sink)
    _wait_all([out, source])
    return seconds


def run_in_half(path: Path, tag: str) -> float:
    b = f"@bench-poi-i-{os.getpid()}-{tag}"
    into = _popen([CLI, "replay", "--listen", "127.0.0.1:0", "--name", b, "--json"], stdout=subprocess.PIPE)
    port = _port(into)
    sink = _popen([CLI, "dump", b, "--json"])
    send = subprocess.Popen(f"tcpdump -r {path} -w - 2>/dev/null | nc -N 127.0.0.1 {port}", shell=True,
                            stderr=subprocess.PIPE)
    seconds = _replay_seconds(into)
    _wait_all([sink, send])
    return seconds


RUNNERS = dict(zip(PIPELINES, (run_packet_ipc, run_tcpdump_nc, run_out_half, run_in_half)))


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="64,imix,1518")
    parser.add_argument("--packets", type=int, default=1_000_000, help="packets per file (1,000,000)")
    parser.add_argument("--max-mb", type=float, default=300, help="largest file, in MB (300)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    for tool in ("tcpdump", "nc"):
        if shutil.which(tool) is None:
            print(f"{tool} is needed (apt-get install tcpdump netcat-openbsd)", file=sys.stderr)
            return 1
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-poi-") as tmp:
        for work in build(args.workloads.split(",")):
            path = Path(tmp) / f"{work.name}.pcap"
            packets = min(args.packets, int(args.max_mb * 1e6 / (work.mean_size + 16)))
            size = write_capture(work, packets, path)
            times: dict[str, list[float]] = {name: [] for name in PIPELINES}
            for r in range(args.repeat):
                for name, run in RUNNERS.items():
                    times[name].append(run(path, f"{work.name}-{r}"))
            results[work.name] = {name: packets / statistics.median(t) for name, t in times.items()}
            results[work.name]["packets"] = packets
            results[work.name]["file_mb"] = size / 1e6
            print(f"{work.name}: " + ", ".join(f"{n} {v:,.0f}" for n, v in results[work.name].items()), file=sys.stderr)
            path.unlink()
    print(f"\npackets/s, median of {args.repeat} runs; {machine()}\n")
    print("| workload | packets | " + " | ".join(p.replace("|", "\\|") for p in PIPELINES) + " |")
    print("|---|---:|" + "---:|" * len(PIPELINES))
    for name, row in results.items():
        print(f"| {name} | {row['packets']:,} | " + " | ".join(f"{row[p]:,.0f}" for p in PIPELINES) + " |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "packets": args.packets, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
