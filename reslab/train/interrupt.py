"""Ctrl-C as a request: the handler only records it, and the code that owns the work decides where to stop.

A KeyboardInterrupt raised at an arbitrary bytecode can land inside a destructor or a cleanup, where
Python prints "Exception ignored in ..." and carries on as if nothing happened; a flag read at known
points cannot be lost that way.
"""

from __future__ import annotations

import signal
import time
from typing import Any

# A second SIGINT this soon after the first is the same Ctrl-C arriving twice, not a user insisting:
# under torchrun a worker gets the terminal's SIGINT and, a moment later, the one torchrun forwards.
REPEAT_GRACE_S = 1.0


class StopFlag:
    """First Ctrl-C sets ``requested``; a second one, REPEAT_GRACE_S or more later, raises KeyboardInterrupt
    at once (the user insists)."""

    def __init__(self) -> None:
        self.requested = False
        self._first_at: float | None = None
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
        now = time.monotonic()
        if self._first_at is None:
            self._first_at = now
        elif now - self._first_at >= REPEAT_GRACE_S:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *_: Any) -> None:
        if self._installed:
            # A handler set outside Python reads back as None; the default is the nearest we can restore.
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.default_int_handler)
            self._installed = False
