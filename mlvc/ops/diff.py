"""diff: what changed between two checkpoints, tensor by tensor and by layer group, in float64.

The cost of a diff grows with what changed, not with the size of the model:
- a tensor whose hash, dtype and shape are equal on both sides is reported unchanged without reading it;
- inside a changed tensor, chunks with equal ids are not decoded: they hold the same values on both sides,
  so their only contribution (to the norms behind rel_change and cosine) is their sum of squares, which is
  kept in the chunk-norm cache (mlvc/normcache.py) after the first time it is needed;
- everything else streams chunk by chunk (or in element blocks when the two sides were chunked differently),
  accumulating counts, sums of squares, dot products and maxima: never a whole large tensor in memory.

docs/diff.md defines every number, including NaN and inf.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..dtypes import ITEMSIZE
from ..normcache import NormCache
from ..numeric import as_numbers, is_numeric
from ..objects import TensorEntry
from ..progress import NULL, Progress
from .select import select_tensors
from .tensorsource import ByteStream, Side, commit_side, working_side

if TYPE_CHECKING:
    from ..repo import Repo

ADDED, REMOVED, CHANGED, UNCHANGED = "added", "removed", "changed", "unchanged"
DTYPE_CHANGED, SHAPE_CHANGED = "dtype_changed", "shape_changed"
STATUSES = (ADDED, REMOVED, CHANGED, UNCHANGED, DTYPE_CHANGED, SHAPE_CHANGED)

BLOCK_ELEMS = 1 << 19  # element block when the two sides are not chunked alike


@dataclass
class TensorDiff:
    name: str
    status: str  # one of STATUSES
    dtype_a: str | None
    dtype_b: str | None
    shape_a: list[int] | None
    shape_b: list[int] | None
    numel: int  # elements compared (the existing side's count for added/removed, B's for shape_changed)
    changed: int | None  # elements whose value differs
    changed_frac: float | None
    l2: float | None  # ||B - A||
    rel_change: float | None  # ||B - A|| / ||A||
    max_abs: float | None  # max |B - A|
    cosine: float | None  # <A, B> / (||A|| ||B||); None where a norm is 0

    def __post_init__(self) -> None:
        self._ssq_a: float | None = None  # ||A||^2 when it was computed (not part of the public shape)


@dataclass
class GroupDiff:
    name: str  # the layer group (see layer_group)
    tensors: int
    changed_tensors: int
    numel: int
    changed: int
    l2: float | None  # sqrt of the sum of the tensors' l2 squared
    rel_change: float | None  # l2 / ||A|| over the group's value-compared changed tensors


@dataclass
class TreeDiff:
    a: str | None  # commit id
    b: str | None  # commit id, None for the working checkpoint
    tensors: list[TensorDiff] = field(default_factory=list)
    groups: list[GroupDiff] = field(default_factory=list)

    @property
    def changed(self) -> list[TensorDiff]:
        return [t for t in self.tensors if t.status != UNCHANGED]

    def total(self) -> GroupDiff:
        """All tensors as one group (name "(total)")."""
        return _aggregate("(total)", self.tensors)

    def to_json(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b,
                "tensors": [_json_floats(asdict(t)) for t in self.tensors],
                "groups": [_json_floats(asdict(g)) for g in self.groups],
                "total": _json_floats(asdict(self.total()))}


def _json_floats(d: dict[str, Any]) -> dict[str, Any]:
    """JSON has no inf or NaN: they are written as the strings "inf", "-inf" and "nan"."""
    return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


_INDEX = re.compile(r"^[0-9]+$")


def layer_group(name: str) -> str:
    """The layer group of a tensor: its name up to and including the first all-digit part that is not the
    last part ("encoder.layer.3.attention.self.query.weight" -> "encoder.layer.3"); without one, its parent
    module path ("embeddings.word_embeddings.weight" -> "embeddings.word_embeddings"); "(root)" for a
    top-level name."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if _INDEX.match(part):
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1]) or "(root)"


def natural_key(name: str) -> tuple:
    """Sort key that puts layer.2 before layer.10."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"([0-9]+)", name) if p)


def _aggregate(name: str, tensors: list[TensorDiff]) -> GroupDiff:
    """Counts over all tensors; l2 and rel_change over the value-compared ones (None when the group has
    changed tensors but none of them could be compared by value: only added, removed or reshaped ones)."""
    ssq_d = ssq_a = 0.0
    changed = [t for t in tensors if t.status != UNCHANGED]
    have_l2 = not changed or any(t.l2 is not None for t in changed)
    for t in changed:
        if t.l2 is not None:
            ssq_d += t.l2 * t.l2
            if t._ssq_a is not None:
                ssq_a += t._ssq_a
    l2 = math.sqrt(ssq_d) if have_l2 else None
    return GroupDiff(name, len(tensors), sum(t.status != UNCHANGED for t in tensors), sum(t.numel for t in tensors),
                     sum(t.changed or 0 for t in tensors), l2, _rel(l2, ssq_a) if l2 is not None else None)


def _rel(l2: float, ssq_a: float) -> float:
    if l2 == 0:
        return 0.0
    return l2 / math.sqrt(ssq_a) if ssq_a > 0 else math.inf


def group_diffs(tensors: list[TensorDiff]) -> list[GroupDiff]:
    groups: dict[str, list[TensorDiff]] = {}
    for t in tensors:
        groups.setdefault(layer_group(t.name), []).append(t)
    return [_aggregate(name, members) for name, members in groups.items()]


# -- comparing ----------------------------------------------------------------------------------------------


def _numel(shape: list[int]) -> int:
    return math.prod(shape)


def _dot(x: np.ndarray, y: np.ndarray) -> float:
    """Dot product in float64. einsum, not BLAS: on chunk-sized vectors a threaded BLAS was ~50x slower
    here (2 busy cores) than einsum's plain loop."""
    return float(np.einsum("i,i->", x, y))


