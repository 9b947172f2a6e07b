"""Tasks, eval run/record, the effect table and compare (library and CLI)."""

from __future__ import annotations

import json
import os
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_repo, write_safetensors_np
from mlvc.cli import cli
from mlvc.errors import ConfigError, EvalError
from mlvc.ops.evals import IMPROVED, REGRESSED, UNCHANGED
from mlvc.repo import Repo

# An evaluator: the mean of tensor "w" in the checkpoint, and 1 - mean as a loss, written to {output}.
MEAN_EVAL = ("import glob, json, sys; from safetensors.numpy import load_file; "
             "t = load_file(glob.glob(sys.argv[1] + '/**/*.safetensors', recursive=True)[0]); "
             "m = float(t['w'].astype('float64').mean()); "
             "json.dump({'mean': m, 'loss': 1 - m}, open(sys.argv[2], 'w'))")


def toml_list(items) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def write_tasks(repo: Repo, text: str, where: str = "mlvc.toml") -> None:
    path = os.path.join(repo.root, where) if where == "mlvc.toml" else os.path.join(repo.dir, "config.toml")
    mode = "w" if where == "mlvc.toml" else "a"
    with open(path, mode, encoding="utf-8") as f:
        f.write(textwrap.dedent(text))


def commit_means(repo: Repo, means: list[float]) -> list[str]:
    """One commit per value: model/model.safetensors whose tensor "w" has that mean. Oldest first."""
    os.makedirs(repo.abs_path("model"), exist_ok=True)
    ids = []
    for i, m in enumerate(means):
        write_safetensors_np(repo.abs_path("model/model.safetensors"),
                             {"w": np.full((4, 4), m, dtype=np.float32), "b": np.zeros(3, dtype=np.float32)})
        ids.append(repo.commit(message=f"step {i}", paths=[repo.abs_path("model")],
                               allow_empty=True).commit.id)
    return ids


def run(repo: Repo, *args):
    return CliRunner().invoke(cli, ["-C", repo.root, *args])


@pytest.fixture
def evrepo(tmp_path):
    repo = make_repo(tmp_path / "repo")
    ids = commit_means(repo, [0.25, 0.5, 0.5])
    write_tasks(repo, f"""
        [tasks.mean]
        command = {toml_list(["{python}", "-c", MEAN_EVAL, "{checkpoint}", "{output}"])}
        timeout = 60
        metrics = {{ mean = "higher", loss = {{ direction = "lower", tolerance = 0.01 }} }}
    """)
    return Repo(repo.root), ids


# -- configuration -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("body, message", [
    ('metrics = { a = "higher" }', "`command` is missing"),
    ('command = ["x", "{checkpoint}"]', "`metrics` is missing"),
    ('command = ["x"]\nmetrics = { a = "higher" }', "never mentions {checkpoint}"),
    ('command = ["x", "{checkpoint}"]\nmetrics = { a = "up" }', 'direction must be "higher" or "lower"'),
    ('command = ["x", "{checkpoint}"]\nmetrics = { a = { direction = "lower", tolerance = -1 } }', "tolerance"),
    ('command = ["x", "{checkpoint}"]\nmetrics = { a = "higher" }\ntimeout = 0', "timeout"),
    ('command = ["x", "{checkpoint}"]\nmetrics = { a = "higher" }\nretries = 3', "unknown key(s) retries"),
    ('command = ["x", "{checkpoint}", "{seed}"]\nmetrics = { a = "higher" }', "sets no seed"),
    ('command = "x \'{checkpoint}"\nmetrics = { a = "higher" }', "cannot split"),
    ('command = []\nmetrics = { a = "higher" }', "non-empty list"),
])
def test_bad_task_configs_get_clear_errors(repo, body, message):
    write_tasks(repo, "[tasks.t]\n" + body + "\n")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        repo.tasks()
    assert "mlvc.toml: [tasks.t]" in str(e.value)
    res = run(repo, "eval", "tasks")
    assert res.exit_code == 11 and "[tasks.t]" in res.output


