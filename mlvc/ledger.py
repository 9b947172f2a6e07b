"""The evaluation ledger: an append-only table of measurements, stored as Parquet parts in `.mlvc/ledger/`.

Every append writes one new part with a unique name (temp file in the same folder, fsync, rename, fsync the
folder), so concurrent writers never touch the same file and a reader never sees half a part. A part's name
carries the xxh3-128 hash of its bytes (`part-<UTC time>-<hash>.parquet`, the same hash as objects), so the
one rename that makes a part visible makes it verifiable too. A reader reads a part's bytes once, checks
them against the hash in its name and only then parses that buffer; a mismatch is a LedgerPartError, never
wrong rows. Parts written before hashes (no hash in the name) are still read, but `Ledger.verify` (and so
`mlvc fsck`) reports them as unverified and `compact` rewrites them into a verified part.

Every row carries a unique `row_id`; readers drop repeated row ids, which is what makes compaction safe:
`compact` writes the merged rows as a new part first and only then removes the parts it merged, so at every
moment each row is in at least one part (a crash in between leaves a duplicate, never a gap). Parts appended
while a compaction runs are not in its list and are left alone. docs/format.md has the schema.

A metric's direction (higher or lower is better) is remembered: the earliest row (by time, then row id) of
a (task, metric) that carried one fixes it (`Ledger.directions`), and `append` refuses a row whose direction
contradicts it (MetricDirectionError, nothing written). The ledger itself is the memory, so it travels and
merges with the parts, and needs no file of its own. An append that brings a direction the ledger does not
know yet takes `.directions.lock` around its check and its write, so that two processes cannot establish
opposite directions at once; appends without a direction, or with known ones, take no lock.

pyarrow is imported inside the functions that need it: `mlvc --help` must not pay for it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import numbers
import os
import re
import socket
import time as _time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from . import faults, lockfile
from .errors import EvalError, LedgerError, LedgerPartError, LockBusyError, MetricDirectionError
from .util import atomic_writer, fsync_dir, hash_bytes, is_object_id

LEDGER_FORMAT = 1
STATUS_OK = "ok"
STATUS_FAILED = "failed"  # the evaluator exited non-zero, or its output was unusable
STATUS_TIMEOUT = "timeout"  # the evaluator ran past the task's timeout and was killed
STATUSES = (STATUS_OK, STATUS_FAILED, STATUS_TIMEOUT)
SOURCES = ("run", "record")
LOCK_NAME = ".compact.lock"  # taken with mlvc.lockfile
READ_LOCK_WAIT = 30.0  # seconds a reader that compactions kept outrunning waits for the compaction lock
COMPACT_KIND = "compact"  # a compaction's merged part is named compact-<time>-<hash>.parquet
DIRECTIONS_LOCK_NAME = ".directions.lock"  # taken by an append that establishes a metric's direction
DIRECTIONS_LOCK_WAIT = 30.0  # seconds: its holder only reads the ledger and writes one part
PART_SUFFIX = ".parquet"
_HASHED_NAME = re.compile(r"-([0-9a-f]{32})\.parquet$")  # a part name that carries its content hash
TMP_NAME_PREFIX = ".tmp-"  # util.TMP_PREFIX (".tmp-mlvc-") starts so, as did temp files of older versions
# Columns a reader needs in every part; a part without them was not written by mlvc.
REQUIRED_COLUMNS = ("row_id", "commit", "task", "status", "time")


@dataclass(frozen=True)
class LedgerProblem:
    """One finding of `Ledger.verify`.

    kind is one of:
    - "damaged": a part whose bytes do not match the hash in its name, or that cannot be read or parsed;
      readers refuse the whole ledger until it is restored or removed;
    - "unverified": a part whose name carries no hash (written before part hashes, or not by mlvc); it is
      read without a check; `mlvc ledger compact` rewrites it as a verified part;
    - "temp file": a `.tmp-*` file, left by a crashed write (or one in progress); never read;
    - "unknown file": a file in the ledger folder that is neither a part nor a temp file nor a lock; never read.
    """

    path: str
    kind: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Record:
    """One row of the ledger: one measurement (status "ok"), or one failed evaluation (metric and value null)."""

    commit: str
    task: str
    metric: str | None
    value: float | None
    higher_is_better: bool | None = None
    spec_hash: str = ""
    status: str = STATUS_OK
    error: str | None = None  # failures: why, in one line ("exit code 1", "timed out after 60 s", ...)
    stderr_tail: str | None = None  # failures: the last characters the evaluator wrote to stderr
    spec: str | None = None  # canonical JSON of what was run (its hash is spec_hash)
    dataset: str | None = None
    dataset_hash: str | None = None
    seed: int | None = None
    time: _dt.datetime | None = None  # UTC; filled in by append
    duration_s: float | None = None
    host: str | None = None
    mlvc_version: str | None = None
    source: str = "run"  # "run": measured by `mlvc eval run`; "record": handed in by `eval record`
    notes: str | None = None
    row_id: str = ""  # filled in by append: 32 hex digits, unique per row

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["time"] = _iso(self.time)
        return d


COLUMNS = [f.name for f in fields(Record)]


def arrow_schema():
    """The Parquet schema of every part (docs/format.md, "Evaluation ledger")."""
    import pyarrow as pa

    return pa.schema([
        pa.field("row_id", pa.string(), nullable=False),
        pa.field("commit", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("metric", pa.string()),
        pa.field("value", pa.float64()),
        pa.field("higher_is_better", pa.bool_()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("stderr_tail", pa.string()),
        pa.field("spec_hash", pa.string(), nullable=False),
        pa.field("spec", pa.string()),
        pa.field("dataset", pa.string()),
        pa.field("dataset_hash", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("duration_s", pa.float64()),
        pa.field("host", pa.string()),
        pa.field("mlvc_version", pa.string()),
        pa.field("source", pa.string(), nullable=False),
        pa.field("notes", pa.string()),
    ], metadata={b"mlvc.ledger.format": str(LEDGER_FORMAT).encode()})


@dataclass
class AppendResult:
    path: str
    rows: int


@dataclass
class CompactResult:
    parts_before: int
    parts_merged: int
    parts_after: int
    rows: int
    duplicates_dropped: int
    path: str | None  # the new part, None when there was nothing to do
    merged: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Ledger:
    """The ledger folder of one repository (`.mlvc/ledger/`)."""

    def __init__(self, folder: str):
        self.folder = folder

    # -- listing and reading ---------------------------------------------------------------------------
    def parts(self) -> list[str]:
        """Every finished part, oldest name first. Temp files and the lock start with '.' and are skipped."""
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        return [os.path.join(self.folder, n) for n in sorted(names) if _is_part_name(n)]

    def records(self) -> list[Record]:
        """Every row once (repeated row ids dropped), oldest first."""
        rows = _dedupe(self._read_all())[0]
        rows.sort(key=lambda r: (r["time"], r["row_id"]))
        return [_to_record(r) for r in rows]

    def _read_all(self, attempts: int = 8) -> list[dict[str, Any]]:
        """Every row of every part (repeats included), consistent with compactions running meanwhile.

        A compaction writes its merged part before it removes the parts it merged, so a part that is gone
        between our listing and our read has its rows in a newer part: list again at once and read only the
        parts not read yet (a part's name carries its content, so one read per name is enough; rows of parts
        gone since stay, `_dedupe` drops their repeats). A listing is taken as complete when every part in it
        was read and a second listing still shows all of them and no merged part we have not read: a listing
        made while a compaction runs may miss both the parts it removes and the part it adds, and only a
        compaction removes parts. A reader that loses that race `attempts` times reads once more holding the
        compaction lock, which no compaction can then take.
        """
        rows: dict[str, list[dict[str, Any]]] = {}
        listed = self.parts()
        for _ in range(attempts):
            gone = False
            for path in listed:
                if path not in rows:
                    try:
                        rows[path] = read_part(path)
                    except FileNotFoundError:  # merged by a compaction, and likely the rest of the listing too
                        gone = True
                        break
            before, listed = listed, self.parts()
            if (not gone and set(before) <= set(listed)
                    and all(p in rows for p in listed if os.path.basename(p).startswith(COMPACT_KIND))):
                return [r for part in rows.values() for r in part]
        try:
            with lockfile.locked(os.path.join(self.folder, LOCK_NAME), "the ledger", READ_LOCK_WAIT):
                for path in self.parts():
                    if path not in rows:
                        rows[path] = read_part(path)  # no part can go while we hold the lock
        except (OSError, LockBusyError) as e:  # a folder we may not write, a compaction that runs on
            raise LedgerError(f"the ledger in {self.folder} kept changing while being read, and its compaction "
                              f"lock could not be taken ({_short(e)}); try again") from None
        return [r for part in rows.values() for r in part]

    def verify(self, tmp_min_age_s: float = 0.0) -> list[LedgerProblem]:
        """Check every part as a reader would (hash, then parse); one LedgerProblem per finding, by path.

        An empty list means every part is verified and readable. Temp files younger than `tmp_min_age_s`
        seconds are not reported (they may be appends in progress). Parts that a compaction removes while
        this runs are skipped (their rows are in the compacted part). Lock files are left to mlvc.lockfile.
        Never raises for a damaged part; OSError on the folder itself propagates.
        """
        try:
            names = sorted(os.listdir(self.folder))
        except FileNotFoundError:
            return []
        problems: list[LedgerProblem] = []
        now = _time.time()
        for name in names:
            path = os.path.join(self.folder, name)
            if name.startswith(TMP_NAME_PREFIX):
                try:
                    age = now - os.lstat(path).st_mtime
                except FileNotFoundError:
                    continue
                if age >= tmp_min_age_s:
                    problems.append(LedgerProblem(path, "temp file", f"left by a write that did not finish "
                                                  f"({age:.0f} s old); never read; safe to delete when no mlvc "
                                                  "process is running"))
            elif _is_part_name(name):
                try:
                    read_part(path)
                except FileNotFoundError:
                    continue  # removed by a compaction meanwhile: its rows are in the compacted part
                except LedgerPartError as e:
                    problems.append(LedgerProblem(path, "damaged", e.reason + "; restore it from a backup or "
                                                  "another copy of the repository, or delete it (its rows "
                                                  "are lost)"))
                    continue
                if part_hash(name) is None:
                    problems.append(LedgerProblem(path, "unverified", "its name carries no content hash "
                                                  "(written before ledger parts were hashed, or not by mlvc), "
                                                  "so damage to it cannot be detected; `mlvc ledger compact` "
                                                  "rewrites it as a verified part"))
            elif name.startswith(".") and name.endswith(lockfile.LOCK_SUFFIX):
                continue
            else:
                problems.append(LedgerProblem(path, "unknown file", "not a ledger part (a part's name ends in "
                                              "'-<32 hex>.parquet' and does not start with '.' or '_'); "
                                              "never read"))
        return problems

    # -- writing ---------------------------------------------------------------------------------------
    def append(self, records: Iterable[Record]) -> AppendResult:
        """Write `records` as one new part; fills in row_id, time, host and mlvc_version where empty.

        A row whose direction (higher_is_better) contradicts the one the ledger remembers for its (task,
        metric), or another row of the same batch, raises MetricDirectionError and nothing is written.
        """
        from .version import __version__

        recs = list(records)
        if not recs:
            raise EvalError("nothing to append: no records")
        now = _dt.datetime.now(_dt.UTC)
        host = socket.gethostname()
        for r in recs:
            _validate(r)
            r.row_id = r.row_id or uuid.uuid4().hex
            r.time = _utc(r.time) if r.time is not None else now
            r.host = r.host if r.host is not None else host
            r.mlvc_version = r.mlvc_version or __version__
        given = _given_directions(recs)
        os.makedirs(self.folder, exist_ok=True)
        if given:
            known = self.first_directions()
            _check_directions(given, known)
            if any(key not in known for key in given):  # establishing one: check again under the lock
                with lockfile.locked(os.path.join(self.folder, DIRECTIONS_LOCK_NAME),
                                     "the ledger's metric directions", DIRECTIONS_LOCK_WAIT):
                    _check_directions(given, self.first_directions())
                    path = _write_part(self.folder, "part", [asdict(r) for r in recs])
                return AppendResult(path, len(recs))
        path = _write_part(self.folder, "part", [asdict(r) for r in recs])
        return AppendResult(path, len(recs))

    # -- remembered directions -------------------------------------------------------------------------
    def first_directions(self, records: list[Record] | None = None) -> dict[tuple[str, str], Record]:
        """For each (task, metric) with a direction, the earliest row (time, then row id) that carried one:
        the row that fixed the metric's direction. `records` (oldest first) saves reading the ledger again."""
        out: dict[tuple[str, str], Record] = {}
        for r in self.records() if records is None else records:
            if r.ok and r.metric is not None and r.higher_is_better is not None:
                out.setdefault((r.task, r.metric), r)
        return out

    def directions(self, records: list[Record] | None = None) -> dict[tuple[str, str], bool]:
        """The remembered direction of each (task, metric): True when higher is better (first_directions)."""
        return {k: bool(r.higher_is_better) for k, r in self.first_directions(records).items()}

    def direction_conflicts(self, records: list[Record] | None = None) -> list[Record]:
        """Rows whose direction contradicts their metric's remembered one. `append` never writes one; they
        appear only when parts of two ledgers that fixed opposite directions are put together (a merge of
        copies of the repository). The earliest row still decides."""
        records = self.records() if records is None else records
        first = self.directions(records)
        return [r for r in records if r.ok and r.metric is not None and r.higher_is_better is not None
                and first[(r.task, r.metric)] != r.higher_is_better]

    def compact(self, wait: float = lockfile.DEFAULT_WAIT) -> CompactResult:
        """Merge every part present now into one new verified part, then remove the merged ones.

        Holds `.compact.lock` (mlvc.lockfile: a dead holder's lock is cleared) so two compactions never run
        at once; LockBusyError when a live one holds it past `wait` seconds. Appends need no lock and may go
        on meanwhile: their parts are not in this compaction's list and are kept. Every part is verified
        before it is merged: a damaged part stops the compaction (LedgerPartError) and nothing changes.
        A single part is rewritten too when it is unverified (written before parts were hashed).
        """
        os.makedirs(self.folder, exist_ok=True)
        with lockfile.locked(os.path.join(self.folder, LOCK_NAME), "the ledger", wait):
            parts = self.parts()
            rows: list[dict[str, Any]] = []
            for p in parts:
                rows.extend(read_part(p))  # only this process removes parts now: a missing one is an error
            unique, dropped = _dedupe(rows)
            unverified = [p for p in parts if part_hash(os.path.basename(p)) is None]
            if len(parts) <= 1 and not dropped and not unverified:
                return CompactResult(len(parts), 0, len(parts), len(unique), 0, None)
            unique.sort(key=lambda r: (r["time"], r["row_id"]))
            path = _write_part(self.folder, COMPACT_KIND, unique)  # durable before any part goes away
            for p in parts:
                if p == path:  # pragma: no cover - a new name has a new time stamp
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
                faults.point("ledger.part.removed")
            fsync_dir(self.folder)
            return CompactResult(len(parts), len(parts), len(self.parts()), len(unique), dropped, path,
                                 [os.path.basename(p) for p in parts])


