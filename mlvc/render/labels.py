"""Which names point at which commit: the decorations of `mlvc log` and of the report's history."""

from __future__ import annotations

from collections.abc import Mapping


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
