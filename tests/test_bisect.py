"""`mlvc bisect`: the first bad commit on the first-parent history, found with about log2(n) evaluations
(counted at the evaluator), ledger values reused, across merge commits, by a metric or by a command's exit."""

from __future__ import annotations

import json
import math
import os
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from conftest import make_repo
from mlvc.cli import cli
from mlvc.errors import EXIT_CODES, BisectError, EvalError
from mlvc.ops.bisect import BAD, GOOD, SKIP, search
from mlvc.repo import Repo

# The evaluator of task "acc": the mean of tensor "w" as "acc"; every run appends a line to $CALLS.
MEAN_EVAL = ("import glob, json, os, sys; from safetensors.numpy import load_file; "
             "t = load_file(glob.glob(sys.argv[1] + '/**/*.safetensors', recursive=True)[0]); "
             "open(os.environ['CALLS'], 'a').write('call\\n'); "
             "json.dump({'acc': float(t['w'].astype('float64').mean())}, open(sys.argv[2], 'w'))")
# A `git bisect run`-style check: exit 1 when the mean of "w" is below 0.5; 125 (skip) when it is exactly 0.25.
EXIT_CHECK = ("import glob, os, sys; from safetensors.numpy import load_file; "
              "t = load_file(glob.glob(sys.argv[1] + '/**/*.safetensors', recursive=True)[0]); "
              "open(os.environ['CALLS'], 'a').write('call\\n'); m = float(t['w'].mean()); "
              "sys.exit(125 if m == 0.25 else (1 if m < 0.5 else 0))")


def calls(path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def commit(repo: Repo, value: float, message: str, branch: str | None = None) -> str:
    weights = {"w": np.full((4, 4), value, dtype=np.float32), "step": np.array([len(message)], dtype=np.int64)}
    return repo.commit(weights, message=message, branch=branch, allow_empty=True).commit.id


def history(repo: Repo, values: list[float]) -> list[str]:
    return [commit(repo, v, f"c{i}") for i, v in enumerate(values)]


@pytest.fixture
def counted(tmp_path, monkeypatch):
    """A repository with task "acc" configured (higher is better, tolerance 0.01) and $CALLS counting runs."""
    path = tmp_path / "calls"
    monkeypatch.setenv("CALLS", str(path))
    repo = make_repo(tmp_path / "repo")
    with open(os.path.join(repo.root, "mlvc.toml"), "w", encoding="utf-8") as f:
        f.write(textwrap.dedent(f"""
            [tasks.acc]
            command = {json.dumps(["{python}", "-c", MEAN_EVAL, "{checkpoint}", "{output}"])}
            timeout = 60
            metrics = {{ acc = {{ direction = "higher", tolerance = 0.01 }} }}
        """))
    return repo, path


def bound(n: int) -> int:
    """Evaluations allowed for a chain of n commits: the two endpoints, then ceil(log2(n)) probes."""
    return 2 + math.ceil(math.log2(n))


# -- the search itself, as a property -------------------------------------------------------------------------------
@given(st.integers(1, 300).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))))
def test_search_finds_the_first_bad_position_in_log2_probes(case):
    n, first_bad = case
    probed = []

    def probe(i: int) -> str:
        probed.append(i)
        return BAD if i >= first_bad else GOOD

    lo, hi = search(n, probe)
    assert hi == first_bad and lo == first_bad - 1
    assert len(probed) <= math.ceil(math.log2(n)) if n > 1 else not probed
    assert len(set(probed)) == len(probed)


@given(st.integers(2, 120).flatmap(lambda n: st.tuples(
    st.just(n), st.integers(0, n - 1), st.sets(st.integers(0, n - 2)), st.sets(st.integers(0, n - 2)))))
def test_search_with_skips_and_free_probes_keeps_the_answer_in_range(case):
    """Skipped positions widen the answer to a range that still holds the first bad one; free positions (ledger
    values) never cost more probes of the others than a plain search."""
    n, first_bad, skips, free = case
    paid = []

    def probe(i: int) -> str:
        if i not in free:
            paid.append(i)
        if i in skips:
            return SKIP
        return BAD if i >= first_bad else GOOD

    lo, hi = search(n, probe, lambda i: i in free)
    assert lo < first_bad <= hi
    assert all(i in skips for i in range(lo + 1, hi))  # only skipped positions are left undecided
    if not skips:
        assert hi == first_bad and len(paid) <= math.ceil(math.log2(n))


def test_search_rejects_a_verdict_it_does_not_know():
    with pytest.raises(ValueError, match="good, bad or skip"):
        search(5, lambda i: "maybe")


