"""The ``capture`` command: live capture from interfaces into workers (the logic is in :mod:`packet_ipc.live`)."""

from __future__ import annotations

import argparse

from .common import add_server_options


def cmd_capture(args: argparse.Namespace) -> int:
    """Captures live from one or more interfaces into the IPC (logic in packet_ipc.live)."""
    from ..live import run_capture

    return run_capture(args)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Registers ``capture``."""
    from ..live import add_capture_arguments

    p = sub.add_parser("capture", help="capture live from interfaces into workers",
                       description="Live capture (libpcap, driven from C) into packet-ipc workers. Needs CAP_NET_RAW.")
    add_capture_arguments(p)
    add_server_options(p)
    p.set_defaults(func=cmd_capture)
