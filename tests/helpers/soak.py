"""Soak: one server process, client processes coming and going (clean closes, kill -9s, ends of stream)
on 4 slots, random batch sizes on both sides; checks exactly-once in-order delivery and a flat server.

Run: python tests/helpers/soak.py --seconds 600 [--clients 4] [--seed N]. Exit status 0 when every check held.

The server gives each client its own Connection and its own sequence (packet i carries the client's pid,
i, and bytes derived from i); a stream either ends after a random length or runs until the client goes.
Each client checks every packet it receives (its pid, the next sequence number, intact bytes) and
acknowledges what it has verified to the parent over its own pipe (a shared queue's lock could die with a
killed client). The parent reconciles, per client, the client's last acknowledgement with what the server
reports having written: a client that saw the end received exactly what was sent; a client that closed or
was killed acknowledged no more than was sent, and lost only what it had not acknowledged. The server's
VmRSS and fd count are sampled throughout: after a warm-up they must stay flat, and once every client has
gone the fd count must be back to where it started.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import signal
import struct
import sys
import threading
import time
from multiprocessing.connection import wait

HEAD = struct.Struct("<IQ")  # client pid, sequence number
CAPACITY = 256 << 10
SEND_TIMEOUT = 20.0  # a live client that reads nothing for this long is a failure of the soak
RSS_TOLERANCE_KIB = 16 << 10
FD_SLACK = 8


def payload(pid: int, seq: int, n: int) -> bytes:
    return HEAD.pack(pid, seq) + (seq.to_bytes(8, "little") * (n // 8 + 1))[:n]


def proc_status(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


# ---------------------------------------------------------------------------------------------------------
# server process


def server_main(ctl, seed: int) -> None:
    """Accepts clients; one thread per connection sends its own sequence. Answers the parent's 'status'."""
    import packet_ipc as pipc

    server = pipc.Server(capacity=CAPACITY)
    lock = threading.Lock()
    live: set[int] = set()
    reports: list[tuple[int, int, int, str]] = []
    ctl.send(("name", server.name))

    def feed(conn, number: int) -> None:
        pid = conn.peer_pid
        rng = random.Random(seed * 1_000_003 + number)
        length = None if rng.random() < 0.3 else rng.randrange(1, 60_000)
        seq = 0
        outcome = "lost"
        try:
            while length is None or seq < length:
                n = min(rng.randrange(1, 513), length - seq) if length is not None else rng.randrange(1, 513)
                sizes = [rng.randrange(0, 1500) for _ in range(n)]
                batch = [pipc.Packet(seq + i, payload(pid, seq + i, size)) for i, size in enumerate(sizes)]
                assert conn.send(batch, timeout=SEND_TIMEOUT) == n
                seq += n
            conn.send(None)
            outcome = "ended"
        except pipc.ConnectionLostError:
            outcome = "lost"
        except pipc.TimeoutError:
            outcome = "timeout"
        except Exception as e:  # noqa: BLE001 - reported, fails the soak
            outcome = f"error {e!r}"
        finally:
            # what the ring received, a batch cut short by the client's death included
            stats = conn.stats()
            seq, sent_bytes = stats.packets, stats.bytes
            conn.close()
            with lock:
                live.discard(number)
                reports.append((pid, seq, sent_bytes, outcome))

    number = 0
    while True:
        if ctl.poll():
            command = ctl.recv()
            if command == "stop":
                break
            with lock:
                ctl.send(("status", len(live), reports[:]))
                reports.clear()
        try:
            conn = server.accept(timeout=0.05)
        except pipc.TimeoutError:
            continue
        number += 1
        with lock:
            live.add(number)
        threading.Thread(target=feed, args=(conn, number), daemon=True).start()
    server.close()


# ---------------------------------------------------------------------------------------------------------
# client process


