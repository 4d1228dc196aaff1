"""Durable writes: fsync a file's contents or a directory's entries (renames, creations, deletions)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


def fsync_file(path: str | Path) -> None:
    """Force a file's contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Force a directory's entries to disk, so a rename into it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(target: str | Path, prefix: str = ".tmp-") -> Iterator[Path]:
    """A temp path beside `target` to write in the block; then fsynced, renamed onto target, the directory
    fsynced. On an error (or interrupt) the temp file is removed and target is untouched."""
    target = Path(target)
    tmp = target.parent / f"{prefix}{uuid.uuid4().hex}{target.suffix}"
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)
