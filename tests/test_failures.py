"""Peer death, hostile or confused peers, bad input, and leaks: each a typed error, never a hang or a crash."""

from __future__ import annotations

import errno
import gc
import mmap
import os
import signal
import socket
import struct
import threading

import pytest

import packet_ipc as pipc
from conftest import open_fds
from helpers.peers import connect_and_idle, connected_pair, make_packets, serve_then_hang

HELLO = struct.Struct("<QIII12x")
WELCOME = struct.Struct("<QIi240s")
HELLO_MAGIC = 0x4F4C454843504950
WELCOME_MAGIC = 0x434C455743504950


def test_client_drains_then_raises_connection_lost_when_server_killed(ctx):
    name_q, done_q = ctx.Queue(), ctx.Queue()
    server = ctx.Process(target=serve_then_hang, args=(name_q, done_q, 1000))
    server.start()
    client = pipc.Client(name_q.get(timeout=30), timeout=30)
    assert done_q.get(timeout=30) == 1000  # committed before the kill
    os.kill(server.pid, signal.SIGKILL)
    server.join(30)
    got = []
    with pytest.raises(pipc.ConnectionLostError):
        while True:  # timeout=2: detection must come well before it (a TimeoutError would fail the test)
            got.extend(p.timestamp for p in client.receive_packets(300, timeout=2))
    assert got == [p.timestamp for p in make_packets(1000)]
    with pytest.raises(pipc.ConnectionLostError):  # and it stays lost
        client.receive_packets(1, timeout=2)
    client.close()


def test_send_raises_connection_lost_when_client_killed_while_ring_full(ctx):
    ready_q = ctx.Queue()
    with pipc.Server(capacity=1 << 14) as server:
        child = ctx.Process(target=connect_and_idle, args=(server.name, ready_q))
        child.start()
        conn = server.accept(timeout=30)
        assert ready_q.get(timeout=30) == child.pid == conn.peer_pid
        with pytest.raises(TimeoutError) as full:
            conn.send(make_packets(200), timeout=0.2)  # the client never reads: the ring fills
        assert 0 < full.value.sent < 200
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
        with pytest.raises(pipc.ConnectionLostError):
            conn.send(make_packets(200), timeout=2)  # not a TimeoutError: death is seen at once
        assert not conn.alive
        conn.close()


def test_garbage_in_the_ring_header_is_a_protocol_error_not_a_crash():
    with pipc.Server() as server:
        conn, client = connected_pair(server)
        conn.send([pipc.Packet(1, b"ok")])
        assert client.receive_packets(1, timeout=5)[0].tobytes() == b"ok"
        fd = os.open(f"/proc/self/fd/{client._c.fds()[2]}", os.O_RDWR)
        with mmap.mmap(fd, 4096) as m:
            struct.pack_into("<Q", m, 64, 0xFFFF_FFFF_FFFF_0000)  # write_slot: absurd
        os.close(fd)
        with pytest.raises(pipc.ProtocolError):
            client.receive_packets(10, timeout=1)
        with pytest.raises(pipc.ProtocolError):  # sticky: the connection is unusable
            client.receive_packets(10, timeout=1)
        client.close()


@pytest.mark.parametrize(
    "field,value",
    [(8, 1 << 40), (16, 1 << 31), (30, 7)],  # payload_pos elsewhere, caplen beyond the ring, reserved flags
    ids=["payload_pos", "caplen", "flags"],
)
def test_corrupt_descriptor_is_a_protocol_error(field, value):
    with pipc.Server(capacity=1 << 16) as server:
        conn, client = connected_pair(server)
        fd = os.open(f"/proc/self/fd/{client._c.fds()[2]}", os.O_RDWR)
        with mmap.mmap(fd, 8192) as m:
            conn.send([pipc.Packet(1, b"x" * 100), pipc.Packet(2, b"y" * 100)])
            fmt = {8: "<Q", 16: "<I", 30: "<H"}[field]
            struct.pack_into(fmt, m, 4096 + 32 + field, value)  # second descriptor
        os.close(fd)
        with pytest.raises(pipc.ProtocolError):
            while True:
                client.receive_packets(10, timeout=1)
        client.close()


