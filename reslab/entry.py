"""The ``reslab`` command's entry point. Importing the command line pulls in PyTorch, which takes
seconds; a Ctrl-C in that time would end in a long traceback from inside some import. This module
imports nothing heavy: it makes Ctrl-C a quiet exit first, then imports the rest."""

from __future__ import annotations

import os
import signal
import sys


def _interrupted_while_starting(_signum: int, _frame: object) -> None:
    sys.stderr.write("reslab: interrupted\n")
    sys.stderr.flush()
    os._exit(130)  # no cleanup to run yet; exceptions here would surface inside half-done imports


def main() -> int:
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.default_int_handler:  # not ignored or taken by whoever embeds us
        signal.signal(signal.SIGINT, _interrupted_while_starting)
    from .cli import main as cli_main

    # From here on Ctrl-C is KeyboardInterrupt again: the commands stop cleanly on it.
    signal.signal(signal.SIGINT, previous)
    return cli_main()
