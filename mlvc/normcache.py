"""The chunk-norm cache (`.mlvc/cache/chunk-norms`): for a chunk read as a dtype, the sum of squares of its
finite elements, so that a diff never has to decode a chunk that is equal on both sides.

A chunk's id names its content, so an entry never goes stale. The file is append-only text, one
`ID DTYPE VALUE` line per entry (VALUE in float.hex); a torn last line (crash mid-append) is ignored, and a
missing or damaged file only costs decoding again. Nothing in it is needed to read the repository.
"""

from __future__ import annotations

import os

from .util import is_object_id


class NormCache:
    def __init__(self, mlvc_dir: str):
        self.path = os.path.join(mlvc_dir, "cache", "chunk-norms")
        self._entries: dict[tuple[str, str], float] | None = None
        self._new: list[tuple[str, str, float]] = []

    def _load(self) -> dict[tuple[str, str], float]:
        if self._entries is None:
            self._entries = {}
            try:
                with open(self.path, encoding="ascii", errors="replace") as f:
                    for line in f:
                        parts = line.split()
                        if len(parts) != 3 or not line.endswith("\n") or not is_object_id(parts[0]):
                            continue
                        try:
                            self._entries[(parts[0], parts[1])] = float.fromhex(parts[2])
                        except ValueError:
                            continue
            except OSError:
                pass
        return self._entries

    def get(self, oid: str, dtype: str) -> float | None:
        return self._load().get((oid, dtype))

    def put(self, oid: str, dtype: str, value: float) -> None:
        entries = self._load()
        if (oid, dtype) not in entries:
            entries[(oid, dtype)] = value
            self._new.append((oid, dtype, value))

    def save(self) -> None:
        if not self._new:
            return
        text = "".join(f"{oid} {dtype} {float(v).hex()}\n" for oid, dtype, v in self._new)
        self._new = []
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, text.encode("ascii"))
            finally:
                os.close(fd)
        except OSError:
            pass  # an optimisation only: a read-only repository still diffs
