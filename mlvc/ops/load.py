"""load: a commit's tensors as a state_dict (torch or numpy), all of them or those matching names/globs."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..errors import MlvcError
from ..snapshot import load_tensors

if TYPE_CHECKING:
    from ..repo import Repo


def load(repo: Repo, rev: str, tensors: Iterable[str] | None, framework: str | None) -> dict:
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
        patterns = [tensors] if isinstance(tensors, str) else list(tensors)
        chosen = {n: t for n, t in entries.items() if any(fnmatch.fnmatchcase(n, p) for p in patterns)}
        unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in entries)]
        if unmatched:
            raise MlvcError(f"no tensor in {rev} matches {', '.join(map(repr, unmatched))}")
        entries = chosen
    with repo.pipeline() as pipe:
        return load_tensors(pipe, entries, framework)
