"""packet-ipc: move captured packets between processes through shared memory, with no copy on receive.

A :class:`Server` is created first and has a ``name``; :meth:`Server.accept` waits for a :class:`Client` and
gives a :class:`Connection`; ``connection.send(packets)`` sends a batch and ``connection.send(None)`` ends the
stream; ``client.receive_packets(n)`` returns up to ``n`` packets, or ``None`` once the server has finished.
Errors live in :mod:`packet_ipc.errors`.
"""

from __future__ import annotations

from importlib.metadata import version as _distribution_version
from pathlib import Path

from . import errors
from ._core import ABI_VERSION, WIRE_VERSION
from .batch import PacketBatch
from .client import Client
from .errors import (
    ClosedError,
    ConnectError,
    ConnectionLostError,
    PacketIpcError,
    PermissionDeniedError,
    ProtocolError,
    TimeoutError,
)
from .packet import AsIpcPacket, Packet
from .server import Connection, Reservation, Server, transfer_ipc
from .stats import Stats

# The release comes from the installed metadata, which setup.py took from PACKET_IPC_VERSION in packet_ipc.h.
__version__: str = _distribution_version("packet-ipc")

__all__ = [
    "ABI_VERSION",
    "WIRE_VERSION",
    "AsIpcPacket",
    "Client",
    "ClosedError",
    "ConnectError",
    "Connection",
    "Reservation",
    "ConnectionLostError",
    "Packet",
    "PacketBatch",
    "PacketIpcError",
    "PermissionDeniedError",
    "ProtocolError",
    "Server",
    "Stats",
    "TimeoutError",
    "errors",
    "get_include",
    "get_library_dir",
    "transfer_ipc",
]


def get_include() -> str:
    """Directory holding ``packet_ipc.h`` (the C ABI), for ``-I``."""
    return str(Path(__file__).resolve().parent / "include")


def get_library_dir() -> str:
    """Directory holding ``libpacketipc.so``, for ``-L`` and ``-Wl,-rpath``."""
    return str(Path(__file__).resolve().parent / "lib")
