"""merge: disjoint changes taken exactly, fast-forward, conflicts write nothing, and each strategy's
arithmetic (float64, rounded once to nearest-even) checked for every float dtype."""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest
from click.testing import CliRunner

from mlvc.cli import cli
from mlvc.errors import ConflictError, DirtyWorkingCheckpointError, MlvcError
from mlvc.ops import merge as merge_mod
from mlvc.ops.merge import merge_base
from weights_util import nearest, read_st, repo_state, write_st

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
          "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2}
SMALL = {"BF16": (ml_dtypes.bfloat16, np.uint16), "F8_E4M3": (ml_dtypes.float8_e4m3fn, np.uint8),
         "F8_E5M2": (ml_dtypes.float8_e5m2, np.uint8)}


def round_ref(x: np.ndarray, name: str) -> np.ndarray:
    """Reference rounding of float64 results to a dtype, independent of mlvc.numeric."""
    if name in SMALL:
        mltype, bits = SMALL[name]
        return nearest(x.ravel(), mltype, bits).view(mltype).reshape(x.shape)
    return x.astype(DTYPES[name])


def base_weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    w = {f"{name.lower()}.w": (rng.standard_normal((8, 160)) * 2).astype(dt) for name, dt in DTYPES.items()}
    w["ids"] = np.arange(100, dtype=np.int32)
    w["keep.w"] = rng.standard_normal(64).astype(np.float32)
    return w


class Model:
    """A repository whose checkpoint is model/ (one safetensors file and a config.json)."""

    def __init__(self, repo):
        self.repo = repo
        self.dir = os.path.join(repo.root, "model")
        self.path = os.path.join(self.dir, "model.safetensors")
        self.config = os.path.join(self.dir, "config.json")

    def write(self, w, config="{}"):
        write_st(self.path, w, {"format": "pt"})
        with open(self.config, "w") as f:
            f.write(config)

    def commit(self, w, message, config="{}"):
        self.write(w, config)
        return self.repo.commit(paths=[self.dir] if self.repo.head() is None else None, message=message).commit.id

    def weights(self):
        return read_st(self.path)


@pytest.fixture
def model(small_repo, monkeypatch):
    monkeypatch.chdir(small_repo.root)
    monkeypatch.setenv("MLVC_AUTHOR", "tester")
    m = Model(small_repo)
    m.base = base_weights()
    m.base_id = m.commit(m.base, "base")
    small_repo.create_branch("feat")
    return m


def both_sides(model, ours_change: dict, theirs_change: dict, ours_config="{}", theirs_config="{}"):
    repo = model.repo
    ours = model.commit({**model.base, **ours_change}, "ours", ours_config)
    repo.switch("feat")
    theirs = model.commit({**model.base, **theirs_change}, "theirs", theirs_config)
    repo.switch("main")
    return ours, theirs


def assert_exact(got: np.ndarray, want: np.ndarray, name: str = "") -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, name
    assert got.tobytes() == want.tobytes(), name


