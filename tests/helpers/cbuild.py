"""Builds a C test program of tests/c/ against the installed library, as docs/c-api.md tells a newcomer:
``cc -std=c11 -Wall -Wextra -Werror prog.c $(packet-ipc config --cflags --libs)``."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS_C = Path(__file__).resolve().parents[1] / "c"


def build_c_program(name: str, out_dir: Path, *extra: str) -> Path:
    """Compiles tests/c/NAME.c into out_dir/NAME (skips the test when there is no C compiler)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc) on PATH")
    flags = subprocess.run([sys.executable, "-m", "packet_ipc.cli", "config", "--cflags", "--libs"], check=True,
                           capture_output=True, text=True).stdout
    out = out_dir / name
    built = subprocess.run([cc, "-std=c11", "-Wall", "-Wextra", "-Werror", *extra, "-o", str(out),
                            str(TESTS_C / f"{name}.c"), *shlex.split(flags)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    return out
