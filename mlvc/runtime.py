"""Process-wide settings of the runs mlvc owns, the CLI (`cli.main`) and the Tracker's worker process, and the end
of the CLI's process (`cli.run`). Never applied by the library in a caller's process (a `Repo` in a notebook, the
Tracker's thread worker): there the process and its settings are the caller's."""

from __future__ import annotations

import sys
from typing import NoReturn

# Generation-1 collections between two full ones (default 10): one full collection per about 7 million
# allocations. A command on a file of 100,000 tensors runs at most about 430 generation-1 collections (its
# second commit, measured), so none; a long run (a push of many objects, gc of a large store) still collects
# the cyclic garbage that outlived the young generations, every few million allocations.
FULL_GC_EVERY = 1000


def defer_full_gc() -> None:
    """In a process mlvc runs itself (the CLI; the Tracker's worker process, which also collects between two
    commits): a full (generation-2) collection of Python's cyclic garbage collector only every FULL_GC_EVERY
    generation-1 collections instead of every 10; young collections go on as before. A command on a
    checkpoint of many tensors builds millions of objects that live until it ends (JSON of the header and the
    manifest, an entry per tensor), and each full collection walks all of them: a commit of a file of 100,000
    small tensors ran 16 full collections for 3.0 of its 7.9 s. Python 3.14's incremental collector has no
    such threshold: there nothing is changed."""
    import gc

    if sys.version_info < (3, 14):
        young, middle, full = gc.get_threshold()
        gc.set_threshold(young, middle, max(full, FULL_GC_EVERY))


def open_std_fds() -> None:
    """Give the process the standard streams it started without (`mlvc log >&-`, `2>&-`, `<&-`), each over
    /dev/null, as git does at its start. A closed descriptor is the lowest free number: the first file the
    command opened (an object, a checkpoint being checked out) would take it, and whatever writes to that
    number, a child process (an evaluation task, the bisect judge) or code below Python, would write into that
    file. A descriptor open the wrong way round (stderr over a file open for reading, which a launcher such as
    a pyenv shim leaves there) is replaced too: every write to it failed, and a failing command exited 1 instead
    of its own status. Python makes no stream for a closed descriptor (sys.stdout is None): it gets one, with
    stderr's escaping of what is not UTF-8 (a path's undecodable bytes), so that printing never fails. Without
    a /dev/null (a bare chroot) nothing is changed."""
    import fcntl
    import os

    for fd, name, mode, access in ((0, "stdin", "r", os.O_RDONLY), (1, "stdout", "w", os.O_WRONLY),
                                   (2, "stderr", "w", os.O_WRONLY)):
        try:
            usable = (fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE) in (access, os.O_RDWR)
        except OSError:  # not open
            usable = False
        if not usable:  # when closed, the lowest free number is this one (the ones below are usable by now)
            try:
                null = os.open(os.devnull, os.O_RDWR)
            except OSError:
                return
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, encoding="utf-8", errors="backslashreplace", closefd=False))


# Tools that take over at the end of a program they run in their process (a debugger, a profiler, coverage):
# where one is loaded, the interpreter's own exit hands them control as usual.
_EXIT_WATCHERS = frozenset({"bdb", "coverage", "cProfile", "profile", "yappi", "pyinstrument", "line_profiler",
                            "memray", "trace"})


def end_process(exit: SystemExit) -> NoReturn:
    """End a process mlvc runs itself (the CLI) with `exit`'s status, doing what the interpreter does at exit
    that anyone can observe (non-daemon threads joined and threading's exit hooks run, the atexit handlers
    run, stdout and stderr flushed) but not its teardown: freeing every module and object left, and a last
    full garbage collection, took 20-40 ms of every command (`mlvc status` 23 -> 5 ms, a checkout of 87 MiB
    40 -> 7 ms), which is nothing but waiting for a process that has finished its work. Anything left to a
    finalizer (`__del__`) is skipped, as a kill would skip it: what mlvc writes is written, flushed and
    closed before a command returns. Where the interpreter does more, `exit` is raised again and the
    interpreter exits as usual (the atexit handlers it finds already run are not run twice): a status that
    is not a number (it prints it); a tracer, a profiler (sys.setprofile, or sys.monitoring from Python
    3.12), a debugger or coverage, which report or take over at exit; `python -i` (PYTHONINSPECT), whose
    prompt comes after the program; a step that fails (a flush to a pipe the reader closed), or Ctrl-C
    while the exit waits for a thread (the status stays the command's, as with the interpreter's exit)."""
    import atexit
    import os
    import threading

    code = 0 if exit.code is None else exit.code
    if type(code) is not int or _watched():
        raise exit
    try:
        threading._shutdown()  # type: ignore[attr-defined]  # as the interpreter's exit does first
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001  # (a pipe closed by the reader, Ctrl-C, a changed private API)
        raise exit from None
    os._exit(code)


def _watched() -> bool:
    """Whether something in this process expects the interpreter's own exit (end_process)."""
    import os

    if sys.gettrace() or sys.getprofile() or sys.flags.inspect or os.environ.get("PYTHONINSPECT"):
        return True
    monitoring = getattr(sys, "monitoring", None)  # Python 3.12+: cProfile and debuggers use it
    if monitoring is not None and any(monitoring.get_tool(i) for i in range(6)):
        return True
    return not _EXIT_WATCHERS.isdisjoint(sys.modules)
