"""The shapes of capture files: the record type, magic numbers, block types and their structs."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

# CaptureError(PacketIpcError, ValueError): its message is one line naming the file, the byte offset of
# the damage and the index of the packet being read (the number of packets read before it).

if TYPE_CHECKING:
    pass


@dataclass(frozen=True, slots=True)
class CaptureRecord:
    """One packet as read from a capture file.

    ``timestamp`` is in nanoseconds since the Unix epoch, exact (never a float); ``data`` holds the
    captured bytes (caplen is ``len(data)``); ``orig_len`` is the length on the wire; ``linktype`` the
    pcap ``LINKTYPE_*`` of the packet's interface; ``ifindex`` the interface's index in the file
    (counted across all pcapng sections; always 0 for classic pcap).
    """

    timestamp: int
    data: bytes
    orig_len: int
    linktype: int
    ifindex: int



# Building a frozen dataclass through its __init__ goes through object.__setattr__ once per field,
# about twice as slow as filling the slots directly; the readers below do the latter.
_new_record = object.__new__
_set_timestamp = CaptureRecord.timestamp.__set__  # type: ignore[attr-defined,misc]
_set_data = CaptureRecord.data.__set__  # type: ignore[attr-defined,misc]
_set_orig_len = CaptureRecord.orig_len.__set__  # type: ignore[attr-defined,misc]
_set_linktype = CaptureRecord.linktype.__set__  # type: ignore[attr-defined,misc]
_set_ifindex = CaptureRecord.ifindex.__set__  # type: ignore[attr-defined,misc]

#: Largest captured length accepted for one packet (256 MiB); anything larger is a corrupt length field.
MAX_CAPLEN = 256 * 1024 * 1024

_CHUNK_BYTES = 1 << 20  # read size when parsing a stream that cannot be mapped
_WRITE_BUFFER_BYTES = 1 << 20  # the writer hands its buffer to the file beyond this

# Classic pcap magics, as read with a little-endian "<I".
_PCAP_MAGICS = {
    # magic: (byte order, nanosecond, record header length)
    0xA1B2C3D4: ("<", False, 16),
    0xD4C3B2A1: (">", False, 16),
    0xA1B23C4D: ("<", True, 16),
    0x4D3CB2A1: (">", True, 16),
    0xA1B2CD34: ("<", False, 24),  # Kuznetzov's "modified" pcap: 8 more bytes per record header
    0x34CDB2A1: (">", False, 24),
}
_PCAPNG_SHB = 0x0A0D0D0A  # the same read in either byte order
_PCAPNG_BOM = 0x1A2B3C4D
_BT_IDB = 1
_BT_PB = 2  # obsolete Packet Block
_BT_SPB = 3
_BT_EPB = 6
_OPT_END = 0
_OPT_IF_TSRESOL = 9
_OPT_IF_TSOFFSET = 14
_MAX_BLOCK_BYTES = MAX_CAPLEN + (1 << 20)  # a packet block may carry options beyond its data

# magic, version major, minor, thiszone, sigfigs, snaplen, network (linktype)
_PCAP_FILE_HEADER = struct.Struct("<IHHiIII")
_U32_LE = struct.Struct("<I")


def _structs(order: str) -> dict[str, struct.Struct]:
    return {
        "file_header": struct.Struct(order + "IHHiIII"),
        "record16": struct.Struct(order + "IIII"),
        "record24": struct.Struct(order + "IIII8x"),
        "block": struct.Struct(order + "II"),
        "u32": struct.Struct(order + "I"),
        "shb": struct.Struct(order + "IIIHH"),
        "idb": struct.Struct(order + "HHI"),
        "option": struct.Struct(order + "HH"),
        "i64": struct.Struct(order + "q"),
        "epb": struct.Struct(order + "IIIII"),
        "pb": struct.Struct(order + "HHIIII"),
    }


_STRUCTS = {"<": _structs("<"), ">": _structs(">")}


class _Interface:
    """A pcapng interface: its link type, snaplen and how to turn its timestamp ticks into ns."""

    __slots__ = ("linktype", "snaplen", "multiplier", "divisor", "offset_ns", "ifindex")

    def __init__(self, linktype: int, snaplen: int, ifindex: int) -> None:
        self.linktype = linktype
        self.snaplen = snaplen
        self.ifindex = ifindex
        # ns = ticks * multiplier // divisor + offset_ns; the default resolution is microseconds.
        self.multiplier = 1000
        self.divisor = 1
        self.offset_ns = 0
