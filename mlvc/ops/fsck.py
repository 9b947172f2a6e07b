"""fsck: verify every object's content against its id, and that everything refs reach is present."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import CorruptObjectError, MlvcError, ObjectNotFoundError
from ..progress import NULL, Progress
from ..refs import HEAD, HEADS, TAGS

if TYPE_CHECKING:
    from ..repo import Repo


@dataclass
class Problem:
    object_id: str
    problem: str  # "corrupt", "missing" or "bad ref"
    detail: str
    path: str | None = None


@dataclass
class FsckReport:
    objects_checked: int = 0
    commits_reached: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "objects_checked": self.objects_checked, "commits_reached": self.commits_reached,
                "problems": [asdict(p) for p in self.problems]}


def fsck(repo: Repo, progress: Progress = NULL) -> FsckReport:
    report = FsckReport()
    bad: set[str] = set()
    ids = list(repo.store.ids())
    progress.start("fsck", len(ids))
    for oid in ids:
        try:
            repo.store.verify(oid)
        except CorruptObjectError as e:
            bad.add(oid)
            if e.object_id == oid:
                report.problems.append(Problem(oid, "corrupt", e.reason, e.path))
            else:  # intact itself, but a delta on a damaged base: it cannot be read either
                report.problems.append(Problem(oid, "corrupt base", f"its delta base {e.object_id} is corrupt: "
                                               f"{e.reason}", repo.store.locate(oid)))
        report.objects_checked += 1
        progress.advance(1)
    progress.finish()

    starts: dict[str, str] = {}
    for kind, prefix in (("branch", HEADS), ("tag", TAGS)):
        for name in repo.refs.names(prefix):  # not list(): it stops at the first unreadable ref
            try:
                cid = repo.refs.resolve(prefix + name)
            except MlvcError as e:
                report.problems.append(Problem("", "bad ref", str(e), prefix + name))
                continue
            starts.setdefault(cid, f"{kind} {name}")
    try:
        head = repo.refs.resolve(HEAD)
        if head:
            starts.setdefault(head, "HEAD")
    except MlvcError as e:
        report.problems.append(Problem("", "bad ref", str(e), "HEAD"))

    # Depth-first from branches, tags and HEAD first, so that a missing commit is reported as the parent of
    # the commit that names it; reflog entries then only add the starting points that walk did not reach.
    seen: set[str] = set()
    _walk(repo, report, bad, seen, list(starts.items())[::-1])
    for oid in repo.refs.all_reflog_ids():
        if oid not in seen:
            _walk(repo, report, bad, seen, [(oid, "a reflog entry")])
    return report


def _walk(repo: Repo, report: FsckReport, bad: set[str], seen: set[str], stack: list[tuple[str, str]]) -> None:
    """Check every commit reachable from `stack` ((commit id, what names it) pairs), its manifest and
    chunks, skipping what is in `seen` and adding what it visits."""
    while stack:
        cid, via = stack.pop()
        if cid in seen:
            continue
        seen.add(cid)
        try:
            c = repo.read_commit(cid)
        except ObjectNotFoundError:
            report.problems.append(Problem(cid, "missing", f"commit referenced by {via}"))
            continue
        except CorruptObjectError as e:
            if cid not in bad:
                report.problems.append(Problem(cid, "corrupt", f"commit referenced by {via}: {e.reason}"))
            continue
        report.commits_reached += 1
        stack.extend((p, f"commit {cid[:12]}") for p in c.parents)
        if c.manifest in seen:
            continue
        seen.add(c.manifest)
        try:
            m = repo.read_manifest(c.manifest)
        except ObjectNotFoundError:
            report.problems.append(Problem(c.manifest, "missing", f"manifest of commit {cid[:12]}"))
            continue
        except CorruptObjectError as e:
            if c.manifest not in bad:
                report.problems.append(Problem(c.manifest, "corrupt", f"manifest of commit {cid[:12]}: {e.reason}"))
            continue
        for f in m.files:
            for oid in f.object_ids():
                if oid in seen:
                    continue
                seen.add(oid)
                if oid in bad:
                    report.problems.append(Problem(oid, "damaged file", f"{f.path} in commit {cid[:12]} needs "
                                                   "a corrupt object", repo.store.locate(oid)))
                elif not repo.store.has(oid):
                    report.problems.append(Problem(oid, "missing", f"chunk of {f.path} in commit {cid[:12]}"))
