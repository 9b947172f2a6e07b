"""The demo's real evaluation tasks on the real all-MiniLM-L6-v2 (skipped where its package is missing)."""

from __future__ import annotations

import os
import shutil

import pytest

from conftest import make_repo

pytestmark = pytest.mark.slow


@pytest.fixture
def demo_deps():
    pytest.importorskip("torch")
    pytest.importorskip("tokenizers")
    from mlvc import demo_tasks

    try:
        demo_tasks.lexicon_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return demo_tasks


def test_encoder_matches_sentence_transformers(minilm_dir, demo_deps):
    st = pytest.importorskip("sentence_transformers")
    import torch

    from mlvc.demo_encoder import load_encoder

    texts = ["A man is playing a guitar.", "having the necessary means or skill to do something", "good",
             "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich."]
    ours = load_encoder(minilm_dir, threads=1).encode(texts)
    ref = torch.tensor(st.SentenceTransformer(minilm_dir, device="cpu").encode(texts))
    assert ours.shape == (4, 384)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_data_is_real_and_fixed(demo_deps):
    glosses, words, target = demo_deps.gloss_data()
    assert len(glosses) == 400 and len(words) == 1347 and len(target) == 400
    assert glosses == demo_deps.gloss_data()[0]  # the same sample every time
    adjectives, polarity = demo_deps.polarity_data()
    assert len(adjectives) == 996 and "good" in adjectives and "horrible" in adjectives
    assert polarity[adjectives.index("good")] > 0 > polarity[adjectives.index("horrible")]


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
    assert cid[:12] in result.table_text and "gloss-retrieval/recall_at_1" in result.table_text
    assert result.report.tasks == ["adjective-polarity", "gloss-retrieval"]
    assert os.path.getsize(report) > 10_000
