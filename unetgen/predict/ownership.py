"""What a prediction may write and delete: never its input, never what unetgen did not create,
never while another run writes the same output.

- `storage_path`: the file or folder an array-like lives in (a path, a memory-mapped `.npy`, a
  zarr array on a local store, a TIFF opened by `unetgen.arrays.open_image`), None for memory;
- `check_apart`: an output (or a progress record) is not, does not contain and does not sit
  inside an input, paths resolved (symlinks, `..`, hard links), nor shares its memory;
- `output_lock`: one run at a time writes an output: an advisory lock (`fcntl.flock`) on a lock
  file beside it (``out.zarr.lock``), released when the run ends or its process dies; a lock
  left by a process that is gone is taken over, and said so (logger ``unetgen.predict``);
- `check_folder`: the folder an output goes in exists (no folder is ever created).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import socket
import stat
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..reprs import short_path
from .preprocess import raw_image

__all__ = [
    "LOCK_SUFFIX",
    "check_apart",
    "check_folder",
    "exclusive_temp",
    "is_local",
    "output_lock",
    "remember_path",
    "storage_path",
]

LOCK_SUFFIX = ".lock"
"""The lock file of an output is its path plus this suffix (``out.zarr.lock``), beside it."""
_LOCK_BYTES = 4096  # a lock file holds a small JSON object: who holds the lock
_PATHS: weakref.WeakKeyDictionary[Any, Path] = weakref.WeakKeyDictionary()  # stores that do not say their file
_HELD: dict[str, list[int]] = {}  # lock path -> [thread ident, depth, descriptor], for this process
_GUARD = threading.Lock()
log = logging.getLogger("unetgen.predict")


def is_local(target: Any) -> bool:
    """`target` is a path of the local file system (a str or os.PathLike, not a URL)."""
    return isinstance(target, (str, os.PathLike)) and "://" not in os.fspath(target)


def remember_path(store: Any, path: str | os.PathLike[str]) -> None:
    """Record that `store` (e.g. tifffile's zarr store of a TIFF) reads the file at `path`."""
    _PATHS[store] = Path(os.path.abspath(path))


def storage_path(target: Any) -> Path | None:
    """The local file or folder `target` lives in: a path itself, a memory-mapped array's file, a
    zarr array's folder on a local store, a TIFF opened by `open_image`; None otherwise (memory,
    object stores)."""
    if is_local(target):
        return Path(os.path.abspath(target))
    if isinstance(target, (str, bytes, os.PathLike)):
        return None
    target = _stored(target)
    filename = getattr(target, "filename", None)
    if isinstance(target, np.memmap) and isinstance(filename, (str, os.PathLike)):
        return Path(os.path.abspath(filename))
    store = getattr(target, "store", None)
    root = getattr(store, "root", None)
    if isinstance(root, Path):
        inner = str(getattr(target, "path", "") or "")
        mark = getattr(target, "attrs", {}).get("unetgen_output") if hasattr(target, "attrs") else None
        if isinstance(mark, dict) and mark.get("layout") == "ome-zarr":  # the array of an output group:
            inner = os.path.dirname(inner)  # the group is the output (unetgen.arrays.create_output)
        return Path(os.path.abspath(root / inner))
    try:
        return _PATHS.get(store)
    except TypeError:  # not weakly referenceable: not one of ours
        return None


def _inside(inner: str, outer: str) -> bool:
    return inner != outer and os.path.commonpath([inner, outer]) == outer


def _same(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except (OSError, ValueError):
        return False


def _stored(image: Any) -> Any:
    """The stored array behind a laid-out view (`unetgen.predict.axes.LaidOut`), else `image`."""
    from .axes import LaidOut

    while isinstance(image, LaidOut):
        image = image.array
    return image


def _shares_memory(source: Any, target: Any) -> bool:
    source, target = _stored(source), _stored(target)
    if isinstance(source, torch.Tensor) and isinstance(target, torch.Tensor):
        a, b = source.untyped_storage(), target.untyped_storage()
        return a.device == b.device and a.nbytes() > 0 and a.data_ptr() == b.data_ptr()
    if isinstance(source, np.ndarray) and isinstance(target, np.ndarray):
        return bool(np.may_share_memory(source, target))
    return False


def check_apart(
    source: Any,
    target: Any,
    *,
    what: str = "the output",
    source_what: str = "the input",
    fix: str = "write the output elsewhere",
) -> None:
    """A ValueError when `target` (where a prediction writes) is `source` (what it reads),
    contains it or sits inside it: paths compared resolved (symlinks, ``..``, hard links), arrays
    in memory by their storage. Unknown locations (object stores) are not compared. A prepared
    image (`prepare_input`) is compared by the raw image it reads."""
    source = raw_image(source)
    if _shares_memory(source, target):
        raise ValueError(f"{what} shares its memory with {source_what}: give a separate array to write into")
    s, t = storage_path(source), storage_path(target)
    if s is None or t is None:
        return
    rs, rt = os.path.realpath(s), os.path.realpath(t)
    if _same(s, t):
        relation = "is"
    elif _inside(rt, rs):
        relation = "sits inside"
    elif _inside(rs, rt):
        relation = "contains"
    else:
        return
    raise ValueError(
        f"{what} {short_path(str(t))} {relation} {source_what} {short_path(str(s))}: unetgen never writes into, "
        f"over or around what it reads; {fix}"
    )


def check_folder(path: str | os.PathLike[str], what: str = "the output") -> None:
    """The folder `path` goes in exists and is a folder: a ValueError naming it otherwise (unetgen
    creates no folders, whichever way it writes)."""
    parent = Path(os.path.abspath(path)).parent
    if not parent.is_dir():
        missing = parent
        while not missing.parent.is_dir() and missing.parent != missing:
            missing = missing.parent
        raise ValueError(
            f"{what} {short_path(str(path))}: the folder {short_path(str(missing))} does not exist; create it first"
        )


# ---------------------------------------------------------------------------------------------
# one writer at a time


def _holder() -> dict[str, Any]:
    return {"unetgen_lock": 1, "pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}


def _read_holder(fd: int, lock: Path) -> dict[str, Any] | None:
    """The JSON object in the lock file (None if empty), or a ValueError if the file is not one
    unetgen wrote (it is then left alone)."""
    data = os.pread(fd, _LOCK_BYTES + 1, 0)
    if not data:
        return None
    try:
        holder = json.loads(data) if len(data) <= _LOCK_BYTES else None
    except (ValueError, RecursionError):
        holder = None
    if not isinstance(holder, dict) or holder.get("unetgen_lock") != 1:
        raise ValueError(
            f"{short_path(str(lock))} exists and is not a unetgen lock file; unetgen leaves it alone: "
            "remove it yourself, or write the output elsewhere"
        )
    return holder


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "another unetgen run"
    since = holder.get("since")
    when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, float) else ""
    return f"unetgen process {short_path(str(holder.get('pid')))} on {short_path(str(holder.get('host')))}{when}"


def _open_lock(lock: Path) -> int:
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(lock, flags | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as err:
        why = "it is a symbolic link, which unetgen never follows" if os.path.islink(lock) else err.strerror
        raise ValueError(f"cannot take the lock file {short_path(str(lock))}: {why}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"the lock file {short_path(str(lock))} is not a regular file; remove it")
    return fd


def _take(lock: Path, target: Path) -> int:
    """A descriptor of `lock` holding the lock, with this process written into it."""
    import fcntl

    for _ in range(8):  # another run may remove the file between our open and our lock: try again
        fd = _open_lock(lock)
        try:
            holder = _read_holder(fd, lock)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ValueError(
                    f"{short_path(str(target))} is being written by {_describe(holder)} (lock file "
                    f"{short_path(str(lock))}): wait for that run to end, or write elsewhere"
                ) from None
            except OSError as err:  # a file system without locks (ENOLCK)
                raise ValueError(
                    f"cannot lock {short_path(str(lock))} ({err.strerror or err}): this file system does not "
                    "support locks; write the output on a local disk"
                ) from None
            current = os.stat(lock, follow_symlinks=False)
            if (current.st_dev, current.st_ino) != (os.fstat(fd).st_dev, os.fstat(fd).st_ino):
                os.close(fd)
                continue
        except FileNotFoundError:
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            raise
        if holder is not None and (holder.get("pid"), holder.get("host")) != (os.getpid(), socket.gethostname()):
            log.warning("took over the lock of %s left by %s, which is no longer running", target, _describe(holder))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        return fd
    raise ValueError(f"cannot take the lock file {short_path(str(lock))}: other runs keep replacing it")


def _release(lock: Path, fd: int) -> None:
    try:
        current = os.stat(lock, follow_symlinks=False)
        if (current.st_dev, current.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino):
            os.unlink(lock)  # while still holding it: a run waiting on the old file tries again
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def output_lock(target: str | os.PathLike[str] | None) -> Iterator[None]:
    """Hold the lock of the output at `target` (None: nothing to lock) while the block runs.

    The lock is `fcntl.flock` on ``TARGET.lock`` beside the output, which holds the process id and
    host of its holder (for the message another run gets). The kernel releases it when the holder's
    process ends, however it ends; a later run then takes the file over and logs a warning. The
    same thread may take it again (re-entrant); another thread or process gets a ValueError naming
    the holder. A lock file unetgen did not write is never touched."""
    if target is None:
        yield
        return
    path = Path(os.path.abspath(target))
    real = Path(os.path.realpath(path))  # one lock however the output is spelled (symlinked folders)
    lock = real.with_name(real.name + LOCK_SUFFIX)
    key, me = str(lock), threading.get_ident()
    with _GUARD:
        held = _HELD.get(key)
        if held is not None and held[0] != me:
            raise ValueError(f"{short_path(str(path))} is being written by another thread of this process")
        if held is not None:
            held[1] += 1
    if held is None:
        fd = _take(lock, path)
        with _GUARD:
            _HELD[key] = held = [me, 1, fd]
    try:
        yield
    finally:
        with _GUARD:
            held[1] -= 1
            last = held[1] == 0
            if last:
                del _HELD[key]
        if last:
            _release(lock, held[2])


def exclusive_temp(target: str | os.PathLike[str]) -> tuple[int, Path]:
    """A new, empty file beside `target` to write it through, and its path: created exclusively
    (``O_CREAT | O_EXCL | O_NOFOLLOW``, a random name), so that nothing planted there (a symbolic
    link, another file) is ever followed or overwritten; rename it over `target` when it is whole,
    remove it otherwise. Its permissions follow the umask, as the target's would."""
    path = Path(os.path.abspath(target))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(16):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "cannot create a temporary file beside it", str(path))
