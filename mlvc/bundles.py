"""Small tensors kept as slices of shared objects ("bundles"), docs/format.md "Bundles".

A checkpoint of 100,000 tensors of a few elements each stored one object per tensor: a 128-bit id per tensor
in the manifest and again in a pack's index, more than the tensors' bytes. Instead, the non-empty tensors of a
file of at most BUNDLE_TENSOR_MAX bytes are stored end to end in bundles (one sequence per element width, so
that byte planes line up, each up to BUNDLE_MAX bytes), and the manifest names each such tensor's bundle by its
index in the file's list; the tensor's offset is implied by the order. A reader gets every tensor's hash from
its bytes (`resolve_bundles`), so in memory a bundled tensor is an ordinary one-chunk tensor whose chunk id the store
reads from the bundle (ObjectStore.get): every command that reads tensors works on bundles unchanged.

The grouping is decided when a manifest is written (`store_bundles`), from the tensors alone, so a tree made
by commit, merge, revert or the Tracker is bundled the same way; a bundle whose tensors are unchanged keeps its
id without being read, and a changed bundle is delta-coded against the bundle that held its first tensor in the
tree it came from, as a chunk against its parent's.
"""

from __future__ import annotations

import itertools
import math
import operator
from dataclasses import replace

from .chunking import IngestStats
from .dtypes import DTYPES, plane_width
from .errors import CorruptObjectError, ObjectNotFoundError
from .objects import FileEntry, HeldTable, Manifest, Slot, SmallTable, TensorEntry
from .store import BUNDLE_MAX, BUNDLE_TENSOR_MAX, ObjectStore
from .util import hash_bytes


def _widths(tensors: list[TensorEntry]) -> list[int]:
    """Each tensor's element width (its bundles' sequence) if it goes into a bundle, else 0: a non-empty tensor of
    one chunk and a known dtype, at most BUNDLE_TENSOR_MAX bytes, that no other tensor aliases and that aliases
    none."""
    aliased = {t.alias for t in tensors if t.alias is not None}
    kinds: dict[str, tuple[int, int]] = {}  # dtype -> (element size, plane width); (0, 0) for an unknown dtype
    out = [0] * len(tensors)
    for i, t in enumerate(tensors):
        n = t.nbytes
        if not 0 < n <= BUNDLE_TENSOR_MAX or t.alias is not None or len(t.chunks) != 1:
            continue
        kind = kinds.get(t.dtype)
        if kind is None:
            known = DTYPES.get(t.dtype)
            kind = kinds[t.dtype] = (known.itemsize, plane_width(t.dtype)) if known is not None else (0, 0)
        size, width = kind
        if n == size * math.prod(t.shape) and not (aliased and t.name in aliased):
            out[i] = width
    return out


def _groups(sizes: list[int], widths: list[int]) -> list[list[int]]:
    """The bundles of a file, as lists of tensor indices, numbered in order of their first tensor: in order, a
    tensor of width w (0: not bundled, _widths) goes into the open bundle of width w, which is closed when the
    tensor would take it past BUNDLE_MAX. Applied with numpy, a width at a time (each width's sequence is cut
    where its running total passes BUNDLE_MAX), not tensor by tensor."""
    import numpy as np

    w = np.asarray(widths, dtype=np.int64)
    n = np.asarray(sizes, dtype=np.int64)
    groups: list[list[int]] = []
    for width in sorted(set(widths) - {0}):  # not np.unique, which imports numpy.ma (10 ms)
        at = np.flatnonzero(w == width)
        before = np.concatenate(([0], np.cumsum(n[at])))  # bytes of this width before each of its tensors
        a = 0
        while a < len(at):
            e = max(int(np.searchsorted(before, before[a] + BUNDLE_MAX, side="right")) - 1, a + 1)
            groups.append(at[a:e].tolist())
            a = e
    groups.sort(key=operator.itemgetter(0))
    return groups


def _unchanged(members: list[TensorEntry]) -> str | None:
    """The bundle that already holds exactly these tensors, end to end from its start; None if none does."""
    slot = members[0].slot
    if slot is None:
        return None
    offset = 0
    for t in members:
        if t.slot is None or t.slot.bundle != slot.bundle or t.slot.offset != offset:
            return None
        offset += t.nbytes
    return slot.bundle if offset == slot.length else None


def _store_bundle(store: ObjectStore, ids: list[str], length: int, width: int, first: str,
                  bundled: dict[str, tuple[str, int]], stats: IngestStats | None) -> str:
    """Store the bundle of these tensors' bytes (read with `store.get`: held since ingest, or slices of the
    bundles they came from), `length` bytes of elements `width` bytes wide; its id. Delta-coded against the
    bundle of the same length that held its first tensor (named `first`) in the base tree (`bundled`: that
    file's FileEntry.bundled_by_name)."""
    raw = b"".join(store.get_many(ids))
    if len(raw) != length:
        raise CorruptObjectError(ids[0], "tensor bytes of the wrong length")
    bid, n = bundled.get(first, ("", -1))
    base = bid if n == length else None
    # A small bundle goes in a pack (which the store's flush writes before a ref names the commit), unless it has
    # a delta base: a pack holds full objects, and most of a bundle is often unchanged. Kept in the base cache
    # (`remember`): a process committing again (the Tracker's worker) finds the next version's delta base there
    # instead of decoding it; bundles are at most 1 MiB.
    r = store.put(raw, width, pack=base is None, base=base, remember=True)
    _count(stats, r.stored_size)
    return r.id


