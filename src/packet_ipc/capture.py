"""Live capture into the IPC: libpcap through ``pcapy-ng``, delivering :class:`PacketBatch` objects.

:func:`open_live` opens an interface with a snap length, an optional BPF filter and promiscuous mode, and
yields batches of what arrived, with the kernel's drop counters available through :meth:`LiveCapture.stats`.
libpcap is the well-kept library for the job (BPF compilation, every link type, TPACKET_V3 underneath);
its headers carry microsecond timestamps through pcapy-ng, so live timestamps are exact to the microsecond.
``pcapy-ng`` is an optional dependency (``pip install packet-ipc[capture]``, needs ``libpcap-dev``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from .batch import PacketBatch
from .errors import PacketIpcError
from .packet import Packet

__all__ = ["CaptureStats", "LiveCapture", "open_live", "CaptureOpenError"]


class CaptureOpenError(PacketIpcError):
    """The interface cannot be captured on: it does not exist, no permission, or a bad BPF filter."""


@dataclass(frozen=True)
class CaptureStats:
    """libpcap's counters: packets received by the filter, dropped by the kernel, dropped by the interface."""

    received: int
    dropped: int
    if_dropped: int


def _pcapy() -> Any:
    try:
        import pcapy  # type: ignore[import-not-found, unused-ignore]
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise CaptureOpenError(
            0, "live capture needs pcapy-ng (pip install 'packet-ipc[capture]'; it builds against libpcap-dev)"
        ) from e
    return pcapy


class LiveCapture:
    """An open live capture. Iterate it (or call :meth:`batches`) for :class:`PacketBatch` objects."""

    def __init__(self, iface: str, snaplen: int, bpf_filter: str | None, promisc: bool, timeout_ms: int) -> None:
        pcapy = _pcapy()
        self.iface = iface
        self.snaplen = snaplen
        try:
            self._p = pcapy.open_live(iface, snaplen, 1 if promisc else 0, timeout_ms)
        except pcapy.PcapError as e:
            raise CaptureOpenError(0, f"cannot capture on {iface!r}: {e}") from None
        if bpf_filter:
            try:
                self._p.setfilter(bpf_filter)
            except pcapy.PcapError as e:
                raise CaptureOpenError(0, f"bad capture filter {bpf_filter!r}: {e}") from None
        self.linktype: int = int(self._p.datalink())

    def read_batch(self, max_packets: int = 256) -> PacketBatch | None:
        """Returns the packets that arrived within the read timeout (at most ``max_packets``), or None."""
        got: list[Packet] = []
        lt = self.linktype

        def on_packet(header: Any, data: bytes) -> None:
            sec, usec = header.getts()
            got.append(Packet(sec * 1_000_000_000 + usec * 1000, data, header.getlen(), lt))

        self._p.dispatch(max_packets, on_packet)
        return PacketBatch.from_packets(got, lt) if got else None

    def batches(
        self, max_packets: int = 256, *, count: int | None = None, duration: float | None = None
    ) -> Iterator[PacketBatch]:
        """Yields batches until ``count`` packets or ``duration`` seconds (forever if neither)."""
        seen = 0
        end = None if duration is None else time.monotonic() + duration
        while (count is None or seen < count) and (end is None or time.monotonic() < end):
            want = max_packets if count is None else min(max_packets, count - seen)
            batch = self.read_batch(want)
            if batch is not None:
                seen += len(batch)
                yield batch

    def __iter__(self) -> Iterator[PacketBatch]:
        return self.batches()

    def stats(self) -> CaptureStats:
        """Kernel counters of this capture (received, dropped by the kernel, dropped by the interface)."""
        received, dropped, if_dropped = self._p.stats()
        return CaptureStats(int(received), int(dropped), int(if_dropped))

    def close(self) -> None:
        """Closes the capture."""
        self._p.close()

    def __enter__(self) -> LiveCapture:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def open_live(
    iface: str, snaplen: int = 262144, bpf_filter: str | None = None, promisc: bool = True, timeout_ms: int = 100
) -> LiveCapture:
    """Opens ``iface`` for live capture through libpcap. Raises :class:`CaptureOpenError` with a clear
    message for an interface that does not exist, missing permission (capturing needs CAP_NET_RAW), or a
    filter libpcap cannot compile."""
    return LiveCapture(iface, snaplen, bpf_filter, promisc, timeout_ms)
