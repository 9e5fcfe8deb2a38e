"""PCAP-over-IP: a worker's stream out to a TCP peer as a pcap stream, and a pcap stream from a TCP peer in.

PCAP-over-IP is a classic pcap file sent over TCP (port 57012 by convention): the 24-byte file header, then
records as packets arrive. tshark reads it with ``-i TCP@HOST:PORT``, Arkime and NetworkMiner speak it, and
``tcpdump -w - | nc HOST PORT`` writes it. This module is where packet-ipc crosses hosts without a broker:
``packet-ipc dump NAME --listen/--connect`` turns a worker's stream into PCAP-over-IP, and ``packet-ipc replay
tcp://HOST:PORT`` or ``replay --listen`` serves one to local workers. The bytes themselves are written by
:class:`~packet_ipc.pcap.CaptureWriter` and read by :class:`~packet_ipc.pcap.CaptureReader` (whose C fast
path hands out a batch of whatever whole records have arrived); what this module adds is the network:
addresses, who may connect (``--allow``), the header checked before anything is served, and what a
disconnect means. A stream that ends at a record boundary ends the workers' streams; a record cut short or
a connection reset aborts them (:meth:`~packet_ipc.server.Connection.abort`), exactly as for a capture file
that ends or is cut. Going out, an aborted packet-ipc stream resets the TCP connection once the reader has
acknowledged every byte written, so a packet-ipc reader on the other host aborts its workers in turn.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import ipaddress
import json
import os
import selectors
import socket
import struct
import sys
import termios
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from . import _core, errors
from .errors import AddressError, CaptureError, ConnectError, ConnectionLostError, PacketIpcError
from .pcap import CaptureReader, CaptureWriter

__all__ = [
    "DEFAULT_PORT",
    "MAX_SNAPLEN",
    "Endpoint",
    "AllowList",
    "parse_endpoint",
    "listen",
    "accept_peer",
    "connect",
    "open_stream",
    "PcapStreamWriter",
    "add_dump_options",
    "add_replay_options",
    "dump_to_tcp",
    "replay_from_tcp",
]

#: The port PCAP-over-IP uses by convention (NetworkMiner, Arkime).
DEFAULT_PORT = 57012
#: Largest snaplen accepted in a stream's header (libpcap's MAXIMUM_SNAPLEN); 0 or more is a broken header.
MAX_SNAPLEN = _core.DEFAULT_SNAPLEN
DEFAULT_HEADER_TIMEOUT = 10.0
_PCAP_HEADER_BYTES = 24
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_ABORT_DRAIN_SECONDS = 10.0  # how long an abort waits for the reader to acknowledge what was written
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset instead of a clean end


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ---- addresses ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """A TCP address: ``host`` (a name or an IPv4/IPv6 address) and ``port``."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(text: str, default_host: str = "127.0.0.1") -> Endpoint:
    """Parses ``HOST:PORT``, ``[IPv6]:PORT`` or ``PORT`` (on ``default_host``), with or without ``tcp://``.

    Does not resolve the host. Raises ``ValueError`` for anything else or a port outside 0-65535.
    """
    raw = text[len("tcp://"):] if text.startswith("tcp://") else text
    raw = raw.rstrip("/")
    if raw.startswith("["):
        host, closed, rest = raw[1:].partition("]")
        if not closed or not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected [IPv6 address]:PORT")
        port_text = rest[1:]
    elif raw.count(":") == 1:
        host, port_text = raw.split(":")
    elif ":" not in raw:
        host, port_text = "", raw
    else:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, as in [::1]:{DEFAULT_PORT}")
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"{text!r}: expected HOST:PORT with a port from 0 to 65535")
    return Endpoint(host or default_host, int(port_text))


class AllowList:
    """Who may connect to a listening endpoint: addresses and CIDR networks; empty allows anyone.

    ``refused`` counts the connections :func:`accept_peer` turned away. Raises ``ValueError`` for a pattern
    that is neither an address nor a network.
    """

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for pattern in patterns:
            try:
                self.networks.append(ipaddress.ip_network(pattern, strict=False))
            except ValueError:
                raise ValueError(f"--allow {pattern!r}: expected an address or a network (10.0.0.0/8)") from None
        self.refused = 0

    def allows(self, address: str) -> bool:
        """True if a peer at ``address`` may connect (an IPv4-mapped IPv6 address counts as IPv4)."""
        if not self.networks:
            return True
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self.networks)


