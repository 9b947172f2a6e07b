"""`mlvc check`, the CI regression gate: exit codes, tolerance edges, missing data, the merge-base baseline,
JUnit XML and Markdown output, --run, and that it works without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_repo
from mlvc.cli import cli
from mlvc.errors import (
    EXIT_CODES,
    BisectError,
    CheckMissingDataError,
    CheckRegressedError,
    ConfigError,
    EvalError,
)
from mlvc.ledger import STATUS_FAILED, Record
from mlvc.metricrules import MetricRule, verdict
from mlvc.ops import check as check_mod
from mlvc.repo import Repo

REGRESSED = EXIT_CODES[CheckRegressedError]
MISSING = EXIT_CODES[CheckMissingDataError]

# An evaluator for --run: the mean of tensor "w" as "acc"; appends one line to CALLS so tests count runs.
MEAN_EVAL = ("import glob, json, os, sys; from safetensors.numpy import load_file; "
             "t = load_file(glob.glob(sys.argv[1] + '/**/*.safetensors', recursive=True)[0]); "
             "open(os.environ['CALLS'], 'a').write(sys.argv[1] + '\\n'); "
             "json.dump({'acc': float(t['w'].astype('float64').mean())}, open(sys.argv[2], 'w'))")


def commit(repo: Repo, value: float, message: str, branch: str | None = None) -> str:
    """A commit whose weights `w` all equal `value` (from memory; on `branch` without switching)."""
    weights = {"w": np.full((4, 4), value, dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}
    return repo.commit(weights, message=message, branch=branch, allow_empty=True).commit.id


def record(repo: Repo, cid: str, task: str = "acc", higher: bool | None = True, **metrics: float) -> None:
    repo.record_eval(cid, task, metrics, higher_is_better={m: higher for m in metrics} if higher is not None else None)


def run(repo: Repo, *args: str, env: dict[str, str] | None = None):
    return CliRunner(env=env).invoke(cli, ["-C", repo.root, *args], catch_exceptions=False)


def write_toml(repo: Repo, text: str) -> None:
    with open(os.path.join(repo.root, "mlvc.toml"), "w", encoding="utf-8") as f:
        f.write(textwrap.dedent(text))


@pytest.fixture
def pair(tmp_path):
    """main: base -> new (two commits); the check compares new with base."""
    repo = make_repo(tmp_path / "repo")
    base = commit(repo, 0.5, "base")
    new = commit(repo, 0.6, "new")
    repo.create_branch("release", base)
    return repo, base, new


# -- exit codes --------------------------------------------------------------------------------------------------
def test_exit_codes_are_distinct_and_documented_in_ci_md():
    codes = {CheckRegressedError: 20, CheckMissingDataError: 21, BisectError: 22}
    for cls, code in codes.items():
        assert EXIT_CODES[cls] == code
        others = {c for k, c in EXIT_CODES.items() if k is not cls}
        assert code not in others
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "ci.md"), encoding="utf-8") as f:
        doc = f.read()
    for cls, code in codes.items():
        assert f"| {code} |" in doc and cls.__name__ in doc


def test_exit_0_when_nothing_regressed(pair):
    repo, base, new = pair
    record(repo, base, acc=0.80, f1=0.70)
    record(repo, new, acc=0.81, f1=0.70)
    r = run(repo, "check", "--against", "release")
    assert r.exit_code == 0, r.output
    assert "PASSED: 2 metric(s) compared, none regressed" in r.output
    assert "✓ improved" in r.output and "= unchanged" in r.output


def test_exit_20_when_a_metric_regressed(pair):
    repo, base, new = pair
    record(repo, base, acc=0.80, f1=0.70)
    record(repo, new, acc=0.75, f1=0.71)
    r = run(repo, "check", "--against", "release")
    assert r.exit_code == REGRESSED == 20, r.output
    assert "✗ REGRESSED" in r.output and "acc/acc" in r.output
    assert "1 metric(s) regressed" in r.output  # the one-line error on stderr (mixed in by the runner)


def test_exit_21_when_data_is_missing(pair):
    repo, base, new = pair
    record(repo, new, acc=0.80)  # nothing at the baseline
    r = run(repo, "check", "--against", "release")
    assert r.exit_code == MISSING == 21, r.output
    assert "no task/metric has a value at both" in r.output
    assert "skipped: no value at the baseline" in r.output


def test_regression_wins_over_missing_data(pair):
    repo, base, new = pair
    record(repo, base, acc=0.80)
    record(repo, new, acc=0.70)
    r = run(repo, "check", "--against", "release", "--require", "other/*")
    assert r.exit_code == REGRESSED, r.output
    res = repo.check("HEAD", "release", require=["other/*"])
    assert res.status == "regressed" and res.missing and res.regressions


def test_unknown_direction_passes_but_is_shown(pair):
    repo, base, new = pair
    record(repo, base, higher=None, score=1.0)
    record(repo, new, higher=None, score=2.0)
    r = run(repo, "check", "--against", "release")
    assert r.exit_code == 0, r.output
    assert "changed (direction unknown)" in r.output
    assert run(repo, "check", "--against", "release", "--lower", "acc/score").exit_code == REGRESSED


# -- tolerance arithmetic at the edges -------------------------------------------------------------------------------
# (base, new, flags, expected verdict): each tolerance exactly at its edge passes, one step past it fails; in both
# directions, absolute and relative (of the baseline), and a relative tolerance at a zero baseline allows nothing.
EDGES = [
    (0.50, 0.49, ["--abs-tol", "acc/acc=0.01"], "unchanged"),
    (0.50, 0.4899, ["--abs-tol", "acc/acc=0.01"], "regressed"),
    (0.50, 0.51, ["--abs-tol", "acc/acc=0.01"], "unchanged"),
    (0.50, 0.5101, ["--abs-tol", "acc/acc=0.01"], "improved"),
    (0.50, 0.51, ["--abs-tol", "0.01", "--lower", "acc/acc"], "unchanged"),
    (0.50, 0.5101, ["--abs-tol", "0.01", "--lower", "acc/acc"], "regressed"),
    (0.50, 0.4899, ["--abs-tol", "0.01", "--lower", "acc/acc"], "improved"),
    (2.00, 1.98, ["--rel-tol", "acc/acc=1%"], "unchanged"),
    (2.00, 1.9799, ["--rel-tol", "acc/acc=0.01"], "regressed"),
    (-2.00, -2.02, ["--rel-tol", "1%"], "unchanged"),  # relative to |base|
    (-2.00, -2.0201, ["--rel-tol", "1%"], "regressed"),
    (2.00, 2.02, ["--rel-tol", "acc/*=0.01", "--lower", "acc/acc"], "unchanged"),
    (2.00, 2.0201, ["--rel-tol", "acc/*=0.01", "--lower", "acc/acc"], "regressed"),
    (0.0, -1e-9, ["--rel-tol", "0.5"], "regressed"),  # no relative room at a zero baseline
    (0.0, -1e-9, ["--rel-tol", "0.5", "--abs-tol", "1e-9"], "unchanged"),
    (1.00, 0.98, ["--rel-tol", "0.01", "--abs-tol", "0.02"], "unchanged"),  # the looser of the two counts
    (1.00, 0.98, ["--rel-tol", "0.03", "--abs-tol", "0.001"], "unchanged"),
    (1.00, 0.9699, ["--rel-tol", "0.03", "--abs-tol", "0.001"], "regressed"),
    (0.7, 0.7, [], "unchanged"),
    (0.7, 0.7000001, [], "improved"),  # no tolerance: any change counts
]


@pytest.mark.parametrize("base_v, new_v, flags, expected", EDGES)
def test_tolerance_edges(pair, base_v, new_v, flags, expected):
    repo, base, new = pair
    record(repo, base, acc=base_v)
    record(repo, new, acc=new_v)
    r = run(repo, "check", "--against", "release", "--json", *flags)
    assert r.exit_code == (REGRESSED if expected == "regressed" else 0), r.output
    row = json.loads(r.stdout)["rows"][0]
    assert row["verdict"] == expected
    assert row["delta"] == pytest.approx(new_v - base_v)


def test_tolerances_from_mlvc_toml_and_flags_over_them(pair):
    repo, base, new = pair
    write_toml(repo, """
        [check.metrics]
        "acc/acc" = { direction = "higher", tolerance = 0.05 }
        "acc/loss" = { direction = "lower", rel_tolerance = 0.10 }
    """)
    record(repo, base, higher=None, acc=0.80, loss=1.00)
    record(repo, new, higher=None, acc=0.76, loss=1.10)
    res = repo.check("HEAD", "release")
    assert {r.metric: r.verdict for r in res.rows} == {"acc": "unchanged", "loss": "unchanged"}
    assert {r.metric: r.tolerance for r in res.rows} == {"acc": 0.05, "loss": pytest.approx(0.10)}
    res = repo.check("HEAD", "release", abs_tol={"acc/acc": 0.01}, rel_tol={"*": 0.01})
    assert {r.metric: r.verdict for r in res.rows} == {"acc": "regressed", "loss": "regressed"}


def test_remembered_direction_judges_recorded_metrics(pair):
    repo, base, new = pair
    record(repo, base, higher=False, loss=1.0)  # the first row fixes "lower is better"
    record(repo, new, higher=None, loss=1.5)
    res = repo.check("HEAD", "release")
    assert res.rows[0].rule.direction is False and res.status == "regressed"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=st.floats(-1e6, 1e6), step=st.floats(-1e3, 1e3), abs_tol=st.none() | st.floats(0, 10),
       rel_tol=st.none() | st.floats(0, 1), direction=st.sampled_from([True, False, None]))
def test_check_rows_judge_exactly_as_metricrules(pair, base, step, abs_tol, rel_tol, direction):
    """Whatever the values and rules, a row's verdict is metricrules.verdict of its rule (no second arithmetic)
    and the gate's status follows the rows."""
    repo, b, n = pair
    new = base + step
    records = [Record(b, "t", "m", base, None, status="ok"), Record(n, "t", "m", new, None, status="ok")]
    overrides = check_mod._overrides({"t/m": abs_tol} if abs_tol is not None else {},
                                     {"t/m": rel_tol} if rel_tol is not None else {},
                                     {"t/m": direction} if direction is not None else {}, [])
    [row] = check_mod._rows(repo, records, b, n, None, overrides, {}, set())
    rule = MetricRule(direction, abs_tol, rel_tol)
    assert row.verdict == verdict(rule, base, new).value
    assert row.tolerance == rule.tolerance(base)
    assert row.delta == new - base
    assert row.rel_delta == (None if base == 0 else (new - base) / abs(base))


