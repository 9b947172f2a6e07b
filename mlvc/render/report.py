"""The HTML report: one self-contained static page about a history and its evaluations.

`render_html(data)` turns the library's ReportData (mlvc.ops.report) into the page: the commit history, a
chart per task of each metric across commits, the effect table (values and their change, marked by direction
and tolerance), and for each commit a map of which layer groups changed and how much. The markup is the
jinja2 template templates/report.html.j2 with autoescaping on, so a commit message, tag or error text is
always shown as text; the charts are SVG drawn by matplotlib (render/charts.py) and written into the page.
No script, no stylesheet or font to fetch: the page is viewable offline.

jinja2 and matplotlib are optional (`pip install 'mlvc[report]'`) and imported only here, when a page is made.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..errors import DependencyError
from ..ops.evals import IMPROVED, REGRESSED, UNCHANGED
from ..util import atomic_write_bytes
from .evals import MARKS, cell_text, direction_text
from .labels import ref_labels, shown_metadata
from .text import first_line, metadata_text, short

if TYPE_CHECKING:
    from ..ops.report import ReportData

TEMPLATE = "report.html.j2"
_CELL_CLASS = {IMPROVED: "improved", REGRESSED: "regressed", UNCHANGED: "unchanged"}


@dataclass
class ReportResult:
    path: str
    commits: int
    tasks: list[str]
    charts: int
    layer_maps: int
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def require() -> None:
    """Raise DependencyError unless the report's optional packages are installed (check before slow work)."""
    for module, package in (("matplotlib", "matplotlib"), ("jinja2", "jinja2")):
        try:
            __import__(module)
        except ImportError:
            raise DependencyError(package, "mlvc report", "report") from None


def write_report(data: ReportData, output: str) -> ReportResult:
    """Render `data` and write the page to `output` atomically; what was written."""
    page, stats = render_html(data)
    raw = page.encode("utf-8")
    path = os.path.abspath(output)
    atomic_write_bytes(path, raw)
    return ReportResult(path, stats["commits"], stats["tasks"], stats["charts"], stats["layer_maps"], len(raw))


def render_html(data: ReportData) -> tuple[str, dict[str, Any]]:
    """(the page, {"commits", "tasks", "charts", "layer_maps"})."""
    require()
    from markupsafe import Markup

    from . import charts as ch

    chrono = list(reversed(data.commits))
    table = data.effects
    tasks = data.tasks
    charts = [{"task": t, "svg": Markup(ch.task_chart(t, [c for c in table.columns if c.task == t], table,
                                                       chrono, i))}
              for i, t in enumerate(tasks)]
    diffs = data.layer_diffs
    order = [c for c in chrono if c.id in diffs]
    context = {
        "repo_name": os.path.basename(data.root),
        "root": data.root,
        "rev": data.rev,
        "head_short": short(data.commits[0].id) if data.commits else "-",
        "generated": data.generated,
        "commits": _history(data),
        "charts": charts,
        "effects": _effects(data),
        "marks": {"improved": MARKS[IMPROVED], "regressed": MARKS[REGRESSED], "unchanged": MARKS[UNCHANGED]},
        "layers": _layers(data),
        "heatmap": Markup(ch.layer_heatmap(order, diffs)) if diffs else "",
    }
    page = _environment().get_template(TEMPLATE).render(context)
    stats = {"commits": len(data.commits), "tasks": tasks, "charts": len(charts) + (1 if diffs else 0),
             "layer_maps": len(diffs)}
    return page, stats


def _environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined

    # autoescape=True for every template: select_autoescape() goes by file extension and ".j2" is not one.
    return Environment(loader=PackageLoader("mlvc.render", "templates"), autoescape=True,
                       undefined=StrictUndefined, keep_trailing_newline=True)


# -- what the template shows, as plain values (the template escapes them) -------------------------------------
def _history(data: ReportData) -> list[dict[str, Any]]:
    labels = ref_labels(data.head, data.head_branch, data.branches, data.tags, arrow="→")
    return [{"id": c.id, "short": short(c.id), "labels": labels.get(c.id, []), "time": c.time, "author": c.author,
             "message": first_line(c.message), "meta": metadata_text(shown_metadata(c.metadata)),
             "parents": [short(p) for p in c.parents]} for c in data.commits]


def _effects(data: ReportData) -> dict[str, Any]:
    table = data.effects
    evaluated = [r for r in table.rows if any(c.status != "missing" for c in r.cells.values())]
    if not table.columns or not evaluated:
        return {"columns": [], "rows": []}
    rows = []
    for r in evaluated:
        cells = []
        for col in table.columns:
            cell = r.cells[col.key]
            cls = "failed" if cell.status not in ("ok", "missing") else _CELL_CLASS.get(cell.effect or "", "")
            cells.append({"text": cell_text(cell), "cls": cls, "title": cell.error or ""})
        rows.append({"id": r.commit, "short": short(r.commit), "message": first_line(r.message), "cells": cells})
    columns = [{"task": c.task, "metric": c.metric, "direction": direction_text(c)} for c in table.columns]
    return {"columns": columns, "rows": rows}


def _layers(data: ReportData) -> list[dict[str, Any]]:
    out = []
    for c in data.commits:  # newest first
        d = data.layer_diffs.get(c.id)
        if d is None:
            continue
        groups = [{"name": g.name, "cls": "changed" if g.changed_tensors else "same",
                   "tensors": f"{g.changed_tensors}/{g.tensors}", "elements": f"{g.changed:,}/{g.numel:,}",
                   "l2": _num(g.l2), "rel": _num(g.rel_change)} for g in d.groups]
        out.append({"id": c.id, "short": short(c.id), "message": first_line(c.message),
                    "changed": sum(1 for g in d.groups if g.changed_tensors), "groups": groups})
    return out


def _num(v: float | None) -> str:
    if v is None:
        return ""
    if not math.isfinite(v):
        return str(v)
    return "0" if v == 0 else f"{v:.3e}"
