"""Shared fixtures: capture locations, spawned processes, and leak accounting."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SHARED_PCAPS = SHARED_DATA / "pcaps"
REPO_CAPTURES = REPO / "tests" / "data"


def shared_captures() -> list[Path]:
    """Every capture under ../shared/data/pcaps (recursively), or [] when ../shared is absent."""
    if not SHARED_PCAPS.is_dir():
        return []
    return sorted(p for p in SHARED_PCAPS.rglob("*") if p.suffix in (".pcap", ".pcapng"))


def repo_captures() -> list[Path]:
    """The small tcpdump captures shipped in tests/data (BSD license, tests/data/LICENSE.tcpdump)."""
    return sorted(p for p in REPO_CAPTURES.iterdir() if p.suffix in (".pcap", ".pcapng"))


@pytest.fixture
def shared_pcaps() -> Path:
    if not SHARED_PCAPS.is_dir():
        pytest.skip(f"shared captures not present at {SHARED_PCAPS} (a clone without ../shared)")
    return SHARED_PCAPS


@pytest.fixture(scope="session")
def ctx() -> multiprocessing.context.SpawnContext:
    """Spawned (not forked) children: they inherit no socket of the test process, as real workers would."""
    return multiprocessing.get_context("spawn")


def open_fds() -> set[int]:
    return {int(x) for x in os.listdir("/proc/self/fd")}

