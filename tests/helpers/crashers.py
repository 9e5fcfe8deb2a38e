"""Child-process functions of the reliability tests (hostile, crashing, stopped and starved peers), and the
accounting helpers that prove the surviving process leaked nothing.

Every function here runs in a *spawned* child (``multiprocessing.get_context("spawn")``), so the child
inherits no socket or ring of the test process, as a real peer would. Children report through queues or
pipes; the tests synchronise on those reports, never on sleeps.
"""

from __future__ import annotations

import ctypes
import faulthandler
import gc
import json
import mmap
import os
import random
import resource
import select
import signal
import struct
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import packet_ipc as pipc
from helpers.peers import make_packets

CORPUS = Path(__file__).resolve().parents[1] / "fuzz_corpus"  # tests/fuzz_corpus

# Ring layout (csrc/ring.h): the header page, then the descriptors, then the payload.
HEADER_BYTES = 4096
PRODUCER_LINE = (64, 128)  # write_slot u64 | dropped_packets u64 | dropped_bytes u64 | state u32 | producer_waiting u32
CONSUMER_LINE = (128, 192)  # read_slot u64 | read_payload u64 | consumer_waiting u32
DESC = struct.Struct("<QQIIIHH")  # ts_ns, payload_pos, caplen, origlen, ifindex, linktype, flags
PRODUCER_FIELDS = {"write_slot": (64, "<Q"), "dropped_packets": (72, "<Q"), "dropped_bytes": (80, "<Q"),
                   "state": (88, "<I"), "producer_waiting": (92, "<I")}
CONSUMER_FIELDS = {"read_slot": (128, "<Q"), "read_payload": (136, "<Q"), "consumer_waiting": (144, "<I")}
DESC_FIELDS = {"ts_ns": (0, "<Q"), "payload_pos": (8, "<Q"), "caplen": (16, "<I"), "origlen": (20, "<I"),
               "ifindex": (24, "<I"), "linktype": (28, "<H"), "flags": (30, "<H")}


# ---------------------------------------------------------------------------------------------------------
# accounting (used in the surviving process)


def fd_table() -> dict[int, str]:
    """Open fds of this process and what they point at (for readable leak reports)."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:  # the fd listdir itself used
            pass
    return out


def ring_mappings(pid: int | str = "self") -> int:
    """Mappings of ring memfds (each ring is mapped as two ranges: file, then the payload mirror)."""
    with open(f"/proc/{pid}/maps") as f:
        return sum("packet-ipc-ring" in line for line in f)


def snapshot() -> tuple[dict[int, str], int]:
    gc.collect()  # objects of earlier tests still waiting for collection would hold rings
    return fd_table(), ring_mappings()


def assert_nothing_leaked(before: tuple[dict[int, str], int]) -> None:
    fds, maps = snapshot()
    new = {fd: target for fd, target in fds.items() if fd not in before[0]}
    assert not new, f"fds leaked: {new}"
    assert maps == before[1], f"ring mappings: {before[1]} before, {maps} after"


def remove_stale_endpoint(name: str) -> None:
    """After a server's kill -9: removes what it left (its socket files and private directory), as a
    supervisor would before restarting it."""
    directory = os.path.dirname(name)
    if name.startswith("@") or not os.path.basename(directory).startswith("packet-ipc-"):
        return
    for entry in os.listdir(directory):
        os.unlink(os.path.join(directory, entry))
    os.rmdir(directory)


def proc_status(pid: int) -> tuple[int, int]:
    """(VmRSS in KiB, open fds) of a process."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


# ---------------------------------------------------------------------------------------------------------
# access control


