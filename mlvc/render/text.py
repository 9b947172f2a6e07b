"""Plain-text building blocks: one table style and the number formats every view shares."""

from __future__ import annotations

from typing import Any


def table(rows: list[list[Any]], headers: list[str]) -> str:
    """Rows under headers, columns aligned (tabulate's "simple" style; values are never re-parsed as numbers)."""
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


def fmt_value(v: float | None) -> str:
    """A metric value: 4 decimals in the usual range, 4 significant digits outside it; "" for none."""
    if v is None:
        return ""
    return f"{v:.4f}" if 1e-3 <= abs(v) < 1e4 or v == 0 else f"{v:.4g}"


def fmt_delta(d: float | None) -> str:
    """A signed change: +0.0300, -1.2e-05; "" for none."""
    if d is None:
        return ""
    return f"{d:+.4f}" if 1e-3 <= abs(d) < 1e4 or d == 0 else f"{d:+.3g}"


def fmt_rel(r: float | None) -> str:
    """A relative change as a signed percentage; "" for none."""
    return "" if r is None else f"{r * 100:+.2f}%"


def first_line(message: str | None, width: int | None = None) -> str:
    """The first line of a commit message, cut to `width` characters with an ellipsis."""
    line = message.splitlines()[0] if message else ""
    if width is not None and len(line) > width:
        line = line[: width - 1] + "…"
    return line


def short(oid: str | None) -> str:
    """A commit id as shown to people (12 hex digits); "-" for none."""
    return oid[:12] if oid else "-"
