"""The `mlvc` command line: parse, call one library function, render (tabulate or JSON).

Errors from the library, and OSError from the file system, are mapped to exit codes in one place
(mlvc.errors.EXIT_CODES) and printed as one line; MLVC_DEBUG=1 shows the traceback instead. Heavy modules
(torch, pyarrow) are imported inside the commands that need them, so `mlvc --help` stays fast.
"""

from __future__ import annotations

import os

import click

from .. import __version__
from ..errors import MlvcError, exit_code_for


def _os_error_message(e: OSError) -> str:
    """One line for an unanticipated file system error, naming the path ("PATH: No such file or directory").

    The temp file of an atomic write (".tmp-..." beside its target) means nothing to the user: its folder
    is named instead."""
    if e.filename is None:
        return str(e)

    def name(f) -> str:
        return os.fsdecode(f) if isinstance(f, (str, bytes, os.PathLike)) else str(f)

    path = name(e.filename)
    if os.path.basename(path).startswith(".tmp-"):
        path = os.path.dirname(path)
    if e.filename2 is not None:
        path = f"{path} -> {name(e.filename2)}"
    return f"{path}: {e.strerror or e}"


def _one_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _internal_error_message(e: BaseException) -> str:
    """One line for an exception mlvc did not raise on purpose: a bug, reported as one."""
    try:
        detail = _one_line(str(e))
    except Exception:  # a str() that fails is no reason to print a traceback
        detail = ""
    what = type(e).__name__ + (f": {detail}" if detail else "")
    return f"internal error: {what} (run with MLVC_DEBUG=1 for the traceback and report it)"


class MlvcGroup(click.Group):
    """Every exception a command lets out becomes one line on stderr and an exit code (mlvc.errors.EXIT_CODES):
    mlvc's own errors and file-system errors as themselves, Ctrl-C as "interrupted" (130), and anything else,
    a bug (RecursionError, MemoryError, UnicodeError, ...), as one "internal error" line (70). click's own
    exits and usage errors pass through. MLVC_DEBUG=1 re-raises instead, for the traceback."""

    def invoke(self, ctx: click.Context):
        debug = os.environ.get("MLVC_DEBUG") == "1"
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except (MlvcError, OSError) as e:
            if debug:
                raise
            message = e if isinstance(e, MlvcError) else _os_error_message(e)
            click.echo(f"error: {message}", err=True)
            ctx.exit(exit_code_for(e))
        except KeyboardInterrupt:
            if debug:
                raise
            click.echo("interrupted", err=True)
            ctx.exit(exit_code_for(KeyboardInterrupt()))
        except Exception as e:
            if debug:
                raise
            click.echo(_internal_error_message(e), err=True)
            ctx.exit(exit_code_for(e))


@click.group(cls=MlvcGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="mlvc")
@click.option("-C", "directory", type=click.Path(file_okay=False), default=None,
              help="Run as if started in this folder.")
def cli(directory: str | None) -> None:
    """Version control for model weights.

    Commit checkpoints (safetensors files, Hugging Face model folders, PyTorch .pt/.bin), check any commit
    out byte for byte, and see what changed.
    """
    if directory:
        try:
            os.chdir(directory)
        except OSError as e:
            raise click.UsageError(f"cannot change to {directory}: {e.strerror}") from None


# Importing a command module registers its commands on `cli`: core (init, commit, log, ...), history_cmds (diff,
# revert, reset, reflog, merge), eval_cmds (eval, ledger, report), storage_cmds (stats).
from . import core, eval_cmds, history_cmds, storage_cmds  # noqa: E402,F401


def main() -> None:
    cli(prog_name="mlvc")


if __name__ == "__main__":  # pragma: no cover
    main()  # click exits with the command's status itself
