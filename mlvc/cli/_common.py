"""What every command shares: finding the repo, --json, progress (tables: render.text)."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import click

from ..progress import NULL, Progress, TerminalProgress

if TYPE_CHECKING:
    from ..repo import Repo

P = ParamSpec("P")
R = TypeVar("R")

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress bars.")


class DashDashCommand(click.Command):
    """A command taking tensor globs after a bare `--` (`mlvc diff A B -- 'encoder.*'`): what follows `--` is
    put in ctx.meta["globs"] (None without `--`) instead of being mixed with the positional arguments."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        globs = None
        if "--" in args:
            i = args.index("--")
            args, globs = args[:i], args[i + 1 :]
        ctx.meta["globs"] = globs
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return super().collect_usage_pieces(ctx) + ["[-- GLOB...]"]


def open_repo() -> Repo:
    from ..repo import Repo

    return Repo.discover(".")


def with_repo(fn: Callable[Concatenate[Repo, P], R]) -> Callable[P, R]:
    """Pass the repository found from the current folder (upward, like git) as the first argument."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        return fn(open_repo(), *args, **kwargs)

    return wrapper


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False))


def progress(quiet: bool = False) -> Progress:
    """A bar on stderr for long work, only when stderr is a terminal and --quiet is not given."""
    if quiet or not sys.stderr.isatty():
        return NULL
    return TerminalProgress()

