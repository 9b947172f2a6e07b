"""report: one self-contained static HTML page about a history and its evaluations.

Sections: the commit history; a chart per task of each metric across commits; the effect table (ledger values
and their change against the parent, marked by direction and tolerance); and, for each commit, a map of which
layer groups changed and how much (Repo.diff against the first parent). Charts are drawn by matplotlib into
SVG that is written into the page itself: no script, no stylesheet or font to fetch, viewable offline.
matplotlib is optional (`pip install 'mlvc[report]'`) and imported only here.
"""

from __future__ import annotations

import html
import io
import math
import os
import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..errors import DependencyError
from ..util import atomic_write_bytes, utc_now
from .evals import IMPROVED, MARKS, REGRESSED, UNCHANGED, Column, EffectTable, effect_table, fmt_cell

if TYPE_CHECKING:
    from ..objects import Commit
    from ..repo import Repo

MAX_DIFFS = 50  # layer maps for at most this many (the newest) commits: each one reads two checkpoints


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


def write_report(repo: Repo, output: str, rev: str = "HEAD", max_commits: int = 200,
                 max_diffs: int = MAX_DIFFS) -> ReportResult:
    page, stats = render(repo, rev, max_commits, max_diffs)
    data = page.encode("utf-8")
    path = os.path.abspath(output)
    atomic_write_bytes(path, data)
    return ReportResult(path, stats["commits"], stats["tasks"], stats["charts"], stats["layer_maps"], len(data))


def render(repo: Repo, rev: str = "HEAD", max_commits: int = 200, max_diffs: int = MAX_DIFFS
           ) -> tuple[str, dict[str, Any]]:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise DependencyError("matplotlib", "mlvc report", "report") from None
    commits = repo.log(rev, max_commits)  # newest first
    shown = {c.id for c in commits}
    table = effect_table(repo, rev, include_all=True)
    table.rows = [r for r in table.rows if r.commit in shown]
    chrono = list(reversed(commits))
    tasks = list(dict.fromkeys(c.task for c in table.columns))
    charts = [(t, _task_chart(t, [c for c in table.columns if c.task == t], table, chrono, i))
              for i, t in enumerate(tasks)]
    diffs = _layer_diffs(repo, commits[:max_diffs])
    labels = _labels(repo)
    parts = [_HEAD.format(title=html.escape(f"mlvc report: {os.path.basename(repo.root)}")),
             "<header><h1>mlvc report</h1>",
             f"<p class='meta'>Repository <code>{html.escape(repo.root)}</code> · {html.escape(rev)} = "
             f"<code>{commits[0].id[:12] if commits else '-'}</code> · {len(commits)} commit(s) · "
             f"generated {html.escape(utc_now())}</p></header>",
             "<nav><a href='#history'>History</a> <a href='#charts'>Charts</a> <a href='#effects'>Effects</a> "
             "<a href='#layers'>Layer changes</a></nav>",
             _history_section(commits, labels),
             _charts_section(charts),
             _effects_section(table),
             _layers_section(diffs, chrono, commits),
             "</body></html>\n"]
    stats = {"commits": len(commits), "tasks": tasks, "charts": len(charts) + (1 if diffs else 0),
             "layer_maps": len(diffs)}
    return "\n".join(parts), stats


# -- sections ----------------------------------------------------------------------------------------------
def _history_section(commits: list[Commit], labels: dict[str, list[str]]) -> str:
    rows = []
    for c in commits:
        deco = "".join(f"<span class='label'>{html.escape(x)}</span>" for x in labels.get(c.id, []))
        meta = ", ".join(f"{k}={v}" for k, v in sorted(c.metadata.items()))
        rows.append(f"<tr id='c-{c.id}'><td><code>{c.id[:12]}</code>{deco}</td>"
                    f"<td>{html.escape(c.time)}</td><td>{html.escape(c.author)}</td>"
                    f"<td>{html.escape(c.message.splitlines()[0] if c.message else '')}</td>"
                    f"<td>{html.escape(meta)}</td>"
                    f"<td>{' '.join('<code>' + p[:12] + '</code>' for p in c.parents)}</td></tr>")
    body = "\n".join(rows) or "<tr><td colspan='6'>No commits.</td></tr>"
    return ("<section id='history'><h2>History</h2><table class='history'><thead><tr><th>commit</th>"
            "<th>time</th><th>author</th><th>message</th><th>metadata</th><th>parents</th></tr></thead>"
            f"<tbody>{body}</tbody></table></section>")


