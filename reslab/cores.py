"""How many CPU cores this process may use: the ones it is allowed to run on (a container's or
``taskset``'s limit), not the machine's count that ``os.cpu_count()`` reports."""

from __future__ import annotations

import os


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1
