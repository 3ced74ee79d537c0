"""Images larger than memory: open them without reading them, and create zarr outputs whose
chunks are the blocks `unetgen.predict_tiled` writes (docs/large-images.md).

`open_image` gives an array-like that `predict_tiled` reads one tile window at a time: a
memory-mapped `.npy` (NumPy), a `.zarr` array or the full-resolution level of an OME-Zarr image,
or a TIFF through tifffile's zarr store; where the file says its axes (or `axes=` does), a lazy
view in unetgen's layout (`unetgen.predict.axes`). `create_output` makes the OME-Zarr image (or
label) group whose array ``0`` `predict_tiled(..., out=...)` and
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
from .axes import SPATIAL, Axes, lay_out
from .formats import FORMATS, format_list, import_zarr
from .ngff import dimension_names, image_attributes
from .options import OutputType, config_of
from .ownership import check_apart, check_folder, is_local, output_lock
from .plan import TilePlan
from .sinks import output_layout

__all__ = ["MARKER", "create_output", "open_image", "open_output"]


def open_image(source: Any, axes: Any = None, *, layout: str | None = None, what: str = "image") -> Any:
    """An array-like for `source` without reading its pixels: `.npy` -> a read-only memmap,
    `.zarr` (or a directory) -> a read-only zarr array, or the full-resolution level of the
    OME-Zarr image in that group, `.tif`/`.tiff` -> the first series' full resolution through
    tifffile's zarr store (the formats of `unetgen.predict.formats.FORMATS` that can `open`).

    Axes are never guessed: where the file says them (a TIFF's axes, e.g. YXS for RGB; OME-Zarr's
    axes) or `axes` gives them (bioimage.io letters, e.g. ``"yxc"``, ``"zyx"``, ``"byx"``: they
    override the file's), the image is a lazy `unetgen.predict.axes.LaidOut` view in unetgen's
    layout ``(C, *spatial)`` (``(N, C, *spatial)`` with a batch or time axis), or in `layout` (a
    preprocessing spec's axes), with the axes and pixel size it was read with; otherwise (a
    `.npy`, a plain zarr array, a TIFF whose axes tifffile does not know: Q) the array as stored.
    Anything that is not a path (a tensor, a NumPy or zarr array) is returned as it is, laid out
    by `axes` when given. Messages about the axes name the image as `what` (e.g. ``--input``)."""
    if not isinstance(source, (str, os.PathLike)):
        return source if axes is None else lay_out(source, None, given=axes, where="the image", layout=layout)
    path = Path(source)
    suffix = path.suffix.lower()
    image_format = FORMATS.get(suffix)
    if (image_format is None or image_format.open is None) and path.is_dir():
        image_format = FORMATS[".zarr"]  # a zarr array is a directory, whatever its name
    if image_format is None or image_format.open is None:
        raise ValueError(
            f"{path}: unknown image format {suffix or '(no suffix)'}: give a {format_list('open', 'or')} file"
        )
    array, found = image_format.open(path)
    return lay_out(array, found, given=axes, where=f"{what} {short_path(str(path))}", layout=layout)


MARKER = "unetgen_output"
"""The attribute `create_output` writes into every group and array it creates: the mark by which
unetgen knows them as its own, the only kind it ever overwrites or removes."""
_MARK = {"created_by": "unetgen.arrays.create_output", "version": 1}  # an array at the store's root
_GROUP_MARK = {"created_by": "unetgen.arrays.create_output", "version": 2, "layout": "ome-zarr"}
_LEVEL = "0"  # the array of an OME-Zarr output group


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
    ome_zarr: bool = True,
    **options: Any,
) -> Any:
    """The zarr array that the prediction of `image` (any array-like, or a path for `open_image`)
    by `model` is written into: the prediction's shape, `dtype` (default: the model's dtype for
    logits and probabilities, uint8/uint16 for labels) and one chunk per block (`block_shape`,
    rounded to whole output tiles with valid padding: see `predict_tiled`). `options` are
    `plan_tiles`'s and must be those of the prediction.

    With `ome_zarr` (the default, for 2D and 3D networks) `store` is an OME-Zarr (NGFF 0.5) group:
    an image group for logits and probabilities, a label group (``image-label``) for labels,
    whose one level, the array ``0`` that is returned, names its dimensions; the axes are
    unetgen's layout (``b`` or ``t``, ``c``, then z, y, x) and the scale the input's pixel size
    (from its OME-Zarr or OME-TIFF metadata: `open_image`), else the pixel size of the model's
    preprocessing spec, else 1. Without it (and for 1D networks, which NGFF cannot describe)
    `store` is the array itself, as before.

    An existing output that `create_output` made (it marks its groups and arrays: attribute
    `MARKER`) of the same shape, dtype and chunks is opened as it is (so that a prediction into
    it resumes; a group's metadata is written again; a bare array made before unetgen wrote
    OME-Zarr is resumed as the bare array it is); another layout is an error unless
    `overwrite`, which removes that output (its metadata and chunks, nothing else) and creates
    it again. Anything else at `store` (a folder of other files, a zarr array or group unetgen did
    not make) is never written or removed: ValueError. The store is not, does not contain and
    does not sit inside the image; its folder must exist (no folder is created); and while it is
    created no other run may write it (`output_lock`)."""
    zarr = import_zarr()
    image = open_image(image)
    shape, default, chunks = output_layout(
        model, image, output_type=output_type, block_shape=block_shape, plan=plan, **options
    )
    dtype = np.dtype(str(default).removeprefix("torch.") if dtype is None else dtype)
    layout = (shape, dtype, chunks)
    group = _group_metadata(model, image, shape, output_type, store) if ome_zarr else None
    if not is_local(store):
        old = _existing_remote(zarr, store)
        if old is not None and not overwrite:
            return _reuse(old, store, layout, group)
        return _create(zarr, store, layout, group, overwrite=old is not None)
    from .zarr_store import CheckedStore, chunk_limit

    path = Path(os.path.abspath(store))
    check_apart(image, path, what="the output")
    check_folder(path, "the output")
    with output_lock(path):
        old = _existing_local(path)
        if old is not None and not overwrite and old is not _EMPTY_GROUP:
            return _reuse(old, store, layout, group)
        if old is not None:
            _remove_output(path)
        array = _create(zarr, CheckedStore(path), layout, group)
        array.store.chunk_bytes = chunk_limit(array)
        return array


_Group = tuple[dict[str, Any], list[str]]  # an OME-Zarr group's attributes, its array's dimension names


def _group_metadata(
    model: nn.Module, image: Any, shape: tuple[int, ...], output_type: str, store: Any
) -> _Group | None:
    """The attributes of the OME-Zarr group of a prediction of `shape`, None where NGFF cannot
    describe it (1D)."""
    config = config_of(model)
    spatial = SPATIAL[-config.spatial_dims :]
    if config.spatial_dims < 2:
        return None
    channels = "" if output_type in ("labels", "instances") else "c"
    letters = ("b" if len(shape) == len(channels) + len(spatial) + 1 else "") + channels + spatial
    axes = getattr(image, "axes", None)
    axes = axes if isinstance(axes, Axes) else None
    spec = getattr(model, "preprocessing", None)
    pixel = getattr(spec, "pixel_size", None)
    name = Path(os.fspath(store)).stem if isinstance(store, (str, os.PathLike)) else None
    attrs = image_attributes(
        letters,
        axes=axes,
        pixel_size=pixel,
        unit=getattr(spec, "unit", None),
        labels=output_type in ("labels", "instances"),
        name=name,
    )
    return attrs | {MARKER: _GROUP_MARK}, dimension_names(letters, axes)


def _create(zarr: Any, store: Any, layout: tuple[Any, ...], group: _Group | None, overwrite: bool = False) -> Any:
    shape, dtype, chunks = layout
    options = dict(shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
    if group is None:
        return zarr.create_array(store, **options, attributes={MARKER: _MARK}, overwrite=overwrite)
    attributes, names = group
    root = zarr.create_group(store, attributes={MARKER: _GROUP_MARK}, overwrite=overwrite)  # marked first
    array = root.create_array(_LEVEL, **options, dimension_names=names, attributes={MARKER: _GROUP_MARK})
    root.attrs.update(attributes)  # the OME metadata once its array exists
    return array


def _not_ours(store: Any, what: str) -> ValueError:
    return ValueError(
        f"{short_path(str(store))} {what}; unetgen writes and removes only the zarr arrays it made "
        "(unetgen.arrays.create_output): remove it yourself, or write the output elsewhere"
    )


def _marked(node: Any) -> bool:
    mark = node.attrs.get(MARKER)
    return isinstance(mark, dict) and mark.get("created_by") == _MARK["created_by"]


_EMPTY_GROUP = object()  # a group unetgen made whose array is missing (a run stopped while creating it)


def _check_mark(node: Any, store: Any) -> Any:
    """The array of the output unetgen made at `store` (an array, or an OME-Zarr group's array
    ``0``), `_EMPTY_GROUP`, or a ValueError for anything unetgen did not make."""
    if not _marked(node):
        kind = "group" if not hasattr(node, "shape") else "array"
        raise _not_ours(store, f"is a zarr {kind} that unetgen did not make")
    if hasattr(node, "shape"):
        return node
    members = dict(node.members())
    if not members:
        return _EMPTY_GROUP
    array = members.get(_LEVEL)
    if set(members) != {_LEVEL} or not hasattr(array, "shape") or not _marked(array):
        raise _not_ours(store, "is a zarr group unetgen made that holds other arrays or groups")
    return array


def _existing_local(path: Path) -> Any:
    """The marked zarr array at `path` (or in the marked group there), None if there is nothing
    (or an empty folder); a ValueError for anything else."""
    if not os.path.lexists(path):
        return None
    if path.is_symlink() or not path.is_dir():
        raise _not_ours(path, "exists and is not a folder" if not path.is_symlink() else "is a symbolic link")
    if not any(path.iterdir()):
        return None
    if not (path / "zarr.json").exists():
        raise _not_ours(path, "is a folder that holds no zarr array")
    from .zarr_store import chunk_limit, open_node

    try:
        node = open_node(path, "the output", mode="r+")
    except ValueError as err:
        raise _not_ours(path, f"is not a zarr array unetgen can open ({err})") from None
    array = _check_mark(node, path)
    if hasattr(array, "shape"):
        array.store.chunk_bytes = chunk_limit(array)
    return array


def _existing_remote(zarr: Any, store: Any) -> Any:
    try:
        old = _check_mark(zarr.open(store=store, mode="r+"), store)
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, OSError, RecursionError) as err:
        if "unetgen writes and removes only" in str(err):
            raise
        if type(err).__name__ in ("NodeNotFoundError", "GroupNotFoundError", "ArrayNotFoundError"):
            return None
        raise _not_ours(store, f"exists and is not a zarr array unetgen made ({short_text(str(err))})") from None
    return old


def _reuse(
    old: Any, store: Any, layout: tuple[tuple[int, ...], np.dtype, tuple[int, ...]], group: _Group | None
) -> Any:
    """The output `old` unetgen made, to resume into: the same layout (and kind: an OME-Zarr group
    or a bare array) as this prediction's, or a ValueError."""
    shape, dtype, chunks = layout
    if old is _EMPTY_GROUP:
        raise ValueError(f"{short_path(str(store))} holds an empty output group: pass overwrite=True (CLI: --restart)")
    in_group = str(getattr(old, "path", "") or "") == _LEVEL  # else a bare array (unetgen before OME-Zarr)
    if (tuple(old.shape), np.dtype(old.dtype), tuple(old.chunks)) != layout:
        raise ValueError(
            f"{short_path(str(store))} holds an array of shape {tuple(old.shape)}, {old.dtype}, chunks "
            f"{tuple(old.chunks)}; this prediction needs {shape}, {dtype}, chunks {chunks}: remove it, write "
            "elsewhere or pass overwrite=True (CLI: --restart)"
        )
    if group is not None and in_group:  # the metadata of this run (the input's pixel size may be known now)
        _parent(old).attrs.update(group[0])
    return old


