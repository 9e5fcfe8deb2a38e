"""multiprocessing.Queue peer: pickling plus a feeder thread writing into a pipe.

Used as people use it: ``put`` a tuple, ``get`` a tuple. Batch mode puts one
(timestamps, caplens, data) tuple per batch; objects mode one (timestamp, data, orig_len) tuple per
packet. The queue is bounded (``maxsize``) so that about 8 MiB are in flight at most, like the others;
unbounded, the producer would only fill its own heap.
"""

from __future__ import annotations

from . import CAPACITY_BYTES, Consumer, Producer, Transport
from ..workloads import Packet


class _Producer(Producer):
    def __init__(self, q) -> None:
        self.q = q

    def send_batch(self, batch) -> None:
        self.q.put((batch.timestamps, batch.caplens, batch.data))

    def send_packets(self, packets) -> None:
        put = self.q.put
        for p in packets:
            put((p.timestamp, p.data, p.orig_len))

    def end(self) -> None:
        self.q.put(None)

    def close(self) -> None:
        self.q.close()
        self.q.join_thread()  # the feeder thread must flush before the process exits


class _Consumer(Consumer):
    def __init__(self, q) -> None:
        self.q = q

    def recv_batch(self):
        return self.q.get()

    def consume_packets(self, on_packet) -> None:
        get = self.q.get
        while (item := get()) is not None:
            on_packet(Packet(*item))


class QueueTransport(Transport):
    name = "queue"
    label = "mp.Queue"
    method = "pickled tuples, feeder thread + pipe, maxsize ~8 MiB in flight, blocking"

    def make_channel(self, ctx):
        return ctx.Queue(maxsize=max(2, CAPACITY_BYTES // self.max_message_bytes))

    def producer(self, channel, rendezvous):
        return _Producer(channel)

    def consumer(self, channel, rendezvous):
        return _Consumer(channel)


TRANSPORT = QueueTransport
