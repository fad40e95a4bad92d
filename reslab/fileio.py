"""Files: writes that are atomic (a temporary file beside the target, then ``os.replace``, so a crash
mid-write leaves the previous file or none, never a half-written one), file digests, and the one
reader of the YAML/JSON mappings that specs and configs are written in.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch
import yaml


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


def atomic_write_bytes(data: bytes, path: Path) -> Path:
    return _atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_with(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """``write`` fills an open binary file (for writers that take one, like ``np.savez``, which would add
    ".npz" to a temporary file's name)."""
    def fill(tmp: str) -> None:
        with open(tmp, "wb") as f:
            write(f)
    return _atomic(path, fill)


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


def read_yaml_mapping(path: str | Path, error: type[Exception], what: str = "file") -> dict[str, Any]:
    """A YAML (or, by its suffix, JSON) file whose top level is a mapping; any problem is ``error``
    with one line naming the file. An empty YAML file is an empty mapping."""
    path = Path(path)
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a named pipe would block the read forever
            raise error(f"{path}: not a regular file")
        text = path.read_text()
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read ({exc})") from None
    is_json = path.suffix.lower() == ".json"
    try:
        data = json.loads(text) if is_json else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise error(f"{path}: not valid {'JSON' if is_json else 'YAML'}: {first}") from None
    if data is None and not is_json:
        return {}
    if not isinstance(data, dict):
        raise error(f"{path}: the top level must be a mapping of keys to values")
    return data
