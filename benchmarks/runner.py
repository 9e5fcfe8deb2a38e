"""Runner: producer and consumer processes, timing, verification, latency and memcpy figures.

Each measurement forks two fresh processes from the parent, which holds the workload pool, so both
start from the same bytes without any transfer. The consumer builds its endpoint and sets ``ready``;
the producer then takes ``t0`` and sends batches (or chunks of 256 packet objects) cycling over the
pool until the packet budget or the time budget is spent, then sends end of stream. The consumer
takes ``t1`` when it sees end of stream. Both clocks are ``perf_counter_ns`` (CLOCK_MONOTONIC, one clock
for the whole machine), so the rate is packets / (t1 - t0), drain of the in-flight data included.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time
import traceback

import numpy as np

from . import verify
from .workloads import Batch, _build

_CTX = mp.get_context("fork")


def _child(role, fn, result_conn, *args) -> None:
    try:
        result_conn.send(("ok", fn(*args)))
    except BaseException:  # noqa: BLE001 - everything goes back to the parent as text
        result_conn.send(("error", f"{role}: {traceback.format_exc(limit=6)}"))
    finally:
        result_conn.close()


def _produce(transport, channel, rendezvous, ready, workload, mode, seconds, max_batches):
    tx = transport.producer(channel, rendezvous)
    if not ready.wait(60):
        raise TimeoutError("consumer never became ready")
    pool = workload.batches if mode != "objects" else [b.packets for b in workload.batches]
    send = {"batch": tx.send_batch, "objects": tx.send_packets, "inplace": tx.send_inplace}[mode]
    n = len(pool)
    clock = time.perf_counter_ns
    t0 = clock()
    deadline = t0 + int(seconds * 1e9)
    sent = 0
    while sent < max_batches:
        send(pool[sent % n])
        sent += 1
        if clock() > deadline:
            break
    tx.end()
    t_sent = clock()
    tx.close()
    return {"t0": t0, "t_sent": t_sent, "batches": sent}


def _consume(transport, channel, rendezvous, ready, mode):
    rx = transport.consumer(channel, rendezvous)
    digest = verify.StreamDigest()
    ready.set()
    if mode != "objects":  # batch and inplace: the same consumer
        update, recv, release = digest.update_batch, rx.recv_batch, rx.release
        while (b := recv()) is not None:
            update(*b)
            release()
    else:
        rx.consume_packets(digest.update_packet)
    t1 = time.perf_counter_ns()
    rx.close()
    return {"t1": t1, "digest": digest.result()}


def _spawn(role, fn, *args):
    reader, writer = _CTX.Pipe(duplex=False)
    p = _CTX.Process(target=_child, args=(role, fn, writer, *args), name=f"bench-{role}", daemon=True)
    p.start()
    writer.close()
    return p, reader


def _collect(children, timeout: float):
    """Wait for every child's result; once one fails (or at the deadline), kill the rest."""
    from multiprocessing.connection import wait

    deadline = time.monotonic() + timeout
    results, errors = {}, []
    pending = {reader: role for role, (_, reader) in children.items()}
    while pending:
        left = deadline - time.monotonic()
        if errors:
            left = min(left, 2.0)  # a side failed: the other is probably blocked on it
        ready = wait(list(pending), timeout=max(0.0, left))
        if not ready:
            errors += [f"{role}: no result within {timeout:.0f} s" if not errors else f"{role}: stopped after the other side failed"
                       for role in pending.values()]
            break
        for reader in ready:
            role = pending.pop(reader)
            try:
                status, value = reader.recv()
            except EOFError:
                proc = children[role][0]
                proc.join(1)
                status, value = "error", f"{role}: exited without a result (code {proc.exitcode})"
            if status == "ok":
                results[role] = value
            else:
                errors.append(value)
    for proc, _ in children.values():
        proc.join(2 if not errors else 0.2)
        if proc.is_alive():
            proc.kill()  # only our own children, by object
            proc.join()
    return results, errors


def run_throughput(transport_cls, mode, workload, seconds, max_packets):
    """One timed transfer; returns a dict with pps etc., or status FAILED and a reason."""
    t = transport_cls(mode, workload.max_batch_bytes, workload.max_packet_bytes)
    channel = t.make_channel(_CTX)
    rv_p, rv_c = _CTX.Pipe()
    ready = _CTX.Event()
    per_batch = workload.pool_packets / len(workload.batches)
    max_batches = max(1, int(max_packets / per_batch))
    children = {
        "consumer": _spawn("consumer", _consume, t, channel, rv_c, ready, mode),
        "producer": _spawn("producer", _produce, t, channel, rv_p, ready, workload, mode, seconds, max_batches),
    }
    results, errors = _collect(children, timeout=seconds * 10 + 60)
    if errors:
        return {"status": "FAILED", "reason": " | ".join(e.strip().splitlines()[-1] for e in errors), "detail": errors}
    prod, cons = results["producer"], results["consumer"]
    want = verify.expected(workload, mode, prod["batches"])
    got = cons["digest"]
    mismatch = verify.compare(got, want)
    if mismatch:
        return {"status": "FAILED", "reason": f"verification: {mismatch}"}
    elapsed_ns = cons["t1"] - prod["t0"]
    return {
        "status": "ok",
        "packets": got["packets"],
        "payload_bytes": got["payload_bytes"],
        "elapsed_s": elapsed_ns / 1e9,
        "pps": got["packets"] * 1e9 / elapsed_ns,
        "gbps": got["payload_bytes"] * 8 / elapsed_ns,
    }


