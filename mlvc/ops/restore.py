"""restore (`mlvc restore [--source REV] [PATH...] [-- GLOB...]`, and `mlvc checkout REV -- GLOB...`): put
files or single tensors of a commit back into the working checkpoint; HEAD does not move.

Files (`paths`): every file REV has under the paths is written whole, byte for byte (files already equal are
left alone), and a file HEAD tracks under them that REV lacks is removed, so the paths end exactly as in
REV; like `git restore PATH`, uncommitted changes there are discarded. Untracked files are never touched.

Tensors (`tensors`, globs; only in files under `paths` when both are given): the affected files are rewritten
all or nothing (each into a temp file beside it, fsynced and verified; only when every one is written are they
renamed into place, so a bad object changes nothing): the tensors that match take their value (and dtype and
shape) from REV, every other tensor keeps its working bytes, uncommitted changes included. The header is kept
verbatim when the tensor layout did not change; otherwise it is rebuilt with the file's __metadata__. A tensor
REV has but the working file lacks is appended. Like `git checkout REV -- PATH`, the matching tensors'
uncommitted values are overwritten. Files that are not safetensors are only restored whole (when every tensor
of the file matches).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..chunking import FileRange
from ..errors import FormatError, MlvcError, PathError
from ..formats import safetensors as st
from ..objects import KIND_SAFETENSORS, FileEntry, Manifest, TensorEntry
from ..progress import NULL, Progress
from ..snapshot import file_hash, tensor_chunks
from .select import select_tensors
from .treebuild import header_bytes, header_metadata
from .workfiles import under
from .worktree import Write, recover, safe_target, update_worktree

if TYPE_CHECKING:
    from ..chunking import Pipeline
    from ..repo import Repo


@dataclass
class RestoreResult:
    commit: str
    tensors: list[str] = field(default_factory=list)  # names restored
    files: list[str] = field(default_factory=list)  # working files rewritten
    removed: list[str] = field(default_factory=list)  # files HEAD tracks that REV lacks, removed (path restores)
    unchanged: list[str] = field(default_factory=list)  # files that already were as in REV (path restores)
    head: str | None = None  # HEAD's commit (it did not move)
    # what was restored and now differs from HEAD (tensor names, file paths): what `mlvc status` shows as
    # changed because of this restore; empty when everything restored equals HEAD's (restored from HEAD)
    differs_from_head: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def restore(repo: Repo, rev: str, tensors: Iterable[str] | str | None, progress: Progress = NULL,
            paths: Iterable[str] | str | None = None) -> RestoreResult:
    """Write files or tensors as they are in `rev` into the working checkpoint; HEAD stays.

    `tensors`: globs of tensor names (None: whole files). `paths`: files or folders (relative to the current
    folder, or absolute) whose files are restored whole, or, with `tensors`, that limit the tensors to their
    files. At least one of the two must be given."""
    patterns = None if tensors is None else [tensors] if isinstance(tensors, str) else list(tensors)
    roots = None if paths is None else [repo.rel_path(p) for p in ([paths] if isinstance(paths, str) else paths)]
    if patterns is not None and not patterns:
        raise MlvcError("name the tensors to restore (globs such as 'encoder.layer.0.*')")
    if patterns is None and not roots:
        raise MlvcError("name the paths to restore (`mlvc restore .` restores every tracked file) or the tensors "
                        "(`mlvc restore -- 'encoder.layer.0.*'`)")
    recover(repo)
    cid = repo.resolve(rev)
    manifest = repo.read_manifest(repo.read_commit(cid).manifest)
    head = repo.head()
    head_manifest = repo.read_manifest(repo.read_commit(head).manifest) if head else None
    result = RestoreResult(cid, head=head)
    if patterns is None:
        assert roots is not None
        return _restore_files(repo, rev, manifest, head_manifest, roots, result, progress)
    file_of = {id(t): f for f in manifest.files for t in f.tensors}
    names = {k: t for k, t in manifest.tensors().items()
             if roots is None or any(under(file_of[id(t)].path, r) for r in roots)}
    by_file: dict[str, tuple[FileEntry, dict[str, TensorEntry]]] = {}
    where = rev if roots is None else f"{rev} under {', '.join(roots)}"
    head_tensors = {(f.path, t.name): t for f in head_manifest.files for t in f.tensors} if head_manifest else {}
    for key in select_tensors(names, patterns, where):
        t = names[key]
        f = file_of[id(t)]
        by_file.setdefault(f.path, (f, {}))[1][t.name] = t
        result.tensors.append(key)
        h = head_tensors.get((f.path, t.name))
        if h is None or (h.hash, h.dtype, list(h.shape)) != (t.hash, t.dtype, list(t.shape)):
            result.differs_from_head.append(key)
    # check everything before writing anything
    for path, (f, chosen) in by_file.items():
        safe_target(repo.root, path)
        if f.kind != KIND_SAFETENSORS and len(chosen) != len(f.tensors):
            raise FormatError(path, f"tensors of a {f.kind} file can only be restored all together; "
                                    f"check out the whole file with `mlvc restore --source {rev} {path}`")
        target = repo.abs_path(path)
        if f.kind == KIND_SAFETENSORS and os.path.isfile(target):
            with open(target, "rb") as fh:
                st.read_layout(fh, path)  # a damaged working file is reported, not rewritten
    writes = []
    for path, (f, chosen) in sorted(by_file.items()):
        target = repo.abs_path(path)
        if len(chosen) == len(f.tensors) and (f.kind != KIND_SAFETENSORS or not os.path.isfile(target)):
            writes.append(Write.of(f))  # the whole file, byte for byte
        else:
            writes.append(Write(path, sum(t.nbytes for t in chosen.values()), None,
                                functools.partial(_rewrite, f=f, chosen=chosen, target=target)))
        result.files.append(path)
    # every file written and verified, then they all go into place (HEAD does not move)
    update_worktree(repo, writes, [], progress=progress)
    return result


def _restore_files(repo: Repo, rev: str, manifest: Manifest, head_manifest: Manifest | None, roots: list[str],
                   result: RestoreResult, progress: Progress) -> RestoreResult:
    """Whole files: REV's files under `roots` written (unless equal), HEAD's files there that REV lacks removed."""
    committed = {f.path: f for f in head_manifest.files} if head_manifest else {}
    wanted = [f for f in manifest.files if any(under(f.path, r) for r in roots)]
    have = {f.path for f in wanted}
    removes = sorted(p for p in committed if p not in have and any(under(p, r) for r in roots))
    unmatched = [r for r in roots if not any(under(p, r) for p in [*have, *removes])]
    if unmatched:
        where = rev if result.commit == result.head else f"{rev} (nor of HEAD)"
        raise PathError(f"{', '.join(unmatched)}: no file of {where} is there; `mlvc show {rev}` lists its files")
    writes = []
    for f in wanted:
        target = safe_target(repo.root, f.path)
        if os.path.isfile(target) and not os.path.islink(target) and file_hash(target) == f.hash:
            result.unchanged.append(f.path)
        else:
            writes.append(Write.of(f))
        if f.path not in committed or committed[f.path].hash != f.hash:
            result.differs_from_head.append(f.path)
    for p in removes:
        safe_target(repo.root, p)
        if os.path.lexists(repo.abs_path(p)):
            result.differs_from_head.append(p)
    removes = [p for p in removes if os.path.lexists(repo.abs_path(p))]
    applied = update_worktree(repo, writes, removes, unchanged=result.unchanged, progress=progress)
    result.files, result.removed = applied.written, applied.removed
    return result


def _rewrite(pipe: Pipeline, out, f: FileEntry, chosen: dict[str, TensorEntry], target: str) -> None:
    """Write into `out` a rewrite (or creation) of the working safetensors file at `target` with the chosen
    tensors from the store."""
    with contextlib.ExitStack() as stack:
        if os.path.isfile(target):
            fh = stack.enter_context(open(target, "rb"))
            layout = st.read_layout(fh, f.path)
            whole = FileRange(fh.fileno(), 0, os.fstat(fh.fileno()).st_size, f.path)  # pread: never SIGBUS
            ds = layout.data_start
            working = [(s.name, s.dtype, list(s.shape), (ds + s.begin, ds + s.end)) for s in layout.tensors]
            header, meta = layout.header_bytes, layout.metadata
        else:
            whole, working, header = None, [], None
            meta = header_metadata(header_bytes(pipe, f)) if f.header else None
        items: list[tuple[str, str, list[int], TensorEntry | tuple[int, int]]] = []
        for name, dtype, shape, span in working:
            t = chosen.get(name)
            items.append((name, t.dtype, list(t.shape), t) if t else (name, dtype, shape, span))
        have = {name for name, *_ in working}
        items += [(t.name, t.dtype, list(t.shape), t) for t in f.tensors if t.name in chosen and t.name not in have]
        # Keep a header verbatim when the layout matches one: the working file's, or REV's (then the file
        # comes out byte for byte as committed when every other tensor also matches).
        specs = [(n, d, s) for n, d, s, _ in items]
        rev_specs = [(t.name, t.dtype, list(t.shape)) for t in f.tensors]
        if header is not None and specs == [(n, d, s) for n, d, s, _ in working]:
            pass
        elif sorted(specs) == sorted(rev_specs) and f.header:
            order = {t.name: i for i, t in enumerate(f.tensors)}
            items.sort(key=lambda x: order[x[0]])
            header = header_bytes(pipe, f)
        else:
            sizes = [(n, d, s, x.nbytes if isinstance(x, TensorEntry) else x[1] - x[0]) for n, d, s, x in items]
            header = st.build_layout(sizes, meta).header_bytes
        out.write(header)
        for _name, _dtype, _shape, x in items:
            if isinstance(x, TensorEntry):
                _copy_tensor(pipe, x, out)
            else:  # a span of the working file
                assert whole is not None
                for pos in range(x[0], x[1], 1 << 24):
                    out.write(whole[pos : min(pos + (1 << 24), x[1])].read())


def _copy_tensor(pipe: Pipeline, t: TensorEntry, out) -> None:
    for chunk in tensor_chunks(pipe, t):  # checks the tensor's hash at the end
        out.write(chunk)
        pipe.progress.advance(len(chunk))
