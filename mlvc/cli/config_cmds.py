"""config get/set/list, restore."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from ..render.text import short, table
from . import cli
from ._common import DashDashCommand, echo_json, json_option, progress, quiet_option, with_repo

if TYPE_CHECKING:
    from ..repo import Repo


def _shown(value: Any) -> str:
    return "(not set)" if value is None else str(value)


@cli.group()
def config() -> None:
    """Read and change the repository's settings (.mlvc/config.toml; docs/format.md lists them)."""


@config.command("get")
@click.argument("key")
@json_option
@with_repo
def config_get(repo: Repo, key: str, as_json: bool) -> None:
    """Print the value of KEY (e.g. core.threads): the file's, else the default."""
    v = repo.config_get(key)
    if as_json:
        echo_json(v.to_json())
    else:
        click.echo(_shown(v.value))


@config.command("set", context_settings={"ignore_unknown_options": True})  # VALUE may be negative: -3
@click.argument("key")
@click.argument("value")
@json_option
@with_repo
def config_set(repo: Repo, key: str, value: str, as_json: bool) -> None:
    """Set KEY to VALUE, checked as every command checks it (the file is left as it was if not)."""
    v = repo.config_set(key, value)
    if as_json:
        echo_json(v.to_json())
    else:
        click.echo(f"{v.key} = {v.value}")


@config.command("list")
@json_option
@with_repo
def config_list(repo: Repo, as_json: bool) -> None:
    """Every setting with its value; "default" marks the ones config.toml does not set."""
    values = repo.config_list()
    if as_json:
        echo_json([v.to_json() for v in values])
        return
    click.echo(table([[v.key, _shown(v.value), "" if v.set else "default"] for v in values],
                     ["key", "value", "source"]))


def restore_summary(r) -> str:
    """One line for a RestoreResult (restore, and checkout REV -- GLOB): what was put back, and how it now
    stands against HEAD (restored from HEAD, it matches HEAD; else `mlvc status` shows it as changed)."""
    if r.tensors:
        what = f"{len(r.tensors)} tensor(s) from {short(r.commit)} into {len(r.files)} working file(s)"
        total = len(r.tensors)
    else:
        total = len(r.files) + len(r.unchanged) + len(r.removed)
        what = f"{len(r.files) + len(r.unchanged)} file(s) from {short(r.commit)}"
    notes = ([f"{len(r.unchanged)} already matched"] if r.unchanged and not r.tensors else [])
    notes += [f"{len(r.removed)} removed, which it lacks"] if r.removed else []
    n = len(r.differs_from_head)
    if n == 0:
        state = "what was restored now matches HEAD"
    elif n == total:
        state = f"`mlvc status` shows {'it' if n == 1 else 'them'} as changed against HEAD"
    else:
        state = (f"{n} of them now {'differs' if n == 1 else 'differ'} from HEAD (`mlvc status` shows "
                 f"{'it' if n == 1 else 'them'} as changed)")
    return f"Restored {what}{' (' + ', '.join(notes) + ')' if notes else ''}; HEAD did not move, and {state}."


@cli.command(cls=DashDashCommand)
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("-s", "--source", default="HEAD", show_default=True, help="The commit to take the files or tensors from.")
@json_option
@quiet_option
@with_repo
def restore(repo: Repo, paths: tuple[str, ...], source: str, as_json: bool, quiet: bool) -> None:
    """Put PATHS (files or folders) back as they are in --source, discarding their uncommitted changes; HEAD
    does not move. Files the source lacks but HEAD tracks there are removed; untracked files are kept.

    With tensor globs after `--`, only those tensors are restored (in the files under PATHS, if given),
    the other tensors keeping their working values: `mlvc restore -s HEAD~3 -- 'encoder.layer.0.*'`."""
    globs = click.get_current_context().meta.get("globs")
    if globs is not None and not globs:
        raise click.UsageError("name the tensors to restore after `--` (globs such as 'encoder.layer.0.*')")
    if globs is None and not paths:
        raise click.UsageError("name the paths to restore (`mlvc restore .` restores every tracked file), or "
                               "tensors after `--`")
    r = repo.restore(source, globs, progress=progress(quiet), paths=list(paths) or None)
    if as_json:
        echo_json(r.to_json())
    else:
        click.echo(restore_summary(r))
