"""diff: numbers against numpy for every dtype (NaN and inf included), statuses, layer groups, the cost rule
(equal chunks are never decoded), the working checkpoint, partial load, and the CLI (diff, log --stat, show)."""

from __future__ import annotations

import json
import math
import os

import ml_dtypes
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import set_config, write_safetensors_np
from mlvc.cli import cli
from mlvc.errors import MlvcError
from mlvc.ops.diff import layer_group

FLOATS = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
          "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2}


def expected(a: np.ndarray, b: np.ndarray) -> dict:
    """The diff numbers computed directly in float64 (finite inputs)."""
    A, B = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    d = B - A
    return {"changed": int(np.count_nonzero(A != B)), "l2": float(np.linalg.norm(d)),
            "rel_change": float(np.linalg.norm(d) / np.linalg.norm(A)), "max_abs": float(np.abs(d).max()),
            "cosine": float(A @ B / (np.linalg.norm(A) * np.linalg.norm(B)))}


def check(t, exp: dict) -> None:
    assert t.changed == exp["changed"]
    assert t.changed_frac == exp["changed"] / t.numel
    for k in ("l2", "rel_change", "max_abs", "cosine"):
        assert getattr(t, k) == pytest.approx(exp[k], rel=1e-12, abs=1e-15), k


def by_name(d):
    return {t.name: t for t in d.tensors}


def count_decodes(repo, monkeypatch) -> list[str]:
    """Ids passed to the store's get (every decode goes through it)."""
    seen: list[str] = []
    real = repo.store.get

    def get(oid, keep=False):
        seen.append(oid)
        return real(oid, keep=keep)

    monkeypatch.setattr(repo.store, "get", get)
    return seen


def tensor_chunks(repo, rev) -> dict[str, list[str]]:
    m = repo.read_manifest(repo.read_commit(repo.resolve(rev)).manifest)
    return {n: list(t.chunks) for n, t in m.tensors().items()}


# -- numbers ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FLOATS))
def test_numbers_match_numpy_for_every_float_dtype(small_repo, name):
    dt = FLOATS[name]
    rng = np.random.default_rng(1)
    a = (rng.standard_normal((60, 100)) * 2).astype(dt)  # several 4 KiB chunks for every width
    b = a.copy()
    b[1, :10] = (a[1, :10].astype(np.float64) + 0.75).astype(dt)
    b[-1, -3:] = (a[-1, -3:].astype(np.float64) * -2).astype(dt)
    other = rng.standard_normal(7).astype(np.float32)
    c1 = small_repo.commit({"layer.0.w": a, "other": other}, message="a").commit.id
    c2 = small_repo.commit({"layer.0.w": b, "other": other}, message="b").commit.id
    for _ in range(2):  # the second time equal chunks' norms come from the cache
        d = small_repo.diff(c1, c2)
        t = by_name(d)["layer.0.w"]
        assert (t.status, t.dtype_a, t.shape_b, t.numel) == ("changed", name, [60, 100], 6000)
        check(t, expected(a, b))
        assert by_name(d)["other"].status == "unchanged"


def test_nan_and_inf_rules(small_repo):
    a = np.array([1, np.nan, np.inf, 2, 3, -np.inf, 0.0, 5], dtype=np.float32)
    b = np.array([1, np.nan, np.inf, 2, np.nan, np.inf, -0.0, 7], dtype=np.float32)
    c1 = small_repo.commit({"w": a, "v": a[[0, 1, 3, 7]]}, message="a").commit.id
    c2 = small_repo.commit({"w": b, "v": b[[0, 1, 3, 7]]}, message="b").commit.id
    d = by_name(small_repo.diff(c1, c2))
    w = d["w"]
    # NaN at the same place and +0 vs -0 are equal; 3 -> NaN, -inf -> inf and 5 -> 7 are changes
    assert w.status == "changed" and w.changed == 3
    assert w.l2 == math.inf and w.max_abs == math.inf and w.rel_change == math.inf
    fin = np.array([1, 2, 0.0, 5]), np.array([1, 2, -0.0, 7])  # positions where both sides are finite
    assert w.cosine == pytest.approx(fin[0] @ fin[1] / np.linalg.norm(fin[0]) / np.linalg.norm(fin[1]), rel=1e-12)
    v = d["v"]  # [1, nan, 2, 5] -> [1, nan, 2, 7]: NaN kept in place, the rest finite
    assert (v.changed, v.l2, v.max_abs) == (1, 2.0, 2.0)
    assert v.rel_change == pytest.approx(2 / math.sqrt(1 + 4 + 25), rel=1e-12)
    assert json.loads(json.dumps(small_repo.diff(c1, c2).to_json(), allow_nan=False))["tensors"][1]["l2"] == "inf"


