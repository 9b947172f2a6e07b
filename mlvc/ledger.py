"""The evaluation ledger: an append-only table of measurements, stored as Parquet parts in `.mlvc/ledger/`.

Every append writes one new part with a unique name (temp file in the same folder, fsync, rename, fsync the
folder), so concurrent writers never touch the same file and a reader never sees half a part. Every row
carries a unique `row_id`; readers drop repeated row ids, which is what makes compaction safe: `compact`
writes the merged rows as a new part first and only then removes the parts it merged, so at every moment
each row is in at least one part (a crash in between leaves a duplicate, never a gap). Parts appended while a
compaction runs are not in its list and are left alone. docs/format.md has the schema.

pyarrow is imported inside the functions that need it: `mlvc --help` must not pay for it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import numbers
import os
import socket
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import EvalError, LedgerError
from .util import atomic_writer, fsync_dir, is_object_id

LEDGER_FORMAT = 1
STATUS_OK = "ok"
STATUS_FAILED = "failed"  # the evaluator exited non-zero, or its output was unusable
STATUS_TIMEOUT = "timeout"  # the evaluator ran past the task's timeout and was killed
STATUSES = (STATUS_OK, STATUS_FAILED, STATUS_TIMEOUT)
SOURCES = ("run", "record")
LOCK_NAME = ".compact.lock"


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
        return [os.path.join(self.folder, n) for n in sorted(names)
                if n.endswith(".parquet") and not n.startswith((".", "_"))]

    def records(self) -> list[Record]:
        """Every row once (repeated row ids dropped), oldest first."""
        rows = _dedupe(self._read_all())[0]
        rows.sort(key=lambda r: (r["time"], r["row_id"]))
        return [_to_record(r) for r in rows]

    def _read_all(self, attempts: int = 5) -> list[dict[str, Any]]:
        # A compaction may remove a part between our listing and our read; its rows are then already in the
        # compacted part (written first), so reading the listing again finds them.
        for attempt in range(attempts):
            try:
                out: list[dict[str, Any]] = []
                for path in self.parts():
                    out.extend(_read_part(path))
                return out
            except FileNotFoundError:
                if attempt == attempts - 1:
                    raise LedgerError(f"the ledger in {self.folder} kept changing while being read; "
                                      "try again") from None
        raise AssertionError  # pragma: no cover

    # -- writing ---------------------------------------------------------------------------------------
    def append(self, records: Iterable[Record]) -> AppendResult:
        """Write `records` as one new part; fills in row_id, time, host and mlvc_version where empty."""
        from . import __version__

        recs = list(records)
        if not recs:
            raise EvalError("nothing to append: no records")
        now = _dt.datetime.now(_dt.timezone.utc)
        host = socket.gethostname()
        for r in recs:
            _validate(r)
            r.row_id = r.row_id or uuid.uuid4().hex
            r.time = _utc(r.time) if r.time is not None else now
            r.host = r.host if r.host is not None else host
            r.mlvc_version = r.mlvc_version or __version__
        os.makedirs(self.folder, exist_ok=True)
        path = os.path.join(self.folder, _unique_name("part"))
        _write_part(path, [asdict(r) for r in recs])
        return AppendResult(path, len(recs))

    def compact(self) -> CompactResult:
        """Merge every part present now into one new part, then remove the merged ones.

        Holds `.compact.lock` (created with O_EXCL) so two compactions never run at once; appends need no
        lock and may go on meanwhile: their parts are not in this compaction's list and are kept.
        """
        os.makedirs(self.folder, exist_ok=True)
        lock = os.path.join(self.folder, LOCK_NAME)
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            raise LedgerError(f"another `mlvc ledger compact` holds {lock}; if no mlvc process is running, "
                              "it crashed: remove that file and run it again") from None
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
            os.close(fd)
            parts = self.parts()
            rows: list[dict[str, Any]] = []
            for p in parts:
                rows.extend(_read_part(p))
            unique, dropped = _dedupe(rows)
            if len(parts) <= 1 and not dropped:
                return CompactResult(len(parts), 0, len(parts), len(unique), 0, None)
            unique.sort(key=lambda r: (r["time"], r["row_id"]))
            path = os.path.join(self.folder, _unique_name("compact"))
            _write_part(path, unique)  # durable before any part goes away
            for p in parts:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
            fsync_dir(self.folder)
            return CompactResult(len(parts), len(parts), len(self.parts()), len(unique), dropped, path,
                                 [os.path.basename(p) for p in parts])
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)


# -- helpers -----------------------------------------------------------------------------------------------
def _unique_name(kind: str) -> str:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{kind}-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:16]}.parquet"


def _write_part(path: str, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = arrow_schema()
    table = pa.Table.from_pylist([{name: r.get(name) for name in schema.names} for r in rows], schema=schema)
    with atomic_writer(path) as f:
        pq.write_table(table, f, compression="zstd")


def _read_part(path: str) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException) as e:
        if not os.path.exists(path):
            raise FileNotFoundError(path) from None
        raise LedgerError(f"ledger part {path} cannot be read ({e}); move it aside, then run "
                          "`mlvc ledger compact`") from None
    missing = {"row_id", "commit", "task", "status", "time"} - set(table.column_names)
    if missing:
        raise LedgerError(f"ledger part {path} lacks the column(s) {', '.join(sorted(missing))}; "
                          "it was not written by mlvc")
    return table.to_pylist()


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
    known = {k: row.get(k) for k in COLUMNS}
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
    return t.replace(tzinfo=_dt.timezone.utc) if t.tzinfo is None else t.astimezone(_dt.timezone.utc)


def _iso(t: _dt.datetime | None) -> str | None:
    return _utc(t).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if t is not None else None