def _charts_section(charts: list[tuple[str, str]]) -> str:
    if not charts:
        return ("<section id='charts'><h2>Charts</h2><p class='empty'>No evaluation results yet: "
                "<code>mlvc eval run</code> or <code>mlvc eval record</code> adds some.</p></section>")
    figs = "\n".join(f"<figure class='chart' data-task='{html.escape(t, quote=True)}'>{svg}"
                     f"<figcaption>Task <b>{html.escape(t)}</b>: each metric across commits (oldest left)"
                     "</figcaption></figure>" for t, svg in charts)
    return f"<section id='charts'><h2>Charts</h2>{figs}</section>"


def _effects_section(table: EffectTable) -> str:
    evaluated = [r for r in table.rows if any(c.status != "missing" for c in r.cells.values())]
    if not table.columns or not evaluated:
        return "<section id='effects'><h2>Effects</h2><p class='empty'>No evaluation results.</p></section>"
    head = "".join(f"<th>{html.escape(c.task)}<br><small>{html.escape(c.metric)} "
                   f"({_direction(c)})</small></th>" for c in table.columns)
    rows = []
    for r in evaluated:
        cells = []
        for c in table.columns:
            cell = r.cells[c.key]
            cls = {IMPROVED: "improved", REGRESSED: "regressed", UNCHANGED: "unchanged"}.get(cell.effect or "", "")
            if cell.status not in ("ok", "missing"):
                cls = "failed"
            title = f" title='{html.escape(cell.error or '', quote=True)}'" if cell.error else ""
            attr = f" class='{cls}'" if cls else ""
            cells.append(f"<td{attr}{title}>{html.escape(fmt_cell(cell))}</td>")
        msg = r.message.splitlines()[0] if r.message else ""
        rows.append(f"<tr><td><a href='#c-{r.commit}'><code>{r.commit[:12]}</code></a></td>"
                    f"<td>{html.escape(msg)}</td>{''.join(cells)}</tr>")
    legend = (f"<p class='legend'><span class='improved'>{MARKS[IMPROVED]} improvement</span> "
              f"<span class='regressed'>{MARKS[REGRESSED]} regression</span> "
              f"<span class='unchanged'>{MARKS[UNCHANGED]} within tolerance</span> · changes are against the "
              "nearest evaluated first-parent ancestor, judged by each metric's direction</p>")
    return ("<section id='effects'><h2>Effects</h2><div class='scroll'><table class='effects'><thead><tr>"
            f"<th>commit</th><th>message</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
            f"{legend}</section>")


