"""The layer contract and the one way in: the Repo binds every operation (its signature written once, in
mlvc/ops/), the old method names and arguments still work, the contract that `lint-imports` checks is the
picture in docs/design.md, it names every module, and it does fail when an import goes up."""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest

from mlvc import config, store
from mlvc.progress import NULL
from mlvc.repo import OPERATIONS, Repo, _Operation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MLVC = os.path.join(ROOT, "mlvc")


def _contracts() -> dict[str, dict]:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        linter = tomllib.load(f)["tool"]["importlinter"]
    return {c["id"]: c for c in linter["contracts"]}


def _top_level_modules() -> set[str]:
    out = set()
    for name in os.listdir(MLVC):
        path = os.path.join(MLVC, name)
        if name.endswith(".py") and name != "__init__.py":
            out.add(name[:-3])
        elif os.path.isfile(os.path.join(path, "__init__.py")):
            out.add(name)
    return out


# -- the Repo: one way in ---------------------------------------------------------------------------------


def test_every_operation_is_the_function_itself():
    ops = OPERATIONS
    assert len(ops) >= 25 and all(isinstance(op, _Operation) for op in ops.values())
    for name, op in ops.items():
        bound = getattr(Repo, name)
        module = sys.modules[f"mlvc.{op.module}"]
        fn = getattr(module, op.function)
        assert bound is fn, name  # the signature and docstring are the function's own
        if not op.static:
            first = next(iter(inspect.signature(fn).parameters))
            assert first == "repo", f"{op.module}.{op.function} must take the Repo first, not {first!r}"



