"""The real all-MiniLM-L6-v2 model (about 90 MB): commit, fine-tune a few tensors, commit, check out the first
commit byte for byte. Marked slow, but it runs by default."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from conftest import sha256_file, tree_hashes
from mlvc.formats import safetensors as st_format
from mlvc.repo import Repo

pytestmark = pytest.mark.slow

CHANGED = ["encoder.layer.5.attention.self.query.weight", "encoder.layer.5.attention.self.query.bias",
           "pooler.dense.bias"]


def _names_in(path: str) -> set[str]:
    with open(path, "rb") as f:
        return {t.name for t in st_format.read_layout(f, path).tensors}


def _perturb_in_place(path: str, names: list[str], seed: int = 0) -> None:
    """Add small noise to some float32 tensors, rewriting their bytes in place (same layout, same header)."""
    with open(path, "rb") as f:
        layout = st_format.read_layout(f, path)
    spans = {t.name: t for t in layout.tensors}
    rng = np.random.default_rng(seed)
    with open(path, "r+b") as f:
        for name in names:
            t = spans[name]
            assert t.dtype == "F32"
            f.seek(layout.data_start + t.begin)
            a = np.frombuffer(f.read(t.nbytes), dtype="<f4")
            a = a + rng.normal(0, 1e-3, a.shape).astype(np.float32)
            f.seek(layout.data_start + t.begin)
            f.write(a.astype("<f4").tobytes())


def test_minilm_commit_modify_checkout(tmp_path, minilm_dir):
    repo = Repo.init(str(tmp_path / "repo"))
    model = os.path.join(repo.root, "model")
    shutil.copytree(minilm_dir, model)
    original = tree_hashes(model)
    assert "model.safetensors" in original and "tokenizer.json" in original
    weights = os.path.join(model, "model.safetensors")
    names = _names_in(weights)
    assert set(CHANGED) <= names, "the model's tensor names are not the expected BERT ones"

    first = repo.commit(model, message="all-MiniLM-L6-v2")
    assert first.tensors == len(names)
    assert first.raw_bytes >= os.path.getsize(weights)
    assert first.new_bytes < first.raw_bytes  # byte planes + zstd pay on float32 weights
    assert repo.status().clean

    _perturb_in_place(weights, CHANGED)
    st = repo.status()
    [changed] = st.changed
    assert changed.path == "model/model.safetensors"
    assert sorted(changed.tensors_changed) == sorted(CHANGED)

    second = repo.commit(message="fine-tune layer 5 query and the pooler bias")
    assert second.commit.parents == [first.commit.id]
    changed_bytes = sum(t.nbytes for t in repo.read_manifest(second.commit.manifest).tensors().values()
                        if t.name in CHANGED)
    assert second.new_bytes <= changed_bytes + 4096  # only the changed tensors' chunks are new
    assert second.new_bytes < second.raw_bytes / 50
    tensors1 = repo.read_manifest(first.commit.manifest).tensors()
    tensors2 = repo.read_manifest(second.commit.manifest).tensors()
    assert sorted(n for n in tensors1 if tensors1[n].chunks != tensors2[n].chunks) == sorted(CHANGED)
    modified = sha256_file(weights)
    assert modified != original["model.safetensors"]

    # the first commit, byte for byte, into another folder
    out = tmp_path / "out"
    result = repo.checkout(first.commit.id, output=str(out))
    assert len(result.written) == len(original)
    assert tree_hashes(out / "model") == original

    # and in place, back and forth
    repo.checkout(first.commit.id)
    assert tree_hashes(model) == original
    repo.checkout("main")
    assert sha256_file(weights) == modified

    loaded = repo.load(first.commit.id, tensors=["pooler.*"], framework="numpy")
    assert set(loaded) == {"pooler.dense.weight", "pooler.dense.bias"}
    assert repo.fsck().ok
