"""Shared memory is never trusted: hostile bytes written into a ring give typed errors or in-bounds packets,
never a crash, a hang, or a read outside the mapping.

Each fuzz target runs in a spawned child, so a crash is an exit by signal (or ASan's non-zero exit) and a
hang trips the child's faulthandler watchdog or the join timeout. Duration: PACKET_IPC_FUZZ_SECONDS (20 by
default; CI sets 60). Corpus: tests/fuzz_corpus/ (see its README). Under ASan:
  PACKET_IPC_SANITIZE=address,undefined pip install . (into a separate venv), then
  LD_PRELOAD=$(gcc -print-file-name=libasan.so) PYTHONMALLOC=malloc ASAN_OPTIONS=detect_leaks=0 pytest ...
"""

from __future__ import annotations

import os

import pytest

from helpers.crashers import run_fuzz, storm_reader, storm_writer

SECONDS = float(os.environ.get("PACKET_IPC_FUZZ_SECONDS", "20"))
GRACE = 60  # start-up, the committed seeds, and one last hypothesis round (shrinking a failure included)

pytestmark = pytest.mark.timeout(SECONDS * 2 + GRACE + 60)


def finish(process, seconds: float) -> None:
    process.join(seconds)
    if process.is_alive():
        process.kill()
        process.join()
        pytest.fail(f"{process.name} hung (killed after {seconds:.0f} s)")
    assert process.exitcode is not None and process.exitcode >= 0, f"{process.name} died of signal {-process.exitcode}"


def test_client_and_server_survive_hostile_writes_to_their_ring(ctx):
    # Both sides at once, one child each (two cores): the client reading a ring a hostile server scribbles on
    # (producer line, descriptors, payload), and the server sending into a ring whose consumer line a hostile
    # client scribbles on. Each asserts, per example, that packets lie inside the ring, that an impossible
    # consumer position is a ProtocolError (and a possible one is not), and that errors are sticky.
    results = ctx.Queue()
    children = [ctx.Process(target=run_fuzz, args=(kind, SECONDS, results), name=f"{kind}-fuzzer")
                for kind in ("reader", "server")]
    for c in children:
        c.start()
    reports = [results.get(timeout=SECONDS + GRACE) for _ in children]
    for c in children:
        finish(c, 30)
    for status, stats, failure in reports:
        assert status == "ok", failure
        print(f"fuzz: {stats}")
        assert stats["examples"] > stats["seeds"] and stats["protocol_errors"] > 0


def test_reader_survives_a_concurrent_storm_of_random_writes(ctx):
    # True concurrency: another process rewrites the ring (both shared lines, descriptors, payload) while the
    # reader validates it. The reader copies each descriptor before checking it, so a rewrite between the check
    # and the use cannot pass an out-of-bounds packet; the child checks every packet's address.
    targets, results, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    writer = ctx.Process(target=storm_writer, args=(targets, stop, results), name="storm-writer")
    reader = ctx.Process(target=storm_reader, args=(SECONDS / 2, targets, results), name="storm-reader")
    writer.start()
    reader.start()
    try:
        finish(reader, SECONDS / 2 + GRACE)
    finally:
        stop.set()
        finish(writer, 30)
    reports = dict(results.get(timeout=10) for _ in range(2))
    print(f"storm: {reports}")
    assert reports["ok"]["pairs"] > 1 and reports["ok"]["packets"] > 0 and reports["writer"] > 0
