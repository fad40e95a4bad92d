"""Ctrl-C (and for training, SIGTERM) as a request: the handler only records it, and the code that owns the work decides where to stop.

A KeyboardInterrupt raised at an arbitrary bytecode can land inside a destructor or a cleanup, where
Python prints "Exception ignored in ..." and carries on as if nothing happened; a flag read at known
points cannot be lost that way.
"""

from __future__ import annotations

import signal
import sys
from typing import Any


class StopFlag:
    """The first of ``signals`` (Ctrl-C by default) sets ``requested`` and ``received``; a second one raises
    KeyboardInterrupt at once (the user insists). Training also takes SIGTERM this way: schedulers and
    ``docker stop`` send it before they kill, so the run saves at its next step instead of losing the epoch."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT,)) -> None:
        self.signals = signals
        self.requested = False
        self.received: int | None = None
        self._previous: dict[int, Any] = {}  # a handler that was not set from Python reads back as None

    def __enter__(self) -> "StopFlag":
        for sig in self.signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handler, the signal behaves as usual
                pass
        return self

    def _handle(self, sig: int, _frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested, self.received = True, sig

    def __exit__(self, *_: Any) -> None:
        for sig, previous in self._previous.items():
            # A handler set outside Python reads back as None; the default is the nearest we can restore.
            fallback = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
            signal.signal(sig, previous if previous is not None else fallback)
        self._previous = {}


def say_while_stopping(text: str) -> None:
    """A line on stderr that must not get in the way of stopping: a closed stderr (a pipe whose reader
    is gone) is ignored rather than raised into the code that is stopping workers or members."""
    try:
        print(text, file=sys.stderr, flush=True)
    except OSError:
        pass