def client_main(name: str, pipe, seed: int, close_after: float | None) -> None:
    """Receives and verifies its stream; acknowledges verified counts; closes after `close_after` seconds."""
    import packet_ipc as pipc

    rng = random.Random(seed)
    pid = os.getpid()
    client = pipc.Client(name, timeout=30)
    pipe.send(("connected", pid))
    expected = nbytes = 0
    last_ack = time.monotonic()
    close_at = None if close_after is None else time.monotonic() + close_after
    try:
        while True:
            if close_at is not None and time.monotonic() >= close_at:
                pipe.send(("closed", expected, nbytes))
                client.close()
                return
            packets = client.receive_packets(rng.randrange(1, 1025), timeout=SEND_TIMEOUT)
            if packets is None:
                pipe.send(("ended", expected, nbytes))
                return
            for p in packets:
                data = p.data
                owner, seq = HEAD.unpack_from(data, 0)
                if owner != pid or seq != expected or p.timestamp != seq or data != payload(pid, seq, len(data) - 12):
                    pipe.send(("error", f"pid {pid}: expected #{expected}, got #{seq} of pid {owner} "
                                        f"(timestamp {p.timestamp}, {len(data)} bytes)"))
                    return
                expected += 1
                nbytes += len(data)
            del packets, p, data
            now = time.monotonic()
            if now - last_ack > 0.02:  # verified, and released: acknowledged
                pipe.send(("ack", expected, nbytes))
                last_ack = now
    except pipc.PacketIpcError as e:
        pipe.send(("error", f"pid {pid}: {e!r}"))


# ---------------------------------------------------------------------------------------------------------
# parent


class Slot:
    def __init__(self) -> None:
        self.process = None
        self.pipe = None
        self.pid = 0
        self.kill_at: float | None = None
        self.acked = self.bytes = 0
        self.final: str | None = None


