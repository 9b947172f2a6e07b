"""Quantities as people read them: byte sizes and grace periods. Cheap to import (only mlvc.util)."""

from __future__ import annotations

import math

from ..util import human_bytes  # noqa: F401  (re-exported: the one byte-size format, which the progress bar uses too)


def describe_grace(seconds: float) -> str:
    """A grace period of `mlvc gc` in words: "now", "never", "2 weeks", "1 day", "90 s"."""
    if seconds == 0:
        return "now"
    if math.isinf(seconds):
        return "never"
    for unit, n in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= n and seconds % n == 0:
            return f"{int(seconds // n)} {unit}{'s' if seconds != n else ''}"
    return f"{seconds:g} s"
