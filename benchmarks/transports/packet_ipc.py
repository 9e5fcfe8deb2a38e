"""packet-ipc, the library under test: one SPSC shared-memory ring per connection.

Batch mode wraps each pre-built batch with ``PacketBatch.from_buffers`` (part of the timed cost) and
sends it with ``Connection.send_batch``; the consumer takes batches of up to 256 packets with
``Client.receive_batch`` and reads the columns and the contiguous payload view in place before
releasing the batch. Objects mode sends lists of 256 packet objects with ``Connection.send`` and
receives them with ``Client.receive_packets(256)``. Inplace mode (zero-copy send) reserves the batch's
descriptors and bytes in the ring with ``Connection.reserve``, writes the columns and the payload into its
views and commits; the consumer is batch mode's. The ring is 8 MiB, the budget every peer gets.
"""

from __future__ import annotations

import packet_ipc as pipc

from . import CAPACITY_BYTES, Consumer, Producer, Transport

_TIMEOUT = 30


class _Producer(Producer):
    def __init__(self, rendezvous) -> None:
        self.server = pipc.Server(capacity=CAPACITY_BYTES)
        rendezvous.send(self.server.name)
        self.conn = self.server.accept(timeout=_TIMEOUT)
        self._from_buffers = pipc.PacketBatch.from_buffers

    def send_batch(self, batch) -> None:
        self.conn.send_batch(self._from_buffers(batch.timestamps, batch.caplens, batch.data))

    def send_inplace(self, batch) -> None:
        n = batch.count
        r = self.conn.reserve(n, len(batch.data), _TIMEOUT)
        r.ts_ns[:] = memoryview(batch.timestamps).cast("Q")
        r.caplen[:] = memoryview(batch.caplens).cast("I")
        r.data[:] = batch.data
        r.commit(n)

    def send_packets(self, packets) -> None:
        self.conn.send(packets)

    def end(self) -> None:
        self.conn.send(None)

    def close(self) -> None:
        self.conn.close()
        self.server.close()


class _Consumer(Consumer):
    def __init__(self, rendezvous) -> None:
        self.client = pipc.Client(rendezvous.recv())
        self.batch = None

    def recv_batch(self, max_packets: int = 256):
        batch = self.client.receive_batch(max_packets, timeout=_TIMEOUT)
        if batch is None:
            return None
        self.batch = batch
        return batch.timestamps, batch.caplens, batch.data

    def release(self) -> None:
        batch, self.batch = self.batch, None
        batch.release()  # hands the ring space back to the producer; the views die here

    def consume_packets(self, on_packet) -> None:
        receive = self.client.receive_packets
        while (packets := receive(256)) is not None:
            for p in packets:
                on_packet(p)

    def close(self) -> None:
        self.client.close()


class PacketIpcTransport(Transport):
    name = "packet_ipc"
    label = "packet-ipc"
    inplace = True
    method = "8 MiB SPSC ring in a memfd, send_batch/receive_batch or send/receive_packets, spin then eventfd"

    def producer(self, channel, rendezvous):
        return _Producer(rendezvous)

    def consumer(self, channel, rendezvous):
        return _Consumer(rendezvous)


TRANSPORT = PacketIpcTransport