def _resolve(endpoint: Endpoint, passive: bool) -> tuple[Any, ...]:
    try:
        infos = socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE if passive else 0)
    except socket.gaierror as e:
        raise AddressError(e.errno, f"host {endpoint.host!r} does not resolve ({e.strerror})") from None
    return infos[0]


def listen(endpoint: Endpoint, backlog: int = 4) -> socket.socket:
    """A TCP socket listening on ``endpoint`` (port 0: a free port, see ``getsockname()``).

    Does not block. Raises :class:`~packet_ipc.errors.AddressError` when the host does not resolve, the port
    is in use, or binding is refused.
    """
    family, kind, proto, _, address = _resolve(endpoint, passive=True)
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not past a live listener: only TIME_WAIT
        sock.bind(address)
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise AddressError(e.errno, f"cannot listen on {endpoint}: {e.strerror}") from None
    return sock


def bound_endpoint(sock: socket.socket) -> Endpoint:
    """The address a socket is bound to (the real port after listening on port 0)."""
    host, port = sock.getsockname()[:2]
    return Endpoint(host, port)


def accept_peer(
    listener: socket.socket, allow: AllowList, timeout: float | None = None, log: Callable[[str], None] = _log
) -> tuple[socket.socket, Endpoint]:
    """Waits for a connection from a peer ``allow`` accepts and returns it (blocking) with its address.

    A refused peer is reset, counted in ``allow.refused`` and reported through ``log``; waiting goes on.
    Raises :class:`~packet_ipc.errors.TimeoutError` when no allowed peer came within ``timeout`` seconds.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        listener.settimeout(None if deadline is None else max(0.0, deadline - time.monotonic()))
        try:
            sock, address = listener.accept()
        except socket.timeout:
            raise errors.TimeoutError(
                errno.ETIMEDOUT, f"no peer connected to {bound_endpoint(listener)} within {timeout} s"
            ) from None
        peer = Endpoint(address[0], address[1])
        if allow.allows(peer.host):
            sock.settimeout(None)
            return sock, peer
        allow.refused += 1
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        sock.close()
        log(f"packet-ipc: refused a connection from {peer}: not in --allow ({allow.refused} refused so far)")


def connect(endpoint: Endpoint, timeout: float) -> socket.socket:
    """Connects to ``endpoint``, retrying while nothing listens there yet, for up to ``timeout`` seconds.

    Blocks. Raises :class:`~packet_ipc.errors.AddressError` (the host does not resolve),
    :class:`~packet_ipc.errors.ConnectError` (still refused at the deadline, unreachable),
    :class:`~packet_ipc.errors.TimeoutError` (no answer), ``ValueError`` for port 0.
    """
    if endpoint.port == 0:
        raise ValueError(f"{endpoint}: cannot connect to port 0")
    family, kind, proto, _, address = _resolve(endpoint, passive=False)
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(family, kind, proto)
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            sock.connect(address)
        except ConnectionRefusedError as e:
            sock.close()
            if time.monotonic() >= deadline:
                raise ConnectError(e.errno, f"nothing listens at {endpoint} ({e.strerror})") from None
            time.sleep(0.05)  # polling for a listener that is not there yet: there is nothing to wait on
            continue
        except socket.timeout:
            sock.close()
            raise errors.TimeoutError(errno.ETIMEDOUT, f"no answer from {endpoint} within {timeout} s") from None
        except OSError as e:
            sock.close()
            raise ConnectError(e.errno or 0, f"cannot connect to {endpoint}: {e.strerror or e}") from None
        sock.settimeout(None)
        return sock


# ---- in: a pcap stream from a socket ---------------------------------------------------------------------


def _wait_for_header(sock: socket.socket, name: str, timeout: float) -> bytes:
    """Peeks at the first 24 bytes without consuming them, waiting at most ``timeout`` seconds in all."""
    # SO_RCVLOWAT: the socket polls readable only once a whole header (or the end of the stream) is there.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, _PCAP_HEADER_BYTES)
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ)
            if not selector.select(timeout):
                raise errors.TimeoutError(
                    errno.ETIMEDOUT, f"{name}: no pcap header within {timeout:g} s: nothing served"
                )
        try:
            return sock.recv(_PCAP_HEADER_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError as e:
            raise ConnectionLostError(e.errno or 0, f"{name}: {e.strerror or e} before the pcap header") from None
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)


def open_stream(sock: socket.socket, name: str, header_timeout: float = DEFAULT_HEADER_TIMEOUT) -> CaptureReader:
    """Checks the pcap header of a PCAP-over-IP stream and returns a reader of its records.

    Waits up to ``header_timeout`` seconds for the 24-byte header. Accepted: classic pcap in either byte
    order, microsecond or nanosecond, with a snaplen from 1 to 262144. The reader's
    :meth:`~packet_ipc.pcap.CaptureReader.read_packet_batches` then blocks until whole records arrive,
    ends when the peer ends the stream at a record boundary, and raises :class:`CaptureError` for a record
    cut short (or ``OSError`` for a reset connection). ``name`` names the stream in messages.

    Raises :class:`~packet_ipc.errors.TimeoutError` (no header in time), :class:`CaptureError` (the peer
    closed before a whole header, not pcap, pcapng, a bad version or snaplen), ``ConnectionLostError``.
    Closing the reader closes its file object over ``sock``; the caller still closes ``sock``.
    """
    head = _wait_for_header(sock, name, header_timeout)
    if not head:
        raise CaptureError(f"{name}: the peer closed the connection before sending a pcap header: nothing served")
    if head[:4] == _PCAPNG_MAGIC:
        raise CaptureError(f"{name}: a pcapng stream; PCAP-over-IP carries classic pcap (write it with "
                           "tcpdump -w - or dumpcap -P): nothing served")
    try:
        reader = CaptureReader(name, sock.makefile("rb"), owns_file=True)
    except CaptureError as e:
        raise CaptureError(f"{e}: not a PCAP-over-IP stream, nothing served") from None
    if not 1 <= reader.snaplen <= MAX_SNAPLEN:
        reader.close()
        raise CaptureError(f"{name}: snaplen {reader.snaplen} in the pcap header (PCAP-over-IP accepts 1 to "
                           f"{MAX_SNAPLEN}): nothing served")
    return reader


# ---- out: a worker's stream to a socket ------------------------------------------------------------------


def _unsent_bytes(sock: socket.socket) -> int:
    """Bytes written but not yet acknowledged by the peer (SIOCOUTQ)."""
    (count,) = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))
    return int(count)


class PcapStreamWriter:
    """Writes packets to a connected TCP socket as a pcap stream (PCAP-over-IP).

    The 24-byte header goes out at once: little-endian, microsecond (``nanosecond=False``, what every reader
    accepts; each time is cut to the microsecond below it) or nanosecond, with ``linktype`` and ``snaplen``.
    A pcap stream has one link type: a packet of another raises ``ValueError`` unless ``only_linktype`` is
    set, in which case it is skipped and counted in ``skipped``. ``written`` counts the packets handed to
    the connection. Writing blocks while the reader lags (TCP flow control); a reader that went away raises
    :class:`~packet_ipc.errors.ConnectionLostError`.
    """

    def __init__(self, sock: socket.socket, peer: str, *, linktype: int, snaplen: int = MAX_SNAPLEN,
                 nanosecond: bool = False, only_linktype: bool = False) -> None:
        self.sock = sock
        self.peer = peer
        self.linktype = linktype
        self.only_linktype = only_linktype
        self.written = 0
        self.skipped = 0
        self._same: dict[int, bytes] = {}
        self._file = sock.makefile("wb")
        self._writer = CaptureWriter(self._file, linktype=linktype, snaplen=snaplen, format="pcap",
                                     nanosecond=nanosecond)
        self._guard(self._writer.flush)

    def _guard(self, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as e:
            raise ConnectionLostError(e.errno or 0, f"the reader at {self.peer} went away ({e.strerror})") from None

    def write_batch(self, batch: Any) -> int:
        """Writes the packets of a :class:`~packet_ipc.PacketBatch` (records built in C) or a list of packets;
        returns how many. Blocks while the reader lags; raises as the class says."""
        n = len(batch)
        if n == 0:
            return 0
        linktypes = getattr(batch, "linktypes", None)
        if linktypes is not None:
            same = self._same.get(n)
            if same is None:
                same = self._same[n] = struct.pack("=I", self.linktype) * n
            mixed = linktypes.tobytes() != same
        else:
            mixed = any(getattr(p, "linktype", None) not in (None, self.linktype) for p in batch)
        if not mixed and hasattr(batch, "linktypes"):  # a PacketBatch: records built in C
            count = int(self._guard(lambda: self._writer.write_batch(batch)))
            self.written += count
            return count
        packets = list(batch)
        if mixed:
            if not self.only_linktype:
                first = next(i for i, p in enumerate(packets) if p.linktype not in (None, self.linktype))
                self.written += int(self._guard(lambda: self._writer.write_many(packets[:first])))
                raise ValueError(
                    f"the stream carries link type {packets[first].linktype} besides {self.linktype}; a pcap "
                    f"stream has one: choose it with --linktype (packets of the others are then skipped and counted)"
                )
            kept = [p for p in packets if p.linktype in (None, self.linktype)]
            self.skipped += n - len(kept)
            packets = kept
        count = int(self._guard(lambda: self._writer.write_many(packets)))
        self.written += count
        return count

    def end(self) -> None:
        """Ends the stream cleanly: flushes, then closes the connection (the reader sees the stream end)."""
        try:
            self._guard(self._writer.close)
            self._guard(self._file.flush)
            self.sock.shutdown(socket.SHUT_WR)
        finally:
            self._close()

    def abort(self) -> None:
        """Aborts the stream: waits (up to 10 s) until the reader acknowledged every byte written, then
        resets the connection, so a reader that checks (packet-ipc does) tells it from a clean end."""
        try:
            self._writer.close()
            self._file.flush()
            deadline = time.monotonic() + _ABORT_DRAIN_SECONDS
            while _unsent_bytes(self.sock) and time.monotonic() < deadline:
                time.sleep(0.01)  # the kernel gives no wakeup when the peer acknowledges
        except OSError:
            pass  # the reader is gone already: nothing left to reset cleanly
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        except OSError:
            pass
        self._close()

    def _close(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass  # a flush to a reader that is gone: counted by the caller already
        self.sock.close()


# ---- the command line ------------------------------------------------------------------------------------


_DEFAULT_LISTEN = Endpoint("127.0.0.1", DEFAULT_PORT)


def _endpoint_argument(text: str) -> Endpoint:
    try:
        return parse_endpoint(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _allow_argument(text: str) -> str:
    try:
        AllowList([text])
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_dump_options(parser: argparse.ArgumentParser) -> None:
    """Adds ``--listen``, ``--connect``, ``--nanoseconds``, ``--linktype`` and ``--allow`` to ``dump``."""
    group = parser.add_argument_group("PCAP-over-IP (instead of -w)")
    where = group.add_mutually_exclusive_group()
    where.add_argument("--listen", type=_endpoint_argument, metavar="HOST:PORT", nargs="?", const=_DEFAULT_LISTEN,
                       help="serve the stream to one TCP reader (tshark -i TCP@HOST:PORT, Arkime); "
                            f"PORT alone listens on 127.0.0.1; no value: 127.0.0.1:{DEFAULT_PORT}")
    where.add_argument("--connect", type=_endpoint_argument, metavar="HOST:PORT",
                       help="push the stream to a listening reader (NetworkMiner, Arkime)")
    group.add_argument("--nanoseconds", action="store_true",
                       help="nanosecond pcap (default: microsecond, which every reader accepts)")
    group.add_argument("--linktype", type=int, default=None,
                       help="the one link type of the stream: packets of others are skipped and counted "
                            "(default: the server's; another link type is an error)")
    group.add_argument("--allow", action="append", type=_allow_argument, default=[], metavar="FROM",
                       help="with --listen: only this address or CIDR network may connect (repeatable)")


def add_replay_options(parser: argparse.ArgumentParser) -> None:
    """Adds ``--listen``, ``--allow`` and ``--header-timeout`` to ``replay`` (files may be ``tcp://HOST:PORT``)."""
    group = parser.add_argument_group("PCAP-over-IP (FILE may be tcp://HOST:PORT: connect to a server)")
    group.add_argument("--listen", type=_endpoint_argument, metavar="HOST:PORT", nargs="?", const=_DEFAULT_LISTEN,
                       help="accept one PCAP-over-IP writer (tcpdump -w - | nc HOST PORT); PORT alone listens on "
                            f"127.0.0.1; no value: 127.0.0.1:{DEFAULT_PORT}")
    group.add_argument("--allow", action="append", type=_allow_argument, default=[], metavar="FROM",
                       help="with --listen: only this address or CIDR network may connect (repeatable)")
    group.add_argument("--header-timeout", type=float, default=DEFAULT_HEADER_TIMEOUT, metavar="S",
                       help=f"give up on a peer that sends no pcap header within S seconds ({DEFAULT_HEADER_TIMEOUT:g})")


def _usage(command: str, message: str) -> int:
    _log(f"packet-ipc {command}: error: {message}")
    return 2


def dump_to_tcp(args: argparse.Namespace, connect_worker: Callable[[], Any]) -> int:
    """``packet-ipc dump NAME --listen/--connect``: the worker's stream as PCAP-over-IP; returns the exit code.

    With ``--listen`` it binds first (a port in use fails before anything else), connects as a worker with
    ``connect_worker()``, then waits for one allowed reader and sends it the header and every packet as it
    arrives. With ``--connect`` it connects to the reader first. The end of the worker's stream ends the
    TCP stream; an aborted one (or a server gone) resets it after the reader acknowledged what was written,
    and exits 1. A reader that goes away makes it exit 1; packets received but never written are counted.
    """
    if args.write:
        return _usage("dump", "-w and --listen/--connect are exclusive")
    if args.allow and not args.listen:
        return _usage("dump", "--allow applies to --listen")
    allow = AllowList(args.allow)
    listener = listen(args.listen) if args.listen else None
    sock: socket.socket | None = None
    try:
        if listener is not None:
            _log(f"packet-ipc dump: serving {args.name} as PCAP-over-IP on {bound_endpoint(listener)}")
        else:
            sock = connect(args.connect, args.timeout)
        client = connect_worker()
        try:
            if listener is not None:
                sock, peer = accept_peer(listener, allow)
                listener.close()
                listener = None
            else:
                assert sock is not None
                peer = Endpoint(*sock.getpeername()[:2])
            _log(f"packet-ipc dump: streaming to {peer}")
            return _stream_out(args, client, sock, str(peer), allow)
        finally:
            client.close()
    finally:
        if listener is not None:
            listener.close()
        if sock is not None:
            sock.close()


def _stream_out(args: argparse.Namespace, client: Any, sock: socket.socket, peer: str, allow: AllowList) -> int:
    checksum_of: Callable[[list[Any]], int] | None = None
    if args.checksum:
        from .commands.common import packet_checksum as checksum_of
    linktype = client.linktype if args.linktype is None else args.linktype
    out = PcapStreamWriter(sock, peer, linktype=linktype, snaplen=min(max(client.snaplen, 1), MAX_SNAPLEN),
                           nanosecond=args.nanoseconds, only_linktype=args.linktype is not None)
    received = nbytes = checksum = 0
    outcome, failure = "ended", None
    try:
        while args.count is None or received < args.count:
            try:
                batch = client.receive_batch(1024, timeout=None)
            except ConnectionLostError as e:  # the server aborted its stream or vanished: pass the abort on
                outcome, failure = "aborted", e
                out.abort()
                break
            if batch is None:
                out.end()
                break
            with batch:
                packets: Any = batch
                if args.count is not None and len(batch) > args.count - received:
                    packets = list(batch)[: args.count - received]
                received += len(packets)
                nbytes += batch.nbytes if packets is batch else sum(p.caplen for p in packets)
                if checksum_of is not None:
                    checksum = (checksum + checksum_of(packets)) & 0xFFFF_FFFF_FFFF_FFFF
                try:
                    out.write_batch(packets)
                except ConnectionLostError as e:
                    outcome, failure = "reader gone", e
                    out.abort()
                    break
                del packets
        else:
            out.end()  # -c reached
    except BaseException:
        out.abort()
        raise
    finally:
        stats = client.stats()
    undelivered = received - out.written - out.skipped
    result = {"pid": os.getpid(), "peer": peer, "packets": received, "bytes": nbytes, "written": out.written,
              "skipped_other_linktype": out.skipped, "not_delivered": undelivered, "refused_peers": allow.refused,
              "outcome": outcome, "checksum": f"{checksum:016x}" if checksum_of else None,
              "dropped_by_server": stats.dropped_packets}
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        _log(f"packet-ipc dump: {received:,} packets ({nbytes:,} bytes) received, {out.written:,} written to "
             f"{peer}, {out.skipped:,} skipped (other link type), {undelivered:,} not delivered, "
             f"{allow.refused} peer(s) refused, dropped by the server {stats.dropped_packets:,}: {outcome}")
    if failure is not None:
        raise failure
    return 0


def replay_from_tcp(args: argparse.Namespace) -> int:
    """``packet-ipc replay tcp://HOST:PORT`` or ``replay --listen HOST:PORT``: serve a PCAP-over-IP stream.

    Live: the stream is served to the workers as it arrives, as fast as they take it (no ``--loop``, no
    ``--speed``), and ends when the TCP stream ends. Nothing is served before the header is checked (see
    :func:`open_stream`) and the workers have connected. A record cut short or a reset connection aborts
    the workers' streams and exits 1; the summary says how many packets went out before.
    """
    from .commands.common import drain_wait
    from .errors import ClosedError
    from .server import Server

    sources = [f for f in args.files if f.startswith("tcp://")]
    if args.listen is not None and args.files:
        return _usage("replay", "--listen takes no capture files")
    if args.listen is None and (len(sources) != 1 or len(args.files) != 1):
        return _usage("replay", "give one tcp://HOST:PORT source, without capture files")
    paced = any(getattr(args, k, None) for k in ("multiplier", "pps", "mbps", "limit", "read"))
    if args.loop != 1 or paced:
        return _usage("replay", "a PCAP-over-IP stream is live: no --loop, no pacing (-x/-p/-M), no -L or -r")
    if args.allow and args.listen is None:
        return _usage("replay", "--allow applies to --listen")
    try:
        endpoint = args.listen or parse_endpoint(sources[0])
    except ValueError as e:
        return _usage("replay", str(e))
    allow = AllowList(args.allow)
    if args.listen is not None:
        with listen(endpoint) as listener:
            _log(f"packet-ipc replay: waiting for a PCAP-over-IP writer on {bound_endpoint(listener)}")
            sock, peer = accept_peer(listener, allow, timeout=args.accept_timeout)
    else:
        sock = connect(endpoint, args.header_timeout)
        peer = endpoint
    name = f"tcp://{peer}"
    with sock:
        reader = open_stream(sock, name, args.header_timeout)
        with reader, Server(args.name, capacity=args.capacity, linktype=reader.linktype,
                            distribution=args.distribution, overflow=args.overflow) as server:
            _log(f"packet-ipc: serving {name} at {server.name}; waiting for {args.workers} worker(s)")
            server.wait_for_clients(args.workers, timeout=args.accept_timeout)
            packets = nbytes = 0
            start = time.monotonic()
            try:
                for batch in reader.read_packet_batches(args.batch):
                    server.send_batch(batch)
                    packets += len(batch)
                    nbytes += batch.nbytes
                server.send(None)
            except BaseException as e:
                server.abort_connections()  # the workers must not take a cut stream for the whole one
                _log(f"packet-ipc replay: {name}: aborted the workers' streams after {packets:,} packets")
                if isinstance(e, OSError) and not isinstance(e, (PacketIpcError, ClosedError)):
                    raise ConnectionLostError(e.errno or 0, f"{name}: {e.strerror or e} after {packets:,} "
                                                            "packets") from None
                raise
            seconds = time.monotonic() - start
            _log(f"packet-ipc replay: {name} ended the stream after {packets:,} packets")
            drain_wait(server)  # the workers drain: their counters are then final
            stats = server.stats()
            server.close_connections()
    summary = {"source": name, "packets": packets, "bytes": nbytes, "seconds": seconds,
               "lost_packets": stats.lost_packets, "refused_peers": allow.refused, "workers": stats.connections}
    if args.json:
        print(json.dumps(summary), flush=True)
    else:
        rate = packets / seconds if seconds else 0.0
        _log(f"sent {packets:,} packets, {nbytes:,} bytes in {seconds:.3f} s ({rate:,.0f} packets/s) to "
             f"{len(stats.connections)} worker(s); lost with dead workers: {stats.lost_packets}; "
             f"peers refused: {allow.refused}")
    return 0