class _Acc:
    """Running sums for one tensor pair, in float64."""

    def __init__(self) -> None:
        self.changed = 0
        self.ssq_d = 0.0  # sum of (b - a)^2 where both are finite
        self.max_abs = 0.0
        self.nonfinite = False  # a changed element has a NaN or inf on one side
        self.ssq_a = 0.0  # ||A||^2 over A's finite elements
        self.ab = self.aa = self.bb = 0.0  # over positions where both are finite

    def same(self, s: float) -> None:
        """A stretch that is equal on both sides, with sum of squares s (of its finite elements)."""
        self.ssq_a += s
        self.aa += s
        self.bb += s
        self.ab += s

    def pair(self, a: np.ndarray, b: np.ndarray) -> None:
        if a.dtype != np.float64:  # integers and bool (same type on both sides): exact comparison
            self.changed += int(np.count_nonzero(a != b))
            a, b = a.astype(np.float64), b.astype(np.float64)
            self._finite(a, b, count=False)
            return
        fa, fb = np.isfinite(a), np.isfinite(b)
        if fa.all() and fb.all():
            self._finite(a, b, count=True)
            return
        eq = (a == b) | (np.isnan(a) & np.isnan(b))
        self.changed += int(a.size - np.count_nonzero(eq))
        both = fa & fb
        if np.any(~eq & ~both):
            self.nonfinite = True
        af = a[fa]
        self.ssq_a += _dot(af, af)
        a2, b2 = a[both], b[both]
        d = b2 - a2
        self._accumulate(d, a2, b2)

    def _finite(self, a: np.ndarray, b: np.ndarray, count: bool) -> None:
        d = b - a
        if count:
            self.changed += int(np.count_nonzero(d))
        aa = _dot(a, a)
        self.ssq_a += aa
        self._accumulate(d, a, b, aa)

    def _accumulate(self, d: np.ndarray, a: np.ndarray, b: np.ndarray, aa: float | None = None) -> None:
        if d.size:
            self.ssq_d += _dot(d, d)
            self.max_abs = max(self.max_abs, float(np.max(np.abs(d))))
            self.ab += _dot(a, b)
            self.aa += _dot(a, a) if aa is None else aa
            self.bb += _dot(b, b)


def _finite_ssq(raw, dtype: str) -> float:
    x = as_numbers(raw, dtype)
    if x.dtype != np.float64:
        x = x.astype(np.float64)
    elif not np.isfinite(x).all():
        x = x[np.isfinite(x)]
    with np.errstate(over="ignore"):
        return _dot(x, x)


