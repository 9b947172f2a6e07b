"""load: a commit's tensors as a state_dict (torch or numpy), all of them or those matching names/globs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..errors import MlvcError
from ..snapshot import load_tensors
from .select import select_tensors

if TYPE_CHECKING:
    from ..repo import Repo


def load(repo: Repo, rev: str = "HEAD", tensors: Iterable[str] | None = None, framework: str | None = None) -> dict:
    """The tensors of `rev` as a state_dict (all of them, or those matching the names/globs in `tensors`): torch
    tensors when torch is installed (or framework="torch"), else numpy arrays (framework="numpy")."""
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
    entries = manifest.tensors()
    if tensors is not None:
        entries = {n: entries[n] for n in select_tensors(entries, tensors, rev)}
    with repo.pipeline() as pipe:
        return load_tensors(pipe, entries, framework)
