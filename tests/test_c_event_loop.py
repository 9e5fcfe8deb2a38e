"""The C ABI for event loops, from C: tests/c/event_loop.c runs a server and two clients in one thread and one
poll loop (the handshakes through pipc_client_connect_start/_finish and pipc_server_pending_fd, a flow
distribution through pipc_server_send_nowait and the connection's wait protocol) and checks that every packet
arrives exactly once, each flow in order, and that a stalled send names the worker whose ring is full."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from helpers.cbuild import build_c_program

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_c_program("event_loop", tmp_path_factory.mktemp("event-loop"))


@pytest.mark.parametrize("packets", [1, 5000, 40000])
def test_one_thread_serves_two_clients_by_flow_with_the_non_blocking_c_calls(program, packets):
    run = subprocess.run([str(program), str(packets)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    m = re.fullmatch(r"ok packets=(\d+)\+(\d+) stalls=(\d+) threads=(\d+)\n", run.stdout)
    assert m, run.stdout
    a, b, stalls, threads = map(int, m.groups())
    assert a + b == packets and threads == 1
    if packets > 1000:  # 16 KiB rings: a large send stalls, and both workers get flows
        assert stalls > 0 and a > 0 and b > 0


def test_the_non_blocking_calls_are_clean_under_address_and_undefined_behavior_sanitizers(tmp_path):
    from test_c_sanitizers import COMMON, CORE, clean_env, gcc, require_sanitizer

    require_sanitizer(tmp_path, "-fsanitize=address,undefined", "libasan8 and libubsan1 (come with gcc-12)")
    exe = tmp_path / "event_loop"
    cmd = [gcc(), *COMMON, "-fsanitize=address,undefined", "-fno-sanitize-recover=all", *CORE,
           str(REPO / "tests" / "c" / "event_loop.c"), "-o", str(exe)]
    built = subprocess.run(cmd, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    run = subprocess.run([str(exe), "20000"], capture_output=True, text=True, timeout=120,
                         env=clean_env(ASAN_OPTIONS="detect_leaks=1"))
    assert run.returncode == 0, run.stderr[-6000:]
    assert run.stdout.startswith("ok packets=") and "Sanitizer" not in run.stderr, run.stderr[-6000:]
