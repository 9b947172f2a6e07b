"""Checkpoint formats in and out: Hugging Face sharded folders, torch .pt/.bin files, unsafe pickles, and
damaged safetensors files."""

from __future__ import annotations

import json
import os
import pickle
import struct

import numpy as np
import pytest

from conftest import sha256_file, tree_hashes, write_safetensors_np
from mlvc.errors import FormatError, MlvcError, UnsafePickleError
from mlvc.objects import KIND_BLOB, KIND_SAFETENSORS, KIND_TORCH

# -- Hugging Face sharded folders ----------------------------------------------------------------------------


def _random_weights(rng, shape):
    return (rng.standard_normal(shape) * 0.02).astype(np.float32)


def make_hf_folder(folder, seed: int = 0, shared: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """A small sharded HF model folder; returns every tensor by name."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "1_Pooling"), exist_ok=True)
    shard1 = {"embeddings.word_embeddings.weight": _random_weights(rng, (64, 32)),
              "encoder.layer.0.attention.weight": _random_weights(rng, (32, 32)),
              "encoder.layer.0.attention.bias": _random_weights(rng, (32,))}
    shard2 = {"encoder.layer.1.attention.weight": _random_weights(rng, (32, 32)),
              "encoder.layer.1.attention.bias": _random_weights(rng, (32,)),
              "pooler.dense.weight": _random_weights(rng, (32, 32)),
              "position_ids": np.arange(64, dtype=np.int64).reshape(1, 64)}
    if shared is not None:
        shard1["shared.in_shard1"] = shared
        shard2["shared.in_shard2"] = shared
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    write_safetensors_np(os.path.join(folder, names[0]), shard1, {"format": "pt"})
    write_safetensors_np(os.path.join(folder, names[1]), shard2, {"format": "pt"})
    index = {"metadata": {"total_size": sum(a.nbytes for a in {**shard1, **shard2}.values())},
             "weight_map": {**{k: names[0] for k in shard1}, **{k: names[1] for k in shard2}}}
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"architectures": ["BertModel"], "hidden_size": 32, "num_hidden_layers": 2}, f, indent=2)
    with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump({"model": {"vocab": {f"tok{i}\u00e9": i for i in range(500)}}}, f, ensure_ascii=False)
    with open(os.path.join(folder, "1_Pooling", "config.json"), "w") as f:
        json.dump({"pooling_mode_mean_tokens": True}, f)
    with open(os.path.join(folder, "vocab.txt"), "wb") as f:
        f.write(b"\n".join(f"w{i}".encode() for i in range(2000)))
    open(os.path.join(folder, "empty.txt"), "wb").close()
    return {**shard1, **shard2}


def test_sharded_folder_checks_out_byte_for_byte(small_repo, tmp_path):
    model = os.path.join(small_repo.root, "model")
    tensors = make_hf_folder(model)
    before = tree_hashes(model)
    assert len(before) == 8
    result = small_repo.commit(model, message="hf folder")
    assert result.files == 8
    assert result.tensors == len(tensors)

    manifest = small_repo.read_manifest(result.commit.manifest)
    assert manifest.roots == ["model"]
    kinds = {f.path: f.kind for f in manifest.files}
    assert kinds["model/model-00001-of-00002.safetensors"] == KIND_SAFETENSORS
    assert kinds["model/config.json"] == KIND_BLOB
    assert kinds["model/1_Pooling/config.json"] == KIND_BLOB

    out = tmp_path / "out"
    small_repo.checkout(result.commit.id, output=str(out))
    assert tree_hashes(out / "model") == before

    loaded = small_repo.load(framework="numpy")
    assert set(loaded) == set(tensors)
    for name, a in tensors.items():
        assert loaded[name].dtype == a.dtype and np.array_equal(loaded[name], a)


def test_in_place_checkout_restores_a_deleted_shard_folder(small_repo):
    model = os.path.join(small_repo.root, "model")
    make_hf_folder(model)
    before = tree_hashes(model)
    small_repo.commit(model, message="v1")
    import shutil

    shutil.rmtree(model)
    small_repo.checkout("HEAD")
    assert tree_hashes(model) == before


def test_same_tensor_in_two_shards_is_stored_once(small_repo):
    big = np.random.default_rng(7).integers(0, 2**31, 16384, dtype=np.int32)  # 64 KiB, incompressible
    model = os.path.join(small_repo.root, "model")
    make_hf_folder(model, shared=big)
    result = small_repo.commit(model, message="dup")
    tensors = {}
    for f in small_repo.read_manifest(result.commit.manifest).files:
        for t in f.tensors:
            tensors[t.name] = t
    a, b = tensors["shared.in_shard1"], tensors["shared.in_shard2"]
    assert a.chunks == b.chunks and a.hash == b.hash
    assert len(a.chunks) == big.nbytes // 4096
    # Stored twice it would cost >= 2 x 64 KiB; once, it costs 64 KiB plus the (small) rest of the model.
    stored = sum(small_repo.store.stored_size(c) for c in set(a.chunks))
    assert stored >= big.nbytes
    assert result.new_bytes < big.nbytes + 60_000
    assert result.raw_bytes > 2 * big.nbytes


def test_frozen_layers_are_stored_once_across_commits(small_repo):
    model = os.path.join(small_repo.root, "model")
    tensors = make_hf_folder(model, seed=1)
    first = small_repo.commit(model, message="v1")
    # fine-tune only the last layer: rewrite shard 2 with one tensor changed
    shard2_names = ["encoder.layer.1.attention.weight", "encoder.layer.1.attention.bias", "pooler.dense.weight",
                    "position_ids"]
    shard2 = {k: tensors[k] for k in shard2_names}
    shard2["pooler.dense.weight"] = shard2["pooler.dense.weight"] + np.float32(0.5)
    write_safetensors_np(os.path.join(model, "model-00002-of-00002.safetensors"), shard2, {"format": "pt"})
    second = small_repo.commit(model, message="v2")

    m1 = small_repo.read_manifest(first.commit.manifest).tensors()
    m2 = small_repo.read_manifest(second.commit.manifest).tensors()
    changed = [n for n in m1 if m1[n].chunks != m2[n].chunks]
    assert changed == ["pooler.dense.weight"]
    changed_bytes = tensors["pooler.dense.weight"].nbytes
    assert 0 < second.new_bytes <= changed_bytes + 1024  # the changed tensor and the shard header at most
    assert second.new_bytes < first.new_bytes / 5
    st = small_repo.status()
    assert st.clean


# -- torch .pt / .bin files -----------------------------------------------------------------------------------


def _assert_same_state(a, b, torch):
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        # bitwise, so that NaN payloads and -0.0 count
        assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    elif isinstance(a, dict):
        assert list(a.keys()) == list(b.keys())
        for k in a:
            _assert_same_state(a[k], b[k], torch)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same_state(x, y, torch)
    else:
        assert a == b


def _mixed_state_dict(torch):
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(64, 32, generator=g),
        "b": torch.randn(32, generator=g).to(torch.bfloat16),
        "h": torch.randn(8, 8, generator=g).half(),
        "i": torch.arange(10, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "empty": torch.zeros(0, 4),
    }


@pytest.mark.parametrize("filename,zip_format", [
    ("model.pt", True), ("pytorch_model.bin", True), ("legacy.pt", False), ("legacy_model.bin", False)])
def test_torch_state_dict_roundtrip(small_repo, tmp_path, torch, filename, zip_format):
    sd = _mixed_state_dict(torch)
    path = os.path.join(small_repo.root, filename)
    torch.save(sd, path, _use_new_zipfile_serialization=zip_format)
    original = sha256_file(path)
    result = small_repo.commit(path, message="torch")
    entry = small_repo.read_manifest(result.commit.manifest).files[0]
    assert entry.kind == KIND_TORCH
    assert (filename in result.inexact) == (not entry.exact)
    if zip_format:
        assert result.inexact == []  # a plain state_dict in the zip format rebuilds byte for byte

    out = tmp_path / "out"
    small_repo.checkout(result.commit.id, output=str(out))
    restored = torch.load(out / filename, weights_only=True)
    _assert_same_state(sd, restored, torch)
    if entry.exact:
        assert sha256_file(out / filename) == original

    loaded = small_repo.load(result.commit.id)
    assert set(loaded) == set(sd)
    for k in sd:
        _assert_same_state(sd[k], loaded[k], torch)


def test_tied_weights_stay_tied(small_repo, tmp_path, torch):
    class TinyLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(50, 16)
            self.body = torch.nn.Linear(16, 16)
            self.head = torch.nn.Linear(16, 50, bias=False)
            self.head.weight = self.embed.weight

    torch.manual_seed(0)
    model = TinyLM()
    path = os.path.join(small_repo.root, "lm.pt")
    torch.save(model.state_dict(), path)
    original = sha256_file(path)
    result = small_repo.commit(path, message="tied")
    assert result.inexact == []

    entry = small_repo.read_manifest(result.commit.manifest).files[0]
    by_name = {t.name: t for t in entry.tensors}
    assert by_name["head.weight"].alias == "embed.weight"
    assert by_name["head.weight"].chunks == by_name["embed.weight"].chunks

    out = tmp_path / "out"
    small_repo.checkout(result.commit.id, output=str(out))
    assert sha256_file(out / "lm.pt") == original
    sd = torch.load(out / "lm.pt", weights_only=True)
    assert sd["head.weight"].untyped_storage().data_ptr() == sd["embed.weight"].untyped_storage().data_ptr()
    restored = TinyLM()
    restored.load_state_dict(sd)
    assert torch.equal(restored.head.weight, model.head.weight)

    loaded = small_repo.load(result.commit.id)
    assert loaded["head.weight"].untyped_storage().data_ptr() == loaded["embed.weight"].untyped_storage().data_ptr()
    assert torch.equal(loaded["embed.weight"], model.embed.weight.detach())
    only_alias = small_repo.load(result.commit.id, tensors=["head.weight"])  # without the tensor it aliases
    assert list(only_alias) == ["head.weight"] and torch.equal(only_alias["head.weight"], model.head.weight.detach())


def test_module_with_tied_weights_committed_from_python(small_repo, torch):
    emb = torch.nn.Embedding(40, 8)
    head = torch.nn.Linear(8, 40, bias=False)
    head.weight = emb.weight
    model = torch.nn.ModuleDict({"embed": emb, "head": head})
    result = small_repo.commit(model, message="module")
    tensors = small_repo.read_manifest(result.commit.manifest).tensors()
    assert tensors["head.weight"].chunks == tensors["embed.weight"].chunks  # stored once
    loaded = small_repo.load()
    assert torch.equal(loaded["head.weight"], emb.weight.detach())
    assert torch.equal(loaded["embed.weight"], emb.weight.detach())


def test_nested_checkpoint_roundtrips(small_repo, tmp_path, torch):
    g = torch.Generator().manual_seed(1)
    sd = {"layer.weight": torch.randn(16, 16, generator=g), "layer.bias": torch.randn(16, generator=g)}
    ckpt = {
        "model": sd,
        "epoch": 3,
        "step": 12345,
        "lr": 0.001,
        "name": "run-\u00e9",
        "opt": {"state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.randn(16, 16, generator=g)},
                          1: {"step": torch.tensor(10.0), "exp_avg": torch.randn(16, generator=g)}},
                "param_groups": [{"lr": 0.001, "betas": (0.9, 0.999), "params": [0, 1]}]},
        "history": [1.5, 1.2, None, True],
    }
    path = os.path.join(small_repo.root, "ckpt.pt")
    torch.save(ckpt, path)
    result = small_repo.commit(path, message="nested")
    out = tmp_path / "out"
    small_repo.checkout(result.commit.id, output=str(out))
    restored = torch.load(out / "ckpt.pt", weights_only=True)
    _assert_same_state(ckpt, restored, torch)
    if "ckpt.pt" not in result.inexact:
        assert sha256_file(out / "ckpt.pt") == sha256_file(path)
    names = set(small_repo.load(result.commit.id))
    assert {"model.layer.weight", "model.layer.bias", "opt.state.0.exp_avg", "opt.state.1.step"} <= names


def test_view_tensors_roundtrip_tensor_identical(small_repo, tmp_path, torch):
    """A tensor that is a slice of a bigger storage, or not contiguous: its storage stays in the file's frame,
    so the file still checks out byte for byte (tests/test_torch_exact.py covers the whole class)."""
    base = torch.arange(100, dtype=torch.float32)
    sd = {"part": base[10:20], "t": torch.randn(4, 4).t()}
    path = os.path.join(small_repo.root, "views.pt")
    torch.save(sd, path)
    result = small_repo.commit(path, message="views")
    assert result.inexact == []
    out = tmp_path / "out"
    small_repo.checkout(result.commit.id, output=str(out))
    assert sha256_file(out / "views.pt") == sha256_file(path)
    restored = torch.load(out / "views.pt", weights_only=True)
    for k in sd:
        assert torch.equal(restored[k], sd[k])


class _Payload:
    """Unpickling this creates a marker file: the proof that pickled code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.mark.parametrize("how", ["zip", "legacy", "plain-pickle"])
def test_unsafe_pickle_is_refused_and_never_runs(small_repo, tmp_path, torch, how):
    small_repo.commit({"w": np.ones(3, np.float32)}, message="before")
    head = small_repo.head()
    ids_before = set(small_repo.store.ids())

    marker = tmp_path / "pwned"
    path = os.path.join(small_repo.root, "evil.pt")
    obj = {"w": torch.ones(3), "x": _Payload(str(marker))}
    if how == "plain-pickle":
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=how == "zip")
    assert not marker.exists()
    # the payload is real: an unrestricted load would run it
    pickle.loads(pickle.dumps(_Payload(str(tmp_path / "control"))))
    assert (tmp_path / "control").exists()

    with pytest.raises(UnsafePickleError) as e:
        small_repo.commit(path, message="evil")
    assert isinstance(e.value, FormatError)
    assert "never executes pickled code" in str(e.value)
    assert not marker.exists()
    assert small_repo.head() == head
    assert small_repo.log() and len(small_repo.log()) == 1
    new_objects = set(small_repo.store.ids()) - ids_before
    assert not any(small_repo.is_commit(o) for o in new_objects)


