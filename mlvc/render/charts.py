"""The report's charts, drawn by matplotlib into SVG text that is written into the page itself.

matplotlib is optional (`pip install 'mlvc[report]'`) and imported only inside these functions. The SVG is
deterministic for the same data (no date, fixed hash salt), so the same history gives the same page.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .evals import direction_text

if TYPE_CHECKING:
    from ..objects import Commit
    from ..ops.diff import TreeDiff
    from ..ops.evals import Column, EffectTable

LINE_COLOR = "#2b6cb0"
FAIL_COLOR = "#c53030"


def task_chart(task: str, cols: Sequence[Column], table: EffectTable, chrono: Sequence[Commit], index: int) -> str:
    """One panel per metric of `task`: its value at each commit (oldest left), failed tries marked with x."""
    from matplotlib.figure import Figure

    by_commit = {r.commit: r for r in table.rows}
    xs = list(range(len(chrono)))
    fig = Figure(figsize=(9, 2.4 * len(cols) + 0.6), layout="constrained")
    axes = fig.subplots(len(cols), 1, sharex=True, squeeze=False)[:, 0]
    for ax, col in zip(axes, cols, strict=True):
        px, py, fx = [], [], []
        for x, c in zip(xs, chrono, strict=True):
            cell = by_commit[c.id].cells.get(col.key) if c.id in by_commit else None
            if cell is None:
                continue
            if cell.value is not None:
                px.append(x)
                py.append(cell.value)
            elif cell.status not in ("ok", "missing"):
                fx.append(x)
        if px:
            ax.plot(px, py, marker="o", linewidth=1.6, color=LINE_COLOR, label=col.metric)
        else:
            ax.set_yticks([])
        if fx:
            ax.scatter(fx, [0] * len(fx), marker="x", color=FAIL_COLOR, transform=ax.get_xaxis_transform(),
                       clip_on=False, label="failed")
            ax.legend(loc="best", fontsize=8)
        ax.set_title(f"{task}: {col.metric} ({direction_text(col)})", fontsize=10, loc="left")
        ax.grid(True, alpha=0.3)
    _commit_ticks(axes[-1], chrono)
    return _svg(fig, f"task{index}")


def layer_heatmap(order: Sequence[Commit], diffs: Mapping[str, TreeDiff]) -> str:
    """Layer groups (rows) by commit (columns, oldest left): the relative change ‖B−A‖/‖A‖ on a log scale."""
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


def _commit_ticks(ax, chrono: Sequence[Commit]) -> None:
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
