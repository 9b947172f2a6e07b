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
from .objects import FileEntry, Manifest, Slot, TensorEntry
from .store import BUNDLE_MAX, BUNDLE_TENSOR_MAX, ObjectStore
from .util import hash_bytes


def _groups(f: FileEntry) -> list[list[int]]:
    """The bundles of a file, as lists of tensor indices: in list order, a non-empty tensor of one chunk and a
    known dtype, at most BUNDLE_TENSOR_MAX bytes, that no other tensor aliases and that aliases none, goes into
    the open bundle of its element width, which is closed when the tensor would take it past BUNDLE_MAX."""
    aliased = {t.alias for t in f.tensors if t.alias is not None}
    kinds: dict[str, tuple[int, int]] = {}  # dtype -> (element size, plane width); (0, 0) for an unknown dtype
    groups: list[list[int]] = []
    open_: dict[int, tuple[list[int], int]] = {}
    for i, t in enumerate(f.tensors):
        n = t.nbytes
        if not 0 < n <= BUNDLE_TENSOR_MAX or t.alias is not None or len(t.chunks) != 1:
            continue
        kind = kinds.get(t.dtype)
        if kind is None:
            known = DTYPES.get(t.dtype)
            kind = kinds[t.dtype] = (known.itemsize, plane_width(t.dtype)) if known is not None else (0, 0)
        size, width = kind
        if n != size * math.prod(t.shape) or (aliased and t.name in aliased):
            continue
        group, total = open_.get(width, (None, 0))
        if group is None or total + n > BUNDLE_MAX:
            group, total = [], 0
            groups.append(group)
        group.append(i)
        open_[width] = (group, total + n)
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


def _base(bundled: dict[str, tuple[str, int]], first: TensorEntry, length: int) -> str | None:
    """The delta base of a new bundle: the bundle of the same length that held its first tensor in the base
    tree (`bundled`: that file's FileEntry.bundled_by_name)."""
    bid, n = bundled.get(first.name, ("", -1))
    return bid if n == length else None


def store_bundles(store: ObjectStore, manifest: Manifest, base: Manifest | None = None,
                  stats: IngestStats | None = None) -> Manifest:
    """The manifest with its small tensors in bundles, every new bundle stored (its tensors' bytes read with
    `store.get`: held since ingest, or slices of the bundles they came from). A tensor left out of bundles
    whose bytes no object holds yet (an alias's target, a tensor taken from another tree's bundle) is stored
    as an object of its own. New file and tensor entries: the ones given, shared with other trees, stay as
    they are."""
    files = []
    for f in manifest.files:
        if not f.tensors:
            files.append(f)
            continue
        assert all(t.chunks for t in f.tensors if t.slot is not None), f"{f.path}: a manifest read unresolved"
        tensors = list(f.tensors)
        changed = False
        groups = _groups(f)
        old = base.file(f.path) if base is not None else None
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
                raw = b"".join(map(store.get, ids))
                if len(raw) != length:
                    raise CorruptObjectError(ids[0], "tensor bytes of the wrong length")
                # A small bundle goes in a pack (which the store's flush writes before a ref names the commit),
                # unless it has a delta base: a pack holds full objects, and most of a bundle is often unchanged.
                # Kept in the base cache (`remember`): a process committing again (the Tracker's worker) finds
                # the next version's delta base there instead of decoding it; bundles are at most 1 MiB.
                bundle_base = _base(bundled, members[0], length)
                r = store.put(raw, plane_width(members[0].dtype), pack=bundle_base is None, base=bundle_base,
                              remember=True)
                bid = r.id
                _count(stats, r.stored_size)
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
            for c in t.chunks:
                if store.is_slice(c) and not store.has(c):
                    _count(stats, store.put(store.get(c), plane_width(t.dtype), pack=True).stored_size)
        files.append(replace(f, tensors=tensors) if changed else f)
    return replace(manifest, files=files)


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
        raw: memoryview | None = None
        try:
            raw = memoryview(store.get(bid, keep=True))
        except ObjectNotFoundError:  # a partial fetch brings only the bundles of the tensors it chose
            pass
        if raw is not None and len(raw) != length:
            raise CorruptObjectError(bid, f"a bundle of {len(raw)} bytes, but {f.path}'s tensors in it take {length}: "
                                          "the manifest naming it is malformed")
        slices = []
        for t, slot in members:
            # a tensor of an absent bundle gets an id of its place, equal for equal places only, whose read
            # fails naming the bundle
            t.hash = hash_bytes(raw[slot.offset : slot.offset + t.nbytes] if raw is not None
                                else f"absent {bid} {slot.offset}".encode())
            t.chunks = [t.hash]
            slices.append((t.hash, slot.offset, t.nbytes))
        store.add_slices(bid, slices)
    return f


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