# -- missing data -------------------------------------------------------------------------------------------------
def test_missing_baseline_data_for_a_required_metric(pair):
    repo, base, new = pair
    write_toml(repo, """
        [check.metrics]
        "acc/acc" = { direction = "higher", required = true }
    """)
    record(repo, base, f1=0.7)
    record(repo, new, acc=0.9, f1=0.7)
    res = repo.check("HEAD", "release")
    assert res.status == "missing"
    [row] = [r for r in res.rows if r.metric == "acc"]
    assert row.verdict == "missing" and row.base is None and row.new == 0.9
    assert "required, but no value at the baseline" in row.reason
    r = run(repo, "check", "--against", "release")
    assert r.exit_code == MISSING and "acc/acc: required, but no value at the baseline" in r.output


def test_required_task_absent_everywhere(pair):
    repo, base, new = pair
    record(repo, base, acc=0.8)
    record(repo, new, acc=0.8)
    res = repo.check("HEAD", "release", require=["mmlu/*"])
    assert res.status == "missing"
    assert sorted(r.reason.split("(")[0] for r in res.missing) == [
        "required, but the task has no value at the baseline ", "required, but the task has no value at the revision "]


def test_a_failed_evaluation_is_missing_data(pair):
    repo, base, new = pair
    record(repo, base, acc=0.8)
    repo.ledger.append([Record(new, "acc", None, None, status=STATUS_FAILED, error="the evaluator exited with code 1")])
    res = repo.check("HEAD", "release")
    assert res.status == "missing"
    assert "its evaluation at the revision failed: the evaluator exited with code 1" in res.missing[0].reason


