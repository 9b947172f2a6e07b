"""One switchable progress helper. The library reports; only the CLI turns drawing on.

An operation calls `progress.start(label, total, unit)`, then `advance(n)` as work is done, then `finish()`.
`NULL` (the default everywhere) does nothing; the CLI passes a `TerminalProgress`, a tqdm bar on stderr, only
when stderr is a terminal and progress is not switched off (`-q`, MLVC_NO_PROGRESS=1 or MLVC_PROGRESS=0; see
`enabled`). tqdm is imported when a bar is first started, never at start-up (`mlvc --help` does not load it).
"""

from __future__ import annotations

import os
import sys
import weakref
from typing import IO, Any

from .util import human_bytes

BYTES = "B"
"""The unit of `start` for byte counts (drawn as KiB, MiB, GiB); any other unit is a count ("objects")."""

_OFF = {"NO_PROGRESS": {"1", "true", "yes", "on"}, "PROGRESS": {"0", "false", "no", "off"}}


def enabled(stream: IO[str] | None = None, environ: dict[str, str] | None = None) -> bool:
    """Whether a bar should be drawn on `stream` (default stderr): it is a terminal, and neither
    MLVC_NO_PROGRESS=1 nor MLVC_PROGRESS=0 is set (as huggingface_hub's HF_HUB_DISABLE_PROGRESS_BARS)."""
    env = os.environ if environ is None else environ
    for name, off in _OFF.items():
        if env.get(f"MLVC_{name}", "").strip().lower() in off:
            return False
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no stream, or a closed one
        return False


def format_amount(n: float, unit: str = BYTES) -> str:
    """An amount as the bar shows it: bytes in IEC units ("3.2 MiB"), counts with their unit ("1,204 objects")."""
    return human_bytes(n) if unit == BYTES else f"{int(n):,} {unit}"


class Progress:
    """Silent by default: the protocol every operation takes."""

    def start(self, label: str, total: int | None = None, unit: str = BYTES) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def finish(self) -> None:
        pass


_live: weakref.WeakSet[TerminalProgress] = weakref.WeakSet()


def abandon_all() -> None:
    """Clear every bar still open (the CLI calls this before it prints an error or "interrupted")."""
    for p in list(_live):
        p.abandon()


def finish_all() -> None:
    """Finish every bar still open, leaving its last state on screen (the CLI calls this when a run ends)."""
    for p in list(_live):
        try:
            p.finish()
        except (OSError, ValueError):  # the terminal went away or was closed
            pass


_bar_class: Any = None


def _tqdm_bar() -> Any:
    """tqdm's bar with mlvc's amounts (IEC byte units or "N objects"), built on first use."""
    global _bar_class
    if _bar_class is None:
        from tqdm import tqdm  # lazily: a command that draws nothing never imports it

        class Bar(tqdm):
            @property
            def format_dict(self):
                d = super().format_dict
                unit, elapsed = d["unit"], d.get("elapsed") or 0.0
                d["done"] = format_amount(d["n"], unit) if unit == BYTES or not d.get("total") else f"{int(d['n']):,}"
                d["all"] = format_amount(d["total"], unit) if d.get("total") else "?"
                rate = d["n"] / elapsed if elapsed > 0 else 0.0
                d["speed"] = f"{human_bytes(rate)}/s" if unit == BYTES else f"{rate:,.0f} {unit}/s"
                return d

        _bar_class = Bar
    return _bar_class


def _sized(stream: IO[str]) -> bool:
    """Whether `stream` is a terminal that says how large it is."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, ValueError, OSError):
        return False
    return size.columns > 0 and size.lines > 0


class TerminalProgress(Progress):
    """A tqdm bar on `stream` (default stderr), shown only after `delay` seconds of work (half a second), redrawn
    at most 10 times a second, sizes in the one unit system of `util.human_bytes`. Bytes that advance without a
    `start` get a bar of their own, without a total (UNNAMED), unless an earlier bar was finished. `abandon()`
    clears a bar that an error or Ctrl-C left open, so the error line stands alone; `finish_all()` ends the bars
    a run left open."""

    WITH_TOTAL = "{desc}: {percentage:3.0f}%|{bar}| {done}/{all} [{elapsed}<{remaining}, {speed}]"
    WITHOUT_TOTAL = "{desc}: {done} [{elapsed}, {speed}]"
    UNNAMED = "working"  # the label of byte work that advanced without a start

    def __init__(self, stream: IO[str] | None = None, delay: float = 0.5):
        self.stream = stream
        self.delay = delay
        self.bar: Any = None
        self.used = False

    def start(self, label: str, total: int | None = None, unit: str = BYTES) -> None:
        self.finish()
        self.used = True
        stream = self.stream or sys.stderr
        # follow the terminal's width as it changes; one that does not say its size (0 x 0: a bare pty, some CI
        # consoles) is taken as 80 x 24, where tqdm would draw nothing at all
        sized = _sized(stream)
        self.bar = _tqdm_bar()(total=total or None, desc=label, unit=unit, file=stream, delay=self.delay,
                               mininterval=0.1, dynamic_ncols=sized, ncols=None if sized else 80,
                               nrows=None if sized else 24, leave=True,
                               bar_format=self.WITH_TOTAL if total else self.WITHOUT_TOTAL)
        _live.add(self)

    def advance(self, n: int) -> None:
        if self.bar is None:
            if self.used:  # after a finish: the labelled work is over, what follows is not drawn
                return
            self.start(self.UNNAMED)  # work that never started one (it has no total to give): a bar of its own
        self.bar.update(n)

    def finish(self) -> None:
        bar, self.bar = self.bar, None
        _live.discard(self)
        if bar is not None:
            bar.close()

    def abandon(self) -> None:
        """Close the bar without leaving it on screen (the work stopped: an error or Ctrl-C)."""
        bar, self.bar = self.bar, None
        _live.discard(self)
        if bar is not None:
            bar.leave = False
            try:
                bar.close()
            except (OSError, ValueError):  # the terminal went away or was closed: nothing to clear
                pass


NULL = Progress()
