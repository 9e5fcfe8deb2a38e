"""The C classic-pcap fast path (csrc/pcap.c) reads exactly what the Python reader reads, damage included."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import repo_captures, shared_captures
from packet_ipc.pcap import CaptureError, open_capture


def read_both(path):
    """(records or error) through the Python reader and through the fast path, as comparable tuples."""

    def run(fast: bool):
        out, error = [], None
        with open_capture(path) as reader:
            try:
                if fast:
                    for batch in reader.read_packet_batches(97):
                        out.extend((p.timestamp, p.tobytes(), p.orig_len, p.linktype) for p in batch)
                else:
                    out.extend((r.timestamp, r.data, r.orig_len, r.linktype) for r in reader)
            except CaptureError as e:
                error = str(e)
        return out, error

    return run(False), run(True)


CAPTURES = [p for p in repo_captures() + shared_captures() if p.suffix == ".pcap"]


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_fast_path_matches_the_python_reader(path):
    try:
        slow, fast = read_both(path)
    except CaptureError:
        pytest.skip("header not readable (both paths share the header parser)")
    assert fast == slow


@pytest.mark.parametrize("name", ["libpcap_pcap-invalid-version-1.pcap", "pcapfix_test_damaged.pcap"])
def test_fast_path_reports_damage_like_the_python_reader(shared_pcaps, name):
    path = shared_pcaps.parent / "bad-captures" / name
    try:
        slow, fast = read_both(path)
    except CaptureError as e:
        assert "version" in str(e)
        return
    assert fast == slow and slow[1] is not None


@settings(max_examples=60, deadline=None)
@given(cut=st.integers(24, 10_000), which=st.sampled_from([p for p in repo_captures() if p.suffix == ".pcap"]))
def test_truncated_files_give_the_same_packets_and_error_on_both_paths(tmp_path_factory, cut, which):
    data = which.read_bytes()
    path = tmp_path_factory.mktemp("cut") / which.name
    path.write_bytes(data[: min(cut, len(data))])
    assert read_both(path)[1] == read_both(path)[0]
