"""What a run says while it trains: lines, and a one-line live progress bar (images/s, ETA) on a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_seconds(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Console:
    """The run's one voice: ``line`` for messages, ``bar`` for the live bar (terminals only); silent
    when ``quiet`` (and on every process but rank 0). ``total_steps`` is set once the run knows it."""

    def __init__(self, quiet: bool = False, stream: TextIO | None = None, total_steps: int = 0):
        self.total = total_steps
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.live = not quiet and self.stream.isatty()
        self.started = time.monotonic()
        self.start_step: int | None = None

    def bar(self, step: int, epoch: int, images_per_s: float, loss: float, lr: float) -> None:
        if not self.live:
            return
        if self.start_step is None:
            self.start_step, self.started = step, time.monotonic()
        done = step - self.start_step
        elapsed = time.monotonic() - self.started
        eta = elapsed / done * (self.total - step) if done else 0.0
        width = 24
        filled = int(width * step / max(1, self.total))
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] step {step}/{self.total} ep {epoch} "
                          f"loss {loss:.3f} lr {lr:.4g} {images_per_s:.0f} img/s ETA {format_seconds(eta)}  ")
        self.stream.flush()

    def line(self, text: str) -> None:
        if self.quiet:
            return
        if self.live:
            self.stream.write("\r" + " " * 100 + "\r")
        self.stream.write(text + "\n")
        self.stream.flush()
