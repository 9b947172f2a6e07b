"""The `mlvc` command line: parse, call one library function, render (tabulate or JSON).

Errors from the library, and OSError from the file system, are mapped to exit codes in one place
(mlvc.errors.EXIT_CODES) and printed as one line; MLVC_DEBUG=1 shows the traceback instead. Heavy modules
(torch, pyarrow) are imported inside the commands that need them, so `mlvc --help` stays fast.
"""

from __future__ import annotations

import os
import sys

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


class MlvcGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (MlvcError, OSError) as e:
            if os.environ.get("MLVC_DEBUG") == "1":
                raise
            message = e if isinstance(e, MlvcError) else _os_error_message(e)
            click.echo(f"error: {message}", err=True)
            ctx.exit(exit_code_for(e))
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


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


from . import core  # noqa: E402,F401  (registers the commands)
from . import history_cmds  # noqa: E402,F401  (diff, revert, reset, reflog, merge)
from . import eval_cmds  # noqa: E402,F401  (eval, ledger, report)
from . import storage_cmds  # noqa: E402,F401  (stats)


def main() -> None:
    cli(prog_name="mlvc")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