# -- helpers -----------------------------------------------------------------------------------------------
def _given_directions(recs: list[Record]) -> dict[tuple[str, str], bool]:
    """The directions a batch of rows carries, by (task, metric); a batch that contradicts itself is refused."""
    given: dict[tuple[str, str], bool] = {}
    for r in recs:
        if not r.ok or r.metric is None or r.higher_is_better is None:
            continue
        if not isinstance(r.higher_is_better, bool):
            raise EvalError(f"{r.task}/{r.metric}: higher_is_better must be True, False or None, got "
                            f"{r.higher_is_better!r}")
        key = (r.task, r.metric)
        if given.setdefault(key, r.higher_is_better) != r.higher_is_better:
            raise MetricDirectionError(r.task, r.metric, r.higher_is_better, given[key], "another row of the "
                                       "same append", "Give each metric one direction.")
    return given


def _check_directions(given: dict[tuple[str, str], bool], known: dict[tuple[str, str], Record]) -> None:
    for (task, metric), hib in given.items():
        first = known.get((task, metric))
        if first is not None and first.higher_is_better != hib:
            when = _iso(first.time) or "?"
            raise MetricDirectionError(task, metric, hib, bool(first.higher_is_better),
                                       f"the ledger (fixed by its first row with a direction, for commit "
                                       f"{first.commit[:12]} at {when[:19]}Z)",
                                       "A metric's direction is remembered: give the same one or none (check "
                                       "--higher/--lower and the task's config), or use a new metric name if "
                                       "its meaning changed")