def run(seconds: float, clients: int, seed: int) -> int:
    ctx = mp.get_context("spawn")
    rng = random.Random(seed)
    errors: list[str] = []
    ctl, server_end = ctx.Pipe()
    server = ctx.Process(target=server_main, args=(server_end, seed), name="soak-server")
    server.start()
    kind, name = ctl.recv()
    base_rss, base_fds = proc_status(server.pid)
    slots = [Slot() for _ in range(clients)]
    finished: dict[int, tuple[str, int, int]] = {}  # pid -> (how, acknowledged count, bytes)
    server_reports: dict[int, tuple[int, int, str]] = {}
    totals = {"connects": 0, "kills": 0, "closes": 0, "ends": 0}
    samples: list[tuple[float, int, int]] = []
    start = time.monotonic()
    end = start + seconds
    warm_up = start + min(5.0, seconds / 4)
    next_sample = start

    def spawn(slot: Slot) -> None:
        parent_end, child_end = ctx.Pipe(duplex=False)
        mode = rng.choice(["kill", "kill", "close", "run"])  # "run": until its stream ends (or the soak does)
        lifetime = rng.uniform(0.2, 3.0)
        slot.process = ctx.Process(target=client_main, args=(name, child_end, rng.randrange(1 << 30),
                                                              lifetime if mode == "close" else None))
        slot.process.start()
        child_end.close()
        slot.pipe, slot.pid, slot.acked, slot.bytes, slot.final = parent_end, 0, 0, 0, None
        slot.kill_at = time.monotonic() + lifetime if mode == "kill" else None

    def retire(slot: Slot, how: str) -> None:
        slot.process.join(30)
        if how != "killed" and slot.process.exitcode != 0:
            errors.append(f"client {slot.pid} exited with {slot.process.exitcode}")
        if slot.pid:
            finished[slot.pid] = (how, slot.acked, slot.bytes)
        slot.process.close()
        slot.pipe.close()
        slot.process = None

    def status() -> int:
        ctl.send("status")
        _, live, reports = ctl.recv()
        for pid, seq, nbytes, outcome in reports:
            server_reports[pid] = (seq, nbytes, outcome)
        return live

    for slot in slots:
        spawn(slot)
    while True:
        now = time.monotonic()
        if now >= next_sample:
            rss, fds = proc_status(server.pid)
            samples.append((now - start, rss, fds))
            next_sample = now + 0.25
            status()
        running = [s for s in slots if s.process is not None]
        if now >= end and not running:
            break
        for slot in running:
            if slot.kill_at is not None and now >= slot.kill_at or now >= end:
                os.kill(slot.process.pid, signal.SIGKILL)
                totals["kills"] += 1
                while slot.pipe.poll():  # what it acknowledged before dying
                    try:
                        message = slot.pipe.recv()
                    except EOFError:
                        break
                    if message[0] == "ack":
                        slot.acked, slot.bytes = message[1], message[2]
                    elif message[0] == "connected":
                        slot.pid = message[1]
                        totals["connects"] += 1
                if not slot.pid:
                    slot.pid = -slot.process.pid  # killed before it connected: nothing to reconcile
                retire(slot, "killed")
                if now < end:
                    spawn(slot)
        for pipe in wait([s.pipe for s in slots if s.process is not None], timeout=0.02):
            slot = next(s for s in slots if s.pipe is pipe)
            try:
                message = pipe.recv()
            except EOFError:
                errors.append(f"client {slot.pid} vanished without a word")
                retire(slot, "vanished")
                if time.monotonic() < end:
                    spawn(slot)
                continue
            what = message[0]
            if what == "connected":
                slot.pid = message[1]
                totals["connects"] += 1
            elif what == "ack":
                slot.acked, slot.bytes = message[1], message[2]
            elif what in ("closed", "ended"):
                slot.acked, slot.bytes = message[1], message[2]
                totals["closes" if what == "closed" else "ends"] += 1
                retire(slot, what)
                if time.monotonic() < end:
                    spawn(slot)
            else:
                errors.append(message[1])
                retire(slot, "error")
                if time.monotonic() < end:
                    spawn(slot)

    # every client is gone: the server must drop every connection, and be back to its starting fds
    deadline = time.monotonic() + 30
    while status() and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the server's own count, bounded
    if status():
        errors.append("the server still holds connections 30 s after every client went")
    final_rss, final_fds = proc_status(server.pid)
    ctl.send("stop")
    server.join(30)

    for pid, (how, acked, nbytes) in finished.items():
        if pid < 0:
            continue
        if pid not in server_reports:
            errors.append(f"client {pid} ({how}) has no server report")
            continue
        sent, sent_bytes, outcome = server_reports[pid]
        if outcome not in ("ended", "lost"):
            errors.append(f"server's stream to {pid}: {outcome}")
        if how == "ended" and (outcome != "ended" or (acked, nbytes) != (sent, sent_bytes)):
            errors.append(f"client {pid} saw the end after {acked} packets / {nbytes} B; server sent {sent} / "
                          f"{sent_bytes} ({outcome})")
        if acked > sent:
            errors.append(f"client {pid} acknowledged {acked} packets; the server wrote {sent}")

    after = [(t, rss, fds) for t, rss, fds in samples if t >= warm_up - start]
    warm_rss = after[0][1] if after else base_rss
    max_rss = max((rss for _, rss, _ in samples), default=base_rss)
    max_fds = max((fds for _, _, fds in samples), default=base_fds)
    if after and max(rss for _, rss, _ in after) > warm_rss + RSS_TOLERANCE_KIB:
        errors.append(f"server RSS grew: {warm_rss} KiB after warm-up, {max(r for _, r, _ in after)} KiB later")
    if max_fds > base_fds + 5 * (clients + 2) + FD_SLACK:
        errors.append(f"server fds grew: {base_fds} at start, {max_fds} at most")
    if final_fds != base_fds:
        errors.append(f"server fds not back to the start once idle: {base_fds} -> {final_fds}")

    delivered = sum(acked for pid, (_, acked, _) in finished.items() if pid > 0)
    delivered_bytes = sum(nbytes for pid, (_, _, nbytes) in finished.items() if pid > 0)
    print(f"soak: {seconds:.0f} s, {clients} client slots: packets={delivered} bytes={delivered_bytes} "
          f"connects={totals['connects']} kills={totals['kills']} closes={totals['closes']} ends={totals['ends']} "
          f"server max_rss={max_rss} KiB (start {base_rss}, after warm-up {warm_rss}, idle {final_rss}) "
          f"fds start={base_fds} max={max_fds} idle={final_fds} errors={len(errors)}", flush=True)
    for e in errors[:20]:
        print(f"soak error: {e}", file=sys.stderr)
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    print(f"soak: seed {seed}", flush=True)
    return run(args.seconds, args.clients, seed)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
