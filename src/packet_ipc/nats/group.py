"""Subscribers of one ``group`` share the partitions through leases in JetStream key-value buckets.

Bucket ``pipc-<PREFIX>-<GROUP>`` (its entries expire ``lease`` seconds after their last write) holds one key
per live member (``m.<member id>``) and one per claimed partition (``p.<k>`` = the owner's id). Every
``lease / 3`` seconds a member re-writes its member key, renews each of its partition keys with a
compare-and-set on the revision it last wrote (a failed renewal means the lease was lost: it stops reading
that partition at once), and balances: with ``M`` live members and ``R`` partitions not yet finished, each
member holds at most ``ceil(R / M)``; it claims free partitions with an atomic create (which succeeds only
when nobody holds the key, or its holder stopped renewing and the key expired) and hands back surplus ones
between two messages. So a member that dies loses its partitions ``lease`` seconds after its last renewal,
and another member claims them within one more renewal interval; it resumes from the group's durable
consumer, where the unacknowledged message (at most one per partition) is delivered again after
``ack_wait``. Bucket ``pipc-<PREFIX>-<GROUP>-done`` (no expiry) records finished partitions (``d.<k>``), so
every member ends once all of them are finished (unless ``follow``), and, before each end-of-stream marker is
acknowledged, the publisher that sent it (``e.<k>``: the ids of the publishers whose markers were seen on
``k``, written with a compare-and-set): with several publishers, the member that owns a partition when its
last marker arrives counts the markers its predecessors saw there.
"""

from __future__ import annotations

import asyncio
import math
import os
import uuid
from typing import TYPE_CHECKING, Any

from .common import NatsError, retry_setup, stream_name

if TYPE_CHECKING:
    from .subscriber import Subscriber

__all__ = ["GroupMember"]


