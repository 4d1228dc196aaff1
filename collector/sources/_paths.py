"""Root-relative paths and small file readers shared by the /proc and /sys sources."""

from __future__ import annotations

from pathlib import Path

from collector.source import NoDataError, SourceContext


def proc_path(ctx: SourceContext, *parts: str) -> Path:
    """A path under the context's proc root (never a hard-coded /proc)."""
    return Path(ctx.proc_root).joinpath(*parts)


def sys_path(ctx: SourceContext, *parts: str) -> Path:
    """A path under the context's sys root (never a hard-coded /sys)."""
    return Path(ctx.sys_root).joinpath(*parts)


def read_text(path: Path) -> str:
    """The file's contents with surrounding whitespace stripped (sysfs values end in a newline)."""
    return path.read_text(encoding="utf-8", errors="replace").strip()


def read_optional(path: Path) -> str | None:
    """The file's stripped contents, or None when it is missing or unreadable."""
    try:
        return read_text(path)
    except OSError:
        return None


def read_required(path: Path, what: str) -> str:
    """The file's stripped contents; a missing file raises NoDataError naming `what`."""
    try:
        return read_text(path)
    except FileNotFoundError as err:
        raise NoDataError(f"{what}: {path} does not exist") from err


def list_dir(path: Path, what: str) -> list[Path]:
    """The entries of a directory, sorted by name; a missing or empty one raises NoDataError."""
    try:
        entries = sorted(path.iterdir(), key=lambda p: p.name)
    except (FileNotFoundError, NotADirectoryError) as err:
        raise NoDataError(f"{what}: {path} does not exist") from err
    if not entries:
        raise NoDataError(f"{what}: {path} is empty")
    return entries
