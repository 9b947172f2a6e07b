"""What every command shares: finding the repo, --json, progress (tables: render.text)."""

from __future__ import annotations

import contextvars
import functools
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import click

from ..progress import NULL, Progress, TerminalProgress, enabled

if TYPE_CHECKING:
    from ..repo import Repo

P = ParamSpec("P")
R = TypeVar("R")

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
quiet_option = click.option("-q", "--quiet", is_flag=True,
                            help="No progress bars (also: MLVC_NO_PROGRESS=1 in the environment).")


_running: contextvars.ContextVar[click.Context | None] = contextvars.ContextVar("mlvc_running_command", default=None)


def running_command() -> click.Context | None:
    """The context of the command this run invoked (None until one is invoked: help, usage errors)."""
    return _running.get()


def set_running_command(ctx: click.Context | None) -> contextvars.Token:
    return _running.set(ctx)


def reset_running_command(token: contextvars.Token) -> None:
    _running.reset(token)


class MlvcCommand(click.Command):
    """Every command of the CLI (the groups' command_class): records its context while it runs, so that the
    group, where a run ends, knows which command it was and with what arguments."""

    def invoke(self, ctx: click.Context) -> Any:
        set_running_command(ctx)  # MlvcGroup.main resets it when the run ends
        return super().invoke(ctx)


class DashDashCommand(MlvcCommand):
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


def jsonable(result: Any) -> Any:
    """What --json prints for a result: its `to_json()` when it has one (every operation's dataclass), lists and
    dicts of such results element by element, anything else (plain JSON data) as it is."""
    if hasattr(result, "to_json"):
        return result.to_json()
    if isinstance(result, (list, tuple)):
        return [jsonable(r) for r in result]
    if isinstance(result, dict):
        return {k: jsonable(v) for k, v in result.items()}
    return result


def echo_json(data: Any) -> None:
    """Print `data` (see `jsonable`) as one JSON document on stdout: the output of every command under --json."""
    click.echo(json.dumps(jsonable(data), indent=2, ensure_ascii=False, sort_keys=False))


def wants_json() -> bool:
    """Whether the running command was given --json (its `as_json` parameter)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.params.get("as_json"))


def emit(result: Any, text: str | Callable[[], str | None] | None = None, as_json: bool | None = None) -> None:
    """The one output path of a command's result: with --json (`as_json`, default: the command's own --json
    flag) the result as JSON and nothing else on stdout; otherwise `text`, a string or a function that makes
    it (called only when text is wanted, so a table is never built for nothing). A command prints its result
    after its work is done, through here: output that nobody reads any more (`| head -1`) can then never
    interrupt the work (docs/design.md, "Output and exit codes")."""
    if wants_json() if as_json is None else as_json:
        echo_json(result)
        return
    out = text() if callable(text) else text
    if out is not None:
        click.echo(out)


def progress(quiet: bool = False) -> Progress:
    """A bar on stderr for long work: only when stderr is a terminal, --quiet is not given and progress is not
    switched off in the environment (MLVC_NO_PROGRESS=1 or MLVC_PROGRESS=0; mlvc.progress.enabled)."""
    if quiet or not enabled():
        return NULL
    return TerminalProgress()
