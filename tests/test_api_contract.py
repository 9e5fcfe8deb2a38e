"""The package's promises about its own surface: typed (mypy --strict, py.typed), documented, versioned."""

from __future__ import annotations

import importlib
import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import packet_ipc

REPO = Path(__file__).resolve().parents[1]
MODULES = ["packet_ipc", "packet_ipc.server", "packet_ipc.client", "packet_ipc.errors", "packet_ipc.pcap",
           "packet_ipc.replay", "packet_ipc.stats", "packet_ipc.batch", "packet_ipc.packet", "packet_ipc.cli",
           "packet_ipc.pcap_over_ip", "packet_ipc.endpoint", "packet_ipc.aio"]


def public_callables():
    for name in MODULES:
        module = importlib.import_module(name)
        for attr in getattr(module, "__all__", []):
            obj = getattr(module, attr)
            if not (getattr(obj, "__module__", None) or "").startswith("packet_ipc"):
                continue  # a re-export of someone else's name: packet.Buffer is collections.abc.Buffer from 3.12 on
            if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj):  # not typing aliases
                yield f"{name}.{attr}", obj


def test_every_public_name_has_a_docstring():
    missing = [qual for qual, obj in public_callables() if not (obj.__doc__ or "").strip()]
    assert not missing


def test_every_public_python_function_and_method_is_annotated():
    unannotated = []
    for qual, obj in public_callables():
        members = [(qual, obj)] if inspect.isfunction(obj) else []
        if inspect.isclass(obj):
            members += [(f"{qual}.{n}", m) for n, m in vars(obj).items()
                        if inspect.isfunction(m) and (not n.startswith("_") or n == "__init__")
                        and m.__qualname__.startswith(obj.__name__ + ".")]  # not typing's generated __init__
        for where, fn in members:
            sig = inspect.signature(fn)
            params = [p for p in sig.parameters.values() if p.name not in ("self", "cls")]
            if any(p.annotation is inspect.Parameter.empty for p in params) or (
                sig.return_annotation is inspect.Signature.empty
            ):
                unannotated.append(where)
            if not (fn.__doc__ or "").strip() and not where.endswith("__init__"):
                unannotated.append(where + " (no docstring)")
    assert not unannotated


def test_package_ships_py_typed_and_the_c_header():
    root = Path(packet_ipc.__file__).parent
    assert (root / "py.typed").exists()
    assert (root / "_core.pyi").exists()
    assert (Path(packet_ipc.get_include()) / "packet_ipc.h").exists()


@pytest.mark.skipif(shutil.which("mypy") is None and importlib.util.find_spec("mypy") is None, reason="mypy not installed")
def test_package_type_checks_under_mypy_strict():
    result = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(REPO / "src" / "packet_ipc")],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
