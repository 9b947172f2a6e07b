"""One switchable progress helper. The library reports; only the CLI turns drawing on."""

from __future__ import annotations

import sys
import time


class Progress:
    """Silent by default. `Progress.bar(...)` draws on stderr when enabled and stderr is a terminal."""

    def start(self, label: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def finish(self) -> None:
        pass


class TerminalProgress(Progress):
    """A one-line bar on stderr, redrawn at most 10 times a second, shown only after half a second."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.label = ""
        self.total = None
        self.done = 0
        self.t0 = 0.0
        self.last = 0.0
        self.drawn = False

    def start(self, label, total=None):
        self.finish()
        self.label, self.total, self.done = label, total, 0
        self.t0 = self.last = time.monotonic()

    def advance(self, n):
        self.done += n
        now = time.monotonic()
        if now - self.t0 > 0.5 and now - self.last > 0.1:
            self.last = now
            self._draw(now)

    def _draw(self, now):
        from .util import human_bytes

        rate = self.done / max(now - self.t0, 1e-9)
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            text = (f"\r{self.label}: [{bar:<30}] {frac:4.0%} "
                    f"{human_bytes(self.done)}/{human_bytes(self.total)} {human_bytes(rate)}/s")
        else:
            text = f"\r{self.label}: {human_bytes(self.done)} {human_bytes(rate)}/s"
        self.stream.write(text)
        self.stream.flush()
        self.drawn = True

    def finish(self):
        if self.drawn:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
        self.drawn = False


NULL = Progress()
