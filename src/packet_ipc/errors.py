"""Exceptions of packet-ipc: one hierarchy rooted at :class:`PacketIpcError`.

Every error is an :class:`OSError` subclass carrying ``errno`` and a readable message, so callers can catch
the precise class, the root, or the builtin family (``ConnectionError``, ``TimeoutError``,
``PermissionError``). Bad arguments (a packet larger than the ring, a malformed packet object) raise the
builtin ``ValueError`` / ``TypeError`` and leave the connection usable.
"""

from __future__ import annotations

import builtins
import errno as _errno

__all__ = [
    "PacketIpcError",
    "ConnectError",
    "PermissionDeniedError",
    "ConnectionLostError",
    "ProtocolError",
    "TimeoutError",
    "ClosedError",
    "CaptureError",
    "from_code",
    "AddressError",
]


class PacketIpcError(OSError):
    """Root of every packet-ipc error."""


class ConnectError(PacketIpcError, builtins.ConnectionError):
    """A client could not connect: no server at that name, refused, or the server vanished mid-handshake."""


class PermissionDeniedError(ConnectError, builtins.PermissionError):
    """The server refused the client's credentials (SO_PEERCRED uid/gid not allowed)."""


class ConnectionLostError(PacketIpcError, builtins.ConnectionError):
    """The peer vanished without end of stream (killed, crashed, or closed its socket).

    A client raises it only after it has drained every packet the server committed. Raised by a send,
    ``sent`` counts the packets that call wrote before it noticed.
    """

    sent: int = 0


class ProtocolError(PacketIpcError):
    """The peer broke the protocol: wire version mismatch, a corrupt ring, or a peer that is not packet-ipc.

    The connection is unusable afterwards; the other connections of a server are not affected.
    """


class TimeoutError(PacketIpcError, builtins.TimeoutError):  # noqa: A001 - deliberately mirrors the builtin
    """A blocking call did not complete within its timeout. ``sent`` (on send) counts packets written."""

    sent: int = 0


class ClosedError(PacketIpcError, ValueError):
    """The object was closed (or the stream already ended) and cannot be used for this call."""


class CaptureError(PacketIpcError, ValueError):
    """A capture file is malformed: bad magic, unsupported version, a record cut short, an absurd length."""


class AddressError(PacketIpcError):
    """A network address cannot be used: the host does not resolve, the port is in use, binding is refused.

    Raised by PCAP-over-IP (:mod:`packet_ipc.pcap_over_ip`) before anything is sent or received."""


def from_code(code: int, message: str, during: str | None = None) -> Exception:
    """The exception for an errno-style code of the C core (``pipc_strerror``'s codes) and its message.

    The C binding raises what this returns, so the mapping from codes to classes is policy kept here, in
    Python. ``during`` is ``"connect"``, ``"accept"``, ``"listen"`` or ``None`` (a call on an open object): a
    vanished peer is a :class:`ConnectError` while connecting and a :class:`ConnectionLostError` afterwards.
    Bad arguments (a packet larger than the ring or the snaplen, a name too long) are ``ValueError``.
    """
    if code == _errno.ETIMEDOUT:
        return TimeoutError(code, message)
    if code == _errno.EPROTO:
        return ProtocolError(code, message)
    if code in (_errno.EACCES, _errno.EPERM):
        return PermissionDeniedError(code, message)
    if code in (_errno.EMSGSIZE, _errno.ENAMETOOLONG, _errno.EINVAL):
        return ValueError(message)
    if code == _errno.ENOMEM:
        return MemoryError(message)  # keeps the reason (e.g. no memory for a ring)
    if code == _errno.EPIPE:
        return ClosedError(code, message)
    if code in (_errno.ECONNRESET, _errno.ENOENT, _errno.ECONNREFUSED):
        return ConnectError(code, message) if during else ConnectionLostError(code, message)
    return ConnectError(code, message) if during == "connect" else PacketIpcError(code, message)
