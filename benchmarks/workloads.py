"""Workloads: the packets every transport moves, built once per run in the parent process.

A workload is a pool of packets cut into columnar batches of at most 256 packets (the unit of
batch mode: a u64 timestamp column, a u32 length column and one payload blob) and, for objects
mode, the same packets as Python ``Packet`` objects grouped the same way. Producers cycle over the
pool, so a run can last as long as it needs while the parent can recompute, from the number of
batches sent, exactly which bytes the consumer must have seen. The pool is built before the
producer and consumer are forked, so every transport moves the very same bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BATCH_PACKETS = 256
SEED = 0x5EED_1234
TS_BASE_NS = 1_700_000_000_000_000_000

PCAP_PATH = Path(__file__).resolve().parents[2] / "shared" / "data" / "pcaps" / "merged-ether.pcap"


class Packet:
    """One captured packet as a user would hold it: the objects-mode unit."""

    __slots__ = ("timestamp", "data", "orig_len")

    def __init__(self, timestamp: int, data, orig_len: int) -> None:
        self.timestamp = timestamp
        self.data = data
        self.orig_len = orig_len


@dataclass
class Batch:
    """Up to 256 packets in columns; ``packets`` holds the same packets as objects."""

    timestamps: bytes  # n x u64 little endian (ns)
    caplens: bytes  # n x u32 little endian
    data: bytes  # payloads back to back
    packets: list  # n x Packet, each .data its own bytes object
    caplen_origlen: bytes  # n x (u32 caplen, u32 orig_len): the objects-mode length stream

    @property
    def count(self) -> int:
        return len(self.caplens) // 4


@dataclass
class Workload:
    name: str
    batches: list[Batch] = field(default_factory=list)
    skipped: str | None = None  # reason, when the workload could not be built
    label: str = ""  # x-axis label in the plot

    @property
    def pool_packets(self) -> int:
        return sum(b.count for b in self.batches)

    @property
    def pool_bytes(self) -> int:
        return sum(len(b.data) for b in self.batches)

    @property
    def mean_size(self) -> float:
        return self.pool_bytes / max(1, self.pool_packets)

    @property
    def max_batch_bytes(self) -> int:
        """Largest batch payload: transports size their buffers from it."""
        return max((len(b.data) for b in self.batches), default=0)

    @property
    def max_packet_bytes(self) -> int:
        return max((max(struct.unpack(f"<{b.count}I", b.caplens)) for b in self.batches), default=0)


def _build(name: str, label: str, timestamps, sizes, payload: bytes, orig_lens=None) -> Workload:
    """Cut parallel arrays into batches of BATCH_PACKETS."""
    timestamps = np.asarray(timestamps, dtype="<u8")
    sizes = np.asarray(sizes, dtype="<u4")
    orig_lens = sizes if orig_lens is None else np.asarray(orig_lens, dtype="<u4")
    offsets = np.concatenate(([0], np.cumsum(sizes, dtype=np.int64)))
    work = Workload(name=name, label=label)
    for start in range(0, len(sizes), BATCH_PACKETS):
        stop = min(start + BATCH_PACKETS, len(sizes))
        blob = payload[offsets[start] : offsets[stop]]
        ts = timestamps[start:stop]
        caplens = sizes[start:stop]
        origs = orig_lens[start:stop]
        packets = []
        for i in range(stop - start):
            lo = int(offsets[start + i] - offsets[start])
            packets.append(Packet(int(ts[i]), blob[lo : lo + int(caplens[i])], int(origs[i])))
        interleaved = np.empty((stop - start, 2), dtype="<u4")
        interleaved[:, 0] = caplens
        interleaved[:, 1] = origs
        work.batches.append(
            Batch(
                timestamps=ts.tobytes(),
                caplens=caplens.tobytes(),
                data=bytes(blob),
                packets=packets,
                caplen_origlen=interleaved.tobytes(),
            )
        )
    return work


def synthetic(name: str, label: str, sizes, rng: np.random.Generator) -> Workload:
    sizes = np.asarray(sizes, dtype=np.int64)
    gaps = rng.integers(50, 5_000, size=len(sizes), dtype=np.int64)
    timestamps = TS_BASE_NS + np.cumsum(gaps)
    payload = rng.integers(0, 256, size=int(sizes.sum()), dtype=np.uint8).tobytes()
    return _build(name, label, timestamps, sizes, payload)


def _read_pcap(path: Path):
    """(ts_ns, data, orig_len) per packet: the project's reader if present, else dpkt."""
    try:
        from packet_ipc.pcap import open_capture  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - any failure: fall back to dpkt
        open_capture = None
    if open_capture is not None:
        try:
            out = []
            with open_capture(str(path)) as capture:
                for p in capture:
                    out.append((int(p.timestamp), bytes(p.data), int(getattr(p, "orig_len", len(p.data)))))
            return out, "packet_ipc.pcap.open_capture"
        except Exception:  # noqa: BLE001 - the project's reader is in progress; dpkt is the fallback
            pass
    import dpkt

    out = []
    with open(path, "rb") as f:
        for ts, buf in dpkt.pcap.Reader(f):
            # dpkt hands back a float (or Decimal) timestamp and no orig_len: exact enough here,
            # since the timestamps are only data to move and verify.
            out.append((int(round(float(ts) * 1e9)), bytes(buf), len(buf)))
    return out, "dpkt"


def pcap_replay(path: Path = PCAP_PATH) -> Workload:
    if not path.exists():
        return Workload(name="pcap", label="pcap", skipped=f"capture not found: {path}")
    try:
        records, reader = _read_pcap(path)
    except ImportError as exc:
        return Workload(name="pcap", label="pcap", skipped=f"no pcap reader: {exc}")
    if not records:
        return Workload(name="pcap", label="pcap", skipped=f"empty capture: {path}")
    ts = [r[0] for r in records]
    sizes = [len(r[1]) for r in records]
    origs = [r[2] for r in records]
    work = _build("pcap", "", ts, sizes, b"".join(r[1] for r in records), origs)
    work.label = f"pcap\n(mean {work.mean_size:.0f} B)"
    work.reader = reader  # type: ignore[attr-defined]
    return work


WORKLOAD_NAMES = ("64", "imix", "1518", "pcap")


def build(names, pool_packets: int = 16384) -> list[Workload]:
    """Build the named workloads with fixed seeds (same bytes on every run)."""
    out = []
    for name in names:
        rng = np.random.default_rng([SEED, WORKLOAD_NAMES.index(name)])
        if name == "64":
            out.append(synthetic("64", "64 B", np.full(pool_packets, 64), rng))
        elif name == "1518":
            out.append(synthetic("1518", "1518 B", np.full(pool_packets // 2, 1518), rng))
        elif name == "imix":
            # 7:4:1 of 64/594/1518 in a fixed pseudo-random order.
            sizes = rng.choice(np.array([64, 594, 1518]), size=pool_packets, p=[7 / 12, 4 / 12, 1 / 12])
            w = synthetic("imix", "", sizes, rng)
            w.label = f"IMIX\n(mean {w.mean_size:.0f} B)"
            out.append(w)
        elif name == "pcap":
            out.append(pcap_replay())
        else:
            raise ValueError(f"unknown workload {name!r}; known: {', '.join(WORKLOAD_NAMES)}")
    return out
