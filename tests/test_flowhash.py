"""The symmetric flow hash of csrc/flowhash.c, tested as C: the file is compiled into a throwaway shared
library and called through ctypes, so these tests do not depend on the extension module (when
``packet_ipc._core`` is importable and has ``flow_key``/``flow_hash`` it is checked to agree).

Keys are checked against an independent reference built on dpkt for every IP packet of real captures;
symmetry on real and synthetic packets; robustness on random and truncated bytes, also under
AddressSanitizer/UBSan through the C driver tests/c/flowhash_fuzz.c.
"""

from __future__ import annotations

import collections
import ctypes
import itertools
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

dpkt = pytest.importorskip("dpkt")
import dpkt.ip6  # noqa: E402
import dpkt.loopback  # noqa: E402
import dpkt.sll  # noqa: E402
import dpkt.sll2  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FLOWHASH_C = REPO / "csrc" / "flowhash.c"
FUZZ_DRIVER_C = REPO / "tests" / "c" / "flowhash_fuzz.c"
PCAPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pcaps"

ETHERNET, NULL, RAW, LOOP, SLL, SLL2 = 1, 0, 101, 108, 113, 276
SUPPORTED_LINKTYPES = (0, 1, 12, 14, 101, 108, 113, 228, 229, 276)
PORT_PROTOS = (6, 17, 132)

Key = collections.namedtuple("Key", "family proto addr_a port_a addr_b port_b is_fragment")


# ---------------------------------------------------------------------------------------------------------
# The C code under test, through ctypes


class _CFlowKey(ctypes.Structure):
    _fields_ = [
        ("family", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("port_a", ctypes.c_uint16),
        ("port_b", ctypes.c_uint16),
        ("addr_a", ctypes.c_uint8 * 16),
        ("addr_b", ctypes.c_uint8 * 16),
        ("is_fragment", ctypes.c_uint8),
    ]


class FlowHashLib:
    def __init__(self, path: Path) -> None:
        lib = ctypes.CDLL(str(path))
        lib.pipc_flow_key_parse.argtypes = [
            ctypes.c_uint32, ctypes.c_char_p, ctypes.c_uint32, ctypes.POINTER(_CFlowKey)]
        lib.pipc_flow_key_parse.restype = ctypes.c_int
        lib.pipc_flow_hash.argtypes = [ctypes.c_uint32, ctypes.c_char_p, ctypes.c_uint32]
        lib.pipc_flow_hash.restype = ctypes.c_uint32
        lib.pipc_flow_hash_batch.argtypes = [
            ctypes.c_uint32, ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_uint32),
            ctypes.c_size_t, ctypes.POINTER(ctypes.c_uint32)]
        lib.pipc_flow_hash_batch.restype = None
        self._lib = lib

    def key(self, linktype: int, data: bytes) -> Key | None:
        k = _CFlowKey()
        rc = self._lib.pipc_flow_key_parse(linktype, data, len(data), ctypes.byref(k))
        if rc != 0:
            assert rc == -1
            assert bytes(k) == bytes(ctypes.sizeof(k)), "key must be zeroed when no IP key is found"
            return None
        n = 4 if k.family == 4 else 16
        assert k.family in (4, 6)
        assert bytes(k.addr_a)[n:] == bytes(16 - n) and bytes(k.addr_b)[n:] == bytes(16 - n)
        return Key(k.family, k.proto, bytes(k.addr_a)[:n], k.port_a, bytes(k.addr_b)[:n], k.port_b,
                   k.is_fragment)

    def hash(self, linktype: int, data: bytes) -> int:
        return self._lib.pipc_flow_hash(linktype, data, len(data))

    def hash_batch(self, linktype: int, packets: list[bytes]) -> list[int]:
        n = len(packets)
        ptrs = (ctypes.c_char_p * n)(*packets)
        lens = (ctypes.c_uint32 * n)(*[len(p) for p in packets])
        out = (ctypes.c_uint32 * n)()
        self._lib.pipc_flow_hash_batch(linktype, ptrs, lens, n, out)
        return list(out)