def test_local_config_overrides_the_project_file_whole(repo):
    write_tasks(repo, """
        [tasks.a]
        command = "shared {checkpoint}"
        metrics = { x = "higher" }
        [tasks.b]
        command = ["only-shared", "{checkpoint}"]
        metrics = { y = "lower" }
    """)
    write_tasks(repo, """
        [tasks.a]
        command = ["local", "{checkpoint}"]
        metrics = { z = { direction = "lower", tolerance = 0.5 } }
    """, where="config")
    tasks = Repo(repo.root).tasks()
    assert tasks["a"].command == ["local", "{checkpoint}"] and list(tasks["a"].metrics) == ["z"]
    assert tasks["a"].metrics["z"].tolerance == 0.5 and tasks["a"].source.endswith("config.toml")
    assert tasks["b"].command == ["only-shared", "{checkpoint}"] and tasks["b"].source.endswith("mlvc.toml")
    assert tasks["a"].spec_hash != tasks["b"].spec_hash


def test_a_string_command_is_split_before_placeholders_are_filled(repo):
    write_tasks(repo, """
        [tasks.t]
        command = "eval.py --ckpt {checkpoint} --out={output} 'a b'"
        metrics = { x = "higher" }
    """)
    t = repo.tasks()["t"]
    argv = t.argv({"checkpoint": "/p with space/$(rm -rf ~)", "output": "/o;x", "commit": "", "task": "t",
                   "seed": "", "python": "py"})
    assert argv == ["eval.py", "--ckpt", "/p with space/$(rm -rf ~)", "--out=/o;x", "a b"]


# -- eval run ----------------------------------------------------------------------------------------------
def test_eval_run_records_the_evaluators_metrics(evrepo):
    repo, ids = evrepo
    seen = []
    result = repo.eval_run(ids[:2], on_outcome=seen.append)
    assert [(o.commit, o.status) for o in result.outcomes] == [(ids[0], "ok"), (ids[1], "ok")]
    assert seen == result.outcomes
    rows = repo.ledger.records()
    got = {(r.commit, r.metric): (r.value, r.higher_is_better) for r in rows}
    assert got == {(ids[0], "mean"): (0.25, True), (ids[0], "loss"): (0.75, False),
                   (ids[1], "mean"): (0.5, True), (ids[1], "loss"): (0.5, False)}
    task = repo.tasks()["mean"]
    assert {r.spec_hash for r in rows} == {task.spec_hash}
    assert json.loads(rows[0].spec)["command"][0] == "{python}"
    assert all(r.status == "ok" and r.source == "run" for r in rows)
    assert not os.listdir(os.path.join(repo.dir, "tmp"))  # the temporary checkouts are gone


def test_already_recorded_work_is_skipped_unless_forced(evrepo):
    repo, ids = evrepo
    assert run(repo, "eval", "run", ids[0]).exit_code == 0
    n = len(repo.ledger.records())
    res = run(repo, "eval", "run", ids[0], "HEAD")
    assert res.exit_code == 0, res.output
    assert "skipped" in res.output and "already in the ledger" in res.output
    assert len(repo.ledger.records()) == n + 2  # only HEAD ran
    res = run(repo, "eval", "run", "--json", ids[0], "HEAD")
    assert [o["status"] for o in json.loads(res.output)["outcomes"]] == ["skipped", "skipped"]
    res = run(repo, "eval", "run", "--force", ids[0])
    assert res.exit_code == 0 and len(repo.ledger.records()) == n + 4
    # a changed command is another spec: not done yet
    write_tasks(repo, """
        [tasks.mean]
        command = {cmd}
        metrics = {{ mean = "higher", loss = "lower" }}
        env = {{ EXTRA = "1" }}
    """.format(cmd=toml_list(["{python}", "-c", MEAN_EVAL, "{checkpoint}", "{output}"])), where="config")
    assert [o.status for o in Repo(repo.root).eval_run([ids[0]]).outcomes] == ["ok"]


CRASH = "import sys; sys.stderr.write('loading...\\nValueError: bad weights\\n'); sys.exit(3)"
HANG = "import sys, time; sys.stderr.write('starting'); sys.stderr.flush(); time.sleep(120)"


