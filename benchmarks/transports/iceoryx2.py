"""iceoryx2 peer: zero-copy publish-subscribe of ``Slice[c_uint8]`` samples in shared memory.

The producer loans a sample of the right size from its data segment, ``memmove``s the framed batch
(or packet) into it and sends it; the consumer receives the sample, reads it in place through a
memoryview and then releases it. The service is made lossless (``enable_safe_overflow(False)`` and the
publisher's ``RetryUntilDelivered`` backpressure), with a subscriber buffer of about 8 MiB of messages.
The Python binding has no blocking receive on a pub-sub port (waiting would need a separate event
service and a notify per sample), so the consumer polls: ``receive()`` then ``sched_yield`` when empty.
That keeps a core busy, which on this 2-core machine is the producer's competition too.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import time

import iceoryx2 as iox2

from . import CAPACITY_BYTES, END, PACKET_HEADER, Consumer, Producer, Transport, batch_header
from ..workloads import Packet

_pack_header = PACKET_HEADER.pack
_unpack_header = PACKET_HEADER.unpack_from
_HSIZE = PACKET_HEADER.size
_memmove = ctypes.memmove
_string_at = ctypes.string_at
_TIMEOUT_S = 30.0
_counter = itertools.count()

iox2.set_log_level_from_env_or(iox2.LogLevel.Error)


def _service(node, name: str, buffer: int):
    return (
        node.service_builder(iox2.ServiceName.new(name))
        .publish_subscribe(iox2.Slice[ctypes.c_uint8])
        .enable_safe_overflow(False)
        .history_size(0)
        .subscriber_max_buffer_size(buffer)
        .subscriber_max_borrowed_samples(2)
        .max_publishers(1)
        .max_subscribers(1)
        .open_or_create()
    )


class _Producer(Producer):
    def __init__(self, name: str, buffer: int, max_slice: int) -> None:
        self.node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        self.service = _service(self.node, name, buffer)
        self.pub = (
            self.service.publisher_builder()
            .initial_max_slice_len(max_slice)
            .allocation_strategy(iox2.AllocationStrategy.Static)
            .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
            .max_loaned_samples(2)
            .create()
        )

    def _send_parts(self, parts, total: int) -> None:
        sample = self.pub.loan_slice_uninit(total)
        ptr = sample.payload_ptr
        for part in parts:
            n = len(part)
            _memmove(ptr, part, n)
            ptr += n
        sample.assume_init().send()

    def send_batch(self, batch) -> None:
        header = batch_header(batch)
        self._send_parts(
            (header, batch.timestamps, batch.caplens, batch.data),
            len(header) + 12 * batch.count + len(batch.data),
        )

    def send_inplace(self, batch) -> None:
        self.send_batch(batch)  # already its zero-copy send: loan, write in place, send

    def send_packets(self, packets) -> None:
        loan = self.pub.loan_slice_uninit
        for p in packets:
            data = p.data
            n = len(data)
            frame = _pack_header(p.timestamp, p.orig_len) + data
            sample = loan(_HSIZE + n)
            _memmove(sample.payload_ptr, frame, _HSIZE + n)
            sample.assume_init().send()

    def end(self) -> None:
        self._send_parts((END,), len(END))

    def close(self) -> None:
        self.pub.delete()
        # Dropping the last references runs the Rust destructors, which remove the node's files;
        # a forked child ends with os._exit, so nothing would do it later.
        self.service = None
        self.node = None


class _Consumer(Consumer):
    def __init__(self, name: str, buffer: int) -> None:
        self.node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        self.service = _service(self.node, name, buffer)
        self.sub = self.service.subscriber_builder().buffer_size(buffer).create()
        self.sample = None

    def _receive(self):
        receive = self.sub.receive
        sample = receive()
        if sample is not None:
            return sample
        deadline = time.monotonic() + _TIMEOUT_S
        spins = 0
        while sample is None:
            os.sched_yield()
            sample = receive()
            spins += 1
            if spins & 0xFFFF == 0 and time.monotonic() > deadline:
                raise TimeoutError("iceoryx2: no sample within 30 s")
        return sample

    def recv_batch(self):
        sample = self._receive()
        mv = sample.payload().as_memory_view().cast("B")
        if len(mv) < 8:
            sample.delete()
            return None
        self.sample = sample
        count = int.from_bytes(mv[0:4], "little")
        return mv[8 : 8 + 8 * count], mv[8 + 8 * count : 8 + 12 * count], mv[8 + 12 * count :]

    def release(self) -> None:
        self.sample.delete()  # returns the chunk to the publisher; views into it are dead now
        self.sample = None

    def consume_packets(self, on_packet) -> None:
        receive = self._receive
        while True:
            sample = receive()
            # string_at copies the (small) frame out in C: about 3x cheaper than the binding's
            # payload().as_memory_view(), which builds a new ctypes array type on every call.
            frame = _string_at(sample.payload_ptr, sample.header.number_of_elements)
            sample.delete()
            if len(frame) < _HSIZE:
                return
            ts, orig_len = _unpack_header(frame)
            on_packet(Packet(ts, frame[_HSIZE:], orig_len))

    def close(self) -> None:
        self.sub.delete()
        # Dropping the last references runs the Rust destructors, which remove the node's files;
        # a forked child ends with os._exit, so nothing would do it later.
        self.service = None
        self.node = None


class Iceoryx2Transport(Transport):
    name = "iceoryx2"
    label = "iceoryx2"
    inplace = True
    method = "Slice[u8] samples, loan + memmove + send, lossless backpressure, consumer polls with sched_yield"

    @property
    def buffer(self) -> int:
        return max(2, min(4096, CAPACITY_BYTES // self.max_message_bytes))

    def make_channel(self, ctx):
        return f"pipc-bench/{os.getpid()}/{next(_counter)}"

    def producer(self, channel, rendezvous):
        p = _Producer(channel, self.buffer, self.max_message_bytes)
        rendezvous.send("service")
        rendezvous.recv()  # the subscriber exists: no sample can be sent before it
        p.pub.update_connections()
        return p

    def consumer(self, channel, rendezvous):
        rendezvous.recv()  # the producer created the service with its settings
        c = _Consumer(channel, self.buffer)
        rendezvous.send("subscribed")
        return c


TRANSPORT = Iceoryx2Transport
