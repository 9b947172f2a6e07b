"""A metric's direction is remembered (from the config or from the first row that gave one), used by eval show,
eval compare and the report, and a row contradicting it is refused with nothing written. Also: the effect table
fits 120 columns, and every ledger command takes --json."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import make_repo
from mlvc.cli import cli
from mlvc.errors import MetricDirectionError
from mlvc.ledger import Ledger, Record
from mlvc.ops.evals import IMPROVED, REGRESSED, UNCHANGED, Cell, Column, EffectRow, EffectTable
from mlvc.render.evals import cell_text, effect_table_text
from mlvc.repo import Repo
from test_eval import MEAN_EVAL, commit_means, toml_list, write_tasks

CID = "0" * 32


def run(repo: Repo, *args):
    return CliRunner().invoke(cli, ["-C", repo.root, *args])


def ledger_files(repo: Repo) -> list[str]:
    folder = repo.ledger.folder
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


@pytest.fixture
def hist(tmp_path):
    repo = make_repo(tmp_path / "repo")
    return Repo(repo.root), commit_means(repo, [0.0, 1.0, 2.0])


# -- remembered from the first row -------------------------------------------------------------------------------
def test_direction_given_once_is_remembered_by_show_compare_and_report(hist):
    repo, ids = hist
    repo.record_eval(ids[0], "train", {"loss": 2.0}, higher_is_better={"loss": False})
    repo.record_eval(ids[1], "train", {"loss": 1.5})  # no direction given: the remembered one is used
    res = run(repo, "eval", "record", ids[2], "--task", "train", "loss=1.8")
    assert res.exit_code == 0, res.output
    assert [r.higher_is_better for r in repo.ledger.records()] == [False, False, False]  # rows carry it
    assert repo.ledger.directions() == {("train", "loss"): False}

    table = repo.eval_show()
    col = table.columns[0]
    assert (col.higher_is_better, col.direction_from) == (False, "ledger")
    effects = [r.cells["train/loss"].effect for r in table.rows]
    assert effects == [REGRESSED, IMPROVED, None]  # newest first: 1.5 -> 1.8 worse, 2.0 -> 1.5 better
    text = run(repo, "eval", "show").output
    assert "direction unknown" not in text and "1.8 (+0.3 ✗)" in text and "1.5 (-0.5 ✓)" in text

    cmp = repo.eval_compare(ids[0], ids[2])
    assert (cmp.rows[0].higher_is_better, cmp.rows[0].effect, cmp.rows[0].direction_from) == \
        (False, IMPROVED, "ledger")
    line = run(repo, "eval", "compare", ids[0], ids[2]).output.splitlines()[-1]
    assert line.split()[:3] == ["train", "loss", "lower"] and line.endswith("✓ improved")

    pytest.importorskip("matplotlib")
    pytest.importorskip("jinja2")
    from mlvc.render.report import render_html

    page, _ = render_html(repo.report_data())
    assert "lower is better (remembered)" in page and "direction unknown" not in page
    assert "<td class='improved'>1.5 (-0.5 ✓)</td>" in page and "<td class='regressed'>1.8 (+0.3 ✗)</td>" in page


def test_direction_from_the_config_fills_recorded_rows_and_judges(hist):
    repo, ids = hist
    write_tasks(repo, """
        [tasks.train]
        command = ["x", "{checkpoint}"]
        metrics = { loss = { direction = "lower", rel_tolerance = 0.1 } }
        [check.metrics]
        "notes/length" = "higher"
    """)
    repo = Repo(repo.root)
    repo.record_eval(ids[0], "train", {"loss": 2.0})
    repo.record_eval(ids[1], "train", {"loss": 1.85})  # -7.5 %: within the 10 % relative tolerance
    repo.record_eval(ids[2], "train", {"loss": 1.5})  # -19 %: improved
    repo.record_eval(ids[2], "notes", {"length": 3.0})  # a [check.metrics] rule gives this one its direction
    assert {(r.task, r.higher_is_better) for r in repo.ledger.records()} == {("train", False), ("notes", True)}
    table = repo.eval_show()
    col = next(c for c in table.columns if c.key == "train/loss")
    assert (col.higher_is_better, col.rel_tolerance, col.direction_from) == (False, 0.1, "config")
    assert [r.cells["train/loss"].effect for r in table.rows] == [IMPROVED, UNCHANGED, None]
    assert run(repo, "eval", "tasks").output.count("loss (lower ±10%)") == 1


# -- contradictions are refused, nothing written ---------------------------------------------------------------------
def test_a_record_contradicting_the_remembered_direction_is_refused(hist):
    repo, ids = hist
    repo.record_eval(ids[0], "train", {"loss": 2.0, "acc": 0.5}, higher_is_better={"loss": False})
    before, rows = ledger_files(repo), len(repo.ledger.records())
    with pytest.raises(MetricDirectionError) as e:
        repo.record_eval(ids[1], "train", {"loss": 1.0, "acc": 0.6}, higher_is_better={"loss": True})
    assert "train/loss" in str(e.value) and "nothing was written" in str(e.value)
    res = run(repo, "eval", "record", ids[1], "--task", "train", "--higher", "loss", "loss=1.0", "acc=0.6")
    assert res.exit_code == 14 and "contradicts the ledger" in res.output
    assert ledger_files(repo) == before and len(repo.ledger.records()) == rows  # not even "acc" was written
    # the same direction again, or none, is fine; a first direction for "acc" is remembered from now on
    repo.record_eval(ids[1], "train", {"loss": 1.0, "acc": 0.6}, higher_is_better={"loss": False, "acc": True})
    assert repo.ledger.directions() == {("train", "loss"): False, ("train", "acc"): True}


def test_a_record_contradicting_the_config_is_refused(hist):
    repo, ids = hist
    write_tasks(repo, """
        [tasks.train]
        command = ["x", "{checkpoint}"]
        metrics = { loss = "lower" }
    """)
    repo = Repo(repo.root)
    with pytest.raises(MetricDirectionError, match="contradicts the configuration"):
        repo.record_eval(ids[0], "train", {"loss": 2.0}, higher_is_better={"loss": True})
    assert ledger_files(repo) == []


def test_eval_run_refuses_a_config_that_contradicts_the_ledger_before_running(hist, tmp_path):
    repo, ids = hist
    repo.record_eval(ids[0], "mean", {"mean": 0.0}, higher_is_better={"mean": False})
    marker = tmp_path / "ran"
    evaluator = MEAN_EVAL + f"; open({str(marker)!r}, 'w').close()"
    write_tasks(repo, f"""
        [tasks.mean]
        command = {toml_list(["{python}", "-c", evaluator, "{checkpoint}", "{output}"])}
        metrics = {{ mean = "higher", loss = "lower" }}
    """)
    repo = Repo(repo.root)
    before = ledger_files(repo)
    res = run(repo, "eval", "run", "HEAD")
    assert res.exit_code == 14, res.output
    assert "mean/mean" in res.output and "Fix the metric's direction in [tasks.mean]" in res.output
    assert not marker.exists() and ledger_files(repo) == before


def test_one_append_that_contradicts_itself_is_refused(tmp_path):
    ledger = Ledger(str(tmp_path / "ledger"))
    with pytest.raises(MetricDirectionError, match="another row of the same append"):
        ledger.append([Record(CID, "t", "m", 1.0, True), Record(CID, "t", "m", 2.0, False)])
    assert not os.path.exists(ledger.folder) or ledger.parts() == []


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.sampled_from([True, False, None])), min_size=1,
                max_size=8))
def test_any_sequence_of_appends_keeps_one_direction_per_metric(tmp_path_factory, steps):
    """Model: the first direction given for a metric wins; an append is refused iff it contradicts it."""
    ledger = Ledger(str(tmp_path_factory.mktemp("ledger")))
    model: dict[str, bool] = {}
    written = 0
    for metric, direction in steps:
        expected_ok = direction is None or model.get(metric, direction) == direction
        try:
            ledger.append([Record(CID, "t", metric, 1.0, direction)])
        except MetricDirectionError:
            assert not expected_ok
            continue
        assert expected_ok
        written += 1
        if direction is not None:
            model.setdefault(metric, direction)
    assert len(ledger.records()) == written
    assert ledger.directions() == {("t", m): d for m, d in model.items()}
    assert ledger.direction_conflicts() == []


def test_a_rival_that_establishes_the_direction_first_wins_the_race(tmp_path, monkeypatch):
    """Fault injection: another process appends the opposite direction between our unlocked check and our write;
    the check under the lock sees it, and our append is refused."""
    ledger = Ledger(str(tmp_path / "ledger"))
    original = Ledger.first_directions
    raced = []

    def racing(self, records=None):
        out = original(self, records)
        if not raced:
            raced.append(True)
            Ledger(self.folder).append([Record(CID, "t", "m", 1.0, False)])  # the rival takes the lock and writes
        return out

    monkeypatch.setattr(Ledger, "first_directions", racing)
    with pytest.raises(MetricDirectionError):
        ledger.append([Record(CID, "t", "m", 2.0, True)])
    monkeypatch.undo()
    assert [(r.value, r.higher_is_better) for r in ledger.records()] == [(1.0, False)]


# A writer process: waits for the start file, then appends one row establishing a direction; prints the outcome.
WRITER = """
import os, sys, time
import pyarrow.parquet  # imported before the start, so the writers race on the append itself
from mlvc.errors import MetricDirectionError
from mlvc.ledger import Ledger, Record
folder, direction, go = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
while not os.path.exists(go):
    time.sleep(0.001)