class _Differ:
    def __init__(self, a: Side, b: Side, norms: NormCache, progress: Progress):
        self.a, self.b, self.norms, self.progress = a, b, norms, progress

    def compare(self, name: str) -> TensorDiff:
        ta, tb = self.a.tensors.get(name), self.b.tensors.get(name)
        if ta is None or tb is None:
            t = ta if ta is not None else tb
            assert t is not None, name  # a name of one side at least
            n = _numel(t.shape)
            return TensorDiff(name, ADDED if ta is None else REMOVED, ta.dtype if ta is not None else None,
                              tb.dtype if tb is not None else None, list(ta.shape) if ta is not None else None,
                              list(tb.shape) if tb is not None else None, n, n, 1.0 if n else 0.0,
                              None, None, None, None)
        n = _numel(tb.shape)
        base = functools.partial(TensorDiff, name=name, dtype_a=ta.dtype, dtype_b=tb.dtype, shape_a=list(ta.shape),
                                 shape_b=list(tb.shape), numel=n)
        if list(ta.shape) != list(tb.shape):
            return base(status=SHAPE_CHANGED, changed=n, changed_frac=1.0 if n else 0.0, l2=None,
                        rel_change=None, max_abs=None, cosine=None)
        if ta.dtype == tb.dtype and ta.hash == tb.hash:
            return base(status=UNCHANGED, changed=0, changed_frac=0.0, l2=0.0, rel_change=0.0, max_abs=0.0,
                        cosine=1.0)
        status = CHANGED if ta.dtype == tb.dtype else DTYPE_CHANGED
        if not (is_numeric(ta.dtype) and is_numeric(tb.dtype)):
            return base(status=status, changed=None, changed_frac=None, l2=None, rel_change=None,
                        max_abs=None, cosine=None)
        acc = _Acc()
        with np.errstate(over="ignore", invalid="ignore"):
            if self._aligned(ta, tb):
                self._paired(ta, tb, acc)
            else:
                self._streamed(ta, tb, acc, n)
        l2 = math.inf if acc.nonfinite else math.sqrt(acc.ssq_d)
        td = base(status=status, changed=acc.changed, changed_frac=acc.changed / n if n else 0.0,
                  l2=l2, rel_change=_rel(l2, acc.ssq_a),
                  max_abs=math.inf if acc.nonfinite else acc.max_abs, cosine=_cosine(acc))
        td._ssq_a = acc.ssq_a
        return td

    def _aligned(self, ta: TensorEntry, tb: TensorEntry) -> bool:
        return (ta.dtype == tb.dtype and self.a.step(ta) == self.b.step(tb) and len(ta.chunks) == len(tb.chunks))

    def _paired(self, ta: TensorEntry, tb: TensorEntry, acc: _Acc) -> None:
        """Same chunking on both sides: equal chunk ids are skipped, the others compared pairwise."""
        dtype = ta.dtype
        diff_idx, same_todo = [], []
        for i, (ca, cb) in enumerate(zip(ta.chunks, tb.chunks, strict=True)):
            if ca != cb:
                diff_idx.append(i)
                continue
            s = self.norms.get(ca, dtype)
            if s is None:
                same_todo.append(i)
            else:
                acc.same(s)
        for a_raw, b_raw in zip(self.a.read(ta, diff_idx), self.b.read(tb, diff_idx), strict=True):
            acc.pair(as_numbers(a_raw, dtype), as_numbers(b_raw, dtype))
            self.progress.advance(len(a_raw))
        if same_todo:
            # The values are the same on both sides: read them once, from the cheaper side.
            side, t = (self.b, tb) if not self.b.stored() else (self.a, ta)
            for i, raw in zip(same_todo, side.read(t, same_todo), strict=True):
                s = _finite_ssq(raw, dtype)
                self.norms.put(t.chunks[i], dtype, s)
                acc.same(s)
                self.progress.advance(len(raw))

    def _streamed(self, ta: TensorEntry, tb: TensorEntry, acc: _Acc, n: int) -> None:
        """Different chunking or dtype: both sides in element blocks (everything is read)."""
        sa = ByteStream(self.a.read(ta, list(range(len(ta.chunks)))))
        sb = ByteStream(self.b.read(tb, list(range(len(tb.chunks)))))
        wa, wb = ITEMSIZE[ta.dtype], ITEMSIZE[tb.dtype]
        for start in range(0, n, BLOCK_ELEMS):
            k = min(BLOCK_ELEMS, n - start)
            a_raw, b_raw = sa.take(k * wa), sb.take(k * wb)
            a, b = as_numbers(a_raw, ta.dtype), as_numbers(b_raw, tb.dtype)
            if a.dtype != b.dtype:
                a, b = a.astype(np.float64), b.astype(np.float64)
            acc.pair(a, b)
            self.progress.advance(len(a_raw))


def _cosine(acc: _Acc) -> float | None:
    if acc.aa <= 0 or acc.bb <= 0 or not (math.isfinite(acc.aa) and math.isfinite(acc.bb)):
        return None
    return max(-1.0, min(1.0, acc.ab / (math.sqrt(acc.aa) * math.sqrt(acc.bb))))


def diff(repo: Repo, a: str | None = "HEAD", b: str | None = None, tensors: Iterable[str] | str | None = None,
         progress: Progress = NULL) -> TreeDiff:
    """Compare commit `a` with commit `b` (None: the working checkpoint), optionally only the tensors whose
    names match the globs in `tensors`. `a` None stands for an empty checkpoint (everything added)."""
    norms = NormCache(repo.dir)
    with contextlib.ExitStack() as stack:
        pipe = stack.enter_context(repo.pipeline())
        side_b = commit_side(repo, b, pipe) if b is not None else working_side(repo, stack, progress)
        side_a = commit_side(repo, a, pipe) if a is not None else Side(None, {}, side_b.chunk_size)
        where = f"{'the empty checkpoint' if a is None else a} or {'the working checkpoint' if b is None else b}"
        names = select_tensors(sorted(set(side_a.tensors) | set(side_b.tensors), key=natural_key), tensors, where)
        differ = _Differ(side_a, side_b, norms, progress)
        progress.start("diff")
        out = [differ.compare(n) for n in names]
        progress.finish()
    norms.save()
    return TreeDiff(side_a.commit, side_b.commit, out, group_diffs(out))


def diff_commit(repo: Repo, rev: str, *, tensors: Iterable[str] | str | None = None,
                progress: Progress = NULL) -> TreeDiff:
    """A commit against its first parent (a root commit against nothing: every tensor added)."""
    cid = repo.resolve(rev)
    parents = repo.read_commit(cid).parents
    return diff(repo, parents[0] if parents else None, cid, tensors=tensors, progress=progress)
