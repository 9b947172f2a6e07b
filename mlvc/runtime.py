"""Process-wide settings of the runs mlvc owns: the CLI (`cli.main`) and the Tracker's worker process. Never
applied by the library in a caller's process (a `Repo` in a notebook, the Tracker's thread worker): there the
process and its settings are the caller's."""

from __future__ import annotations

FULL_GC_DEFERRED = 1 << 30  # generation-1 collections before a full one: never, in a process's lifetime


def defer_full_gc() -> None:
    """In a process mlvc runs itself (the CLI; the Tracker's worker process, which also collects between two
    commits): no full (generation-2) collection of Python's cyclic garbage collector while it works; young
    collections go on, so cycles that die young are still freed. A command on a checkpoint of many tensors
    builds millions of objects that live until it ends (JSON of the header and the manifest, an entry per
    tensor), and each full collection walks all of them: a commit of a file of 100,000 small tensors ran 16
    full collections for 3.0 of its 7.9 s."""
    import gc

    young, middle, _full = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_GC_DEFERRED)