def test_client_of_the_wrong_wire_version_is_refused_and_server_keeps_serving():
    with pipc.Server() as server:
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        raw.connect(server.name)
        raw.send(HELLO.pack(HELLO_MAGIC, 99, 1, 0))
        with pytest.raises(pipc.ProtocolError, match="wire version 99"):
            server.accept(timeout=5)
        magic, version, status, message = WELCOME.unpack(raw.recv(1024))
        assert (magic, status) == (WELCOME_MAGIC, -errno.EPROTO)
        assert b"unsupported wire version 99" in message
        raw.close()
        conn, client = connected_pair(server)  # the server still works
        conn.send([pipc.Packet(1, b"a")])
        assert client.receive_packets(1, timeout=5)[0].tobytes() == b"a"


def test_something_that_is_not_a_client_is_refused():
    with pipc.Server() as server:
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        raw.connect(server.name)
        raw.send(b"GET / HTTP/1.0\r\n\r\n")
        with pytest.raises(pipc.ProtocolError, match="not a packet-ipc HELLO"):
            server.accept(timeout=5)
        raw.close()


@pytest.mark.parametrize("reply", ["wrong_version", "garbage", "hang_up"])
def test_client_refuses_a_server_that_does_not_speak_packet_ipc(tmp_path, reply):
    path = str(tmp_path / "fake")
    fake = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fake.bind(path)
    fake.listen()

    def serve():
        s, _ = fake.accept()
        s.recv(64)
        if reply == "wrong_version":
            s.send(WELCOME.pack(WELCOME_MAGIC, 99, 0, b""))
        elif reply == "garbage":
            s.send(b"\x00" * 17)
        s.close()

    t = threading.Thread(target=serve)
    t.start()
    expected = pipc.ConnectError if reply == "hang_up" else pipc.ProtocolError
    with pytest.raises(expected):
        pipc.Client(path, timeout=5)
    t.join()
    fake.close()


def test_name_that_does_not_exist_is_a_connect_error(tmp_path):
    with pytest.raises(pipc.ConnectError) as info:
        pipc.Client(str(tmp_path / "nobody-here"), timeout=1)
    assert info.value.errno == errno.ENOENT
    with pytest.raises(ValueError, match="too long"):
        pipc.Client("/tmp/" + "x" * 200)
    with pytest.raises(ValueError, match="too long"):
        pipc.Server("/tmp/" + "x" * 200)


@pytest.mark.parametrize(
    "bad,exc",
    [
        (object(), TypeError),
        (type("NoData", (), {"timestamp": 1})(), TypeError),
        (type("FloatTs", (), {"timestamp": 1.5, "data": b"x"})(), TypeError),
        (type("NotBuffer", (), {"timestamp": 1, "data": "text"})(), TypeError),
        (type("Negative", (), {"timestamp": -1, "data": b"x"})(), ValueError),
    ],
    ids=["no-attributes", "no-data", "float-timestamp", "str-data", "negative-timestamp"],
)
def test_sending_malformed_packet_objects_is_a_typed_error_and_nothing_is_sent(bad, exc):
    with pipc.Server() as server:
        conn, client = connected_pair(server)
        with pytest.raises(exc):
            conn.send([pipc.Packet(1, b"first"), bad])
        with pytest.raises(TypeError):
            conn.send(42)  # not a sequence
        conn.send([pipc.Packet(2, b"after")])
        got = client.receive_packets(10, timeout=5)
        assert [(p.timestamp, p.tobytes()) for p in got] == [(2, b"after")]


def test_plain_objects_with_timestamp_and_data_are_packets():
    class Mine:
        def __init__(self, ts, data, orig_len=None):
            self.timestamp, self.data = ts, data
            if orig_len is not None:
                self.orig_len = orig_len

    with pipc.Server() as server:
        conn, client = connected_pair(server)
        conn.send([Mine(1, b"abc"), Mine(2, bytearray(b"de"), 1500), Mine(3, memoryview(b"xyz")[1:])])
        got = client.receive_packets(10, timeout=5)
        assert [(p.timestamp, p.tobytes(), p.orig_len) for p in got] == [
            (1, b"abc", 3),
            (2, b"de", 1500),
            (3, b"yz", 2),
        ]