def _layers_section(diffs: dict[str, Any], chrono: list[Commit], commits: list[Commit]) -> str:
    if not diffs:
        return ("<section id='layers'><h2>Layer changes</h2><p class='empty'>No commit with a parent to "
                "compare.</p></section>")
    order = [c for c in chrono if c.id in diffs]
    heat = _layer_heatmap(order, diffs)
    details = []
    for c in [c for c in commits if c.id in diffs]:
        d = diffs[c.id]
        changed = [g for g in d.groups if g.changed_tensors]
        rows = "".join(
            f"<tr class='{'changed' if g.changed_tensors else 'same'}'><td>{html.escape(g.name)}</td>"
            f"<td>{g.changed_tensors}/{g.tensors}</td><td>{g.changed:,}/{g.numel:,}</td>"
            f"<td>{_num(g.l2)}</td><td>{_num(g.rel_change)}</td></tr>" for g in d.groups)
        msg = c.message.splitlines()[0] if c.message else ""
        details.append(
            f"<details class='layers' data-commit='{c.id}'><summary><code>{c.id[:12]}</code> "
            f"{html.escape(msg)}: {len(changed)} of {len(d.groups)} layer group(s) changed</summary>"
            "<table><thead><tr><th>group</th><th>tensors changed</th><th>elements changed</th>"
            f"<th>‖B−A‖</th><th>‖B−A‖/‖A‖</th></tr></thead><tbody>{rows}</tbody></table></details>")
    return ("<section id='layers'><h2>Layer changes</h2><p>Relative change ‖B−A‖/‖A‖ of each layer group "
            "against the commit's first parent; blank cells did not change.</p>"
            f"<figure class='chart heatmap'>{heat}</figure>{''.join(details)}</section>")


# -- charts ------------------------------------------------------------------------------------------------
def _task_chart(task: str, cols: list[Column], table: EffectTable, chrono: list[Commit], index: int) -> str:
    from matplotlib.figure import Figure

    by_commit = {r.commit: r for r in table.rows}
    xs = list(range(len(chrono)))
    fig = Figure(figsize=(9, 2.4 * len(cols) + 0.6), layout="constrained")
    axes = fig.subplots(len(cols), 1, sharex=True, squeeze=False)[:, 0]
    for ax, col in zip(axes, cols):
        px, py, fx = [], [], []
        for x, c in zip(xs, chrono):
            cell = by_commit[c.id].cells.get(col.key) if c.id in by_commit else None
            if cell is None:
                continue
            if cell.value is not None:
                px.append(x)
                py.append(cell.value)
            elif cell.status not in ("ok", "missing"):
                fx.append(x)
        if px:
            ax.plot(px, py, marker="o", linewidth=1.6, color="#2b6cb0", label=col.metric)
        else:
            ax.set_yticks([])
        if fx:
            ax.scatter(fx, [0] * len(fx), marker="x", color="#c53030", transform=ax.get_xaxis_transform(),
                       clip_on=False, label="failed")
            ax.legend(loc="best", fontsize=8)
        ax.set_title(f"{task}: {col.metric} ({_direction(col)})", fontsize=10, loc="left")
        ax.grid(True, alpha=0.3)
    _commit_ticks(axes[-1], chrono)
    return _svg(fig, f"task{index}")


def _layer_heatmap(order: list[Commit], diffs: dict[str, Any]) -> str:
    import numpy as np
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    names: list[str] = []
    for c in order:
        for g in diffs[c.id].groups:
            if g.name not in names:
                names.append(g.name)
    grid = np.full((len(names), len(order)), np.nan)
    for j, c in enumerate(order):
        for g in diffs[c.id].groups:
            if g.changed_tensors and g.rel_change is not None and g.rel_change > 0:
                grid[names.index(g.name), j] = min(g.rel_change, 1e6)
    fig = Figure(figsize=(min(max(6.5, 2.5 + 0.6 * len(order)), 16), 1.6 + 0.3 * len(names)),
                 layout="constrained")
    ax = fig.subplots()
    finite = grid[np.isfinite(grid)]
    if finite.size:
        lo = math.floor(math.log10(max(float(finite.min()), 1e-12)))
        hi = max(math.ceil(math.log10(max(float(finite.max()), 1e-12))), lo + 1)  # whole decades, at least one
        norm = LogNorm(vmin=10.0 ** lo, vmax=10.0 ** hi)
        im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="YlOrRd", norm=norm,
                       interpolation="nearest")
        fig.colorbar(im, ax=ax, label="‖B−A‖ / ‖A‖ (log scale)")
        if grid.size <= 400:
            for (i, j), v in np.ndenumerate(grid):
                if math.isfinite(v):
                    dark = norm(v) > 0.6
                    ax.text(j, i, f"{v:.1e}", ha="center", va="center", fontsize=6,
                            color="white" if dark else "black")
    else:
        ax.imshow(np.zeros_like(grid), aspect="auto", cmap="Greys", vmin=0, vmax=1)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xticks(range(len(order)), [c.id[:7] for c in order], rotation=45, ha="right", fontsize=8)
    ax.set_title("Layer groups changed per commit (against its first parent)", fontsize=10, loc="left")
    return _svg(fig, "layers")


