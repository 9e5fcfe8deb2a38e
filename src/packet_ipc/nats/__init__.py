"""Partitioned packet streams over NATS JetStream: packet-ipc beyond one machine.

:class:`Publisher` is a packet-ipc client of a local server that publishes its stream into ``P`` JetStream
streams (one per partition, chosen by the symmetric flow hash, so flows stay whole); :class:`Subscriber` is a
packet-ipc server for local workers fed from durable pull consumers of some or all partitions, acknowledging a
message only once its packets are in the local rings; subscribers of one ``group`` share the partitions through
leases in a key-value bucket. Both are asyncio-native (``await publisher.run()``). The message format is in
:mod:`packet_ipc.nats.wire` and ``docs/wire-format.md``; a three-host example in ``docs/scale-out.md``.
Needs ``nats-py`` (``pip install 'packet-ipc[nats]'``).
"""

from __future__ import annotations

from .common import MessageTooLargeError, NatsError, NatsUnreachableError, PartitionError, StreamMismatchError
from .publisher import Publisher, PublishSummary
from .subscriber import Subscriber, SubscribeSummary
from .wire import WireFormatError

__all__ = [
    "Publisher",
    "PublishSummary",
    "Subscriber",
    "SubscribeSummary",
    "NatsError",
    "NatsUnreachableError",
    "StreamMismatchError",
    "MessageTooLargeError",
    "PartitionError",
    "WireFormatError",
]
