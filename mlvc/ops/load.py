"""load: a commit's tensors as a state_dict (torch or numpy), all of them or those matching names/globs."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..errors import CorruptObjectError, MlvcError, PathError
from ..objects import KIND_SAFETENSORS, FileEntry, Manifest
from ..snapshot import load_tensors
from .select import select_tensors

if TYPE_CHECKING:
    from ..repo import Repo


def load(repo: Repo, rev: str = "HEAD", tensors: Iterable[str] | None = None, framework: str | None = None, *,
         path: str | None = None) -> dict:
    """The tensors of `rev` as a state_dict (all of them, or those matching the names/globs in `tensors`): torch
    tensors when torch is installed (or framework="torch"), else numpy arrays (framework="numpy"). `path`: only
    the tensors of that one committed file (a commit of mlvc.Tracker holds the model and its training state in
    two files: `path="model.safetensors"` gives the model alone)."""
    if framework is None:
        try:
            import torch  # noqa: F401

            framework = "torch"
        except ImportError:
            framework = "numpy"
    if framework not in ("torch", "numpy"):
        raise MlvcError(f"framework must be 'torch' or 'numpy', not {framework!r}")
    if framework == "torch":
        from ..formats.torchfile import require_torch

        require_torch("loading as torch tensors")
    manifest = repo.read_manifest(repo.read_commit(repo.resolve(rev)).manifest)
    if path is not None:
        entry = _file(manifest, path, rev)
        manifest = Manifest(manifest.roots, [entry], manifest.chunk_size)
    entries = manifest.tensors()
    if tensors is not None:
        entries = {n: entries[n] for n in select_tensors(entries, tensors, rev)}
    with repo.pipeline() as pipe:
        return load_tensors(pipe, entries, framework)


def file_metadata(repo: Repo, rev: str, path: str) -> dict[str, str]:
    """The `__metadata__` strings of the safetensors file `path` in commit `rev` (empty when it has none); read
    from its header chunks alone, without reading a tensor."""
    entry = _file(repo.read_manifest(repo.read_commit(repo.resolve(rev)).manifest), path, rev)
    if entry.kind != KIND_SAFETENSORS:
        raise MlvcError(f"{path} in {rev} is not a safetensors file (it is {entry.kind}): it has no metadata")
    with repo.pipeline() as pipe:
        header = b"".join(pipe.read(entry.header or []))
    try:
        n = int.from_bytes(header[:8], "little")
        meta = json.loads(header[8 : 8 + n]).get("__metadata__") or {}
        return {str(k): str(v) for k, v in meta.items()}
    except (ValueError, AttributeError) as e:
        raise CorruptObjectError(entry.hash, f"the safetensors header of {path} does not parse ({e})") from None


def _file(manifest: Manifest, path: str, rev: str) -> FileEntry:
    entry = manifest.file(path)
    if entry is None:
        held = ", ".join(f.path for f in manifest.files[:8]) or "no files"
        raise PathError(f"{rev} holds no file {path} (it holds {held})")
    return entry
