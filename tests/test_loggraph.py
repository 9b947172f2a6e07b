"""History output: `log --all` and `--graph` (exact lines for a small history, invariants for random DAGs),
metadata printed as JSON, and merge metadata that stays small (summarised, also for old commits)."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import make_repo, write_safetensors_np
from mlvc.cli import cli
from mlvc.objects import Commit, Manifest
from mlvc.render.labels import graph, shown_metadata


def run(*args, code=0) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def save(repo, tensors: dict[str, np.ndarray], message: str, **meta) -> str:
    path = os.path.join(repo.root, "model.safetensors")
    write_safetensors_np(path, tensors)
    return repo.commit(path, message=message, metadata=meta or None).commit.id


@pytest.fixture
def branched(small_repo, monkeypatch):
    """base -> main: "pooler", exp: "layer" -> merge of exp into main; a tag on base, a branch "old" on exp~."""
    monkeypatch.chdir(small_repo.root)
    monkeypatch.setenv("MLVC_AUTHOR", "tester")
    repo = small_repo
    w = {"layer.0.w": np.arange(8, dtype=np.float32), "pooler.w": np.ones(4, np.float32)}
    base = save(repo, w, "base")
    repo.create_tag("v0", base)
    repo.create_branch("exp", base)
    main1 = save(repo, {**w, "pooler.w": w["pooler.w"] * 2}, "pooler")
    repo.switch("exp")
    exp1 = save(repo, {**w, "layer.0.w": w["layer.0.w"] * 3}, "layer")
    repo.switch("main")
    m = repo.merge("exp")
    return repo, {"base": base, "main1": main1, "exp1": exp1, "merge": m.commit.id}


def test_graph_lines_exact(branched):
    repo, ids = branched
    short = {v[:12]: k for k, v in ids.items()}
    out = run("log", "--all", "--graph", "--oneline")
    lines = [re.sub(r"[0-9a-f]{12}", lambda m: short[m.group(0)], line) for line in out.splitlines()]
    assert lines == ["* merge (HEAD -> main) Merge exp into main",
                     "|\\",
                     "| * exp1 (exp) layer",
                     "* | main1 pooler",
                     "|/",
                     "* base (tag: v0) base"]
    # --all from another branch's point of view lists the same commits, each once
    assert sorted(json.loads(run("log", "--all", "--json")), key=lambda c: c["id"]) == \
        sorted(json.loads(run("log", "--json")), key=lambda c: c["id"])
    full = run("log", "--graph", "--stat", "-n", "2")
    assert full.splitlines()[0].startswith("* commit ") and "| Merge:  " in full and "|\\" in full
    assert all(line[:1] in "*| " for line in full.splitlines())
    assert "--all starts from every branch" in run("log", "--all", "exp", code=2)


def test_log_all_includes_branches_not_reachable_from_head(branched):
    repo, ids = branched
    repo.create_branch("side", ids["base"])
    repo.switch("side")
    side = save(repo, {"x": np.zeros(3, np.float32)}, "side work")
    repo.switch("main")
    listed = [c["id"] for c in json.loads(run("log", "--all", "--json"))]
    assert side in listed and len(listed) == len(set(listed)) == 5
    assert side not in [c["id"] for c in json.loads(run("log", "--json"))]
    out = run("log", "--all", "--graph", "--oneline")
    assert len([line for line in out.splitlines() if "*" in line]) == 5


@st.composite
def dags(draw):
    """(parents of commit i, among earlier ones; times that may be out of order; which commits get a branch)."""
    n = draw(st.integers(1, 12))
    parents = [[]]
    for i in range(1, n):
        k = draw(st.integers(0, min(2, i)))
        parents.append(sorted(set(draw(st.lists(st.integers(0, i - 1), min_size=k, max_size=k)))))
    times = draw(st.lists(st.integers(0, 50), min_size=n, max_size=n))
    tips = draw(st.sets(st.integers(0, n - 1), min_size=1))
    return parents, times, tips


def check_graph_rows(nodes) -> None:
    """Each row has exactly one commit mark; lines hold only graph characters; a commit's column is where its
    child's edge arrived (the column count after each step matches the next row)."""
    rows = graph(nodes)
    assert len(rows) == len(nodes)
    for r in rows:
        assert r.row.count("*") == 1 and set(r.row) <= set("*| ")
        assert all(set(line) <= set("|/\\ ") for line in r.after)
        assert len(r.cont) == len(r.row)