def _is_part_name(name: str) -> bool:
    """Readers take every `*.parquet` whose name does not start with '.' or '_' (as pyarrow datasets do)."""
    return name.endswith(PART_SUFFIX) and not name.startswith((".", "_"))


def part_hash(name: str) -> str | None:
    """The content hash a part's file name carries (`...-<32 hex>.parquet`), None for an unverified part."""
    m = _HASHED_NAME.search(name)
    return m.group(1) if m else None


def _write_part(folder: str, kind: str, rows: list[dict[str, Any]]) -> str:
    """Write `rows` as a new part `<kind>-<UTC time>-<xxh3-128 of its bytes>.parquet`; returns its path.

    The bytes are made in memory and hashed, then written by util.atomic_writer (temp file, fsync, rename,
    fsync of the folder): the rename that makes the part visible is the one that gives it its hash.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = arrow_schema()
    table = pa.Table.from_pylist([{name: r.get(name) for name in schema.names} for r in rows], schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue().to_pybytes()
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = os.path.join(folder, f"{kind}-{stamp}-{hash_bytes(data)}{PART_SUFFIX}")
    back = parse_part(path, data)  # a part is written only when it reads back
    if [r["row_id"] for r in back] != [r.get("row_id") for r in rows]:  # pragma: no cover - a writer bug
        raise LedgerError(f"the new ledger part {path} does not read back as written; nothing was written")
    with atomic_writer(path) as f:
        f.write(data)
    return path


def read_part(path: str) -> list[dict[str, Any]]:
    """The rows of one part: its bytes are read once, checked against the hash in its name, then parsed.

    LedgerPartError for a part that does not match its hash, cannot be read or does not parse as a ledger
    part; FileNotFoundError when it is gone (a compaction removed it: the caller lists the parts again).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise LedgerPartError(path, f"it cannot be read ({e.strerror or e})") from None
    return load_part(path, data)


