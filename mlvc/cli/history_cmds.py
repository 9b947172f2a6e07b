"""diff, revert, reset, reflog and merge: comparing checkpoints, undoing changes, combining branches."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ..render.text import short, table
from . import cli
from ._common import DashDashCommand, echo_json, emit, json_option, progress, quiet_option, with_repo

if TYPE_CHECKING:
    from ..repo import Repo


def _check_column(names: list[str], column: str | None) -> None:
    if column is not None and column not in names:
        raise click.BadParameter(f"{column!r} is not a column; choose one of {', '.join(names)}",
                                 param_hint="--sort")


@cli.command(cls=DashDashCommand)
@click.argument("revs", nargs=-1, metavar="[A] [B]")
@click.option("--sort", "sort_by", metavar="COLUMN",
              help="Sort rows by a column (name, status, numel, changed, changed_frac, l2, rel_change, max_abs, "
                   "cosine; with --stat: a group column). Numbers largest first.")
@click.option("--reverse", is_flag=True, help="Reverse the order.")
@click.option("--stat", is_flag=True, help="One line per layer group instead of one per tensor.")
@click.option("--all", "show_all", is_flag=True, help="List unchanged files and tensors (or groups) too.")
@click.option("--name-status", is_flag=True,
              help="Only the changed files, as git prints them: A, D, M or R100 (renamed), then the path(s).")
@json_option
@quiet_option
@with_repo
def diff(repo: Repo, revs, sort_by, reverse, stat, show_all, name_status, as_json, quiet) -> None:
    """Compare checkpoints file by file and tensor by tensor: HEAD with the working checkpoint, A with the
    working checkpoint, or A with B. Tensor names after `--` (globs) limit the comparison."""
    if len(revs) > 2:
        raise click.UsageError("give at most two revisions (put tensor globs after `--`)")
    from ..render.diff import columns, diff_text, name_status_text, sort_items

    _check_column(columns(groups=stat and not as_json), sort_by)
    a = revs[0] if revs else "HEAD"
    b = revs[1] if len(revs) == 2 else None
    globs = click.get_current_context().meta.get("globs")
    d = repo.diff(a, b, tensors=globs, progress=progress(quiet))
    if as_json:
        if sort_by:
            d.tensors = sort_items(d.tensors, sort_by, reverse)
        echo_json(d.to_json())
        return
    if name_status:
        text = name_status_text(d)
        if text:
            click.echo(text)
        return
    click.echo(f"diff {a} ({short(d.a)}) -> {b + ' (' + short(d.b) + ')' if b else 'working checkpoint'}")
    click.echo(diff_text(d, stat=stat, show_all=show_all, sort_by=sort_by, reverse=reverse))


@cli.command()
@click.argument("rev")
@click.option("--mainline", type=click.IntRange(min=1), default=None,
              help="For a merge commit: the parent whose side is kept (1: the branch merged into).")
@click.option("-m", "--message", default=None, help="Message of the new commit (default: 'Revert \"...\"').")
@json_option
@quiet_option
@with_repo
def revert(repo: Repo, rev, mainline, message, as_json, quiet) -> None:
    """Make a new commit that undoes REV: each tensor REV changed gets back its value from before REV.

    Later changes to other tensors are kept. A tensor REV changed that was changed again later is a
    conflict: all conflicts are listed and nothing is written (exit 16)."""
    r = repo.revert(rev, mainline=mainline, message=message, progress=progress(quiet))
    if as_json:
        echo_json(r.to_json())
        return
    click.echo(f"[{r.branch or 'detached HEAD'} {short(r.commit.id)}] {r.commit.message.splitlines()[0]}")
    click.echo(f" {len(r.restored)} tensor(s)/file(s) restored to their value before {short(r.reverted)}; "
               f"{len(r.written)} working file(s) rewritten")
    for name in r.restored[:20]:
        click.echo(f"  {name}")
    if len(r.restored) > 20:
        click.echo(f"  ... and {len(r.restored) - 20} more (see --json)")


@cli.command()
@click.argument("rev")
@click.option("--hard", is_flag=True, help="Also rewrite the working checkpoint to REV.")
@click.option("-f", "--force", is_flag=True, help="With --hard: discard uncommitted changes.")
@json_option
@quiet_option
@with_repo
def reset(repo: Repo, rev, hard, force, as_json, quiet) -> None:
    """Move the current branch (or detached HEAD) to REV. The reflog keeps the way back:
    `mlvc reset HEAD@{1}` undoes a reset."""
    if force and not hard:
        raise click.UsageError("--force only makes sense with --hard")
    r = repo.reset(rev, hard=hard, force=force, progress=progress(quiet))

    def text() -> str:
        message = repo.read_commit(r.new).message
        lines = [f"{r.branch or 'detached HEAD'} is now at {short(r.new)} (was {short(r.old)}): "
                 f"{message.splitlines()[0] if message else ''}"]
        if hard:
            lines.append(f"Working checkpoint: {len(r.written)} file(s) written, {len(r.removed)} removed.")
        else:
            lines.append("The working checkpoint was not touched; `mlvc status` shows how it differs from the new "
                         "HEAD.")
        if r.old and r.old != r.new:
            lines.append(f"Undo with `mlvc reset {'--hard ' if hard else ''}{r.old[:12]}` (or HEAD@{{1}}).")
        return "\n".join(lines)

    emit(r, text, as_json)


@cli.command()
@click.argument("ref", default="HEAD")
@click.option("-n", "--max-count", "n", type=click.IntRange(min=0), default=None, help="Show at most N entries.")
@json_option
@with_repo
def reflog(repo: Repo, ref, n, as_json) -> None:
    """Show where REF (HEAD, a branch or a tag) has pointed, newest first. Each REF@{N} is a revision."""
    lines = repo.reflog(ref, n)

    def text() -> str:
        if not lines:
            return f"No reflog entries for {ref}."
        return "\n".join(f"{short(e.new) if e.new else '(deleted)':12}  {line.selector}: {e.message}  "
                         f"({e.time}, {e.who})" for line in lines for e in [line.entry])

    emit(lines, text, as_json)


@cli.command()
@click.argument("rev", metavar="BRANCH")
@click.option("--strategy", type=click.Choice(["ours", "theirs", "average", "task-arithmetic"]), default=None,
              help="How to combine tensors changed on both sides (default: such tensors are conflicts).")
@click.option("--scale", type=float, default=None,
              help="task-arithmetic: scale each branch's delta from the merge base by S (default 1).")
@click.option("-m", "--message", default=None, help="Message of the merge commit.")
@json_option
@quiet_option
@with_repo
def merge(repo: Repo, rev, strategy, scale, message, as_json, quiet) -> None:
    """Merge BRANCH (any revision) into the current branch, tensor by tensor against the merge base.

    A tensor changed on one side only is taken from that side exactly. One changed on both sides is a
    conflict unless --strategy says how to combine it: ours, theirs, average ((ours + theirs) / 2) or
    task-arithmetic (base + S*(ours - base) + S*(theirs - base)). On conflict nothing is written (exit 16)."""
    r = repo.merge(rev, strategy=strategy, scale=scale, message=message, progress=progress(quiet))
    if as_json:
        echo_json(r.to_json())
        return
    if r.up_to_date:
        click.echo(f"Already up to date: {rev} ({short(r.theirs)}) is already part of HEAD.")
        return
    if r.fast_forward:
        click.echo(f"Fast-forward {short(r.ours)}..{short(r.theirs)}: {len(r.written)} working file(s) updated.")
        return
    assert r.commit is not None  # neither up to date nor a fast-forward: a merge commit was made
    click.echo(f"[{r.branch or 'detached HEAD'} {short(r.commit.id)}] {r.commit.message.splitlines()[0]}")
    click.echo(f" merge base {short(r.base)}; {len(r.from_theirs)} tensor(s)/file(s) taken from {rev}; "
               f"{len(r.resolved)} changed on both sides resolved by {strategy or '-'}"
               + (f" (scale {r.scale:g})" if r.scale is not None else ""))
    if r.followed:
        click.echo(f" {len(r.followed)} change(s) applied where the other side moved the tensor or file: "
                   + ", ".join(r.followed[:5]) + (" ..." if len(r.followed) > 5 else ""))
    if r.resolved:
        click.echo(table([[name] for name in r.resolved[:50]], [f"resolved by {strategy}"]))
        if len(r.resolved) > 50:
            click.echo(f"... and {len(r.resolved) - 50} more (see --json)")
