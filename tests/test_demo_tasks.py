"""The demo's real evaluation tasks (examples/minilm/) on the real all-MiniLM-L6-v2 (skipped where its package
is missing), and the `python -m mlvc.demo` entry that finds them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import make_repo
from mlvc import demo


def test_demo_entry_finds_the_examples_or_says_where_to_get_them(tmp_path, monkeypatch):
    folder = demo.example_dir()
    assert os.path.isfile(os.path.join(folder, "tasks.py")) and os.path.basename(folder) == "minilm"
    assert demo.load("tasks").__name__ == "mlvc_example_minilm.tasks"  # loaded by path, relative imports work
    monkeypatch.setattr(demo, "candidates", lambda: [str(tmp_path / "examples")])
    with pytest.raises(demo.ExamplesNotFound) as e:
        demo.example_dir()
    message = str(e.value)
    assert str(tmp_path / "examples" / "minilm") in message and "pip install" in message
    assert "MLVC_EXAMPLES" in message


def test_demo_without_examples_exits_with_the_explanation(tmp_path):
    # a wheel install: the package without the source tree around it
    pkg = tmp_path / "site"
    shutil.copytree(os.path.dirname(demo.__file__), pkg / "mlvc",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "MLVC_EXAMPLES"} | {"PYTHONPATH": str(pkg)}
    r = subprocess.run([sys.executable, "-m", "mlvc.demo"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "examples/minilm/" in r.stderr and "not installed with the package" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_task_commands_name_the_script_by_path(tmp_path):
    tasks = demo.load("tasks")
    try:
        tasks.lexicon_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    repo = make_repo(tmp_path / "repo")
    assert tasks.configure(repo) == ["gloss-retrieval", "adjective-polarity"]
    configured = repo.tasks()
    script = os.path.join(demo.example_dir(), "tasks.py")
    for name in ("gloss-retrieval", "adjective-polarity"):
        assert configured[name].command == ["{python}", script, name, "{checkpoint}", "{output}"]
    # the script runs on its own, outside any package (as `mlvc eval run` runs it)
    r = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "gloss-retrieval" in r.stdout, r.stderr


@pytest.fixture
def demo_deps():
    pytest.importorskip("torch")
    pytest.importorskip("tokenizers")
    tasks = demo.load("tasks")
    try:
        tasks.lexicon_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return tasks


@pytest.mark.slow
def test_encoder_matches_sentence_transformers(minilm_dir, demo_deps):
    st = pytest.importorskip("sentence_transformers")
    import torch

    load_encoder = demo.load("encoder").load_encoder

    texts = ["A man is playing a guitar.", "having the necessary means or skill to do something", "good",
             "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich."]
    ours = load_encoder(minilm_dir, threads=1).encode(texts)
    ref = torch.tensor(st.SentenceTransformer(minilm_dir, device="cpu").encode(texts))
    assert ours.shape == (4, 384)
    assert torch.allclose(ours, ref, atol=1e-5)


@pytest.mark.slow
def test_data_is_real_and_fixed(demo_deps):
    glosses, words, target = demo_deps.gloss_data()
    assert len(glosses) == 400 and len(words) == 1347 and len(target) == 400
    assert glosses == demo_deps.gloss_data()[0]  # the same sample every time
    adjectives, polarity = demo_deps.polarity_data()
    assert len(adjectives) == 996 and "good" in adjectives and "horrible" in adjectives
    assert polarity[adjectives.index("good")] > 0 > polarity[adjectives.index("horrible")]


@pytest.mark.slow
def test_run_demo_evaluates_records_and_reports(minilm_dir, demo_deps, tmp_path):
    pytest.importorskip("matplotlib")
    repo = make_repo(tmp_path / "repo")
    model = repo.abs_path("model")
    os.makedirs(model)
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        shutil.copy(os.path.join(minilm_dir, name), model)
    cid = repo.commit(message="all-MiniLM-L6-v2", paths=[model]).commit.id
    report = str(tmp_path / "report.html")
    result = demo_deps.run_demo(repo, report_path=report)
    assert [(o.task, o.status) for o in result.run.outcomes] == [("gloss-retrieval", "ok"),
                                                                  ("adjective-polarity", "ok")], \
        [o.stderr_tail for o in result.run.outcomes]
    m = {(r.task, r.metric): r.value for r in repo.ledger.records()}
    # what the real model scores (stable to the 3rd decimal across BLAS builds)
    assert 0.05 < m[("gloss-retrieval", "recall_at_1")] < 0.4
    assert m[("gloss-retrieval", "mrr")] > m[("gloss-retrieval", "recall_at_1")]
    assert 0.5 < m[("adjective-polarity", "spearman")] < 0.9
    assert 0.65 < m[("adjective-polarity", "accuracy")] < 0.95
    assert 0.1 < m[("adjective-polarity", "rmse")] < 0.6
    assert cid[:12] in result.table_text
    assert "gloss-retrieval" in result.table_text and "recall_at_1" in result.table_text
    assert result.report.tasks == ["adjective-polarity", "gloss-retrieval"]
    assert os.path.getsize(report) > 10_000