def test_disjoint_changes_are_taken_exactly(model):
    b = model.base
    ours_w = {**b, "f32.w": b["f32.w"] + np.float32(1)}
    ours_w.pop("f16.w")  # removed on our side
    ours = model.commit(ours_w, "ours")
    model.repo.switch("feat")
    theirs_w = {**b, "bf16.w": (b["bf16.w"].astype(np.float32) * 3).astype(ml_dtypes.bfloat16),
                "new.w": np.ones(5, np.float32)}
    theirs = model.commit(theirs_w, "theirs", config='{"hidden": 3}')
    model.repo.switch("main")
    r = model.repo.merge("feat")
    assert not r.fast_forward and r.commit.parents == [ours, theirs] and r.base == model.base_id
    assert r.commit.metadata["merge"] == {"base": model.base_id, "theirs": theirs, "rev": "feat", "strategy": None,
                                          "scale": None, "resolved": 0, "resolved_groups": {}, "from_theirs": 3,
                                          "followed": 0}
    assert sorted(r.from_theirs) == ["bf16.w (model/model.safetensors)", "file model/config.json",
                                     "new.w (model/model.safetensors)"]
    got = model.weights()
    want = {**ours_w, "bf16.w": theirs_w["bf16.w"], "new.w": theirs_w["new.w"]}
    assert sorted(got) == sorted(want)
    for k in want:
        assert_exact(got[k], want[k], k)
    with open(model.config) as f:
        assert f.read() == '{"hidden": 3}'
    assert model.repo.status().clean
    # the merged tensors reuse the sides' chunks: nothing was re-encoded
    chunks = {n: t.chunks for n, t in model.repo.read_manifest(r.commit.manifest).tensors().items()}
    theirs_chunks = model.repo.read_manifest(model.repo.read_commit(theirs).manifest).tensors()
    assert chunks["bf16.w"] == theirs_chunks["bf16.w"].chunks
    assert merge_base(model.repo, ours, theirs) == model.base_id
    assert model.repo.diff("HEAD^1", "HEAD").changed[0].name == "bf16.w"


def test_fast_forward_and_up_to_date(model):
    repo = model.repo
    repo.switch("feat")
    w = {**model.base, "keep.w": model.base["keep.w"] * 2}
    theirs = model.commit(w, "feat only")
    repo.switch("main")
    r = repo.merge("feat")
    assert r.fast_forward and r.commit is None and repo.head() == theirs == r.head
    assert_exact(model.weights()["keep.w"], w["keep.w"])
    assert repo.status().clean
    assert repo.reflog()[0].entry.message == "merge feat: fast-forward"
    again = repo.merge(model.base_id)
    assert again.up_to_date and repo.head() == theirs


def test_conflict_without_strategy_writes_nothing(model):
    b = model.base
    both_sides(model, {"f32.w": b["f32.w"] + 1, "ids": b["ids"] + 1}, {"f32.w": b["f32.w"] - 1, "ids": b["ids"] * 2},
               ours_config='{"a": 1}', theirs_config='{"a": 2}')
    before = repo_state(model.repo)
    with pytest.raises(ConflictError) as e:
        model.repo.merge("feat")
    assert sorted(str(c) for c in e.value.conflicts) == [
        "f32.w (model/model.safetensors): changed on this branch and changed on the other",
        "file model/config.json: changed on this branch and changed on the other",
        "ids (model/model.safetensors): changed on this branch and changed on the other"]
    assert "--strategy" in str(e.value)
    assert repo_state(model.repo) == before
    # average cannot combine integers or files: still conflicts, still nothing written
    with pytest.raises(ConflictError) as e:
        model.repo.merge("feat", strategy="average")
    assert sorted(c.tensor or c.path for c in e.value.conflicts) == ["ids", "model/config.json"]
    assert "float tensors only" in str(e.value)
    assert repo_state(model.repo) == before


def test_merge_refuses_uncommitted_changes_in_files_it_rewrites(model):
    b = model.base
    both_sides(model, {"f32.w": b["f32.w"] + 1}, {"f32.w": b["f32.w"] + 3})
    model.write({**model.weights(), "keep.w": b["keep.w"] * 5})  # uncommitted, in the file the merge rewrites
    before = repo_state(model.repo)
    with pytest.raises(DirtyWorkingCheckpointError):
        model.repo.merge("feat", strategy="average")
    assert repo_state(model.repo) == before


def test_same_change_on_both_sides_is_no_conflict(model):
    b = model.base
    same = {"f32.w": b["f32.w"] * 0}
    both_sides(model, same, same)
    r = model.repo.merge("feat")
    assert r.resolved == [] and r.commit.parents[1] == model.repo.resolve("feat")
    assert_exact(model.weights()["f32.w"], same["f32.w"])


