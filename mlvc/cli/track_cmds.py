"""rm: untracking paths (the next commit records it; docs/tracking.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from . import cli
from ._common import echo_json, json_option, with_repo

if TYPE_CHECKING:
    from ..repo import Repo


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--cached", is_flag=True, help="Keep the files on disk; only stop tracking them.")
@click.option("-r", "recursive", is_flag=True, help="Untrack folders and everything in them.")
@click.option("-f", "--force", is_flag=True, help="Delete files even when they have uncommitted changes.")
@json_option
@with_repo
def rm(repo: Repo, paths, cached, recursive, force, as_json) -> None:
    """Stop tracking PATHS and (without --cached) delete their tracked files from the work tree.

    Nothing is committed: the next `mlvc commit` records that the paths are gone (`mlvc status` lists them
    as removed or untracked until then)."""
    r = repo.rm(list(paths), cached=cached, recursive=recursive, force=force)
    if as_json:
        echo_json(r.to_json())
        return
    for path in r.files:
        click.echo(f"rm {'--cached ' if cached else ''}'{path}'")
    kept = "kept on disk" if cached else f"{len(r.deleted)} deleted from the work tree"
    click.echo(f"Untracked {len(r.files)} file(s) ({kept}); the next `mlvc commit` records it.")
