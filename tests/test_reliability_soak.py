"""The soak (tests/helpers/soak.py) for PACKET_IPC_SOAK_SECONDS (15 by default; CI sets 60): client processes
connecting, closing and being killed against one server process, with exactly-once in-order delivery and
a flat server (RSS, fds) checked by the soak itself. Run it longer by hand: python tests/helpers/soak.py --seconds 600.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SECONDS = float(os.environ.get("PACKET_IPC_SOAK_SECONDS", "15"))
SOAK = Path(__file__).resolve().parent / "helpers" / "soak.py"


@pytest.mark.timeout(SECONDS + 180)
def test_soak_delivers_exactly_once_in_order_and_the_server_stays_flat():
    run = subprocess.run([sys.executable, str(SOAK), "--seconds", str(SECONDS)], capture_output=True, text=True,
                         timeout=SECONDS + 150)
    summary = [line for line in run.stdout.splitlines() if line.startswith("soak:")]
    print("\n".join(summary))
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr[-4000:]}"
    assert "errors=0" in summary[-1] and "connects=" in summary[-1]
