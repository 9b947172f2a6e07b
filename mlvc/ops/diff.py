"""diff: what changed between two checkpoints, tensor by tensor and by layer group, in float64.

The cost of a diff grows with what changed, not with the size of the model:
- a tensor whose hash, dtype and shape are equal on both sides is reported unchanged without reading it;
- inside a changed tensor, chunks with equal ids are not decoded: they hold the same values on both sides,
  so their only contribution (to the norms behind rel_change and cosine) is their sum of squares, which is
  kept in the chunk-norm cache (mlvc/normcache.py) after the first time it is needed;
- everything else streams chunk by chunk (or in element blocks when the two sides were chunked differently),
  accumulating counts, sums of squares, dot products and maxima: never a whole large tensor in memory.

Files are compared too (added, removed, renamed, modified, with sizes), and tensors are matched across the
two sides by the one rule diff, revert and merge share (treebuild.pair_keys: same file and name, else the
same name moved to another file). docs/diff.md defines every number, including NaN and inf.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..bundles import resolve_file
from ..dtypes import ITEMSIZE, is_numeric
from ..errors import FormatError, MlvcError
from ..normcache import NormCache
from ..objects import KIND_SAFETENSORS, FileEntry, Manifest, TensorEntry
from ..progress import NULL, Progress
from .select import select_tensors
from .tensorsource import ByteStream, Side, StoredSide, WorkingSide, read_pairs
from .treebuild import Key, layer_group, natural_key, pair_keys

__all__ = ["FileDiff", "GroupDiff", "TensorDiff", "TreeDiff", "diff", "diff_commit", "layer_group", "natural_key"]

if TYPE_CHECKING:
    import numpy as np

    from ..repo import Repo

# numpy (and mlvc.numeric, which needs it) are imported where tensor values are compared: a diff that reads no
# value (`mlvc show` of a first commit, files added or removed, tensors unchanged) does without them.

ADDED, REMOVED, CHANGED, UNCHANGED = "added", "removed", "changed", "unchanged"
DTYPE_CHANGED, SHAPE_CHANGED, MOVED = "dtype_changed", "shape_changed", "moved"
STATUSES = (ADDED, REMOVED, CHANGED, UNCHANGED, DTYPE_CHANGED, SHAPE_CHANGED, MOVED)
MODIFIED, RENAMED = "modified", "renamed"
FILE_STATUSES = (ADDED, REMOVED, MODIFIED, RENAMED, UNCHANGED)

BLOCK_ELEMS = 1 << 19  # element block when the two sides are not chunked alike
SMALL_TENSOR_BYTES = 64 << 10  # a changed tensor of one chunk up to this size is compared in a batch
SMALL_BATCH_ELEMS = 1 << 20  # elements per batch of small tensors (float64: 8 MiB per array)


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
    path: str | None = None  # the file holding it in B (in A when removed)
    old_path: str | None = None  # the file holding it in A when that is another file (moved)

    def __post_init__(self) -> None:
        self._ssq_a: float | None = None  # ||A||^2 when it was computed (not part of the public shape)
        self._keys: tuple[Key | None, Key | None] = (None, None)  # (key in A, key in B), None where absent

    @property
    def keys(self) -> set[Key]:
        """The (file path, tensor name) keys this tensor has on either side."""
        return {k for k in self._keys if k is not None}


@dataclass
class FileDiff:
    path: str  # the path in B (in A for a removed file)
    status: str  # one of FILE_STATUSES
    old_path: str | None  # renamed: the path in A
    kind_a: str | None  # "safetensors", "torch", "blob"; None where the file does not exist on that side
    kind_b: str | None
    size_a: int | None  # bytes
    size_b: int | None

    @property
    def letter(self) -> str:
        """git's --name-status letter: A, D, M, R100 (renamed, same content); " " for unchanged."""
        return {ADDED: "A", REMOVED: "D", MODIFIED: "M", RENAMED: "R100"}.get(self.status, " ")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "letter": self.letter}


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
    files: list[FileDiff] = field(default_factory=list)  # every file of either side, in path order

    @property
    def changed(self) -> list[TensorDiff]:
        return [t for t in self.tensors if t.status != UNCHANGED]

    @property
    def changed_files(self) -> list[FileDiff]:
        return [f for f in self.files if f.status != UNCHANGED]

    def changed_keys(self) -> set[Key]:
        """What changed, under the keys revert and merge work with (treebuild.changes): (path, tensor name)
        for tensors of safetensors files, (path, None) for a path that is not safetensors on both sides."""
        whole = {p for f in self.files for p in (f.path, f.old_path)
                 if p is not None and {f.kind_a, f.kind_b} - {None, KIND_SAFETENSORS}}
        out = {k for t in self.changed for k in t.keys if k[0] not in whole}
        for f in self.changed_files:
            out |= {(p, None) for p in (f.path, f.old_path) if p in whole}
        return out

    def total(self) -> GroupDiff:
        """All tensors as one group (name "(total)")."""
        return _aggregate("(total)", self.tensors)

    def to_json(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b,
                "files": [f.to_json() for f in self.files],
                "tensors": [_json_floats(asdict(t)) for t in self.tensors],
                "groups": [_json_floats(asdict(g)) for g in self.groups],
                "total": _json_floats(asdict(self.total()))}


