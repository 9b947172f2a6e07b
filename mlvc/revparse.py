"""Revisions: full ids, unique id prefixes (4+ hex digits), branch and tag names, HEAD (or @),
REF@{N} (the N-th entry of REF's reflog, newest first: HEAD@{1} is where HEAD was before its last move),
and the suffixes ~N (N-th first-parent ancestor), ^ (first parent) and ^N (N-th parent).

An annotated tag (a tag object, objects.Tag) is peeled to the commit it names wherever a revision is
resolved: `v1`, `refs/tags/v1`, the tag object's id or a prefix of it, `v1@{0}`. A name that matches nothing
is answered with the closest branch and tag names ("did you mean 'main'?")."""

from __future__ import annotations

import difflib
import re
from typing import TYPE_CHECKING

from .errors import CorruptObjectError, MlvcError, ObjectNotFoundError, RevisionError, UnknownRevisionError
from .objects import Tag, object_type, parse_object
from .refs import HEADS, REMOTES, TAGS
from .util import is_object_id

if TYPE_CHECKING:
    from .repo import Repo

_SUFFIX = re.compile(r"(~\d*|\^\d*)$")
MIN_PREFIX = 4  # hex digits of the shortest id prefix accepted
_HEX = re.compile(rf"^[0-9a-f]{{{MIN_PREFIX},32}}$")
_SHORT_HEX = re.compile(rf"^[0-9a-f]{{1,{MIN_PREFIX - 1}}}$")
_REFLOG = re.compile(r"^(.*)@\{(\d+)\}$")  # REF@{N}: the value REF had N moves ago (HEAD when REF is empty)


def resolve(repo: Repo, rev: str) -> str:
    """The commit id a revision names; RevisionError when it names nothing or is ambiguous."""
    if not rev or rev != rev.strip():
        raise RevisionError(rev, "empty or padded revision")
    steps: list[tuple[str, int]] = []
    base = rev
    while (m := _SUFFIX.search(base)) and m.start() > 0:
        op = m.group(1)
        steps.append((op[0], int(op[1:]) if len(op) > 1 else 1))
        base = base[: m.start()]
    cid = _resolve_base(repo, base, rev)
    for op, n in reversed(steps):
        if op == "~":
            for _ in range(n):
                parents = repo.read_commit(cid).parents
                if not parents:
                    raise RevisionError(rev, f"history is not that deep ({cid[:12]} has no parent)")
                cid = parents[0]
        else:
            if n == 0:
                continue
            parents = repo.read_commit(cid).parents
            if len(parents) < n:
                raise RevisionError(rev, f"commit {cid[:12]} has {len(parents)} parent(s)")
            cid = parents[n - 1]
    return cid


def _resolve_base(repo: Repo, name: str, rev: str) -> str:
    refs = repo.refs
    if m := _REFLOG.match(name):
        return _reflog_entry(repo, m.group(1) or "HEAD", int(m.group(2)), rev)
    if name in ("HEAD", "@"):
        cid = refs.resolve("HEAD")
        if cid is None:
            raise RevisionError(rev, "HEAD has no commit yet (make one with `mlvc commit`)")
        return cid
    short_refs = (HEADS + name, TAGS + name, REMOTES + name)  # `main`, `v1`, `origin/main`
    for ref in (name, *short_refs) if name.startswith("refs/") else short_refs:
        try:
            cid = refs.resolve(ref)
        except MlvcError:
            cid = None
        if cid:
            return peel(repo, cid) if ref.startswith(TAGS) else cid
    if is_object_id(name):
        if not repo.store.has(name):
            raise RevisionError(rev, "no such commit")
        cid = _peeled(repo, name)  # a damaged object stays a CorruptObjectError
        if cid is None:
            raise RevisionError(rev, "not a commit (that id names a chunk or manifest object)")
        return cid
    if _HEX.match(name):
        matches = sorted({c for oid in repo.store.ids_with_prefix(name) if (c := _prefix_target(repo, oid))})
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise RevisionError(rev, f"ambiguous id prefix ({len(matches)} commits start with it; give more digits)")
    if _SHORT_HEX.match(name):
        raise RevisionError(rev, f"too short for an id prefix (give at least {MIN_PREFIX} hex digits) and no branch "
                                 "or tag has that name")
    raise UnknownRevisionError(rev, [s + rev[len(name):] for s in suggest(repo, name)])  # `mian~1` -> `main~1`


