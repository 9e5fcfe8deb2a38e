"""The stable C ABI (include/packet_ipc.h) as a C programmer meets it: the installed header and library, the
examples in examples/c built with `packet-ipc config --cflags --libs`, and interop with Python in both
directions (Python server -> C consumer, C producer -> Python client), checked packet by packet through an
order-sensitive checksum (FNV-1a 64, defined in examples/c/consumer.c)."""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

import packet_ipc as pipc
from packet_ipc.pcap import open_capture

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "c"
MERGED_ETHER = Path(__file__).resolve().parents[2] / "shared" / "data" / "pcaps" / "merged-ether.pcap"
REPO_CAPTURES = sorted(p for p in (REPO / "tests" / "data").iterdir() if p.suffix in (".pcap", ".pcapng"))
HEADER = Path(pipc.get_include()) / "packet_ipc.h"
EXT_HEADER = Path(pipc.get_include()) / "packet_ipc_ext.h"
SUMMARY = re.compile(r"^packets=(\d+) bytes=(\d+) checksum=(0x[0-9a-f]{16})$")
TIMEOUT = 60  # seconds for any one child process

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------- helpers

def fnv1a(h: int, data: bytes | memoryview) -> int:
    for b in bytes(data):
        h = ((h ^ b) * FNV_PRIME) & MASK64
    return h


def checksum(packets: Iterable[tuple[int, int, bytes | memoryview]]) -> tuple[int, int, str]:
    """(count, bytes, checksum) of (ts_ns, origlen, data) triples, as the C examples print them."""
    h, count, nbytes = FNV_OFFSET, 0, 0
    for ts_ns, origlen, data in packets:
        caplen = len(data)
        h = fnv1a(h, ts_ns.to_bytes(8, "little") + origlen.to_bytes(4, "little") + caplen.to_bytes(4, "little"))
        h = fnv1a(h, data)
        count += 1
        nbytes += caplen
    return count, nbytes, f"0x{h:016x}"


def summary(line: str) -> tuple[int, int, str]:
    m = SUMMARY.match(line.strip())
    assert m, f"not a summary line: {line!r}"
    return int(m[1]), int(m[2]), m[3]


def producer_packets(count: int, sizes: list[int]) -> Iterator[tuple[int, int, bytes]]:
    """The packets examples/c/producer.c sends (its header comment defines them)."""
    x, pool = 0x9E3779B97F4A7C15, bytearray(65536 + max(sizes))
    for k in range(len(pool)):
        x ^= x >> 12
        x ^= (x << 25) & MASK64
        x ^= x >> 27
        pool[k] = ((x * 0x2545F4914F6CDD1D) & MASK64) >> 56
    for i in range(count):
        caplen = sizes[i % len(sizes)]
        off = (i * 977) & 0xFFFF
        yield 1_700_000_000_000_000_000 + 1000 * i, caplen + (4 if i % 4 == 3 else 0), bytes(pool[off : off + caplen])


