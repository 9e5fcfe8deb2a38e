"""The waiting machinery of :mod:`packet_ipc.aio`: readers on a peer's fds, fair yields, one operation at a time,
and the helper that writes each docstring once (in the sync class) and gives it to its asyncio counterpart."""

from __future__ import annotations

import asyncio
import errno
import inspect
import socket
import textwrap
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .. import errors

_F = TypeVar("_F", bound=Callable[..., Any])
_monotonic = time.monotonic  # not loop.time(): uvloop's is the cached time of the loop iteration

TIMEOUT = "timeout"
CLOSED = "closed"
DATA = "data"
PEER = "peer"

AWAITABLE = ("asyncio: a coroutine. Where the text above says it blocks, it waits without blocking the event "
             "loop (a reader on the peer's fds and a timer); other tasks keep running.")


_settings: Any = None


def settings() -> Any:
    """The :mod:`packet_ipc.aio` package, whose constants are read at each use (``aio.SPIN_S = ...`` works)."""
    global _settings
    if _settings is None:
        from .. import aio

        _settings = aio
    return _settings


def mirrors(sync: Any, note: str = "") -> Callable[[_F], _F]:
    """Gives the decorated asyncio function the docstring of its sync counterpart ``sync`` (a function or a
    property), followed by ``note``: each docstring is written once, in the sync class."""

    def apply(fn: _F) -> _F:
        doc = inspect.cleandoc(sync.__doc__ or "")
        fn.__doc__ = doc + ("\n\n" + textwrap.fill(note, 110) if note else "")
        fn.__mirrors__ = sync  # type: ignore[attr-defined]  # for tests/test_aio_contract.py
        return fn

    return apply


class Waiter:
    """One sleep of one coroutine: readers on the peer's fds, an optional deadline, and the future they resolve.

    The first of them to fire resolves the future with its reason and removes every reader at once (the fds are
    level-triggered: left registered they would fire on each loop iteration until the task runs). ``disarm`` is
    idempotent, so ``close()`` can remove the readers before it closes the fds, and the waiter's own cleanup
    afterwards cannot remove a reader that a reused fd number now belongs to.
    """

    __slots__ = ("loop", "future", "fds", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, fds: Sequence[tuple[int, str]], deadline: float | None):
        self.loop = loop
        self.future: asyncio.Future[str] = loop.create_future()
        self.fds: list[int] = []
        self.timer: asyncio.TimerHandle | None = None
        try:
            for fd, why in fds:
                loop.add_reader(fd, self.wake, why)
                self.fds.append(fd)
            if deadline is not None:
                self.timer = loop.call_at(deadline, self.wake, TIMEOUT)
        except BaseException:
            self.disarm()
            raise

    def wake(self, why: str) -> None:
        if not self.future.done():
            self.future.set_result(why)
        self.disarm()

    def disarm(self) -> None:
        for fd in self.fds:
            self.loop.remove_reader(fd)
        self.fds.clear()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


async def sleep_on(
    owner: Any, loop: asyncio.AbstractEventLoop, fds: Sequence[tuple[int, str]], deadline: float | None
) -> str:
    """Waits until one of ``fds`` is readable (its reason), the deadline (TIMEOUT) or ``owner._waiter.wake(CLOSED)``
    (``close()`` calls it: the readers go before the fds are closed)."""
    waiter = Waiter(loop, fds, deadline)
    owner._waiter = waiter
    try:
        return await waiter.future
    finally:
        waiter.disarm()
        owner._waiter = None


def peer_sent_data(fd: int) -> bool:
    """True if the control socket holds a message (the protocol has none after the handshake: a broken peer)."""
    sock = socket.socket(fileno=fd)
    try:
        return len(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)) > 0
    except OSError:
        return False  # nothing waiting (EAGAIN), or the peer is gone: the core reports that itself
    finally:
        sock.detach()  # the fd belongs to the core


def timeout_error(message: str, sent: int | None = None) -> errors.TimeoutError:
    e = errors.TimeoutError(errno.ETIMEDOUT, message)
    if sent is not None:
        e.sent = sent
    return e


class Pacer:
    """The state shared by :class:`Connection` and :class:`Client`: one operation at a time, fair yields, and
    the waiter that ``close()`` must wake."""

    __slots__ = ("_busy", "_waiter", "_ran_since")

    def __init__(self) -> None:
        self._busy = False
        self._waiter: Waiter | None = None
        self._ran_since = 0.0  # loop time when this object last let the loop run

    def _enter(self, what: str) -> None:
        # Two coroutines waiting on the same fds would replace each other's readers (one would never wake), and a
        # take or write by one would disarm the other's waiting flag: like asyncio's streams, refuse it.
        if self._busy:
            raise RuntimeError(f"{what}() called while another coroutine is already using this {type(self).__name__}")
        self._busy = True

    async def _fair_yield(self) -> None:
        if _monotonic() - self._ran_since > settings().YIELD_INTERVAL_S:
            await asyncio.sleep(0)
            self._ran_since = _monotonic()

    async def _sleep(
        self,
        loop: asyncio.AbstractEventLoop,
        fds: Sequence[tuple[int, str]],
        deadline: float | None,
        finish_wait: Callable[[], None],
    ) -> str:
        try:
            return await sleep_on(self, loop, fds, deadline)
        finally:
            finish_wait()  # disarms the waiting flag and drains the eventfd, on every path (cancellation too)
            self._ran_since = _monotonic()

    def _wake_for_close(self) -> None:
        if self._waiter is not None:
            self._waiter.wake(CLOSED)  # removes the readers before the fds are closed
