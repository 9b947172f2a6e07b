"""The one exception tree of mlvc.

Every error the library raises on purpose is an :class:`MlvcError`. Subclasses also inherit the builtin
that fits, carry the facts as attributes, and their message says what to do next. The CLI maps each class
(and OSError) to an exit code in one table (:data:`EXIT_CODES`).
"""

from __future__ import annotations


class MlvcError(Exception):
    """Root of every mlvc error."""

    exit_code = 1


class NotARepositoryError(MlvcError, FileNotFoundError):
    def __init__(self, start: str):
        self.start = start
        super().__init__(
            f"not an mlvc repository (or any parent up to /): {start}; run `mlvc init` to create one"
        )


class RepositoryExistsError(MlvcError, FileExistsError):
    def __init__(self, path: str):
        self.path = path
        super().__init__(f"an mlvc repository already exists at {path}")


class ObjectNotFoundError(MlvcError, LookupError):
    def __init__(self, object_id: str):
        self.object_id = object_id
        super().__init__(f"object {object_id} is missing from the store; run `mlvc fsck` to check the repository")


class CorruptObjectError(MlvcError, ValueError):
    def __init__(self, object_id: str, reason: str, path: str | None = None):
        self.object_id = object_id
        self.reason = reason
        self.path = path
        where = f" ({path})" if path else ""
        super().__init__(f"object {object_id} is corrupt{where}: {reason}; "
                         "run `mlvc fsck` to find every damaged object")


class RevisionError(MlvcError, LookupError):
    """A revision that names nothing, or names more than one thing."""

    def __init__(self, rev: str, reason: str = "unknown revision"):
        self.rev = rev
        self.reason = reason
        super().__init__(f"{reason}: {rev!r}; see `mlvc log` and `mlvc branch` for what exists")


class RefError(MlvcError, ValueError):
    """A bad ref name, or a ref operation that cannot be done (exists, missing, current branch)."""


class RefConflictError(MlvcError, RuntimeError):
    """A ref moved under us (compare-and-swap failed) or is locked by another process."""

    def __init__(self, ref: str, reason: str):
        self.ref = ref
        self.reason = reason
        super().__init__(f"cannot update {ref}: {reason}")


class LockBusyError(MlvcError, RuntimeError):
    """A lock held by another live process past the wait (or by a process on another host)."""

    def __init__(self, what: str, holder):
        self.what = what
        self.holder = holder  # lockfile.LockInfo
        super().__init__(f"cannot update {what}: another mlvc process holds {holder.describe()}; try again when "
                         f"it has finished (if that process no longer exists, remove {holder.path})")


class DirtyWorkingCheckpointError(MlvcError, RuntimeError):
    def __init__(self, paths: list[str]):
        self.paths = list(paths)
        shown = ", ".join(self.paths[:5]) + (" ..." if len(self.paths) > 5 else "")
        super().__init__(
            f"uncommitted changes would be overwritten: {shown}; commit them first, "
            "or pass --force to discard them"
        )


class NothingToCommitError(MlvcError, ValueError):
    pass


class FormatError(MlvcError, ValueError):
    """A checkpoint file mlvc cannot read as what it claims to be."""

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class UnsafePickleError(FormatError):
    """A .pt/.bin file that torch.load(weights_only=True) refuses: mlvc never runs pickled code."""

    def __init__(self, path: str, detail: str):
        import re

        found = re.search(r"(Unsupported global: GLOBAL [^\s]+|Unsupported operand \d+"
                          r"|[^\n.]*not an allowed global[^\n.]*)", detail)
        self.detail = found.group(1).strip() if found else "refused by torch.load(weights_only=True)"
        super().__init__(
            path,
            f"this pickle needs more than tensors and plain containers to load ({self.detail}), and mlvc never "
            "executes pickled code; save the weights as safetensors or a plain state_dict, or pass --as-blob "
            "to store the file as opaque bytes",
        )


class FileChangedError(MlvcError, RuntimeError):
    """A file was rewritten while mlvc read it: what was read may mix two versions, so nothing is kept."""

    def __init__(self, path: str):
        self.path = path
        super().__init__(f"{path} changed while it was being read; commit again once whatever writes it has "
                         "finished (nothing was committed)")


class PathError(MlvcError, ValueError):
    """A path that is missing, outside the repository, or otherwise unusable."""


class ConfigError(MlvcError, ValueError):
    pass


class DependencyError(MlvcError, ImportError):
    def __init__(self, package: str, why: str, extra: str):
        self.package = package
        super().__init__(f"{why} needs {package}; install it with `pip install 'mlvc[{extra}]'`")


