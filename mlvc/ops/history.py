"""log and show: walk the commit graph."""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..objects import Commit, Manifest

if TYPE_CHECKING:
    from ..repo import Repo


def log(repo: Repo, rev: str = "HEAD", n: int | None = None) -> list[Commit]:
    """Commits reachable from `rev`, newest first (by time, then id), each once."""
    if n is not None and n <= 0:
        return []
    start = repo.read_commit(repo.resolve(rev))
    heap: list[tuple[str, str, Commit]] = []
    seen = {start.id}
    out: list[Commit] = []

    def push(c: Commit) -> None:
        heapq.heappush(heap, (_newest_first(c.time), c.id, c))

    push(start)
    while heap and (n is None or len(out) < n):
        _, _, c = heapq.heappop(heap)
        out.append(c)
        for p in c.parents:
            if p not in seen:
                seen.add(p)
                push(repo.read_commit(p))
    return out


def _newest_first(text: str) -> str:
    """A sort key that orders ISO times from newest to oldest in a min-heap."""
    return "".join(chr(0x10FFFF - ord(ch)) for ch in text)


@dataclass
class ShowResult:
    commit: Commit
    manifest: Manifest
    branches: list[str]
    tags: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"commit": self.commit.to_json(), "branches": self.branches, "tags": self.tags,
                "roots": self.manifest.roots,
                "files": [{"path": f.path, "kind": f.kind, "size": f.size, "hash": f.hash, "tensors": len(f.tensors),
                           **({"exact": f.exact} if f.kind == "torch" else {})} for f in self.manifest.files]}


def show(repo: Repo, rev: str = "HEAD") -> ShowResult:
    c = repo.read_commit(repo.resolve(rev))
    return ShowResult(c, repo.read_manifest(c.manifest), [b for b, v in repo.branches().items() if v == c.id],
                      [t for t, v in repo.tags().items() if v == c.id])
