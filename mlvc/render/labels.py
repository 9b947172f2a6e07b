"""How commits are labelled in `mlvc log` and the report's history: which names point at which commit (the
decorations), the ASCII graph of `log --graph`, and commit metadata as shown."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


def ref_labels(head: str | None, head_branch: str | None, branches: Mapping[str, str], tags: Mapping[str, str],
               arrow: str = "->") -> dict[str, list[str]]:
    """{commit id: labels}: "HEAD" where HEAD is detached, "HEAD -> main" for the current branch, other
    branches by name, tags as "tag: NAME"; in that order for each commit (branches and tags as listed).

    `arrow` is what joins HEAD to its branch ("->" in a terminal, "→" in the HTML report)."""
    out: dict[str, list[str]] = {}
    if head and not head_branch:
        out.setdefault(head, []).append("HEAD")
    for name, cid in branches.items():
        out.setdefault(cid, []).append(f"HEAD {arrow} {name}" if name == head_branch else name)
    for name, cid in tags.items():
        out.setdefault(cid, []).append(f"tag: {name}")
    return out


def repo_labels(repo, arrow: str = "->") -> dict[str, list[str]]:
    """ref_labels of a repository's current refs."""
    return ref_labels(repo.head(), repo.head_branch(), repo.branches(), repo.tags(), arrow)


# -- the graph of `mlvc log --graph` ------------------------------------------------------------------------


@dataclass
class GraphRow:
    """How one commit is drawn: `row` goes before its first line ("| * "), `cont` before its other lines, and
    `after` are the lines that lead from its columns to the next commit's ("|\\", "|/")."""

    row: str
    cont: str
    after: list[str]


def graph(nodes: Sequence[tuple[str, Sequence[str]]]) -> list[GraphRow]:
    """The ASCII graph of `git log --graph` for (commit id, parent ids) listed children before parents: one
    column per line of history being followed, "*" where the commit is, "|" for the others, "\\" where a merge
    opens a column for its second parent and "/" where two columns join (a branch point). A parent that is not
    listed (a history cut by -n) leaves its column open to the end."""
    cols: list[str] = []
    out: list[GraphRow] = []
    for cid, parents in nodes:
        if cid not in cols:
            cols.append(cid)  # a tip: a new column on the right
        i = cols.index(cid)
        row = " ".join("*" if j == i else "|" for j in range(len(cols)))
        cont = " ".join("|" if j != i or parents else " " for j in range(len(cols)))
        new: list[str] = []
        for x in cols[:i] + list(parents) + cols[i + 1 :]:
            if x not in new:
                new.append(x)
        edges = [(j, new.index(x)) for j, x in enumerate(cols) if j != i]
        edges += [(i, new.index(p)) for p in dict.fromkeys(parents)]
        out.append(GraphRow(row, cont, _transition(edges)))
        cols = new
    return out


def _transition(edges: list[tuple[int, int]]) -> list[str]:
    """Lines moving each edge (column now, column next) one column per line until all are in place."""
    lines: list[str] = []
    while any(a != b for a, b in edges):
        chars = [" "] * (2 * max(max(a, b) for a, b in edges) + 2)
        moved = []
        for a, b in edges:
            at, ch, step = (2 * a, "|", 0) if a == b else ((2 * a + 1, "\\", 1) if b > a else (2 * a - 1, "/", -1))
            if chars[at] == " ":
                chars[at] = ch
            moved.append((a + step, b))
        lines.append("".join(chars).rstrip())
        edges = moved
    return lines


# -- metadata as shown ------------------------------------------------------------------------------------


def shown_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Commit metadata as `log` and `show` print it: a merge's list of resolved tensors (commits written before
    merges recorded a summary) becomes the summary they record now, its count and layer groups."""
    out = dict(meta)
    merge = out.get("merge")
    if isinstance(merge, dict) and isinstance(merge.get("resolved"), list):
        from ..ops.treebuild import group_counts, parse_described  # only for such old commits

        names = [x for x in merge["resolved"] if isinstance(x, str)]
        out["merge"] = {**merge, "resolved": len(merge["resolved"]),
                        "resolved_groups": group_counts([parse_described(x) for x in names])}
    return out