# --- latency ---------------------------------------------------------------------------------------


def _one_packet_batch() -> Batch:
    rng = np.random.default_rng(64)
    return _build("ping", "ping", [1_700_000_000_123_456_789], [64], rng.integers(0, 256, 64, np.uint8).tobytes()).batches[0]


def _pinger(transport, ch_out, rv_out, ch_in, rv_in, round_trips, warmup):
    tx = transport.producer(ch_out, rv_out)
    rx = transport.consumer(ch_in, rv_in)
    one = _one_packet_batch()
    expected = one.data
    clock = time.perf_counter_ns
    rtts = []
    for i in range(warmup + round_trips):
        t0 = clock()
        tx.send_batch(one)
        reply = rx.recv_batch()
        t1 = clock()
        if reply is None or bytes(reply[2]) != expected:
            raise RuntimeError(f"bad echo at round trip {i}")
        rx.release()
        if i >= warmup:
            rtts.append(t1 - t0)
    tx.end()
    while rx.recv_batch() is not None:
        rx.release()
    tx.close()
    rx.close()
    return rtts


def _echoer(transport, ch_in, rv_in, ch_out, rv_out):
    rx = transport.consumer(ch_in, rv_in)
    tx = transport.producer(ch_out, rv_out)
    digest = verify.StreamDigest()
    while (b := rx.recv_batch()) is not None:
        digest.update_batch(*b)
        rx.release()
        tx.send_batch(_ECHO)
    tx.end()
    tx.close()
    rx.close()
    return digest.result()


_ECHO = _one_packet_batch()


def run_latency(transport_cls, round_trips: int, warmup: int = 200):
    """One-way latency as RTT/2 of a ping-pong of one 64-byte packet (batch of one)."""
    t = transport_cls("batch", 64, 64)
    ch1, ch2 = t.make_channel(_CTX), t.make_channel(_CTX)
    a1, b1 = _CTX.Pipe()
    a2, b2 = _CTX.Pipe()
    children = {
        "echoer": _spawn("echoer", _echoer, t, ch1, b1, ch2, b2),
        "pinger": _spawn("pinger", _pinger, t, ch1, a1, ch2, a2, round_trips, warmup),
    }
    results, errors = _collect(children, timeout=120)
    if errors:
        return {"status": "FAILED", "reason": " | ".join(e.strip().splitlines()[-1] for e in errors), "detail": errors}
    rtts = np.array(results["pinger"], dtype=np.float64)
    if results["echoer"]["packets"] != warmup + round_trips:
        return {"status": "FAILED", "reason": f"echoer saw {results['echoer']['packets']} packets"}
    one_way_us = rtts / 2 / 1e3
    return {
        "status": "ok",
        "round_trips": round_trips,
        "p50_us": float(np.percentile(one_way_us, 50)),
        "p99_us": float(np.percentile(one_way_us, 99)),
        "mean_us": float(one_way_us.mean()),
    }


# --- memcpy ------------------------------------------------------------------------------------------


def run_memcpy(seconds: float, size: int = 64 << 20) -> dict:
    """Single-process copy bandwidth between two touched 64 MiB buffers (bytes copied per second)."""
    src = bytearray(np.random.default_rng(1).integers(0, 256, size, np.uint8).tobytes())
    dst = bytearray(size)  # zero-filled by calloc, then touched by the first copy (not timed)
    view = memoryview(dst)
    view[:] = src
    rates = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(rates) < 3:
        t0 = time.perf_counter_ns()
        view[:] = src
        rates.append(size / (time.perf_counter_ns() - t0))
    return {"bytes": size, "copies": len(rates), "gb_per_s": statistics.median(rates)}


# --- the whole matrix ----------------------------------------------------------------------------------


def median_result(reps: list[dict]) -> dict:
    ok = [r for r in reps if r["status"] == "ok"]
    failed = [r for r in reps if r["status"] != "ok"]
    if failed:
        # One failed repetition fails the cell: a wrong answer is never averaged away.
        out = dict(failed[0])
        out["repetitions"] = len(reps)
        return out
    pps = statistics.median(r["pps"] for r in ok)
    best = min(ok, key=lambda r: abs(r["pps"] - pps))
    return {
        "status": "ok",
        "pps": pps,
        "gbps": statistics.median(r["gbps"] for r in ok),
        "ns_per_packet": 1e9 / pps,
        "packets": best["packets"],
        "elapsed_s": best["elapsed_s"],
        "repetitions": len(ok),
        "pps_reps": [r["pps"] for r in ok],
    }


def machine_info() -> dict:
    import datetime
    import platform

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for mod in ("packet_ipc", "zmq", "faster_fifo", "iceoryx2", "xxhash", "numpy"):
        try:
            from importlib import metadata

            dist = {"zmq": "pyzmq", "faster_fifo": "faster-fifo", "packet_ipc": "packet-ipc"}.get(mod, mod)
            versions[mod] = metadata.version(dist)
        except Exception:  # noqa: BLE001 - not installed
            versions[mod] = None
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions,
    }
