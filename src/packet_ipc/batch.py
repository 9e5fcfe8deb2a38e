"""Columnar batches of packets: :class:`PacketBatch` (implemented in C, ``packet_ipc._core``).

A batch holds ``timestamps`` (uint64 ns), ``caplens``/``origlens``/``linktypes``/``ifindexes`` (uint32) and
``offsets`` (uint64) as memoryviews (so ``numpy.frombuffer`` works; NumPy is not required), and ``data``: every
payload back to back in one buffer. A received batch's ``data`` is the shared ring itself (no copy), so it can
be hashed or scanned in one call. Build batches with :meth:`PacketBatch.from_packets` or
:meth:`PacketBatch.from_buffers`; ``len()``, indexing and iteration give :class:`~packet_ipc.Packet` objects.
A batch is immutable but for :meth:`PacketBatch.release`, and may be read from several threads at once.
"""

from __future__ import annotations

from ._core import PacketBatch

__all__ = ["PacketBatch"]
