"""The trees that revert, merge and restore build (mlvc/ops/treebuild.py) describe the files they write, for any
history of a safetensors file: tensors of known dtypes and of dtypes mlvc does not know (whose byte count the shape
does not give), empty ones sharing offsets, bundled small ones and chunked large ones, added, removed, changed in
value, size or shape. After each operation that succeeds, fsck (which compares every entry with its file's stored
header) finds nothing, every commit checks out to a file whose own header gives exactly the tensors of the state
the operation promised, and an operation refused leaves HEAD and the work tree as they were."""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import make_repo
from mlvc.errors import ConflictError, NothingToCommitError
from mlvc.formats import safetensors as st_format
from mlvc.repo import Repo
from weights_util import write_st_raw

Tensor = tuple[str, list[int], bytes]  # dtype, shape, bytes
State = dict[str, Tensor]

KNOWN = {"F32": 4, "F16": 2, "I64": 8, "U8": 1}


def write_state(path: str, state: State) -> None:
    """The file as a tool would write it: tensors in name order, offsets as they fall (unknown dtypes as given)."""
    write_st_raw(path, [(name, *state[name]) for name in sorted(state)])


def read_state(path: str) -> State:
    """A file's tensors as its own header gives them (mlvc's parser, which checks the layout)."""
    with open(path, "rb") as f:
        layout = st_format.read_layout(f, path)
        f.seek(layout.data_start)
        data = f.read()
    return {n: (d, list(s), data[b:e]) for n, d, s, b, e in zip(layout.names, layout.dtypes, layout.shapes,
                                                                 layout.begins, layout.ends, strict=True)}


def state_of(repo: Repo, rev: str, out: str) -> State:
    repo.checkout(rev, output=out)
    return read_state(os.path.join(out, "model.safetensors"))


def _tensor(kind: str, n: int, seed: int) -> Tensor:
    rng = np.random.default_rng(seed)
    if kind == "XQ9":  # a dtype mlvc does not know: any byte count under a shape of two elements
        return kind, [2], rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    width = KNOWN[kind]
    shape = [n] if n % 2 else [2, n // 2]
    return kind, shape, rng.integers(0, 256, n * width, dtype=np.uint8).tobytes()


_sizes = st.one_of(st.just(0), st.integers(1, 12), st.integers(600, 1500))  # empty, bundled, chunked
_tensors = st.dictionaries(st.sampled_from([f"t{i}" for i in range(8)]),
                           st.tuples(st.sampled_from([*KNOWN, "XQ9"]), _sizes, st.integers(0, 1 << 20)),
                           min_size=1, max_size=6)
_edits = st.lists(st.tuples(st.sampled_from(["value", "size", "drop", "add", "shape"]),
                            st.sampled_from([f"t{i}" for i in range(10)]), st.integers(0, 1 << 20)),
                  min_size=1, max_size=4)


def build(spec: dict) -> State:
    return {name: _tensor(kind, n, seed) for name, (kind, n, seed) in spec.items()}


def edit(state: State, edits: list) -> State:
    out = dict(state)
    for op, name, seed in edits:
        if op == "add" or name not in out:
            out[name] = _tensor(["F32", "U8", "XQ9", "I64"][seed % 4], [0, 3, 700][seed % 3], seed)
        elif op == "drop" and len(out) > 1:
            del out[name]
        elif op == "value":
            dtype, shape, raw = out[name]
            out[name] = (dtype, shape, bytes((b + 1 + seed) % 256 for b in raw))
        elif op == "size":  # unknown dtype: another byte count under the same shape; known: another shape too
            dtype, shape, raw = out[name]
            out[name] = _tensor(dtype, len(raw) // KNOWN.get(dtype, 1) + 1 + seed % 5, seed) if dtype in KNOWN \
                else (dtype, shape, raw + bytes([seed % 256]) * (1 + seed % 3))
        elif op == "shape":
            dtype, shape, raw = out[name]
            out[name] = (dtype, [int(np.prod(shape))] if len(shape) > 1 else [1, *shape], raw)
    return out


def check_all(repo: Repo, tmp, states_by_commit: dict[str, State]) -> None:
    report = Repo(repo.root).fsck()
    assert report.ok, report.problems
    for k, (cid, want) in enumerate(states_by_commit.items()):
        assert state_of(repo, cid, str(tmp / f"co{k}")) == want, cid


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=_tensors, second=_edits, third=_edits, side=_edits, strategy=st.sampled_from([None, "ours", "theirs"]))
@example(first={"t0": ("XQ9", 3, 1), "t1": ("F32", 700, 2)}, second=[("size", "t0", 1)], third=[("value", "t1", 0)],
         side=[("value", "t1", 1)], strategy=None)  # a tensor of unknown dtype that changed size under one shape
def test_revert_merge_and_restore_write_trees_that_describe_their_files(tmp_path_factory, first, second, third,
                                                                         side, strategy):
    tmp = tmp_path_factory.mktemp("tb")
    repo = make_repo(tmp / "repo", chunk_size=1024)
    path = os.path.join(repo.root, "model.safetensors")
    s0 = build(first)
    s1 = edit(s0, second)
    s2 = edit(s1, third)
    known: dict[str, State] = {}
    for k, s in enumerate((s0, s1, s2)):
        write_state(path, s)
        known[repo.commit(path, message=f"c{k}", allow_empty=True).commit.id] = s
    c2 = repo.head()

    # revert of the last commit: the state before it, tensor for tensor (nothing to revert when it changed nothing)
    if s2 != s1:
        repo.revert("HEAD")
        known[repo.head()] = s1
        assert read_state(path) == s1
        check_all(repo, tmp, known)

    # revert of the one before (later changes kept, or refused with nothing changed)
    head, before = repo.head(), read_state(path)
    try:
        repo.revert(c2 + "~1")
    except (ConflictError, NothingToCommitError):
        assert repo.head() == head and read_state(path) == before
    else:
        assert repo.head() != head
        known[repo.head()] = read_state(path)
    check_all(repo, tmp, known)

    # a side branch from the first commit, merged back
    main_head = repo.head()
    repo.create_branch("side", list(known)[0])
    repo.switch("side")
    s3 = edit(s0, side)
    write_state(path, s3)
    known[repo.commit(path, message="side", allow_empty=True).commit.id] = s3
    repo.switch("main")
    before = read_state(path)
    try:
        repo.merge("side", strategy=strategy)
    except ConflictError:
        assert repo.head() == main_head and read_state(path) == before
    else:
        merged = read_state(path)
        known[repo.head()] = merged
        assert set(merged) <= set(before) | set(s3)
        for name, t in merged.items():  # every tensor is one side's, or the base's
            assert t in (before.get(name), s3.get(name), s0.get(name)), name
    check_all(repo, tmp, known)

    # tensors restored from the first commit into the working file: those, and the rest as they were
    names = sorted(set(s0) & set(read_state(path)))
    if names:
        before = read_state(path)
        repo.restore(list(known)[0], tensors=names)
        after = read_state(path)
        assert {n: after[n] for n in names} == {n: s0[n] for n in names}
        assert {n: t for n, t in after.items() if n not in names} == {n: t for n, t in before.items()
                                                                    if n not in names}
        known[repo.commit(path, message="restored", allow_empty=True).commit.id] = after
        check_all(repo, tmp, known)