def _compile(out: Path, *extra: str) -> None:
    cmd = ["gcc", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", *extra, "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@pytest.fixture(scope="session")
def flowhash(tmp_path_factory: pytest.TempPathFactory) -> FlowHashLib:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build csrc/flowhash.c")
    so = tmp_path_factory.mktemp("flowhash") / "libflowhash.so"
    _compile(so, "-shared", "-fPIC", f"-I{REPO / 'include'}", str(FLOWHASH_C))
    return FlowHashLib(so)


@pytest.fixture(scope="session")
def flowhash_general(tmp_path_factory: pytest.TempPathFactory) -> FlowHashLib:
    """The same file built without its fast path (PIPC_FLOWHASH_GENERAL_ONLY): every packet through the key
    parser, the reference the fast path must agree with."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build csrc/flowhash.c")
    so = tmp_path_factory.mktemp("flowhash_general") / "libflowhash_general.so"
    _compile(so, "-shared", "-fPIC", "-DPIPC_FLOWHASH_GENERAL_ONLY", f"-I{REPO / 'include'}", str(FLOWHASH_C))
    return FlowHashLib(so)


def _core_module():
    try:
        from packet_ipc import _core  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _core if hasattr(_core, "flow_key") and hasattr(_core, "flow_hash") else None


# ---------------------------------------------------------------------------------------------------------
# Captures and the dpkt reference parser


def _read_pcapng(raw: bytes):
    """(linktype, data) of every packet of a pcapng file, with each packet's own interface's linktype
    (dpkt's pcapng reader only knows the first interface)."""
    pos, order, links = 0, "<", []
    while pos + 12 <= len(raw):
        btype = struct.unpack_from(order + "I", raw, pos)[0]
        if btype == 0x0A0D0D0A:  # section header: byte order may change, interfaces restart
            order = "<" if raw[pos + 8:pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            links = []
        blen = struct.unpack_from(order + "I", raw, pos + 4)[0]
        if blen < 12 or pos + blen > len(raw):
            break
        if btype == 1:  # interface description
            links.append(struct.unpack_from(order + "H", raw, pos + 8)[0])
        elif btype == 6:  # enhanced packet
            ifid, _, _, caplen = struct.unpack_from(order + "IIII", raw, pos + 8)
            yield links[ifid], raw[pos + 28:pos + 28 + caplen]
        elif btype == 3 and links:  # simple packet
            orig = struct.unpack_from(order + "I", raw, pos + 8)[0]
            yield links[0], raw[pos + 12:pos + 12 + min(orig, blen - 16)]
        pos += blen


def read_capture(path: Path):
    raw = path.read_bytes()
    if raw[:4] == b"\x0a\x0d\x0d\x0a":
        return list(_read_pcapng(raw))
    with path.open("rb") as f:
        reader = dpkt.pcap.Reader(f)
        linktype = reader.datalink() & 0x03FFFFFF  # upper bits: FCS length, not the link type
        return [(linktype, bytes(buf)) for _, buf in reader]


def _ports(proto: int, data) -> tuple[int, int]:
    if proto not in PORT_PROTOS:
        return 0, 0
    if isinstance(data, (dpkt.tcp.TCP, dpkt.udp.UDP, dpkt.sctp.SCTP)):
        return data.sport, data.dport
    if isinstance(data, bytes) and len(data) >= 4:  # dpkt could not decode a cut-short header
        return struct.unpack(">HH", data[:4])
    return 0, 0


def _key_from_dpkt_ip(ip) -> Key | None:
    if isinstance(ip, dpkt.ip.IP):
        if ip.v != 4 or len(ip.opts) < ip.hl * 4 - 20:  # dpkt accepts options cut short
            return None
        frag = bool(ip.mf or ip.offset)
        sport, dport = (0, 0) if frag else _ports(ip.p, ip.data)
        return Key(4, ip.p, ip.src, sport, ip.dst, dport, int(frag))
    if isinstance(ip, dpkt.ip6.IP6):
        if ip.v != 6:
            return None
        proto, frag = ip.nxt, False
        for ext in ip.all_extension_headers:
            if proto == 50:  # ESP: dpkt lists it as an extension header, it ends the chain
                break
            if proto == 44 and (ext.frag_off or ext.m_flag):
                proto, frag = ext.nxt, True
                break
            proto = ext.nxt
        sport, dport = (0, 0) if frag else _ports(proto, ip.data)
        return Key(6, proto, ip.src, sport, ip.dst, dport, int(frag))
    return None


class DpktRefused(Exception):
    """dpkt raised on a packet (it is stricter than flowhash.c about cut-short headers)."""


def reference_key(linktype: int, buf: bytes) -> Key | None:
    try:
        if linktype == ETHERNET:
            eth = dpkt.ethernet.Ethernet(buf)
            if eth.type <= 1500 or getattr(eth, "mpls_labels", None):
                return None  # 802.3/LLC and MPLS: not parsed by flowhash.c
            ip = eth.data
        elif linktype == SLL:
            ip = dpkt.sll.SLL(buf).data
        elif linktype == SLL2:
            ip = dpkt.sll2.SLL2(buf).data
        elif linktype in (RAW, 12, 14, 228, 229):
            version = buf[0] >> 4 if buf else 0
            if linktype == 228 and version != 4 or linktype == 229 and version != 6:
                return None
            ip = dpkt.ip.IP(buf) if version == 4 else dpkt.ip6.IP6(buf) if version == 6 else None
        elif linktype in (NULL, LOOP):
            ip = dpkt.loopback.Loopback(buf).data
        else:
            return None
    except (dpkt.Error, struct.error, IndexError) as exc:
        raise DpktRefused(repr(exc)) from exc
    if isinstance(ip, bytes) and _link_says_ip(linktype, buf):
        # dpkt swallows the error of the IP layer and leaves the bytes undecoded
        raise DpktRefused("IP layer left undecoded")
    return _key_from_dpkt_ip(ip)


def _link_says_ip(linktype: int, buf: bytes) -> bool:
    if linktype in (ETHERNET, SLL, SLL2):
        off, etype = {ETHERNET: (14, 12), SLL: (16, 14), SLL2: (20, 0)}[linktype]
        etype = struct.unpack_from(">H", buf, etype)[0]
        while etype in (0x8100, 0x88A8, 0x9100) and len(buf) >= off + 4:
            etype = struct.unpack_from(">H", buf, off + 2)[0]
            off += 4
        return etype in (0x0800, 0x86DD)
    return False


def _refused_ok(key: Key | None) -> bool:
    """Where dpkt raises, flowhash.c may still find a key from a complete fixed IP header whose
    following headers are cut short: such a key has no ports and is not known to be a fragment."""
    return key is None or (key.port_a == key.port_b == 0 and key.is_fragment == 0)


def _captures_under(*patterns: str) -> list[Path]:
    return sorted({p for pat in patterns for p in PCAPS.glob(pat)})


def _manifest_paths(linktype_name: str) -> list[str]:
    manifest = PCAPS.parent / "MANIFEST.tsv"
    if not manifest.exists():
        return []
    rows = (line.split("\t") for line in manifest.read_text().splitlines()[1:])
    return sorted(r[0] for r in rows if len(r) > 2 and r[2] == linktype_name)


NAMED_CAPTURES = [
    "merged-ether.pcap",
    "QinQpacket-nsec.pcap",
    "more/ndpi_ajp_vlan.pcap",
    "more/ndpi_dns_fragmented.pcap",
    "more/gopacket_test_loopback_null.pcap",
    "wireshark/netperfmeter.pcapng",  # Linux SLL, SCTP
    "wireshark/grpc_web.pcapng",  # null, IPv6
    "tcpdump/ipv6-srh-ext-header.pcap",  # IPv6 routing header
    "tcpdump/dccp_partial_csum_v6_longer.pcap",
    "tcpdump/ikev2four.pcap",  # null, IPv4
    "tcpdump/babel_rtt.pcap",  # raw (101)
    "tcpdump/scps_invalid.pcap",  # raw IPv4 (228)
]
SLL_CAPTURES = _manifest_paths("linux-sll")
IPV6_CAPTURES = _manifest_paths("rawip6") + [
    str(p.relative_to(PCAPS)) for p in _captures_under("tcpdump/*v6*.pcap*", "tcpdump/*ipv6*.pcap*")]

compared_counts: dict[str, collections.Counter] = {}


def compare_capture(flowhash: FlowHashLib, rel: str) -> collections.Counter:
    """Compares the C key with the reference key for every packet; returns what was counted."""
    counts = collections.Counter()
    core = _core_module()
    for linktype, buf in read_capture(PCAPS / rel):
        if linktype not in SUPPORTED_LINKTYPES:
            counts["unsupported_linktype"] += 1
            continue
        got = flowhash.key(linktype, buf)
        if core is not None:
            _check_core_agrees(core, flowhash, linktype, buf, got)
        try:
            want = reference_key(linktype, buf)
        except DpktRefused as exc:
            assert _refused_ok(got), f"{rel}: dpkt refused ({exc}) but C found {got} in {buf.hex()}"
            counts["dpkt_refused"] += 1
            continue
        assert got == want, f"{rel} linktype {linktype}: C {got} != dpkt {want} for {buf.hex()}"
        if got is None:
            counts["not_ip"] += 1
        else:
            counts["compared"] += 1
            counts[f"ipv{got.family}"] += 1
            counts["fragments"] += got.is_fragment
            counts["with_ports"] += got.port_a != 0 or got.port_b != 0
    compared_counts[rel] = counts
    return counts


def _check_core_agrees(core, flowhash: FlowHashLib, linktype: int, buf: bytes, got: Key | None) -> None:
    """The extension's flow_key returns (family, proto, addr_a, port_a, addr_b, port_b, is_fragment),
    the field order of Key, addresses as 4 or 16 bytes."""
    assert core.flow_hash(linktype, buf) == flowhash.hash(linktype, buf)
    theirs = core.flow_key(linktype, buf)
    assert (None if theirs is None else Key(*theirs)) == got


def _needs_shared() -> None:
    if not PCAPS.is_dir():
        pytest.skip(f"shared captures not present at {PCAPS}")


# ---------------------------------------------------------------------------------------------------------
# 1. Keys of real captures agree with dpkt


@pytest.mark.parametrize("rel", NAMED_CAPTURES)
def test_key_matches_dpkt_for_every_ip_packet_of_named_capture(flowhash, rel):
    _needs_shared()
    counts = compare_capture(flowhash, rel)
    packets = sum(v for k, v in counts.items() if k in ("compared", "not_ip", "dpkt_refused",
                                                        "unsupported_linktype"))
    assert counts["compared"] >= max(1, packets // 4), counts


def test_key_matches_dpkt_for_linux_sll_captures(flowhash):
    _needs_shared()
    if not SLL_CAPTURES:
        pytest.skip("MANIFEST.tsv lists no linux-sll capture")
    total = collections.Counter()
    for rel in SLL_CAPTURES:
        total += compare_capture(flowhash, rel)
    assert total["compared"] >= 100, total


def test_key_matches_dpkt_for_ipv6_captures(flowhash):
    _needs_shared()
    total = collections.Counter()
    for rel in IPV6_CAPTURES:
        total += compare_capture(flowhash, rel)
    assert total["ipv6"] >= 30 and total["compared"] >= 30, total


def test_key_matches_dpkt_for_every_capture_of_a_supported_linktype(flowhash):
    """The whole corpus, tcpdump's deliberately malformed fuzz cases included."""
    _needs_shared()
    total = collections.Counter()
    for path in _captures_under("**/*.pcap", "**/*.pcapng"):
        total += compare_capture(flowhash, str(path.relative_to(PCAPS)))
    assert total["compared"] >= 20000 and total["ipv6"] >= 500 and total["fragments"] >= 20, total


def test_ipv6_fragments_and_sctp_are_keyed(flowhash):
    _needs_shared()
    frag = compare_capture(flowhash, "more/ndpi_dns_fragmented.pcap")
    assert frag["fragments"] > 0, frag
    sctp = [flowhash.key(lt, buf) for lt, buf in read_capture(PCAPS / "wireshark/netperfmeter.pcapng")]
    assert any(k is not None and k.proto == 132 and k.port_a and k.port_b for k in sctp)


def test_sll2_gives_the_same_key_as_sll(flowhash):
    """No SLL2 capture ships with the data, so SLL packets are re-wrapped as SLL2 and both dpkt and the C
    code are checked against the SLL key."""
    _needs_shared()
    compared = 0
    for rel in ["wireshark/netperfmeter.pcapng"] + SLL_CAPTURES:
        for linktype, buf in read_capture(PCAPS / rel):
            if linktype != SLL or len(buf) < 16:
                continue
            sll2 = buf[14:16] + b"\0\0" + b"\0\0\0\x03" + buf[2:4] + buf[1:2] + buf[5:6] + buf[6:14] + buf[16:]
            assert flowhash.key(SLL2, sll2) == flowhash.key(SLL, buf)
            try:
                assert reference_key(SLL2, sll2) == flowhash.key(SLL2, sll2)
            except DpktRefused:
                continue
            compared += flowhash.key(SLL, buf) is not None
    assert compared >= 100


# ---------------------------------------------------------------------------------------------------------
# 2. Symmetry


def _ip_offset(linktype: int, buf: bytes) -> int | None:
    if linktype == ETHERNET:
        off, etype = 14, struct.unpack_from(">H", buf, 12)[0]
        while etype in (0x8100, 0x88A8, 0x9100):
            etype = struct.unpack_from(">H", buf, off + 2)[0]
            off += 4
        return off
    return {SLL: 16, SLL2: 20, NULL: 4, LOOP: 4, RAW: 0, 228: 0, 229: 0}.get(linktype)


def reverse_packet(linktype: int, buf: bytes, key: Key) -> bytes:
    """The same packet in the other direction: addresses and (if present) ports swapped in place."""
    out = bytearray(buf)
    off = _ip_offset(linktype, buf)
    if key.family == 4:
        a, n, l4 = off + 12, 4, off + (buf[off] & 15) * 4
    else:
        a, n, l4 = off + 8, 16, off + 40
        nxt = buf[off + 6]
        while nxt in (0, 43, 60, 51, 44):
            hlen = 8 if nxt == 44 else (buf[l4 + 1] + 2) * 4 if nxt == 51 else (buf[l4 + 1] + 1) * 8
            nxt, l4 = buf[l4], l4 + hlen
    out[a:a + n], out[a + n:a + 2 * n] = buf[a + n:a + 2 * n], buf[a:a + n]
    if key.port_a or key.port_b:
        out[l4:l4 + 2], out[l4 + 2:l4 + 4] = buf[l4 + 2:l4 + 4], buf[l4:l4 + 2]
    return bytes(out)


def swapped(key: Key) -> Key:
    return key._replace(addr_a=key.addr_b, addr_b=key.addr_a, port_a=key.port_b, port_b=key.port_a)


def test_reversed_real_packets_hash_the_same(flowhash):
    _needs_shared()
    checked = 0
    for linktype, buf in read_capture(PCAPS / "merged-ether.pcap"):
        key = flowhash.key(linktype, buf)
        if key is None:
            continue
        rev = reverse_packet(linktype, buf, key)
        assert flowhash.key(linktype, rev) == swapped(key)
        assert flowhash.hash(linktype, rev) == flowhash.hash(linktype, buf), buf.hex()
        checked += 1
    assert checked >= 2500


def _ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, frag: int = 0) -> bytes:
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, frag, 64, proto, 0, src, dst) + payload


def _ipv6(src: bytes, dst: bytes, proto: int, payload: bytes) -> bytes:
    return struct.pack(">IHBB16s16s", 0x60000000, len(payload), proto, 64, src, dst) + payload


def _wrap(linktype: int, ip: bytes, vlans: int) -> bytes:
    """`ip` behind the link header of `linktype`; on Ethernet, SLL and SLL2 behind up to 3 VLAN tags
    (802.1ad, old QinQ 0x9100, 802.1Q, outermost first)."""
    inner = 0x0800 if ip[0] >> 4 == 4 else 0x86DD
    tags = [0x88A8, 0x9100, 0x8100][3 - vlans:]
    etype = struct.pack(">H", (tags + [inner])[0])
    ip = b"".join(struct.pack(">HH", 5, nxt) for nxt in (tags + [inner])[1:]) + ip  # TCI, next type
    if linktype == ETHERNET:
        return b"\x02" * 6 + b"\x04" * 6 + etype + ip
    if linktype == SLL:
        return b"\x00\x00\x00\x01\x00\x06" + b"\x02" * 6 + b"\0\0" + etype + ip
    if linktype == SLL2:
        return etype + b"\0\0\0\0\0\x02\x00\x01\x00\x06" + b"\x02" * 6 + b"\0\0" + ip
    assert vlans == 0, "VLAN tags only on Ethernet and Linux cooked captures"
    if linktype == NULL:
        return struct.pack("<I", 2 if ip[0] >> 4 == 4 else 30) + ip
    if linktype == LOOP:
        return struct.pack(">I", 2 if ip[0] >> 4 == 4 else 24) + ip
    return ip


endpoints = st.tuples(st.integers(0, 65535), st.integers(0, 65535))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(v6=st.booleans(), proto=st.sampled_from([6, 17, 132, 1, 47]), ports=endpoints,
       same_addr=st.booleans(), addrs=st.tuples(st.binary(min_size=16, max_size=16),
                                                   st.binary(min_size=16, max_size=16)),
       linktype=st.sampled_from([ETHERNET, SLL, SLL2, NULL, LOOP, RAW]), vlans=st.integers(0, 3),
       frag=st.sampled_from([0, 0x4000, 0x2000, 0x0001]))
def test_synthetic_flow_hashes_the_same_both_ways(flowhash, v6, proto, ports, same_addr, addrs, linktype,
                                                  vlans, frag):
    n = 16 if v6 else 4
    a, b = addrs[0][:n], (addrs[0] if same_addr else addrs[1])[:n]
    l4 = struct.pack(">HH", *ports) + bytes(16)
    if v6:
        fwd, rev = _ipv6(a, b, proto, l4), _ipv6(b, a, proto, l4[2:4] + l4[0:2] + l4[4:])
    else:
        fwd, rev = _ipv4(a, b, proto, l4, frag), _ipv4(b, a, proto, l4[2:4] + l4[0:2] + l4[4:], frag)
    vlans = vlans if linktype in (ETHERNET, SLL, SLL2) else 0
    fwd, rev = _wrap(linktype, fwd, vlans), _wrap(linktype, rev, vlans)
    key = flowhash.key(linktype, fwd)
    is_frag = int(not v6 and frag in (0x2000, 0x0001))
    with_ports = proto in PORT_PROTOS and not is_frag
    assert key == Key(6 if v6 else 4, proto, a, ports[0] if with_ports else 0, b,
                      ports[1] if with_ports else 0, is_frag)
    assert flowhash.key(linktype, rev) == swapped(key)
    assert flowhash.hash(linktype, fwd) == flowhash.hash(linktype, rev)


def test_every_fragment_of_a_datagram_hashes_like_the_first(flowhash):
    a, b = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    udp = struct.pack(">HHHH", 5353, 53, 0, 0) + bytes(32)
    first = flowhash.hash(RAW, _ipv4(a, b, 17, udp, 0x2000))
    assert flowhash.hash(RAW, _ipv4(a, b, 17, bytes(40), 0x0005)) == first
    assert flowhash.hash(RAW, _ipv4(b, a, 17, bytes(40), 0x0005)) == first  # reply fragments too
    # the documented price: the unfragmented datagrams of the flow hash with their ports
    assert flowhash.key(RAW, _ipv4(a, b, 17, udp)).port_a == 5353
    # IPv6: Fragment header with M set / offset != 0 is a fragment; atomic (M = 0, offset 0) is not
    a6, b6 = bytes(15) + b"\1", bytes(15) + b"\2"
    frag_hdr = lambda off_m: struct.pack(">BBHI", 17, 0, off_m, 7)  # noqa: E731
    k_first = flowhash.key(RAW, _ipv6(a6, b6, 44, frag_hdr(1) + udp))
    k_later = flowhash.key(RAW, _ipv6(a6, b6, 44, frag_hdr(8 << 3) + bytes(40)))
    assert k_first == k_later == Key(6, 17, a6, 0, b6, 0, 1)
    assert flowhash.key(RAW, _ipv6(a6, b6, 44, frag_hdr(0) + udp)) == Key(6, 17, a6, 5353, b6, 53, 0)


def test_ipv6_extension_headers_are_walked(flowhash):
    a6, b6 = bytes(15) + b"\1", bytes(15) + b"\2"
    tcp = struct.pack(">HH", 443, 50000) + bytes(16)
    hop = bytes([43, 0]) + bytes(6)  # hop-by-hop, 8 bytes, next: routing
    rt = bytes([60, 1]) + bytes(14)  # routing, 16 bytes, next: destination options
    dst = bytes([51, 0]) + bytes(6)  # destination options, 8 bytes, next: AH
    ah = bytes([6, 4]) + bytes(22)  # AH, (4 + 2) * 4 = 24 bytes, next: TCP
    pkt = _ipv6(a6, b6, 0, hop + rt + dst + ah + tcp)
    assert flowhash.key(RAW, pkt) == Key(6, 6, a6, 443, b6, 50000, 0)
    assert reference_key(RAW, pkt) == flowhash.key(RAW, pkt)
    # cut short inside the chain: the key stays, proto names the header that could not be walked
    assert flowhash.key(RAW, pkt[:40 + 8 + 10]) == Key(6, 43, a6, 0, b6, 0, 0)
    # ESP ends the walk
    assert flowhash.key(RAW, _ipv6(a6, b6, 50, bytes(32))).proto == 50


def test_ip_length_bounds_the_walk_not_the_padding(flowhash):
    a, b = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    ip = _ipv4(a, b, 17, b"")  # total length 20: no UDP header although padding follows
    assert flowhash.key(ETHERNET, _wrap(ETHERNET, ip, 0) + b"\x12\x34\x56\x78" * 4) == Key(4, 17, a, 0, b, 0, 0)


def test_non_ip_hashes_the_mac_pair_on_ethernet_and_zero_elsewhere(flowhash):
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + bytes(28)
    reply = b"\x02" * 6 + b"\xff" * 6 + b"\x08\x06" + bytes(28)
    assert flowhash.key(ETHERNET, arp) is None
    assert flowhash.hash(ETHERNET, arp) == flowhash.hash(ETHERNET, reply) != 0
    assert flowhash.hash(SLL, bytes(14) + b"\x08\x06" + bytes(28)) == 0
    assert flowhash.hash(147, _ipv4(bytes(4), bytes(4), 6, bytes(20))) == 0  # unknown linktype
    assert flowhash.key(RAW, b"") is None and flowhash.hash(RAW, b"") == 0


def test_hash_is_pinned_across_builds_and_machines(flowhash):
    """No seed, no host byte order in the hash: these values must never change silently (workers of
    different processes or machines must agree on where a flow goes)."""
    a, b = bytes([192, 168, 1, 1]), bytes([10, 0, 0, 7])
    pkt = _ipv4(a, b, 6, struct.pack(">HH", 1234, 80) + bytes(16))
    pkt6 = _ipv6(bytes(15) + b"\1", bytes(15) + b"\2", 17, struct.pack(">HH", 53, 40000) + bytes(4))
    assert (flowhash.hash(RAW, pkt), flowhash.hash(RAW, pkt6)) == PINNED_HASHES


PINNED_HASHES = (430649363, 1988883025)


def test_fast_path_is_pinned_too(flowhash):
    """The same packets behind Ethernet (the fast path's shape) hash as they do raw; a non-IP frame hashes
    its MAC pair to the value it always had."""
    a, b = bytes([192, 168, 1, 1]), bytes([10, 0, 0, 7])
    pkt = _ipv4(a, b, 6, struct.pack(">HH", 1234, 80) + bytes(16))
    pkt6 = _ipv6(bytes(15) + b"\1", bytes(15) + b"\2", 17, struct.pack(">HH", 53, 40000) + bytes(4))
    assert (flowhash.hash(ETHERNET, _wrap(ETHERNET, pkt, 0)),
            flowhash.hash(ETHERNET, _wrap(ETHERNET, pkt6, 0))) == PINNED_HASHES
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + bytes(28)
    assert flowhash.hash(ETHERNET, arp) == 1464548392


# The cuts that cross the fast path's bounds: Ethernet header, IPv4 header and ports, IPv6 header and ports.
_CUTS = (0, 11, 12, 13, 14, 15, 33, 34, 35, 37, 38, 53, 54, 55, 57, 58)


def _agree(flowhash: FlowHashLib, general: FlowHashLib, linktype: int, data: bytes) -> None:
    for cut in (*_CUTS, len(data)):
        part = data[:cut]
        assert flowhash.hash(linktype, part) == general.hash(linktype, part), (linktype, part.hex())


def test_fast_path_hashes_like_the_general_parser_on_captures(flowhash, flowhash_general):
    """Every packet (and its cuts) of the captures in tests/data, and of every Ethernet capture in
    ../shared/data/pcaps when present, hashes the same with and without the fast path."""
    paths = sorted((REPO / "tests" / "data").glob("*.pcap*"))
    if PCAPS.is_dir():
        paths += [PCAPS / rel for rel in NAMED_CAPTURES + IPV6_CAPTURES]
    checked = 0
    for path in paths:
        for linktype, buf in read_capture(path)[:3000]:
            _agree(flowhash, flowhash_general, linktype, buf)
            checked += 1
    assert checked >= 200


def test_fast_path_hashes_like_the_general_parser_at_every_boundary(flowhash, flowhash_general):
    """Exhaustively around the fast path's checks: version/IHL bytes, fragment bits, protocols with and without
    ports (and IPv6 extension headers), every IP length from 0 to 45, every cut across the headers and ports."""
    tail = bytes(range(1, 41))  # nonzero ports, so a port read or not read changes the hash
    checked = 0
    for v6 in (False, True):
        firsts = (0x60, 0x6F, 0x50, 0x40) if v6 else (0x45, 0x46, 0x44, 0x40, 0x55)
        protos = (6, 17, 132, 1, 0, 43, 44, 50, 51, 60) if v6 else (6, 17, 132, 1)
        for first, proto, length, frag in itertools.product(firsts, protos, range(46),
                                                            (0,) if v6 else (0, 0x4000, 0x2000, 0x0001, 0x8000)):
            if v6:
                ip = struct.pack(">IHBB16s16s", first << 24, length, proto, 64, bytes(15) + b"\7", bytes(16))
            else:
                ip = struct.pack(">BBHHHBBH4s4s", first, 0, length, 1, frag, 64, proto, 0, b"\0\0\0\7", bytes(4))
            frame = b"\x02" * 6 + b"\x04" * 6 + (b"\x86\xdd" if v6 else b"\x08\x00") + ip + tail
            for cut in range(30, 80 if v6 else 60):
                part = frame[:cut]
                assert flowhash.hash(ETHERNET, part) == flowhash_general.hash(ETHERNET, part), part.hex()
                checked += 1
    assert checked > 100_000


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(v6=st.booleans(), etype=st.sampled_from([0x0800, 0x86DD, 0x8100, 0x88A8, 0x9100, 0x0806, 0x88CC, 0]),
       first=st.sampled_from([0x45, 0x46, 0x44, 0x40, 0x55, 0x60, 0x6F, 0x45 ^ 0x20]) | st.integers(0, 255),
       proto=st.sampled_from([6, 17, 132, 1, 47, 0, 43, 44, 50, 51, 60, 59]),
       length=st.sampled_from([0, 1, 3, 4, 5, 8, 19, 20, 23, 24, 25, 40, 60, 1000]),
       frag=st.sampled_from([0, 0x4000, 0x2000, 0x0001, 0x8000, 0x1FFF]) | st.integers(0, 0xFFFF),
       addrs=st.binary(min_size=32, max_size=32), tail=st.binary(max_size=64), cut=st.integers(0, 200))
def test_fast_path_hashes_like_the_general_parser_on_crafted_frames(flowhash, flowhash_general, v6, etype, first,
                                                                    proto, length, frag, addrs, tail, cut):
    """Frames shaped like the fast path's cases and their near misses (options, fragments, extension headers,
    IP lengths shorter or longer than the frame, other versions, VLAN and non-IP ethertypes)."""
    if v6:
        ip = struct.pack(">IHBB16s16s", (first << 24), length, proto, 64, addrs[:16], addrs[16:]) + tail
    else:
        ip = struct.pack(">BBHHHBBH4s4s", first, 0, length, 1, frag, 64, proto, 0, addrs[:4], addrs[4:8]) + tail
    frame = b"\x02" * 6 + addrs[8:14] + struct.pack(">H", etype) + ip
    assert flowhash.hash(ETHERNET, frame[:cut]) == flowhash_general.hash(ETHERNET, frame[:cut])
    assert flowhash.hash(ETHERNET, frame) == flowhash_general.hash(ETHERNET, frame)


def test_batch_equals_one_by_one(flowhash):
    _needs_shared()
    packets = [buf for _, buf in read_capture(PCAPS / "merged-ether.pcap")][:2000] + [b"", b"\x00"]
    assert flowhash.hash_batch(ETHERNET, packets) == [flowhash.hash(ETHERNET, p) for p in packets]


# ---------------------------------------------------------------------------------------------------------
# 3. Robustness on hostile bytes


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(linktype=st.sampled_from(SUPPORTED_LINKTYPES + (2, 147, 0xFFFFFFFF)), data=st.binary(max_size=200))
def test_random_bytes_never_crash(flowhash, linktype, data):
    key = flowhash.key(linktype, data)
    h = flowhash.hash(linktype, data)
    assert 0 <= h < 2**32
    if key is not None:
        assert key.port_a == key.port_b == 0 or (key.proto in PORT_PROTOS and not key.is_fragment)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(linktype=st.sampled_from([ETHERNET, SLL, SLL2, NULL, RAW]), v6=st.booleans(),
       tail=st.binary(max_size=120), cut=st.integers(0, 200))
def test_plausible_headers_with_random_tails_never_crash(flowhash, linktype, v6, tail, cut):
    """Random bytes rarely get past the first check; these reach the extension header walk."""
    ip = (_ipv6(bytes(16), bytes(16), tail[0] if tail else 0, tail[1:]) if v6
          else bytes([0x40 | (tail[0] & 15 if tail else 5)]) + bytes(19) + tail[1:])
    data = _wrap(linktype, ip, 2 if linktype in (ETHERNET, SLL, SLL2) else 0)[:cut]
    flowhash.hash(linktype, data)
    flowhash.key(linktype, data)


def _fuzz_corpus(seed: int = 1) -> bytes:
    """Records for the fuzz driver: u32 linktype, u32 length, bytes (little endian). The driver runs
    every prefix of each record, each in a buffer of exactly that size."""
    rng = random.Random(seed)
    out = bytearray()

    def add(linktype: int, data: bytes) -> None:
        out.extend(struct.pack("<II", linktype, len(data)) + data)

    if PCAPS.is_dir():
        for rel in NAMED_CAPTURES + SLL_CAPTURES + IPV6_CAPTURES:
            for linktype, buf in read_capture(PCAPS / rel)[:400]:
                add(linktype, buf[:160])
                if rng.random() < 0.1:  # the same bytes as another link type
                    add(rng.choice(SUPPORTED_LINKTYPES), buf[:160])
    for _ in range(3000):
        linktype = rng.choice(SUPPORTED_LINKTYPES)
        head = _wrap(linktype if linktype in (1, 113, 276, 0, 108) else RAW,
                     _ipv6(bytes(16), bytes(16), rng.choice([0, 43, 44, 51, 60, 6]), b"")
                     if rng.random() < 0.5 else _ipv4(bytes(4), bytes(4), 6, b""),
                     rng.randint(0, 3) if linktype in (1, 113, 276) else 0)
        body = bytearray(head + rng.randbytes(rng.randint(0, 120)))
        for _ in range(rng.randint(0, 4)):  # flip a few bytes of the headers
            body[rng.randrange(len(body))] = rng.randrange(256)
        add(linktype, bytes(body))
    return bytes(out)


def test_fuzz_driver_under_asan_and_ubsan(tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed")
    exe = tmp_path / "flowhash_fuzz"
    try:
        _compile(exe, "-g", "-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                 "-fno-omit-frame-pointer", f"-I{REPO / 'include'}", str(FUZZ_DRIVER_C), str(FLOWHASH_C))
    except subprocess.CalledProcessError as exc:
        if "sanitize" in exc.stderr or "asan" in exc.stderr:
            pytest.skip(f"no sanitizer runtime: {exc.stderr.strip()[:200]}")
        raise
    corpus = _fuzz_corpus()
    run = subprocess.run([str(exe)], input=corpus, capture_output=True, timeout=600,
                         env={"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
                              "UBSAN_OPTIONS": "print_stacktrace=1"})
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-4000:]
    assert b"runs=" in run.stdout
    runs = int(run.stdout.split(b"runs=")[1].split()[0])
    assert runs > 100000


# ---------------------------------------------------------------------------------------------------------
# 4. Distribution


def test_flows_spread_over_four_workers(flowhash):
    _needs_shared()
    flows = {}
    for linktype, buf in read_capture(PCAPS / "merged-ether.pcap"):
        key = flowhash.key(linktype, buf)
        if key is not None:
            canon = min((key.addr_a, key.port_a, key.addr_b, key.port_b),
                        (key.addr_b, key.port_b, key.addr_a, key.port_a))
            flows[(key.family, key.proto) + canon] = flowhash.hash(linktype, buf)
    assert len(flows) >= 250
    buckets = collections.Counter(h % 4 for h in flows.values())
    assert min(buckets[i] for i in range(4)) >= 0.10 * len(flows), buckets
