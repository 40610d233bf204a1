"""Plain-text tables the planner's commands print."""

from __future__ import annotations


def table(headers: list[str], rows: list[list]) -> str:
    """A markdown table (readable in a terminal and pastable into docs)."""
    cells = [headers] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]])
