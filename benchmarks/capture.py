"""Live-capture benchmark: the same offered load on a veth pair for tcpdump and for ``packet-ipc capture``.

    sudo .venv/bin/python benchmarks/capture.py [--old-venv /path/to/old/.venv] [--json out.json]

A veth pair is made with its peer in a network namespace (``pipc14b-bench``, removed afterwards). Frames of a
real capture (../shared/data/pcaps/merged-ether.pcap, else tests/data/QinQpacket.pcap; frames above the
1500-byte MTU left out) are written into the peer by two generators: ``tcpreplay --topspeed --loop N`` and
``benchmarks/gen/pipc_gen.c`` (sendmmsg on AF_PACKET, qdisc bypassed; built here with cc), at full speed and
paced at fixed rates. Contenders, each on the same load in the same run:

- ``tcpdump -w /dev/null`` (same kernel buffer as packet-ipc: ``-B``);
- ``packet-ipc capture`` into 1 and into 2 ``packet-ipc dump`` workers (counting only);
- with ``--before-venv``: the same command of another install (e.g. the commit before a change), into 1 and
  2 workers, with the same options;
- with ``--old-venv``: the same command of an older install (the pcapy-ng path), into 1 worker;
- Suricata's own capture, if ``suricata`` is installed: ``--af-packet`` in the workers runmode, one thread
  (capture and analysis in one thread, cluster_flow, TPACKET_V3, a ring of about the same size, no rules,
  no outputs): what a Suricata without packet-ipc spends on the same load, analysis included.

Per run: offered packets/s (generator), packets that reached the interface (its rx counter), kernel drops
(libpcap's ps_drop + ps_ifdrop), packets delivered (tcpdump: written; packet-ipc: received by the workers),
and CPU seconds per million delivered packets of the capture process (the scheduler's run time of every thread, /proc/PID/task/*/schedstat,
from just before the load to after it was drained) and of the workers; with ``--syscalls``, the capture
process's system calls and context switches per thousand packets (``perf stat``). The highest paced rate with zero
drops (nothing dropped by the kernel, every generated frame delivered) is reported per contender.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NETNS, INSIDE, OUTSIDE = "pipc14b-bench", "pipc14bi", "pipc14bo"
NAME = "@pipc14b-bench"
CAPTURE_ARGS: list[str] = []  # --capture-args
PERF_EVENTS = "raw_syscalls:sys_enter,context-switches"  # --syscalls: counted on the capture process


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")
    return result


def setup_net() -> None:
    teardown_net()
    sh("ip", "netns", "add", NETNS)
    sh("ip", "link", "add", OUTSIDE, "type", "veth", "peer", "name", INSIDE)
    sh("ip", "link", "set", INSIDE, "netns", NETNS)
    for where in ([], ["-n", NETNS]):
        iface = INSIDE if where else OUTSIDE
        sh("ip", *where, "link", "set", iface, "up")
    sh("sysctl", "-qw", f"net.ipv6.conf.{OUTSIDE}.disable_ipv6=1", check=False)  # no ND chatter of our own


def teardown_net() -> None:
    sh("ip", "netns", "del", NETNS, check=False)
    sh("ip", "link", "del", OUTSIDE, check=False)


def rx_packets() -> int:
    return int(Path(f"/sys/class/net/{OUTSIDE}/statistics/rx_packets").read_text())


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of pid, in seconds, to the nanosecond (/proc/PID/task/*/schedstat: the
    scheduler's run time; utime + stime in /proc/PID/stat count 10 ms ticks, too coarse for short runs)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def mtu_frames(src: Path, dst: Path, max_bytes: int = 1514) -> int:
    """Copies src (classic pcap, little-endian) to dst without frames longer than max_bytes."""
    blob = src.read_bytes()
    out, pos, n = [blob[:24]], 24, 0
    while pos + 16 <= len(blob):
        caplen, wire = struct.unpack_from("<II", blob, pos + 8)
        if 14 <= caplen <= max_bytes and caplen == wire:
            out.append(blob[pos : pos + 16 + caplen])
            n += 1
        pos += 16 + caplen
    dst.write_bytes(b"".join(out))
    return n


# ---- contenders -------------------------------------------------------------------------------------------


class Contender:
    """Starts a capture (and its workers), and after the load returns its counters."""

    def __init__(self, label: str, bindir: Path | None, workers: int, buffer_kib: int) -> None:
        self.label, self.bindir, self.workers, self.buffer_kib = label, bindir, workers, buffer_kib
        self.procs: list[subprocess.Popen[str]] = []

    def start(self) -> None:
        cli = str(self.bindir / "packet-ipc") if self.bindir else ""
        if self.label.startswith("suricata"):
            self.start_suricata()
            return
        if self.bindir is None:  # tcpdump
            self.main = subprocess.Popen(["tcpdump", "-i", OUTSIDE, "-w", "/dev/null", "-n", "-s", "262144",
                                          "-B", str(self.buffer_kib)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True)
            assert self.main.stderr is not None
            self.main.stderr.readline()  # "listening on ..."
            self.procs = [self.main]
            return
        extra = ["-B", str(self.buffer_kib), *CAPTURE_ARGS] if "old" not in self.label else []
        self.main = subprocess.Popen([cli, "capture", "-i", OUTSIDE, "--workers", str(self.workers), "--json",
                                      "--name", NAME, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        assert self.main.stderr is not None
        line = self.main.stderr.readline()
        if "capturing on" not in line:
            raise RuntimeError(f"{self.label}: {line}{self.main.stderr.read()}")
        self.dumps = [subprocess.Popen([cli, "dump", NAME, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True) for _ in range(self.workers)]
        self.main.stderr.readline()  # "capturing (Ctrl-C ...)": the workers are connected
        self.procs = [self.main, *self.dumps]

    def start_suricata(self) -> None:
        self.logdir = Path(tempfile.mkdtemp(prefix="pipc14b-suricata-"))
        frames = max(64, self.buffer_kib * 1024 // 2048)  # ~1.6 KiB frames at MTU 1500: about the same ring
        (self.logdir / "suricata.yaml").write_text(
            "%YAML 1.1\n---\n"
            f"default-log-dir: {self.logdir}\n"
            "logging:\n  default-log-level: perf\n  outputs:\n    - console:\n        enabled: yes\n"
            "outputs: []\n"
            f"af-packet:\n  - interface: {OUTSIDE}\n    threads: 1\n    cluster-id: 99\n"
            "    cluster-type: cluster_flow\n    defrag: yes\n    use-mmap: yes\n    tpacket-v3: yes\n"
            f"    ring-size: {frames}\n    block-size: 262144\n")
        self.main = subprocess.Popen(["suricata", "-c", str(self.logdir / "suricata.yaml"), f"--af-packet={OUTSIDE}",
                                      "-S", "/dev/null", "--runmode", "workers", "-l", str(self.logdir)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.main.stdout is not None
        self.log: list[str] = []
        for line in self.main.stdout:
            self.log.append(line)
            if "Engine started" in line:
                break
        else:
            raise RuntimeError(f"{self.label}: did not start:\n{''.join(self.log)}")
        self.procs = [self.main]

    def cpu(self) -> tuple[float, float]:
        workers = sum(cpu_seconds(p.pid) for p in self.procs[1:])
        return cpu_seconds(self.main.pid), workers

    def stop(self, gen: Path, frames: Path) -> dict[str, int]:
        """Stops everything; returns received, dropped (kernel + interface) and delivered."""
        if self.label.startswith("suricata"):
            self.main.send_signal(signal.SIGINT)
            out, _ = self.main.communicate(timeout=60)
            shutil.rmtree(self.logdir, ignore_errors=True)
            m = re.search(rf"device: {OUTSIDE}: packets: (\d+), drops: (\d+)", out)
            if not m:
                raise RuntimeError(f"{self.label}: no packet counts in its log:\n{''.join(self.log)}{out}")
            packets, drops = int(m.group(1)), int(m.group(2))  # packets: the kernel's, drops included
            return {"received": packets, "dropped": drops, "delivered": packets - drops}
        self.main.send_signal(signal.SIGINT)
        try:
            out, err = self.main.communicate(timeout=3)
        except subprocess.TimeoutExpired:
            # The pcapy-ng path sits in a blocking pcap_dispatch that restarts after EINTR and, with TPACKET_V3,
            # returns only once a packet arrives: one more frame lets it see Ctrl-C (and is counted).
            generate("pipc_gen", frames, gen, 1, count=1)
            out, err = self.main.communicate(timeout=60)
        if self.bindir is None:
            grab = {k: int(m.group(1)) for k in ("captured", "received by filter", "dropped by kernel")
                    if (m := re.search(rf"(\d+) packets? {k}", err))}
            return {"received": grab["received by filter"], "dropped": grab["dropped by kernel"],
                    "delivered": grab["captured"]}
        delivered = 0
        for d in self.dumps:
            dout, derr = d.communicate(timeout=60)
            delivered += json.loads(dout)["packets"] if dout.strip() else 0
        summary = json.loads(out)
        if "interfaces" in summary:
            received = sum(i["received"] for i in summary["interfaces"])
            dropped = sum(i["dropped"] + i["if_dropped"] for i in summary["interfaces"])
        else:  # the old command printed "kernel: received R, dropped D, interface dropped I" on stderr
            m = re.search(r"kernel: received (\d+), dropped (\d+), interface dropped (\d+)", err)
            assert m, err
            received, dropped = int(m.group(1)), int(m.group(2)) + int(m.group(3))
        return {"received": received, "dropped": dropped, "delivered": delivered}

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


# ---- generators -----------------------------------------------------------------------------------------


def generate(kind: str, frames: Path, gen: Path, loop: int, rate: int = 0, count: int = 0) -> dict[str, float]:
    """Runs one generator in the namespace; returns sent and offered pps."""
    if kind == "tcpreplay":
        r = sh("ip", "netns", "exec", NETNS, "tcpreplay", "-i", INSIDE, "--topspeed", "--no-flow-stats",
               f"--loop={loop}", str(frames))
        sent = int(re.search(r"Actual: (\d+) packets", r.stdout)[1])  # type: ignore[index]
        seconds = float(re.search(r"sent in ([\d.]+) seconds", r.stdout)[1])  # type: ignore[index]
        return {"sent": sent, "pps": sent / seconds if seconds else 0.0}
    args = ["ip", "netns", "exec", NETNS, str(gen), INSIDE, str(frames), "--loop", str(loop)]
    if rate:
        args += ["--rate", str(rate)]
    if count:
        args += ["--count", str(count)]
    out = json.loads(sh(*args).stdout)
    return {"sent": out["sent"], "pps": out["pps"]}


def perf_counts(perf: subprocess.Popen[str]) -> dict[str, int]:
    """Stops a ``perf stat -x,`` started by run_one; returns its counts by event name."""
    perf.send_signal(signal.SIGINT)
    _, err = perf.communicate(timeout=30)
    counts = {}
    for line in err.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0].strip().isdigit():
            counts[fields[2]] = int(fields[0])
    return counts


def run_one(c: Contender, kind: str, frames: Path, gen: Path, loop: int, rate: int = 0,
            syscalls: bool = False) -> dict[str, Any]:
    c.start()
    perf = None
    try:
        time.sleep(0.3)
        if syscalls:  # the capture process's system calls and context switches over the load (not its workers')
            perf = subprocess.Popen(["perf", "stat", "-x,", "-e", PERF_EVENTS, "-p", str(c.main.pid)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            time.sleep(0.2)
        rx0 = rx_packets()
        cpu0 = c.cpu()
        offered = generate(kind, frames, gen, loop, rate)
        time.sleep(1.5)  # tcpdump's kernel blocks are handed over after up to 1 s; let everything drain
        cpu1 = c.cpu()
        arrived = rx_packets() - rx0
        events = perf_counts(perf) if perf else {}
        counters = c.stop(gen, frames)
    finally:
        if perf and perf.poll() is None:
            perf.kill()
            perf.communicate()
        c.kill()
    delivered = counters["delivered"]
    per_m = 1e6 / delivered if delivered else 0.0
    return {
        "contender": c.label, "generator": kind if not rate else f"pipc_gen {rate:,}/s", "rate": rate,
        "offered_pps": round(offered["pps"]), "sent": offered["sent"], "arrived": arrived, **counters,
        "cpu_s_per_M": round((cpu1[0] - cpu0[0]) * per_m, 3), "worker_cpu_s_per_M": round((cpu1[1] - cpu0[1]) * per_m, 3),
        # zero drops: nothing dropped by the kernel and every generated frame delivered (stray frames of the
        # link itself, e.g. from the namespace, may add a few)
        "zero_drop": counters["dropped"] == 0 and delivered >= offered["sent"],
        **({"syscalls_per_1k": round(events.get("raw_syscalls:sys_enter", 0) * 1000 * per_m / 1e6, 2),
            "switches_per_1k": round(events.get("context-switches", 0) * 1000 * per_m / 1e6, 2)} if syscalls else {}),
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| contender | generator | offered pkt/s | reached the interface | kernel drops | delivered to the "
            "worker | capture CPU s / M pkt | x tcpdump's | workers' CPU s / M pkt |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|")
    tcpdump = {r["generator"]: r["cpu_s_per_M"] for r in rows if r["contender"].startswith("tcpdump")}
    counted = any("syscalls_per_1k" in r for r in rows)
    if counted:
        head = head.replace(" |\n|", " | capture's system calls / 1k pkt | its context switches / 1k pkt |\n|")
        head += "---:|---:|"
    lines = [head]
    for r in rows:
        base = tcpdump.get(r["generator"])
        ratio = f"{r['cpu_s_per_M'] / base:.1f}x" if base else "-"
        lines.append(f"| {r['contender']} | {r['generator']} | {r['offered_pps']:,} | {r['arrived']:,} | "
                     f"{r['dropped']:,} | {r['delivered']:,} | {r['cpu_s_per_M']:.3f} | {ratio} | "
                     f"{r['worker_cpu_s_per_M']:.3f} |"
                     + (f" {r['syscalls_per_1k']:.1f} | {r['switches_per_1k']:.1f} |" if counted else ""))
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before-venv", type=Path, default=None,
                   help="a venv with another packet-ipc (e.g. before a change): its capture into 1 and 2 workers too")
    p.add_argument("--old-venv", type=Path, default=None, help="a venv with the previous packet-ipc (pcapy-ng path)")
    p.add_argument("--buffer-kib", type=int, default=8192, help="kernel buffer for tcpdump -B and capture -B (8192)")
    p.add_argument("--rates", default="50000,100000,200000,300000,400000,600000", help="paced rates to sweep")
    p.add_argument("--packets", type=int, default=300_000, help="packets per paced run (300000)")
    p.add_argument("--json", type=Path, default=None, help="write every row as JSON here")
    p.add_argument("--capture-args", default="", help="more arguments for packet-ipc capture (e.g. '--batch 1024')")
    p.add_argument("--only", default=None, help="run only contenders whose label contains this")
    p.add_argument("--syscalls", action="store_true",
                   help="also count the capture process's system calls and context switches (perf stat)")
    args = p.parse_args()
    if args.syscalls and shutil.which("perf") is None:
        sys.exit("--syscalls needs perf (Debian: linux-perf)")
    if os.geteuid() != 0 or shutil.which("tcpdump") is None or shutil.which("tcpreplay") is None:
        sys.exit("needs root, tcpdump and tcpreplay")
    source = REPO.parent / "shared" / "data" / "pcaps" / "merged-ether.pcap"
    if not source.exists():
        source = REPO / "tests" / "data" / "QinQpacket.pcap"
    tmp = Path(tempfile.mkdtemp(prefix="pipc14b-bench-"))
    frames = tmp / "frames.pcap"
    per_loop = mtu_frames(source, frames)
    gen = tmp / "pipc_gen"
    sh("cc", "-O2", "-o", str(gen), str(REPO / "benchmarks" / "gen" / "pipc_gen.c"))
    here = Path(sys.executable).parent
    contenders = [Contender("tcpdump -w /dev/null", None, 0, args.buffer_kib),
                  Contender("packet-ipc capture, 1 worker", here, 1, args.buffer_kib),
                  Contender("packet-ipc capture, 2 workers", here, 2, args.buffer_kib)]
    if args.before_venv:
        contenders += [Contender("before: packet-ipc capture, 1 worker", args.before_venv / "bin", 1, args.buffer_kib),
                       Contender("before: packet-ipc capture, 2 workers", args.before_venv / "bin", 2, args.buffer_kib)]
    if args.old_venv:
        contenders.append(Contender("old pcapy-ng capture, 1 worker", args.old_venv / "bin", 1, args.buffer_kib))
    if shutil.which("suricata"):
        contenders.append(Contender("suricata --af-packet, 1 thread (analysis included)", None, 0, args.buffer_kib))
    else:
        print("suricata is not installed: its af-packet row is left out", file=sys.stderr)
    CAPTURE_ARGS.extend(args.capture_args.split())
    if args.only:
        contenders = [c for c in contenders if args.only in c.label]
    rows: list[dict[str, Any]] = []
    print(f"frames: {source.name}, {per_loop} per loop (MTU 1500); cpus: {os.cpu_count()}", file=sys.stderr)
    setup_net()
    try:
        for c in contenders:
            for kind, loop in (("tcpreplay", max(1, 270_000 // per_loop)), ("pipc_gen", max(1, 1_000_000 // per_loop))):
                rows.append(run_one(c, kind, frames, gen, loop, syscalls=args.syscalls))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            for rate in (int(r) for r in args.rates.split(",")):
                rows.append(run_one(c, "pipc_gen", frames, gen, max(1, args.packets // per_loop), rate,
                                    syscalls=args.syscalls))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        teardown_net()
        shutil.rmtree(tmp, ignore_errors=True)
    print(table(rows))
    print()
    print("| contender | highest paced rate with zero drops |\n|---|---:|")
    for c in contenders:
        ok = [r["offered_pps"] for r in rows if r["contender"] == c.label and r["rate"] and r["zero_drop"]]
        print(f"| {c.label} | {max(ok):,} pkt/s |" if ok else f"| {c.label} | none of the rates |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
