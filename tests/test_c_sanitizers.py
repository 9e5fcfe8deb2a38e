"""The C core under the sanitizers: tests/c/ring_stress.c (a producer and a consumer thread moving packets of
random sizes through one small ring, every byte checked, releases out of order) built from csrc/*.c directly,
once with AddressSanitizer + UndefinedBehaviorSanitizer and once with ThreadSanitizer. Any report fails.

Limits worth knowing: in ring_stress the server and the client map the ring's memfd at two different
addresses (as two processes would), and ThreadSanitizer tracks addresses, not pages, so it checks the
process-local state (objects, counters, errors, the handshake) rather than the ordering of the shared ring;
that ordering is the job of the SYNC-tagged acquire/release pairs in csrc/ring.c, which this stress exercises
for correctness (every byte, every position) under ASan. GCC's TSan does not model atomic_thread_fence
(-Wtsan), which the wake-up protocol uses; that warning is silenced here.

To run the whole Python suite on a sanitized build instead, see docs/c-api.md ("Sanitizer builds").
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = sorted(str(p) for p in (REPO / "csrc").glob("*.c"))
STRESS = REPO / "tests" / "c" / "ring_stress.c"
COMMON = ["-std=c11", "-O1", "-g", "-fno-omit-frame-pointer", "-pthread", "-Wall", "-Wextra", "-Werror",
          f"-I{REPO / 'include'}", f"-I{REPO / 'csrc'}"]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a sanitized child: without an LD_PRELOAD of another runtime (the sanitized Python
    suite preloads libasan, which a TSan program cannot start with)."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env.update(extra)
    return env


def gcc() -> str:
    path = shutil.which("gcc") or shutil.which("cc")
    if not path:
        pytest.skip("no C compiler on PATH")
    return path


def require_sanitizer(tmp_path: Path, flag: str, package: str) -> None:
    """Skips unless the toolchain can build and run a program with this sanitizer."""
    src = tmp_path / "probe.c"
    src.write_text("int main(void) { return 0; }\n")
    exe = tmp_path / "probe"
    r = subprocess.run([gcc(), flag, str(src), "-o", str(exe)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"{flag} unavailable (install {package}): {r.stderr.strip().splitlines()[-1:]}")
    r = subprocess.run([str(exe)], capture_output=True, text=True, env=clean_env())
    if r.returncode != 0:
        pytest.skip(f"{flag} programs do not run here: {r.stderr.strip()[:200]}")


def build_and_run(tmp_path: Path, flags: list[str], env: dict[str, str], count: int, seed: int) -> None:
    exe = tmp_path / "ring_stress"
    cmd = [gcc(), *COMMON, *flags, *CORE, str(STRESS), "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr}"
    r = subprocess.run([str(exe), str(count), str(seed)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-6000:]
    assert r.stdout.startswith(f"ok packets={count} "), r.stdout
    assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr[-6000:]


def test_ring_stress_is_clean_under_address_and_undefined_behavior_sanitizers(tmp_path):
    require_sanitizer(tmp_path, "-fsanitize=address,undefined", "libasan8 and libubsan1 (come with gcc-12)")
    env = clean_env(
        ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1",
        UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1",
    )
    flags = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    build_and_run(tmp_path, flags, env, count=2_000_000, seed=1)


def test_ring_stress_has_no_data_race_under_thread_sanitizer(tmp_path):
    require_sanitizer(tmp_path, "-fsanitize=thread", "libtsan2 (comes with gcc-12)")
    env = clean_env(TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1")
    # TSan checks every byte compared and copied, about 20 times slower: fewer packets keep it under 10 s.
    build_and_run(tmp_path, ["-fsanitize=thread", "-Wno-tsan"], env, count=200_000, seed=7)