def test_nothing_recorded_at_all(pair):
    repo, _, _ = pair
    r = run(repo, "check", "--against", "release")
    assert r.exit_code == MISSING
    assert "Nothing recorded for these commits." in r.output


def test_unknown_task_filter_and_bad_flags(pair):
    repo, base, new = pair
    record(repo, base, acc=0.8)
    record(repo, new, acc=0.8)
    with pytest.raises(EvalError, match="no task named 'nope'"):
        repo.check("HEAD", "release", tasks=["nope"])
    assert run(repo, "check", "--against", "release", "--abs-tol", "acc/acc=x").exit_code == 2
    assert run(repo, "check", "--against", "release", "--abs-tol", "acc/acc=-1").exit_code == EXIT_CODES[ConfigError]
    assert run(repo, "check", "--against", "release", "--rel-tol", "noslash=0.1").exit_code == EXIT_CODES[ConfigError]
    assert run(repo, "check", "--against", "nosuchbranch").exit_code == 4


# -- the baseline: merge base on a branched history --------------------------------------------------------------------
@pytest.fixture
def branched(tmp_path):
    """main: c0 - c1 - m2 - m3; feature branches from c1: f1 - f2. Ledger: c1 0.80, m3 0.95 (main improved a lot
    after the branch started), f2 0.82."""
    repo = make_repo(tmp_path / "repo")
    commit(repo, 0.1, "c0")
    c1 = commit(repo, 0.2, "c1")
    f1 = commit(repo, 0.3, "f1", branch="feature")
    f2 = commit(repo, 0.4, "f2", branch="feature")
    commit(repo, 0.5, "m2")
    m3 = commit(repo, 0.6, "m3")
    record(repo, c1, acc=0.80)
    record(repo, m3, acc=0.95)
    record(repo, f2, acc=0.82)
    return repo, {"c1": c1, "f1": f1, "f2": f2, "m3": m3}