def config_flags() -> list[str]:
    """`packet-ipc config --cflags --libs` of the package this interpreter imports (python -m rather than the
    console script, which could belong to another installation than the one on PYTHONPATH)."""
    cmd = [sys.executable, "-m", "packet_ipc.cli", "config", "--cflags", "--libs"]
    return shlex.split(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def test_console_script_prints_the_same_flags():
    script = Path(sys.executable).parent / "packet-ipc"
    if not script.exists():
        pytest.skip(f"no console script beside {sys.executable}")
    if os.environ.get("PYTHONPATH"):
        pytest.skip("PYTHONPATH may point this interpreter at another installation than the script's")
    out = subprocess.run([script, "config", "--cflags", "--libs"], check=True, capture_output=True, text=True).stdout
    assert shlex.split(out) == config_flags()


def library_path() -> Path:
    return Path(pipc.get_library_dir()) / f"libpacketipc.so.{pipc.ABI_VERSION}"


@pytest.fixture(scope="session")
def cc() -> str:
    path = shutil.which("cc") or shutil.which("gcc")
    if not path:
        pytest.skip("no C compiler (cc) on PATH")
    return path


@pytest.fixture(scope="session")
def examples(cc: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """examples/c/{consumer,producer,flow_producer}.c built exactly as docs/c-api.md tells a newcomer, plus -Werror."""
    out = tmp_path_factory.mktemp("c-examples")
    built = {}
    for name in ("consumer", "producer", "flow_producer"):
        exe = out / name
        cmd = [cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", str(EXAMPLES / f"{name}.c"), "-o", str(exe)]
        r = subprocess.run(cmd + config_flags(), capture_output=True, text=True)
        assert r.returncode == 0, f"{shlex.join(cmd)}\n{r.stderr}"
        built[name] = exe
    return built


def start_consumer(examples: dict[str, Path], name: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(examples["consumer"]), *args, name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def feed_c_consumer(examples: dict[str, Path], packets: list[pipc.Packet], *args: str, batch: bool = False,
                    capacity: int = 1 << 20) -> tuple[int, int, str]:
    """Runs the C consumer against a Python server sending `packets`; returns the consumer's summary."""
    with pipc.Server(capacity=capacity, linktype=1) as server:
        consumer = start_consumer(examples, server.name, "--timeout", "30000", *args)
        try:
            conn = server.accept(timeout=30)
            if batch:
                for i in range(0, len(packets), 512):
                    sent = conn.send_batch(pipc.PacketBatch.from_packets(packets[i : i + 512]), timeout=30)
                    assert sent == len(packets[i : i + 512])
                conn.end()
            else:
                pipc.transfer_ipc(packets, conn, batch_size=256, timeout=30)
            conn.close()
            out, err = consumer.communicate(timeout=TIMEOUT)
        finally:
            if consumer.poll() is None:
                consumer.kill()
                consumer.wait()
    assert consumer.returncode == 0, err
    return summary(out)


def capture_packets(path: Path) -> list[pipc.Packet]:
    with open_capture(path) as capture:
        # Packet() refuses orig_len < caplen; three fuzz records of merged-ether.pcap have it (the file's own
        # records still travel as they are through replay, which does not build Packet objects).
        return [pipc.Packet(r.timestamp, r.data, orig_len=max(r.orig_len, len(r.data)), linktype=max(r.linktype, 0))
                for r in capture]


def expected(packets: list[pipc.Packet]) -> tuple[int, int, str]:
    return checksum((p.timestamp, p.orig_len, p.data) for p in packets)


# ---------------------------------------------------------------- Python server -> C consumer

@pytest.mark.parametrize("capture", REPO_CAPTURES, ids=lambda p: p.name)
@pytest.mark.parametrize("columns", [False, True], ids=["descriptors", "columns"])
def test_c_consumer_receives_a_capture_from_a_python_server_intact_and_in_order(examples, capture, columns):
    """Either C reader: pipc_client_receive, or pipc_client_receive_columns (--columns) into a small ring
    that the capture wraps many times, with whole-batch releases."""
    packets = capture_packets(capture)
    assert packets
    args = ("--columns", "--batch", "100") if columns else ()
    assert feed_c_consumer(examples, packets, *args, batch=columns, capacity=1 << 16) == expected(packets)


@pytest.mark.shared
@pytest.mark.parametrize("mode", ["send", "send_batch", "poll"])
def test_c_consumer_receives_merged_ether_capture_intact_and_in_order(examples, mode):
    if not MERGED_ETHER.exists():
        pytest.skip(f"shared capture not present at {MERGED_ETHER} (a clone without ../shared)")
    packets = capture_packets(MERGED_ETHER)
    args = ("--poll", "--batch", "64") if mode == "poll" else ()
    # A 256 KiB ring, the smallest whose half holds the capture's largest packets (65589 bytes): the 1.9 MB
    # capture wraps it over and over and the server blocks on a full ring.
    got = feed_c_consumer(examples, packets, *args, batch=mode == "send_batch", capacity=1 << 18)
    assert got == expected(packets)


def test_c_consumer_reports_an_empty_stream_as_zero_packets(examples):
    assert feed_c_consumer(examples, []) == (0, 0, f"0x{FNV_OFFSET:016x}")


def test_c_consumer_fails_with_a_readable_error_when_no_server_is_there(examples, tmp_path):
    consumer = start_consumer(examples, str(tmp_path / "nobody"), "--timeout", "1000")
    out, err = consumer.communicate(timeout=TIMEOUT)
    assert consumer.returncode == 1 and out == ""
    assert "no server at that name" in err and "nobody" in err  # pipc_strerror, then pipc_last_error


SERVE_THEN_HANG = """
import signal, sys, packet_ipc as pipc
server = pipc.Server(capacity=1 << 16)
print(server.name, flush=True)
conn = server.accept(timeout=30)
conn.send([pipc.Packet(i, bytes([i]) * 100) for i in range(50)])
print("sent", flush=True)
signal.pause()
"""


def test_polling_c_consumer_drains_then_reports_server_killed(examples):
    # The consumer sleeps in poll() on pipc_client_fd() with a long timeout; only the fd's readiness on the
    # server's death (not a timeout) can end that sleep within the test's wait.
    server = subprocess.Popen([sys.executable, "-c", SERVE_THEN_HANG], stdout=subprocess.PIPE, text=True)
    consumer = None
    try:
        name = server.stdout.readline().strip()
        consumer = start_consumer(examples, name, "--poll", "--timeout", "600000")
        assert server.stdout.readline().strip() == "sent"
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        out, err = consumer.communicate(timeout=20)
    finally:
        for p in (server, consumer):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert consumer.returncode == 1, (out, err)
    assert "after 50 packets" in err and "peer vanished without end of stream" in err


def test_polling_c_consumer_sleeps_while_the_server_is_idle(examples):
    # After a wake-up, an idle server must not leave pipc_client_fd() readable (a poll() that returns at once
    # forever is a busy loop): the consumer's CPU time over a 1.5 s idle period stays far below 1.5 s.
    with pipc.Server(capacity=1 << 16) as server:
        consumer = start_consumer(examples, server.name, "--poll", "--timeout", "30000")
        conn = server.accept(timeout=30)
        for _ in range(3):
            conn.send([pipc.Packet(i, b"x" * 64) for i in range(100)])
            threading.Event().wait(0.5)  # the idle period under test, not synchronisation
        conn.end()
        conn.close()
        out = consumer.stdout.read()
        _, status, usage = os.wait4(consumer.pid, 0)
        consumer.returncode = os.waitstatus_to_exitcode(status)
        consumer.stdout.close()
        consumer.stderr.close()
    assert consumer.returncode == 0
    assert summary(out)[:2] == (300, 300 * 64)
    assert usage.ru_utime + usage.ru_stime < 0.5, usage


# ---------------------------------------------------------------- C producer -> Python client

SIZES = [0, 1, 60, 64, 1518, 9000, 333]


def receive_from_c_producer(examples, count: int, capacity: int, *args: str, batch: int = 300) -> tuple[list, str]:
    """Runs examples/c/producer.c (SIZES, batches of 100, extra ``args``) into a Python client; returns what the
    client received as (timestamp, orig_len, bytes) and the producer's summary line."""
    producer = subprocess.Popen(
        [str(examples["producer"]), "--count", str(count), "--sizes", ",".join(map(str, SIZES)),
         "--capacity", str(capacity), "--batch", "100", "--timeout", "30000", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        name = producer.stdout.readline().strip()
        assert name, producer.stderr.read()
        received = []
        with pipc.Client(name, timeout=30) as client:
            assert client.linktype == 1
            while (got := client.receive_batch(batch, timeout=30)) is not None:
                with got:
                    received.extend((p.timestamp, p.orig_len, p.tobytes()) for p in got)
        out, err = producer.communicate(timeout=TIMEOUT)
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait()
    assert producer.returncode == 0, err
    return received, out.splitlines()[-1]


@pytest.mark.parametrize("capacity", [1 << 16, 1 << 22])
def test_python_client_receives_what_the_c_producer_sent(examples, capacity):
    received, line = receive_from_c_producer(examples, 2000, capacity)
    assert received == list(producer_packets(2000, SIZES))  # byte for byte, in order
    assert summary(line) == checksum(received)


def test_the_c_producer_sending_a_prebuilt_pool_as_columns(examples):
    """producer --pool 3: three batches built once (columns, payloads back to back) and sent again and again with
    pipc_conn_send_columns into a ring smaller than one cycle: packet i is packet i % 300 of the documented
    list, byte for byte and in order, and the producer's checksum is the client's."""
    received, line = receive_from_c_producer(examples, 1000, 1 << 16, "--pool", "3", batch=128)
    pool = list(producer_packets(300, SIZES))
    assert received == [pool[i % 300] for i in range(1000)]
    assert summary(line) == checksum(received)


# ---------------------------------------------------------------- the header and the library

TU = """
#include <packet_ipc.h>
#include <packet_ipc_ext.h>
#include <stddef.h>
#include <string.h>
int main(void)
{
    /* zeroed, then set: option structs grow, and this form compiles cleanly in C and C++ alike */
    struct pipc_server_options o;
    memset(&o, 0, sizeof(o));
    o.struct_bytes = sizeof(o);
    o.linktype = 1;
    o.distribution = PIPC_DISTRIBUTION_FLOW;
    struct pipc_packet p[2];
    struct pipc_stats st;
    pipc_client *c = NULL;
    struct pipc_flow_key k;
    (void)k;
    (void)p;
    (void)st;
    (void)c;
    return offsetof(struct pipc_server_options, struct_bytes) == 0 && o.struct_bytes > 0 &&
        PACKET_IPC_ABI_VERSION > 0 ? 0 : 1;
}
"""


@pytest.mark.parametrize(
    "compiler,std,suffix",
    [("gcc", "c99", "c"), ("gcc", "c11", "c"), ("gcc", "c17", "c"), ("g++", "c++11", "cc"), ("g++", "c++17", "cc")],
)
def test_installed_header_compiles_cleanly(tmp_path, compiler, std, suffix):
    exe = shutil.which(compiler)
    if not exe:
        pytest.skip(f"{compiler} not on PATH")
    src = tmp_path / f"tu.{suffix}"
    src.write_text(TU)
    cmd = [exe, f"-std={std}", "-Wall", "-Wextra", "-Werror", "-pedantic-errors", "-fsyntax-only",
           f"-I{pipc.get_include()}", str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"{shlex.join(cmd)}\n{r.stderr}"


@pytest.mark.parametrize("header", [HEADER, EXT_HEADER], ids=lambda p: p.name)
def test_installed_header_is_the_repository_header(header):
    assert header.read_text() == (REPO / "include" / header.name).read_text()


def header_functions(header: Path = HEADER) -> list[str]:
    return re.findall(r"^PIPC_API [^(]*?\b(pipc_\w+)\(", header.read_text(), re.M)


@pytest.fixture(scope="module")
def lib() -> ctypes.CDLL:
    return ctypes.CDLL(str(library_path()))


@pytest.mark.parametrize("header,at_least", [(HEADER, 20), (EXT_HEADER, 5)], ids=lambda p: getattr(p, "name", p))
def test_library_exports_every_function_the_header_declares(lib, header, at_least):
    names = header_functions(header)
    assert len(names) >= at_least
    missing = [n for n in names if not hasattr(lib, n)]
    assert missing == []


def test_library_is_loaded_by_its_soname_and_reports_the_header_abi_version(lib):
    header_version = int(re.search(r"#define PACKET_IPC_ABI_VERSION (\d+)", HEADER.read_text())[1])
    assert library_path().exists()  # what programs linked with -lpacketipc load at run time
    lib.pipc_abi_version.restype = ctypes.c_int
    assert lib.pipc_abi_version() == header_version == pipc.ABI_VERSION


@pytest.mark.parametrize(
    "code,text",
    [
        (0, "success"),
        (-errno.ETIMEDOUT, "timed out"),
        (-errno.ECONNRESET, "peer vanished without end of stream"),
        (-errno.EPROTO, "protocol error"),
        (-errno.EMSGSIZE, "packet larger than the ring or the snaplen"),
        (-errno.EACCES, "peer credentials refused"),
        (-errno.ENOENT, "no server at that name"),
        (errno.ENOENT, "no server at that name"),  # a positive errno names the same thing
        (-errno.EBADF, os.strerror(errno.EBADF)),  # others: the C library's text
    ],
)
def test_strerror_names_each_error_code(lib, code, text):
    lib.pipc_strerror.restype = ctypes.c_char_p
    assert lib.pipc_strerror(code).decode().startswith(text)


def test_last_error_says_which_name_failed_in_this_thread(lib, tmp_path):
    lib.pipc_client_connect.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p)]
    lib.pipc_last_error.restype = ctypes.c_char_p
    out = ctypes.c_void_p()
    missing = str(tmp_path / "no-such-server").encode()
    assert lib.pipc_client_connect(missing, 0, ctypes.byref(out)) == -errno.ENOENT
    assert missing in lib.pipc_last_error()
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("other", lib.pipc_last_error()))
    t.start()
    t.join()
    assert missing not in box["other"]  # thread-local


# ---------------------------------------------------------------- C server-level send (many workers)

FLOW_CAPTURES = [p for p in REPO_CAPTURES if p.suffix == ".pcap"] + [
    p for p in [REPO.parent / "shared" / "data" / "pcaps" / n for n in ("merged-ether.pcap", "more/ndpi_zoom2.pcap",
                                                                         "more/ndpi_dns_fragmented.pcap")]
    if p.exists()
]


@pytest.mark.parametrize("capture", FLOW_CAPTURES, ids=lambda p: p.name)
def test_c_flow_producer_serves_a_capture_to_four_python_workers_by_flow(examples, capture, ctx):
    """examples/c/flow_producer.c: every packet exactly once over 4 Python workers, each flow on one worker."""
    from helpers.peers import canonical_flow, collect

    producer = subprocess.Popen([str(examples["flow_producer"]), "--workers", "4", "--batch", "64", str(capture)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        name = producer.stdout.readline().strip()
        assert name, producer.stderr.read()
        result_q = ctx.Queue()
        workers = [ctx.Process(target=collect, args=(name, result_q)) for _ in range(4)]
        for w in workers:
            w.start()
        results = [result_q.get(timeout=TIMEOUT) for _ in workers]
        out, err = producer.communicate(timeout=TIMEOUT)
        for w in workers:
            w.join(TIMEOUT)
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait()
    assert producer.returncode == 0, err
    packets = capture_packets(capture)
    assert [e for *_, e in results] == [None] * 4
    got = sorted(ts for _, stream, _, _ in results for ts, _ in stream)
    assert got == sorted(p.timestamp for p in packets)  # every packet exactly once
    owner: dict = {}
    for pid, stream, _, _ in results:
        for _, flow in stream:
            if flow is not None:
                assert owner.setdefault(flow, pid) == pid, f"flow {flow} reached two workers"
    lines = out.splitlines()
    assert lines[-1] == f"packets={len(packets)} workers=4 lost=0"
    per_worker = [int(re.search(r"packets=(\d+)", line)[1]) for line in lines[:-1]]  # the name was read above
    assert sorted(per_worker) == sorted(len(stream) for _, stream, _, _ in results)
    if len({f for _, s, _, _ in results for _, f in s if f is not None}) >= 8:
        assert sum(1 for n in per_worker if n) >= 2  # enough flows: spread over several workers


def test_c_flow_producer_refuses_a_file_that_is_not_a_capture(examples, tmp_path):
    bogus = tmp_path / "not.pcap"
    bogus.write_bytes(b"hello, this is not a capture file at all")
    r = subprocess.run([str(examples["flow_producer"]), str(bogus)], capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 1
    assert "not a classic pcap file" in r.stderr and r.stdout == ""