def test_unreadable_torch_file_is_a_format_error(small_repo, torch):
    path = os.path.join(small_repo.root, "broken.pt")
    with open(path, "wb") as f:
        f.write(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(FormatError):
        small_repo.commit(path, message="broken")
    assert small_repo.head() is None


def test_torch_file_without_torch_is_a_dependency_error(small_repo, monkeypatch):
    """Where torch is not installed (or here, cannot be imported), a .pt file is refused with the extra to
    install, and nothing is committed."""
    import sys

    from mlvc.errors import DependencyError

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    path = os.path.join(small_repo.root, "model.pt")
    with open(path, "wb") as f:
        f.write(b"PK\x03\x04 not read: torch is needed first")
    with pytest.raises(DependencyError, match=r"mlvc\[torch\]"):
        small_repo.commit(path, message="no torch")
    assert small_repo.head() is None


def test_blob_option_stores_a_torch_file_as_bytes(small_repo, tmp_path, torch):
    path = os.path.join(small_repo.root, "opaque.pt")
    torch.save({"w": torch.ones(2)}, path)
    result = small_repo.commit(path, message="blob", as_blob=["*.pt"])
    assert small_repo.read_manifest(result.commit.manifest).files[0].kind == KIND_BLOB
    small_repo.checkout(result.commit.id, output=str(tmp_path / "o"))
    assert sha256_file(tmp_path / "o" / "opaque.pt") == sha256_file(path)


# -- damaged safetensors files ---------------------------------------------------------------------------------


def _valid_safetensors() -> bytes:
    a = np.arange(12, dtype=np.float32)
    header = json.dumps({"a": {"dtype": "F32", "shape": [12], "data_offsets": [0, 48]}}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + a.tobytes()


def _damaged(kind: str) -> bytes:
    good = _valid_safetensors()
    n = struct.unpack("<Q", good[:8])[0]
    if kind == "too-short":
        return good[:5]
    if kind == "huge-length":
        return struct.pack("<Q", 2**40) + good[8:]
    if kind == "length-past-end":
        return struct.pack("<Q", len(good)) + good[8:]
    if kind == "not-json":
        return good[:8] + b"{" + b"x" * (n - 1) + good[8 + n:]
    if kind == "not-an-object":
        body = b"[1, 2, 3]".ljust(n)
        return good[:8] + body + good[8 + n:]
    if kind == "truncated-data":
        return good[:-4]
    if kind == "extra-data":
        return good + b"\x00" * 4
    if kind == "wrong-size-for-shape":
        h = json.dumps({"a": {"dtype": "F32", "shape": [11], "data_offsets": [0, 48]}}).encode().ljust(n)
        return good[:8] + h + good[8 + n:]
    if kind == "bad-metadata":
        h = json.dumps({"__metadata__": {"k": 1}, "a": {"dtype": "F32", "shape": [12], "data_offsets": [0, 48]}})
        h = h.encode()
        h += b" " * (-len(h) % 8)
        return struct.pack("<Q", len(h)) + h + good[8 + n:]
    if kind == "missing-offsets":
        h = json.dumps({"a": {"dtype": "F32", "shape": [12]}}).encode().ljust(n)
        return good[:8] + h + good[8 + n:]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["too-short", "huge-length", "length-past-end", "not-json", "not-an-object",
                                  "truncated-data", "extra-data", "wrong-size-for-shape", "bad-metadata",
                                  "missing-offsets"])
def test_damaged_safetensors_is_a_format_error(small_repo, kind):
    path = os.path.join(small_repo.root, "bad.safetensors")
    with open(path, "wb") as f:
        f.write(_damaged(kind))
    with pytest.raises(FormatError) as e:
        small_repo.commit(path, message="bad")
    assert isinstance(e.value, MlvcError) and isinstance(e.value, ValueError)
    assert "bad.safetensors" in str(e.value)
    assert small_repo.head() is None


def test_valid_reference_file_commits(small_repo):
    """The control for the damaged-file tests: the undamaged file is accepted."""
    path = os.path.join(small_repo.root, "good.safetensors")
    with open(path, "wb") as f:
        f.write(_valid_safetensors())
    small_repo.commit(path, message="good")
    assert np.array_equal(small_repo.load(framework="numpy")["a"], np.arange(12, dtype=np.float32))
