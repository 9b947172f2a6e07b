"""The ledger store: Parquet parts, concurrent appends, compaction that never loses a row."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from mlvc.cli import cli
from mlvc.errors import EvalError, LedgerError, exit_code_for
from mlvc.ledger import COLUMNS, Ledger, Record, arrow_schema

C1 = "1" * 32
C2 = "2" * 32


def rec(commit=C1, task="t", metric="m", value=1.0, **kw) -> Record:
    return Record(commit, task, metric, value, kw.pop("higher_is_better", True), kw.pop("spec_hash", "s"), **kw)


def test_append_and_read_back(tmp_path):
    led = Ledger(str(tmp_path / "ledger"))
    assert led.records() == [] and led.parts() == []
    when = dt.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
    led.append([rec(value=0.5, dataset="d", dataset_hash="h", seed=7, notes="n", time=when, duration_s=1.5),
                rec(C2, metric=None, value=None, higher_is_better=None, status="timeout", error="timed out",
                    stderr_tail="ü tail")])
    rows = led.records()
    assert len(rows) == 2 and len(led.parts()) == 1
    first = rows[0]
    assert (first.commit, first.task, first.metric, first.value, first.higher_is_better) == (C1, "t", "m", 0.5, True)
    assert (first.dataset, first.dataset_hash, first.seed, first.notes, first.duration_s) == ("d", "h", 7, "n", 1.5)
    assert first.time == when and first.host and first.mlvc_version and len(first.row_id) == 32
    failed = rows[1]
    assert (failed.status, failed.error, failed.stderr_tail, failed.value) == ("timeout", "timed out", "ü tail", None)


def test_parts_have_the_documented_schema(tmp_path):
    import pyarrow.parquet as pq

    led = Ledger(str(tmp_path / "ledger"))
    led.append([rec()])
    schema = pq.read_schema(led.parts()[0])
    expected = arrow_schema()
    assert schema.names == expected.names and set(schema.names) == set(COLUMNS)
    assert [f.type for f in schema] == [f.type for f in expected]
    assert schema.metadata[b"mlvc.ledger.format"] == b"1"


@pytest.mark.parametrize("bad, message", [
    (dict(commit="abc"), "full commit id"),
    (dict(value=float("nan")), "finite"),
    (dict(value=True), "finite"),
    (dict(metric=None), "metric name"),
    (dict(status="weird"), "status"),
    (dict(seed=1.5), "seed"),
])
def test_bad_rows_are_refused_and_nothing_is_written(tmp_path, bad, message):
    led = Ledger(str(tmp_path / "ledger"))
    with pytest.raises(EvalError, match=message):
        led.append([rec(), rec(**bad)])
    assert led.parts() == []


@pytest.mark.parametrize("bad", ["0.5", b"1", 1j, float("inf"), 10**400, None, [0.5]],
                         ids=["str", "bytes", "complex", "inf", "huge_int", "none", "list"])
def test_values_that_are_not_finite_numbers_are_refused(tmp_path, bad):
    led = Ledger(str(tmp_path / "ledger"))
    with pytest.raises(EvalError, match="finite number"):
        led.append([rec(value=bad)])
    assert led.parts() == []


def test_numpy_and_torch_scalars_are_accepted_as_floats(tmp_path, repo):
    np = pytest.importorskip("numpy")
    from fractions import Fraction

    values = {"f32": np.float32(0.5), "i64": np.int64(3), "f64": np.float64(0.25), "zero_d": np.array(0.75),
              "frac": Fraction(1, 4), "int": 2}
    try:
        import torch

        values.update(t0=torch.tensor(0.5), t1=torch.tensor([1.5]))
    except ImportError:
        pass
    led = Ledger(str(tmp_path / "ledger"))
    led.append([rec(metric=k, value=v) for k, v in values.items()])
    got = {r.metric: r.value for r in led.records()}
    assert got == {k: float(v) for k, v in values.items()}
    assert all(type(v) is float for v in got.values())
    for bad in (np.bool_(True), np.array(False), np.float32("nan"), np.array([1.0, 2.0])):
        with pytest.raises(EvalError, match="finite number"):
            led.append([rec(value=bad)])

    # through the library, as a training loop would call it
    from conftest import write_safetensors_np

    path = os.path.join(repo.root, "m.safetensors")
    write_safetensors_np(path, {"w": np.ones(4, np.float32)})
    cid = repo.commit(path, message="m").commit.id
    r = repo.record_eval("HEAD", "train", {"acc": np.float32(0.5), "loss": np.array(1.25)})
    assert r.metrics == {"acc": 0.5, "loss": 1.25}
    assert {(x.commit, x.metric, x.value) for x in repo.ledger.records()} == {(cid, "acc", 0.5), (cid, "loss", 1.25)}


def _append_worker(folder: str, worker: int, appends: int, rows: int) -> None:
    led = Ledger(folder)
    for i in range(appends):
        led.append([rec(value=float(j), notes=f"{worker}/{i}/{j}") for j in range(rows)])


def _run_workers(folder: str, workers: int, appends: int, rows: int, during=None) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_worker, args=(folder, w, appends, rows)) for w in range(workers)]
    for p in procs:
        p.start()
    if during is not None:
        while any(p.is_alive() for p in procs):
            during()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0


def _expected(workers, appends, rows):
    return {f"{w}/{i}/{j}" for w in range(workers) for i in range(appends) for j in range(rows)}


def test_appends_from_several_processes_lose_nothing(tmp_path):
    folder = str(tmp_path / "ledger")
    _run_workers(folder, workers=4, appends=8, rows=3)
    led = Ledger(folder)
    notes = [r.notes for r in led.records()]
    assert len(notes) == 4 * 8 * 3
    assert set(notes) == _expected(4, 8, 3)
    assert len(led.parts()) == 4 * 8  # one part per append
    assert not [n for n in os.listdir(folder) if n.startswith(".tmp-")]


def test_compaction_while_processes_append_keeps_every_row(tmp_path):
    folder = str(tmp_path / "ledger")
    led = Ledger(folder)
    results = []

    def compact():
        try:
            results.append(led.compact())
        except LedgerError:  # pragma: no cover - only one compactor here
            raise
        # a reader in the middle of it all sees no row twice and loses none that were there
        seen = [r.row_id for r in led.records()]
        assert len(seen) == len(set(seen))

    _run_workers(folder, workers=3, appends=10, rows=2, during=compact)
    final = led.compact()
    rows = led.records()
    assert {r.notes for r in rows} == _expected(3, 10, 2)
    assert len(rows) == 3 * 10 * 2
    assert len(led.parts()) == 1 and final.rows == 60
    assert any(r.parts_merged for r in results + [final])


def test_compaction_merges_parts_and_drops_only_repeated_rows(tmp_path):
    led = Ledger(str(tmp_path / "ledger"))
    for i in range(5):
        led.append([rec(value=float(i)), rec(C2, value=float(-i))])
    # A crash between writing the merged part and removing the old ones leaves the same rows twice.
    first = led.parts()[0]
    shutil.copy(first, first.replace("part-", "part-zz-copy-"))
    assert len(led.records()) == 10  # readers already ignore the repeated rows
    r = led.compact()
    assert (r.parts_before, r.parts_merged, r.parts_after, r.rows, r.duplicates_dropped) == (6, 6, 1, 10, 2)
    expected = [float(i) for i in range(5)] + [-float(i) for i in range(5)]
    assert sorted(x.value for x in led.records()) == sorted(expected)
    again = led.compact()
    assert again.path is None and again.rows == 10  # nothing left to do


def test_compaction_refuses_while_a_live_process_holds_the_lock(tmp_path, repo):
    from mlvc import lockfile
    from mlvc.errors import LockBusyError

    led = repo.ledger
    led.append([rec()])
    led.append([rec()])
    lock = os.path.join(led.folder, ".compact.lock")
    with lockfile.locked(lock, "the ledger"):  # a live holder (another open file: its flock conflicts)
        with pytest.raises(LockBusyError, match="compact.lock") as e:
            led.compact(wait=0.05)
        assert exit_code_for(e.value) == 7
        res = CliRunner().invoke(cli, ["-C", repo.root, "ledger", "compact"])
        assert res.exit_code == 7 and "try again when it has finished" in res.output
        assert len(led.parts()) == 2
    res = CliRunner().invoke(cli, ["-C", repo.root, "ledger", "compact"])
    assert res.exit_code == 0, res.output
    assert "Merged 2 part(s) into 1: 2 row(s) kept" in res.output
    assert len(led.parts()) == 1 and len(led.records()) == 2 and led.verify() == []


def test_a_dead_compactions_lock_is_cleared(tmp_path):
    led = Ledger(str(tmp_path / "ledger"))
    led.append([rec()])
    led.append([rec()])
    open(os.path.join(led.folder, ".compact.lock"), "w").close()  # left by a killed compaction: no flock
    r = led.compact()
    assert r.parts_after == 1 and len(led.records()) == 2
    assert not os.path.exists(os.path.join(led.folder, ".compact.lock"))


def test_a_damaged_part_is_reported(tmp_path):
    led = Ledger(str(tmp_path / "ledger"))
    led.append([rec()])
    with open(os.path.join(led.folder, "part-broken.parquet"), "wb") as f:
        f.write(b"not parquet at all")
    with pytest.raises(LedgerError, match="part-broken.parquet is damaged: it is not a readable Parquet") as e:
        led.records()
    assert exit_code_for(e.value) == 13 and "mlvc fsck" in str(e.value)
    assert [(os.path.basename(p.path), p.kind) for p in led.verify()] == [("part-broken.parquet", "damaged")]


def test_the_folder_reads_as_one_dataset_with_pyarrow(tmp_path):
    import pyarrow.dataset as ds

    led = Ledger(str(tmp_path / "ledger"))
    led.append([rec(value=1.0)])
    led.append([rec(value=2.0)])
    open(os.path.join(led.folder, ".tmp-half-written"), "wb").close()  # what a crashed writer leaves
    table = ds.dataset(led.folder, format="parquet").to_table()
    assert sorted(table.column("value").to_pylist()) == [1.0, 2.0]


def test_readable_by_pandas_and_duckdb(tmp_path):
    pd = pytest.importorskip("pandas")
    led = Ledger(str(tmp_path / "ledger"))
    led.append([rec(value=1.0), rec(C2, value=3.0)])
    led.append([rec(value=2.0)])
    df = pd.read_parquet(led.folder)
    assert sorted(df["value"]) == [1.0, 2.0, 3.0]
    duckdb = pytest.importorskip("duckdb")
    got = duckdb.sql(f"SELECT commit, max(value) FROM read_parquet('{led.folder}/*.parquet') "
                     "GROUP BY commit ORDER BY commit").fetchall()
    assert got == [(C1, 2.0), (C2, 3.0)]


def test_mlvc_help_does_not_import_pyarrow():
    code = ("import sys; from click.testing import CliRunner; from mlvc.cli import cli; "
            "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0; "
            "r = CliRunner().invoke(cli, ['eval', '--help']); assert r.exit_code == 0; "
            "heavy = [m for m in ('pyarrow', 'torch', 'matplotlib') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
