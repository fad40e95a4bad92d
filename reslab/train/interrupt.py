"""Ctrl-C as a request: the handler only records it, and the code that owns the work decides where to stop.

A KeyboardInterrupt raised at an arbitrary bytecode can land inside a destructor or a cleanup, where
Python prints "Exception ignored in ..." and carries on as if nothing happened; a flag read at known
points cannot be lost that way.
"""

from __future__ import annotations

import signal
import sys
from typing import Any


class StopFlag:
    """First Ctrl-C sets ``requested``; a second one raises KeyboardInterrupt at once (the user insists)."""

    def __init__(self) -> None:
        self.requested = False
        self._installed = False
        self._previous: Any = None  # None too when the previous handler was not set from Python

    def __enter__(self) -> "StopFlag":
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
            pass
        return self

    def _handle(self, *_: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *_: Any) -> None:
        if self._installed:
            # A handler set outside Python reads back as None; the default is the nearest we can restore.
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.default_int_handler)
            self._installed = False


def say_while_stopping(text: str) -> None:
    """A line on stderr that must not get in the way of stopping: a closed stderr (a pipe whose reader
    is gone) is ignored rather than raised into the code that is stopping workers or members."""
    try:
        print(text, file=sys.stderr, flush=True)
    except OSError:
        pass
