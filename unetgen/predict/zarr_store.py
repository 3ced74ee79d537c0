"""zarr arrays on the local file system, read through checks: `CheckedStore` reads only regular
files inside its folder (a symbolic link may point within the store, never outside it), through
`unetgen.predict.formats.open_regular_file` (so a FIFO as ``zarr.json`` or as a chunk cannot
block), and none larger on disk than it may be: metadata up to `MAX_METADATA_BYTES`, a chunk up
to twice the bytes of its pixels plus 1 MiB (a chunk is read and decoded whole, so a sparse or
endless file must be refused before it is read). Needs zarr (`pip install 'unetgen[large]'`).
"""

from __future__ import annotations

import asyncio
import math
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.storage import LocalStore

from ..reprs import short_path, short_repr, short_text
from .files import open_regular_file
from .options import is_int_tuple

__all__ = ["MAX_METADATA_BYTES", "CheckedStore", "chunk_limit", "open_checked", "open_image_array", "open_node"]

MAX_METADATA_BYTES = 128 << 20
"""Largest zarr metadata file read (``zarr.json``, ``.zarray``, ``.zattrs``, ...): an array's
metadata is a few KiB; the progress record of `Journal.MAX_BLOCKS` blocks takes at most ~86 MiB."""
_METADATA = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})


def chunk_limit(array: Any) -> int:
    """The most bytes one stored chunk (a shard, when sharded) of `array` may take on disk: twice
    its decoded size plus 1 MiB (no codec expands data that much)."""
    shape = getattr(array, "shards", None) or array.chunks
    return 2 * math.prod(shape) * np.dtype(array.dtype).itemsize + (1 << 20)


class CheckedStore(LocalStore):
    """A `zarr.storage.LocalStore` that reads only regular files inside its root, each within a
    size bound (`chunk_bytes` for chunks once the array is known, `MAX_METADATA_BYTES` for the rest)."""

    def __init__(self, root: Path | str, *, read_only: bool = False, chunk_bytes: int | None = None) -> None:
        super().__init__(root, read_only=read_only)
        self.chunk_bytes = chunk_bytes

    def with_read_only(self, read_only: bool = False) -> CheckedStore:
        return type(self)(self.root, read_only=read_only, chunk_bytes=self.chunk_bytes)

    def _read(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None) -> Buffer | None:
        path = self.root / key
        if not os.path.lexists(path):
            return None
        root, real = os.path.realpath(self.root), os.path.realpath(path)
        where = f"zarr store {short_path(str(self.root))}: {short_path(key)}"
        if os.path.commonpath([root, real]) != root:
            raise ValueError(f"{where} points outside the store (to {short_path(real)}); unetgen reads nothing there")
        metadata = os.path.basename(key) in _METADATA
        limit = MAX_METADATA_BYTES if metadata or self.chunk_bytes is None else self.chunk_bytes
        with open_regular_file(real, where) as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                what = "metadata" if metadata else "chunk"
                raise ValueError(
                    f"{where}: a {what} file of {size:,} bytes, more than the {limit:,} bytes it can hold: "
                    "the store is damaged or forged; unetgen does not read it"
                )
            return prototype.buffer.from_bytes(_read_range(f, size, byte_range))

    def _check_write(self, key: str) -> None:
        """A write or removal of `key` stays inside the store: no symbolic link on the way (one
        planted in an output would redirect its chunks onto another file) and nothing there but a
        folder or a regular file (a FIFO would block the write)."""
        where = f"zarr store {short_path(str(self.root))}: {short_path(key)}"
        path = Path(self.root)
        parts = Path(key).parts
        for i, part in enumerate(parts):
            path = path / part
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                return
            except OSError as err:
                raise ValueError(f"{where}: cannot check it ({err.strerror})") from None
            if stat.S_ISLNK(mode):
                raise ValueError(
                    f"{where}: {short_path(str(path))} is a symbolic link; unetgen writes only files of its own "
                    "inside the output: remove the link, or write the output elsewhere"
                )
            last = i == len(parts) - 1
            if not (stat.S_ISDIR(mode) if not last else stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise ValueError(
                    f"{where}: {short_path(str(path))} is not a regular file or folder; unetgen does not write it"
                )

    async def _set(self, key: str, value: Buffer, exclusive: bool = False) -> None:
        await asyncio.to_thread(self._check_write, key)
        await super()._set(key, value, exclusive=exclusive)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._check_write, key)
        await super().delete(key)

    async def delete_dir(self, prefix: str) -> None:
        await asyncio.to_thread(self._check_write, prefix)
        await super().delete_dir(prefix)

    async def get(
        self, key: str, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        if not self._is_open:
            await self._open()
        return await asyncio.to_thread(self._read, key, prototype or default_buffer_prototype(), byte_range)

    def get_sync(
        self, key: str, *, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        self._ensure_open_sync()
        return self._read(key, prototype or default_buffer_prototype(), byte_range)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(key, prototype, r) for key, r in key_ranges)))


