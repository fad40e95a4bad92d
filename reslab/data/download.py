"""Downloads that never leave a file looking complete when it is not, and tar extraction that
cannot write outside its destination."""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import DataError
from ..fileio import file_digest


def _progress(done: int, total: int | None, started: float, label: str) -> None:
    rate = done / max(time.monotonic() - started, 1e-6) / 1e6
    if total:
        width = 30
        filled = int(width * done / total)
        sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{done / 1e6:.1f}/{total / 1e6:.1f} MB {rate:.1f} MB/s")
    else:
        sys.stderr.write(f"\r{label} {done / 1e6:.1f} MB {rate:.1f} MB/s")
    sys.stderr.flush()


def download_file(url: str, dest: Path, md5: str | None = None, *, timeout: float = 60.0,
                  progress: bool = True) -> Path:
    """Fetch ``url`` to ``dest``: written to a temporary file beside it, checked (length, MD5), then
    renamed into place. A failed or cut-off download leaves nothing at ``dest``, nor the folders it
    made for it. A file whose MD5 does not match is kept aside as ``dest.bad`` (never used) and
    named in the error."""
    dest = Path(dest)
    created = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]
    tmp: Path | None = None
    started = time.monotonic()
    try:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
        except OSError as exc:
            raise DataError(f"cannot write the download into {dest.parent} ({exc.strerror or exc})") from None
        tmp = Path(tmp_name)
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    total = response.headers.get("Content-Length")
                    total = int(total) if total and total.isdigit() else None
                    done = 0
                    while block := response.read(1 << 16):
                        out.write(block)
                        done += len(block)
                        if progress:
                            _progress(done, total, started, dest.name)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", exc)
                raise DataError(f"cannot download {url} ({reason})") from None
            finally:
                if progress:
                    sys.stderr.write("\n")
        if total is not None and done != total:
            raise DataError(f"download of {url} stopped after {done} of {total} bytes")
        if md5 is not None:
            got = file_digest(tmp, "md5")
            if got != md5:
                bad = dest.with_name(dest.name + ".bad")
                os.replace(tmp, bad)
                raise DataError(f"{url}: MD5 {got} does not match the published {md5}; "
                                f"the file was kept aside as {bad} and not used")
        os.replace(tmp, dest)
        created = []
        return dest
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()
        # A failed download takes back the folders it made, innermost first; rmdir removes only
        # empty ones, so a kept .bad file or another process's files stop it.
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                break


def _check_members(archive: Path, members: list[tarfile.TarInfo]) -> None:
    for m in members:
        parts = Path(m.name).parts
        if m.name.startswith(("/", "\\")) or ".." in parts or not (m.isfile() or m.isdir()):
            raise DataError(f"{archive}: refusing unsafe archive member {m.name!r}")


def safe_extract(archive: Path, dest: Path, folder: str) -> Path:
    """Extract the top-level ``folder`` of a tar (any compression) to ``dest / folder``; nothing else in
    the archive is written. Refuses absolute paths, ``..``, links and device files.

    The files go to a private temporary folder inside ``dest`` first, and only then is ``folder`` moved
    into place, so a failure leaves ``dest`` untouched. An archive that also names other folders (a
    user's ``mnist/`` beside CIFAR in the same data root) cannot touch them, and an existing
    ``dest / folder`` is never replaced: this function does not know who filled it."""
    dest = Path(dest)
    final = dest / folder
    if final.exists() or final.is_symlink():
        raise DataError(f"{final} already exists; move it away to extract {archive.name} there")
    try:
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            _check_members(archive, members)
            ours = [m for m in members if Path(m.name).parts[:1] == (folder,)]
            if not ours:
                raise DataError(f"{archive}: no {folder}/ folder inside")
            staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
            try:
                for m in ours:
                    _extract_member(tar, m, staging / m.name)
                os.replace(staging / folder, final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except (tarfile.TarError, EOFError, OSError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(":")  # tarfile's can span lines
        raise DataError(f"{archive}: not a readable tar archive ({reason})") from None
    return final


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    if member.isdir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with tar.extractfile(member) as src, open(target, "wb") as out:  # type: ignore[union-attr]
        shutil.copyfileobj(src, out)