def connect_as(name: str, uid: int, gid: int, result_q: Any) -> None:
    """Drops to uid/gid (the child runs as root), connects, and reports what happened (and one packet)."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    try:
        with pipc.Client(name, timeout=10) as client:
            packets = client.receive_packets(1, timeout=10)
            result_q.put(("ok", packets[0].tobytes() if packets else None, 0, ""))
    except Exception as e:  # noqa: BLE001 - reported to the test, which asserts on the class
        result_q.put((type(e).__name__, isinstance(e, PermissionError), getattr(e, "errno", None), str(e)))


# ---------------------------------------------------------------------------------------------------------
# crashing and stopped peers


def serve_until_a_client_waits(name_q: Any, waiting_q: Any, name: str | None = None) -> None:
    """Server that never accepts: reports when a client is queued on its socket, then waits to be killed."""
    server = pipc.Server(name, capacity=1 << 16)
    name_q.put(server.name)
    select.select([server.fileno()], [], [], 30)
    waiting_q.put(True)
    signal.pause()


def serve_blocked_send(name_q: Any, count: int) -> None:
    """Server that sends `count` packets into a small ring with no timeout: blocks until killed."""
    server = pipc.Server(capacity=1 << 14, max_packets=64)
    name_q.put(server.name)
    conn = server.accept(timeout=30)
    conn.send(make_packets(count, 5, max_len=600))
    signal.pause()


def serve_then_end_and_hang(name_q: Any, done_q: Any, count: int) -> None:
    """Server that sends `count` packets and ends the stream, reports it, then waits to be killed."""
    server = pipc.Server(capacity=4 << 20)  # the whole stream fits: the client drains only after the kill
    name_q.put(server.name)
    conn = server.accept(timeout=30)
    pipc.transfer_ipc(make_packets(count, 9), conn, batch_size=97)
    done_q.put(count)
    signal.pause()


def serve_in_two_halves(name_q: Any, half_q: Any, go_q: Any, count: int) -> None:
    """Server: first half, report, wait for a word on `go_q` (the test stops us meanwhile), second half, end of
    stream. (A queue, not an Event: Event.set() waits for the waiter to wake, and a stopped waiter cannot.)"""
    packets = make_packets(count, 3)
    with pipc.Server(capacity=1 << 20) as server:
        name_q.put(server.name)
        conn = server.accept(timeout=30)
        conn.send(packets[: count // 2])
        half_q.put(count // 2)
        go_q.get(timeout=30)
        pipc.transfer_ipc(packets[count // 2 :], conn)
        conn.close()


def connect_raw_and_idle(name: str, ready_q: Any) -> None:
    """Half a client: connects the socket but never says HELLO; waits to be killed."""
    import socket

    raw = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    raw.connect(name)
    ready_q.put(os.getpid())
    signal.pause()


def connect_and_report(name: str, result_q: Any, timeout: float = 30) -> None:
    """Client: connects, reports its pid, receives until end of stream, reports the count."""
    try:
        with pipc.Client(name, timeout=timeout) as client:
            result_q.put(("connected", os.getpid()))
            n = 0
            while (packets := client.receive_packets(1024, timeout=timeout)) is not None:
                n += len(packets)
            result_q.put(("done", n))
    except Exception as e:  # noqa: BLE001
        result_q.put((type(e).__name__, getattr(e, "errno", None), str(e)))


# ---------------------------------------------------------------------------------------------------------
# resource limits


def hold_many_clients(name: str, count: int, result_q: Any) -> None:
    """Opens `count` Client objects at once, then reads every stream to its end; reports what each received."""
    clients = [pipc.Client(name, timeout=60) for _ in range(count)]
    result_q.put(("connected", os.getpid(), count))
    received = []
    for client in clients:
        got = []
        while (packets := client.receive_packets(64, timeout=60)) is not None:
            got.extend(p.tobytes() for p in packets)
        received.append(got)
    for client in clients:
        client.close()
    result_q.put(("done", os.getpid(), received))


def _starve_fds(spare: int) -> list[int]:
    """Caps RLIMIT_NOFILE and fills every free slot below it with /dev/null, then frees exactly `spare` of
    them (filling, rather than counting holes, is exact whatever the runtime opens meanwhile)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(fd_table()) + 16, hard))
    filler = []
    while True:
        try:
            filler.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            break
    for _ in range(spare):
        os.close(filler.pop())
    return filler