def _read_range(f: Any, size: int, byte_range: ByteRequest | None) -> bytes:
    if byte_range is None:
        return f.read(size + 1)
    if isinstance(byte_range, RangeByteRequest):
        f.seek(byte_range.start)
        return f.read(max(0, byte_range.end - byte_range.start))
    if isinstance(byte_range, OffsetByteRequest):
        f.seek(byte_range.offset)
    elif isinstance(byte_range, SuffixByteRequest):
        f.seek(max(0, size - byte_range.suffix))
    else:
        raise TypeError(f"unexpected byte range {byte_range!r}")
    return f.read()


def open_node(path: str | os.PathLike[str], what: str = "image", *, mode: str = "r") -> Any:
    """The zarr array or group at the local folder `path` on a `CheckedStore` (mode "r" or "r+"),
    or a ValueError naming `what`: something that is not zarr, damaged metadata."""
    where = f"{what} {short_path(str(path))}"
    if not Path(path).is_dir():
        raise ValueError(f"{where}: no zarr array there (not a folder)")
    store = CheckedStore(path, read_only=mode == "r")
    try:
        node = zarr.open(store=store, mode=mode)
        _check_chunks(node)
    except Exception as err:  # zarr raises many types on forged metadata (OverflowError, ZeroDivisionError, ...)
        raise _damaged(err, where) from None
    return node


def _check_chunks(node: Any) -> None:
    if hasattr(node, "shape") and not (is_int_tuple(tuple(node.chunks)) and min(node.chunks, default=1) > 0):
        raise ValueError(f"chunks {short_repr(node.chunks)} are not positive sizes")


def _damaged(err: BaseException, where: str) -> ValueError:
    if str(err).startswith((where, "zarr store")):
        return ValueError(str(err))
    why = short_text(str(err) or type(err).__name__)
    return ValueError(f"{where}: cannot open a zarr array ({type(err).__name__}: {why}); its metadata is damaged")


def member(group: Any, key: str, where: str) -> Any:
    """The array `key` of `group` (opened through the group's checked store), or a ValueError."""
    try:
        node = group[key]
        _check_chunks(node)
    except KeyError:
        raise ValueError(f"{where}: the group has no array {short_path(key)}") from None
    except Exception as err:
        raise _damaged(err, where) from None
    if not hasattr(node, "shape"):
        raise ValueError(f"{where}: {short_path(key)} is a group, not an array")
    node.store.chunk_bytes = chunk_limit(node)
    return node


def open_checked(path: str | os.PathLike[str], what: str = "image", *, mode: str = "r") -> Any:
    """The zarr array at the local folder `path` on a `CheckedStore` (mode "r" or "r+"), or a
    ValueError naming `what`: a group, something that is not zarr, damaged metadata."""
    array = open_node(path, what, mode=mode)
    if not hasattr(array, "shape"):
        where = f"{what} {short_path(str(path))}"
        raise ValueError(f"{where} is a zarr group: give the path of one array in it (e.g. {short_path(f'{path}/0')})")
    array.store.chunk_bytes = chunk_limit(array)
    return array


def open_image_array(path: str | os.PathLike[str], what: str = "image") -> tuple[Any, Any]:
    """The zarr array at `path` read-only, or the full-resolution level of the OME-Zarr image in
    the group at `path`, with its axes and pixel size (`unetgen.predict.ngff.find_image`; None for
    a plain array); a ValueError for a group that holds no image."""
    from .ngff import find_image

    node = open_node(path, what)
    if hasattr(node, "shape"):
        node.store.chunk_bytes = chunk_limit(node)
        return node, None
    where = f"{what} {short_path(str(path))}"
    try:
        found = find_image(node, where)
    except ValueError:
        raise
    except Exception as err:  # a damaged member's metadata
        raise _damaged(err, where) from None
    if found is None:
        raise ValueError(
            f"{where} is a zarr group without an OME-Zarr image (no multiscales): give the path of one array in it "
            f"(e.g. {short_path(f'{path}/0')})"
        )
    level, axes = found
    array = member(node, level, where)
    if axes is not None and len(axes.letters) != array.ndim:
        raise ValueError(
            f"{where}: its OME-Zarr metadata names {len(axes.letters)} axes but level {level} has {array.ndim} dims: "
            "the metadata is damaged"
        )
    return array, axes