class LedgerError(MlvcError, RuntimeError):
    """The evaluation ledger cannot be read or changed: a damaged part, or a compaction holds the lock."""


class LedgerPartError(LedgerError):
    """A ledger part that cannot be trusted: its bytes do not match the hash in its name, or do not parse."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"ledger part {path} is damaged: {reason}; run `mlvc fsck` to list every damaged "
                         "part, then restore this file from a backup or another copy of the repository, or "
                         "delete it (its rows are lost)")


class EvalError(MlvcError, ValueError):
    """Bad evaluation input: an unknown task, a malformed metric value, no result to compare."""


class EvalFailedError(MlvcError, RuntimeError):
    """Raised by the CLI when evaluators failed or timed out; the failures are recorded in the ledger."""

    def __init__(self, failures: list[tuple[str, str, str]]):
        self.failures = list(failures)  # (commit, task, status)
        shown = ", ".join(f"{t} on {c[:12]} ({s})" for c, t, s in self.failures[:5])
        more = " ..." if len(self.failures) > 5 else ""
        super().__init__(f"{len(self.failures)} evaluation(s) did not succeed: {shown}{more}; the failures "
                         "are recorded in the ledger: see `mlvc eval show` and the stderr tails in "
                         "`mlvc eval show --json`")


class ConflictError(MlvcError, RuntimeError):
    """A revert or merge that cannot be done tensor by tensor without a choice; nothing was written.

    `conflicts` holds one entry per tensor or file (each prints as one line)."""

    def __init__(self, what: str, conflicts: list, hint: str):
        self.what = what
        self.conflicts = list(conflicts)
        lines = "".join(f"\n  {c}" for c in self.conflicts)
        super().__init__(f"{what}: {len(self.conflicts)} conflict(s), nothing was written:{lines}\n{hint}")


class FsckError(MlvcError, RuntimeError):
    """Raised by the CLI when fsck found problems (the report itself is returned, not raised)."""


class GcRefusedError(MlvcError, RuntimeError):
    """gc cannot tell what is reachable (a reachable commit or manifest is missing or damaged, a ref cannot be
    read), so it deletes nothing."""

    def __init__(self, object_id: str, reason: str):
        self.object_id = object_id
        self.reason = reason
        super().__init__(f"gc refuses to delete anything: {reason}; it cannot know which objects that needs. "
                         "Run `mlvc fsck` and repair the repository (copy the object back from a backup or another "
                         "copy of this repository, or move the refs that name it) before running gc again")


class UnknownRevisionError(RevisionError):
    """A revision that names nothing; `suggestions` holds the closest branch and tag names (maybe none)."""

    def __init__(self, rev: str, suggestions: list[str], reason: str = "unknown revision"):
        super().__init__(rev, reason)
        self.suggestions = list(suggestions)
        if self.suggestions:
            quoted = " or ".join(repr(s) for s in self.suggestions)
            self.args = (f"{reason}: {rev!r}; did you mean {quoted}? (`mlvc branch` and `mlvc tag` list the "
                         "names, `mlvc log` the commits)",)


class OutputFolderError(DirtyWorkingCheckpointError):
    """`checkout --output DIR` into a folder holding files that are not an earlier mlvc checkout: overwriting
    them could lose work that is not in the repository."""

    def __init__(self, folder: str, paths: list[str]):
        super().__init__(paths)
        self.folder = folder
        shown = ", ".join(self.paths[:5]) + (" ..." if len(self.paths) > 5 else "")
        self.args = (f"{folder} holds files that are not an earlier mlvc checkout and would be overwritten: "
                     f"{shown}; nothing was changed. Choose an empty or new --output folder, or pass --force "
                     "to overwrite them",)



class MetricDirectionError(EvalError):
    """A result whose direction (higher or lower is better) contradicts the one the metric already has, in the
    configuration or remembered by the ledger; nothing was written."""

    def __init__(self, task: str, metric: str, given: bool, known: bool, where: str, hint: str):
        self.task, self.metric, self.given, self.known, self.where = task, metric, given, known, where
        word = {True: "higher", False: "lower"}
        super().__init__(f"{task}/{metric}: \"{word[given]} is better\" contradicts {where}, which says "
                         f"\"{word[known]} is better\"; nothing was written. {hint}")


class TrackerError(MlvcError, RuntimeError):
    """A training-loop Tracker cannot go on: a background commit failed (the cause is chained), the tracker is
    closed, or its branch is checked out."""


class FrameworkMissingError(DependencyError):
    """An integration (mlvc.integrations.hf, .lightning) imported without its framework installed."""

    def __init__(self, package: str, module: str):
        MlvcError.__init__(self, f"{module} needs the {package} package, which is not installed; install it with "
                                 f"`pip install {package}` (mlvc itself does not need it)")
        self.package = package


class CheckRegressedError(MlvcError, RuntimeError):
    """Raised by the CLI when `mlvc check` found a metric that regressed beyond its tolerance (the comparison
    table itself is returned, not raised)."""

    def __init__(self, regressions: list[str], base: str):
        self.regressions = list(regressions)  # "task/metric"
        self.base = base
        shown = ", ".join(self.regressions[:5]) + (" ..." if len(self.regressions) > 5 else "")
        super().__init__(f"{len(self.regressions)} metric(s) regressed against {base[:12]}: {shown}; see the "
                         "table above (tolerances come from mlvc.toml [check.metrics] or --abs-tol/--rel-tol)")


class CheckMissingDataError(MlvcError, LookupError):
    """Raised by the CLI when `mlvc check` cannot decide: a required metric has no value, an evaluation failed,
    or nothing is recorded for both commits."""

    def __init__(self, missing: list[str]):
        self.missing = list(missing)  # one line each: "task/metric: why"
        shown = "; ".join(self.missing[:3]) + (" ..." if len(self.missing) > 3 else "")
        super().__init__(f"missing evaluation data: {shown}; run `mlvc eval run REV` (or pass --run) or record "
                         "the results with `mlvc eval record`")


class BisectError(MlvcError, RuntimeError):
    """bisect cannot give an answer: the good commit is bad or the bad one good, the good commit is not an
    ancestor of the bad one, or the command stopped it (an exit status of 128 or more)."""


class MissingTrackedFilesError(PathError):
    """Tracked files gone from the work tree, which a commit of every tracked path refuses to drop silently."""

    def __init__(self, paths: list[str]):
        self.paths = list(paths)
        shown = ", ".join(self.paths[:5]) + (f" and {len(self.paths) - 5} more" if len(self.paths) > 5 else "")
        super().__init__(
            f"{len(self.paths)} tracked file(s) missing from the work tree: {shown}; `mlvc rm PATH` untracks "
            "them (the next commit records it), `mlvc commit FOLDER` commits a folder as it is now, and "
            "`mlvc reset --hard HEAD` writes them back"
        )


class RemoteError(MlvcError, RuntimeError):
    """A remote cannot be used: not configured, unreachable, refused the credentials, or not an mlvc remote."""


class PushRejectedError(RemoteError):
    """A push that would lose commits on the remote: its branch moved since the last fetch (someone pushed), or
    it is not an ancestor of what is pushed. Nothing on the remote's refs changed."""