def serve_under_limit(kind: str, spare: int, name_q: Any, report_q: Any, cmd_q: Any) -> None:
    """Server that accepts one client, then starves itself (RLIMIT_AS or RLIMIT_NOFILE) and tries to accept
    another: reports the error, shows the first client is still served and no fd leaked, then recovers.

    kind "nofile": only `spare` more fds may be opened (0: accept4 itself fails; 1: the ring's memfd; 2, 3:
    the eventfds). kind "as": the address space is capped just above what we use, below one more ring.
    """
    capacity = 1 << 20 if kind == "nofile" else 64 << 20
    server = pipc.Server(capacity=capacity)
    name_q.put(server.name)
    first = server.accept(timeout=30)
    first.send(make_packets(10, 1))
    report_q.put(("first", first.peer_pid))
    assert cmd_q.get(timeout=30) == "second-is-waiting"
    select.select([server.fileno()], [], [], 30)  # the second client is queued on the listening socket
    fds_before = set(fd_table())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE if kind == "nofile" else resource.RLIMIT_AS)
    filler: list[int] = []
    if kind == "nofile":
        filler = _starve_fds(spare)
    else:
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + (48 << 20), hard))  # < one more 64 MiB ring, mirrored
    try:
        server.accept(timeout=10)
        error: tuple = ("accepted",)
    except Exception as e:  # noqa: BLE001 - reported to the test, which asserts on the class
        error = (type(e).__name__, getattr(e, "errno", None), str(e))
    # the first client is still served, under the limit
    first.send(make_packets(10, 2))
    for fd in filler:
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE if kind == "nofile" else resource.RLIMIT_AS, (soft, hard))
    leaked = sorted(set(fd_table()) - fds_before)  # (listing /proc/self/fd needs an fd: after the limit)
    report_q.put(("starved", error, leaked))
    first.send(None)
    first.close()
    # with the limit lifted, the server accepts again (the client refused meanwhile retries; one whose
    # connection was never accepted is still queued and is accepted now)
    second = server.accept(timeout=30)
    second.send(make_packets(10, 3))
    second.send(None)
    report_q.put(("recovered", second.peer_pid))
    second.close()
    server.close()


# ---------------------------------------------------------------------------------------------------------
# fuzzing: hostile writes into shared memory


class _PyBuffer(ctypes.Structure):
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]


def buffer_span(obj: Any) -> tuple[int, int]:
    """(address, length) of an object's buffer: where a received packet's bytes really are."""
    view = _PyBuffer()
    if _get_buffer(obj, ctypes.byref(view), 0) != 0:
        raise RuntimeError("no buffer")
    try:
        return int(view.buf or 0), int(view.len)
    finally:
        _release_buffer(ctypes.byref(view))


def payload_windows(memfd: int) -> list[tuple[int, int]]:
    """Address ranges [start, end) of the payload (and its mirror) of every mapping of this ring in us."""
    st = os.fstat(memfd)
    windows = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and int(parts[4]) == st.st_ino and int(parts[2], 16) == 0:
                start = int(parts[0].split("-")[0], 16)
                windows.append((start, st.st_size))
    return windows


class Pair:
    """A server connection and its client in one process, with the client's ring mapped for writing."""

    def __init__(self, server: pipc.Server) -> None:
        box: dict = {}
        t = threading.Thread(target=lambda: box.setdefault("conn", server.accept(timeout=10)))
        t.start()
        self.client = pipc.Client(server.name, timeout=10)
        t.join()
        self.conn: pipc.Connection = box["conn"]
        linktype, snaplen, self.payload_bytes, self.slots = self.client._c.info
        self.memfd = self.client._c.fds()[2]
        self.file_bytes = os.fstat(self.memfd).st_size
        self.payload_offset = self.file_bytes - self.payload_bytes
        fd = os.open(f"/proc/self/fd/{self.memfd}", os.O_RDWR)
        self.map = mmap.mmap(fd, self.file_bytes)
        os.close(fd)
        # payload window of each reservation: [base + payload_offset, base + file_bytes + payload_bytes)
        self.windows = [(base + self.payload_offset, base + size + self.payload_bytes)
                        for base, size in payload_windows(self.memfd)]
        self.sent_slots = self.sent_bytes = 0

    def send(self, sizes: list[int], timeout: float = 0) -> int:
        packets = [pipc.Packet(self.sent_slots + i, bytes([i & 0xFF]) * n) for i, n in enumerate(sizes)]
        try:
            n = self.conn.send(packets, timeout=timeout)
        except pipc.TimeoutError as e:
            n = e.sent
        self.sent_slots += n
        self.sent_bytes += sum(sizes[:n])
        return n

    def check_inside(self, packets: list) -> None:
        """Every returned packet's bytes lie inside one mapping of this ring's payload (mirror included)."""
        for p in packets:
            addr, n = buffer_span(p)
            assert n == p.caplen <= self.payload_bytes, (n, p.caplen)
            if n:
                assert any(lo <= addr and addr + n <= hi for lo, hi in self.windows), (hex(addr), n, self.windows)

    def write(self, offset: int, data: bytes) -> None:
        offset %= self.file_bytes
        data = data[: self.file_bytes - offset]
        self.map[offset : offset + len(data)] = data

    def read(self, offset: int, fmt: str) -> int:
        return int(struct.unpack_from(fmt, self.map, offset)[0])

    def close(self) -> None:
        self.map.close()
        self.conn.close()
        self.client.close()


