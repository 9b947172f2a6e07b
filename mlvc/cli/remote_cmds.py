"""remote, push, fetch, pull and clone (docs/remotes.md)."""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING, Any

import click

from ..render.text import short
from ..render.units import human_bytes
from . import cli
from ._common import emit, json_option, progress, quiet_option, with_repo

if TYPE_CHECKING:
    from ..repo import Repo

_endpoint = click.option("--endpoint", default=None, metavar="URL",
                         help="An S3-compatible server (MinIO, R2, ...); default: AWS_ENDPOINT_URL_S3 / "
                              "AWS_ENDPOINT_URL, else AWS S3.")
_region = click.option("--region", default=None, help="The bucket's region; default: AWS_REGION / AWS_DEFAULT_REGION.")


@cli.group(invoke_without_command=True)
@click.option("-v", "--verbose", is_flag=True, help="Show each remote's URL and endpoint.")
@json_option
@click.pass_context
def remote(ctx: click.Context, verbose: bool, as_json: bool) -> None:
    """List the remotes, or add and remove them (a folder, or s3://BUCKET/PREFIX).

    Credentials are never stored in the repository: S3 remotes take them from the environment
    (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws)."""
    if ctx.invoked_subcommand is not None:
        return
    from ._common import open_repo

    specs = open_repo().remote_list()

    def text() -> str | None:
        if not specs:
            return None
        if not verbose:
            return "\n".join(s.name for s in specs)
        return "\n".join(f"{s.name}\t{s.url}" + (f"\t(endpoint {s.endpoint})" if s.endpoint else "") for s in specs)

    emit([s.to_json() for s in specs], text, as_json)


@remote.command("add")
@click.argument("name")
@click.argument("url")
@_endpoint
@_region
@json_option
@with_repo
def remote_add(repo: Repo, name: str, url: str, endpoint: str | None, region: str | None, as_json: bool) -> None:
    """Add the remote NAME at URL: a folder path, or s3://BUCKET/PREFIX."""
    spec = repo.remote_add(name, url, endpoint=endpoint, region=region)
    emit(spec, f"added remote {spec.name}: {spec.url}", as_json)


@remote.command("remove")
@click.argument("name")
@json_option
@with_repo
def remote_remove(repo: Repo, name: str, as_json: bool) -> None:
    """Forget the remote NAME and its remote-tracking refs (the remote itself is not touched)."""
    spec = repo.remote_remove(name)
    emit(spec, f"removed remote {spec.name} ({spec.url})", as_json)


def _traffic(r: Any) -> str:
    return f"{r.requests} request(s), {human_bytes(r.bytes_sent)} sent, {human_bytes(r.bytes_received)} received"


@cli.command()
@click.argument("remote_name", metavar="[REMOTE]", required=False)
@click.argument("branch", required=False)
@click.option("-f", "--force", is_flag=True,
              help="Move the remote's branch even when it holds commits yours lacks (they are lost there).")
@click.option("--no-tags", is_flag=True, help="Push the branch only, not the tags.")
@quiet_option
@json_option
@with_repo
def push(repo: Repo, remote_name, branch, force, no_tags, quiet, as_json) -> None:
    """Send BRANCH (default: the current one) and the tags to REMOTE (default: origin), with the objects
    it lacks, in packs; the remote's refs move only after everything arrived."""
    r = repo.push(remote_name, branch, tags=not no_tags, force=force, progress=progress(quiet))

    def text() -> str:
        if r.up_to_date:
            return f"{r.remote}: everything up to date ({_traffic(r)})"
        lines = [f"{r.remote} ({r.url}):"]
        for ref, (old, new) in r.updated.items():
            lines.append(f"  {ref}: {short(old) if old else '(new)'} -> {short(new)}")
        lines.append(f"{r.objects_sent} object(s) ({human_bytes(r.object_bytes_sent)}) in {r.packs_sent} pack(s); "
                     f"{r.ledger_parts_sent} ledger part(s); {_traffic(r)}")
        if r.tags_skipped:
            lines.append(f"tags not pushed (the remote has them at another object; --force overwrites): "
                         f"{', '.join(r.tags_skipped)}")
        return "\n".join(lines)

    emit(r, text, as_json)


def _fetch_text(r: Any) -> str:
    lines = []
    if r.partial:
        lines.append(f"fetched commit {short(r.partial)} only (no history, no ref moved): check it out with "
                     f"`mlvc checkout {r.partial} --output DIR`")
    for ref, (old, new) in r.updated.items():
        lines.append(f"  {ref}: {short(old) if old else '(new)'} -> {short(new) if new else '(deleted)'}")
    if r.new_tags:
        lines.append(f"new tags: {', '.join(r.new_tags)}")
    if r.tags_skipped:
        lines.append(f"tags kept as they are here (the remote has them at another object): {', '.join(r.tags_skipped)}")
    lines.append(f"{r.objects_received} object(s) ({human_bytes(r.object_bytes_received)}), "
                 f"{r.ledger_parts_received} ledger part(s); {_traffic(r)}")
    return "\n".join(lines)