def _commit_ticks(ax, chrono: list[Commit]) -> None:
    step = max(1, math.ceil(len(chrono) / 30))
    ticks = list(range(0, len(chrono), step))
    ax.set_xticks(ticks, [chrono[i].id[:7] for i in ticks], rotation=45, ha="right", fontsize=8)
    ax.set_xlim(-0.5, max(len(chrono) - 0.5, 0.5))
    ax.set_xlabel("commit (oldest → newest)")


def _svg(fig, salt: str) -> str:
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"mlvc-{salt}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": "mlvc"})
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: inline SVG needs neither


# -- data --------------------------------------------------------------------------------------------------
def _layer_diffs(repo: Repo, commits: list[Commit]) -> dict[str, Any]:
    out = {}
    for c in commits:
        if c.parents:
            out[c.id] = repo.diff(c.parents[0], c.id)
    return out


def _labels(repo: Repo) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    head = repo.head_branch()
    for name, cid in repo.branches().items():
        out.setdefault(cid, []).append(f"HEAD → {name}" if name == head else name)
    for name, cid in repo.tags().items():
        out.setdefault(cid, []).append(f"tag: {name}")
    return out


def _direction(col: Column) -> str:
    if col.higher_is_better is None:
        return "direction unknown"
    tol = f", ±{col.tolerance:g}" if col.tolerance else ""
    return ("higher is better" if col.higher_is_better else "lower is better") + tol


def _num(v: float | None) -> str:
    if v is None:
        return ""
    if not math.isfinite(v):
        return str(v)
    return "0" if v == 0 else f"{v:.3e}"


_HEAD = re.sub(r"\n\s*", "\n", """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1200px;
  padding: 0 16px; color: #1a202c; background: #fff; }}
h1 {{ margin-bottom: 4px; }} h2 {{ border-bottom: 2px solid #e2e8f0; padding-bottom: 4px; margin-top: 32px; }}
.meta {{ color: #4a5568; }} nav a {{ margin-right: 12px; }}
table {{ border-collapse: collapse; font-size: 13px; margin: 8px 0; }}
th, td {{ border: 1px solid #e2e8f0; padding: 4px 8px; text-align: left; vertical-align: top; }}
th {{ background: #f7fafc; }}
table.effects td {{ white-space: nowrap; }} .scroll {{ overflow-x: auto; }}
code {{ font-family: ui-monospace, monospace; }}
.label {{ background: #ebf8ff; color: #2c5282; border-radius: 4px; padding: 0 4px; margin-left: 4px;
  font-size: 11px; }}
td.improved, span.improved {{ background: #c6f6d5; color: #22543d; }}
td.regressed, span.regressed {{ background: #fed7d7; color: #742a2a; }}
td.unchanged, span.unchanged {{ background: #edf2f7; }}
td.failed {{ background: #fefcbf; color: #744210; font-weight: bold; }}
.legend span {{ padding: 2px 6px; border-radius: 4px; margin-right: 6px; }}
figure.chart {{ margin: 12px 0; }} figure.chart svg {{ max-width: 100%; height: auto; }}
figcaption {{ color: #4a5568; font-size: 13px; }}
details.layers {{ margin: 4px 0; }} tr.same {{ color: #a0aec0; }}
.empty {{ color: #718096; font-style: italic; }}
</style></head><body>
""")
