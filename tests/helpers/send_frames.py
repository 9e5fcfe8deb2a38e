"""Writes Ethernet frames, in order, into an interface through a raw socket (run inside a test's network
namespace): ``python send_frames.py IFACE FILE``, FILE holding each frame as a little-endian u32 length then
its bytes. The live-capture tests send their known frames with it."""

import socket
import struct
import sys

if __name__ == "__main__":
    iface, path = sys.argv[1], sys.argv[2]
    with open(path, "rb") as f:
        blob = f.read()
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((iface, 0))
        pos = 0
        while pos < len(blob):
            (n,) = struct.unpack_from("<I", blob, pos)
            s.send(blob[pos + 4 : pos + 4 + n])
            pos += 4 + n
