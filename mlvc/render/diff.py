"""A TreeDiff as text: file tables, tensor tables, layer-group tables, one-line summaries and git's
--name-status lines (`mlvc diff`, `show`, `log --stat`)."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

from .text import table
from .units import human_bytes

if TYPE_CHECKING:
    from ..ops.diff import FileDiff, GroupDiff, TensorDiff, TreeDiff

TENSOR_HEADERS = ["tensor", "status", "dtype", "shape", "changed", "changed %", "l2", "rel_change", "max_abs",
                  "cosine"]
GROUP_HEADERS = ["group", "tensors changed", "elements changed", "l2", "rel_change"]
FILE_HEADERS = ["file", "status", "kind", "size"]


def columns(groups: bool = False) -> list[str]:
    """What rows can be sorted by: the fields of a TensorDiff (of a GroupDiff with `groups`)."""
    from ..ops.diff import GroupDiff, TensorDiff  # numpy: only once a diff is wanted

    return [f.name for f in dataclasses.fields(GroupDiff if groups else TensorDiff)]


def num(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return "0" if x == 0 else f"{x:.4g}"


def pct(x: float | None) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    return f"{x * 100:.3g}%"


def _pair(a: Any, b: Any, show) -> str:
    if a is None and b is None:
        return "-"
    if a is None or b is None or a == b:
        return show(b if b is not None else a)
    return f"{show(a)} -> {show(b)}"


def _shape(s: list[int]) -> str:
    return "x".join(map(str, s)) if s else "scalar"


def _size(n: int | None) -> str:
    return "-" if n is None else human_bytes(n)


def file_rows(files: list[FileDiff]) -> list[list[str]]:
    return [[f"{f.old_path} -> {f.path}" if f.old_path else f.path, f.status, _pair(f.kind_a, f.kind_b, str),
             _pair(f.size_a, f.size_b, _size)] for f in files]


def name_status_text(d: TreeDiff) -> str:
    """git's --name-status: one changed file a line, "A\tpath", "D\tpath", "M\tpath", "R100\told\tnew"."""
    return "\n".join("\t".join([f.letter, *([f.old_path] if f.old_path else []), f.path]) for f in d.changed_files)


def _moved(t: TensorDiff) -> str:
    return f"{t.name} ({t.old_path} -> {t.path})" if t.old_path else t.name


def tensor_rows(tensors: list[TensorDiff]) -> list[list[str]]:
    return [[_moved(t), t.status, _pair(t.dtype_a, t.dtype_b, str), _pair(t.shape_a, t.shape_b, _shape), num(t.changed),
             pct(t.changed_frac), num(t.l2), num(t.rel_change), num(t.max_abs), cosine(t.cosine)] for t in tensors]


def cosine(x: float | None) -> str:
    """Cosines of checkpoints are close to 1: show enough digits to see how close."""
    return "-" if x is None else ("1" if x == 1 else f"{x:.6g}")


def group_rows(groups: list[GroupDiff]) -> list[list[str]]:
    return [[g.name, f"{g.changed_tensors}/{g.tensors}",
             f"{g.changed:,}/{g.numel:,} ({pct(g.changed / g.numel if g.numel else 0.0)})",
             num(g.l2), num(g.rel_change)] for g in groups]


def sort_items(items: list, column: str | None, reverse: bool) -> list:
    """Sort by a dataclass field: numbers largest first, text A to Z; missing values last either way.
    ValueError when `column` is not a field of the items (check it against columns() first)."""
    if not column:
        return list(items)[::-1] if reverse else list(items)
    if items and column not in [f.name for f in dataclasses.fields(type(items[0]))]:
        raise ValueError(f"{column!r} is not a field of {type(items[0]).__name__}")
    present = [i for i in items if getattr(i, column) is not None]
    missing = [i for i in items if getattr(i, column) is None]

    def key(i):
        v = getattr(i, column)
        if isinstance(v, float) and math.isnan(v):
            return (1, 0.0)
        return (0, v if not isinstance(v, list) else math.prod(v))

    numeric = bool(present) and isinstance(getattr(present[0], column), (int, float, list))
    present.sort(key=key if numeric else (lambda i: str(getattr(i, column))), reverse=numeric != reverse)
    return present + missing


def _counts(statuses: list[str]) -> str:
    by_status: dict[str, int] = {}
    for s in statuses:
        by_status[s] = by_status.get(s, 0) + 1
    return ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(by_status.items()))


def files_summary(d: TreeDiff) -> str:
    """One sentence on the files: "1 of 3 file(s) changed (1 added); 12.0 KiB -> 14.5 KiB"; "" when none did."""
    changed = d.changed_files
    if not changed:
        return ""
    before = sum(f.size_a or 0 for f in d.files)
    after = sum(f.size_b or 0 for f in d.files)
    return (f"{len(changed)} of {len(d.files)} file(s) changed ({_counts([f.status for f in changed])}); "
            f"{human_bytes(before)} -> {human_bytes(after)}")


def summary(d: TreeDiff) -> str:
    files = files_summary(d)
    head = f"{files}\n" if files else ""
    return head + _tensor_summary(d)


def _tensor_summary(d: TreeDiff) -> str:
    total = d.total()
    if not total.changed_tensors:
        return f"No tensor changed ({total.tensors} compared)."
    kinds = _counts([t.status for t in d.changed])
    frac = total.changed / total.numel if total.numel else 0.0
    return (f"{total.changed_tensors} of {total.tensors} tensor(s) changed ({kinds}); {total.changed:,} of "
            f"{total.numel:,} elements ({pct(frac)}); l2 {num(total.l2)}, relative change {num(total.rel_change)}")


def short_stat(d: TreeDiff) -> str:
    """One line for `log --stat`: tensors, then files when any changed."""
    total = d.total()
    if not total.changed_tensors:
        line = "no tensor changed"
    else:
        line = f"{total.changed_tensors}/{total.tensors} tensor(s) changed, relative change {num(total.rel_change)}"
    changed = d.changed_files
    if changed:
        line += f"; {len(changed)} file(s) changed ({_counts([f.status for f in changed])})"
    return line


def diff_text(d: TreeDiff, stat: bool = False, show_all: bool = False, sort_by: str | None = None,
              reverse: bool = False) -> str:
    """The changed files as a table, the changed tensors (with `stat`: layer groups; with `show_all`: unchanged
    ones too) as a table, then the summary lines."""
    files = d.files if show_all else d.changed_files
    parts = [table(file_rows(files), FILE_HEADERS)] if files else []
    if stat:
        groups = sort_items(d.groups if show_all else [g for g in d.groups if g.changed_tensors], sort_by, reverse)
        rows = table(group_rows(groups), GROUP_HEADERS) if groups else None
    else:
        tensors = sort_items(d.tensors if show_all else d.changed, sort_by, reverse)
        rows = table(tensor_rows(tensors), TENSOR_HEADERS) if tensors else None
    if rows:
        parts.append(rows)
    return "\n\n".join(parts + [summary(d)])