def test_the_type_checker_sees_each_operation_as_its_function():
    """What mypy checks `repo.commit(...)` against: Repo's `if TYPE_CHECKING:` block, which names the function
    that each `_Operation` binds at run time (`commit = mlvc.ops.commit.commit`)."""
    import ast

    with open(os.path.join(MLVC, "repo.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Repo")
    block = next(n for n in cls.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    seen = {}
    for stmt in block.body:
        assert isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name), ast.unparse(stmt)
        seen[stmt.targets[0].id] = ast.unparse(stmt.value)
    want = {}
    for name, op in OPERATIONS.items():
        fn = f"mlvc.{op.module}.{op.function}"
        want[name] = f"staticmethod({fn})" if op.static else fn
    assert seen == want

# Repo's methods as they were written by hand before the operations were bound: every name, every argument
# (name, kind, default) keeps working; an operation may add parameters after them.
P, K, VK = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD
REQ = inspect.Parameter.empty
OLD_API = {
    "commit": [("obj", P, None), ("message", P, ""), ("metadata", P, None), ("paths", K, None), ("path", K, None),
               ("as_blob", K, ()), ("allow_empty", K, False), ("progress", K, NULL)],
    "status": [("progress", P, NULL)],
    "log": [("rev", P, "HEAD"), ("n", P, None)],
    "show": [("rev", P, "HEAD")],
    "checkout": [("rev", P, REQ), ("output", P, None), ("force", P, False), ("progress", P, NULL),
                 ("tensors", P, None)],
    "switch": [("branch", P, REQ), ("create", P, False), ("start", P, "HEAD"), ("force", P, False),
               ("progress", P, NULL)],
    "load": [("rev", P, "HEAD"), ("tensors", P, None), ("framework", P, None)],
    "fsck": [("progress", P, NULL)],
    "gc": [("prune", P, None), ("prune_temp", P, None), ("dry_run", P, False), ("progress", P, NULL)],
    "eval_run": [("revs", P, None), ("tasks", P, None), ("force", P, False), ("progress", P, NULL),
                 ("on_outcome", P, None)],
    "record_eval": [("rev", P, REQ), ("task", P, REQ), ("metrics", P, REQ)],
    "eval_show": [("rev_range", P, None), ("include_all", P, False), ("tasks", P, None)],
    "eval_compare": [("a", P, REQ), ("b", P, REQ), ("tasks", P, None)],
    "report_data": [("rev", P, "HEAD"), ("max_commits", P, 200)],
    "report": [("output", P, REQ), ("rev", P, "HEAD"), ("max_commits", P, 200)],
    "diff": [("a", P, "HEAD"), ("b", P, None), ("tensors", P, None), ("progress", P, NULL)],
    "revert": [("rev", P, REQ), ("mainline", P, None), ("message", P, None), ("progress", P, NULL)],
    "reset": [("rev", P, REQ), ("hard", P, False), ("force", P, False), ("progress", P, NULL)],
    "reflog": [("ref", P, "HEAD"), ("n", P, None)],
    "merge": [("rev", P, REQ), ("strategy", P, None), ("scale", P, None), ("message", P, None), ("progress", P, NULL)],
    "restore": [("rev", P, REQ), ("tensors", P, REQ), ("progress", P, NULL)],
    "branches": [], "tags": [], "tasks": [], "resolve": [("rev", P, REQ)],
    "create_branch": [("name", P, REQ), ("start", P, "HEAD"), ("force", P, False)],
    "delete_branch": [("name", P, REQ)],
    "create_tag": [("name", P, REQ), ("rev", P, "HEAD"), ("force", P, False)],
    "delete_tag": [("name", P, REQ)],
}


@pytest.mark.parametrize("name", sorted(OLD_API))
def test_the_old_methods_keep_their_arguments(name):
    params = list(inspect.signature(getattr(Repo, name)).parameters.values())[1:]  # after self / repo
    got = [(p.name, p.kind, p.default) for p in params[: len(OLD_API[name])]]
    assert got == OLD_API[name]
    for extra in params[len(OLD_API[name]):]:  # added later: never required
        assert extra.default is not REQ or extra.kind is VK, (name, extra)


def test_the_old_methods_work_positionally_and_by_keyword(tmp_path):
    import numpy as np

    repo = Repo.init(str(tmp_path))
    sd = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    first = repo.commit(sd, "first", {"step": 1}).commit.id
    sd["w"][0, 0] = 7
    second = repo.commit(sd, message="second", path="model.safetensors").commit.id
    assert repo.resolve("HEAD~1") == first and repo.log("HEAD", 1)[0].id == second
    assert repo.load("HEAD~1", ["w"], "numpy")["w"][0, 0] == 0
    assert [t.name for t in repo.diff(first, second, ["w"]).changed] == ["w"]
    assert repo.diff_commit(second).a == first
    assert repo.create_tag("v1", first) == first and repo.tags() == {"v1": first}
    assert repo.create_branch("exp") == second and repo.delete_branch("exp") == second
    assert Repo.parse_grace("2.weeks.ago", "--prune") == 14 * 86400.0
    assert repo.stats().commits[0].id == second


def test_opening_a_repository_imports_no_operation(tmp_path):
    """Operations are imported when first used: opening a repository and reading its status loads only the
    modules status needs, not merge, eval or gc."""
    code = ("import sys; from mlvc import Repo; r = Repo.init(sys.argv[1]); "
            "print('OPEN', sorted(m for m in sys.modules if m.startswith('mlvc.ops'))); r.status(); "
            "print('STATUS', sorted(m for m in sys.modules if m.startswith('mlvc.ops')))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                         check=True).stdout
    assert "OPEN []" in out
    loaded = re.search(r"STATUS \[(.*)\]", out).group(1)
    assert "mlvc.ops.status" in loaded
    for other in ("merge", "evalrun", "gc", "diff", "report"):
        assert f"mlvc.ops.{other}'" not in loaded


def test_a_patched_operation_is_what_the_cli_calls(tmp_path, monkeypatch):
    """The bound function is an ordinary class attribute: tests (and users) can replace it."""
    from click.testing import CliRunner

    from mlvc.cli import cli

    def broken(repo, rev=None):
        raise KeyError("patched")

    Repo.init(str(tmp_path))
    monkeypatch.setattr(Repo, "stats", broken)
    monkeypatch.setattr(Repo, "head", lambda repo: "0" * 32)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["stats"])
    assert r.exit_code == 70 and "KeyError" in r.output


# -- the contract ---------------------------------------------------------------------------------------


def _doc_layers(heading: str) -> list[str]:
    """The rows of the layer picture under `heading` in docs/design.md (the first column of the code block)."""
    text = open(os.path.join(ROOT, "docs", "design.md"), encoding="utf-8").read()
    block = text[text.index(heading):]
    block = block[block.index("```") + 3:]
    block = block[block.index("\n") + 1: block.index("```")]
    rows, pending = [], ""
    for line in block.splitlines()[1:]:  # under the header row
        first = pending + re.split(r"\s{2,}", line.strip())[0]
        if first.endswith("|"):  # a row continued on the next line
            pending = first + " "
            continue
        pending = ""
        rows.append(re.sub(r"\s*\|\s*", " | ", first))
    return rows


def _normal(layers: list[str]) -> list[str]:
    return [" | ".join(sorted(m.strip() for m in layer.split("|"))) for layer in layers]


def test_the_design_doc_pictures_exactly_the_contract():
    contracts = _contracts()
    assert _normal(_doc_layers("Imports only go downward")) == _normal(contracts["layers"]["layers"])
    assert _normal(_doc_layers("Inside ops/")) == _normal(contracts["ops"]["layers"])


def test_the_contract_places_every_module():
    contracts = _contracts()
    placed = {m.strip() for layer in contracts["layers"]["layers"] for m in layer.split("|")}
    assert placed == _top_level_modules()
    assert contracts["layers"]["exhaustive"] and contracts["ops"]["exhaustive"]
    ops = {m[:-3] for m in os.listdir(os.path.join(MLVC, "ops")) if m.endswith(".py") and m != "__init__.py"}
    assert {m.strip() for layer in contracts["ops"]["layers"] for m in layer.split("|")} == ops


def test_the_cli_may_import_only_the_repo_errors_progress_and_render():
    forbidden = {m.removeprefix("mlvc.") for m in _contracts()["cli"]["forbidden_modules"]}
    assert forbidden == _top_level_modules() - {"cli", "repo", "errors", "progress", "render", "runtime", "version"}


def _lint(cwd: str) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    return subprocess.run([exe, "--no-cache", "--no-logo"], cwd=cwd, capture_output=True, text=True)


def test_the_contract_holds():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("module, line, broken", [
    ("ops/select.py", "from ..repo import Repo", "imports only go downward"),  # up a layer
    ("ops/revert.py", "from .merge import merge_base", "verbs never import each other"),  # sideways
    ("cli/core.py", "from ..store import LooseObjectStore", "one way in"),  # the CLI past the Repo
])
def test_the_contract_fails_when_an_import_goes_the_wrong_way(tmp_path, module, line, broken):
    shutil.copytree(MLVC, tmp_path / "mlvc", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), tmp_path)
    with open(tmp_path / "mlvc" / module, "a", encoding="utf-8") as f:
        f.write(f"\n{line}  # noqa\n")
    r = _lint(str(tmp_path))
    assert r.returncode != 0 and broken in r.stdout and "BROKEN" in r.stdout, r.stdout + r.stderr
    assert f"mlvc.{module[:-3].replace('/', '.')}" in r.stdout  # the offending import is named


