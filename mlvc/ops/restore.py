"""restore (`mlvc checkout REV -- GLOB...`): put some tensors of a commit into the working checkpoint.

The affected files are rewritten all or nothing (each into a temp file beside it, fsynced and verified;
only when every one is written are they renamed into place, so a bad object changes nothing): the
tensors that match take their value (and dtype and shape) from REV, every other tensor keeps its working
bytes, uncommitted changes included. The header is kept verbatim when the tensor layout did not change;
otherwise it is rebuilt with the file's __metadata__. A tensor REV has but the working file lacks is appended.
Like `git checkout REV -- PATH`, the matching tensors' uncommitted values are overwritten; HEAD does not move.
Files that are not safetensors are only restored whole (when every tensor of the file matches).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..chunking import FileRange
from ..errors import FormatError, MlvcError
from ..formats import safetensors as st
from ..objects import KIND_SAFETENSORS, FileEntry, TensorEntry
from ..progress import NULL, Progress
from ..snapshot import tensor_chunks
from .select import select_tensors
from .treebuild import header_bytes, header_metadata
from .worktree import Write, recover, safe_target, update_worktree

if TYPE_CHECKING:
    from ..chunking import Pipeline
    from ..repo import Repo


@dataclass
class RestoreResult:
    commit: str
    tensors: list[str] = field(default_factory=list)  # names restored
    files: list[str] = field(default_factory=list)  # working files rewritten

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def restore(repo: Repo, rev: str, tensors: Iterable[str] | str, progress: Progress = NULL) -> RestoreResult:
    """Write the named tensors (globs) as they are in `rev` into the working checkpoint; HEAD stays."""
    patterns = [tensors] if isinstance(tensors, str) else list(tensors)
    if not patterns:
        raise MlvcError("name the tensors to restore (globs such as 'encoder.layer.0.*')")
    recover(repo)
    cid = repo.resolve(rev)
    manifest = repo.read_manifest(repo.read_commit(cid).manifest)
    names = manifest.tensors()
    file_of = {id(t): f for f in manifest.files for t in f.tensors}
    by_file: dict[str, tuple[FileEntry, dict[str, TensorEntry]]] = {}
    result = RestoreResult(cid)
    for key in select_tensors(names, patterns, rev):
        t = names[key]
        f = file_of[id(t)]
        by_file.setdefault(f.path, (f, {}))[1][t.name] = t
        result.tensors.append(key)
    # check everything before writing anything
    for path, (f, chosen) in by_file.items():
        safe_target(repo.root, path)
        if f.kind != KIND_SAFETENSORS and len(chosen) != len(f.tensors):
            raise FormatError(path, f"tensors of a {f.kind} file can only be restored all together; "
                                    f"check out the whole file with `mlvc checkout {rev} -o DIR`")
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