@pytest.mark.parametrize("strategy", ["ours", "theirs"])
def test_ours_and_theirs(model, strategy):
    b = model.base
    ours_c = {"f32.w": b["f32.w"] + 1, "ids": b["ids"] + 1}
    theirs_c = {"f32.w": b["f32.w"] - 1, "ids": b["ids"] * 2}
    both_sides(model, ours_c, theirs_c, '{"x": "ours"}', '{"x": "theirs"}')
    r = model.repo.merge("feat", strategy=strategy)
    pick = ours_c if strategy == "ours" else theirs_c
    got = model.weights()
    for k in pick:
        assert_exact(got[k], pick[k], k)
    with open(model.config) as f:
        assert f.read() == f'{{"x": "{strategy}"}}'
    assert r.commit.metadata["merge"]["strategy"] == strategy and len(r.resolved) == 3
    assert model.repo.status().clean


def _changes(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    b = base_weights()
    return {k: (b[k].astype(np.float64) + rng.standard_normal(b[k].shape) * 0.3).astype(b[k].dtype)
            for k in b if k.endswith(".w") and k != "keep.w"}


@pytest.mark.parametrize("strategy,scale", [("average", None), ("task-arithmetic", None), ("task-arithmetic", 0.5)])
def test_arithmetic_strategies_for_every_float_dtype(model, monkeypatch, strategy, scale):
    monkeypatch.setattr(merge_mod, "BLOCK_ELEMS", 300)  # several blocks per tensor, not aligned to chunks
    ours_c, theirs_c = _changes(1), _changes(2)
    both_sides(model, ours_c, theirs_c)
    r = model.repo.merge("feat", strategy=strategy, scale=scale)
    meta = r.commit.metadata["merge"]
    assert meta["strategy"] == strategy and meta["scale"] == (None if strategy == "average" else scale or 1.0)
    assert len(r.resolved) == len(ours_c)
    got = model.weights()
    for name in DTYPES:
        key = f"{name.lower()}.w"
        b = model.base[key].astype(np.float64)
        o, t = ours_c[key].astype(np.float64), theirs_c[key].astype(np.float64)
        if strategy == "average":
            x = (o + t) * 0.5
        else:
            s = 1.0 if scale is None else scale
            x = b + s * (o - b) + s * (t - b)
        assert_exact(got[key], round_ref(x, name), key)
    assert_exact(got["keep.w"], model.base["keep.w"])
    assert model.repo.status().clean


def test_revert_of_a_merge_needs_mainline(model):
    b = model.base
    both_sides(model, {"f32.w": b["f32.w"] + 1}, {"f64.w": b["f64.w"] + 1})
    r = model.repo.merge("feat")
    with pytest.raises(MlvcError, match="--mainline"):
        model.repo.revert(r.commit.id)
    model.repo.revert(r.commit.id, mainline=1)  # undo what the merge brought in from feat
    got = model.weights()
    assert_exact(got["f64.w"], b["f64.w"])
    assert_exact(got["f32.w"], b["f32.w"] + 1)


def test_cli_merge(model):
    b = model.base
    both_sides(model, {"f32.w": b["f32.w"] + 1}, {"f32.w": b["f32.w"] + 3})
    runner = CliRunner()

    def run(*args, code=0):
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    out = run("merge", "feat", code=16)
    assert "f32.w (model/model.safetensors): changed on this branch and changed on the other" in out
    assert "--strategy ours|theirs|average|task-arithmetic" in out
    assert "--scale applies to --strategy task-arithmetic only" in run("merge", "feat", "--scale", "2", code=1)
    assert "'median' is not one of" in run("merge", "feat", "--strategy", "median", code=2)
    out = run("merge", "feat", "--strategy", "average")
    assert "resolved by average" in out and "f32.w (model/model.safetensors)" in out
    assert_exact(model.weights()["f32.w"], ((b["f32.w"] + 1).astype(np.float64) / 2 +
                                            (b["f32.w"] + 3).astype(np.float64) / 2).astype(np.float32))
    assert "Already up to date" in run("merge", "feat")
    data = json.loads(run("log", "-n", "1", "--json"))
    assert data[0]["metadata"]["merge"]["strategy"] == "average" and len(data[0]["parents"]) == 2
