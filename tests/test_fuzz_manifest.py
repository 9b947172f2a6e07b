"""Fuzzing the manifest and commit parsers through Repo.read_manifest and Repo.read_commit (the objects
stored in an in-memory store): structural mutations of real manifests and commits, byte mutations of their
canonical JSON, and random JSON documents of the right type.

Only an MlvcError may come out (CorruptObjectError, "malformed ..."). Whatever is accepted must be usable:
a manifest writes back (to_bytes) to bytes that parse again, lists each path once and never a path inside
another file's, and its tensors and object ids can be listed; a commit writes back too.
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
from hypothesis import given

from conftest import make_repo, write_safetensors_np
from fuzz_util import check_all, fuzz_settings, mutate_bytes, mutate_json, random_json, random_key, seed_batches
from mlvc.errors import MlvcError
from mlvc.objects import Commit, Manifest
from mlvc.store import MemoryObjectStore
from mlvc.util import canonical_json

# Generated inputs per test: 10,000 against each parser.
MANIFEST_MUTATION_INPUTS = 6_000
MANIFEST_BYTE_INPUTS = 3_000
MANIFEST_RANDOM_INPUTS = 1_000
COMMIT_MUTATION_INPUTS = 5_000
COMMIT_BYTE_INPUTS = 3_000
COMMIT_RANDOM_INPUTS = 2_000

MANIFEST_KEYS = ("type", "format", "roots", "files", "chunk_size", "path", "kind", "size", "hash", "chunks",
                 "tensors", "header", "skeleton", "exact", "archive", "frame", "layout", "name", "dtype", "shape",
                 "nbytes", "alias", "bundles", "small", "runs", "prefix", "suffix", "in")
COMMIT_KEYS = ("type", "format", "manifest", "parents", "author", "time", "message", "metadata")


@pytest.fixture(scope="module")
def fuzz_repo(tmp_path_factory):
    """A repository with an in-memory store, and the manifests and commits of a few real commits."""
    repo = make_repo(tmp_path_factory.mktemp("fuzz-manifest") / "repo", chunk_size=64)
    repo.store = MemoryObjectStore()
    rng = np.random.default_rng(0)
    model = os.path.join(repo.root, "model")
    os.makedirs(model)
    write_safetensors_np(os.path.join(model, "a.safetensors"),
                         {"w": rng.standard_normal((4, 8), dtype=np.float32), "b": np.zeros(3, np.float16),
                          "s": np.array(7, np.int64), "e": np.zeros((0, 2), np.uint8)}, {"note": "x"})
    os.makedirs(os.path.join(model, "sub"))
    with open(os.path.join(model, "sub", "config.json"), "w") as f:
        f.write('{"hidden": 8}' * 20)
    repo.commit(model, message="first", metadata={"step": 1, "lr": 0.5, "tags": ["a", {"b": None}]})
    repo.commit({"x.weight": rng.standard_normal(40, dtype=np.float32)}, message="second\nwith a body",
                path="sd/model.safetensors")
    manifests, commits = [], []
    for c in repo.log():
        commits.append(json.loads(repo.store.get(c.id)))
        manifests.append(json.loads(repo.store.get(c.manifest)))
    # an entry of each older kind too: a torch file from before frame/layout, and one with them
    torch_entry = {"path": "t.pt", "kind": "torch", "size": 10, "hash": "1" * 32, "skeleton": "2" * 32,
                   "exact": True, "archive": "t", "tensors": [{"name": "t", "dtype": "F32", "shape": [2],
                                                               "nbytes": 8, "hash": "3" * 32, "chunks": ["4" * 32]}]}
    framed = dict(torch_entry, path="u.pt", frame=["5" * 32], layout=[4, "t", 2], skeleton=None)
    manifests.append(dict(manifests[0], files=manifests[0]["files"] + [torch_entry, framed]))
    assert any("small" in f for m in manifests for f in m["files"])  # the format-4 table is among what is mutated
    return repo, manifests, commits


def _store_and_read(repo, data: bytes, read):
    oid = repo.store.put(data).id
    try:
        return read(oid)
    finally:
        repo.store.delete(oid)


def _check_manifest(repo, data: bytes) -> None:
    try:
        m = _store_and_read(repo, data, repo.read_manifest)
    except MlvcError:
        return
    paths = [f.path for f in m.files]
    assert len(set(paths)) == len(paths)
    for p in paths:
        parts = p.split("/")
        assert not any("/".join(parts[:i]) in paths for i in range(1, len(parts)))
    m.tensors()
    for f in m.files:
        f.object_ids()
    again = Manifest.from_dict(json.loads(m.to_bytes()))
    assert [f.path for f in again.files] == sorted(paths)


def _check_commit(repo, data: bytes) -> None:
    try:
        c = _store_and_read(repo, data, repo.read_commit)
    except MlvcError:
        return
    assert Commit.from_dict(json.loads(c.to_bytes()), c.id).to_bytes() == c.to_bytes()
    json.dumps(c.to_json())


def _dumps(doc) -> bytes:
    try:
        return json.dumps(doc).encode()  # \\u escapes for lone surrogates
    except ValueError:  # an integer past the digit limit cannot even be written
        return b"{}"


def _manifest_structure(manifests):
    def make(rng: random.Random) -> bytes:
        doc = mutate_json(rng, rng.choice(manifests), keys=MANIFEST_KEYS)
        if rng.random() < 0.2 and isinstance(doc, dict) and isinstance(doc.get("files"), list) and doc["files"]:
            f = rng.choice(doc["files"])  # a second file at this path, or at a path inside it
            if isinstance(f, dict) and isinstance(f.get("path"), str):
                doc["files"].append(dict(f, path=rng.choice([f["path"], f["path"] + "/x", "a/" * 300 + "f"])))
        return _dumps(doc)
    return make


@fuzz_settings(MANIFEST_MUTATION_INPUTS)
@given(seed_batches())
def test_manifest_structural_mutations(fuzz_repo, seeds):
    repo, manifests, _ = fuzz_repo
    check_all(seeds, _manifest_structure(manifests), lambda data: _check_manifest(repo, data))


@fuzz_settings(MANIFEST_BYTE_INPUTS)
@given(seed_batches())
def test_manifest_byte_mutations(fuzz_repo, seeds):
    repo, manifests, _ = fuzz_repo
    raw = [canonical_json(m) for m in manifests]
    check_all(seeds, lambda rng: mutate_bytes(rng, rng.choice(raw)), lambda data: _check_manifest(repo, data))


def _random_doc(kind: str):
    def make(rng: random.Random) -> bytes:
        doc = {random_key(rng): random_json(rng) for _ in range(rng.randint(0, 6))}
        doc["type"] = kind
        for key in (MANIFEST_KEYS if kind == "manifest" else COMMIT_KEYS)[1:]:
            if rng.random() < 0.7:
                doc[key] = random_json(rng)
        return _dumps(doc)
    return make


@fuzz_settings(MANIFEST_RANDOM_INPUTS)
@given(seed_batches())
def test_manifest_random_documents(fuzz_repo, seeds):
    repo, _, _ = fuzz_repo
    check_all(seeds, _random_doc("manifest"), lambda data: _check_manifest(repo, data))


@fuzz_settings(COMMIT_MUTATION_INPUTS)
@given(seed_batches())
def test_commit_structural_mutations(fuzz_repo, seeds):
    repo, _, commits = fuzz_repo
    check_all(seeds, lambda rng: _dumps(mutate_json(rng, rng.choice(commits), keys=COMMIT_KEYS)),
              lambda data: _check_commit(repo, data))


@fuzz_settings(COMMIT_BYTE_INPUTS)
@given(seed_batches())
def test_commit_byte_mutations(fuzz_repo, seeds):
    repo, _, commits = fuzz_repo
    raw = [canonical_json(c) for c in commits]
    check_all(seeds, lambda rng: mutate_bytes(rng, rng.choice(raw)), lambda data: _check_commit(repo, data))


@fuzz_settings(COMMIT_RANDOM_INPUTS)
@given(seed_batches())
def test_commit_random_documents(fuzz_repo, seeds):
    repo, _, _ = fuzz_repo
    check_all(seeds, _random_doc("commit"), lambda data: _check_commit(repo, data))


def test_the_seed_manifests_and_commits_parse(fuzz_repo):
    repo, manifests, commits = fuzz_repo
    for m in manifests:
        Manifest.from_dict(m)
    for c in commits:
        _check_commit(repo, canonical_json(c))
        Commit.from_dict(c, "0" * 32)
