"""The live-capture C ABI (``pipc_capture_*``) from a C program built against the shipped library.

``tests/c/capture_check.c`` (with ``packet-ipc config --cflags --libs``) checks the documented error codes,
captures a datagram it sends to itself on ``lo`` (bytes, ifindex, linktype, timestamp window, counters) and
stops a read with ``pipc_capture_breakloop``. The same program under ``PACKET_IPC_LIBPCAP`` naming a missing
file gets ``-ELIBACC`` with the "install libpcap0.8" message. Capturing needs root (skipped otherwise).
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers.cbuild import build_c_program

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_c_program("capture_check", tmp_path_factory.mktemp("capture"))


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_capture_c_api_on_loopback(program: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("capturing on lo needs root (CAP_NET_RAW)")
    result = subprocess.run([str(program), str(free_udp_port())], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


def test_capture_c_api_without_libpcap(tmp_path: Path) -> None:
    source = tmp_path / "nolib.c"
    source.write_text(textwrap.dedent(
        """
        #include <errno.h>
        #include <stdio.h>
        #include <string.h>
        #include <packet_ipc.h>
        int main(void) {
            const char *ifs[] = {"lo"};
            struct pipc_capture_options o = {.struct_bytes = sizeof o, .interfaces = ifs, .n_interfaces = 1};
            pipc_capture *cap = NULL;
            int rc = pipc_capture_open(&o, &cap);
            printf("%d %s\\n", rc == -ELIBACC && cap == NULL, pipc_last_error());
            return 0;
        }
        """))
    flags = subprocess.run([sys.executable, "-m", "packet_ipc.cli", "config", "--cflags", "--libs"], check=True,
                           capture_output=True, text=True).stdout
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc is not None
    subprocess.run([cc, "-std=c11", "-o", str(tmp_path / "nolib"), str(source), *shlex.split(flags)], check=True)
    result = subprocess.run([str(tmp_path / "nolib")], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "PACKET_IPC_LIBPCAP": "libpcap-pipc14-missing.so"})
    ok, message = result.stdout.split(" ", 1)
    assert ok == "1", result.stdout
    assert "live capture needs libpcap" in message and "install libpcap0.8" in message