@cli.command()
@click.argument("remote_name", metavar="[REMOTE]", required=False)
@click.option("--commit", "rev", metavar="REV", default=None,
              help="Partial: only this branch, tag or commit id of the remote, without its history.")
@click.option("-t", "--tensors", "tensors", multiple=True, metavar="GLOB",
              help="With --commit: only the tensors matching GLOB (repeatable).")
@quiet_option
@json_option
@with_repo
def fetch(repo: Repo, remote_name, rev, tensors, quiet, as_json) -> None:
    """Bring REMOTE's branches (as REMOTE/BRANCH), tags and ledger here, with the objects they need."""
    r = repo.fetch(remote_name, rev=rev, tensors=list(tensors) or None, progress=progress(quiet))
    emit(r, lambda: _fetch_text(r), as_json)


@cli.command()
@click.argument("remote_name", metavar="[REMOTE]", required=False)
@click.argument("branch", required=False)
@click.option("--strategy", default=None, help="The merge strategy when the histories diverged (see `mlvc merge`).")
@quiet_option
@json_option
@with_repo
def pull(repo: Repo, remote_name, branch, strategy, quiet, as_json) -> None:
    """fetch, then merge REMOTE's BRANCH (default: the current branch's name) into the current branch."""
    r = repo.pull(remote_name, branch, strategy=strategy, progress=progress(quiet))

    def text() -> str:
        head = _fetch_text(r.fetch)
        if r.merged is None:
            return head + f"\n{r.branch}: already up to date"
        m = r.merged
        if not hasattr(m, "head"):  # a branch with no commit yet: set to the remote's (a ResetResult)
            return head + f"\n{r.branch}: set to {short(m.new)}"
        if m.up_to_date:
            return head + f"\n{r.branch}: already up to date"
        if m.fast_forward:
            return head + f"\n{r.branch}: fast-forward to {short(m.head)}"
        return head + f"\n{r.branch}: merged into {short(m.head)} (`mlvc show` describes it)"

    emit(r, text, as_json)


@cli.command()
@click.argument("url")
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("-o", "--origin", "remote_name", default="origin", show_default=True, help="The remote's name.")
@click.option("-b", "--branch", default=None, help="The branch to check out (default: the remote's default).")
@_endpoint
@_region
@quiet_option
@json_option
def clone(url, directory, remote_name, branch, endpoint, region, quiet, as_json) -> None:
    """A new repository in DIRECTORY (default: the URL's last part) from the remote at URL, checked out."""
    from ..repo import Repo

    target = os.path.abspath(directory or os.path.basename(url.rstrip("/")) or "clone")
    made = not os.path.exists(target)
    if not made and (not os.path.isdir(target) or os.listdir(target)):
        raise click.UsageError(f"{target} exists and is not an empty folder; clone into a new one")
    try:
        repo = Repo.init(target)
        r = repo.clone(url, remote=remote_name, branch=branch, endpoint=endpoint, region=region,
                       progress=progress(quiet))
    except BaseException:
        if made:  # nothing half-cloned is left behind
            shutil.rmtree(target, ignore_errors=True)
        else:  # the folder was empty: empty it again
            for name in os.listdir(target):
                path = os.path.join(target, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)
        raise
    emit(r, lambda: f"cloned {url} into {r.path}" + (f", on {r.branch} at {short(r.commit)}" if r.commit else
                                                     " (the remote has no commits yet)"), as_json)


@remote.command("prune")
@click.argument("name", required=False)
@click.option("--prune", "when", metavar="WHEN", default=None,
              help="Remove unreferenced packs older than this ('now', '2.weeks.ago', '3d'; default 2 weeks).")
@click.option("-n", "--dry-run", is_flag=True, help="Report what would be removed; remove nothing.")
@quiet_option
@json_option
@with_repo
def remote_prune(repo: Repo, name, when, dry_run, quiet, as_json) -> None:
    """Remove the packs of remote NAME that nothing its branches and tags need, once older than --prune.

    Nothing is removed while a push is uploading (its lease); packs younger than the grace stay."""
    r = repo.remote_prune(name, prune=when, dry_run=dry_run, progress=progress(quiet))

    def text() -> str:
        if r.busy:
            return f"{r.remote}: a push is in flight (a live lease); nothing was removed, try again later"
        verb = "would remove" if r.dry_run else "removed"
        return f"{r.remote}: {verb} {len(r.packs_removed)} pack(s) ({human_bytes(r.bytes_freed)}), kept {r.packs_kept}"

    emit(r, text, as_json)
