"""pyzmq peer: PUSH/PULL over ``ipc://`` (a Unix socket), one context per process.

Batch mode sends one multipart message per batch (header, timestamps, lengths, payloads) with
``copy=False``, so the large payload part goes out without a Python-side copy; the consumer reads the
parts as zero-copy frames. Objects mode sends one single-part message per packet. High-water marks are
set so that about 8 MiB are queued at most on each side.
"""

from __future__ import annotations

import os
import tempfile

import zmq

from . import CAPACITY_BYTES, END, PACKET_HEADER, Consumer, Producer, Transport, batch_header
from ..workloads import Packet

_pack_header = PACKET_HEADER.pack
_unpack_header = PACKET_HEADER.unpack_from
_HSIZE = PACKET_HEADER.size


class _Producer(Producer):
    def __init__(self, address: str, hwm: int, rendezvous) -> None:
        self.rendezvous = rendezvous
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, hwm)
        self.sock.setsockopt(zmq.LINGER, -1)  # deliver everything before close returns
        self.sock.connect(address)

    def send_batch(self, batch) -> None:
        self.sock.send_multipart(
            (batch_header(batch), batch.timestamps, batch.caplens, batch.data), copy=False
        )

    def send_packets(self, packets) -> None:
        send = self.sock.send
        for p in packets:
            send(_pack_header(p.timestamp, p.orig_len) + p.data)

    def end(self) -> None:
        self.sock.send(END)

    def close(self) -> None:
        # Closing the PUSH socket while the PULL side is throttled at its high-water mark lost the
        # tail of the stream now and then (the consumer then waited for end of stream forever), so
        # the producer closes only once the consumer confirms it saw end of stream. Not timed.
        if self.rendezvous.poll(60):
            self.rendezvous.recv()
        self.sock.close()
        self.ctx.term()


class _Consumer(Consumer):
    def __init__(self, address: str, hwm: int, rendezvous) -> None:
        self.rendezvous = rendezvous
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.RCVHWM, hwm)
        self.sock.bind(address)

    def recv_batch(self):
        parts = self.sock.recv_multipart(copy=False)
        if len(parts) < 4:
            self.rendezvous.send("end seen")
            return None
        return parts[1].buffer, parts[2].buffer, parts[3].buffer

    def consume_packets(self, on_packet) -> None:
        recv = self.sock.recv
        while True:
            frame = recv()
            if len(frame) < _HSIZE:
                self.rendezvous.send("end seen")
                return
            ts, orig_len = _unpack_header(frame)
            on_packet(Packet(ts, frame[_HSIZE:], orig_len))

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


class ZmqTransport(Transport):
    name = "zmq"
    label = "zmq ipc"
    method = "PUSH/PULL over ipc://, multipart copy=False for batches, HWM ~8 MiB, blocking"

    @property
    def hwm(self) -> int:
        return max(4, CAPACITY_BYTES // self.max_message_bytes // 2)

    def make_channel(self, ctx):
        path = os.path.join(tempfile.mkdtemp(prefix="pipc-bench-zmq-"), "sock")
        return f"ipc://{path}"

    def producer(self, channel, rendezvous):
        rendezvous.recv()  # the consumer has bound
        return _Producer(channel, self.hwm, rendezvous)

    def consumer(self, channel, rendezvous):
        c = _Consumer(channel, self.hwm, rendezvous)
        rendezvous.send("bound")
        return c


TRANSPORT = ZmqTransport