def test_against_main_uses_the_merge_base(branched):
    repo, c = branched
    res = repo.check("feature", "main")
    assert res.base == c["c1"] and res.against_commit == c["m3"]
    assert "merge base of feature and main" in res.base_reason
    assert res.status == "passed" and res.rows[0].verdict == "improved"
    r = run(repo, "check", "feature", "--against", "main")
    assert r.exit_code == 0 and f"the merge base of feature and main ({c['c1'][:12]}" in r.output


def test_no_merge_base_compares_with_the_branch_as_it_is(branched):
    repo, c = branched
    res = repo.check("feature", "main", merge_base=False)
    assert res.base == c["m3"] and res.status == "regressed"
    assert run(repo, "check", "feature", "--against", "main", "--no-merge-base").exit_code == REGRESSED


def test_against_an_ancestor_is_that_ancestor(branched):
    repo, c = branched
    res = repo.check("feature", c["c1"])
    assert res.base == c["c1"] and "which feature descends from" in res.base_reason


def test_a_commit_already_on_the_target_is_compared_with_itself(branched):
    repo, c = branched
    res = repo.check(c["c1"], "main")
    assert res.base == c["c1"] and "already in main's history" in res.base_reason
    assert res.rows[0].verdict == "unchanged"


def test_unrelated_histories_have_no_merge_base(branched, tmp_path):
    repo, c = branched
    # a root commit on a new branch: no shared history with main
    from mlvc.objects import Commit
    from mlvc.refs import HEADS

    m = repo.read_commit(c["c1"]).manifest
    orphan = repo.write_commit(Commit(m, [], "t", "2026-01-01T00:00:00.000000Z", "orphan"))
    repo.refs.set_if_equals(HEADS + "orphan", None, orphan)
    r = run(repo, "check", "orphan", "--against", "main")
    assert r.exit_code == 4 and "no common history" in r.output


# -- JUnit XML and Markdown -----------------------------------------------------------------------------------------
def _mixed(repo: Repo, base: str, new: str) -> None:
    record(repo, base, acc=0.80, f1=0.70, odd=1.0)
    record(repo, new, acc=0.70, f1=0.72, **{"a<b&\"c|d": 1.0})
    record(repo, new, task="speed", higher=False, latency=5.0)


