"""check and bisect: the CI regression gate, and finding the commit that regressed."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

from ..errors import BisectError, CheckMissingDataError, CheckRegressedError
from ..render.text import short
from . import cli
from ._common import DashDashCommand, echo_json, json_option, progress, quiet_option, with_repo

if TYPE_CHECKING:
    from ..repo import Repo

SUMMARY_ENV = "GITHUB_STEP_SUMMARY"


def _number(text: str, option: str, percent: bool = False) -> float:
    """"0.01", or with `percent` also "1%" (= 0.01)."""
    scale = 1.0
    if percent and text.endswith("%"):
        text, scale = text[:-1], 0.01
    try:
        return float(text) * scale
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a number", param_hint=option) from None


def _keyed(items: tuple[str, ...], option: str, percent: bool = False) -> dict[str, float]:
    """`KEY=X` or a bare `X` (every metric, key "*") -> {key: value}; KEY is TASK/METRIC or TASK/*."""
    out = {}
    for item in items:
        key, sep, value = item.rpartition("=")
        if not sep:
            key, value = "*", item
        if not key:
            raise click.BadParameter(f"{item!r}: give TASK/METRIC=X, TASK/*=X or X", param_hint=option)
        out[key] = _number(value, option, percent)
    return out


def _directions(higher: tuple[str, ...], lower: tuple[str, ...]) -> dict[str, bool]:
    both = set(higher) & set(lower)
    if both:
        raise click.BadParameter(f"{', '.join(sorted(both))} cannot be both --higher and --lower")
    return {k: True for k in higher} | {k: False for k in lower}


@cli.command("check")
@click.argument("rev", default="HEAD")
@click.option("--against", default="main", show_default=True, metavar="REV",
              help="The branch or revision to compare with; the baseline is its merge base with REV.")
@click.option("--no-merge-base", is_flag=True, help="Compare with --against as it is, not with the merge base.")
@click.option("--run", "run_missing", is_flag=True,
              help="First evaluate the configured tasks that have no result at either commit.")
@click.option("-t", "--task", "tasks", multiple=True, help="Only this task (repeatable).")
@click.option("--abs-tol", multiple=True, metavar="[KEY=]X",
              help="Absolute tolerance for KEY (TASK/METRIC or TASK/*), or every metric (repeatable).")
@click.option("--rel-tol", multiple=True, metavar="[KEY=]X",
              help="Relative tolerance, a fraction of the baseline (0.01 or 1%) (repeatable).")
@click.option("--higher", multiple=True, metavar="KEY", help="Higher is better for KEY (repeatable).")
@click.option("--lower", multiple=True, metavar="KEY", help="Lower is better for KEY (repeatable).")
@click.option("--require", multiple=True, metavar="KEY",
              help="KEY (TASK/METRIC, or TASK/* for any metric of the task) must have values (repeatable).")
@click.option("--junit", type=click.Path(dir_okay=False), help="Also write the result as JUnit XML here.")
@click.option("--markdown", type=click.Path(dir_okay=False), help="Also write the result as Markdown here.")
@click.option("--no-summary", is_flag=True, help=f"Do not append the Markdown to ${SUMMARY_ENV} when it is set.")
@json_option
@quiet_option
@with_repo
def check(repo: Repo, rev, against, no_merge_base, run_missing, tasks, abs_tol, rel_tol, higher, lower, require,
          junit, markdown, no_summary, as_json, quiet) -> None:
    """Compare REV (default HEAD) with a baseline, metric by metric; fail when one regressed.

    The baseline is the merge base of REV and --against (for a pull request: the commit the branch started
    from). Rules (direction, tolerances, required metrics) come from mlvc.toml and the flags. Exit 0 when
    nothing regressed, 20 when something did, 21 when data is missing (docs/ci.md).
    """
    from ..render import check as view

    live = not quiet and not as_json

    def tell(o) -> None:
        if live and o.status != "skipped":
            click.echo(f"evaluated {o.task} on {short(o.commit)}: {o.status}", err=True)

    result = repo.check(rev, against, merge_base=not no_merge_base, run=run_missing, tasks=list(tasks) or None,
                        abs_tol=_keyed(abs_tol, "--abs-tol"), rel_tol=_keyed(rel_tol, "--rel-tol", percent=True),
                        directions=_directions(higher, lower), require=list(require), progress=progress(quiet),
                        on_outcome=tell)
    if junit:
        view.write_file(junit, view.check_junit(result))
    md = view.check_markdown(result) if markdown or (os.environ.get(SUMMARY_ENV) and not no_summary) else None
    if markdown and md is not None:
        view.write_file(markdown, md)
    if md is not None and os.environ.get(SUMMARY_ENV) and not no_summary:
        view.append_file(os.environ[SUMMARY_ENV], md)
    if as_json:
        echo_json(result.to_json())
    else:
        click.echo(view.check_text(result))
    if result.status == "regressed":
        raise CheckRegressedError([r.key for r in result.regressions], result.base)
    if result.status == "missing":
        raise CheckMissingDataError(result.missing_lines())


class BisectCommand(DashDashCommand):
    """`mlvc bisect ... -- COMMAND ARGS...`: what follows `--` is the command (ctx.meta["globs"])."""

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return click.Command.collect_usage_pieces(self, ctx) + ["[-- COMMAND [ARGS]...]"]


@cli.command("bisect", cls=BisectCommand)
@click.option("--good", required=True, metavar="REV", help="A commit without the regression.")
@click.option("--bad", default="HEAD", show_default=True, metavar="REV", help="A commit with it.")
@click.option("-t", "--task", default=None, help="The task whose metric decides (with --metric).")
@click.option("-m", "--metric", default=None, help="The metric that regressed.")
@click.option("--threshold", type=float, default=None,
              help="Bad when the metric is worse than this (default: when it regresses against --good's value).")
@click.option("--higher", "direction", flag_value="higher", default=None, help="Higher is better for the metric.")
@click.option("--lower", "direction", flag_value="lower", help="Lower is better for the metric.")
@click.option("--abs-tol", default=None, metavar="X", help="Absolute tolerance against --good's value.")
@click.option("--rel-tol", default=None, metavar="X", help="Relative tolerance (0.01 or 1%) against --good's value.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds a command may run on one commit (past it: skipped).")
@click.option("--no-diff", is_flag=True, help="Do not compute the first bad commit's layer-group diff.")
@json_option
@quiet_option
@click.pass_context
def bisect(ctx: click.Context, good, bad, task, metric, threshold, direction, abs_tol, rel_tol, timeout, no_diff,
           as_json, quiet) -> None:
    """Find the first commit between --good and --bad (first-parent history) that regressed a metric.

    With --task and --metric, commits are judged by the task's metric: ledger values are reused, other
    commits are evaluated (and recorded). With `-- COMMAND ARGS...` instead, as `git bisect run`: each commit
    is checked out into a temporary folder ({checkpoint} in the arguments, $MLVC_BISECT_CHECKPOINT) and the
    command's exit status decides: 0 good, 125 skip, 1-127 bad, anything else stops. Prints the first bad
    commit and which files and layer groups it changed.
    """
    from ..render import check as view
    from ._common import open_repo

    command = ctx.meta.get("globs")
    repo = open_repo()
    live = not quiet and not as_json

    def tell(step) -> None:
        if live:
            what = f" = {step.value:.6g}" if step.value is not None else ""
            click.echo(f"{step.role} {short(step.commit)}{what}: {step.verdict}"
                       + ("" if step.evaluated else " (from the ledger)"), err=True)

    result = repo.bisect(good, bad, task, metric, threshold=threshold,
                         higher_is_better=None if direction is None else direction == "higher",
                         abs_tol=None if abs_tol is None else _number(abs_tol, "--abs-tol"),
                         rel_tol=None if rel_tol is None else _number(rel_tol, "--rel-tol", percent=True),
                         command=command, timeout=timeout, with_diff=not no_diff, progress=progress(quiet),
                         on_step=tell)
    if as_json:
        echo_json(result.to_json())
    else:
        click.echo(view.bisect_text(result))
    if result.first_bad is None:
        raise BisectError(f"skipped commits leave {len(result.candidates)} candidates for the first bad commit "
                          f"({', '.join(short(c) for c in result.candidates)}); fix what made them untestable, "
                          "or judge them by hand")
