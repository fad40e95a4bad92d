"""Files: writes that are atomic (a temporary file beside the target, then ``os.replace``, so a crash
mid-write leaves the previous file or none, never a half-written one), and file digests.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


def _atomic(path: Path, write: Callable[[str], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes the file private (0600); give it the mode an ordinary write would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_torch_save(obj: Any, path: Path) -> Path:
    return _atomic(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(text: str, path: Path) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)
    return _atomic(path, write)


def file_digest(path: str | Path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """The hex digest of a file's bytes, read in chunks (bundled weights and run inputs use SHA-256;
    dataset archives are published with MD5)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256(path: str | Path) -> str:
    return file_digest(path, "sha256")
