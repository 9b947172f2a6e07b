"""Choosing tensors by name globs: the one rule (and the one error) for diff, load and restore."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from ..errors import MlvcError


def select_tensors(names: Iterable[str], patterns: Iterable[str] | str | None, where: str) -> list[str]:
    """The names (in their given order) that match at least one glob in `patterns`; None selects all.

    Globs are matched against whole names, case-sensitively (fnmatchcase). A glob that matches no name is an
    error: it is almost always a typo, and silently doing nothing would hide it. `where` names what was
    searched (a revision, or "A or B"), for the message.
    """
    names = list(names)
    if patterns is None:
        return names
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        raise MlvcError(f"no tensor in {where} matches {', '.join(map(repr, unmatched))}; "
                        "names are matched whole, e.g. 'encoder.layer.*.attention.*'")
    return chosen
