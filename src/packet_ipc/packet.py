"""Packets: the :class:`AsIpcPacket` protocol and the concrete :class:`Packet`.

Anything with ``timestamp`` (int ns since the Unix epoch) and ``data`` (a buffer) can be sent; ``orig_len``
(the wire length) is optional. :class:`Packet` is implemented in C (``packet_ipc._core``): cheap to create,
and on the receiving side a view into the shared ring with no copy.

Lifetime of received data: a received packet's ``data`` is a read-only memoryview of the shared ring. It
stays valid as long as the packet object, or any memoryview taken from it, is alive; the ring space of a
received batch goes back to the server when the last of its packets and views is gone. Hold packets
briefly, or copy (``packet.tobytes()``) what you keep: unreleased packets hold ring space and, under the
lossless ``"block"`` policy, eventually make the server wait.
"""

from __future__ import annotations

import sys
from typing import Protocol, Union, runtime_checkable

if sys.version_info >= (3, 12):
    from collections.abc import Buffer
else:  # Python 3.11: the buffer protocol has no ABC yet; these are the common exporters
    Buffer = Union[bytes, bytearray, memoryview]

from ._core import Packet

__all__ = ["AsIpcPacket", "Buffer", "Packet"]


@runtime_checkable
class AsIpcPacket(Protocol):
    """What a packet must offer to be sent: ``timestamp`` (int ns) and ``data`` (a buffer).

    ``orig_len`` (int, the length on the wire) is optional and defaults to ``len(data)``.
    """

    @property
    def timestamp(self) -> int:
        """Capture time, nanoseconds since the Unix epoch."""
        ...

    @property
    def data(self) -> Buffer:
        """The captured bytes."""
        ...
