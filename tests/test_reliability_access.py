"""Access control: three fences keep other users out, and allow lists open exactly what they name.

1. the private directory (0700) of a generated name; 2. the socket's mode (0600); 3. SO_PEERCRED, checked
by the server against its own uid, root, ``allowed_uids``/``allowed_gids`` or ``allow_any_uid``. Once other
uids are allowed, the first two open (directory 0711, socket 0666) so the third can decide.
Clients of another uid are spawned children that drop privileges, so these tests need root.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading

import pytest

import packet_ipc as pipc
from helpers.crashers import connect_as

NOBODY = 65534
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid (setuid to nobody)"),
    pytest.mark.timeout(60),
]


@pytest.fixture
def open_dir():
    """A directory anyone can reach (tmp_path lives under a 0700 directory that nobody cannot traverse)."""
    path = tempfile.mkdtemp(prefix="packet-ipc-access-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path)


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def run_as_nobody(ctx, server: pipc.Server, *, accept: bool = True, gid: int = NOBODY):
    """Connects from a child running as nobody; returns (what the child saw, what accept did)."""
    result_q = ctx.Queue()
    child = ctx.Process(target=connect_as, args=(server.name, NOBODY, gid, result_q))
    child.start()
    accepted: object = None
    if accept:
        try:
            conn = server.accept(timeout=10)
            accepted = conn
            conn.send([pipc.Packet(1, b"welcome")])
            conn.send(None)
        except pipc.PacketIpcError as e:
            accepted = e
    seen = result_q.get(timeout=30)
    child.join(30)
    return seen, accepted


def test_private_directory_is_0700_socket_0600_and_both_are_gone_after_close():
    server = pipc.Server()
    directory = os.path.dirname(server.name)
    assert mode(directory) == 0o700 and stat.S_ISDIR(os.stat(directory).st_mode)
    assert mode(server.name) == 0o600 and stat.S_ISSOCK(os.stat(server.name).st_mode)
    assert os.stat(directory).st_uid == os.geteuid()
    server.close()
    assert not os.path.exists(directory)


@pytest.mark.parametrize("options", [{"allow_any_uid": True}, {"allowed_uids": [NOBODY]}, {"allowed_gids": [NOBODY]}],
                         ids=["allow_any_uid", "allowed_uids", "allowed_gids"])
def test_allowing_other_uids_opens_the_directory_for_traversal_only_and_the_socket(options):
    with pipc.Server(**options) as server:
        assert mode(os.path.dirname(server.name)) == 0o711  # reachable by name, not listable
        assert mode(server.name) == 0o666  # SO_PEERCRED decides


def test_client_of_another_uid_is_refused_by_default(ctx):
    with pipc.Server(capacity=1 << 16) as server:
        (kind, is_permission_error, errno_, message), _ = run_as_nobody(ctx, server, accept=False)
        assert (kind, is_permission_error) == ("PermissionDeniedError", True)  # EACCES on the path itself
        with pytest.raises(pipc.TimeoutError):
            server.accept(timeout=0.2)  # it never reached the server


@pytest.mark.parametrize("where", ["abstract", "open_path"])
def test_peer_credentials_refuse_a_uid_not_allowed_and_the_server_keeps_serving(ctx, open_dir, where):
    # A name nobody can reach, so the refusal comes from SO_PEERCRED: an abstract name (no file, no mode), or
    # a path in an open directory whose server allows some other uid (which opens the socket's mode).
    if where == "abstract":
        server = pipc.Server(f"@packet-ipc-access-{os.getpid()}", capacity=1 << 16)
    else:
        server = pipc.Server(os.path.join(open_dir, "sock"), capacity=1 << 16, allowed_uids=[NOBODY - 1])
    with server:
        (kind, is_permission_error, errno_, message), accepted = run_as_nobody(ctx, server)
        assert (kind, is_permission_error, errno_) == ("PermissionDeniedError", True, 13)
        assert f"uid {NOBODY}" in message and "not allowed" in message  # the server's reason reached the client
        assert isinstance(accepted, pipc.PermissionDeniedError) and isinstance(accepted, PermissionError)
        assert server._s.counters[0] == 1  # refused
        box: dict = {}  # and the server keeps serving its own uid
        t = threading.Thread(target=lambda: box.setdefault("conn", server.accept(timeout=10)))
        t.start()
        with pipc.Client(server.name, timeout=10) as client:
            t.join()
            box["conn"].send([pipc.Packet(1, b"still serving")])
            assert client.receive_packets(1, timeout=5)[0].tobytes() == b"still serving"
            box["conn"].close()


@pytest.mark.parametrize(
    "name,options,gid",
    [
        (None, {"allowed_uids": [NOBODY]}, NOBODY),
        (None, {"allowed_gids": [12345]}, 12345),  # uid not listed, gid is
        (None, {"allow_any_uid": True}, NOBODY),
        ("open_path", {"allowed_uids": [NOBODY]}, NOBODY),
        ("abstract", {"allowed_uids": [NOBODY]}, NOBODY),
    ],
    ids=["uid-private-dir", "gid-private-dir", "any-private-dir", "uid-open-path", "uid-abstract"],
)
def test_an_allowed_uid_or_gid_connects_and_receives(ctx, open_dir, name, options, gid):
    if name == "open_path":
        name = os.path.join(open_dir, "sock")
    elif name == "abstract":
        name = f"@packet-ipc-access-ok-{os.getpid()}"
    with pipc.Server(name, capacity=1 << 16, **options) as server:
        seen, accepted = run_as_nobody(ctx, server, gid=gid)
        assert seen[:2] == ("ok", b"welcome"), seen
        assert isinstance(accepted, pipc.Connection)
        accepted.close()
