"""Commands about the store itself: stats, gc."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import click

from ..render.text import short, table
from ..render.units import describe_grace, human_bytes
from . import cli
from ._common import emit, json_option, progress, quiet_option, with_repo

if TYPE_CHECKING:
    from ..repo import Repo


@cli.command()
@click.argument("rev", required=False)
@click.option("-n", "--max-count", "n", type=click.IntRange(min=1), default=20, show_default=True,
              help="Commits to list (the totals always cover the whole history).")
@json_option
@with_repo
def stats(repo: Repo, rev, n, as_json) -> None:
    """Logical bytes against stored bytes, per commit and for the repository (or REV's history)."""
    if repo.head() is None and rev is None:
        raise click.UsageError("no commits yet: nothing to measure")
    s = repo.stats(rev)

    def text() -> str:
        rows = [[short(c.id), c.message[:40], human_bytes(c.logical_bytes), human_bytes(c.new_stored_bytes),
                 f"{c.ratio:.3f}", c.new_objects] for c in s.commits[:n]]
        lines = [table(rows, ["commit", "message", "logical", "stored (new)", "ratio", "new objects"])]
        if len(s.commits) > n:
            lines.append(f"... {len(s.commits) - n} older commit(s) (see --json)")
        enc = ", ".join(f"{k} {v}" for k, v in s.encodings.items())
        lines += ["", f"{len(s.commits)} commit(s): {human_bytes(s.logical_bytes)} logical, "
                      f"{human_bytes(s.stored_bytes)} stored ({s.ratio:.3f} of logical) in {s.objects} object(s)",
                  f"objects by encoding: {enc}; longest delta chain: {s.max_depth}"]
        return "\n".join(lines)

    emit(s, text, as_json)


def _grace_option(value, source):
    if value is None:
        return None
    from ..errors import ConfigError
    from ..repo import Repo

    try:
        return Repo.parse_grace(value, source)
    except ConfigError as e:
        raise click.BadParameter(str(e).split(": ", 1)[-1]) from None


@cli.command()
@click.option("--prune", "--expire", "prune", metavar="WHEN", default=None,
              callback=lambda ctx, p, v: _grace_option(v, "--prune"),
              help="Remove unreachable objects older than this: 'now', '2.weeks.ago', '3d', '12h', 'never' "
                   "(default: gc.grace, 2 weeks).")
@click.option("--prune-temp", "prune_temp", metavar="WHEN", default=None,
              callback=lambda ctx, p, v: _grace_option(v, "--prune-temp"),
              help="Remove temp files and scratch entries older than this (default: gc.temp_grace, 1 day).")
@click.option("--expire-reflog", "expire_reflog", metavar="WHEN", default=None,
              callback=lambda ctx, p, v: _grace_option(v, "--expire-reflog"),
              help="Drop reflog entries older than this first, so what only they named can go "
                   "(default: gc.reflog_expire, 90 days; 'never' keeps them all).")
@click.option("-n", "--dry-run", is_flag=True, help="Report what would be removed; delete nothing.")
@json_option
@quiet_option
@with_repo
def gc(repo: Repo, prune, prune_temp, expire_reflog, dry_run, as_json, quiet) -> None:
    """Delete unreachable objects past the grace period, old temp files and stale locks.

    Reachable: everything branches, tags, HEAD and reflog entries lead to (commits, parents, manifests,
    chunks, delta bases). Refuses (exit 5) when a reachable commit is missing or damaged: run `mlvc fsck`."""
    r = repo.gc(prune=prune, prune_temp=prune_temp, dry_run=dry_run, progress=progress(quiet),
                expire_reflog=expire_reflog)

    def text() -> str:
        verb = "to remove" if dry_run else "removed"
        rows = [["objects kept", r.objects_kept, f"{r.objects_reachable} reachable, {r.objects_young} young"],
                [f"objects {verb}", r.objects_removed, human_bytes(r.object_bytes_freed)],
                [f"temp files {verb}", r.temp_files_removed, human_bytes(r.temp_bytes_freed)],
                [f"reflog entries {'to expire' if dry_run else 'expired'}", r.reflog_entries_expired,
                 "never expire" if math.isinf(r.reflog_expire_seconds)
                 else f"older than {describe_grace(r.reflog_expire_seconds)}"],
                [f"stale locks {'to clear' if dry_run else 'cleared'}", r.locks_cleared, ""]]
        lines = [table(rows, ["", "count", "detail"]),
                 f"{'would free' if dry_run else 'freed'} {human_bytes(r.bytes_freed)} (grace: objects "
                 f"{describe_grace(r.grace_seconds)}, temp files {describe_grace(r.temp_grace_seconds)})"
                 + ("; dry run: nothing was deleted" if dry_run else "")]
        lines += [f"note: {line}" for line in r.recovered]
        if r.objects_missing:
            lines.append(f"note: {r.objects_missing} object(s) that reachable commits need are missing; "
                         "run `mlvc fsck`")
        if r.worktree_busy:
            lines.append("note: a work-tree update is in progress; its temp files were left alone")
        return "\n".join(lines)

    emit(r, text, as_json)
