"""Plain-text building blocks: one table style and the number formats every view shares."""

from __future__ import annotations

from typing import Any


def table(rows: list[list[Any]], headers: list[str]) -> str:
    """Rows under headers, columns aligned (tabulate's "simple" style; values are never re-parsed as numbers)."""
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


def fmt_number(v: float | None) -> str:
    """A metric value with 4 significant digits: 0.7741, 12.5, 1.235e+06, 3.2e-05; "0"; "" for none."""
    if v is None:
        return ""
    return "0" if v == 0 else f"{v:.4g}"


def fmt_change(d: float | None) -> str:
    """A change, signed, with 4 significant digits: +0.005, -0.0002131, +1.2e-05; "±0"; "" for none."""
    if d is None:
        return ""
    return "±0" if d == 0 else f"{d:+.4g}"


def fmt_percent(r: float | None) -> str:
    """A relative change as a signed percentage with 4 significant digits: -1.153%, +0.07%; "" for none."""
    if r is None:
        return ""
    return "±0%" if r == 0 else f"{r * 100:+.4g}%"


def first_line(message: str | None, width: int | None = None) -> str:
    """The first line of a commit message, cut to `width` characters with an ellipsis."""
    line = message.splitlines()[0] if message else ""
    if width is not None and len(line) > width:
        line = line[: width - 1] + "…"
    return line


def short(oid: str | None) -> str:
    """A commit id as shown to people (12 hex digits); "-" for none."""
    return oid[:12] if oid else "-"


def json_value(v: Any) -> str:
    """A metadata value as JSON (null, true, ["probe"], {"a": 1}), never a Python repr; keys sorted, UTF-8 kept."""
    import json

    return json.dumps(v, ensure_ascii=False, sort_keys=True, allow_nan=True)


def metadata_text(meta: dict[str, Any], sep: str = ", ") -> str:
    """Commit metadata on one line: KEY=VALUE with each value as JSON, keys sorted."""
    return sep.join(f"{k}={json_value(v)}" for k, v in sorted(meta.items()))
