"""The shared layouts, three ways at once: the structs in csrc/ring.h and csrc/handshake.h, the
`static_assert(offsetof(...))` lines that pin them (checked by the compiler on every build), and the tables of
docs/wire-format.md that a reimplementation in another language would follow. Every field of the ring header,
the descriptor, HELLO and WELCOME must be pinned, and the document must give each the same offset and each
message the same size."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CSRC = REPO / "csrc"
DOC = REPO / "docs" / "wire-format.md"

# struct name -> (header that declares it, the heading or bold word in the document before its table)
LAYOUTS = {
    "pipc_ring_header": ("ring.h", "### Header"),
    "pipc_desc": ("ring.h", "### Descriptor"),
    "pipc_hello": ("handshake.h", "**HELLO**"),
    "pipc_welcome": ("handshake.h", "**WELCOME**"),
}
CONSTANTS = {"PIPC_CACHE_LINE": 64}


def struct_fields(header: str, name: str) -> list[str]:
    """Field names of `struct name` in csrc/header, in order, without the padding arrays."""
    body = re.search(r"struct %s \{(.*?)\n\};" % name, (CSRC / header).read_text(), re.S)
    assert body, f"struct {name} not found in csrc/{header}"
    code = re.sub(r"/\*.*?\*/", "", body[1], flags=re.S)
    fields = []
    for decl in code.split(";"):
        m = re.search(r"(\w+)\s*(\[[^\]]*\])?\s*$", decl.strip())
        if m and not m[1].startswith("pad"):
            fields.append(m[1])
    return fields


def asserted() -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """(offsets, sizes) pinned by static_assert in csrc/*.c, per struct."""
    offsets: dict[str, dict[str, int]] = {}
    sizes: dict[str, int] = {}
    for c in CSRC.glob("*.c"):
        text = c.read_text()
        for struct, field, value in re.findall(r"static_assert\(offsetof\(struct (\w+), (\w+)\) == (\d+)", text):
            offsets.setdefault(struct, {})[field] = int(value)
        for struct, expr in re.findall(r"static_assert\(sizeof\(struct (\w+)\) == ([^,]+),", text):
            for k, v in CONSTANTS.items():
                expr = expr.replace(k, str(v))
            assert re.fullmatch(r"[\d\s*+]+", expr), expr
            sizes[struct] = eval(expr)  # digits and * only, checked above
    return offsets, sizes


def documented(marker: str) -> dict[str, int]:
    """Offsets of the first table after `marker` in docs/wire-format.md: {field: offset}."""
    text = DOC.read_text()
    start = text.index(marker)
    rows = {}
    in_table = False
    for line in text[start:].splitlines()[1:]:
        if line.lstrip().startswith("|"):
            in_table = True
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[0].isdigit():
                rows[cells[1].split()[0]] = int(cells[0])
        elif in_table:
            break
    assert rows, f"no table after {marker!r} in docs/wire-format.md"
    return rows


OFFSETS, SIZES = asserted()


@pytest.mark.parametrize("struct", sorted(LAYOUTS))
def test_every_field_of_a_shared_struct_is_pinned_by_a_static_assert(struct):
    header, _ = LAYOUTS[struct]
    fields = struct_fields(header, struct)
    assert fields, struct
    assert sorted(OFFSETS.get(struct, {})) == sorted(fields)
    assert struct in SIZES


@pytest.mark.parametrize("struct", sorted(LAYOUTS))
def test_the_document_gives_every_field_the_pinned_offset(struct):
    _, marker = LAYOUTS[struct]
    assert documented(marker) == OFFSETS[struct]


def test_the_document_gives_the_pinned_sizes():
    text = DOC.read_text()
    assert f"**HELLO** ({SIZES['pipc_hello']} bytes)" in text
    assert f"**WELCOME** ({SIZES['pipc_welcome']} bytes)" in text
    assert f"### Descriptor ({SIZES['pipc_desc']} bytes)" in text
    assert f"struct pipc_ring_header ({SIZES['pipc_ring_header']} bytes used)" in text


def test_offsets_increase_in_declaration_order():
    """A field asserted at the wrong place would be caught by the compiler; this catches a table or a
    struct reordered so that the assert list no longer reads as the layout."""
    for struct, (header, _) in LAYOUTS.items():
        offs = [OFFSETS[struct][f] for f in struct_fields(header, struct)]
        assert offs == sorted(offs) and len(set(offs)) == len(offs), struct