# -- the leaks the contract found ------------------------------------------------------------------------


def test_config_owns_its_defaults_and_a_bare_store_agrees():
    assert config.DEFAULT_KEYFRAME_INTERVAL == store.DEFAULT_KEYFRAME_INTERVAL
    assert config.DEFAULT_CACHE_MB << 20 == store.DEFAULT_CACHE_BYTES
    assert bool(config.DEFAULT_SKIP_DELTAS) is store.ObjectStore().skip_deltas
    code = "import sys, mlvc.config; print(sorted(m for m in ('mlvc.store', 'numpy') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"


def test_the_store_answers_id_prefix_queries(tmp_path):
    loose = store.LooseObjectStore(str(tmp_path / "objects"))
    memory = store.MemoryObjectStore()
    for s in (loose, memory):
        ids = sorted({s.put(bytes([i]) * 10).id for i in range(64)})
        assert s.ids_with_prefix("") == ids
        for oid in ids[:8]:
            assert s.ids_with_prefix(oid[:4]) == sorted(i for i in ids if i.startswith(oid[:4]))
            assert s.ids_with_prefix(oid[:1]) == sorted(i for i in ids if i.startswith(oid[:1]))
            assert s.ids_with_prefix(oid) == [oid]
        assert s.ids_with_prefix("ZZ") == [] and s.ids_with_prefix("../x") == []
    oid = loose.put(b"one more").id
    open(os.path.join(loose.root, oid[:2], ".tmp-mlvc-left-over"), "wb").close()
    assert loose.ids_with_prefix(oid[:4]) == sorted(i for i in loose.ids() if i.startswith(oid[:4]))
    assert store.LooseObjectStore(str(tmp_path / "none")).ids_with_prefix("abcd") == []