def suggest(repo: Repo, name: str, prefixes: tuple[str, ...] = (HEADS, TAGS, REMOTES), n: int = 3) -> list[str]:
    """The branch, tag and remote-tracking names (and HEAD, when several kinds are asked for) closest to a name
    that matched none, best first (difflib's ratio, at least 0.6: `mian` -> `main`, `v1.O` -> `v1.0`)."""
    candidates = ["HEAD"] if len(prefixes) > 1 else []
    for prefix in prefixes:
        try:
            candidates += repo.refs.names(prefix)
        except OSError:
            pass
    return difflib.get_close_matches(name, list(dict.fromkeys(candidates)), n=n)


def tag_target(repo: Repo, oid: str) -> str | None:
    """The commit an annotated tag object names; None when `oid` is absent or not a tag object (a commit).
    CorruptObjectError when the object is damaged or is a tag object that does not parse as one."""
    try:
        raw = repo.store.get(oid)
    except ObjectNotFoundError:
        return None
    if object_type(raw) != "tag":
        return None
    return Tag.from_dict(parse_object(raw, oid, "tag"), oid).object


def tag_of(repo: Repo, rev: str) -> Tag | None:
    """The annotated tag a revision names itself (a tag name, `refs/tags/NAME`, a tag object's full id), or
    None: a lightweight tag, a branch, a commit, any revision with a suffix. For `show`, which prints the
    tag's message before its commit."""
    oid: str | None = rev
    if not is_object_id(rev):
        try:
            if rev.startswith(TAGS):
                oid = repo.refs.resolve(rev)
            elif repo.refs.resolve(HEADS + rev) is None:  # a branch of that name wins, as in resolve()
                oid = repo.refs.resolve(TAGS + rev)
            else:
                return None
        except MlvcError:
            return None
    if oid is None or tag_target(repo, oid) is None:
        return None
    return read_tag(repo, oid)


def read_tag(repo: Repo, oid: str) -> Tag:
    """The annotated tag object `oid` (CorruptObjectError when it is not a well-formed tag)."""
    return Tag.from_dict(parse_object(repo.store.get(oid), oid, "tag"), oid)


def peel(repo: Repo, oid: str) -> str:
    """The commit an object id stands for: a commit's own id, an annotated tag's commit. CorruptObjectError
    when it is neither (a chunk, a manifest) or does not parse; ObjectNotFoundError when it is absent."""
    cid = _peeled(repo, oid)
    if cid is None:
        raise CorruptObjectError(oid, "expected a commit or a tag object, found another kind of object")
    return cid


def _peeled(repo: Repo, oid: str) -> str | None:
    """peel(), but None for an intact object that is neither a commit nor a tag."""
    raw = repo.store.get(oid)
    kind = object_type(raw)
    if kind == "commit":
        return oid
    if kind == "tag":
        return Tag.from_dict(parse_object(raw, oid, "tag"), oid).object
    return None


def _prefix_target(repo: Repo, oid: str) -> str | None:
    """The commit an id that a prefix matched stands for (a commit, or a tag's commit); None for anything
    else, including objects too large to be either and damaged objects (a prefix never fails on them)."""
    try:
        if repo.store.header(oid).raw_length > 1 << 20:
            return None
        return _peeled(repo, oid)
    except (CorruptObjectError, ObjectNotFoundError):
        return None


def reflog_ref(repo: Repo, name: str) -> str:
    """The full ref a reflog is kept under: HEAD, refs/..., or a branch or tag short name."""
    if name in ("HEAD", "@"):
        return "HEAD"
    if name.startswith("refs/"):
        return name
    for ref in (HEADS + name, TAGS + name):
        if repo.refs.read_raw(ref) is not None or repo.refs.reflog(ref):
            return ref
    raise UnknownRevisionError(name, suggest(repo, name), "no such branch or tag")


def _reflog_entry(repo: Repo, name: str, n: int, rev: str) -> str:
    entries = repo.refs.reflog(reflog_ref(repo, name))
    if n >= len(entries):
        raise RevisionError(rev, f"the reflog of {name} has only {len(entries)} entries (see `mlvc reflog {name}`)")
    cid = entries[n].new
    if cid is None:
        raise RevisionError(rev, f"{name} was deleted at that point of its reflog")
    return peel(repo, cid)  # a tag's reflog records its tag object