def _json_floats(d: dict[str, Any]) -> dict[str, Any]:
    """JSON has no inf or NaN: they are written as the strings "inf", "-inf" and "nan"."""
    return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


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
    import numpy as np

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
        import numpy as np

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
        import numpy as np

        d = b - a
        if count:
            self.changed += int(np.count_nonzero(d))
        aa = _dot(a, a)
        self.ssq_a += aa
        self._accumulate(d, a, b, aa)

    def _accumulate(self, d: np.ndarray, a: np.ndarray, b: np.ndarray, aa: float | None = None) -> None:
        import numpy as np

        if d.size:
            self.ssq_d += _dot(d, d)
            self.max_abs = max(self.max_abs, float(np.max(np.abs(d))))
            self.ab += _dot(a, b)
            self.aa += _dot(a, a) if aa is None else aa
            self.bb += _dot(b, b)


def _finite_ssq(raw, dtype: str) -> float:
    import numpy as np

    from ..numeric import as_numbers

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
        self.same_place = True  # whether the pair being compared has the same key on both sides

    def compare(self, name: str, ta: TensorEntry | None, tb: TensorEntry | None) -> TensorDiff:
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
            return base(status=UNCHANGED if self.same_place else MOVED, changed=0, changed_frac=0.0, l2=0.0,
                        rel_change=0.0, max_abs=0.0,
                        cosine=1.0)
        status = CHANGED if ta.dtype == tb.dtype else DTYPE_CHANGED
        if not (is_numeric(ta.dtype) and is_numeric(tb.dtype)):
            return base(status=status, changed=None, changed_frac=None, l2=None, rel_change=None,
                        max_abs=None, cosine=None)
        import numpy as np

        acc = _Acc()
        with np.errstate(over="ignore", invalid="ignore"):
            if self._aligned(ta, tb):
                self._paired(ta, tb, acc)
            else:
                self._streamed(ta, tb, acc, n)
        return self._result(name, ta, tb, status, acc)

    @staticmethod
    def _result(name: str, ta: TensorEntry, tb: TensorEntry, status: str, acc: _Acc) -> TensorDiff:
        n = _numel(tb.shape)
        l2 = math.inf if acc.nonfinite else math.sqrt(acc.ssq_d)
        td = TensorDiff(name, status, ta.dtype, tb.dtype, list(ta.shape), list(tb.shape), n, acc.changed,
                        acc.changed / n if n else 0.0, l2, _rel(l2, acc.ssq_a),
                        math.inf if acc.nonfinite else acc.max_abs, _cosine(acc))
        td._ssq_a = acc.ssq_a
        return td

    def small_pair(self, ta: TensorEntry | None, tb: TensorEntry | None) -> bool:
        """Whether the pair is a changed numeric tensor of one small chunk on both sides, same dtype and
        shape: such pairs are compared many at a time (compare_small), as whole arrays, not one by one."""
        return (ta is not None and tb is not None and ta.dtype == tb.dtype and ta.hash != tb.hash
                and len(ta.chunks) == len(tb.chunks) == 1 and 0 < tb.nbytes <= SMALL_TENSOR_BYTES
                and list(ta.shape) == list(tb.shape) and is_numeric(ta.dtype) and self._aligned(ta, tb))

    def compare_small(self, pairs: list[tuple[int, str, TensorEntry, TensorEntry]]) -> Iterator[tuple[int, TensorDiff]]:
        """(position, diff) for pairs that small_pair accepted: the same numbers as compare gives each, from
        the tensors of a dtype concatenated and summed by segment (np.*.reduceat), in batches of at most
        SMALL_BATCH_ELEMS elements. A file of 100,000 norms and scales spent most of its diff in per-tensor
        numpy calls. A tensor with a NaN or an infinity on either side is compared alone, as compare does."""
        by_dtype: dict[str, list[tuple[int, str, TensorEntry, TensorEntry]]] = {}
        for item in pairs:
            by_dtype.setdefault(item[2].dtype, []).append(item)
        for dtype, items in by_dtype.items():
            batch: list[tuple[int, str, TensorEntry, TensorEntry]] = []
            elems = 0
            for item in items:
                batch.append(item)
                elems += _numel(item[3].shape)
                if elems >= SMALL_BATCH_ELEMS:
                    yield from self._batch(dtype, batch)
                    batch, elems = [], 0
            if batch:
                yield from self._batch(dtype, batch)

    def _batch(self, dtype: str, batch: list[tuple[int, str, TensorEntry, TensorEntry]]
               ) -> Iterator[tuple[int, TensorDiff]]:
        import numpy as np

        from ..numeric import as_numbers

        raw_a = b"".join(self.a.read_first([t for _, _, t, _ in batch]))
        raw_b = b"".join(self.b.read_first([t for _, _, _, t in batch]))
        sizes = np.array([_numel(t.shape) for _, _, _, t in batch], dtype=np.int64)
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        a, b = as_numbers(raw_a, dtype), as_numbers(raw_b, dtype)
        with np.errstate(over="ignore", invalid="ignore"):
            exact = a.dtype != np.float64  # integers and bool: compared exactly, then summed in float64
            if exact:
                changed = np.add.reduceat((a != b).astype(np.int64), starts)
                a, b = a.astype(np.float64), b.astype(np.float64)
                alone = np.zeros(len(batch), dtype=bool)
            else:
                alone = np.logical_or.reduceat(~(np.isfinite(a) & np.isfinite(b)), starts)
            d = b - a
            if not exact:
                changed = np.add.reduceat((d != 0).astype(np.int64), starts)
            ssq_d = np.add.reduceat(d * d, starts)
            max_abs = np.maximum.reduceat(np.abs(d), starts)
            aa = np.add.reduceat(a * a, starts)
            bb = np.add.reduceat(b * b, starts)
            ab = np.add.reduceat(a * b, starts)
        for k, (pos, name, ta, tb) in enumerate(batch):
            if alone[k]:
                yield pos, self.compare(name, ta, tb)  # counts its own progress
                continue
            self.progress.advance(tb.nbytes)  # one side's bytes, as _paired counts
            acc = _Acc()
            acc.changed, acc.ssq_d, acc.max_abs = int(changed[k]), float(ssq_d[k]), float(max_abs[k])
            acc.ssq_a = acc.aa = float(aa[k])
            acc.bb, acc.ab = float(bb[k]), float(ab[k])
            yield pos, self._result(name, ta, tb, CHANGED, acc)

    def _aligned(self, ta: TensorEntry, tb: TensorEntry) -> bool:
        return (ta.dtype == tb.dtype and self.a.step(ta) == self.b.step(tb) and len(ta.chunks) == len(tb.chunks))

    def _paired(self, ta: TensorEntry, tb: TensorEntry, acc: _Acc) -> None:
        """Same chunking on both sides: equal chunk ids are skipped, the others compared pairwise."""
        from ..numeric import as_numbers

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
        for a_raw, b_raw in read_pairs(self.a, ta, self.b, tb, diff_idx):
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
        import numpy as np

        from ..numeric import as_numbers

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
    """Compare commit `a` with commit `b` (None: the working checkpoint): every file, and every tensor or
    only those whose names match the globs in `tensors` (files then: those holding a selected tensor).
    `a` None stands for an empty checkpoint (everything added)."""
    norms = NormCache(repo.dir)
    with contextlib.ExitStack() as stack:
        pipe = stack.enter_context(repo.pipeline())
        if b is not None:
            mb, side_b = _commit(repo, b, pipe)
        else:
            mb, side_b = _working(repo, stack, progress)
        if a is not None:
            ma, side_a = _commit(repo, a, pipe)
        else:
            ma, side_a = None, Side(None, {}, side_b.chunk_size)
        where = f"{'the empty checkpoint' if a is None else a} or {'the working checkpoint' if b is None else b}"
        _resolve_differing(repo, ma, mb)
        ta, tb = _tensors(ma), _tensors(mb)
        pairs = pair_keys(ta, tb)
        shown = _display_names(pairs)
        order = sorted(range(len(pairs)), key=lambda i: natural_key(shown[i]))
        chosen = set(select_tensors([shown[i] for i in order], tensors, where))
        differ = _Differ(side_a, side_b, norms, progress)
        progress.start("diff")
        out: list[TensorDiff] = []
        keys: list[tuple[Key | None, Key | None]] = []
        small: list[tuple[int, str, TensorEntry, TensorEntry]] = []  # compared together, after the loop
        for i in order:
            if shown[i] not in chosen:
                continue
            ka, kb = pairs[i]
            x, y = ta.get(ka) if ka else None, tb.get(kb) if kb else None
            differ.same_place = ka == kb
            if differ.small_pair(x, y):
                assert x is not None and y is not None
                small.append((len(out), shown[i], x, y))
                out.append(None)  # type: ignore[arg-type]  # filled in below
            else:
                out.append(differ.compare(shown[i], x, y))
            keys.append((ka, kb))
        for pos, td in differ.compare_small(small):
            out[pos] = td
        for td, (ka, kb) in zip(out, keys, strict=True):
            td.path = (kb or ka or ("", None))[0]
            td.old_path = ka[0] if ka is not None and kb is not None and ka[0] != kb[0] else None
            td._keys = (ka, kb)
        progress.finish()
    norms.save()
    files = file_diffs(ma, mb)
    if tensors is not None:
        held = {k[0] for t in out for k in t.keys}
        files = [f for f in files if f.path in held or f.old_path in held]
    return TreeDiff(side_a.commit, side_b.commit, out, group_diffs(out), files)


