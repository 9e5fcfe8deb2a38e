"""Build of the C core: the CPython extension ``packet_ipc._core`` and the C library ``libpacketipc.so``.

Both compile the same ``csrc/`` sources. The library and the public header are shipped inside the package
(``packet_ipc/lib``, ``packet_ipc/include``). ``PACKET_IPC_SANITIZE=address,undefined`` builds with sanitizers.
"""

import os
import re
import shutil
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
# The soname's number is the C ABI version: a program built for ABI 1 never loads an incompatible library.
ABI_VERSION = int(re.search(r"#define PACKET_IPC_ABI_VERSION (\d+)", (ROOT / "include" / "packet_ipc.h").read_text())[1])
# The release is written once, in the header; the package metadata (and so packet_ipc.__version__) takes it from there.
VERSION = re.search(r'#define PACKET_IPC_VERSION "([^"]+)"', (ROOT / "include" / "packet_ipc.h").read_text())[1]
CORE = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.c"))
CFLAGS = ["-std=c11", "-O3", "-Wall", "-Wextra", "-fvisibility=hidden"]
LDFLAGS: list[str] = []
if os.environ.get("PACKET_IPC_SANITIZE"):
    san = os.environ["PACKET_IPC_SANITIZE"]
    CFLAGS += [f"-fsanitize={san}", "-fno-omit-frame-pointer", "-g"]
    LDFLAGS += [f"-fsanitize={san}"]

LIBNAME = "packet_ipc.lib.libpacketipc"
SONAME = f"libpacketipc.so.{ABI_VERSION}"


class BuildExt(build_ext):
    """Names the C library plainly (libpacketipc.so) and exports only the public pipc_ symbols from it."""

    def finalize_options(self) -> None:
        super().finalize_options()
        # build/ keeps objects that are newer than their sources whatever flags built them: without a rebuild,
        # PACKET_IPC_SANITIZE would ship the normal objects (and the next normal build the sanitized ones).
        self.force = True

    def build_extensions(self) -> None:
        # An interpreter built by pyenv links extensions with -Wl,-rpath,<its own lib dir>: the build machine's
        # path would travel in every wheel (and be searched for libraries on the user's machine). Neither the
        # extension nor libpacketipc.so needs libpython, so drop it.
        self.compiler.linker_so = [a for a in self.compiler.linker_so if not a.startswith("-Wl,-rpath")]
        super().build_extensions()

    def get_ext_fullpath(self, ext_name: str) -> str:
        path = super().get_ext_fullpath(ext_name)
        if ext_name == LIBNAME:
            return os.path.join(os.path.dirname(path), "libpacketipc.so")
        return path

    def get_export_symbols(self, ext: Extension) -> list[str]:
        return [] if ext.name == LIBNAME else super().get_export_symbols(ext)

    def build_extension(self, ext: Extension) -> None:
        if ext.name != LIBNAME:  # the binding links the library built just before it (csrc/ compiled once)
            ext.library_dirs = [os.path.dirname(self.get_ext_fullpath(LIBNAME))]
        super().build_extension(ext)
        if ext.name == LIBNAME:
            # Programs linked with -lpacketipc record the soname (libpacketipc.so.1) and load that name at
            # run time: ship it beside the link-time name (a copy: wheels cannot hold symlinks).
            path = self.get_ext_fullpath(ext.name)
            shutil.copy2(path, os.path.join(os.path.dirname(path), SONAME))


class BuildPy(build_py):
    """Ships the public headers inside the package (packet_ipc/include/packet_ipc.h and packet_ipc_ext.h)."""

    def run(self) -> None:
        super().run()
        dst = Path(self.build_lib) / "packet_ipc" / "include"
        dst.mkdir(parents=True, exist_ok=True)
        for header in ("packet_ipc.h", "packet_ipc_ext.h"):
            shutil.copy2(ROOT / "include" / header, dst / header)


setup(
    version=VERSION,
    ext_modules=[
        # First the C library (what C programs link), then the binding over it: csrc/ is compiled once, and
        # Python, C programs and the ctypes users of the library in one process share one copy of its state.
        Extension(
            LIBNAME,
            sources=CORE,
            include_dirs=["include", "csrc"],
            define_macros=[("PIPC_BUILD_SHARED", "1")],
            extra_compile_args=CFLAGS,
            extra_link_args=LDFLAGS + [f"-Wl,-soname,{SONAME}"],
        ),
        Extension(
            "packet_ipc._core",
            sources=sorted(str(p.relative_to(ROOT)) for p in (ROOT / "src" / "packet_ipc").glob("_*.c")),
            include_dirs=["include"],  # public headers only: the binding is a client of the C ABI
            libraries=["packetipc"],
            extra_compile_args=CFLAGS,
            # finds lib/libpacketipc.so.N (the soname copy) beside the module, wherever the package is installed
            extra_link_args=LDFLAGS + ["-Wl,-rpath,$ORIGIN/lib"],
        ),
    ],
    cmdclass={"build_ext": BuildExt, "build_py": BuildPy},
)