def test_send_after_end_of_stream_and_use_after_close_are_closed_errors():
    with pipc.Server() as server:
        conn, client = connected_pair(server)
        conn.send(None)
        with pytest.raises(pipc.ClosedError):
            conn.send([pipc.Packet(1, b"late")])
        conn.close()
        with pytest.raises(pipc.ClosedError):
            conn.send([pipc.Packet(1, b"late")])
        assert client.receive_packets(1, timeout=5) is None
        client.close()
        with pytest.raises(pipc.ClosedError):
            client.receive_packets(1, timeout=1)
    with pytest.raises(pipc.ClosedError):
        server.accept(timeout=0)


def ring_mappings() -> int:
    with open("/proc/self/maps") as f:
        return sum("packet-ipc-ring" in line for line in f)


def test_no_fd_mapping_or_file_leaks_after_200_cycles(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the servers' private directories go here, and only ours
    gc.collect()  # objects of earlier tests may still hold fds; let them go first
    before_fds, before_maps = open_fds(), ring_mappings()
    for i in range(200):
        with pipc.Server(capacity=1 << 14) as server:
            conn, client = connected_pair(server)
            conn.send([pipc.Packet(i, b"p" * 100)])
            packets = client.receive_packets(1, timeout=5)
            assert packets[0].timestamp == i
            del packets
            conn.close()
            client.close()
        del conn, client
    gc.collect()
    assert open_fds() - before_fds == set()  # nothing new is open (earlier tests' fds may have closed)
    assert list(tmp_path.iterdir()) == []  # every private directory and socket removed
    assert ring_mappings() <= before_maps


def test_received_data_outlives_client_close_without_use_after_free():
    with pipc.Server() as server:
        conn, client = connected_pair(server)
        conn.send([pipc.Packet(1, b"still here")])
        packet = client.receive_packets(1, timeout=5)[0]
        view = packet.data
        client.close()
        del client  # the mapping stays until the last view is gone
        assert bytes(view) == b"still here"
        del packet
        assert bytes(view) == b"still here"


def test_optional_attributes_are_read_per_object_and_per_slots_type():
    from dataclasses import dataclass

    @dataclass(slots=True)
    class Slotted:
        timestamp: int
        data: bytes
        orig_len: int
        linktype: int
        ifindex: int

    class Loose:
        def __init__(self, ts, data, **extra):
            self.timestamp, self.data = ts, data
            self.__dict__.update(extra)

    with pipc.Server(linktype=1) as server:
        conn, client = connected_pair(server)
        conn.send([Slotted(1, b"a", 60, 0, 3), Slotted(2, b"b", 61, 113, 4)])
        conn.send([Loose(3, b"c"), Loose(4, b"d", orig_len=99, linktype=0, ifindex=7), Loose(5, b"e")])
        got = []
        while len(got) < 5:
            got += client.receive_packets(10, timeout=5)
        assert [(p.timestamp, p.orig_len, p.linktype, p.ifindex) for p in got] == [
            (1, 60, 0, 3),  # linktype 0 is LINKTYPE_NULL, not "unset"
            (2, 61, 113, 4),
            (3, 1, 1, 0),  # no linktype: the server's
            (4, 99, 0, 7),
            (5, 1, 1, 0),
        ]


def test_aborted_stream_is_drained_then_lost_never_a_clean_end():
    with pipc.Server() as server:
        conn, client = connected_pair(server)
        conn.send([pipc.Packet(i, b"x" * i) for i in range(10)])
        conn.abort()
        with pytest.raises(pipc.ClosedError):
            conn.send([pipc.Packet(1, b"late")])
        got = []
        with pytest.raises(pipc.ConnectionLostError, match="aborted"):
            while True:
                got += [p.timestamp for p in client.receive_packets(4, timeout=5)]
        assert got == list(range(10))
        conn.close()  # closing after an abort does not turn it into a clean end
        with pytest.raises(pipc.ConnectionLostError):
            client.receive_packets(1, timeout=1)
