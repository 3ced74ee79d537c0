"""Writing a file so that nothing is lost: an exclusive temporary beside the target, renamed over it.

`replacing(path)` gives a binary file to write into. It is a new file in the target's folder,
created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` under an unpredictable name, so no existing file
and no symlink planted beside the target is ever opened or followed. When the writing succeeds
the file is flushed to disk and renamed over the target in one step (a symlink at the target is
replaced, never written through); on any failure (a full disk, an exception, Ctrl-C) only that
temporary is removed, so the target keeps what it held and nothing half-written is left.

An `OSError` from the writing is raised again with the target as its `filename` and a plain
reason ("no space left on device"), never ``[Errno None] None``. No unetgen imports but reprs,
so every layer may use it.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from .reprs import short_path

__all__ = ["check_target", "create_exclusive", "move_new", "reason", "replacing", "replacing_path", "write_bytes"]

_TRIES = 100  # names tried before giving up: each collision is a 1 in 2**64 chance, or a planted file
_REASONS = {
    errno.ENOSPC: "no space left on device (the disk is full: free some space or write elsewhere)",
    errno.EDQUOT: "disk quota exceeded (free some space or write elsewhere)",
    errno.EFBIG: "file too large (the file system's or this process's file size limit)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def reason(err: BaseException) -> str:
    """Why a write failed, in words: the disk is full, permission denied..., never ``None``."""
    code = getattr(err, "errno", None)
    if code in _REASONS:
        return _REASONS[code]
    text = getattr(err, "strerror", None) or str(err).strip() or type(err).__name__
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


def check_target(path: Any, what: str = "the output") -> Path:
    """`path` as a `Path` that a file can be written to, else a `ValueError` naming it: a str or
    os.PathLike without NUL bytes, in an existing folder, not an existing directory, FIFO, device
    or socket, not a read-only file, not ending in a slash (a symlink to a regular file is fine: it
    is replaced, not followed)."""
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{what} path must be a str or os.PathLike, not {type(path).__name__}")
    text = os.fspath(path)
    if not isinstance(text, str):
        raise ValueError(f"{what} path must be text, not {type(text).__name__}")
    p = Path(text)
    if "\0" in text:
        raise ValueError(f"{what} {short_path(p)}: the path contains a NUL byte, which no file name can hold")
    if len(os.fsencode(p.name)) > 255:
        raise ValueError(f"{what} {short_path(p)}: the file name is too long (a file name has at most 255 bytes)")
    if text.endswith(("/", os.sep)) or not p.name or p.name in (".", ".."):
        raise ValueError(f"{what} {short_path(text)} names a folder, not a file; give a file name")
    if not p.parent.is_dir():
        raise ValueError(f"{what} {short_path(p)}: the folder {short_path(p.parent)} does not exist; create it first")
    try:
        mode = os.stat(p).st_mode
    except OSError:
        return p  # nothing there (or a dangling symlink, which is replaced)
    if stat.S_ISDIR(mode):
        raise ValueError(f"{what} {short_path(p)} is a directory; give a file in it")
    if not stat.S_ISREG(mode):
        raise ValueError(f"{what} {short_path(p)} exists and is not a regular file (a FIFO, device or socket)")
    if not os.access(p, os.W_OK):
        raise ValueError(f"{what} {short_path(p)} exists and is read-only; make it writable or write elsewhere")
    return p


def create_exclusive(target: Path) -> tuple[int, Path]:
    """A new, empty file beside `target` (its descriptor, open for writing, and its path), created
    with O_EXCL and O_NOFOLLOW: never an existing file, never through a symlink."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0)
    stem = target.name[:100]
    for _ in range(_TRIES):
        tmp = target.with_name(f".{stem}.{secrets.token_hex(8)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(
        errno.EEXIST, f"no new temporary name in {_TRIES} tries (files planted beside it?)", os.fspath(target)
    )


@contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file to write `path`'s new content into; renamed over `path` when the block ends
    without an exception, removed when it does not. Call `check_target` first for clear messages."""
    with _replacing(path) as (f, _, _):
        yield f


@contextmanager
def replacing_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """As `replacing`, for a library that writes by path only (safetensors): the path of the
    temporary, a file this process has just created exclusively (the library may truncate it, or
    rename a file of its own over it); it is flushed to disk and renamed over `path` in the end."""
    with _replacing(path) as (_, tmp, mode):
        yield os.fspath(tmp)
        fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
        try:
            if hasattr(os, "fchmod") and stat.S_IMODE(os.fstat(fd).st_mode) != mode:
                os.fchmod(fd, mode)  # a library's own temporary (0o600) renamed over it
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def _replacing(path: str | os.PathLike[str]) -> Iterator[tuple[BinaryIO, Path, int]]:
    """The temporary (open, its path, its permission bits: those of the file it replaces, or
    0o666 less the umask for a new one), renamed over `path` in the end or removed."""
    target = Path(path)
    tmp: Path | None = None
    try:
        fd, tmp = create_exclusive(target)
        with os.fdopen(fd, "wb") as f:
            mode = _mode(target, fd)
            yield f, tmp, mode
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        tmp = None
    except OSError as err:
        raise OSError(err.errno, reason(err), os.fspath(target)) from err
    finally:
        if tmp is not None:
            _remove(tmp)
    _fsync_dir(target.parent)


def _mode(target: Path, fd: int) -> int:
    """The permission bits of the regular file at `target` (a private file stays private), else
    the new file's; `fd` (the temporary) is given them."""
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    try:
        st = os.stat(target)
    except OSError:
        return mode
    if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) != mode and hasattr(os, "fchmod"):
        mode = stat.S_IMODE(st.st_mode) & 0o777
        os.fchmod(fd, mode)
    return mode


_APPEARED = "a file appeared there while it was written; nothing was replaced"


def move_new(tmp: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Rename `tmp` to `target` only if nothing is at `target` (a hard link made, then `tmp`
    removed: ``link`` never replaces), for files that are never replaced (`unetgen.outputs`): a
    `FileExistsError` if a file appeared there meanwhile. On a file system without hard links,
    checked just before a plain rename."""
    try:
        os.link(tmp, target, follow_symlinks=False)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, _APPEARED, target) from None
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, _APPEARED, target) from None
        os.replace(tmp, target)
        return
    os.unlink(tmp)


def write_bytes(path: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> Path:
    """Write `data` to `path` through `replacing`; returns the path."""
    with replacing(path) as f:
        f.write(data)
    return Path(path)


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _fsync_dir(directory: Path) -> None:
    """Persist the rename (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
