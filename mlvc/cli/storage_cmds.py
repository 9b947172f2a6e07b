"""Commands about the store itself: stats."""

from __future__ import annotations

import click

from ..util import human_bytes
from . import cli
from ._common import echo_json, json_option, short, table, with_repo


@cli.command()
@click.argument("rev", required=False)
@click.option("-n", "--max-count", "n", type=click.IntRange(min=1), default=20, show_default=True,
              help="Commits to list (the totals always cover the whole history).")
@json_option
@with_repo
def stats(repo, rev, n, as_json) -> None:
    """Logical bytes against stored bytes, per commit and for the repository (or REV's history)."""
    from ..ops.stats import stats as compute

    if repo.head() is None and rev is None:
        raise click.UsageError("no commits yet: nothing to measure")
    s = compute(repo, rev)
    if as_json:
        echo_json(s.to_json())
        return
    rows = [[short(c.id), c.message[:40], human_bytes(c.logical_bytes), human_bytes(c.new_stored_bytes),
             f"{c.ratio:.3f}", c.new_objects] for c in s.commits[:n]]
    click.echo(table(rows, ["commit", "message", "logical", "stored (new)", "ratio", "new objects"]))
    if len(s.commits) > n:
        click.echo(f"... {len(s.commits) - n} older commit(s) (see --json)")
    click.echo("")
    enc = ", ".join(f"{k} {v}" for k, v in s.encodings.items())
    click.echo(f"{len(s.commits)} commit(s): {human_bytes(s.logical_bytes)} logical, {human_bytes(s.stored_bytes)} "
               f"stored ({s.ratio:.3f} of logical) in {s.objects} object(s)")
    click.echo(f"objects by encoding: {enc}; longest delta chain: {s.max_depth}")
