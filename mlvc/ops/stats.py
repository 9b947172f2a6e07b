"""stats: what the checkpoints weigh (logical bytes) against what the store holds for them.

Per commit, "new" counts the objects a commit is the first (in history order) to reference, so the new
bytes of all commits add up to the store's size for that history: what each checkpoint cost to keep.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .. import codec
from ..refs import HEADS, TAGS

if TYPE_CHECKING:
    from ..repo import Repo


@dataclass
class CommitStats:
    id: str
    message: str
    logical_bytes: int  # the checkpoint's files, as checked out
    objects: int  # objects the commit needs (chunks, headers, manifest, commit)
    new_objects: int
    new_stored_bytes: int  # bytes of the objects this commit added

    @property
    def ratio(self) -> float:
        return self.new_stored_bytes / self.logical_bytes if self.logical_bytes else 0.0


@dataclass
class RepoStats:
    commits: list[CommitStats] = field(default_factory=list)  # newest first
    stored_bytes: int = 0  # every object the histories need (including delta bases)
    objects: int = 0
    encodings: dict[str, int] = field(default_factory=dict)  # object count per encoding
    max_depth: int = 0  # longest delta chain

    @property
    def logical_bytes(self) -> int:
        return sum(c.logical_bytes for c in self.commits)

    @property
    def ratio(self) -> float:
        return self.stored_bytes / self.logical_bytes if self.logical_bytes else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"logical_bytes": self.logical_bytes, "stored_bytes": self.stored_bytes, "ratio": self.ratio,
                "objects": self.objects, "encodings": self.encodings, "max_depth": self.max_depth,
                "commits": [{**asdict(c), "ratio": c.ratio} for c in self.commits]}


def stats(repo: Repo, rev: str | None = None) -> RepoStats:
    """Statistics for the history of `rev`, or of every branch and tag (and HEAD) when rev is None."""
    if rev is not None:
        commits = repo.log(rev)  # ops/history.py, through the Repo: verbs never import verbs
    else:
        tips = {repo.head()} | set(repo.refs.list(HEADS).values()) | set(repo.refs.list(TAGS).values())
        seen: dict[str, Any] = {}
        for tip in filter(None, tips):
            for c in repo.log(tip):
                seen.setdefault(c.id, c)
        commits = sorted(seen.values(), key=lambda c: (c.time, c.id), reverse=True)
    out = RepoStats()
    counted: set[str] = set()
    encodings: Counter[str] = Counter()
    per_commit = []
    for c in reversed(commits):  # oldest first: an object is new in the first commit that needs it
        manifest = repo.read_manifest(c.manifest, resolve=False)
        ids = {c.id, c.manifest}
        for f in manifest.files:
            ids.update(f.object_ids())
        ids |= _bases_closure(repo, ids - counted)
        new = ids - counted
        new_bytes = 0
        for oid in new:
            new_bytes += repo.store.stored_size(oid)
            h = repo.store.header(oid)
            encodings[codec.ENCODING_NAMES[h.encoding]] += 1
            out.max_depth = max(out.max_depth, h.depth)
        counted |= new
        per_commit.append(CommitStats(c.id, c.message.splitlines()[0] if c.message else "",
                                      sum(f.size for f in manifest.files), len(ids), len(new), new_bytes))
    out.commits = per_commit[::-1]
    out.objects = len(counted)
    out.stored_bytes = sum(c.new_stored_bytes for c in per_commit)
    out.encodings = dict(sorted(encodings.items()))
    return out


def _bases_closure(repo: Repo, ids: set[str]) -> set[str]:
    """The delta bases these objects need, transitively (normally already counted with older commits)."""
    out: set[str] = set()
    todo = list(ids)
    while todo:
        for b in repo.store.bases(todo.pop()):
            if b not in out and b not in ids:
                out.add(b)
                todo.append(b)
    return out