def store_bundles(store: ObjectStore, manifest: Manifest, base: Manifest | None = None,
                  stats: IngestStats | None = None) -> Manifest:
    """The manifest with its small tensors in bundles, every new bundle stored. A tensor left out of bundles
    whose bytes no object holds yet (an alias's target, a tensor taken from another tree's bundle) is stored
    as an object of its own. New file and tensor entries: the ones given, shared with other trees, stay as
    they are. A snapshot's held tensors (FileEntry.held) are bundled as columns (`_bundle_held`)."""
    files = []
    for f in manifest.files:
        old = base.file(f.path) if base is not None else None
        held = f.held()
        bundled_held = _bundle_held(store, f, held, old, stats) if held is not None else None
        if bundled_held is not None:
            files.append(bundled_held)
            continue
        if not f.tensors:
            files.append(f)
            continue
        assert all(t.chunks for t in f.tensors if t.slot is not None), f"{f.path}: a manifest read unresolved"
        tensors = list(f.tensors)
        changed = False
        groups = _groups([t.nbytes for t in tensors], _widths(tensors))
        bundled = old.bundled_by_name() if old is not None and groups else {}
        grouped = [False] * len(tensors)
        for k, group in enumerate(groups):
            members = [tensors[i] for i in group]
            ids = [t.chunks[0] for t in members]
            sizes = [t.nbytes for t in members]
            offsets = list(itertools.accumulate(sizes, initial=0))
            length = offsets.pop()
            bid = _unchanged(members)
            if bid is None:
                bid = _store_bundle(store, ids, length, plane_width(members[0].dtype), members[0].name, bundled,
                                    stats)
            for i, t, offset in zip(group, members, offsets, strict=True):
                grouped[i] = True
                slot = Slot(bid, offset, length, k)
                if t.slot != slot:  # a new entry (not replace(): 100,000 of them took a second)
                    tensors[i] = TensorEntry(t.name, t.dtype, t.shape, t.nbytes, t.hash, t.chunks, t.alias, slot)
                    changed = True
            store.add_slices(bid, list(zip(ids, offsets, sizes, strict=True)))
        for i in itertools.compress(range(len(tensors)), map(operator.not_, grouped)):
            t = tensors[i]
            if t.slot is not None:  # a bundled tensor of another tree, not bundled here
                t = tensors[i] = TensorEntry(t.name, t.dtype, t.shape, t.nbytes, t.hash, t.chunks, t.alias)
                changed = True
            _store_unbundled(store, t, stats)
        files.append(replace(f, tensors=tensors) if changed else f)
    return replace(manifest, files=files)


def _bundle_held(store: ObjectStore, f: FileEntry, held: HeldTable, old: FileEntry | None,
                 stats: IngestStats | None) -> FileEntry | None:
    """`store_bundles` of a snapshot's file whose held tensors are columns: the same bundles, made from the
    columns, and an entry whose tensors are a SmallTable (as a manifest read without resolving gives; their hashes
    are not kept: the store forgets held bytes once the tree is written, Repo.write_manifest). None when a listed
    tensor could go into a bundle too, or a row could not (the snapshot makes neither): the caller then bundles
    the file's tensors as entries."""
    # every row is bundled: held (so at most BUNDLE_TENSOR_MAX bytes, Pipeline.hold_limit), of a known dtype whose
    # size its shape gives (safetensors.parse_layout checked it)
    if not 0 < min(held.nbytes) <= max(held.nbytes) <= BUNDLE_TENSOR_MAX or not set(held.dtypes) <= DTYPES.keys() \
            or any(_widths(held.listed)):
        return None
    widths = {d: plane_width(d) for d in set(held.dtypes)}
    row_widths = list(map(widths.__getitem__, held.dtypes))
    groups = _groups(held.nbytes, row_widths)
    bundled = old.bundled_by_name() if old is not None else {}
    ins = [0] * len(held.names)
    bundles = []
    for k, group in enumerate(groups):
        length = sum(map(held.nbytes.__getitem__, group))
        bundles.append(_store_bundle(store, list(map(held.ids.__getitem__, group)), length, row_widths[group[0]],
                                     held.names[group[0]], bundled, stats))
        for i in group:
            ins[i] = k
    assert sum(map(len, groups)) == len(ins), "a held row is left out of bundles"
    for t in held.listed:
        _store_unbundled(store, t, stats)
    return replace(f, tensors=[]).adopt(SmallTable(held.runs, held.names, held.dtypes, held.shapes, ins, held.nbytes,
                                                   bundles, held.listed))


