"""One server feeding many workers: flow affinity, round robin, broadcast, drop policy, a worker dying."""

from __future__ import annotations

import os
import signal
import struct
from collections import Counter, defaultdict

import pytest

import packet_ipc as pipc
from packet_ipc.pcap import open_capture
from helpers.peers import canonical_flow, collect


def synthetic_flows(n_flows: int = 600, per_flow: int = 6) -> list[pipc.Packet]:
    """Ethernet/IPv4 TCP and UDP packets of n_flows flows, both directions interleaved."""

    def frame(src, dst, sport, dport, proto):
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8, 0, 0, 64, proto, 0, src, dst)
        return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + struct.pack("!HHHH", sport, dport, 8, 0)

    packets = []
    for i in range(per_flow):
        for f in range(n_flows):
            a, b = bytes([10, 0, f // 256, f % 256]), bytes([192, 168, (f * 7) % 256, 1])
            proto = 6 if f % 3 else 17
            fwd = i % 2 == 0
            data = frame(a, b, 1024 + f, 80, proto) if fwd else frame(b, a, 80, 1024 + f, proto)
            packets.append(pipc.Packet(len(packets), data, linktype=1))
    return packets


def capture_packets(path) -> list[pipc.Packet]:
    with open_capture(path) as reader:
        # Packet() refuses orig_len < caplen: three fuzz records of merged-ether.pcap have it
        return [pipc.Packet(i, r.data, max(r.orig_len, len(r.data)), r.linktype) for i, r in enumerate(reader)]


def run_workers(ctx, server, n, **kw):
    result_q = ctx.Queue()
    procs = [ctx.Process(target=collect, args=(server.name, result_q), kwargs=kw) for _ in range(n)]
    for p in procs:
        p.start()
    server.wait_for_clients(n, timeout=30)
    return procs, result_q


def assert_flow_affinity(packets, results, workers):
    seen_at: dict = defaultdict(set)
    all_ts = []
    for pid, got, dropped, error in results:
        assert error is None and dropped == 0
        all_ts.extend(ts for ts, _ in got)
        for ts, flow in got:
            if flow is not None:
                seen_at[flow].add(pid)
    assert sorted(all_ts) == list(range(len(packets)))  # every packet exactly once
    assert all(len(pids) == 1 for pids in seen_at.values())  # both directions of a flow: one worker
    flows_per_worker = Counter(next(iter(p)) for p in seen_at.values())
    assert len(flows_per_worker) == workers
    share = [c / len(seen_at) for c in flows_per_worker.values()]
    assert min(share) > 0.5 / workers and max(share) < 1.6 / workers, share  # near even by flows
    return seen_at


def send_all(server, packets, batch=256):
    for i in range(0, len(packets), batch):
        server.send(packets[i : i + batch], timeout=30)
    server.send(None)


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_flow_distribution_keeps_both_directions_of_each_flow_on_one_worker(ctx, workers):
    packets = synthetic_flows()
    with pipc.Server(distribution="flow") as server:
        procs, result_q = run_workers(ctx, server, workers)
        send_all(server, packets)
        results = [result_q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert_flow_affinity(packets, results, workers)


@pytest.mark.shared
def test_real_capture_with_many_flows_to_four_workers(ctx, shared_pcaps):
    packets = capture_packets(shared_pcaps / "merged-ether.pcap")
    with pipc.Server(distribution="flow") as server:
        procs, result_q = run_workers(ctx, server, 4)
        send_all(server, packets)
        results = [result_q.get(timeout=60) for _ in procs]
        stats = server.stats()
    for p in procs:
        p.join(30)
    seen = assert_flow_affinity(packets, results, 4)
    assert len(seen) > 250
    assert stats.sent_packets == len(packets) and stats.dropped_packets == 0


def test_round_robin_gives_each_batch_to_one_worker(ctx):
    packets = synthetic_flows(100, 4)
    with pipc.Server(distribution="round_robin") as server:
        procs, result_q = run_workers(ctx, server, 3)
        send_all(server, packets, batch=50)
        results = [result_q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    all_ts = sorted(ts for _, got, _, _ in results for ts, _ in got)
    assert all_ts == list(range(len(packets)))
    for _, got, _, _ in results:  # whole batches of 50, 400 / 50 = 8 batches over 3 workers
        assert len(got) in (100, 150)
        assert all(ts // 50 == got[i - i % 50][0] // 50 for i, (ts, _) in enumerate(got))


def test_broadcast_gives_every_worker_the_identical_sequence(ctx):
    packets = synthetic_flows(50, 4)
    with pipc.Server(distribution="broadcast") as server:
        procs, result_q = run_workers(ctx, server, 3)
        send_all(server, packets, batch=64)
        results = [result_q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    expected = [(p.timestamp, canonical_flow(1, p.tobytes())) for p in packets]
    assert all(got == expected for _, got, _, _ in results)


def test_stalled_worker_with_drop_policy_does_not_slow_the_others_and_drops_are_exact(ctx):
    packets = synthetic_flows(300, 20)  # 6000 packets into 16 KiB rings
    result_q = ctx.Queue()
    stall = ctx.Event()
    with pipc.Server(distribution="round_robin", capacity=1 << 14) as server:
        stalled = ctx.Process(target=collect, args=(server.name, result_q), kwargs={"overflow": "drop", "stall": stall})
        stalled.start()
        server.wait_for_clients(1, timeout=30)
        normal = [ctx.Process(target=collect, args=(server.name, result_q)) for _ in range(2)]
        for p in normal:
            p.start()
        server.wait_for_clients(3, timeout=30)
        lazy = server.connections[0]
        assert lazy.overflow == "drop"
        # the stalled worker reads nothing: the others must still get everything of theirs
        for i in range(0, len(packets), 100):
            server.send(packets[i : i + 100], timeout=30)
        lazy_stats = lazy.stats()
        assert lazy_stats.blocked_ns == 0  # the server never waited for it
        stall.set()
        server.send(None)
        results = {pid: (got, dropped, err) for pid, got, dropped, err in (result_q.get(timeout=60) for _ in range(3))}
    for p in [stalled, *normal]:
        p.join(30)
    got_lazy, dropped_lazy, err = results[stalled.pid]
    assert err is None
    share = sum(1 for k in range(0, len(packets), 100) if (k // 100) % 3 == 0) * 100
    assert dropped_lazy > 0
    assert len(got_lazy) + dropped_lazy == share == lazy_stats.packets + lazy_stats.dropped_packets
    others = sorted(ts for pid in (p.pid for p in normal) for ts, _ in results[pid][0])
    assert len(others) == len(packets) - share and len(set(others)) == len(others)


def test_killing_one_of_four_workers_keeps_the_others_flows_whole(ctx):
    packets = synthetic_flows(400, 10)
    result_q = ctx.Queue()
    started = ctx.Event()
    with pipc.Server(distribution="flow", capacity=1 << 16) as server:
        victim = ctx.Process(target=collect, args=(server.name, result_q), kwargs={"started": started})
        victim.start()
        server.wait_for_clients(1, timeout=30)
        others = [ctx.Process(target=collect, args=(server.name, result_q)) for _ in range(3)]
        for p in others:
            p.start()
        server.wait_for_clients(4, timeout=30)
        half = len(packets) // 2
        for i in range(0, half, 200):
            server.send(packets[i : i + 200], timeout=30)
        assert started.wait(30)
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(30)
        # send() notices a death by itself within 50 ms (or at once when it must wait on the dead worker);
        # asking now makes the second half go to the survivors whatever the timing
        assert [c.peer_pid for c in server.check_workers()] == [victim.pid]
        for i in range(half, len(packets), 200):
            server.send(packets[i : i + 200], timeout=30)  # must not hang on the dead worker
        server.send(None)
        results = [result_q.get(timeout=60) for _ in others]
        assert len(server.connections) == 3
    for p in others:
        p.join(30)
    flow_of = {p.timestamp: canonical_flow(1, p.tobytes()) for p in packets}
    packets_of_flow = Counter(flow_of.values())
    first_owner: dict = {}
    received: Counter = Counter()
    for pid, got, _, error in results:
        assert error is None
        for ts, flow in got:
            received[flow] += 1
            first_owner.setdefault(flow, set()).add(pid)
    all_ts = [ts for _, got, _, _ in results for ts, _ in got]
    assert len(all_ts) == len(set(all_ts))  # no duplicates
    whole = [f for f, pids in first_owner.items() if received[f] == packets_of_flow[f]]
    # flows that never touched the victim arrive whole at exactly one survivor
    assert all(len(first_owner[f]) == 1 for f in whole)
    assert len(whole) >= 0.6 * len(packets_of_flow)  # about 3/4 of the flows were the survivors'
    # the victim's flows moved to survivors: their second half still arrived
    assert sum(received.values()) >= len(packets) - half


def fragmented_flows(n_flows: int = 64) -> tuple[list[pipc.Packet], dict[int, int]]:
    """UDP flows over IPv4 and IPv6: whole packets both ways, and a datagram split in two fragments (only the
    first carries the UDP header). Returns the packets and, per timestamp, the flow number."""
    packets, flow_of = [], {}

    def add(flow, frame):
        flow_of[len(packets)] = flow
        packets.append(pipc.Packet(len(packets), frame, linktype=1))

    for f in range(n_flows):
        a4, b4 = bytes([10, 1, f // 256, f % 256]), bytes([10, 2, 0, 53])
        a6, b6 = bytes(15) + bytes([f + 1]), bytes(14) + b"\x00\x35"
        sport, dport = 20000 + f, 53
        udp = struct.pack("!HHHH", sport, dport, 8 + 16, 0) + bytes(16)
        eth4, eth6 = b"\x02" * 12 + b"\x08\x00", b"\x02" * 12 + b"\x86\xdd"

        def v4(src, dst, payload, frag=0, ident=0):
            return eth4 + struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, frag, 64, 17, 0, src, dst) + payload

        def v6(src, dst, payload, frag=None):
            if frag is None:
                return eth6 + struct.pack("!IHBB16s16s", 6 << 28, len(payload), 17, 64, src, dst) + payload
            offset_m, ident = frag
            fh = struct.pack("!BBHI", 17, 0, offset_m, ident)
            return eth6 + struct.pack("!IHBB16s16s", 6 << 28, 8 + len(payload), 44, 64, src, dst) + fh + payload

        reply = struct.pack("!HHHH", dport, sport, 8, 0)
        add(f, v4(a4, b4, udp))                                   # query, whole
        add(f, v4(b4, a4, reply + bytes(16), frag=0x2000, ident=f))  # answer, first fragment (MF, offset 0)
        add(f, v4(b4, a4, bytes(24), frag=3, ident=f))            # answer, second fragment (offset 24)
        add(f + 1000, v6(a6, b6, udp))
        add(f + 1000, v6(b6, a6, reply + bytes(16), frag=(1, 7000 + f)))  # first fragment: M set, offset 0
        add(f + 1000, v6(b6, a6, bytes(24), frag=(3 << 3, 7000 + f)))    # later fragment, offset 24
    return packets, flow_of


def test_fragments_follow_their_flow_to_its_worker(ctx):
    packets, flow_of = fragmented_flows()
    with pipc.Server(distribution="flow") as server:
        procs, result_q = run_workers(ctx, server, 4)
        send_all(server, packets, batch=64)
        results = [result_q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    worker_of_flow: dict = defaultdict(set)
    for pid, got, _, error in results:
        assert error is None
        for ts, _ in got:
            worker_of_flow[flow_of[ts]].add(pid)
    assert sum(len(got) for _, got, _, _ in results) == len(packets)
    assert all(len(pids) == 1 for pids in worker_of_flow.values())  # query, answer and its fragments together
    assert len({next(iter(p)) for p in worker_of_flow.values()}) == 4


@pytest.mark.parametrize("distribution", ["flow", "round_robin"])
def test_last_worker_dying_mid_call_raises_with_what_was_written_never_a_short_count(ctx, distribution):
    """The only worker stalls (its ring fills) and is killed while a send waits on it: the send raises
    ConnectionLostError saying how many packets it wrote, and those are exactly what its ring held (lost)."""
    import threading

    from helpers.peers import connect_and_idle, make_packets

    ready_q = ctx.Queue()
    with pipc.Server(capacity=1 << 14, distribution=distribution, stats_socket=False) as server:
        child = ctx.Process(target=connect_and_idle, args=(server.name, ready_q))
        child.start()
        server.wait_for_clients(1, timeout=30)
        assert ready_q.get(timeout=30) == child.pid
        conn = server.connections[0]
        outcome: list = []
        sender = threading.Thread(target=lambda: outcome.append(_send_catching(server, make_packets(1000, max_len=200))))
        sender.start()
        deadline = 30
        while conn.stats().ring_used_bytes < (1 << 13) and deadline > 0:  # the send is blocked on the full ring
            sender.join(0.05)
            deadline -= 0.05
        os.kill(child.pid, signal.SIGKILL)
        sender.join(30)
        child.join(30)
        assert not sender.is_alive()
        (error,) = outcome
        assert isinstance(error, pipc.ConnectionLostError), error
        assert 0 < error.sent < 1000
        assert server.stats().lost_packets == error.sent  # written to the dead worker's ring, unread: counted


def _send_catching(server, packets):
    try:
        return server.send(packets, timeout=30)
    except pipc.PacketIpcError as e:
        return e
