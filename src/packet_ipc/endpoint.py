"""Server names on the file system and the statistics socket beside each server.

A server's name is a unix socket path (or ``@name``, abstract). This module finds and removes what a killed
server left behind (its private directory, or the socket file at an explicit path), and runs the
``NAME.stats`` socket through which ``packet-ipc stats`` reads a server's counters from another process.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["sweep_stale_endpoints", "remove_stale_socket", "stats_address", "unix_address_call", "StatsService"]


def _bound_unix_paths() -> set[str]:
    """Paths of every unix socket bound on this machine right now (the kernel's /proc/net/unix)."""
    paths = set()
    with open("/proc/net/unix") as table:
        next(table)
        for line in table:
            fields = line.split()
            if len(fields) >= 8 and fields[7].startswith("/"):
                paths.add(fields[7])
    return paths


def sweep_stale_endpoints(directory: str | None = None, min_age_s: float = 10.0) -> list[str]:
    """Removes the private directories of servers that died without closing (``kill -9``): ours (same uid),
    named ``packet-ipc-*``, older than ``min_age_s``, whose socket no process has bound any more (checked in
    ``/proc/net/unix``, so no live server is ever connected to or disturbed). Returns what was removed.

    :class:`Server` calls it when it creates a private endpoint, so a crash leaves files only until the
    next server starts.
    """
    base = directory or os.environ.get("TMPDIR") or "/tmp"
    try:
        entries = [e for e in os.scandir(base) if e.name.startswith("packet-ipc-")]
    except OSError:
        return []
    if not entries:
        return []
    bound = _bound_unix_paths()
    removed = []
    now = time.time()
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
            sock = os.path.join(entry.path, "socket")
            if (
                not entry.is_dir(follow_symlinks=False)
                or st.st_uid != os.geteuid()
                or now - st.st_mtime < min_age_s  # a server between mkdtemp and bind
                or not os.path.exists(sock)
                or sock in bound
            ):
                continue
            for name in os.listdir(entry.path):
                if name == "socket" or name.startswith("socket."):
                    os.unlink(os.path.join(entry.path, name))
            os.rmdir(entry.path)
            removed.append(entry.path)
        except OSError:
            continue  # another process got there first, or something else lives in it: leave it
    return removed


def remove_stale_socket(path: str) -> bool:
    """Removes the socket file at ``path`` (and its ``.stats`` beside it) if no process listens behind it any
    more: a server that was ``kill -9``'d leaves it, and binding the name again would fail with "address in
    use". A socket some process has bound (``/proc/net/unix``) or that accepts a connection is left alone,
    as is anything that is not a socket. Returns True if it removed the file. Abstract names (``@x``)
    vanish with their process and need nothing."""
    if path.startswith("@"):
        return False
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return False
        if os.path.abspath(path) in _bound_unix_paths():
            return False
    except OSError:
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.connect(path)
    except ConnectionRefusedError:  # a socket file with no listener: its server died
        pass
    except OSError:
        return False
    else:
        return False  # someone listens (bound under another spelling of the path): not stale
    finally:
        probe.close()
    for stale in (path, stats_address(path)):
        try:
            if stat.S_ISSOCK(os.lstat(stale).st_mode):
                os.unlink(stale)
        except OSError:
            pass
    return True


def stats_address(name: str) -> str:
    """Where a server answers ``packet-ipc stats`` queries: beside its socket (``NAME.stats``). An abstract
    name too long for that (over 101 bytes) gets a shortened one that still ends in its hash."""
    addr = name + ".stats"
    if name.startswith("@") and len(os.fsencode(addr)) > _SUN_PATH_BYTES:
        digest = hashlib.blake2b(os.fsencode(name), digest_size=8).hexdigest()
        keep = os.fsencode(name)[: _SUN_PATH_BYTES - 24].decode(errors="ignore")
        addr = f"{keep}.{digest}.stats"
    return addr


_SUN_PATH_BYTES = 108  # sizeof(sockaddr_un.sun_path) on Linux


def unix_address_call(sock: socket.socket, addr: str, call: str) -> None:
    """``sock.bind(addr)`` or ``sock.connect(addr)`` (``call``) for a packet-ipc address: ``@x`` is abstract;
    a path too long for ``sun_path`` (a 102-107-byte server name's ``.stats`` beside it) is reached through
    its directory (``/proc/self/fd/N/NAME``), so it works instead of failing or being skipped."""
    op = getattr(sock, call)
    if addr.startswith("@"):
        op("\0" + addr[1:])
        return
    if len(os.fsencode(addr)) < _SUN_PATH_BYTES:
        op(addr)
        return
    directory = os.open(os.path.dirname(addr) or ".", os.O_PATH | os.O_DIRECTORY)
    try:
        op(f"/proc/self/fd/{directory}/{os.path.basename(addr)}")
    finally:
        os.close(directory)


class StatsService:
    """The ``NAME.stats`` socket of a server: answers queries with ``snapshot()`` as JSON from a daemon
    thread. Optional: if it cannot bind, the server works without it. :meth:`close` sends watchers a last
    document and removes the socket file."""

    def __init__(self, name: str, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.name = name
        self._snapshot = snapshot
        self._sock: socket.socket | None = None
        self._closing = threading.Event()
        self._watchers: list[threading.Thread] = []
        addr = stats_address(name)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            unix_address_call(sock, addr, "bind")
            if not addr.startswith("@"):
                os.chmod(addr, 0o600)
            sock.listen(16)
        except OSError:
            sock.close()  # statistics are optional: the endpoint works without them
            return
        self._sock = sock
        threading.Thread(target=self._serve, name=f"packet-ipc stats {name}", daemon=True).start()

    def _serve(self) -> None:
        """Answers `packet-ipc stats` queries on NAME.stats. A peer that sends nothing (or shuts its side)
        gets one JSON document and EOF. A peer that sends ``watch S`` gets one document per line every S
        seconds, and a last one with ``"closed": true`` (and ``"ended"``) when the server closes: a watcher
        learns how the stream ended even when the server closes between two of its looks."""
        listener = self._sock
        while listener is not None:
            try:
                peer, _ = listener.accept()
            except OSError:
                return  # closed
            interval = self._request(peer)
            if interval is None:
                with peer:
                    try:
                        peer.sendall(json.dumps(self._snapshot()).encode())
                    except OSError:
                        pass
                continue
            watcher = threading.Thread(target=self._watch, args=(peer, interval), daemon=True,
                                       name=f"packet-ipc stats watch {self.name}")
            self._watchers.append(watcher)
            watcher.start()

    @staticmethod
    def _request(peer: socket.socket) -> float | None:
        """The peer's request: ``watch S`` gives S seconds; nothing (EOF, or silence for 0.2 s) gives None."""
        peer.settimeout(0.2)
        try:
            request = peer.recv(64)
        except OSError:
            request = b""
        finally:
            peer.settimeout(None)
        words = request.split()
        if len(words) == 2 and words[0] == b"watch":
            try:
                interval = float(words[1])
            except ValueError:
                return None
            return min(max(interval, 0.01), 3600.0) if interval == interval else None
        return None

    def _watch(self, peer: socket.socket, interval: float) -> None:
        with peer:
            try:
                while not self._closing.is_set():
                    peer.sendall(json.dumps(self._snapshot()).encode() + b"\n")
                    self._closing.wait(interval)
                last = {**self._snapshot(), "closed": True}
                peer.sendall(json.dumps(last).encode() + b"\n")
            except OSError:
                pass  # the watcher went away

    def close(self) -> None:
        """Stops answering: watchers get a last document (``"closed": true``), the socket file goes."""
        if self._sock is None:
            return
        self._closing.set()  # watchers get a last document saying how the stream ended
        for watcher in self._watchers:
            watcher.join(timeout=1.0)
        addr = stats_address(self.name)
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._sock = None
        if not addr.startswith("@"):
            try:
                os.unlink(addr)
            except FileNotFoundError:
                pass