@settings(max_examples=60, deadline=None)
@given(dags())
def test_log_all_topological_on_random_dags(tmp_path_factory, dag):
    parents_of, times, tips = dag
    repo = make_repo(tmp_path_factory.mktemp("dag"))
    mid = repo.write_manifest(Manifest([], [], repo.config.chunk_size))
    ids: list[str] = []
    for i, ps in enumerate(parents_of):
        c = Commit(mid, [ids[p] for p in ps], "t", f"2026-01-01T00:00:{times[i]:02d}.000000Z", f"c{i}", {"i": i})
        ids.append(repo.write_commit(c))
    for t in tips:
        repo.create_branch(f"b{t}", ids[t])
    commits = repo.log(all_refs=True, topo=True)
    listed = [c.id for c in commits]
    reachable: set[str] = set()
    stack = [ids[t] for t in tips]
    while stack:
        x = stack.pop()
        if x not in reachable:
            reachable.add(x)
            stack += repo.read_commit(x).parents
    assert len(listed) == len(set(listed)) and set(listed) == reachable  # each reachable commit once
    pos = {cid: k for k, cid in enumerate(listed)}
    for c in commits:
        assert all(pos[p] > pos[c.id] for p in c.parents)  # parents below children
    check_graph_rows([(c.id, c.parents) for c in commits])
    assert [c.id for c in repo.log(all_refs=True, topo=True, n=3)] == listed[:3]
    # without topo: the same commits; newest first wherever no parent is newer than its child
    plain = repo.log(all_refs=True)
    assert sorted(c.id for c in plain) == sorted(listed)
    if all(times[p] <= times[i] for i, ps in enumerate(parents_of) for p in ps):
        assert [c.time for c in plain] == sorted((c.time for c in plain), reverse=True)


@settings(max_examples=200, deadline=None)
@given(dags())
def test_graph_renderer_on_random_dags(dag):
    parents_of, _times, _tips = dag
    nodes = [(f"c{i}", [f"c{p}" for p in parents_of[i]]) for i in reversed(range(len(parents_of)))]
    check_graph_rows(nodes)


# -- metadata -----------------------------------------------------------------------------------------------


META = {"tags": ["probe"], "scale": None, "ok": True, "lr": 0.001, "nested": {"b": [1, 2], "a": "ü"}, "step": 5}


def test_metadata_is_printed_as_json(small_repo, monkeypatch):
    monkeypatch.chdir(small_repo.root)
    save(small_repo, {"w": np.ones(3, np.float32)}, "with meta", **META)
    shown = [line for line in run("show", "--no-diff").splitlines() if line.startswith("Meta:")]
    parsed = {}
    for line in shown:
        key, _, value = line[len("Meta:"):].strip().partition(" = ")
        parsed[key] = json.loads(value)
    assert parsed == META
    out = run("log")
    assert "None" not in out and "'probe'" not in out and 'tags=["probe"]' in out and "scale=null" in out
    (meta_line,) = [line for line in out.splitlines() if line.startswith("Meta:")]
    for key, value in META.items():
        assert f"{key}={json.dumps(value, ensure_ascii=False, sort_keys=True)}" in meta_line


def test_merge_of_1000_tensors_has_small_metadata(small_repo, monkeypatch):
    monkeypatch.chdir(small_repo.root)
    repo = small_repo
    names = [f"encoder.layer.{i // 100}.t{i % 100}.w" for i in range(1000)]
    base = {n: np.full(2, i, np.float32) for i, n in enumerate(names)}
    repo.create_branch("feat", save(repo, base, "base"))
    save(repo, {n: v + 1 for n, v in base.items()}, "ours")
    repo.switch("feat")
    save(repo, {n: v + 2 for n, v in base.items()}, "theirs")
    repo.switch("main")
    r = repo.merge("feat", strategy="average")
    assert len(r.resolved) == 1000
    meta = r.commit.metadata["merge"]
    assert len(json.dumps(meta)) < 1000
    assert meta["resolved"] == 1000 and meta["resolved_groups"] == {f"encoder.layer.{g}": 100 for g in range(10)}
    out = run("show", "--no-diff")
    assert len(out.splitlines()) < 20 and "t17.w" not in out
    assert len(repo.diff("HEAD^1", "HEAD").changed) == 1000  # the full list is what diff shows


def test_old_merge_metadata_with_a_long_list_is_summarised(small_repo, monkeypatch):
    """A merge commit written before summaries recorded every resolved tensor: shown summarised."""
    monkeypatch.chdir(small_repo.root)
    repo = small_repo
    head = save(repo, {"w": np.ones(3, np.float32)}, "base")
    resolved = [f"model.layers.{i // 50}.mlp.w{i % 50} (model.safetensors)" for i in range(1000)] + ["file a.json"]
    old = {"merge": {"base": head, "theirs": head, "rev": "x", "strategy": "ours", "scale": None,
                     "resolved": resolved}}
    c = Commit(repo.read_commit(head).manifest, [head, head], "t", "2026-01-01T00:00:00.000000Z", "old merge", old)
    cid = repo.write_commit(c)
    repo.create_branch("oldmerge", cid)
    shown = shown_metadata(old)["merge"]
    assert shown["resolved"] == 1001 and shown["resolved_groups"]["(files)"] == 1
    assert sum(shown["resolved_groups"].values()) == 1001 and len(shown["resolved_groups"]) == 17  # 16 + other
    for out in (run("show", "oldmerge", "--no-diff"), run("log", "oldmerge", "-n", "1")):
        assert "mlp.w7" not in out and len(out) < 2000 and '"resolved": 1001' in out
    assert json.loads(run("show", "oldmerge", "--json", "--no-diff"))["commit"]["metadata"] == old  # JSON: as stored
