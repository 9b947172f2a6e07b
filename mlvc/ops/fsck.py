"""fsck: verify every object's content against its id, that everything refs reach is present, that refs,
reflogs and the ledger are intact, and list what interrupted processes left behind.

Two lists: `problems` is damage (a corrupt or missing object, a ref that names nothing, a damaged ledger part):
the repository is not ok. `leftovers` is what a killed process leaves and what `mlvc gc` clears (or the next
command finishes): stale locks, temp files in .mlvc and in the work tree, an interrupted work-tree update,
reflog lines torn by a crash. They lose nothing, so they do not make the repository not ok.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .. import lockfile
from ..bundles import bundle_misfit
from ..errors import CorruptObjectError, FormatError, MlvcError, ObjectNotFoundError
from ..formats import safetensors as st
from ..objects import KIND_SAFETENSORS, FileEntry
from ..progress import NULL, Progress
from ..refs import HEAD, HEADS, TAGS
from ..revparse import tag_target
from ..util import TMP_PREFIX, show

if TYPE_CHECKING:
    from ..repo import Repo


@dataclass
class Problem:
    object_id: str
    # problems: "corrupt", "corrupt base", "missing", "damaged file", "bad ref", "bad reflog",
    #   "damaged ledger part"; leftovers: "stale lock", "temp file", "interrupted work-tree update",
    #   "damaged reflog line", "ledger: unverified", "ledger: unknown file"
    problem: str
    detail: str
    path: str | None = None


@dataclass
class FsckReport:
    objects_checked: int = 0
    commits_reached: int = 0
    problems: list[Problem] = field(default_factory=list)
    leftovers: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "objects_checked": self.objects_checked, "commits_reached": self.commits_reached,
                "problems": [asdict(p) for p in self.problems], "leftovers": [asdict(p) for p in self.leftovers]}


def fsck(repo: Repo, progress: Progress = NULL) -> FsckReport:
    report = FsckReport()
    bad: set[str] = set()
    ids = list(repo.store.ids())
    progress.start("fsck", len(ids), unit="objects")
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
    for name, why in repo.store.packs.bad_packs().items():  # a pack file that cannot be read at all
        report.problems.append(Problem("", "corrupt pack", why, name))

    starts: dict[str, str] = {}
    for kind, prefix in (("branch", HEADS), ("tag", TAGS)):
        for name in repo.refs.names(prefix):  # not list(): it stops at the first unreadable ref
            try:
                cid = repo.refs.resolve(prefix + name)
            except MlvcError as e:
                report.problems.append(Problem("", "bad ref", str(e), prefix + name))
                continue
            if cid is not None:  # None: deleted since it was listed (by a concurrent `mlvc branch -d`)
                starts.setdefault(cid, f"{kind} {name}")
    try:
        head = repo.refs.resolve(HEAD)
        if head:
            starts.setdefault(head, "HEAD")
        elif starts:  # HEAD names a branch that does not exist, in a repository that has commits
            report.problems.append(Problem("", "bad ref", f"HEAD names {repo.refs.head_target()}, which does not "
                                           "exist; point it at a branch with `mlvc switch NAME`", "HEAD"))
    except MlvcError as e:
        report.problems.append(Problem("", "bad ref", str(e), "HEAD"))

    # Depth-first from branches, tags and HEAD first, so that a missing commit is reported as the parent of
    # the commit that names it; reflog entries then only add the starting points that walk did not reach.
    seen: set[str] = set()
    headers: _Headers = functools.lru_cache(maxsize=HEADERS_KEPT)(functools.partial(_stored_layout, repo))
    _walk(repo, report, bad, seen, headers, list(starts.items())[::-1])
    for oid in repo.refs.all_reflog_ids():
        if oid not in seen:
            _walk(repo, report, bad, seen, headers, [(oid, "a reflog entry")])
    for ref in repo.refs.reflog_refs():
        try:
            damaged = repo.refs.reflog_lines(ref)[1]
        except MlvcError as e:
            report.problems.append(Problem("", "bad reflog", str(e), f"logs/{ref}"))
            continue
        if damaged:
            report.leftovers.append(Problem("", "damaged reflog line", f"{damaged} line(s) torn by a crash or not "
                                            "mlvc's are skipped when the reflog is read", f"logs/{ref}"))
    _check_ledger(repo, report)
    _leftovers(repo, report)
    return report


def _check_ledger(repo: Repo, report: FsckReport) -> None:
    for problem in repo.ledger.verify():
        if problem.kind == "damaged":
            report.problems.append(Problem("", "damaged ledger part", problem.detail, problem.path))
        elif problem.kind != "temp file":  # temp files are listed with every other one in _leftovers
            # a part from before part hashes, or a file that is not mlvc's: readable, nothing lost
            report.leftovers.append(Problem("", f"ledger: {problem.kind}", problem.detail, problem.path))


def _leftovers(repo: Repo, report: FsckReport) -> None:
    """Stale locks, temp files (in .mlvc, and `.tmp-mlvc-*` in the tracked folders), interrupted updates."""
    from .workfiles import SKIP_DIRS
    from .worktree import pending

    for lock in lockfile.find_locks(repo.dir):
        if lockfile.is_stale(lock):
            info = lockfile.read_info(lock)
            report.leftovers.append(Problem("", "stale lock", f"left by {info.describe() if info else lock}, a "
                                            "process that is gone; the next command or `mlvc gc` clears it", lock))
    for journal in pending(repo):
        report.leftovers.append(Problem("", "interrupted work-tree update", "the next checkout, status or commit "
                                        "finishes it (or undoes it when its ref did not move)", journal))
    for folder, dirs, files in os.walk(repo.dir):
        dirs.sort()
        for name in sorted(files):
            if name.startswith(".tmp-"):  # TMP_PREFIX, and the temp names of older versions
                report.leftovers.append(Problem("", "temp file", "left by an interrupted write; `mlvc gc` removes it",
                                                os.path.join(folder, name)))
    try:
        head = repo.head()
        roots = repo.read_manifest(repo.read_commit(head).manifest, resolve=False).roots if head else []
    except MlvcError:
        roots = []
    for root in roots:
        top = repo.abs_path(root)
        if not os.path.isdir(top) or os.path.islink(top):
            continue
        for folder, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)  # the folders gc's sweep skips too
            for name in sorted(files):
                if name.startswith(TMP_PREFIX):
                    report.leftovers.append(Problem("", "temp file", "left in the work tree by an interrupted "
                                                    "checkout; `mlvc gc` removes it", os.path.join(folder, name)))


def _walk(repo: Repo, report: FsckReport, bad: set[str], seen: set[str], headers: _Headers,
          stack: list[tuple[str, str]]) -> None:
    """Check every commit reachable from `stack` ((commit id, what names it) pairs), its manifest and
    chunks, skipping what is in `seen` and adding what it visits. `headers`: the safetensors headers parsed so far
    (_header_mismatch)."""
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
            if cid in bad:
                continue
            try:  # an annotated tag: its object is checked, then the commit it names
                target = tag_target(repo, cid)
            except CorruptObjectError as te:
                report.problems.append(Problem(cid, "corrupt", f"tag object referenced by {via}: {te.reason}"))
                continue
            if target is None:
                report.problems.append(Problem(cid, "corrupt", f"commit referenced by {via}: {e.reason}"))
            else:
                stack.append((target, f"tag object {cid[:12]} ({via})"))
            continue
        report.commits_reached += 1
        stack.extend((p, f"commit {cid[:12]}") for p in c.parents)
        if c.manifest in seen:
            continue
        seen.add(c.manifest)
        try:
            m = repo.read_manifest(c.manifest, resolve=False)
            misfit = bundle_misfit(repo.store, m, bad)
        except ObjectNotFoundError:
            report.problems.append(Problem(c.manifest, "missing", f"manifest of commit {cid[:12]}"))
            continue
        except CorruptObjectError as e:
            if c.manifest not in bad:
                report.problems.append(Problem(c.manifest, "corrupt", f"manifest of commit {cid[:12]}: {e.reason}"))
            continue
        if misfit:
            report.problems.append(Problem(c.manifest, "corrupt", f"manifest of commit {cid[:12]}: malformed "
                                           f"manifest ({misfit})"))
        for f in m.files:
            mismatch = None if misfit else _header_mismatch(repo, f, bad, headers)  # not again once malformed
            if mismatch:
                report.problems.append(Problem(c.manifest, "corrupt", f"manifest of commit {cid[:12]}: {f.path}: "
                                               f"{mismatch}"))
            for oid in f.object_ids():
                if oid in seen:
                    continue
                seen.add(oid)
                if oid in bad:
                    report.problems.append(Problem(oid, "damaged file", f"{f.path} in commit {cid[:12]} needs "
                                                   "a corrupt object", repo.store.locate(oid)))
                elif not repo.store.has(oid):
                    report.problems.append(Problem(oid, "missing", f"chunk of {f.path} in commit {cid[:12]}"))


# A parsed header, by (header chunk ids, file size): what _stored_layout gives. A series of commits of one model
# shares its header; a file whose metadata changes at every commit brings a new one each time, and a layout of
# 100,000 tensors takes about 30 MiB: the last few, least recently used dropped first.
_Headers = Callable[[tuple[str, ...], int], st.Layout | str | None]
HEADERS_KEPT = 4


def _header_mismatch(repo: Repo, f: FileEntry, bad: set[str], headers: _Headers) -> str | None:
    """What a safetensors file's entry says of its tensors (names, dtypes, shapes, sizes, in data order) that the
    file's own header, as stored, does not; None when they agree, or when the header's chunks cannot be read
    (each is reported itself). A checkout writes the header and then the tensors' bytes in the entry's order, so
    such a tree checks out byte for byte, but everything that names a tensor (diff, show, load, an evaluation)
    would read the wrong bytes under a name. Empty tensors that share an offset are compared in the parser's
    order (by name), which a tree made by revert or merge need not list them in."""
    if f.kind != KIND_SAFETENSORS or not bad.isdisjoint(f.header or ()):
        return None
    if not f.header:
        return "it names no header chunks"
    layout = headers(tuple(f.header), f.size)
    if layout is None or isinstance(layout, str):
        return layout
    names, dtypes, shapes, sizes = f.columns()
    begins = list(itertools.accumulate(sizes, initial=0))
    ends = begins[1:]
    del begins[-1]
    if len(set(begins)) != len(begins):  # empty tensors share an offset: the parser's order, by (begin, end, name)
        order = sorted(range(len(names)), key=lambda i: (begins[i], ends[i], names[i]))
        names, dtypes, shapes = [names[i] for i in order], [dtypes[i] for i in order], [shapes[i] for i in order]
        begins, ends = [begins[i] for i in order], [ends[i] for i in order]
    if shapes != layout.shapes:  # lists both, as read; a tuple among them would differ from its list only here
        shapes = list(map(list, shapes))
    if (names, dtypes, shapes, begins, ends) == (layout.names, layout.dtypes, layout.shapes, layout.begins,
                                                 layout.ends):
        return None
    if len(names) != len(layout.names):
        return f"it lists {len(names)} tensors, the file's header {len(layout.names)}"
    k = next(k for k in range(len(names)) if (names[k], dtypes[k], shapes[k], begins[k], ends[k]) !=
             (layout.names[k], layout.dtypes[k], layout.shapes[k], layout.begins[k], layout.ends[k]))
    return (f"its tensor {show(names[k])} ({dtypes[k]} {shapes[k]}, bytes {begins[k]}-{ends[k]} of the data) is "
            f"{show(layout.names[k])} ({layout.dtypes[k]} {layout.shapes[k]}, bytes {layout.begins[k]}-"
            f"{layout.ends[k]}) in the file's header")


def _stored_layout(repo: Repo, header: tuple[str, ...], size: int) -> st.Layout | str | None:
    """The layout of a file's stored header (its chunks, the file's size), or what is wrong with it; None when a
    chunk cannot be read (it is reported itself). The chunks' lengths (their object headers') are summed first: a
    manifest may name any chunks, many times over, and only a header that fits the file and the format's bound is
    read."""
    try:
        length = sum(repo.store.header(h).raw_length for h in header)
        if length > min(size, 8 + st.MAX_HEADER):
            return f"its header chunks hold {length} bytes, more than a header of a {size}-byte file can"
        head = b"".join(bytes(repo.store.get(h)) for h in header)
    except (ObjectNotFoundError, CorruptObjectError):
        return None
    try:
        layout = st.parse_layout(head, size, "")
    except FormatError as e:
        return f"its stored header does not read as that of a safetensors file of {size} bytes ({e.reason})"
    if layout.data_start != len(head):
        return f"its header chunks hold {len(head)} bytes, its header {layout.data_start}"
    return layout