def test_nan_in_unchanged_chunks_of_a_changed_tensor(small_repo):
    a = np.arange(3000, dtype=np.float32)
    a[5] = np.nan  # first chunk: same on both sides, holds a NaN
    b = a.copy()
    b[2999] = -1
    c1 = small_repo.commit({"w": a}, message="a").commit.id
    c2 = small_repo.commit({"w": b}, message="b").commit.id
    t = by_name(small_repo.diff(c1, c2))["w"]
    fa = np.nan_to_num(a.astype(np.float64), nan=0.0)
    fb = np.nan_to_num(b.astype(np.float64), nan=0.0)
    assert (t.changed, t.l2) == (1, 3000.0)
    assert t.rel_change == pytest.approx(3000 / np.linalg.norm(fa), rel=1e-12)
    assert t.cosine == pytest.approx(fa @ fb / np.linalg.norm(fa) / np.linalg.norm(fb), rel=1e-12)


def test_statuses_integers_and_dtype_changes(small_repo):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(300).astype(np.float32)
    ints = np.arange(1000, dtype=np.int32)
    flags = np.zeros(50, dtype=bool)
    sd1 = {"keep": x, "gone": x[:3], "reshape": x[:16].reshape(4, 4), "cast": x, "ints": ints, "flags": flags}
    ints2, flags2 = ints.copy(), flags.copy()
    ints2[[3, 500, 999]] += 7
    flags2[[0, 49]] = True
    cast = x.astype(ml_dtypes.bfloat16)
    sd2 = {"keep": x, "new": x[:5], "reshape": x[:16].reshape(2, 8), "cast": cast, "ints": ints2, "flags": flags2}
    c1 = small_repo.commit(sd1, message="1").commit.id
    c2 = small_repo.commit(sd2, message="2").commit.id
    d = by_name(small_repo.diff(c1, c2))
    assert {n: t.status for n, t in d.items()} == {
        "keep": "unchanged", "gone": "removed", "new": "added", "reshape": "shape_changed",
        "cast": "dtype_changed", "ints": "changed", "flags": "changed"}
    assert (d["gone"].numel, d["gone"].changed, d["gone"].l2) == (3, 3, None)
    assert (d["new"].dtype_a, d["new"].dtype_b, d["new"].numel) == (None, "F32", 5)
    assert (d["reshape"].shape_a, d["reshape"].shape_b, d["reshape"].l2) == ([4, 4], [2, 8], None)
    assert (d["cast"].dtype_a, d["cast"].dtype_b) == ("F32", "BF16")
    check(d["cast"], expected(x, cast))
    check(d["ints"], expected(ints, ints2))
    assert d["flags"].changed == 2 and d["flags"].l2 == pytest.approx(math.sqrt(2))
    assert (d["keep"].l2, d["keep"].cosine) == (0.0, 1.0)


SMALL_DTYPES = {**FLOATS, "I64": np.int64, "I32": np.int32, "I16": np.int16, "U8": np.uint8, "BOOL": np.bool_}


