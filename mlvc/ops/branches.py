"""Branches and tags: create and delete (listing is Repo.branches / Repo.tags)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import RefError
from ..refs import HEADS, TAGS, check_name

if TYPE_CHECKING:
    from ..repo import Repo


def _ref(kind: str, name: str) -> str:
    return (HEADS if kind == "branch" else TAGS) + check_name(name, kind)


def _check_folder_clash(repo: Repo, kind: str, name: str) -> None:
    """Refs are files under refs/heads/ (refs/tags/): a ref `a` and a ref `a/b` cannot both exist, since `a`
    would have to be a file and a folder at once."""
    prefix, plural = (HEADS, "branches") if kind == "branch" else (TAGS, "tags")
    for other in repo.refs.names(prefix):
        if name.startswith(other + "/"):
            raise RefError(f"cannot create {kind} {name!r}: {kind} {other!r} exists, and {other!r} cannot also "
                           f"be a folder of {plural}; delete {other!r} or pick another name")
        if other.startswith(name + "/"):
            raise RefError(f"cannot create {kind} {name!r}: {kind} {other!r} exists, so {name!r} is a folder "
                           f"of {plural}; pick another name")


def create_ref(repo: Repo, kind: str, name: str, rev: str, force: bool) -> str:
    ref = _ref(kind, name)
    _check_folder_clash(repo, kind, name)
    cid = repo.resolve(rev)
    old = repo.refs.resolve(ref)
    if old is not None and not force:
        raise RefError(f"{kind} {name!r} already exists (at {old[:12]}); pass --force to move it")
    if kind == "branch" and force and repo.head_branch() == name:
        raise RefError(f"cannot force-move the current branch {name!r}; use `mlvc reset` or switch away first")
    repo.refs.set_if_equals(ref, old, cid, who=repo.author(), message=f"{kind}: created from {rev}")
    return cid


def delete_ref(repo: Repo, kind: str, name: str) -> str:
    ref = _ref(kind, name)
    old = repo.refs.resolve(ref)
    if old is None:
        raise RefError(f"no {kind} named {name!r}; see `mlvc {kind}`")
    if kind == "branch" and repo.head_branch() == name:
        raise RefError(f"cannot delete the current branch {name!r}; switch to another branch first")
    repo.refs.remove_if_equals(ref, old, who=repo.author(), message=f"{kind}: deleted")
    return old


def create_branch(repo: Repo, name: str, start: str = "HEAD", force: bool = False) -> str:
    """Create branch `name` at `start` (`force`: move an existing one); the commit id it points at."""
    return create_ref(repo, "branch", name, start, force)


def delete_branch(repo: Repo, name: str) -> str:
    """Delete branch `name` (never the current one); the commit id it pointed at."""
    return delete_ref(repo, "branch", name)


def create_tag(repo: Repo, name: str, rev: str = "HEAD", force: bool = False) -> str:
    """Create tag `name` at `rev` (`force`: move an existing one); the commit id it points at."""
    return create_ref(repo, "tag", name, rev, force)


def delete_tag(repo: Repo, name: str) -> str:
    """Delete tag `name`; the commit id it pointed at."""
    return delete_ref(repo, "tag", name)
