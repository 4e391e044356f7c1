"""Plain-text tables that stay aligned with Chinese (and other wide) text: widths are terminal columns, counted
with `unicodedata.east_asian_width` (W/F = 2 columns, combining marks and format characters = 0)."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

ELLIPSIS = "..."  # ASCII on purpose: "…" is East Asian *ambiguous* (1 or 2 columns depending on the terminal)


def char_width(ch: str) -> int:
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def text_width(text: str) -> int:
    return sum(char_width(ch) for ch in text)


def clean(text: str) -> str:
    """One line: control characters and runs of whitespace become single spaces."""
    text = "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in str(text))
    return " ".join(text.split())


def truncate(text: str, width: int) -> str:
    """`text` cut to at most `width` columns, ending in `...` when cut."""
    if text_width(text) <= width:
        return text
    room = max(0, width - len(ELLIPSIS))
    out, used = [], 0
    for ch in text:
        w = char_width(ch)
        if used + w > room:
            break
        out.append(ch)
        used += w
    return "".join(out) + ELLIPSIS[: max(0, width - used)]


def pad(text: str, width: int, align: str = "<") -> str:
    gap = " " * max(0, width - text_width(text))
    return gap + text if align == ">" else text + gap


def render(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    align: str | None = None,
    max_widths: Sequence[int | None] | None = None,
    gap: str = "  ",
) -> str:
    """A table with a header and a `-` rule. `align`: one `<` or `>` per column (default: all left).
    `max_widths`: per-column limit in columns (None: no limit); longer cells are truncated. The last column is
    not padded, so lines carry no trailing spaces."""
    n = len(headers)
    align = align or "<" * n
    limits = list(max_widths or [None] * n)
    cells = [[clean(str(c)) for c in row] for row in rows]
    cells = [[truncate(c, lim) if lim else c for c, lim in zip(row, limits, strict=True)] for row in cells]
    widths = [max([text_width(h), *(text_width(row[i]) for row in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [
            pad(v, widths[i], align[i]) if i < n - 1 or align[i] == ">" else v for i, v in enumerate(values)
        ]
        return gap.join(parts).rstrip()

    rule = gap.join("-" * w for w in widths)
    return "\n".join([line(list(headers)), rule, *(line(row) for row in cells)])


def key_values(pairs: Sequence[tuple[str, object]]) -> str:
    """A two-column `key  value` listing."""
    width = max((text_width(k) for k, _ in pairs), default=0)
    return "\n".join(f"{pad(k, width)}  {clean(str(v))}".rstrip() for k, v in pairs)