def _small_pair(rng, dt, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A tensor of n elements and a changed copy: a few, most or no elements moved (only -0.0 for +0.0), with
    NaN or infinities on one side or both now and then."""
    if dt is np.bool_:
        a = rng.random(n) < 0.5
        b = a.copy()
        b[rng.random(n) < 0.3] ^= True
        return a, (b if (b != a).any() else ~a)
    if np.issubdtype(dt, np.integer):
        a = rng.integers(0, 100, n).astype(dt)
        return a, a + rng.integers(0, 3, n).astype(dt) + (np.arange(n) == 0).astype(dt)
    a = (rng.standard_normal(n) * 3).astype(dt)
    kind = rng.integers(0, 5)
    b = a.astype(np.float64) + (rng.random(n) < (0.2, 1.0, 0.0, 0.5, 0.5)[kind]) * rng.standard_normal(n)
    if kind == 2:  # only signed zeros differ: the bytes changed, no value did
        a[0], b = 0.0, a.astype(np.float64)
        b[0] = -0.0
    b = b.astype(dt)
    if kind == 3:
        b[rng.integers(0, n)] = (np.nan, np.inf, -np.inf)[rng.integers(0, 3)]
    if kind == 4:
        a[rng.integers(0, n)] = np.nan
    return a, b


@pytest.mark.parametrize("seed,working", [(0, False), (1, False), (2, True)])
def test_small_tensors_compared_in_batches_give_what_one_by_one_gives(small_repo, monkeypatch, seed, working):
    """Changed tensors of one small chunk are compared many at a time (ops/diff.py, compare_small): every
    number must be what the tensor-by-tensor path gives (counts and maxima exactly, sums to rounding), for every
    dtype, NaN and infinities, signed zeros, batches split anywhere, beside tensors that are not batched."""
    from mlvc.ops import diff as diff_mod

    rng = np.random.default_rng(seed)
    sd1, sd2 = {}, {}
    names = sorted(SMALL_DTYPES)
    for i in range(120):
        name = names[rng.integers(0, len(names))]
        a, b = _small_pair(rng, SMALL_DTYPES[name], int(rng.integers(1, 40)))
        sd1[f"t{i}.{name}"], sd2[f"t{i}.{name}"] = a, (b if i % 9 else a)  # every 9th unchanged
    big = rng.standard_normal(3000).astype(np.float32)  # several chunks: never batched
    sd1["big"], sd2["big"] = big, big * 1.5
    if working:  # B is the working checkpoint: its tensors are read from the file (Side.read_first)
        path = os.path.join(small_repo.root, "model.safetensors")
        write_safetensors_np(path, sd1)
        c1 = small_repo.commit(path, message="a").commit.id
        write_safetensors_np(path, sd2)
        c2 = None
    else:
        c1 = small_repo.commit(sd1, message="a").commit.id
        c2 = small_repo.commit(sd2, message="b").commit.id
    batches = []
    real = diff_mod._Differ._batch

    def counting(self, dtype, batch):
        batches.append(len(batch))
        return real(self, dtype, batch)

    monkeypatch.setattr(diff_mod._Differ, "_batch", counting)
    from mlvc.progress import Progress

    class Counted(Progress):
        def __init__(self):
            self.done = 0

        def advance(self, n):
            self.done += n

    monkeypatch.setattr(diff_mod, "SMALL_BATCH_ELEMS", int(rng.integers(5, 60)))
    batched_progress, single_progress = Counted(), Counted()
    batched = small_repo.diff(c1, c2, progress=batched_progress)
    assert sum(batches) > 90 and len(batches) > len(SMALL_DTYPES)  # most tensors, in many batches
    monkeypatch.setattr(diff_mod, "SMALL_TENSOR_BYTES", 0)  # nothing is small: one by one
    single = small_repo.diff(c1, c2, progress=single_progress)
    assert batched_progress.done == single_progress.done > 0  # the same bytes counted once
    assert [t.name for t in batched.tensors] == [t.name for t in single.tensors]
    exact = ("status", "path", "keys", "numel", "changed", "changed_frac", "max_abs", "name", "tensors",
             "changed_tensors")
    pairs = [*zip(batched.tensors, single.tensors, strict=True), *zip(batched.groups, single.groups, strict=True)]
    assert len(batched.groups) == len(single.groups) > 1
    for x, y in pairs:
        assert [getattr(x, k, None) for k in exact] == [getattr(y, k, None) for k in exact], x.name
        for k in ("l2", "rel_change", "cosine"):
            u, v = getattr(x, k, None), getattr(y, k, None)
            assert (u is None) == (v is None) and (u is None or u == pytest.approx(v, rel=1e-12, abs=1e-300)), \
                (x.name, k)


def test_different_chunking_on_the_two_sides(tmp_path):
    from conftest import make_repo

    repo = make_repo(tmp_path / "r", chunk_size=4096)
    rng = np.random.default_rng(3)
    a = rng.standard_normal(5000).astype(np.float32)
    b = a.copy()
    b[::7] += 1
    c1 = repo.commit({"w": a}, message="a").commit.id
    repo = set_config(repo, "chunk_size", 8192)
    c2 = repo.commit({"w": b}, message="b").commit.id
    assert len(tensor_chunks(repo, c1)["w"]) != len(tensor_chunks(repo, c2)["w"])
    check(by_name(repo.diff(c1, c2))["w"], expected(a, b))


# -- groups ----------------------------------------------------------------------------------------------------


def test_layer_group_rule():
    assert layer_group("encoder.layer.3.attention.self.query.weight") == "encoder.layer.3"
    assert layer_group("model.layers.10.mlp.up_proj.weight") == "model.layers.10"
    assert layer_group("transformer.h.0.attn.c_attn.weight") == "transformer.h.0"
    assert layer_group("embeddings.word_embeddings.weight") == "embeddings.word_embeddings"
    assert layer_group("params.0") == "params"  # an index that names the tensor itself is not a layer
    assert layer_group("lm_head.weight") == "lm_head"
    assert layer_group("scale") == "(root)"


def test_group_aggregates(small_repo):
    rng = np.random.default_rng(4)
    sd = {f"enc.layer.{i}.{p}": rng.standard_normal(64).astype(np.float32) for i in (2, 10) for p in "wb"}
    sd["head.w"] = rng.standard_normal(8).astype(np.float32)
    c1 = small_repo.commit(sd, message="1").commit.id
    sd2 = dict(sd)
    sd2["enc.layer.2.w"] = sd["enc.layer.2.w"] * 2
    sd2["enc.layer.2.b"] = sd["enc.layer.2.b"] + 1
    c2 = small_repo.commit(sd2, message="2").commit.id
    d = small_repo.diff(c1, c2)
    assert [g.name for g in d.groups] == ["enc.layer.2", "enc.layer.10", "head"]  # natural order
    g = d.groups[0]
    assert (g.tensors, g.changed_tensors, g.numel, g.changed) == (2, 2, 128, 128)
    dw = sd2["enc.layer.2.w"].astype(np.float64) - sd["enc.layer.2.w"]
    db = sd2["enc.layer.2.b"].astype(np.float64) - sd["enc.layer.2.b"]  # not exactly 1: float32 rounding
    assert g.l2 == pytest.approx(math.sqrt(dw @ dw + db @ db), rel=1e-12)
    wa, ba = sd["enc.layer.2.w"].astype(np.float64), sd["enc.layer.2.b"].astype(np.float64)
    norm_a = math.sqrt(wa @ wa + ba @ ba)
    assert g.rel_change == pytest.approx(g.l2 / norm_a, rel=1e-12)
    assert (d.groups[1].changed_tensors, d.groups[1].l2, d.groups[1].rel_change) == (0, 0.0, 0.0)
    assert d.total().changed_tensors == 2


# -- cost: what is decoded -----------------------------------------------------------------------------------


def test_a_diff_against_the_parent_decodes_each_object_once(tmp_path, monkeypatch):
    """B's chunks are deltas on A's (a commit and its parent, three links deep): each object is decoded once,
    A's chunk not a second time as the base of B's."""
    from conftest import make_repo
    from mlvc import codec
    from mlvc.util import hash_bytes

    repo = make_repo(tmp_path / "r", chunk_size=1 << 16)  # chunks above the pack limit: stored as deltas
    rng = np.random.default_rng(4)
    w = rng.standard_normal((4, 40_000)).astype(np.float32)  # 10 chunks of 64 KiB
    ids = []
    for step in range(4):
        w = w + rng.standard_normal(w.shape).astype(np.float32) * 1e-3
        ids.append(repo.commit({"w": w, "v": w[0, :10] * step}, message=str(step)).commit.id)
    for lo, hi in ((0, 3), (1, 3), (2, 3), (0, 1)):
        repo = repo.open(repo.root)  # a fresh process: nothing cached
        decoded: list[str] = []
        real = codec.decode

        def counting(data, get_base=None, real=real, decoded=decoded):
            h = codec.ObjectHeader.parse(data)
            if h.width > 1:  # a tensor's chunk (commits and manifests are read more than once, and are small)
                decoded.append(hash_bytes(bytes(data)) + f"@{h.depth}")  # the object file
            return real(data, get_base)

        monkeypatch.setattr(codec, "decode", counting)
        d = by_name(repo.diff(ids[lo], ids[hi]))
        monkeypatch.undo()
        assert d["w"].status == "changed" and d["w"].changed > 0
        depths = [int(x.split("@")[1]) for x in decoded]
        assert max(depths) == hi and len(decoded) == len(set(decoded)), (lo, hi, sorted(decoded))


def test_only_the_changed_tensors_chunks_are_decoded(small_repo, monkeypatch):
    rng = np.random.default_rng(5)
    sd = {f"layer.{i}.w": rng.standard_normal(4096).astype(np.float32) for i in range(4)}  # 4 chunks each
    c1 = small_repo.commit(sd, message="1").commit.id
    sd["layer.2.w"] = sd["layer.2.w"] + 1
    c2 = small_repo.commit(sd, message="2").commit.id
    old, new = tensor_chunks(small_repo, c1), tensor_chunks(small_repo, c2)
    all_chunks = {c for m in (old, new) for ids in m.values() for c in ids}
    seen = count_decodes(small_repo, monkeypatch)
    d = small_repo.diff(c1, c2)
    assert [t.name for t in d.changed] == ["layer.2.w"]
    assert sorted(c for c in seen if c in all_chunks) == sorted(old["layer.2.w"] + new["layer.2.w"])


def test_equal_chunks_inside_a_changed_tensor_are_read_once_then_cached(small_repo, monkeypatch):
    rng = np.random.default_rng(6)
    a = rng.standard_normal(4096).astype(np.float32)  # 4 chunks of 1024 elements
    b = a.copy()
    b[2048 + 7] = 0.5  # only the third chunk changes
    c1 = small_repo.commit({"w": a}, message="1").commit.id
    c2 = small_repo.commit({"w": b}, message="2").commit.id
    old, new = tensor_chunks(small_repo, c1)["w"], tensor_chunks(small_repo, c2)["w"]
    assert [x == y for x, y in zip(old, new, strict=True)] == [True, True, False, True]
    seen = count_decodes(small_repo, monkeypatch)
    first = by_name(small_repo.diff(c1, c2))["w"]
    chunks = [c for c in seen if c in set(old + new)]
    assert sorted(chunks) == sorted([old[2], new[2], old[0], old[1], old[3]])  # equal ones once, not twice
    seen.clear()
    second = by_name(small_repo.diff(c1, c2))["w"]
    assert sorted(c for c in seen if c in set(old + new)) == sorted([old[2], new[2]])
    check(first, expected(a, b))
    check(second, expected(a, b))


def test_select_tensors_rule():
    from mlvc.ops.select import select_tensors

    names = ["enc.1.w", "enc.0.w", "head.b"]
    assert select_tensors(names, None, "HEAD") == names
    assert select_tensors(names, "enc.*", "HEAD") == ["enc.1.w", "enc.0.w"]  # the given order is kept
    assert select_tensors(names, ["head.b", "enc.0.*"], "HEAD") == ["enc.0.w", "head.b"]
    assert select_tensors(names, [], "HEAD") == []
    assert select_tensors(iter(names), "*.b", "HEAD") == ["head.b"]
    with pytest.raises(MlvcError) as e:  # globs match whole names, case-sensitively
        select_tensors(names, ["enc.*", "x*", "enc", "HEAD.B"], "v1")
    assert str(e.value) == ("no tensor in v1 matches 'x*', 'enc', 'HEAD.B'; names are matched whole, "
                            "e.g. 'encoder.layer.*.attention.*'")


def test_diff_load_and_restore_select_tensors_alike(small_repo):
    rng = np.random.default_rng(3)
    path = os.path.join(small_repo.root, "model.safetensors")
    sd = {"a.w": rng.standard_normal(64).astype(np.float32), "b.w": rng.standard_normal(64).astype(np.float32)}
    write_safetensors_np(path, sd)
    c1 = small_repo.commit(path, message="1").commit.id
    assert [t.name for t in small_repo.diff(c1, c1, tensors="a.*").tensors] == ["a.w"]
    assert list(small_repo.load(c1, ["a.*"], framework="numpy")) == ["a.w"]
    assert small_repo.restore(c1, ["a.*"]).tensors == ["a.w"]
    tail = "matches 'zz*'; names are matched whole, e.g. 'encoder.layer.*.attention.*'"
    for call, where in [(lambda: small_repo.diff(c1, c1, tensors=["a.*", "zz*"]), f"{c1} or {c1}"),
                        (lambda: small_repo.diff(None, tensors="zz*"),
                         "the empty checkpoint or the working checkpoint"),
                        (lambda: small_repo.load("HEAD", ["a.*", "zz*"], framework="numpy"), "HEAD"),
                        (lambda: small_repo.restore("HEAD", ["zz*"]), "HEAD")]:
        with pytest.raises(MlvcError) as e:
            call()
        assert str(e.value) == f"no tensor in {where} {tail}"


def test_working_checkpoint_is_read_from_the_file_without_storing(small_repo, monkeypatch):
    rng = np.random.default_rng(7)
    path = os.path.join(small_repo.root, "model.safetensors")
    sd = {"a.w": rng.standard_normal(2048).astype(np.float32), "b.w": rng.standard_normal(2048).astype(np.float32)}
    write_safetensors_np(path, sd)
    small_repo.commit(path, message="1")
    committed = tensor_chunks(small_repo, "HEAD")
    sd2 = dict(sd)
    sd2["b.w"] = sd["b.w"] * 3
    write_safetensors_np(path, sd2)
    objects = sorted(small_repo.store.ids())
    seen = count_decodes(small_repo, monkeypatch)
    d = small_repo.diff()
    assert d.b is None and d.a == small_repo.head()
    assert [t.name for t in d.changed] == ["b.w"]
    check(by_name(d)["b.w"], expected(sd["b.w"], sd2["b.w"]))
    assert sorted(small_repo.store.ids()) == objects
    assert sorted(c for c in seen if c in committed["a.w"] + committed["b.w"]) == sorted(committed["b.w"])
    # one revision: that revision against the working checkpoint; globs limit the comparison
    d2 = small_repo.diff("HEAD", tensors=["a.*"])
    assert [t.name for t in d2.tensors] == ["a.w"] and not d2.changed
    with pytest.raises(MlvcError, match="matches 'zzz"):
        small_repo.diff("HEAD", tensors=["zzz*"])


def test_working_torch_file(small_repo, torch):
    path = os.path.join(small_repo.root, "model.pt")
    sd = {"enc.0.w": torch.arange(3000, dtype=torch.float32), "enc.1.w": torch.ones(10, dtype=torch.bfloat16)}
    torch.save(sd, path)
    small_repo.commit(path, message="1")
    sd2 = {"enc.0.w": sd["enc.0.w"] * 2, "enc.1.w": sd["enc.1.w"]}
    torch.save(sd2, path)
    d = small_repo.diff()
    assert [t.name for t in d.changed] == ["enc.0.w"]
    check(by_name(d)["enc.0.w"], expected(sd["enc.0.w"].numpy(), sd2["enc.0.w"].numpy()))
    with pytest.raises(MlvcError, match="all together"):
        small_repo.restore("HEAD", ["enc.0.*"])


def test_partial_load_reads_only_the_chosen_tensors(small_repo, monkeypatch):
    rng = np.random.default_rng(8)
    sd = {f"encoder.layer.{i}.w": rng.standard_normal(3000).astype(np.float32) for i in range(3)}
    small_repo.commit(sd, message="1")
    chunks = tensor_chunks(small_repo, "HEAD")
    seen = count_decodes(small_repo, monkeypatch)
    out = small_repo.load("HEAD", tensors=["encoder.layer.0.*"], framework="numpy")
    assert list(out) == ["encoder.layer.0.w"]
    assert np.array_equal(out["encoder.layer.0.w"], sd["encoder.layer.0.w"])
    every = {c for ids in chunks.values() for c in ids}
    assert sorted(c for c in seen if c in every) == sorted(chunks["encoder.layer.0.w"])


# -- CLI -----------------------------------------------------------------------------------------------------


@pytest.fixture
def cli_repo(small_repo, monkeypatch):
    monkeypatch.chdir(small_repo.root)
    monkeypatch.setenv("MLVC_AUTHOR", "tester")
    rng = np.random.default_rng(9)
    path = os.path.join(small_repo.root, "model.safetensors")
    sd = {f"encoder.layer.{i}.{p}": rng.standard_normal(512).astype(np.float32) for i in range(3) for p in ("w", "b")}
    write_safetensors_np(path, sd)
    small_repo.commit(path, message="first")
    sd["encoder.layer.1.w"] = sd["encoder.layer.1.w"] * 1.5
    sd["encoder.layer.2.b"] = sd["encoder.layer.2.b"] + 0.01
    write_safetensors_np(path, sd)
    small_repo.commit(path, message="second")
    return small_repo


def run(*args, code=0):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def test_cli_diff_table_stat_json_sort_and_globs(cli_repo):
    out = run("diff", "HEAD~1", "HEAD")
    assert "encoder.layer.1.w" in out and "encoder.layer.2.b" in out and "encoder.layer.0.w" not in out
    assert "2 of 6 tensor(s) changed" in out
    out = run("diff", "HEAD~1", "HEAD", "--sort", "rel_change")
    assert out.index("encoder.layer.1.w") < out.index("encoder.layer.2.b")  # 0.5 before ~0.01
    out = run("diff", "HEAD~1", "HEAD", "--stat")
    assert "encoder.layer.1" in out and "1/2" in out and "encoder.layer.1.w" not in out
    data = json.loads(run("diff", "HEAD~1", "HEAD", "--json", "--", "encoder.layer.1.*"))
    assert [t["name"] for t in data["tensors"]] == ["encoder.layer.1.b", "encoder.layer.1.w"]
    assert data["tensors"][1]["rel_change"] == pytest.approx(0.5, rel=1e-6)
    assert data["groups"][0]["name"] == "encoder.layer.1"
    assert "No tensor changed (6 compared)" in run("diff")  # working checkpoint == HEAD
    assert "is not a column" in run("diff", "--sort", "bogus", code=2)
    assert "at most two revisions" in run("diff", "a", "b", "c", code=2)
    assert "no tensor in HEAD~1 or HEAD matches 'nope*'" in run("diff", "HEAD~1", "HEAD", "--", "nope*", code=1)
    assert "unknown revision" in run("diff", "nosuchrev", code=4)


def test_cli_log_stat_and_show(cli_repo):
    out = run("log", "--stat")
    assert "2 of 6 tensor(s) changed" in out and "6 of 6 tensor(s) changed (6 added)" in out
    out = run("log", "--oneline", "--stat")
    assert "[2/6 tensor(s) changed, relative change" in out
    data = json.loads(run("log", "--stat", "--json"))
    assert data[0]["stat"]["changed_tensors"] == 2 and data[1]["stat"]["changed_tensors"] == 6
    out = run("show")
    assert "Changes against parent" in out and "encoder.layer.1.w" in out
    out = run("show", "HEAD", "--stat")
    assert "encoder.layer.1 " in out and "encoder.layer.1.w" not in out
    shown = json.loads(run("show", "--json"))
    assert shown["diff"]["a"] == cli_repo.resolve("HEAD~1")
    assert "first commit" in run("show", "HEAD~1")
    assert "Changes against" not in run("show", "--no-diff")
    assert "diff" not in json.loads(run("show", "--no-diff", "--json"))
