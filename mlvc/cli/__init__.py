"""The `mlvc` command line: parse, call one library function, render (tabulate or JSON).

Errors from the library, and OSError from the file system, are mapped to exit codes in one place
(mlvc.errors.EXIT_CODES) and printed as one line; MLVC_DEBUG=1 shows the traceback instead. A closed stdout
(`mlvc log | head -1`) is no error: a reader stops with 141, any other command finishes its work and exits with
its own status (READERS below; docs/design.md, "Output and exit codes"). Heavy modules
(torch, pyarrow) are imported inside the commands that need them, so `mlvc --help` stays fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TextIO, cast

import click

from ..errors import MlvcError, OutputClosed, exit_code_for
from ..progress import abandon_all, finish_all
from ..runtime import defer_full_gc, end_process, open_std_fds
from ..version import __version__
from ._common import MlvcCommand, reset_running_command, running_command, set_running_command


def _os_error_message(e: OSError) -> str:
    """One line for an unanticipated file system error, naming the path ("PATH: No such file or directory").

    The temp file of an atomic write (".tmp-..." beside its target) means nothing to the user: its folder
    is named instead."""
    if e.filename is None:
        return e.strerror or str(e)  # "Broken pipe", not "[Errno 32] Broken pipe"

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


# Commands whose work is their output, git's readers: when whoever reads their output goes away they stop at
# once and exit 141 (errors.OutputClosed: 128 + SIGPIPE, what the shell reports for git). Every other command
# does work that its output only reports (it moves a ref, rewrites the work tree, writes objects, the ledger or
# a file, or gives a verdict: fsck, check): a lost output ends only the printing, the command runs to its end,
# and its exit status is its own (0 when the work succeeded; a failure's own code when it did not), so a CI
# script never sees a failure after a success. `branch` and `tag` read only when they list (no NAME given).
# docs/design.md, "Output and exit codes".
READERS = frozenset({"log", "show", "diff", "status", "stats", "reflog", "eval show", "eval compare", "eval tasks",
                     "config get", "config list"})
LISTERS = frozenset({"branch", "tag"})


def command_name(ctx: click.Context) -> str:
    """A command's path below the root group: "log", "eval show"."""
    names = []
    while ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(reversed(names))


def is_reader(ctx: click.Context | None) -> bool:
    """Whether the command of `ctx` (a leaf command's context; None before one ran: help) reads (READERS)."""
    if ctx is None:
        return True  # nothing ran yet: the output was help or usage
    name = command_name(ctx)
    return name in READERS or (name in LISTERS and not ctx.params.get("name"))


class _Guard:
    """Stands in for sys.stdout or sys.stderr while a command runs: the first write or flush that finds the pipe
    closed (EPIPE: the reader went away) points the file descriptor at /dev/null (so that nothing, not even
    Python's flush at exit, writes there again or says "Exception ignored ... BrokenPipeError"), then either
    stops a reader (stdout of a READERS command: `OutputClosed`) or drops the output and lets the command go on.
    The stream's binary `buffer` is guarded the same way, sharing the state: click writes UTF-8 there when the
    text stream's encoding is ASCII (PYTHONIOENCODING=ascii; a C locale with PYTHONCOERCECLOCALE=0).
    Everything else is the stream's own (click finds `encoding`, `errors` there)."""

    def __init__(self, stream: Any, stop: Callable[[], bool], state: dict[str, bool] | None = None):
        self._stream = stream
        self._stop = stop
        self._state = {"gone": False} if state is None else state  # shared with the guard of the buffer

    @property
    def gone(self) -> bool:
        return self._state["gone"]

    @property
    def buffer(self) -> _Guard | None:
        raw = getattr(self._stream, "buffer", None)
        return None if raw is None else _Guard(raw, self._stop, self._state)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def _lost(self) -> None:
        self._state["gone"] = True
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, self._stream.fileno())
            finally:
                os.close(null)
        except (OSError, ValueError, AttributeError):  # no descriptor (a test's StringIO): dropping is enough
            pass
        if self._stop():
            raise OutputClosed

    def write(self, text: Any) -> int:
        if self.gone:
            return len(text)
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._lost()
            return len(text)

    def flush(self) -> None:
        if self.gone:
            return
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._lost()


class MlvcSubgroup(click.Group):
    """A group below `mlvc` (eval, ledger): its commands are MlvcCommands, its errors MlvcGroup's."""

    command_class = MlvcCommand
    group_class = type  # its own groups are of its class


class MlvcGroup(click.Group):
    """The one place where a run ends. Every exception a command lets out becomes one line on stderr and an exit
    code (mlvc.errors.EXIT_CODES): mlvc's own errors and file-system errors as themselves, Ctrl-C as
    "interrupted" (130), and anything else, a bug (RecursionError, MemoryError, UnicodeError, ...), as one
    "internal error" line (70). click's own exits and usage errors pass through. MLVC_DEBUG=1 re-raises
    instead, for the traceback. A progress bar still open is cleared first, so the line stands alone.

    Output nobody reads any more (a closed pipe: `mlvc log | head -1`) is never an error: stdout and stderr are
    guarded while the run lasts (`_Guard`), a reader stops and exits 141 as git does, any other command
    finishes its work quietly and exits with its own status."""

    command_class = MlvcCommand
    group_class = MlvcSubgroup

    def main(self, *args: Any, **kwargs: Any) -> Any:
        out, err = sys.stdout, sys.stderr
        sys.stdout = cast(TextIO, _Guard(out, lambda: is_reader(running_command())))
        sys.stderr = cast(TextIO, _Guard(err, lambda: False))
        token = set_running_command(None)
        try:
            return super().main(*args, **kwargs)
        except OutputClosed as e:  # a reader stopped: 141, quietly
            if not kwargs.get("standalone_mode", True):
                return exit_code_for(e)
            sys.exit(exit_code_for(e))
        finally:
            finish_all()  # a bar the work left open ends on its own line
            reset_running_command(token)
            for guard in (sys.stdout, sys.stderr):
                if isinstance(guard, _Guard):
                    try:
                        guard.flush()  # what is still buffered goes through the guard: a closed pipe found now
                    except OutputClosed:  # is dropped as well (the command has ended: nothing is left to stop)
                        pass
            sys.stdout, sys.stderr = out, err

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
            self._fail(ctx, f"error: {message}", exit_code_for(e))
        except KeyboardInterrupt:
            if debug:
                raise
            self._fail(ctx, "interrupted", exit_code_for(KeyboardInterrupt()))
        except Exception as e:
            if debug:
                raise
            self._fail(ctx, _internal_error_message(e), exit_code_for(e))

    @staticmethod
    def _fail(ctx: click.Context, line: str, code: int) -> NoReturn:
        abandon_all()
        click.echo(line, err=True)
        ctx.exit(code)


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
from . import check_cmds, config_cmds, core, eval_cmds, history_cmds, remote_cmds, storage_cmds, track_cmds  # noqa: E402,F401


def main() -> None:
    """The command line in this process; it ends with SystemExit, carrying the command's status."""
    open_std_fds()
    defer_full_gc()  # a commit of 100,000 small tensors: 7.9 -> 4.2 s (mlvc/runtime.py)
    cli(prog_name="mlvc")


def run() -> None:
    """The `mlvc` program (the console script, `python -m mlvc`): `main`, then the process ends with the command's
    status without the interpreter's teardown (runtime.end_process). Code that calls `main` itself gets its
    SystemExit as before."""
    try:
        main()
    except SystemExit as e:
        end_process(e)


if __name__ == "__main__":  # pragma: no cover
    run()
