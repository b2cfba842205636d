"""Atomic output: write into a hidden temporary file (or folder) beside the target, then
``os.replace`` it into place. Nothing half-written is ever left at the target path."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from exports.errors import ExportError


def check_target(path: Path, *, force: bool, is_dir: bool = False) -> None:
    """Fail early (one line) when ``path`` exists without ``force`` or its folder is not writable."""
    if path.exists() and not force:
        raise ExportError(f"{path} already exists (use --force to overwrite)")
    if path.exists() and force and path.is_dir() != is_dir:
        kind = "a folder" if path.is_dir() else "a file"
        raise ExportError(f"{path} is {kind}; refusing to replace it with a different kind")
    parent = path.parent
    if not parent.exists():
        raise ExportError(f"cannot write {path}: folder {parent} does not exist")
    if not parent.is_dir():
        raise ExportError(f"cannot write {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write {path}: folder {parent} is not writable")


def _prefix(path: Path) -> str:
    # The writer's pid is in the name, so that a later export can tell a killed writer's leftovers
    # from a live one's work in progress.
    return f".{path.name}.{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(path: Path) -> list[Path]:
    """Delete temporary files/folders of ``path`` left by writers that no longer run (kill -9)."""
    removed = []
    for candidate in path.parent.glob(f".{path.name}.*"):
        # ".NAME.<pid>-<random>.tmp", ".NAME.old-<pid>"; older writers used ".NAME.<random>.tmp".
        match = re.fullmatch(r"(?:(\d+)-)?\w+\.tmp|old-(\d+)", candidate.name[len(path.name) + 2:])
        if match is None:
            continue
        pid = match.group(1) or match.group(2)
        if pid is not None and _alive(int(pid)):
            continue
        discard(candidate)
        removed.append(candidate)
    return removed


def temp_file(path: Path) -> Path:
    """A new empty hidden file in the target's folder (same file system, so ``os.replace`` is atomic)."""
    try:
        fd, name = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    return Path(name)


def temp_dir(path: Path) -> Path:
    try:
        return Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from None


def discard(tmp: Path | None) -> None:
    """Remove a temporary file or folder, ignoring that it may be gone already."""
    if tmp is None:
        return
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)


def publish(tmp: Path, path: Path, *, force: bool) -> None:
    """Move a finished temporary file or folder into place."""
    if path.exists():
        if not force:
            raise ExportError(f"{path} already exists (use --force to overwrite)")
        if path.is_dir():
            # A folder cannot be replaced atomically by rename over a non-empty one: swap it out.
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
            remove_stale(path)
            return
    os.replace(tmp, path)
    remove_stale(path)
    try:
        # mkstemp creates 0600 files; give the export the usual permissions.
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
    except OSError:
        pass
