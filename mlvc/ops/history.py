"""log and show: walk the commit graph."""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..objects import Commit, Manifest, Tag

if TYPE_CHECKING:
    from ..repo import Repo


def log(repo: Repo, rev: str = "HEAD", n: int | None = None, all_refs: bool = False,
        topo: bool = False) -> list[Commit]:
    """Commits reachable from `rev` (with `all_refs`: from every branch, every tag and HEAD), newest first (by
    time, then id), each once, at most `n`. With `topo`, a commit also always comes after every listed commit
    that has it as a parent (what a graph needs even when commit times are out of order); that reads every
    reachable commit first."""
    if n is not None and n <= 0:
        return []
    starts = tips(repo) if all_refs else [repo.resolve(rev)]
    if topo:
        return _topo_order(repo, starts, n)
    heap: list[tuple[str, str, Commit]] = []
    seen = set(starts)
    out: list[Commit] = []

    def push(c: Commit) -> None:
        heapq.heappush(heap, (_newest_first(c.time), c.id, c))

    for cid in starts:
        push(repo.read_commit(cid))
    while heap and (n is None or len(out) < n):
        _, _, c = heapq.heappop(heap)
        out.append(c)
        for p in c.parents:
            if p not in seen:
                seen.add(p)
                push(repo.read_commit(p))
    return out


def tips(repo: Repo) -> list[str]:
    """The commits every branch, every tag and HEAD point at, each once."""
    out: list[str] = []
    head = repo.head()
    for cid in [*repo.branches().values(), *repo.tags().values(), *([head] if head else [])]:
        if cid not in out:
            out.append(cid)
    return out


def _topo_order(repo: Repo, starts: list[str], n: int | None) -> list[Commit]:
    """Kahn's algorithm over the reachable commits: of the commits all of whose children are out, the newest."""
    commits: dict[str, Commit] = {}
    stack = list(starts)
    while stack:
        cid = stack.pop()
        if cid not in commits:
            commits[cid] = c = repo.read_commit(cid)
            stack.extend(c.parents)
    waiting = dict.fromkeys(commits, 0)  # children not yet listed
    for c in commits.values():
        for p in set(c.parents):
            waiting[p] += 1
    heap = [(_newest_first(c.time), c.id) for c in commits.values() if not waiting[c.id]]
    heapq.heapify(heap)
    out: list[Commit] = []
    while heap and (n is None or len(out) < n):
        _, cid = heapq.heappop(heap)
        c = commits[cid]
        out.append(c)
        for p in set(c.parents):
            waiting[p] -= 1
            if not waiting[p]:
                heapq.heappush(heap, (_newest_first(commits[p].time), p))
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
    tag: Tag | None = None  # the annotated tag the revision named (`mlvc show v1`), printed before the commit

    def to_json(self) -> dict[str, Any]:
        return {"commit": self.commit.to_json(), "branches": self.branches, "tags": self.tags,
                **({"tag": self.tag.to_json()} if self.tag else {}),
                "roots": self.manifest.roots,
                "files": [{"path": f.path, "kind": f.kind, "size": f.size, "hash": f.hash, "tensors": f.tensor_count(),
                           **({"exact": f.exact} if f.kind == "torch" else {})} for f in self.manifest.files]}


def show(repo: Repo, rev: str = "HEAD") -> ShowResult:
    c = repo.read_commit(repo.resolve(rev))
    manifest = repo.read_manifest(c.manifest, resolve=False)  # files only: no tensor's hash is shown
    return ShowResult(c, manifest, [b for b, v in repo.branches().items() if v == c.id],
                      [t for t, v in repo.tags().items() if v == c.id], repo.tag_of(rev))
