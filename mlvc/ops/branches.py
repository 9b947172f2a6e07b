"""Branches and tags: create and delete; tags lightweight (the ref holds the commit id) or annotated (the
ref holds the id of a tag object with a message, tagger and time: objects.Tag). Listing branches is
Repo.branches; `list_tags` lists tags with their tag objects (Repo.tags gives the raw ref values)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import MlvcError, RefError
from ..objects import Tag
from ..refs import HEADS, TAGS, check_name
from ..revparse import read_tag, suggest, tag_target
from ..util import utc_now

if TYPE_CHECKING:
    from ..repo import Repo


def _ref(kind: str, name: str, existing: bool = False) -> str:
    """The ref of a branch or tag name; `existing`: one to delete, which may be named HEAD (refused as a new name
    since 2026-12, so that a repository with such a branch or tag can still remove it)."""
    return (HEADS if kind == "branch" else TAGS) + (name if existing and name == "HEAD" else check_name(name, kind))


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


def create_ref(repo: Repo, kind: str, name: str, rev: str, force: bool, message: str | None = None) -> str:
    ref = _ref(kind, name)
    _check_folder_clash(repo, kind, name)
    if message is not None and (kind != "tag" or not message.strip()):
        raise MlvcError("a message is for an annotated tag, and must not be empty" if kind == "tag"
                        else "only tags carry a message")
    cid = repo.resolve(rev)
    old = repo.refs.resolve(ref)
    if old is not None and not force:
        raise RefError(f"{kind} {name!r} already exists (at {old[:12]}); pass --force to move it")
    if kind == "branch" and force and repo.head_branch() == name:
        raise RefError(f"cannot force-move the current branch {name!r}; use `mlvc reset` or switch away first")
    log = f"{kind}: created from {rev}"
    if message is None:
        repo.refs.set_if_equals(ref, old, cid, who=repo.author(), message=log)
        return cid
    tag = Tag(cid, name, repo.author(), utc_now(), message)
    data = tag.to_bytes()
    Tag.from_dict(json.loads(data), "")  # what could not be read back never gets an id a ref names
    with repo.writing():  # gc keeps the tag object until the ref names it
        tag.id = repo.store.put(data).id
        repo.store.flush()  # the object and its folder durable before a ref names it, as for a commit
        repo.refs.set_if_equals(ref, old, tag.id, who=repo.author(), message=log)
    return cid


def delete_ref(repo: Repo, kind: str, name: str) -> str:
    ref = _ref(kind, name, existing=True)
    old = repo.refs.resolve(ref)
    if old is None:
        plural = "branches" if kind == "branch" else "tags"
        close = suggest(repo, name, (HEADS if kind == "branch" else TAGS,))
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise RefError(f"no {kind} named {name!r}; {hint}`mlvc {kind}` lists the {plural}")
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


def create_tag(repo: Repo, name: str, rev: str = "HEAD", force: bool = False, message: str | None = None) -> str:
    """Create tag `name` at `rev` (`force`: move an existing one); the commit id it points at. With a
    `message` the tag is annotated: a tag object recording the message, the tagger (the commit author
    setting) and the time, which the ref then names (`list_tags` and `read_tag` read it back)."""
    return create_ref(repo, "tag", name, rev, force, message)


def delete_tag(repo: Repo, name: str) -> str:
    """Delete tag `name`; the id it pointed at (the commit's, or an annotated tag's object id)."""
    return delete_ref(repo, "tag", name)


@dataclass
class TagInfo:
    name: str
    commit: str | None  # the commit it names (None: an annotated tag whose object cannot be read; see error)
    tag: Tag | None = None  # the tag object of an annotated tag
    error: str | None = None  # why the tag object cannot be read (`mlvc fsck` reports it too)

    @property
    def annotated(self) -> bool:
        return self.tag is not None or self.error is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "commit": self.commit, "annotated": self.annotated}
        if self.tag is not None:
            out.update(object=self.tag.id, message=self.tag.message, tagger=self.tag.tagger, time=self.tag.time)
        if self.error is not None:
            out["error"] = self.error
        return out


def list_tags(repo: Repo) -> list[TagInfo]:
    """Every tag, by name, with the commit it names and, for an annotated tag, its tag object. A tag whose
    object is missing or damaged is listed with `error` (listing never fails on one tag)."""
    out = []
    for name, oid in repo.refs.list(TAGS).items():
        try:
            target = tag_target(repo, oid)
            info = TagInfo(name, oid) if target is None else TagInfo(name, target, read_tag(repo, oid))
        except MlvcError as e:
            info = TagInfo(name, None, error=str(e))
        out.append(info)
    return out