def test_failing_and_timing_out_evaluators_are_recorded_not_dropped(evrepo):
    repo, ids = evrepo
    crash = toml_list(["{python}", "-c", CRASH, "{checkpoint}"])
    hang = toml_list(["{python}", "-c", HANG, "{checkpoint}"])
    write_tasks(repo, f"""
        [tasks.crash]
        command = {crash}
        metrics = {{ acc = "higher" }}
        [tasks.hang]
        command = {hang}
        timeout = 1
        metrics = {{ acc = "higher" }}
    """, where="config")
    repo = Repo(repo.root)
    res = run(repo, "eval", "run", "HEAD")
    assert res.exit_code == 15, res.output
    assert "2 evaluation(s) did not succeed" in res.output and "ValueError: bad weights" in res.output
    by_task = {r.task: r for r in repo.ledger.records() if r.status != "ok"}
    crash, hang = by_task["crash"], by_task["hang"]
    assert (crash.status, crash.error, crash.metric, crash.value) == ("failed", "the evaluator exited with code 3",
                                                                      None, None)
    assert crash.stderr_tail.endswith("ValueError: bad weights\n") and crash.commit == ids[2]
    assert hang.status == "timeout" and "timed out after 1 s" in hang.error and hang.stderr_tail == "starting"
    assert {r.metric for r in repo.ledger.records() if r.task == "mean"} == {"mean", "loss"}  # the good task ran
    # the failures show in the effect table, with their reasons in --json
    table = repo.eval_show()
    cell = table.rows[0].cells["crash/acc"]
    assert (cell.status, cell.value) == ("failed", None) and "bad weights" in cell.stderr_tail
    assert table.rows[0].cells["hang/acc"].status == "timeout"
    assert "FAILED" in run(repo, "eval", "show").output and "TIMEOUT" in run(repo, "eval", "show").output
    # failures are not "done": the next run tries them again, but not the task that succeeded
    outcomes = {o.task: o.status for o in repo.eval_run(["HEAD"], tasks=["crash", "mean"]).outcomes}
    assert outcomes == {"crash": "failed", "mean": "skipped"}


@pytest.mark.parametrize("code, message", [
    ("print('not json')", "standard output is not JSON"),
    ("import json; print(json.dumps({'mean': 'high'}))", "not a finite number"),
    ("import json; print(json.dumps({'other': 1}))", "lacks the configured metric(s) mean"),
    ("import json; print(json.dumps([1, 2]))", "must be a JSON object"),
])
def test_unusable_output_is_a_failure(repo, code, message):
    commit_means(repo, [1.0])
    write_tasks(repo, f"""
        [tasks.t]
        command = {toml_list(["{python}", "-c", code, "{checkpoint}"])}
        metrics = {{ mean = "higher" }}
    """)
    (outcome,) = Repo(repo.root).eval_run().outcomes
    assert outcome.status == "failed" and message in outcome.error


NOTES_EVAL = "import json, sys; print(json.dumps({'metrics': {'n': len(sys.argv[1:])}, 'notes': sys.argv[2]}))"
ARGV_EVAL = ("import json, sys; json.dump({'argc': len(sys.argv), 'quoted': int('$(touch' in sys.argv[1])}, "
             "open(sys.argv[2], 'w'))")


def test_stdout_json_with_notes_and_no_output_file(repo):
    ids = commit_means(repo, [1.0])
    write_tasks(repo, f"""
        [tasks.t]
        command = {toml_list(["{python}", "-c", NOTES_EVAL, "{checkpoint}", "{commit}"])}
        metrics = {{ n = "higher" }}
    """)
    Repo(repo.root).eval_run()
    (r,) = repo.ledger.records()
    assert (r.value, r.notes) == (2.0, ids[0])


def test_placeholders_never_reach_a_shell(tmp_path):
    repo = make_repo(tmp_path / "it's a $(touch PWNED) repo")
    commit_means(repo, [1.0])
    write_tasks(repo, f"""
        [tasks.t]
        command = {toml_list(["{python}", "-c", ARGV_EVAL, "{checkpoint}", "{output}"])}
        metrics = {{ argc = "higher" }}
    """)
    (o,) = Repo(repo.root).eval_run().outcomes
    assert o.status == "ok" and o.metrics == {"argc": 3.0, "quoted": 1.0}
    for folder in (tmp_path, repo.root, os.getcwd()):
        assert "PWNED" not in os.listdir(folder)


def test_eval_run_needs_tasks_and_known_names(evrepo, tmp_path):
    repo = make_repo(tmp_path / "bare")
    commit_means(repo, [1.0])
    with pytest.raises(EvalError, match="no evaluation tasks are configured"):
        repo.eval_run()
    evr, _ = evrepo
    res = run(evr, "eval", "run", "--task", "nope")
    assert res.exit_code == 14 and "no task named 'nope' (configured: mean)" in res.output
    assert run(evr, "eval", "run", "no-such-rev").exit_code == 4