def load_seeds(kind: str) -> list[dict]:
    """The committed corpus: tests/fuzz_corpus/<kind>/*.json, replayed on every run before random inputs."""
    folder = CORPUS / kind
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def _region(pair: Pair, region: str) -> tuple[int, int]:
    """[start, end) of a region of the ring file."""
    return {"producer": PRODUCER_LINE, "consumer": CONSUMER_LINE,
            "descriptors": (HEADER_BYTES, HEADER_BYTES + pair.slots * DESC.size),
            "payload": (pair.payload_offset, pair.file_bytes)}[region]


def _apply(pair: Pair, mutation: dict) -> None:
    """One hostile write: raw bytes in a region, or a value in a named field (of descriptor `index`)."""
    if "field" in mutation:
        fields = {**PRODUCER_FIELDS, **CONSUMER_FIELDS}
        if mutation["field"] in fields:
            off, fmt = fields[mutation["field"]]
        else:
            base, fmt = DESC_FIELDS[mutation["field"]]
            off = HEADER_BYTES + (mutation.get("index", 0) % pair.slots) * DESC.size + base
        value = mutation["value"]
        if value < 0:  # relative to what was written: -1 is the producer's position, -2 one past it, ...
            value = (pair.sent_slots if "slot" in mutation["field"] else pair.sent_bytes) - value - 1
        pair.write(off, struct.pack(fmt, value & ((1 << (8 * struct.calcsize(fmt))) - 1)))
    else:
        lo, hi = _region(pair, mutation["region"])
        off = lo + mutation["offset"] % (hi - lo)
        pair.write(off, bytes(mutation["data"][: hi - off]))  # a write stays inside its region


def take(client: pipc.Client, max_packets: int, as_batch: bool) -> list | None:
    """One receive with timeout 0, by either reader: receive_packets (a descriptor per packet) or receive_batch
    (columns, pipc_client_receive_columns), whose packets are checked the same way; None at end of stream."""
    if not as_batch:
        return client.receive_packets(max_packets, timeout=0)
    batch = client.receive_batch(max_packets, timeout=0)
    if batch is None:
        return None
    packets = list(batch)
    offsets = batch.offsets.tolist()
    assert offsets == [sum(p.caplen for p in packets[:i]) for i in range(len(packets))], offsets
    assert batch.nbytes == sum(p.caplen for p in packets)
    return packets


def reader_case(server: pipc.Server, case: dict, stats: dict) -> None:
    """A hostile server scribbles on the client's ring (producer line, descriptors, payload) between the
    client's receives. The client must return packets that lie inside the ring, or end, or raise a typed
    error; it must never crash, hang (every receive has timeout 0) or read outside the mapping."""
    pair = Pair(server)
    held: list = []
    try:
        pair.send(case["sizes"])
        for step, mutations in enumerate(case["rounds"]):
            for m in mutations:
                _apply(pair, m)
            with_error = False
            for k in range(4):
                try:
                    packets = take(pair.client, case["max_packets"], as_batch=(step + k) % 2 == 1)
                except (pipc.TimeoutError, pipc.ConnectionLostError):
                    break
                except pipc.ProtocolError:
                    stats["protocol_errors"] += 1
                    with_error = True
                    break
                if packets is None:  # a state word of "end": a clean end is a legal outcome
                    stats["ends"] += 1
                    break
                pair.check_inside(packets)
                for p in packets:
                    bytes(p.data)  # read every byte: under ASan an out-of-bounds read is reported here
                stats["packets"] += len(packets)
                if case["hold"] and step % 2 == 0:
                    held.append(packets)  # release out of order, later
                del packets
            if with_error:
                # sticky: the connection stays unusable, and says so again without touching the ring
                try:
                    pair.client.receive_packets(1, timeout=0)
                    raise AssertionError("receive after a ProtocolError must raise again")
                except pipc.ProtocolError:
                    pass
                break
            try:
                pair.send(case["more"])
            except pipc.ProtocolError:
                # The client acted on the lie (took and released descriptors the server never wrote) and the
                # genuine server sees the fallout: consumer positions past what it wrote. Also a legal outcome.
                stats["server_errors"] += 1
                break
            held = held[-2:]
    finally:
        del held
        pair.close()
    stats["examples"] += 1