class OutputClosed(BaseException):
    """The reader of a reading command's output went away (`mlvc log | head -1`): the CLI stops the command
    wherever it is and exits 141 (128 + SIGPIPE), as git does. A BaseException, as KeyboardInterrupt, so that
    no `except Exception` mistakes it for a failure of its own (docs/design.md, "Output and exit codes")."""


# One table from exception class to exit code; the most specific class wins (looked up along the MRO).
# OSError is the one builtin here: a file system error mlvc did not anticipate (a missing output folder, a
# full disk, no permission). mlvc's own classes that also inherit an OSError subclass reach MlvcError first.
EXIT_CODES: dict[type[BaseException], int] = {
    MlvcError: 1,
    NotARepositoryError: 3,
    RepositoryExistsError: 3,
    RevisionError: 4,
    ObjectNotFoundError: 5,
    CorruptObjectError: 5,
    FsckError: 5,
    GcRefusedError: 5,
    DirtyWorkingCheckpointError: 6,
    FileChangedError: 6,
    NothingToCommitError: 6,
    RefError: 7,
    RefConflictError: 7,
    LockBusyError: 7,
    FormatError: 8,
    UnsafePickleError: 9,
    PathError: 10,
    ConfigError: 11,
    DependencyError: 12,
    LedgerError: 13,
    EvalError: 14,
    EvalFailedError: 15,
    ConflictError: 16,
    OSError: 17,
    CheckRegressedError: 20,
    CheckMissingDataError: 21,
    BisectError: 22,
    RemoteError: 23,
    PushRejectedError: 24,
    # Anything else is a bug in mlvc (a parser that let an exception through, a RecursionError, a MemoryError):
    # the CLI prints one "internal error" line and exits with sysexits' EX_SOFTWARE, distinct from every
    # deliberate error above. KeyboardInterrupt is not an Exception: Ctrl-C exits 130.
    Exception: 70,
    KeyboardInterrupt: 130,
    OutputClosed: 141,
}


def exit_code_for(exc: BaseException) -> int:
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1