# -- eval record -------------------------------------------------------------------------------------------
def test_record_eval_library_and_cli(evrepo):
    repo, ids = evrepo
    r = repo.record_eval(ids[0], "mean", {"mean": 0.3}, notes="from the training loop", seed=1)
    assert r.commit == ids[0]
    res = run(repo, "eval", "record", "HEAD~1", "--task", "nb", "acc=0.9", "ppl=12", "--lower", "ppl", "--higher",
              "acc", "--dataset", "val", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["metrics"] == {"acc": 0.9, "ppl": 12.0}
    rows = {(x.task, x.metric): x for x in repo.ledger.records()}
    assert rows[("mean", "mean")].higher_is_better is True  # direction from the task's configuration
    assert rows[("mean", "mean")].source == "record" and rows[("mean", "mean")].seed == 1
    assert rows[("nb", "ppl")].higher_is_better is False and rows[("nb", "acc")].dataset == "val"
    assert rows[("nb", "acc")].commit == ids[1]
    # recorded results are not the configured command's work: eval run still runs it
    assert [o.status for o in repo.eval_run([ids[0]]).outcomes] == ["ok"]
    assert run(repo, "eval", "record", "HEAD", "--task", "x", "acc=high").exit_code == 2
    assert run(repo, "eval", "record", "HEAD", "--task", "x", "acc=nan").exit_code == 14
    assert run(repo, "eval", "record", "HEAD", "--task", "x", "a=1", "--higher", "a", "--lower", "a").exit_code == 2


# -- the effect table --------------------------------------------------------------------------------------
@pytest.fixture
def history(tmp_path):
    """Five commits c0..c4 with hand-chosen results; c2 has no results for 'acc'."""
    repo = make_repo(tmp_path / "repo")
    ids = commit_means(repo, [0.0, 1.0, 2.0, 3.0, 4.0])
    write_tasks(repo, """
        [tasks.cls]
        command = ["x", "{checkpoint}"]
        metrics = { acc = { direction = "higher", tolerance = 0.005 }, loss = "lower" }
    """)
    repo = Repo(repo.root)
    values = {0: {"acc": 0.50, "loss": 2.0}, 1: {"acc": 0.60, "loss": 2.5}, 2: {"loss": 1.5},
              3: {"acc": 0.603, "loss": 1.5}, 4: {"acc": 0.40, "loss": 1.0}}
    for i, metrics in values.items():
        repo.record_eval(ids[i], "cls", metrics)
    repo.record_eval(ids[1], "cls", {"acc": 0.55})  # newer result for c1 wins over 0.60
    repo.record_eval(ids[4], "other", {"score": 7.0})  # no direction known
    return repo, ids


def test_effect_table_deltas_match_hand_computed_values(history):
    repo, ids = history
    t = repo.eval_show()
    assert [c.key for c in t.columns] == ["cls/acc", "cls/loss", "other/score"]
    rows = {r.commit: r.cells for r in t.rows}
    assert [r.commit for r in t.rows] == ids[::-1]
    acc = {i: rows[ids[i]]["cls/acc"] for i in range(5)}
    loss = {i: rows[ids[i]]["cls/loss"] for i in range(5)}
    # c0: no parent, no change
    assert (acc[0].value, acc[0].delta, acc[0].effect) == (0.5, None, None)
    # c1: acc 0.50 -> 0.55 (newest record) = +0.05, +10 %, improved; loss 2.0 -> 2.5 = +0.5, +25 %, regressed
    assert acc[1].value == 0.55 and acc[1].base_commit == ids[0]
    assert acc[1].delta == pytest.approx(0.05) and acc[1].rel_delta == pytest.approx(0.1) and acc[1].effect == IMPROVED
    assert loss[1].delta == pytest.approx(0.5) and loss[1].rel_delta == pytest.approx(0.25)
    assert loss[1].effect == REGRESSED
    # c2: no acc; loss 2.5 -> 1.5 = -1.0, -40 %, improved (lower is better)
    assert acc[2].value is None and acc[2].status == "missing"
    assert loss[2].delta == pytest.approx(-1.0) and loss[2].rel_delta == pytest.approx(-0.4)
    assert loss[2].effect == IMPROVED
    # c3: acc against c1 (c2 has none): 0.55 -> 0.603 = +0.053 improved; loss 1.5 -> 1.5 unchanged
    assert acc[3].base_commit == ids[1] and acc[3].delta == pytest.approx(0.053) and acc[3].effect == IMPROVED
    assert (loss[3].delta, loss[3].effect) == (0.0, UNCHANGED)
    # c4: acc 0.603 -> 0.40 = -0.203, -33.66 %, regressed; loss 1.5 -> 1.0 improved
    assert acc[4].delta == pytest.approx(-0.203) and acc[4].rel_delta == pytest.approx(-0.203 / 0.603)
    assert acc[4].effect == REGRESSED and loss[4].effect == IMPROVED
    score = rows[ids[4]]["other/score"]
    assert (score.value, score.delta, score.effect) == (7.0, None, None)


def test_tolerance_turns_small_changes_into_unchanged(history):
    repo, ids = history
    repo.record_eval(ids[4], "cls", {"acc": 0.607})  # 0.603 -> 0.607: +0.004 <= 0.005
    cell = {r.commit: r.cells for r in repo.eval_show().rows}[ids[4]]["cls/acc"]
    assert cell.delta == pytest.approx(0.004) and cell.effect == UNCHANGED


def test_eval_show_text_json_csv_and_ranges(history):
    repo, ids = history
    res = run(repo, "eval", "show")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    # headers: the task (once over its columns) over the metric; numbers: 4 significant digits, changes signed
    assert lines[0].split() == ["commit", "message", "cls", "other"]
    assert lines[1].split() == ["acc", "loss", "score"]
    c4 = next(line for line in lines if line.startswith(ids[4][:12]))
    assert "0.4 (-0.203 ✗)" in c4 and "1 (-0.5 ✓)" in c4 and "7" in c4
    c3 = next(line for line in lines if line.startswith(ids[3][:12]))
    assert "0.603 (+0.053 ✓)" in c3 and "1.5 (±0 =)" in c3
    data = json.loads(run(repo, "eval", "show", "--json").output)
    assert data["rows"][0]["cells"]["cls/acc"]["delta"] == pytest.approx(-0.203)
    assert data["columns"][0] == {"task": "cls", "metric": "acc", "higher_is_better": True, "tolerance": 0.005,
                                  "rel_tolerance": 0.0, "direction_from": "config", "key": "cls/acc"}
    csv_lines = run(repo, "eval", "show", "--csv").output.splitlines()
    assert csv_lines[0].startswith("commit,parent,time,message,cls/acc,cls/acc:delta,cls/acc:effect")
    assert csv_lines[1].split(",")[:1] == [ids[4]] and ",regressed," in csv_lines[1]
    ranged = json.loads(run(repo, "eval", "show", f"{ids[1]}..{ids[3]}", "--json").output)
    assert [r["commit"] for r in ranged["rows"]] == [ids[3], ids[2]]
    assert ranged["rows"][0]["cells"]["cls/acc"]["base_commit"] == ids[1]  # outside the range, still the base
    only = json.loads(run(repo, "eval", "show", "--task", "other", "--json").output)
    assert [c["key"] for c in only["columns"]] == ["other/score"]


def test_compare_two_commits(history):
    repo, ids = history
    c = repo.eval_compare(ids[0], ids[4])
    rows = {(r.task, r.metric): r for r in c.rows}
    acc, loss, score = rows[("cls", "acc")], rows[("cls", "loss")], rows[("other", "score")]
    assert (acc.a, acc.b) == (0.5, 0.4) and acc.delta == pytest.approx(-0.1) and acc.rel_delta == pytest.approx(-0.2)
    assert acc.effect == REGRESSED
    assert (loss.a, loss.b, loss.delta, loss.rel_delta, loss.effect) == (2.0, 1.0, -1.0, -0.5, IMPROVED)
    assert (score.a, score.b, score.delta) == (None, 7.0, None)
    res = run(repo, "eval", "compare", ids[0][:10], "HEAD")
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("cls") and " loss " in x)
    assert line.split() == ["cls", "loss", "lower", "2", "1", "-1", "-50%", "✓", "improved"]
    assert json.loads(run(repo, "eval", "compare", "HEAD~1", "HEAD", "--json").output)["rows"][0]["delta"] == \
        pytest.approx(0.4 - 0.603)
    empty = make_repo(repo.root + "-2")
    commit_means(empty, [1.0, 2.0])
    res = run(empty, "eval", "compare", "HEAD~1", "HEAD")
    assert res.exit_code == 14 and "has recorded results" in res.output
