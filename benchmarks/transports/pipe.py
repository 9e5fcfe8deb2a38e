"""multiprocessing.Pipe peer: a one-way ``os.pipe`` wrapped by ``multiprocessing.connection``.

Batch mode sends two messages per batch (header + columns, then the payload blob: ``send_bytes``
writes large buffers without concatenating them); objects mode one message per packet. The pipe
buffer is raised to the unprivileged maximum (``/proc/sys/fs/pipe-max-size``, usually 1 MiB) with
``F_SETPIPE_SZ``, since the 64 KiB default would be an unfair handicap next to 8 MiB rings.
"""

from __future__ import annotations

import fcntl

from . import CAPACITY_BYTES, END, PACKET_HEADER, Consumer, Producer, Transport, batch_header
from ..workloads import Packet

_pack_header = PACKET_HEADER.pack
_unpack_header = PACKET_HEADER.unpack_from
_HSIZE = PACKET_HEADER.size


def _grow_pipe(fd: int) -> int:
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            limit = int(f.read())
    except OSError:
        limit = 1 << 20
    try:
        return fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, min(limit, CAPACITY_BYTES))
    except (OSError, AttributeError):
        return -1


class _Producer(Producer):
    def __init__(self, conn) -> None:
        self.conn = conn

    def send_batch(self, batch) -> None:
        send = self.conn.send_bytes
        send(batch_header(batch) + batch.timestamps + batch.caplens)
        send(batch.data)

    def send_packets(self, packets) -> None:
        send = self.conn.send_bytes
        for p in packets:
            send(_pack_header(p.timestamp, p.orig_len) + p.data)

    def end(self) -> None:
        self.conn.send_bytes(END)


class _Consumer(Consumer):
    def __init__(self, conn) -> None:
        self.conn = conn

    def recv_batch(self):
        meta = self.conn.recv_bytes()
        if len(meta) < 8:
            return None
        count = int.from_bytes(meta[0:4], "little")
        mv = memoryview(meta)
        return mv[8 : 8 + 8 * count], mv[8 + 8 * count : 8 + 12 * count], self.conn.recv_bytes()

    def consume_packets(self, on_packet) -> None:
        recv = self.conn.recv_bytes
        while True:
            frame = recv()
            if len(frame) < _HSIZE:
                return
            ts, orig_len = _unpack_header(frame)
            on_packet(Packet(ts, frame[_HSIZE:], orig_len))


class PipeTransport(Transport):
    name = "pipe"
    label = "mp.Pipe"
    method = "os.pipe (F_SETPIPE_SZ to pipe-max-size), send_bytes/recv_bytes, blocking"

    def make_channel(self, ctx):
        reader, writer = ctx.Pipe(duplex=False)
        _grow_pipe(writer.fileno())
        return reader, writer

    def producer(self, channel, rendezvous):
        return _Producer(channel[1])

    def consumer(self, channel, rendezvous):
        return _Consumer(channel[0])


TRANSPORT = PipeTransport