def _store_unbundled(store: ObjectStore, t: TensorEntry, stats: IngestStats | None) -> None:
    """A tensor left out of bundles whose bytes no object holds yet (held, or a slice of another tree's bundle)
    is stored as an object of its own."""
    for c in t.chunks:
        if store.is_slice(c) and not store.has(c):
            _count(stats, store.put(store.get(c), plane_width(t.dtype), pack=True).stored_size)


def _count(stats: IngestStats | None, stored: int) -> None:
    if stats is not None and stored:
        stats.new_chunks += 1
        stats.stored_bytes += stored


def resolve_bundles(store: ObjectStore, manifest: Manifest) -> Manifest:
    """`resolve_file` for every file of the manifest."""
    for f in manifest.files:
        resolve_file(store, f)
    return manifest


def resolve_file(store: ObjectStore, f: FileEntry) -> FileEntry:
    """Fill in the hash and chunk id of every bundled tensor of a file entry from its bundle's bytes (each bundle
    read once, verified against its id), and tell the store where each such id's bytes are. CorruptObjectError
    when a bundle's length is not the sum of its tensors' sizes."""
    by_bundle: dict[int, list[tuple[TensorEntry, Slot]]] = {}
    for t in f.tensors:
        if t.slot is not None and not t.chunks:
            by_bundle.setdefault(t.slot.place, []).append((t, t.slot))
    for members in by_bundle.values():
        bid, length = members[0][1].bundle, members[0][1].length
        hashes = _slice_hashes(store, f.path, bid, length, [(slot.offset, t.nbytes) for t, slot in members])
        for (t, _slot), h in zip(members, hashes, strict=True):
            t.hash = h
            t.chunks = [h]
        store.add_slices(bid, [(h, slot.offset, t.nbytes) for (t, slot), h in zip(members, hashes, strict=True)])
    return f


def _slice_hashes(store: ObjectStore, path: str, bid: str, length: int, places: list[tuple[int, int]]) -> list[str]:
    """The hashes of slices (offset, size) of bundle `bid`, of `length` bytes by the file's tensors, read once and
    verified against its id; CorruptObjectError when its length is another. A slice of a bundle the store lacks
    (a partial fetch brings only the bundles of the tensors it chose) gets an id of its place, equal for equal
    places only, whose read fails naming the bundle."""
    try:
        raw = memoryview(store.get(bid, keep=True))
    except ObjectNotFoundError:
        return [hash_bytes(f"absent {bid} {offset}".encode()) for offset, _n in places]
    if len(raw) != length:
        raise CorruptObjectError(bid, f"a bundle of {len(raw)} bytes, but {path}'s tensors in it take {length}: "
                                      "the manifest naming it is malformed")
    return [hash_bytes(raw[offset : offset + n]) for offset, n in places]


def tensor_hashes(store: ObjectStore, f: FileEntry) -> list[str]:
    """The hashes of a file's tensors in file order; for tensors kept as columns (a table read without resolving,
    a snapshot's held tensors) without building an entry per tensor, each bundle read once."""
    table, held = f.small_table(), f.held()
    if held is not None:
        return held.merged([t.hash for t in held.listed], held.ids)
    if table is None:
        return [t.hash for t in resolve_file(store, f).tensors]
    offsets, lengths = table.offsets(), table.lengths()
    rows: dict[int, list[int]] = {}
    for i, k in enumerate(table.ins):
        rows.setdefault(k, []).append(i)
    hashes = [""] * len(table.ins)
    for k, members in rows.items():
        places = [(offsets[i], table.nbytes[i]) for i in members]
        for i, h in zip(members, _slice_hashes(store, f.path, table.bundles[k], lengths[k], places), strict=True):
            hashes[i] = h
    return table.merged([t.hash for t in table.listed], hashes)


def small_tensor_ids(manifest: Manifest) -> set[str]:
    """The ids of a tree's bundled tensors, as read (none for a tensor read without its hash, and none looked for
    in a file whose tensors were never built: they were never resolved either)."""
    return {t.chunks[0] for f in manifest.files if f.built() for t in f.tensors if t.slot is not None and t.chunks}


def bundle_misfit(store: ObjectStore, manifest: Manifest, skip: set[str] | frozenset[str] = frozenset()) -> str | None:
    """What a reader would refuse in a manifest read without its bundles (resolve=False): a bundle whose length
    is not the sum of its tensors' sizes. None if every bundle fits; bundles missing, damaged or in `skip` are
    not judged (fsck reports those objects themselves). For fsck, which reads every manifest so after verifying
    every object: a bundle's length is then its header's."""
    for f in manifest.files:
        for k, bid, length in f.bundle_lengths():
            if bid in skip:
                continue
            try:
                n = store.header(bid).raw_length  # fsck has verified the object already: its header is its length
            except (ObjectNotFoundError, CorruptObjectError):  # fsck reports the object itself
                continue
            if n != length:
                return f"{f.path}: bundle {k} ({bid}) holds {n} bytes, its tensors take {length}"
    return None