def server_case(server: pipc.Server, case: dict, stats: dict) -> None:
    """A hostile client scribbles on its consumer line (read_slot, read_payload, consumer_waiting). The
    server must raise ProtocolError exactly when the positions are impossible (behind what it saw last, or
    past what it wrote), and otherwise carry on (write, or time out on a full ring); never crash or hang."""
    pair = Pair(server)
    seen = (0, 0)  # consumer positions as of the server's last look (a non-empty send reads them)

    def send(sizes: list[int]) -> None:
        nonlocal seen
        if sizes:
            seen = (pair.read(128, "<Q"), pair.read(136, "<Q"))  # nothing moves them during the send
        pair.send(sizes)

    try:
        send(case["sizes"])
        for mutations, take in zip(case["rounds"], case["takes"]):
            if take:
                try:
                    del pair.client.receive_packets(take, timeout=0)[:]  # released: new read positions published
                except pipc.TimeoutError:
                    pass
            true = (pair.read(128, "<Q"), pair.read(136, "<Q"))
            before = seen
            for m in mutations:
                _apply(pair, m)
            rs, rp = pair.read(128, "<Q"), pair.read(136, "<Q")
            impossible = bool(case["more"]) and (
                rs < before[0] or rs > pair.sent_slots or rp < before[1] or rp > pair.sent_bytes)
            where = f"positions {rs}, {rp}; wrote {pair.sent_slots}, {pair.sent_bytes}; saw {before}"
            try:
                send(case["more"])
            except pipc.ProtocolError:
                assert impossible, f"ProtocolError for possible {where}"
                stats["protocol_errors"] += 1
                try:
                    pair.send([1])
                    raise AssertionError("send after a ProtocolError must raise again")
                except pipc.ProtocolError:
                    pass
                break
            assert not impossible, f"impossible {where} accepted"
            stats["rounds"] += 1
            if (rs, rp) != true:
                # The server believed a lie it cannot tell from the truth (and may have overwritten bytes the
                # client still holds); the client's bookkeeping no longer matches its line: stop here.
                break
    finally:
        pair.close()
    stats["examples"] += 1


def _strategies(kind: str) -> Any:
    from hypothesis import strategies as st

    raw_region = ["producer", "descriptors", "payload"] if kind == "reader" else ["consumer"]
    fields = (list(PRODUCER_FIELDS) + list(DESC_FIELDS)) if kind == "reader" else list(CONSUMER_FIELDS)
    interesting = st.one_of(
        st.sampled_from([0, 1, 2, 7, 8, 15, 16, 17, 31, 32, 4095, 4096, 4097, 8192, 1 << 31, 1 << 32,
                         (1 << 63) - 1, 1 << 63, (1 << 64) - 1, -1, -2, -3, -17, -4097]),
        st.integers(0, (1 << 64) - 1),
    )
    raw = st.fixed_dictionaries({"region": st.sampled_from(raw_region), "offset": st.integers(0, 1 << 16),
                                 "data": st.lists(st.integers(0, 255), min_size=1, max_size=16)})
    field = st.fixed_dictionaries({"field": st.sampled_from(fields), "value": interesting,
                                   "index": st.integers(0, 63)})
    mutations = st.lists(st.one_of(raw, field), min_size=0, max_size=4)
    sizes = st.lists(st.integers(0, 1500), min_size=0, max_size=24)
    if kind == "reader":
        return st.fixed_dictionaries({"sizes": sizes, "more": sizes, "rounds": st.lists(mutations, min_size=1, max_size=4),
                                      "max_packets": st.integers(1, 40), "hold": st.booleans()})
    return st.fixed_dictionaries({"sizes": sizes, "more": sizes, "rounds": st.lists(mutations, min_size=1, max_size=4),
                                  "takes": st.lists(st.integers(0, 20), min_size=4, max_size=4)})


