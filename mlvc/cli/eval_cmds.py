"""The ledger commands: eval run/record/show/compare/tasks, ledger compact, report."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from ..errors import EvalFailedError
from ..render.text import short
from . import cli
from ._common import echo_json, json_option, progress, quiet_option, with_repo

if TYPE_CHECKING:
    from ..repo import Repo


@cli.group("eval")
def eval_group() -> None:
    """Evaluate commits on configured tasks and see the effect of each commit (the ledger)."""


@eval_group.command("run")
@click.argument("revs", nargs=-1)
@click.option("-t", "--task", "tasks", multiple=True, help="Only this task (repeatable; default: every task).")
@click.option("-f", "--force", is_flag=True, help="Evaluate again even where the ledger has a result.")
@json_option
@quiet_option
@with_repo
def eval_run(repo: Repo, revs, tasks, force, as_json, quiet) -> None:
    """Check out each REV (default HEAD) into a temporary folder and run the tasks on it.

    Results, failures and timeouts all go to the ledger. A (commit, task, spec) that already has a result is
    skipped unless --force. Exits with code 15 when an evaluator failed or timed out.
    """
    from ..render import evals as evals_view

    live = not quiet and not as_json and sys.stderr.isatty()

    def tell(o) -> None:
        if live and o.status != "skipped":
            click.echo(f"{o.task} on {short(o.commit)}: {o.status}", err=True)

    result = repo.eval_run(list(revs) or None, list(tasks) or None, force=force, progress=progress(quiet),
                           on_outcome=tell)
    if as_json:
        echo_json(result.to_json())
    else:
        click.echo(evals_view.eval_run_text(result))
        tails = evals_view.failure_tails_text(result)
        if tails:
            click.echo(tails, err=True)
    if result.failures:
        raise EvalFailedError([(o.commit, o.task, o.status) for o in result.failures])


def _parse_metrics(items: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name] = float(value)
        except ValueError:
            raise click.BadParameter(f"{item!r} is not METRIC=NUMBER", param_hint="METRIC=VALUE") from None
    return out


@eval_group.command("record")
@click.argument("rev")
@click.argument("metrics", nargs=-1, required=True, metavar="METRIC=VALUE...")
@click.option("-t", "--task", required=True, help="The task these metrics belong to.")
@click.option("--higher", "higher", multiple=True, metavar="METRIC",
              help="Higher is better for METRIC (remembered: needed once).")
@click.option("--lower", "lower", multiple=True, metavar="METRIC",
              help="Lower is better for METRIC (remembered: needed once).")
@click.option("--dataset", default=None, help="Name of the data the metrics were measured on.")
@click.option("--dataset-hash", default=None, help="Content hash of that data.")
@click.option("--seed", type=int, default=None)
@click.option("--notes", default=None)
@json_option
@with_repo
def eval_record(repo: Repo, rev, metrics, task, higher, lower, dataset, dataset_hash, seed, notes, as_json) -> None:
    """Record metrics measured elsewhere for REV.

    A metric's direction (--higher / --lower) is needed once: it comes from the task's config, else the ledger
    remembers the first one given. A direction that contradicts either is refused (exit 14), nothing written.
    """
    from ..render import evals as evals_view

    values = _parse_metrics(metrics)
    both = set(higher) & set(lower)
    if both:
        raise click.BadParameter(f"{', '.join(sorted(both))} cannot be both --higher and --lower")
    directions = {m: True for m in higher} | {m: False for m in lower}
    r = repo.record_eval(rev, task, values, higher_is_better=directions, dataset=dataset,
                         dataset_hash=dataset_hash, seed=seed, notes=notes)
    if as_json:
        echo_json(r.to_json())
    else:
        click.echo(evals_view.recorded_text(task, r.commit, r.metrics))


@eval_group.command("show")
@click.argument("rev_range", required=False, metavar="[REV-RANGE]")
@click.option("-t", "--task", "tasks", multiple=True, help="Only this task (repeatable).")
@click.option("-a", "--all", "include_all", is_flag=True, help="Also list commits that have no results.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV (one row per commit).")
@json_option
@with_repo
def eval_show(repo: Repo, rev_range, tasks, include_all, as_csv, as_json) -> None:
    """The effect table: commits as rows, task/metric as columns, each value with its change.

    REV-RANGE is A..B (reachable from B, not from A) or REV (reachable from REV); default HEAD.
    """
    from ..render import evals as evals_view

    t = repo.eval_show(rev_range, include_all=include_all, tasks=list(tasks) or None)
    if as_json:
        echo_json(t.to_json())
    elif as_csv:
        click.echo(evals_view.effect_table_csv(t), nl=False)
    else:
        click.echo(evals_view.effect_table_text(t))


@eval_group.command("compare")
@click.argument("a")
@click.argument("b")
@click.option("-t", "--task", "tasks", multiple=True, help="Only this task (repeatable).")
@json_option
@with_repo
def eval_compare(repo: Repo, a, b, tasks, as_json) -> None:
    """Per task and metric: the value at A, at B, B - A and the relative change."""
    from ..render import evals as evals_view

    c = repo.eval_compare(a, b, list(tasks) or None)
    if as_json:
        echo_json(c.to_json())
    else:
        click.echo(evals_view.comparison_text(c, a, b))


@eval_group.command("tasks")
@json_option
@with_repo
def eval_tasks(repo: Repo, as_json) -> None:
    """List the configured tasks (from mlvc.toml and .mlvc/config.toml)."""
    from ..render import evals as evals_view

    tasks = repo.tasks()
    if as_json:
        echo_json(evals_view.tasks_json(tasks))
    else:
        click.echo(evals_view.tasks_text(tasks))


@cli.group("ledger")
def ledger_group() -> None:
    """Maintain the evaluation ledger (.mlvc/ledger/)."""


@ledger_group.command("compact")
@json_option
@with_repo
def ledger_compact(repo: Repo, as_json) -> None:
    """Merge the ledger's parts into one file (safe while other processes append)."""
    r = repo.ledger.compact()
    if as_json:
        echo_json(r.to_json())
    elif r.path is None:
        click.echo(f"Nothing to compact ({r.parts_before} part(s), {r.rows} row(s)).")
    else:
        click.echo(f"Merged {r.parts_merged} part(s) into 1: {r.rows} row(s) kept"
                   + (f", {r.duplicates_dropped} repeated row(s) dropped" if r.duplicates_dropped else "")
                   + f"; {r.parts_after} part(s) now.")


@cli.command("report")
@click.argument("rev", default="HEAD")
@click.option("-o", "--output", default="report.html", show_default=True, type=click.Path(dir_okay=False),
              help="Where to write the HTML page.")
@click.option("-n", "--max-commits", type=click.IntRange(min=1), default=200, show_default=True,
              help="Show at most this many commits (the newest).")
@json_option
@with_repo
def report(repo: Repo, rev, output, max_commits, as_json) -> None:
    """Write one self-contained HTML page: history, a chart per task, the effect table, layer changes."""
    from ..render.report import require, write_report

    require()  # before the slow part: a missing matplotlib or jinja2 is said at once
    r = write_report(repo.report_data(rev, max_commits), output)
    if as_json:
        echo_json(r.to_json())
    else:
        click.echo(f"Wrote {r.path}: {r.commits} commit(s), {len(r.tasks)} task(s), {r.charts} chart(s).")

