"""packet_ipc.aio mirrors packet_ipc name for name: checked by introspection, not by reading the docs.

Every public name of the sync Server, Connection and Client (methods, properties, attributes of live objects)
exists on its aio counterpart; what blocks in sync is awaitable in aio and nothing else is; the parameters
agree; aio.PacketBatch is the sync class (it never blocks); aio never reads the sync objects' private state
(their `_c`/`_s` cores and the like), only the small named methods they offer an event loop; and each
docstring is written once, in the sync class, and copied to the aio counterpart.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import typing
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

import packet_ipc as pipc
from packet_ipc import aio

SRC = Path(pipc.__file__).parent
AIO_FILES = sorted((SRC / "aio").glob("*.py"))
SYNC_FILES = [SRC / "server.py", SRC / "client.py"]

# What blocks in the sync API (it waits for a peer): a coroutine in aio. The sync Client's constructor blocks
# too: its aio form is `await aio.Client.connect(...)`.
BLOCKING = {
    "Server": {"accept", "wait_for_clients", "send", "send_batch"},
    "Connection": {"send", "send_batch", "send_batch_indices", "reserve"},
    "Client": {"receive_batch", "receive_packets"},
}
DUNDERS = {"__enter__": "__aenter__", "__exit__": "__aexit__", "__iter__": "__aiter__"}


def public(obj: Any) -> set[str]:
    return {n for n in dir(obj) if not n.startswith("_")}


def awaitable(fn: Any) -> bool:
    """A coroutine function, or a plain function declared to return a coroutine (aio's sends, connect)."""
    if inspect.iscoroutinefunction(fn):
        return True
    hints = typing.get_type_hints(fn, vars(aio.server) | vars(aio.client))
    ret = hints.get("return")
    origin = typing.get_origin(ret) or ret
    return isinstance(origin, type) and issubclass(origin, Coroutine)


@pytest.fixture(scope="module")
def pairs() -> dict[str, tuple[Any, Any]]:
    """Live objects of both APIs: {class name: (sync object, aio object)}."""

    async def main() -> dict[str, tuple[Any, Any]]:
        server = aio.Server(stats_socket=False)
        accepting = asyncio.create_task(server.accept(timeout=10))
        client = await aio.Client.connect(server.name, timeout=10)
        conn = await accepting
        return {"Server": (server.sync, server), "Connection": (conn.sync, conn), "Client": (client.sync, client)}

    return asyncio.run(main())


@pytest.mark.parametrize("kind", ["Server", "Connection", "Client"])
def test_every_public_name_of_the_sync_object_exists_on_its_aio_counterpart(pairs, kind):
    sync, mirror = pairs[kind]
    assert public(sync) - public(mirror) == set()
    for name, aname in DUNDERS.items():
        if hasattr(type(sync), name):
            assert hasattr(type(mirror), aname), aname
    assert hasattr(type(mirror), "__aenter__") and hasattr(type(mirror), "__aexit__")


@pytest.mark.parametrize("kind", ["Server", "Connection", "Client"])
def test_what_blocks_in_sync_is_awaitable_in_aio_and_nothing_else(pairs, kind):
    sync, mirror = pairs[kind]
    sync_cls, aio_cls = type(sync), type(mirror)
    for name in public(sync):
        s, a = inspect.getattr_static(sync_cls, name, None), inspect.getattr_static(aio_cls, name, None)
        if isinstance(s, property) or s is None or inspect.ismemberdescriptor(s):  # a property or an attribute
            assert a is None or isinstance(a, property) or not callable(a), name
            continue
        assert inspect.isfunction(a), name
        assert awaitable(a) == (name in BLOCKING[kind]), name
        sync_params = list(inspect.signature(s).parameters)
        assert list(inspect.signature(a).parameters)[: len(sync_params)] == sync_params, name
    assert not awaitable(aio_cls.close) and not awaitable(aio_cls.stats)


def test_constructors_take_the_same_parameters():
    assert inspect.signature(aio.Server.__init__).parameters.keys() == inspect.signature(pipc.Server.__init__).parameters.keys()
    sync = [p for p in inspect.signature(pipc.Client.__init__).parameters if p != "self"]
    connect = [p for p in inspect.signature(aio.Client.connect).parameters]
    assert sorted(sync) == sorted(connect)
    assert awaitable(aio.Client.connect.__func__) or "_Connecting" in str(inspect.signature(aio.Client.connect).return_annotation)
    assert issubclass(aio.client._Connecting, Coroutine)


def test_packet_batch_and_packet_are_the_sync_classes():
    # Neither has a call that blocks: the same class serves both APIs (no wrapper to keep in step).
    assert aio.PacketBatch is pipc.PacketBatch and aio.Packet is pipc.Packet
    assert not any(inspect.iscoroutinefunction(getattr(pipc.PacketBatch, n)) for n in public(pipc.PacketBatch))


def private_state(files: list[Path]) -> set[str]:
    """The private data attributes the sync classes keep (self._x = ..., __slots__): their internals."""
    names = set()
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and node.attr.startswith("_"):
                names.add(node.attr)
    return names


def test_aio_reads_no_private_state_of_the_sync_objects():
    inner = private_state(SYNC_FILES) - private_state(AIO_FILES)  # aio's own state may share a name
    assert {"_c", "_s", "_all"} <= inner
    used = {}
    for f in AIO_FILES:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in inner | {"_c", "_s"}:
                used.setdefault(node.attr, []).append(f"{f.name}:{node.lineno}")
    assert used == {}
    # What aio calls on the sync objects instead: methods they define for an event loop.
    offered = {n.name for f in SYNC_FILES for n in ast.walk(ast.parse(f.read_text())) if isinstance(n, ast.FunctionDef)}
    assert {"_prepare_wait", "_wait_fds", "_finish_wait", "_send_nowait", "_pending_handshake_fd", "_start_connect"} <= offered


def docstrings(files: list[Path]) -> set[str]:
    out = set()
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 40:
                    out.add(doc)
    return out


def test_each_docstring_is_written_once_and_copied_to_the_aio_counterpart(pairs):
    assert docstrings(AIO_FILES) & docstrings(SYNC_FILES) == set()  # no docstring text written in both
    copied = 0
    for sync, mirror in pairs.values():
        for name in public(sync):
            s = inspect.getattr_static(type(sync), name, None)
            a = inspect.getattr_static(type(mirror), name, None)
            if s is None or inspect.ismemberdescriptor(s):  # an attribute (documented in its class's docstring)
                continue
            assert (a.__doc__ or "").strip(), name
            if (s.__doc__ or "").strip():
                assert a.__doc__.startswith(inspect.cleandoc(s.__doc__)), name  # the sync text, then aio's note
                copied += 1
    assert copied >= 25
