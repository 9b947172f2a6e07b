"""Fault-injection points: where the crash harness kills a process, one step of a transaction at a time.

Every durable step of mlvc (a temp file written, a rename, a lock taken, a ref moved, a file staged or
renamed into the work tree, a ledger part written) calls `point(name)`. Normally that is one boolean test.
The harness (tests/test_crash.py, scripts/crash_harness.py) sets two environment variables in a child
process:

- `MLVC_FAULT_LOG=PATH`: each point passed appends its name and a newline to PATH (a dry run counts the
  steps of an operation);
- `MLVC_FAULT_AT=N`: the process kills itself with SIGKILL at the N-th point it passes, exactly as a power
  cut or `kill -9` would stop it there (no cleanup, no `finally`, no atexit).

So a harness that counted K steps can stop an operation after each of its K steps, which random delays never
reach (a kill inside a lock window, or between a ref move and the work-tree renames).
"""

from __future__ import annotations

import os
import signal
import threading

_AT = int(os.environ.get("MLVC_FAULT_AT", "0") or 0)
_LOG = os.environ.get("MLVC_FAULT_LOG") or None
_ACTIVE = bool(_AT or _LOG)
_count = 0
_lock = threading.Lock()


def point(name: str) -> None:
    """A step boundary named `name` (e.g. "ref.locked"): a no-op unless the harness is driving this process."""
    if not _ACTIVE:
        return
    global _count
    with _lock:
        _count += 1
        if _LOG:
            with open(_LOG, "a", encoding="utf-8") as f:
                f.write(name + "\n")
        if _count == _AT:
            os.kill(os.getpid(), signal.SIGKILL)
