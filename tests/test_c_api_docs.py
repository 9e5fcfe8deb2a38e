"""docs/c-api.md documents the whole public C ABI: every function declared in include/packet_ipc.h and
include/packet_ipc_ext.h appears there with its exact prototype (so a changed signature shows up as a stale
page), every public macro and struct is named, and nothing documented is missing from the headers. (That the
library exports every function of both headers is tests/test_c_api.py's.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEADERS = [REPO / "include" / "packet_ipc.h", REPO / "include" / "packet_ipc_ext.h"]
DOC = REPO / "docs" / "c-api.md"


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).replace("( ", "(").strip()


def prototypes(header: Path) -> dict[str, str]:
    """{function name: prototype without PIPC_API, whitespace squashed} of a public header."""
    out = {}
    for m in re.finditer(r"^PIPC_API ([^;]*?);", header.read_text(), re.M | re.S):
        proto = squash(m[1])
        out[re.search(r"\b(pipc_\w+)\(", proto)[1]] = proto
    return out


def doc_code_spans() -> set[str]:
    """The inline code spans of docs/c-api.md (fenced examples left out), whitespace squashed."""
    text = re.sub(r"^```.*?^```", "", DOC.read_text(), flags=re.S | re.M)
    return {squash(s) for s in re.findall(r"`([^`]+)`", text)}


ALL = {name: proto for h in HEADERS for name, proto in prototypes(h).items()}


@pytest.mark.parametrize("header", HEADERS, ids=lambda p: p.name)
def test_every_declared_function_is_documented_with_its_prototype(header):
    spans = doc_code_spans()
    protos = prototypes(header)
    assert len(protos) >= 5
    undocumented = [proto for proto in protos.values() if proto not in spans]
    assert undocumented == []


def test_every_function_the_page_names_is_declared():
    named = set(re.findall(r"\b(pipc_\w+)\(", DOC.read_text()))
    assert named - set(ALL) == set()


@pytest.mark.parametrize("header", HEADERS, ids=lambda p: p.name)
def test_every_public_macro_and_struct_is_named(header):
    text = header.read_text()
    doc = DOC.read_text()
    guard = re.search(r"^#ifndef (\w+)", text, re.M)[1]
    macros = [m for m in re.findall(r"^#define ((?:PIPC|PACKET_IPC)_\w+)", text, re.M) if m not in (guard, "PIPC_API")]
    structs = re.findall(r"^struct (pipc_\w+) \{", text, re.M)
    assert macros and structs
    assert [m for m in macros + structs if m not in doc] == []