class GroupMember:
    """One subscriber's part in a group: claims, renews, hands back and finishes partitions."""

    def __init__(self, sub: Subscriber, nc: Any) -> None:
        self.sub = sub
        self.js = nc.jetstream(timeout=5.0)
        self.id = f"{os.uname().nodename[:24]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.bucket = f"pipc-{sub.stream}-{sub.group}"
        self.owned: dict[int, tuple[asyncio.Task[None], int]] = {}
        self.keep: set[int] = set()
        self.leases: Any = None
        self.state: Any = None

    async def _buckets(self) -> None:
        import nats.js.errors

        # Each step rides out a cluster that does not answer yet (retry_setup): creating a replicated bucket can
        # take longer than one request's timeout on a loaded machine, and creating it again is harmless.
        what = f"the group's key-value buckets {self.bucket}"
        try:
            info = await retry_setup(what, lambda: self.js.stream_info(stream_name(self.sub.stream, 0)))
            replicas = info.config.num_replicas or 1
            self.leases = await retry_setup(what, lambda: self.js.create_key_value(
                bucket=self.bucket, ttl=self.sub.lease, history=1, replicas=replicas))
            self.state = await retry_setup(what, lambda: self.js.create_key_value(
                bucket=self.bucket + "-done", history=1, replicas=replicas))
        except nats.js.errors.Error as e:
            raise NatsError(f"cannot open the group's key-value buckets {self.bucket}: {e}") from None

    async def _keys(self, kv: Any) -> list[str]:
        """The bucket's keys. nats-py's ``keys()`` may come back short (see :meth:`_marker`): used only where a
        short list delays a step (members and claims, which are taken with an atomic create)."""
        import nats.js.errors

        try:
            return list(await kv.keys())
        except nats.js.errors.NoKeysError:
            return []

    async def _finished_partitions(self) -> set[int]:
        """The candidate partitions some member finished (``d.<k>`` in the done bucket), each read by key."""
        import nats.js.errors

        finished = set()
        for k in self.sub.partitions:
            try:
                await self.state.get(f"d.{k}")
                finished.add(k)
            except nats.js.errors.KeyNotFoundError:
                pass
        return finished

    async def run(self) -> None:
        """Takes part until every candidate partition is finished (or forever with ``follow``)."""
        import nats.errors

        await self._buckets()
        self.sub.on_partition_end = self._finished
        self.sub.on_marker = self._marker
        interval = self.sub.lease / 3
        held_by_others: set[int] = set()
        try:
            while not self.sub._stopping.is_set():
                try:
                    await self._step(held_by_others)
                    finished = await self._finished_partitions()
                    if not self.sub.follow and all(k in finished for k in self.sub.partitions):
                        return
                except (nats.errors.Error, TimeoutError):
                    pass  # the buckets' leader is being elected: try again next round (a lost lease is seen then)
                try:
                    await asyncio.wait_for(self.sub._stopping.wait(), interval)
                except TimeoutError:
                    pass
        finally:
            await self._release_all()

    async def _step(self, held_by_others: set[int]) -> None:
        import nats.js.errors

        await self.leases.put(f"m.{self.id}", b"1")
        # partitions this member finished, or whose task failed
        for k, (task, _) in list(self.owned.items()):
            if task.done():
                task.result()  # a failure ends the subscriber (its lease then expires for the others)
                del self.owned[k]
                if self.sub.partition_done(k):
                    await self.state.put(f"d.{k}", self.id.encode())
                await self._delete(f"p.{k}")
        for k, (task, rev) in list(self.owned.items()):
            try:
                new_rev = await self.leases.update(f"p.{k}", self.id.encode(), last=rev)
                self.owned[k] = (task, new_rev)
            except nats.js.errors.Error:  # the lease expired and someone else holds it: stop at once
                self.keep.discard(k)
                task.cancel()
                del self.owned[k]
        keys = await self._keys(self.leases)
        members = max(1, sum(1 for key in keys if key.startswith("m.")))
        finished = await self._finished_partitions()
        remaining = [k for k in self.sub.partitions if k not in finished]
        target = math.ceil(len(remaining) / members) if remaining else 0
        if self.sub.follow:
            target = math.ceil(len(self.sub.partitions) / members)
            remaining = list(self.sub.partitions)
        held = {int(key[2:]) for key in keys if key.startswith("p.")}
        for k in list(self.owned)[target:]:  # hand back the surplus, between two messages
            await self._release(k)
        for k in remaining:
            if len(self.owned) >= target:
                break
            if k in self.owned or k in held:
                continue
            try:
                rev = await self.leases.create(f"p.{k}", self.id.encode())
            except nats.js.errors.Error:
                continue  # another member was quicker
            if k in held_by_others:
                self.sub.summary.taken_over.append(k)
            self.keep.add(k)
            task = asyncio.create_task(self.sub.consume(k, keep_going=lambda k=k: k in self.keep),
                                       name=f"consume {k}")
            self.owned[k] = (task, rev)
        held_by_others.update(held - set(self.owned))  # ever held by another member: a claim is a take-over

    async def _marker(self, k: int, publisher: str) -> set[str]:
        """Records ``publisher``'s end-of-stream marker on partition ``k`` and returns every publisher whose
        marker a member of the group saw there: a partition that changes owner between two publishers' markers
        still ends after the last one. One key per partition in the done bucket, ``e.<k>``, holds those
        publishers' ids, one per line; it is read by key and written with a compare-and-set (create, or update
        on the revision read), again from the read when another member wrote it meanwhile. Not a key per
        marker found by listing the bucket: nats-py's ``keys()`` may return before the bucket's entries have
        reached it (its watcher sees nothing pending while they are still on the way), and a marker missed
        there, once acknowledged, would never be counted (seen under load: the partition never ended)."""
        import nats.js.errors

        key = f"e.{k}"
        while True:
            try:
                entry = await self.state.get(key)
            except nats.js.errors.KeyNotFoundError:  # and KeyDeletedError, its subclass
                entry = None
            seen = set(bytes(entry.value or b"").decode().split("\n")) - {""} if entry is not None else set()
            if publisher in seen:  # a marker delivered again
                return seen
            seen.add(publisher)
            value = "\n".join(sorted(seen)).encode()
            try:
                if entry is None:
                    await self.state.create(key, value)
                else:
                    await self.state.update(key, value, last=entry.revision)
                return seen
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another member recorded a marker on k meanwhile: read it again

    async def _finished(self, k: int) -> None:
        await self.state.put(f"d.{k}", self.id.encode())

    async def _release(self, k: int) -> None:
        task, _ = self.owned.pop(k)
        self.keep.discard(k)
        try:
            await task
        except asyncio.CancelledError:
            pass
        if self.sub.partition_done(k):
            await self.state.put(f"d.{k}", self.id.encode())
        await self._delete(f"p.{k}")

    async def _delete(self, key: str) -> None:
        try:
            await self.leases.delete(key)
        except Exception:  # noqa: BLE001 - it expires by itself
            pass

    async def _release_all(self) -> None:
        for k in list(self.owned):
            task, _ = self.owned[k]
            if task.done() or self.sub._stopping.is_set():
                task.cancel()
            try:
                await self._release(k)
            except Exception:  # noqa: BLE001 - best effort on the way out; leases expire anyway
                pass
        await self._delete(f"m.{self.id}")