def _display_names(pairs: list[tuple[Key | None, Key | None]]) -> list[str]:
    """Each tensor's name as shown: the plain name, or 'path:name' (B's path, else A's) where the name is not
    unique among the pairs."""
    names = [(kb or ka or ("", ""))[1] or "" for ka, kb in pairs]
    count: dict[str, int] = {}
    for n in names:
        count[n] = count.get(n, 0) + 1
    return [n if count[n] == 1 else f"{(kb or ka or ('', ''))[0]}:{n}"
            for n, (ka, kb) in zip(names, pairs, strict=True)]


def _tensors(m: Manifest | None) -> dict[Key, TensorEntry]:
    """Every tensor of a tree, of any kind of file, by (file path, tensor name)."""
    return {(f.path, t.name): t for f in (m.files if m else []) for t in f.tensors}


def file_diffs(ma: Manifest | None, mb: Manifest | None) -> list[FileDiff]:
    """Every file of either side: added, removed, modified (other content or kind), renamed (the same content
    under another path, matched by pair_keys like tensors), unchanged; in path order."""
    fa: dict[Key, FileEntry] = {(f.path, None): f for f in ma.files} if ma else {}
    fb: dict[Key, FileEntry] = {(f.path, None): f for f in mb.files} if mb else {}
    out = []
    for ka, kb in pair_keys(fa, fb):
        x, y = fa.get(ka) if ka else None, fb.get(kb) if kb else None
        if x is None or y is None:
            f = x if x is not None else y
            assert f is not None
            out.append(FileDiff(f.path, ADDED if x is None else REMOVED, None, x.kind if x else None,
                                y.kind if y else None, x.size if x else None, y.size if y else None))
            continue
        status = RENAMED if x.path != y.path else (UNCHANGED if _same_file(x, y) else MODIFIED)
        out.append(FileDiff(y.path, status, x.path if status == RENAMED else None, x.kind, y.kind, x.size, y.size))
    return sorted(out, key=lambda f: natural_key(f.path))