def run_fuzz(kind: str, seconds: float, result_q: Any) -> None:
    """Fuzzes one side for `seconds` with hypothesis: first the committed seeds (tests/fuzz_corpus/<kind>/),
    then the failures hypothesis saved before (its database, tests/fuzz_corpus/hypothesis/), then random
    inputs. A crash kills this process (the test sees the signal); a hang trips faulthandler's watchdog."""
    from hypothesis import HealthCheck, Phase, example, given, settings
    from hypothesis.database import DirectoryBasedExampleDatabase

    stats = {"examples": 0, "protocol_errors": 0, "server_errors": 0, "packets": 0, "ends": 0, "rounds": 0, "seeds": 0}
    target = reader_case if kind == "reader" else server_case
    # each example is a few milliseconds: 10 s without finishing one is a hang (dump stacks, exit 3)
    faulthandler.dump_traceback_later(10, repeat=True, exit=True)
    # 16 KiB of payload, 64 descriptors: random offsets land on every part of the ring often
    with pipc.Server(capacity=1 << 14, max_packets=64) as server:

        seeds = load_seeds(kind)
        stats["seeds"] = len(seeds)
        db = DirectoryBasedExampleDatabase(str(CORPUS / "hypothesis"))

        def fuzz_round(phases: list) -> Any:
            # A fresh function each round (a settings object applies once); same code, so the same database key.
            def fuzz_one(case: dict) -> None:
                target(server, case, stats)
                faulthandler.dump_traceback_later(10, repeat=True, exit=True)

            for seed in seeds:
                fuzz_one = example(seed)(fuzz_one)
            return given(_strategies(kind))(settings(database=db, max_examples=200, deadline=None, phases=phases,
                                                     suppress_health_check=list(HealthCheck))(fuzz_one))

        end = time.monotonic() + seconds
        try:
            fuzz_round([Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink])()
            while time.monotonic() < end:
                fuzz_round([Phase.generate, Phase.shrink])()
        except BaseException:  # noqa: BLE001 - the shrunk failing example, for the test's message
            result_q.put(("failed", stats, traceback.format_exc()))
            sys.exit(1)
    faulthandler.cancel_dump_traceback_later()
    result_q.put(("ok", stats, ""))


def storm_reader(seconds: float, target_q: Any, result_q: Any) -> None:
    """Serves and reads pairs (timeout 0 everywhere) while another process (storm_writer) rewrites their ring
    concurrently; publishes each new ring to the writer. Counts outcomes; crashes and hangs are the test's."""
    faulthandler.dump_traceback_later(10, repeat=True, exit=True)
    rng = random.Random(os.getpid())
    stats = {"pairs": 0, "packets": 0, "client_errors": 0, "server_errors": 0, "ends": 0}
    end = time.monotonic() + seconds
    with pipc.Server(capacity=1 << 14, max_packets=64) as server:
        while time.monotonic() < end:
            pair = Pair(server)
            stats["pairs"] += 1
            target_q.put((os.getpid(), pair.memfd, os.fstat(pair.memfd).st_ino))
            held: list = []
            try:
                while time.monotonic() < end:
                    faulthandler.dump_traceback_later(10, repeat=True, exit=True)
                    try:
                        pair.send([rng.randrange(1500) for _ in range(rng.randrange(1, 20))])
                    except pipc.ProtocolError:
                        stats["server_errors"] += 1
                        break
                    try:
                        packets = take(pair.client, rng.randrange(1, 40), as_batch=rng.random() < 0.5)
                    except (pipc.TimeoutError, pipc.ConnectionLostError):
                        continue
                    except pipc.ProtocolError:
                        stats["client_errors"] += 1
                        break
                    if packets is None:
                        stats["ends"] += 1
                        break
                    pair.check_inside(packets)
                    for p in packets:
                        bytes(p.data)
                    stats["packets"] += len(packets)
                    if rng.random() < 0.3:
                        held.append(packets)
                    held = held[-3:]
            finally:
                del held
                pair.close()
    faulthandler.cancel_dump_traceback_later()
    result_q.put(("ok", stats))


def storm_writer(target_q: Any, stop: Any, result_q: Any) -> None:
    """Writes random bytes at random offsets of the reader's current ring (through /proc/<pid>/fd/<memfd>),
    as fast as it can, until `stop` is set."""
    import queue

    rng = random.Random(os.getpid())
    writes = 0
    m = None
    while not stop.is_set():
        try:
            pid, fd, inode = target_q.get(timeout=0.05 if m is None else 0)
            if m is not None:
                m.close()
            m = None
            try:
                f = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR)
                st = os.fstat(f)
                if st.st_ino == inode:  # not another file that took the fd number meanwhile
                    size = st.st_size
                    m = mmap.mmap(f, size)
                os.close(f)
            except OSError:  # that ring is already gone
                m = None
        except queue.Empty:
            pass
        if m is None:
            continue
        for _ in range(256):
            # mostly the two shared lines and the descriptors, where the reader's decisions come from
            r = rng.random()
            off = rng.randrange(64, 192) if r < 0.4 else rng.randrange(HEADER_BYTES, HEADER_BYTES + 64 * 32) \
                if r < 0.8 else rng.randrange(size)
            n = min(rng.choice((1, 2, 4, 8, 16)), size - off)
            m[off : off + n] = rng.randbytes(n)
            writes += 1
    if m is not None:
        m.close()
    result_q.put(("writer", writes))