def test_junit_xml_parses_and_counts(pair, tmp_path):
    repo, base, new = pair
    _mixed(repo, base, new)
    out = tmp_path / "reports" / "check.xml"
    os.makedirs(out.parent)
    r = run(repo, "check", "--against", "release", "--junit", str(out))
    assert r.exit_code == REGRESSED
    root = ET.parse(out).getroot()
    assert root.tag == "testsuites"
    [suite] = root.findall("testsuite")
    cases = suite.findall("testcase")
    res = repo.check("HEAD", "release")
    assert len(cases) == len(res.rows) == int(suite.get("tests")) == int(root.get("tests"))
    want = {(f"mlvc.check.{r.task}", r.metric) for r in res.rows}
    assert {(c.get("classname"), c.get("name")) for c in cases} == want
    failures = [c for c in cases if c.find("failure") is not None]
    skipped = [c for c in cases if c.find("skipped") is not None]
    assert int(suite.get("failures")) == len(failures) == 1 and failures[0].get("name") == "acc"
    assert "regression" == failures[0].find("failure").get("type")
    assert "baseline 0.8, new 0.7" in failures[0].find("failure").get("message")
    assert int(suite.get("skipped")) == len(skipped) == 3  # odd (baseline only), the odd name, latency (new only)
    assert int(suite.get("errors")) == 0
    assert 'a<b&"c|d' in {c.get("name") for c in cases}  # escaped in the file, itself again once parsed
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["baseline"] == base and props["commit"] == new and props["status"] == "regressed"


def test_junit_errors_for_missing_data(pair, tmp_path):
    repo, base, new = pair
    record(repo, new, acc=0.8)
    out = tmp_path / "j.xml"
    assert run(repo, "check", "--against", "release", "--require", "acc/acc", "--junit", str(out)).exit_code == MISSING
    suite = ET.parse(out).getroot().find("testsuite")
    errors = [c for c in suite.findall("testcase") if c.find("error") is not None]
    assert int(suite.get("errors")) == len(errors) == 2  # the required metric, and "nothing compared"
    assert all(c.find("error").get("type") == "missing-data" for c in errors)


def test_markdown_file_and_github_step_summary(pair, tmp_path):
    repo, base, new = pair
    _mixed(repo, base, new)
    md, summary = tmp_path / "check.md", tmp_path / "summary.md"
    summary.write_text("earlier step\n", encoding="utf-8")
    env = {"GITHUB_STEP_SUMMARY": str(summary)}
    r = run(repo, "check", "--against", "release", "--markdown", str(md), env=env)
    assert r.exit_code == REGRESSED
    text = md.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0] == "### ❌ mlvc check: regression found"
    header = next(i for i, line in enumerate(lines) if line.startswith("| task |"))
    assert lines[header + 1].startswith("|---|")
    rows = [line for line in lines[header + 2:] if line.startswith("| ")]
    assert len(rows) == 5
    for row in rows:  # every row has the header's number of cells: the "|" in a name is escaped
        assert len([c for c in row.replace("\\|", "").split("|")[1:-1]]) == len(lines[header].split("|")[1:-1])
    assert "a&lt;b&amp;\"c\\|d" in text and "**✗ REGRESSED**" in text
    assert summary.read_text(encoding="utf-8") == "earlier step\n" + text.rstrip("\n") + "\n\n"
    run(repo, "check", "--against", "release", env=env)  # appended again, not overwritten
    assert summary.read_text(encoding="utf-8").count("### ❌ mlvc check") == 2
    run(repo, "check", "--against", "release", "--no-summary", env=env)
    assert summary.read_text(encoding="utf-8").count("### ❌ mlvc check") == 2


@pytest.mark.parametrize("values, heading", [((0.8, 0.8), "### ✅ mlvc check: passed"),
                                             ((None, 0.8), "### ⚠️ mlvc check: missing data")])
def test_markdown_headings(pair, values, heading):
    from mlvc.render.check import check_markdown

    repo, base, new = pair
    for cid, v in zip((base, new), values, strict=True):
        if v is not None:
            record(repo, cid, acc=v)
    assert check_markdown(repo.check("HEAD", "release")).splitlines()[0] == heading


def test_json_output(pair):
    repo, base, new = pair
    record(repo, base, acc=0.8)
    record(repo, new, acc=0.7)
    r = run(repo, "check", "--against", "release", "--json")
    assert r.exit_code == REGRESSED
    data = json.loads(r.stdout)
    assert data["status"] == "regressed" and data["regressions"] == ["acc/acc"]
    assert data["base"] == base and data["commit"] == new
    assert data["rows"][0]["rule"] == {"direction": "higher", "tolerance": None, "rel_tolerance": None,
                                       "required": False}