# -- on a real history, counting evaluator runs ---------------------------------------------------------------------
@pytest.mark.parametrize("planted", [0, 17, 31])  # the first candidate, the middle, BAD itself
def test_bisect_finds_the_planted_commit_in_log2_evaluations(counted, planted):
    repo, path = counted
    n = 33  # c0 is good; the chain is c1..c32 (32 candidates)
    ids = history(repo, [0.9 if i <= planted else 0.4 for i in range(n)])
    result = repo.bisect(ids[0], ids[-1], "acc", "acc")
    assert result.first_bad == ids[planted + 1]
    assert len(result.chain) == n - 1 and result.chain == ids[1:]
    assert calls(path) == result.evaluations <= bound(len(result.chain))
    assert result.files == ["model.safetensors"]
    assert result.diff is not None and result.diff.b == ids[planted + 1]
    assert {s.role for s in result.steps} >= {"good", "bad"}


def test_bisect_reuses_ledger_values(counted):
    repo, path = counted
    ids = history(repo, [0.9] * 20 + [0.3] * 20)
    repo.eval_run([ids[0], ids[10], ids[25], ids[39]], ["acc"])  # already evaluated: 4 runs
    assert calls(path) == 4
    result = repo.bisect(ids[0], ids[-1], "acc", "acc")
    assert result.first_bad == ids[20]
    reused = [s.commit for s in result.steps if not s.evaluated]
    assert {ids[0], ids[39], ids[10], ids[25]} <= set(reused)  # the ledger's commits in range are probed first
    assert calls(path) - 4 == result.evaluations <= math.ceil(math.log2(15))  # only ids[11..25] are left
    # a second bisect costs nothing: every verdict it needs is in the ledger now
    again = repo.bisect(ids[0], ids[-1], "acc", "acc")
    assert again.first_bad == ids[20] and again.evaluations == 0


def test_bisect_across_a_merge_commit(counted):
    """main: c0..c9, then a merge of a side branch, then c11..c34 with the regression planted at c27. The merge
    is one step of the first-parent history and the search walks through it to the planted commit."""
    repo, path = counted
    ids = history(repo, [0.9] * 10)
    side = [commit(repo, 0.9, f"side {i}", branch="side") for i in range(3)]
    ids.append(commit(repo, 0.9, "c10"))  # main moves on: the merge below is a real one, not a fast-forward
    merge = repo.merge("side", strategy="theirs")
    assert merge.commit is not None and merge.commit.parents[1] == side[-1]
    after = history(repo, [0.9 if i < 27 else 0.4 for i in range(12, 35)])
    result = repo.bisect(ids[0], after[-1], "acc", "acc")
    assert merge.commit.id in result.chain and not set(side) & set(result.chain)
    assert result.first_bad == after[27 - 12]
    assert calls(path) == result.evaluations <= bound(len(result.chain)) and len(result.chain) >= 30


def test_a_regression_from_a_merged_branch_names_the_merge(counted):
    repo, path = counted
    ids = history(repo, [0.9] * 16)
    commit(repo, 0.9, "side ok", branch="side")
    commit(repo, 0.2, "side breaks it", branch="side")
    ids.append(commit(repo, 0.9, "main moves on"))
    merge = repo.merge("side", strategy="theirs").commit
    assert merge is not None
    tail = history(repo, [0.2] * 16)
    result = repo.bisect(ids[0], tail[-1], "acc", "acc")
    assert result.first_bad == merge.id
    assert result.evaluations <= bound(len(result.chain))
    r = CliRunner().invoke(cli, ["-C", repo.root, "bisect", "--good", ids[0], "-t", "acc", "-m", "acc"])
    assert r.exit_code == 0, r.output
    assert f"first bad commit: {merge.id}" in r.output and "a merge of" in r.output
    assert "files changed: model.safetensors" in r.output and "(root)" in r.output  # the layer-group table


def test_threshold_and_direction_flags(counted):
    repo, path = counted
    ids = history(repo, [0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4])
    # against the good commit (tolerance 0.01): the first step down is already a regression
    assert repo.bisect(ids[0], ids[-1], "acc", "acc").first_bad == ids[1]
    # with a threshold: bad only below 0.65
    assert repo.bisect(ids[0], ids[-1], "acc", "acc", threshold=0.65).first_bad == ids[4]
    # a looser tolerance from the flags
    assert repo.bisect(ids[0], ids[-1], "acc", "acc", abs_tol=0.35).first_bad == ids[5]
    assert repo.bisect(ids[0], ids[-1], "acc", "acc", rel_tol=0.4).first_bad == ids[5]  # 0.9 * 0.4 = 0.36
    with pytest.raises(BisectError, match="is not bad"):  # lower is better: nothing got worse
        repo.bisect(ids[0], ids[-1], "acc", "acc", higher_is_better=False)


