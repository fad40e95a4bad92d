"""One process trains a run folder at a time.

Two ``reslab train --resume RUN`` of one run would both train it, each overwriting the other's
checkpoints and metrics. The first takes an exclusive ``flock`` on ``RUN/.lock``; the second is
refused in one line. The kernel drops the lock when its process ends, however it ends (kill -9
included), so a stale lock never blocks a resume. Where ``fcntl`` is missing (Windows) there is no lock.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


class RunLock:
    """Held from the run's set-up to its end; ``None`` (processes other than rank 0) holds nothing."""

    def __init__(self, run_dir: Path | None):
        self.file = None
        self.created: list[Path] = []  # the folders this lock made, deepest first (removed again if left empty)
        if run_dir is None or fcntl is None:
            return
        missing = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.created = missing
            self.file = open(run_dir / LOCK_NAME, "a+")
        except OSError as exc:
            raise ConfigError(f"cannot write the run folder {run_dir}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            self.file = None
            raise ConfigError(f"{run_dir} is being trained by {holder}; wait for it to end (or stop it) "
                              "first, or choose another --out") from None
        self.file.truncate(0)
        self.file.write(f"reslab process {os.getpid()}\n")
        self.file.flush()

    def release(self) -> None:
        if self.file is None:
            return
        folder = Path(self.file.name).parent
        self.file.close()  # closing drops the flock
        self.file = None
        if self.created and [p.name for p in folder.iterdir()] == [LOCK_NAME]:
            # A run that failed before writing anything leaves no folder behind (nor the parents it made).
            (folder / LOCK_NAME).unlink()
            for made in self.created:
                if any(made.iterdir()):
                    break
                made.rmdir()
