"""Images larger than memory: open them without reading them, and create zarr outputs whose
chunks are the blocks `unetgen.predict_tiled` writes (docs/large-images.md).

`open_image` gives an array-like that `predict_tiled` reads one tile window at a time: a
memory-mapped `.npy` (NumPy), a `.zarr` array, or a TIFF through tifffile's zarr store.
`create_output` makes the zarr array that `predict_tiled(..., out=...)` and
`unetgen.distributed.predict_distributed` write into, one chunk per block, so that blocks are
written whole and independently (by any number of processes) and a run can be resumed.
zarr and tifffile are optional: `pip install unetgen[large]`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..reprs import short_path, short_text
from .formats import FORMATS, format_list, import_zarr
from .options import OutputType
from .ownership import check_apart, check_folder, is_local, output_lock
from .plan import TilePlan
from .sinks import output_layout

__all__ = ["MARKER", "create_output", "open_image", "open_output"]


def open_image(source: Any) -> Any:
    """An array-like for `source` without reading its pixels: `.npy` -> a read-only memmap,
    `.zarr` (or a directory) -> a read-only zarr array, `.tif`/`.tiff` -> the first series' full
    resolution through tifffile's zarr store (the formats of `unetgen.predict.formats.FORMATS`
    that can `open`). Anything else that is not a path (a tensor, a NumPy or zarr array) is
    returned as it is."""
    if not isinstance(source, (str, os.PathLike)):
        return source
    path = Path(source)
    suffix = path.suffix.lower()
    image_format = FORMATS.get(suffix)
    if (image_format is None or image_format.open is None) and path.is_dir():
        image_format = FORMATS[".zarr"]  # a zarr array is a directory, whatever its name
    if image_format is None or image_format.open is None:
        raise ValueError(
            f"{path}: unknown image format {suffix or '(no suffix)'}: give a {format_list('open', 'or')} file"
        )
    return image_format.open(path)


MARKER = "unetgen_output"
"""The attribute `create_output` writes into every array it creates: the mark by which unetgen
knows an array as its own, the only kind it ever overwrites or removes."""
_MARK = {"created_by": "unetgen.arrays.create_output", "version": 1}


def create_output(
    store: str | os.PathLike[str] | Any,
    model: nn.Module,
    image: Any,
    *,
    output_type: OutputType = "logits",
    dtype: Any = None,
    block_shape: int | Sequence[int] | None = None,
    plan: TilePlan | None = None,
    overwrite: bool = False,
    **options: Any,
) -> Any:
    """The zarr array that the prediction of `image` (any array-like, or a path for `open_image`)
    by `model` is written into: the prediction's shape, `dtype` (default: the model's dtype for
    logits and probabilities, uint8/uint16 for labels) and one chunk per block (`block_shape`,
    rounded to whole output tiles with valid padding: see `predict_tiled`). `options` are
    `plan_tiles`'s and must be those of the prediction.

    An existing array that `create_output` made (it marks its arrays: attribute `MARKER`) of the
    same shape, dtype and chunks is opened as it is (so that a prediction into it resumes);
    another layout is an error unless `overwrite`, which removes that array (its metadata and
    chunks, nothing else) and creates it again. Anything else at `store` (a folder of other files,
    a zarr array or group unetgen did not make) is never written or removed: ValueError. The
    store is not, does not contain and does not sit inside the image; its folder must exist
    (no folder is created); and while it is created no other run may write it (`output_lock`)."""
    zarr = import_zarr()
    image = open_image(image)
    shape, default, chunks = output_layout(
        model, image, output_type=output_type, block_shape=block_shape, plan=plan, **options
    )
    dtype = np.dtype(str(default).removeprefix("torch.") if dtype is None else dtype)
    layout = (shape, dtype, chunks)
    if not is_local(store):
        old = _existing_remote(zarr, store)
        if old is not None and not overwrite:
            return _reuse(old, store, layout)
        options = dict(shape=shape, chunks=chunks, dtype=dtype, fill_value=0, attributes={MARKER: _MARK})
        return zarr.create_array(store, **options, overwrite=old is not None)
    from .zarr_store import CheckedStore, chunk_limit

    path = Path(os.path.abspath(store))
    check_apart(image, path, what="the output")
    check_folder(path, "the output")
    with output_lock(path):
        old = _existing_local(path)
        if old is not None and not overwrite:
            return _reuse(old, store, layout)
        if old is not None:
            _remove_array(path)
        array = zarr.create_array(
            CheckedStore(path), shape=shape, chunks=chunks, dtype=dtype, fill_value=0, attributes={MARKER: _MARK}
        )
        array.store.chunk_bytes = chunk_limit(array)
        return array


def _not_ours(store: Any, what: str) -> ValueError:
    return ValueError(
        f"{short_path(str(store))} {what}; unetgen writes and removes only the zarr arrays it made "
        "(unetgen.arrays.create_output): remove it yourself, or write the output elsewhere"
    )


def _check_mark(array: Any, store: Any) -> Any:
    if not hasattr(array, "shape"):
        raise _not_ours(store, "is a zarr group")
    mark = array.attrs.get(MARKER)
    if not isinstance(mark, dict) or mark.get("created_by") != _MARK["created_by"]:
        raise _not_ours(store, "is a zarr array that unetgen did not make")
    return array


def _existing_local(path: Path) -> Any:
    """The marked zarr array at `path`, None if there is nothing (or an empty folder); a
    ValueError for anything else."""
    if not os.path.lexists(path):
        return None
    if path.is_symlink() or not path.is_dir():
        raise _not_ours(path, "exists and is not a folder" if not path.is_symlink() else "is a symbolic link")
    if not any(path.iterdir()):
        return None
    if not (path / "zarr.json").exists():
        raise _not_ours(path, "is a folder that holds no zarr array")
    from .zarr_store import open_checked

    try:
        array = open_checked(path, "the output", mode="r+")
    except ValueError as err:
        raise _not_ours(path, f"is not a zarr array unetgen can open ({err})") from None
    return _check_mark(array, path)


def _existing_remote(zarr: Any, store: Any) -> Any:
    try:
        return _check_mark(zarr.open(store=store, mode="r+"), store)
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, OSError, RecursionError) as err:
        if "unetgen writes and removes only" in str(err):
            raise
        if type(err).__name__ in ("NodeNotFoundError", "GroupNotFoundError", "ArrayNotFoundError"):
            return None
        raise _not_ours(store, f"exists and is not a zarr array unetgen made ({short_text(str(err))})") from None


def _reuse(old: Any, store: Any, layout: tuple[tuple[int, ...], np.dtype, tuple[int, ...]]) -> Any:
    shape, dtype, chunks = layout
    if (tuple(old.shape), np.dtype(old.dtype), tuple(old.chunks)) != layout:
        raise ValueError(
            f"{short_path(str(store))} holds an array of shape {tuple(old.shape)}, {old.dtype}, chunks "
            f"{tuple(old.chunks)}; this prediction needs {shape}, {dtype}, chunks {chunks}: remove it, write "
            "elsewhere or pass overwrite=True (CLI: --restart)"
        )
    return old


def _array_files(path: Path) -> list[Path]:
    """The files of the zarr array unetgen made at `path` (``zarr.json``, chunks under ``c/`` with
    numeric names, zarr's ``.partial`` leftovers), deepest first; a ValueError naming the first
    other entry (nothing is removed then)."""
    files: list[Path] = []
    for folder, dirs, names in os.walk(path, topdown=False):
        here = Path(folder)
        inside = here.relative_to(path).parts
        chunk_dir = inside[:1] == ("c",) and all(p.isdigit() for p in inside[1:])
        for name in names:
            ok = (not inside and name == "zarr.json") or (chunk_dir and name.isdigit()) or name.endswith(".partial")
            if not ok or not (here / name).is_file() or (here / name).is_symlink():
                raise _not_ours(path, f"holds {short_path(str(here / name))}, which is not part of a zarr array")
        if inside and not chunk_dir:
            raise _not_ours(path, f"holds the folder {short_path(str(here))}, which is not part of a zarr array")
        files += [here / n for n in names] + [here / d for d in dirs]
    return files


def _remove_array(path: Path) -> None:
    """Remove the zarr array unetgen made at `path`: its files only, checked first; the folder stays."""
    for entry in _array_files(path):
        if entry.is_dir() and not entry.is_symlink():
            entry.rmdir()  # empty by now; an entry added meanwhile stops the removal here
        else:
            entry.unlink()


def open_output(store: str | os.PathLike[str] | Any) -> Any:
    """A zarr output (from `create_output`) opened for writing, as workers open it."""
    if not is_local(store):
        return store if not isinstance(store, (str, os.PathLike)) else import_zarr().open_array(store, mode="r+")
    import_zarr()
    from .zarr_store import open_checked

    return open_checked(store, "out", mode="r+")
