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

from .formats import FORMATS, format_list, import_zarr
from .options import OutputType
from .plan import TilePlan
from .sinks import output_layout

__all__ = ["create_output", "open_image", "open_output"]


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
    `plan_tiles`'s and must be those of the prediction. An existing array of the same shape,
    dtype and chunks is opened as it is (so that a prediction into it resumes); another array
    there is an error unless `overwrite`."""
    zarr = import_zarr()
    image = open_image(image)
    shape, default, chunks = output_layout(
        model, image, output_type=output_type, block_shape=block_shape, plan=plan, **options
    )
    dtype = np.dtype(str(default).removeprefix("torch.") if dtype is None else dtype)
    if not overwrite:
        try:
            old = zarr.open_array(store, mode="r+")
        except FileNotFoundError:
            old = None
        except ValueError as err:  # a group, or not zarr
            raise ValueError(f"{store}: exists but is not a zarr array ({err}): remove it or write elsewhere") from None
        if old is not None:
            if (tuple(old.shape), np.dtype(old.dtype), tuple(old.chunks)) != (shape, dtype, chunks):
                raise ValueError(
                    f"{store} holds an array of shape {tuple(old.shape)}, {old.dtype}, chunks {tuple(old.chunks)}; "
                    f"this prediction needs {shape}, {dtype}, chunks {chunks}: remove it, write elsewhere "
                    "or pass overwrite=True (CLI: --restart)"
                )
            return old
    return zarr.create_array(store, shape=shape, chunks=chunks, dtype=dtype, fill_value=0, overwrite=overwrite)


def open_output(store: str | os.PathLike[str] | Any) -> Any:
    """A zarr output (from `create_output`) opened for writing, as workers open it."""
    if not isinstance(store, (str, os.PathLike)):
        return store
    return import_zarr().open_array(store, mode="r+")
