"""Revisions: full ids, unique id prefixes (4+ hex digits), branch and tag names, HEAD (or @),
REF@{N} (the N-th entry of REF's reflog, newest first: HEAD@{1} is where HEAD was before its last move),
and the suffixes ~N (N-th first-parent ancestor), ^ (first parent) and ^N (N-th parent)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .errors import CorruptObjectError, MlvcError, RevisionError
from .objects import parse_object
from .refs import HEADS, TAGS
from .util import is_object_id

if TYPE_CHECKING:
    from .repo import Repo

_SUFFIX = re.compile(r"(~\d*|\^\d*)$")
_HEX = re.compile(r"^[0-9a-f]{4,32}$")
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
    for ref in (name, HEADS + name, TAGS + name) if name.startswith("refs/") else (HEADS + name, TAGS + name):
        try:
            cid = refs.resolve(ref)
        except MlvcError:
            cid = None
        if cid:
            return cid
    if is_object_id(name):
        if not repo.store.has(name):
            raise RevisionError(rev, "no such commit")
        raw = repo.store.get(name)  # a damaged object stays a CorruptObjectError
        try:
            parse_object(raw, name, "commit")
        except CorruptObjectError:
            raise RevisionError(rev, "not a commit (that id names a chunk or manifest object)") from None
        return name
    if _HEX.match(name):
        matches = [oid for oid in repo.store.ids_with_prefix(name) if repo.is_commit(oid)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise RevisionError(rev, f"ambiguous id prefix ({len(matches)} commits start with it; give more digits)")
    raise RevisionError(rev)


def reflog_ref(repo: Repo, name: str) -> str:
    """The full ref a reflog is kept under: HEAD, refs/..., or a branch or tag short name."""
    if name in ("HEAD", "@"):
        return "HEAD"
    if name.startswith("refs/"):
        return name
    for ref in (HEADS + name, TAGS + name):
        if repo.refs.read_raw(ref) is not None or repo.refs.reflog(ref):
            return ref
    raise RevisionError(name, "no such branch or tag")


def _reflog_entry(repo: Repo, name: str, n: int, rev: str) -> str:
    entries = repo.refs.reflog(reflog_ref(repo, name))
    if n >= len(entries):
        raise RevisionError(rev, f"the reflog of {name} has only {len(entries)} entries (see `mlvc reflog {name}`)")
    cid = entries[n].new
    if cid is None:
        raise RevisionError(rev, f"{name} was deleted at that point of its reflog")
    return cid

