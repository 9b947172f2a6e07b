"""Plain-text building blocks: one table style and the number formats every view shares."""

from __future__ import annotations

from typing import Any


def table(rows: list[list[Any]], headers: list[str]) -> str:
    """Rows under headers, columns aligned (tabulate's "simple" style; values are never re-parsed as numbers)."""
    plain = _plain_table(rows, headers)
    if plain is not None:
        return plain
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


def _plain_table(rows: list[list[Any]], headers: list[str]) -> str | None:
    """table() for what it nearly always gets, without tabulate: rows as long as the headers, every cell a
    printable ASCII string with no space at either end. The same text as tabulate (tests/test_output.py checks
    it on generated tables), at a fraction of its time (a diff of 100,000 tensors spent 5 s in tabulate's
    per-cell type and width detection) and without importing it (35-55 ms). None for anything else."""
    n = len(headers)
    for row in (headers, *rows):
        if len(row) != n:
            return None
        try:
            text = "|".join(row)
        except TypeError:  # a cell that is not a string
            return None
        if not (text.isascii() and text.isprintable()) or text[:1] == " " or text[-1:] == " " \
                or "| " in text or " |" in text:
            return None
    columns = list(zip(*rows, strict=True)) or [()] * n  # (every row is n long: checked above)
    widths = [max([len(h) + 2, *map(len, column)]) for h, column in zip(headers, columns, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in (headers, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


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
