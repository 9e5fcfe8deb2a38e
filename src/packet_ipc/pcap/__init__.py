"""Capture files in and out: the pure-Python pcap and pcapng reader and writer.

This package (reader.py, writer.py, _format.py) is the edge of the system where packets enter from, or leave to, capture files. It turns a
classic pcap file (microsecond or nanosecond, either byte order, also the Kuznetzov "modified" variant) or a
pcapng file (any number of sections, each in its own byte order, several interfaces with their own
link types and timestamp resolutions) into a stream of :class:`CaptureRecord` objects whose timestamps are
exact integer nanoseconds, and writes such records back out as pcap or pcapng, also to a non-seekable
stream so that ``tcpdump -r -`` can follow it live. It depends on the standard library only: a file named by
path is mapped with ``mmap`` and parsed in place with precompiled ``struct.Struct`` objects; a file object
is read in large chunks. Damage in a file is reported as :class:`CaptureError`, never as garbage records.
"""

from __future__ import annotations

import os
from typing import IO, Any, BinaryIO

# CaptureError(PacketIpcError, ValueError): its message is one line naming the file, the byte offset of
# the damage and the index of the packet being read (the number of packets read before it).
from ..errors import CaptureError
from ._format import MAX_CAPLEN, CaptureRecord
from .reader import CaptureReader
from .writer import CaptureWriter

__all__ = [
    "CaptureError",
    "CaptureRecord",
    "CaptureReader",
    "CaptureWriter",
    "open_capture",
    "read_capture",
    "MAX_CAPLEN",
]


def _source_name(source: Any) -> str:
    if isinstance(source, (str, bytes, os.PathLike)):
        return os.fsdecode(source)
    name = getattr(source, "name", None)
    return os.fsdecode(name) if isinstance(name, (str, bytes)) else f"<{type(source).__name__}>"


def open_capture(path: str | os.PathLike[str] | BinaryIO) -> CaptureReader:
    """Open a pcap or pcapng capture, recognised by its magic number, and parse its file header.

    ``path`` is a file name (the file is memory-mapped and closed by :meth:`CaptureReader.close`) or a
    binary file object such as ``sys.stdin.buffer`` (read in chunks from its current position, left open).
    Opening a file name does not block; opening a pipe blocks until its header has arrived.

    Raises ``FileNotFoundError`` (and other ``OSError``) from opening the file, and
    :class:`CaptureError` for an empty file, an unknown magic number, a truncated file header or an
    unsupported format version.
    """
    if isinstance(path, (str, bytes, os.PathLike)):
        file: IO[bytes] = open(path, "rb")
        return CaptureReader(_source_name(path), file, owns_file=True)
    return CaptureReader(_source_name(path), path, owns_file=False)


def read_capture(path: str | os.PathLike[str] | BinaryIO) -> list[CaptureRecord]:
    """Read every record of a capture into a list.

    All or nothing: if the file is damaged anywhere this raises :class:`CaptureError` and returns no
    partial data (use :func:`open_capture` and iterate to get the records before the damage).
    Raises ``FileNotFoundError`` for a missing file.
    """
    with open_capture(path) as reader:
        return list(reader)