def _parent(array: Any) -> Any:
    import zarr

    return zarr.open_group(store=array.store, mode="r+")


def _output_files(path: Path) -> list[Path]:
    """The files of the output unetgen made at `path` (a bare array: ``zarr.json`` and chunks under
    ``c/``; an OME-Zarr group: its ``zarr.json`` and the array ``0``'s), zarr's ``.partial``
    leftovers, deepest first; a ValueError naming the first other entry (nothing is removed then)."""
    files: list[Path] = []
    group = (path / _LEVEL / "zarr.json").is_file()
    for folder, dirs, names in os.walk(path, topdown=False):
        here = Path(folder)
        inside = here.relative_to(path).parts
        array = inside[1:] if group and inside[:1] == (_LEVEL,) else None if group else inside
        chunk_dir = array is not None and array[:1] == ("c",) and all(p.isdigit() for p in array[1:])
        for name in names:
            metadata = name == "zarr.json" and (not inside or array == ())
            ok = metadata or (chunk_dir and name.isdigit()) or name.endswith(".partial")
            if not ok or not (here / name).is_file() or (here / name).is_symlink():
                raise _not_ours(path, f"holds {short_path(str(here / name))}, which is not part of a zarr array")
        if inside and not chunk_dir and array != ():
            raise _not_ours(path, f"holds the folder {short_path(str(here))}, which is not part of a zarr array")
        files += [here / n for n in names] + [here / d for d in dirs]
    return files


def _remove_output(path: Path) -> None:
    """Remove the output unetgen made at `path`: its files only, checked first; the folder stays."""
    for entry in _output_files(path):
        if entry.is_dir() and not entry.is_symlink():
            entry.rmdir()  # empty by now; an entry added meanwhile stops the removal here
        else:
            entry.unlink()


def open_output(store: str | os.PathLike[str] | Any) -> Any:
    """A zarr output (from `create_output`: its array, in an OME-Zarr group or bare) opened for
    writing, as workers open it."""
    if not is_local(store):
        if not isinstance(store, (str, os.PathLike)):
            return store
        node = import_zarr().open(store, mode="r+")
        return node if hasattr(node, "shape") else node[_LEVEL]
    import_zarr()
    from .zarr_store import member, open_node

    node = open_node(store, "out", mode="r+")
    if hasattr(node, "shape"):
        from .zarr_store import chunk_limit

        node.store.chunk_bytes = chunk_limit(node)
        return node
    return member(node, _LEVEL, f"out {short_path(str(store))}")