try:
    Ledger(folder).append([Record("0" * 32, "t", "m", float(direction), direction)])
    print("ok", direction)
except MetricDirectionError:
    print("refused", direction)
"""


def test_concurrent_processes_never_establish_opposite_directions(tmp_path):
    folder, go = str(tmp_path / "ledger"), tmp_path / "go"
    n = 4
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, folder, str(i % 2), str(go)], stdout=subprocess.PIPE,
                              text=True) for i in range(n)]
    time.sleep(0.5)  # let them start (an early one only shortens the race, it does not change what must hold)
    go.touch()
    outcomes = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out
        status, direction = out.split()
        outcomes.append((status, direction == "True"))
    ledger = Ledger(folder)
    (winner,) = set(ledger.directions().values())
    assert sorted(outcomes) == sorted([("ok", winner)] * (n // 2) + [("refused", not winner)] * (n // 2))
    assert ledger.direction_conflicts() == [] and len(ledger.records()) == n // 2


def test_merged_ledgers_keep_the_earliest_direction_and_list_conflicts(tmp_path):
    first, second = Ledger(str(tmp_path / "a")), Ledger(str(tmp_path / "b"))
    first.append([Record(CID, "t", "m", 1.0, True)])
    second.append([Record(CID, "t", "m", 2.0, False)])  # later, in another copy of the repository
    for part in second.parts():
        shutil.copy(part, first.folder)  # the copies' ledgers put together
    assert first.directions() == {("t", "m"): True}
    assert [r.value for r in first.direction_conflicts()] == [2.0]


# -- the effect table fits 120 columns ------------------------------------------------------------------------------
def _table(tasks: list[str], metrics: list[str], values: list[float | None], message: str) -> EffectTable:
    cols = [Column(t, m, True, 0.01) for t in tasks for m in metrics]
    rows = []
    for i, v in enumerate(values):
        cells = {}
        for j, c in enumerate(cols):
            if v is None:
                cells[c.key] = Cell(None, "timeout" if j % 2 else "missing")
            else:
                value = v * (j + 1)
                cells[c.key] = Cell(value, "ok", -value, CID, 2 * value, -2.0, [IMPROVED, REGRESSED, UNCHANGED][j % 3])
        rows.append(EffectRow((f"{i:x}" * 32)[:32], None, "2026-01-01T00:00:00Z", "a", message, cells))
    return EffectTable(cols, rows)


def test_twelve_tasks_by_three_metrics_fit_120_columns():
    t = _table([f"task-number-{i}" for i in range(12)], ["accuracy", "loss", "spearman"],
               [0.7841365, -1234567.891, 3.2e-05, None], "a long commit message " * 5)
    text = effect_table_text(t)
    lines = text.splitlines()
    assert max(len(line) for line in lines[:-1]) <= 120  # the legend is prose, the table is not
    for row in t.rows:  # nothing is lost: every cell's text is in the output
        for c in t.columns:
            assert cell_text(row.cells[c.key]) in text
    blocks = text.count("\ncommit ") + 1
    assert blocks > 1 and text.count("spearman") == 12  # each metric once; each task once per block it is in
    assert all(1 <= len(re.findall(rf"task-number-{i}(?!\d)", text)) <= blocks for i in range(12))
    assert "0.7841 (+1.568 ✓)" in text and "-1.235e+06 (-2.469e+06 ✓)" in text  # one format: 4 significant digits


def columns_of(line: str) -> int:
    """The terminal columns a line takes (wide characters count 2), as a terminal shows it."""
    wcwidth = pytest.importorskip("wcwidth")
    return max(wcwidth.wcswidth(line), len(line))


# names and messages: any letters, digits, punctuation and spaces (wide CJK ones included), tabs too
names = st.text(st.characters(categories=["L", "N", "P", "Zs"]), min_size=1, max_size=100)


@settings(max_examples=30, deadline=None)
@given(st.lists(names, min_size=1, max_size=15, unique=True), st.lists(names, min_size=1, max_size=4, unique=True),
       st.lists(st.none() | st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=4),
       st.text(st.characters(categories=["L", "N", "P", "Zs", "Cc", "Mn"]), max_size=200))
def test_any_effect_table_fits_120_columns(tasks, metrics, values, message):
    t = _table(tasks, metrics, values, message)
    text = effect_table_text(t)
    assert max(columns_of(line) for line in text.splitlines()[:-1]) <= 120


def test_wide_and_combining_characters_are_measured_by_columns():
    t = _table(["評価タスク" * 6, "e\u0301" * 40], ["精度" * 20, "loss"], [0.5], "モデルを更新した" * 10 + "\tend")
    text = effect_table_text(t)
    assert max(columns_of(line) for line in text.splitlines()[:-1]) <= 120
    assert "…" in text and "\t" not in text


# -- --json on every ledger command ------------------------------------------------------------------------------------
LEDGER_COMMANDS = [("eval", "run"), ("eval", "record"), ("eval", "show"), ("eval", "compare"), ("eval", "tasks"),
                   ("ledger", "compact"), ("report",)]


def test_every_ledger_command_has_json():
    import click

    for path in LEDGER_COMMANDS:
        cmd: click.Command = cli
        for name in path:
            assert isinstance(cmd, click.Group)
            cmd = cmd.commands[name]
        assert any("--json" in p.opts for p in cmd.params), path
    assert set(cli.commands["eval"].commands) == {p[1] for p in LEDGER_COMMANDS if p[0] == "eval"}


def test_every_ledger_command_prints_json(hist, tmp_path):
    repo, ids = hist
    write_tasks(repo, f"""
        [tasks.mean]
        command = {toml_list(["{python}", "-c", MEAN_EVAL, "{checkpoint}", "{output}"])}
        metrics = {{ mean = "higher", loss = {{ direction = "lower", tolerance = 0.01 }} }}
    """)
    calls = [["eval", "run", "HEAD~1", "HEAD"], ["eval", "record", "HEAD", "--task", "t", "x=1"], ["eval", "show"],
             ["eval", "compare", "HEAD~1", "HEAD"], ["eval", "tasks"], ["ledger", "compact"]]
    if all(_importable(m) for m in ("matplotlib", "jinja2")):
        calls.append(["report", "-o", str(tmp_path / "r.html")])
    for args in calls:
        res = run(repo, *args, "--json")
        assert res.exit_code == 0, (args, res.output)
        assert isinstance(json.loads(res.output), dict), args


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True
