"""Plain-text tables for liteqctl's human-readable output."""
from __future__ import annotations

from collections.abc import Iterable, Sequence


def table(headers: Sequence[object], rows: Iterable[Sequence[object]]) -> str:
    """Plain text, columns aligned; numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in r]
                                          for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(r[i].lstrip("~").replace(".", "", 1).isdigit() or r[i] == "-"
                   for r in cells[1:]) and cells[1:] for i in range(len(headers))]
    lines: list[str] = []
    for r in cells:
        lines.append("  ".join(c.rjust(w) if numeric[i] else c.ljust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    return "\n".join(lines)