def _same_file(x: FileEntry, y: FileEntry) -> bool:
    return x.hash == y.hash and x.kind == y.kind


def _resolve_differing(repo: Repo, ma: Manifest | None, mb: Manifest | None) -> None:
    """The sides are read without their small tensors' hashes (Repo.read_manifest, resolve=False): read them
    (bundles.resolve_file) where a tensor's hash is used. A file the same at the same path on both sides holds
    the same tensors, paired by name, whose entries compare equal unread when the same tensors have no hash on
    either side; a file that changed, or that one side has hashes for where the other has none (a working
    file snapshot again after a touch, a tree from before bundles), is compared tensor by tensor; a file on one
    side only needs hashes only if the other side has tensors left to pair with by content (pair_keys: a
    tensor moved between files). So a diff of commits whose checkpoints did not change, or of a first commit,
    reads no tensor bytes."""
    fa = {f.path: f for f in ma.files} if ma else {}
    fb = {f.path: f for f in mb.files} if mb else {}
    changed = {p for p in fa.keys() & fb.keys()
               if not _same_file(fa[p], fb[p]) or _unresolved(fa[p]) != _unresolved(fb[p])}
    only_a, only_b = fa.keys() - fb.keys(), fb.keys() - fa.keys()
    need = changed | (only_a | only_b if (only_a or changed) and (only_b or changed) else set())
    for p in need:
        for f in (fa.get(p), fb.get(p)):
            if f is not None:
                resolve_file(repo.store, f)