def test_bisect_json(counted):
    repo, _ = counted
    ids = history(repo, [0.9] * 5 + [0.1] * 5)
    r = CliRunner().invoke(cli, ["-C", repo.root, "bisect", "--good", ids[0], "--bad", ids[-1], "-t", "acc",
                                 "-m", "acc", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["first_bad"] == ids[5] and data["chain_length"] == 9 and data["evaluations"] == len(data["steps"])
    assert data["rule"]["direction"] == "higher" and data["files"] == ["model.safetensors"]
    assert data["diff"]["groups"] and data["commit"]["message"] == "c5"


# -- errors that must not give a wrong answer --------------------------------------------------------------------------
def test_endpoints_are_checked(counted):
    repo, _ = counted
    ids = history(repo, [0.9, 0.9, 0.1, 0.1])
    with pytest.raises(BisectError, match="is not good"):
        repo.bisect(ids[2], ids[3], "acc", "acc", threshold=0.5)
    with pytest.raises(BisectError, match="is not bad"):
        repo.bisect(ids[0], ids[1], "acc", "acc")
    with pytest.raises(BisectError, match="not an ancestor"):
        repo.bisect(ids[3], ids[0], "acc", "acc")
    with pytest.raises(BisectError, match="the same"):
        repo.bisect(ids[1], ids[1], "acc", "acc")
    with pytest.raises(EvalError, match="--task and --metric"):
        repo.bisect(ids[0], ids[3], "acc")
    with pytest.raises(EvalError, match="not both"):
        repo.bisect(ids[0], ids[3], "acc", "acc", command=["true"])
    r = CliRunner().invoke(cli, ["-C", repo.root, "bisect", "--good", ids[0], "--bad", ids[1], "-t", "acc",
                                 "-m", "acc"])
    assert r.exit_code == EXIT_CODES[BisectError] == 22


def test_unknown_direction_is_refused(tmp_path):
    repo = make_repo(tmp_path / "repo")
    ids = history(repo, [0.9, 0.1])
    for cid, v in zip(ids, (0.9, 0.1), strict=True):
        repo.record_eval(cid, "ext", {"score": v})
    with pytest.raises(EvalError, match="pass --higher or --lower"):
        repo.bisect(ids[0], ids[1], "ext", "score")
    assert repo.bisect(ids[0], ids[1], "ext", "score", higher_is_better=True).first_bad == ids[1]


def test_a_failing_evaluation_is_skipped(counted, tmp_path):
    """An evaluator that fails on a commit cannot judge it: the search goes around it."""
    repo, path = counted
    ids = history(repo, [0.9] * 8 + [0.1] * 8)
    with open(os.path.join(repo.root, "mlvc.toml"), "a", encoding="utf-8") as f:
        f.write('\n[tasks.flaky]\ncommand = ["{python}", "-c", "import sys; sys.exit(1)", "{checkpoint}"]\n'
                'metrics = { acc = "higher" }\n')
    for cid in ids:  # only some commits have values: the others fail when evaluated
        if cid not in (ids[7], ids[9]):
            repo.record_eval(cid, "flaky", {"acc": 0.9 if ids.index(cid) < 8 else 0.1})
    result = repo.bisect(ids[0], ids[-1], "flaky", "acc")
    assert result.first_bad is None and result.candidates == [ids[7], ids[8]]
    assert any(s.verdict == SKIP and "failed" in (s.reason or "") for s in result.steps)
    r = CliRunner().invoke(cli, ["-C", repo.root, "bisect", "--good", ids[0], "-t", "flaky", "-m", "acc"])
    assert r.exit_code == 22 and "one of 2" in r.output


# -- a command's exit status as the verdict --------------------------------------------------------------------------
def test_command_mode_like_git_bisect_run(counted):
    repo, path = counted
    ids = history(repo, [0.9] * 12 + [0.3] * 20)
    r = CliRunner().invoke(cli, ["-C", repo.root, "bisect", "--good", ids[0], "--", "{python}", "-c", EXIT_CHECK,
                                 "{checkpoint}"])
    assert r.exit_code == 0, r.output
    assert f"first bad commit: {ids[12]}" in r.output and "exit 1" in r.output
    assert calls(path) <= bound(31)


def test_command_skip_and_abort(counted):
    repo, path = counted
    ids = history(repo, [0.9] * 6 + [0.25, 0.3, 0.3, 0.3])
    result = repo.bisect(ids[0], ids[-1], command=["{python}", "-c", EXIT_CHECK, "{checkpoint}"])
    assert result.first_bad is None and result.candidates == [ids[6], ids[7]]  # ids[6] could not be tested
    assert [s.commit for s in result.steps if s.exit_status == 125] == [ids[6]]
    killer = ["{python}", "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "{checkpoint}"]
    with pytest.raises(BisectError, match="killed by signal 9"):
        repo.bisect(ids[0], ids[-1], command=killer)
    with pytest.raises(BisectError, match="cannot start"):
        repo.bisect(ids[0], ids[-1], command=["/nonexistent/tool", "{checkpoint}"])
    slow = ["{python}", "-c", "import time; time.sleep(30)", "{checkpoint}"]
    with pytest.raises(BisectError, match="timed out"):  # the good endpoint cannot be judged
        repo.bisect(ids[0], ids[-1], command=slow, timeout=0.5)
    assert not os.listdir(os.path.join(repo.dir, "tmp"))  # every checkout folder was removed