# -- --run: evaluating what is missing ------------------------------------------------------------------------------
def test_run_evaluates_only_what_is_missing(pair, tmp_path, monkeypatch):
    repo, base, new = pair
    calls = tmp_path / "calls"
    monkeypatch.setenv("CALLS", str(calls))
    write_toml(repo, f"""
        [tasks.acc]
        command = {json.dumps(["{python}", "-c", MEAN_EVAL, "{checkpoint}", "{output}"])}
        timeout = 60
        metrics = {{ acc = {{ direction = "higher", tolerance = 0.01 }} }}
    """)
    record(repo, new, acc=0.6)  # recorded by hand: not run again
    res = repo.check("HEAD", "release", run=True)
    assert calls.read_text().count("\n") == 1 and [o.commit for o in res.evaluated] == [base]
    assert res.rows[0].base == 0.5 and res.rows[0].new == pytest.approx(0.6) and res.status == "passed"
    r = run(repo, "check", "--against", "release", "--run")
    assert r.exit_code == 0 and calls.read_text().count("\n") == 1  # everything is in the ledger now


def test_run_with_a_failing_evaluator_is_missing_data(pair, tmp_path):
    repo, base, new = pair
    write_toml(repo, """
        [tasks.acc]
        command = ["{python}", "-c", "import sys; sys.exit(3)", "{checkpoint}"]
        metrics = { acc = "higher" }
    """)
    r = run(repo, "check", "--against", "release", "--run")
    assert r.exit_code == MISSING, r.output
    res = repo.check("HEAD", "release")
    assert {row.verdict for row in res.rows} == {"missing"}
    assert "exited with code 3" in res.rows[0].reason


def test_run_needs_configured_tasks(pair):
    repo, _, _ = pair
    with pytest.raises(EvalError, match="none is configured"):
        repo.check("HEAD", "release", run=True)


# -- without torch ----------------------------------------------------------------------------------------------------
def test_check_works_without_torch(pair, tmp_path):
    """A CI job that only compares ledger entries must not need torch: run the real CLI in a fresh interpreter
    where `import torch` fails, and check that it compares, renders every format and exits as it should."""
    repo, base, new = pair
    record(repo, base, acc=0.8)
    record(repo, new, acc=0.7)
    code = ("import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
            "from mlvc.cli import main\n"
            "sys.argv = ['mlvc'] + sys.argv[1:]\n"
            "try:\n    main()\n"
            "finally:\n    assert sys.modules['torch'] is None\n")
    junit = tmp_path / "j.xml"
    p = subprocess.run([sys.executable, "-c", code, "check", "--against", "release", "--junit", str(junit),
                        "--markdown", str(tmp_path / "m.md")], cwd=repo.root, capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"})
    assert p.returncode == REGRESSED, p.stderr
    assert "✗ REGRESSED" in p.stdout and "internal error" not in p.stderr
    assert ET.parse(junit).getroot().get("failures") == "1"
    probe = subprocess.run([sys.executable, "-c", "import sys; sys.modules['torch'] = None; import torch"],
                           capture_output=True, text=True)
    assert probe.returncode != 0 and "import of torch halted" in probe.stderr  # the wrapper does block torch


# -- the composite action and the documented workflow -----------------------------------------------------------------
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _action() -> dict:
    yaml = pytest.importorskip("yaml")
    with open(os.path.join(ROOT, "action.yml"), encoding="utf-8") as f:
        return yaml.safe_load(f)


def _run_action_step(inputs: dict[str, str], cwd, tmp_path) -> tuple[int, dict[str, str], str]:
    """Run the action's check step as GitHub would: `${{ inputs.X }}` filled into its env (nowhere else), the
    script run by bash with $GITHUB_OUTPUT; (exit status, outputs, stdout)."""
    import re

    action = _action()
    values = {k: str(v.get("default", "")) for k, v in action["inputs"].items()} | inputs
    [step] = [s for s in action["runs"]["steps"] if s.get("id") == "check"]
    assert "${{" not in step["run"]  # inputs never pasted into the script
    env = {k: re.sub(r"\$\{\{ inputs\.([\w-]+) \}\}", lambda m: values[m.group(1)], v) for k, v in step["env"].items()}
    out = tmp_path / "github_output"
    out.write_text("")
    bindir = tmp_path / "bin"  # `mlvc` as the installed entry point: this interpreter's
    bindir.mkdir(exist_ok=True)
    (bindir / "mlvc").write_text(f"#!/bin/sh\nexec {sys.executable} -m mlvc \"$@\"\n")
    (bindir / "mlvc").chmod(0o755)
    full = {k: v for k, v in os.environ.items() if k not in ("MLVC_REPO", "GITHUB_STEP_SUMMARY")}
    full |= env | {"GITHUB_OUTPUT": str(out), "PATH": f"{bindir}:{os.environ['PATH']}"}
    p = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=cwd, env=full, capture_output=True, text=True)
    outputs = dict(line.split("=", 1) for line in out.read_text().splitlines())
    return p.returncode, outputs, p.stdout + p.stderr