def load_part(path: str, data: bytes) -> list[dict[str, Any]]:
    """The rows of the part named `path` whose bytes are `data`: checked against the hash in its name (when
    it has one) before they are parsed. Raises nothing but LedgerPartError."""
    expected = part_hash(os.path.basename(path))
    if expected is not None:
        actual = hash_bytes(data)
        if actual != expected:
            raise LedgerPartError(path, f"its content ({len(data)} bytes) hashes to {actual}, not to the "
                                  f"{expected} in its name")
    return parse_part(path, data)


def parse_part(path: str, data: bytes) -> list[dict[str, Any]]:
    """Parse the bytes of a part (`path` only names it in errors). Raises nothing but LedgerPartError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)
        table.validate(full=True)
    except Exception as e:  # noqa: BLE001 - a parser of untrusted bytes: whatever it raises means "damaged"
        raise LedgerPartError(path, f"it is not a readable Parquet file ({_short(e)})") from None
    names = table.column_names
    if len(set(names)) != len(names):
        raise LedgerPartError(path, "it has repeated column names; it was not written by mlvc")
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise LedgerPartError(path, f"it lacks the column(s) {', '.join(missing)}; it was not written by mlvc")
    schema = arrow_schema()
    for name in names:
        i = schema.get_field_index(name)
        if i >= 0 and not table.schema.field(name).type.equals(schema.field(i).type):
            raise LedgerPartError(path, f"its column {name!r} has type {table.schema.field(name).type}, "
                                  f"not {schema.field(i).type}")
    for name in REQUIRED_COLUMNS:
        if table.column(name).null_count:
            raise LedgerPartError(path, f"its column {name!r} has null values")
    try:
        return table.to_pylist()
    except Exception as e:  # noqa: BLE001 - e.g. a time stamp outside what datetime can hold
        raise LedgerPartError(path, f"its values cannot be read ({_short(e)})") from None


def _short(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    return text if len(text) <= 200 else text[:197] + "..."


def _dedupe(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    seen: set[str] = set()
    out = []
    for r in rows:
        if r["row_id"] in seen:
            continue
        seen.add(r["row_id"])
        out.append(r)
    return out, len(rows) - len(out)


def _to_record(row: dict[str, Any]) -> Record:
    known: dict[str, Any] = {k: row.get(k) for k in COLUMNS}  # a Parquet row: its column types are checked on read
    known["source"] = known["source"] or "run"
    known["spec_hash"] = known["spec_hash"] or ""
    return Record(**known)


def _validate(r: Record) -> None:
    if not is_object_id(r.commit or ""):
        raise EvalError(f"ledger rows need a full commit id, got {r.commit!r}")
    if not r.task or not isinstance(r.task, str):
        raise EvalError("ledger rows need a task name")
    if r.status not in STATUSES:
        raise EvalError(f"status must be one of {', '.join(STATUSES)}, got {r.status!r}")
    if r.source not in SOURCES:
        raise EvalError(f"source must be one of {', '.join(SOURCES)}, got {r.source!r}")
    if r.status == STATUS_OK:
        if not r.metric:
            raise EvalError(f"task {r.task!r}: a measurement needs a metric name")
        value = _as_float(r.value)
        if value is None or not math.isfinite(value):
            raise EvalError(f"task {r.task!r}, metric {r.metric!r}: the value must be a finite number, "
                            f"got {r.value!r}")
        r.value = value
    if r.seed is not None and (isinstance(r.seed, bool) or not isinstance(r.seed, int)):
        raise EvalError(f"seed must be an integer, got {r.seed!r}")


def _as_float(value: Any) -> float | None:
    """A metric value as a float, or None when it is not a number.

    Accepts any real number: int, float, Fraction, Decimal, and the scalars a training loop produces (numpy
    scalars, 0-d numpy arrays, one-element torch tensors: anything with __float__). Refuses booleans (Python,
    numpy or torch), strings and complex numbers.
    """
    if isinstance(value, (bool, str, bytes)) or getattr(getattr(value, "dtype", None), "kind", None) == "b":
        return None
    if str(getattr(value, "dtype", "")) == "torch.bool":
        return None
    if not isinstance(value, numbers.Real) and not hasattr(type(value), "__float__"):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):  # e.g. a numpy array of several elements
        return None


def _utc(t: _dt.datetime) -> _dt.datetime:
    return t.replace(tzinfo=_dt.UTC) if t.tzinfo is None else t.astimezone(_dt.UTC)


def _iso(t: _dt.datetime | None) -> str | None:
    return _utc(t).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if t is not None else None