def _unresolved(f: FileEntry) -> set[str]:
    """The tensors of a file entry read without their hash (bundled, not resolved)."""
    return {t.name for t in f.tensors if t.slot is not None and not t.chunks}


def _commit(repo: Repo, rev: str, pipe) -> tuple[Manifest, Side]:
    cid = repo.resolve(rev)
    manifest = repo.read_manifest(repo.read_commit(cid).manifest, resolve=False)
    return manifest, StoredSide(cid, {}, manifest.chunk_size, pipe)


def _working(repo: Repo, stack: contextlib.ExitStack, progress: Progress) -> tuple[Manifest, Side]:
    """The working checkpoint: the tree `mlvc commit` (no path) would make (tracked files hashed without
    storing, the stat cache sparing unchanged ones; paths committed from memory and not checked out carried as
    HEAD has them, so they are not "removed"), and a side that reads their tensors."""
    from ..statcache import StatCache
    from .workfiles import WorkState, tracked_set, working_entries

    head = repo.head()
    if head is None:
        raise MlvcError("nothing is committed yet, so there is no working checkpoint to diff against; "
                        "`mlvc commit PATH -m MSG` makes the first commit")
    manifest = repo.read_manifest(repo.read_commit(head).manifest, resolve=False)
    plan = tracked_set(repo, manifest, None, WorkState.load(repo))
    cache = StatCache(repo.dir)
    unreadable: dict[str, str] = {}
    read = working_entries(repo, manifest, plan.roots, cache, progress, files=plan.read, unreadable=unreadable)
    cache.save()
    if unreadable:  # no tensors to compare: as `mlvc commit` would, say so
        path, why = min(unreadable.items())
        raise FormatError(path, f"{why}; `mlvc status` lists it, `mlvc restore {path}` writes HEAD's version back")
    files = sorted([*plan.carried.values(), *read.values()], key=lambda f: f.path)
    return (Manifest(plan.roots, files, manifest.chunk_size), WorkingSide(repo, files, manifest.chunk_size, stack))


def diff_commit(repo: Repo, rev: str, *, tensors: Iterable[str] | str | None = None,
                progress: Progress = NULL) -> TreeDiff:
    """A commit against its first parent (a root commit against nothing: every tensor added)."""
    cid = repo.resolve(rev)
    parents = repo.read_commit(cid).parents
    return diff(repo, parents[0] if parents else None, cid, tensors=tensors, progress=progress)