def test_composite_action_declares_what_docs_ci_md_uses():
    action = _action()
    assert action["runs"]["using"] == "composite"
    assert set(action["outputs"]) == {"status", "exit-code", "junit", "markdown"}
    yaml = pytest.importorskip("yaml")
    with open(os.path.join(ROOT, "docs", "ci.md"), encoding="utf-8") as f:
        doc = f.read()
    block = doc.split("# .github/workflows/model-check.yml\n", 1)[1].split("```", 1)[0]
    workflow = yaml.safe_load(block)
    steps = workflow["jobs"]["check"]["steps"]
    [uses] = [s for s in steps if s.get("id") == "check"]
    assert set(uses["with"]) <= set(action["inputs"])


def test_composite_action_passes_fails_and_reports(pair, tmp_path):
    repo, base, new = pair
    record(repo, base, acc=0.8)
    record(repo, new, acc=0.8)
    work = tmp_path / "workspace"
    work.mkdir()
    inputs = {"repository": repo.root, "against": "release", "install": ""}
    code, outputs, log = _run_action_step(inputs, work, tmp_path)
    assert code == 0, log
    assert outputs == {"status": "passed", "exit-code": "0", "junit": "mlvc-check.xml", "markdown": "mlvc-check.md"}
    assert ET.parse(work / "mlvc-check.xml").getroot().get("failures") == "0"  # relative to the workspace
    record(repo, new, acc=0.7)
    code, outputs, log = _run_action_step(inputs | {"args": "--abs-tol 0.05"}, work, tmp_path)
    assert code == 20 and outputs["status"] == "regressed", log
    code, outputs, log = _run_action_step(inputs | {"args": "--abs-tol 0.2"}, work, tmp_path)
    assert code == 0 and outputs["status"] == "passed", log  # the extra arguments reach mlvc check


def test_composite_action_missing_data_can_warn_instead(pair, tmp_path):
    repo, _, new = pair
    record(repo, new, acc=0.8)
    inputs = {"repository": repo.root, "against": "release", "install": "", "junit": "", "markdown": ""}
    code, outputs, _ = _run_action_step(inputs, tmp_path, tmp_path)
    assert code == 21 and outputs["status"] == "missing" and outputs["junit"] == ""
    code, outputs, log = _run_action_step(inputs | {"fail-on-missing": "false"}, tmp_path, tmp_path)
    assert code == 0 and outputs["status"] == "missing" and outputs["exit-code"] == "21"
    assert "::warning title=mlvc check::missing evaluation data" in log
    code, outputs, _ = _run_action_step(inputs | {"rev": "no-such-branch"}, tmp_path, tmp_path)
    assert code == 4 and outputs["status"] == "error"


def test_the_ci_example_loads_and_checks_its_arguments():
    """examples/ci_regression/run.py takes minutes on the real weights (docs/ci.md shows its output); here only
    that it imports the demo's tasks and refuses a history too short to bisect, before any work."""
    script = os.path.join(ROOT, "examples", "ci_regression", "run.py")
    p = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "--history N" in p.stdout, p.stderr
    p = subprocess.run([sys.executable, script, "--history", "1"], capture_output=True, text=True)
    assert p.returncode == 2 and "--history must be at least 2" in p.stderr
