"""One release number everywhere: the header's PACKET_IPC_VERSION (the one place it is written), the C library's
pipc_version(), packet_ipc.__version__, the installed package's metadata and `packet-ipc --version` agree."""

from __future__ import annotations

import ctypes
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import packet_ipc

REPO = Path(__file__).resolve().parents[1]
HEADER_VERSION = re.compile(r'#define PACKET_IPC_VERSION "([^"]+)"')


def header_version(header: Path) -> str:
    match = HEADER_VERSION.search(header.read_text())
    assert match, f"no PACKET_IPC_VERSION in {header}"
    return match[1]


def test_python_version_is_the_installed_metadata_and_the_source_header():
    assert packet_ipc.__version__ == importlib.metadata.version("packet-ipc")
    assert packet_ipc.__version__ == header_version(REPO / "include" / "packet_ipc.h")
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", packet_ipc.__version__)


def test_installed_header_and_library_report_the_same_version():
    assert header_version(Path(packet_ipc.get_include()) / "packet_ipc.h") == packet_ipc.__version__
    lib = ctypes.CDLL(str(Path(packet_ipc.get_library_dir()) / "libpacketipc.so"))
    lib.pipc_version.restype = ctypes.c_char_p
    assert lib.pipc_version().decode() == packet_ipc.__version__


def test_cli_version_flag_prints_the_version_and_exits_zero():
    r = subprocess.run([sys.executable, "-m", "packet_ipc.cli", "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"packet-ipc {packet_ipc.__version__}"
