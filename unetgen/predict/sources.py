"""Where tiles are read from: a tensor (`TensorSource`: views, checked whole before the run by
`check_image`) or any array-like that supports slicing (`ArraySource`: NumPy, a memory-mapped
`.npy`, zarr, a TIFF through tifffile's zarr store; one window per tile, checked as it is read).

Tensors and array-likes are laid out alike: ``(C, *spatial)``, ``(N, C, *spatial)``, or
``(*spatial)`` for a network with one input channel. An image opened with its axes
(`unetgen.arrays.open_image`: a `unetgen.predict.axes.LaidOut` view) is checked against the
network by those axes, and a mismatch names them and the fix (`check_fit`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..analysis import shapes
from ..config.unet_config import UNetConfig
from ..reprs import short_text
from .axes import LaidOut, check_fit
from .geometry import gather
from .options import is_int_tuple
from .preprocess import PREPARED

__all__ = ["ArraySource", "TensorSource", "check_image", "open_source", "spatial_shape"]


def _dims_error(config: UNetConfig, shape: tuple[int, ...]) -> shapes.InputShapeError:
    dims = config.spatial_dims
    return shapes.InputShapeError(
        f"image of shape {shape} has {len(shape)} dims but spatial_dims={dims} needs (C, *spatial) with "
        f"{dims + 1} dims or (N, C, *spatial) with {dims + 2}"
        + (f" or (*spatial) with {dims}" if config.in_channels == 1 else "")
        + "; an image stored otherwise (channels last, a stack of 2D images) says so with axes= "
        "(CLI: --axes, e.g. yxc, zyx, byx)"
    )


def _channels_error(config: UNetConfig, shape: tuple[int, ...], channels: int) -> ValueError:
    axis = 1 if len(shape) == config.spatial_dims + 2 else 0
    return ValueError(
        f"image of shape {shape} has {channels} channels but in_channels={config.in_channels} (channels are axis "
        f"{axis}); if its channels are elsewhere (e.g. last), say so with axes= "
        "(CLI: --axes, e.g. yxc)"
    )


def check_image(config: UNetConfig, image: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(N, C, *spatial) view of a (C, *spatial) or (N, C, *spatial) image, or of a (*spatial) one
    for a network with one input channel; a clear error if it has the wrong number of dims or
    channels, is empty or complex, or holds values that are NaN or infinite once cast to `dtype`
    (the model's dtype; default: the image's own, floats only), so a float64 value beyond
    float32's range is caught. Reads the image in bounded chunks."""
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"image must be a torch.Tensor, got {type(image).__name__}")
    dims = config.spatial_dims
    if image.dim() == dims and config.in_channels == 1:
        x = image[None, None]  # (*spatial): one channel, as for array-likes
    elif image.dim() not in (dims + 1, dims + 2):
        raise _dims_error(config, tuple(image.shape))
    else:
        x = image if image.dim() == dims + 2 else image.unsqueeze(0)
    if x.shape[1] != config.in_channels:
        raise _channels_error(config, tuple(image.shape), x.shape[1])
    if x.numel() == 0:
        raise ValueError(f"image of shape {tuple(image.shape)} is empty")
    if x.is_complex():
        raise ValueError(
            f"image of shape {tuple(image.shape)} is complex ({x.dtype}); pass its real part, magnitude "
            "or phase (image.real, image.abs(), image.angle())"
        )
    if dtype is not None or x.is_floating_point():
        chunk = max(1, (1 << 24) // max(1, x[:, :, 0].numel()))  # bounded temporary memory
        for part in torch.split(x, chunk, dim=2):
            if not torch.isfinite(part.to(dtype or x.dtype)).all():
                cast = f" once cast to the model's {dtype}" if dtype is not None and dtype != x.dtype else ""
                raise ValueError(f"image of shape {tuple(image.shape)} contains NaN or infinite values{cast}")
    return x


class TensorSource:
    """Tiles of an (N, C, *spatial) tensor: views, an index only along axes with mirrored context."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self.device = x.device

    def read(self, n: int, reads: Sequence[tuple[int, int, torch.Tensor | None]]) -> torch.Tensor:
        return gather(self.x[n], reads)


class ArraySource:
    """Tiles of an array-like that supports slicing: each tile reads one window (the part of the
    tile inside the image) and builds the mirrored context from it, checking it for NaN/inf
    after the cast to the model's dtype."""

    device = torch.device("cpu")

    def __init__(self, array: Any, batched: bool, channels: bool, dtype: torch.dtype) -> None:
        self.array, self.batched, self.channels, self.dtype = array, batched, channels, dtype

    def read_bytes(self, tile_input: Sequence[int]) -> int:
        """The most bytes reading one tile window decodes: a chunked array (zarr, a TIFF's tiles or
        strips) reads every chunk the window touches whole (all channels, one image); 0 for arrays
        read in place (NumPy, memory maps); a prepared image (`prepare_input`) says its own."""
        if isinstance(self.array, PREPARED):  # the raw read, the float window and its normalisation
            return self.array.read_bytes(tile_input)
        chunks, shape = getattr(self.array, "chunks", None), tuple(self.array.shape)
        if not is_int_tuple(tuple(chunks) if isinstance(chunks, Sequence) else None) or len(chunks) != len(shape):
            return 0
        lead = len(shape) - len(tile_input)
        total = np.dtype(self.array.dtype).itemsize
        for axis, (n, c) in enumerate(zip(shape, chunks, strict=True)):
            if axis < lead:  # one image, every channel
                touched = 1 if self.batched and axis == 0 else -(-n // c)
            else:  # a window of (at most) the tile's input size, anywhere
                span = min(tile_input[axis - lead], n)
                touched = min(-(-n // c), -(-(span - 1) // c) + 1)
            total *= touched * c
        return total

    def read(self, n: int, reads: Sequence[tuple[int, int, torch.Tensor | None]]) -> torch.Tensor:
        window = tuple(slice(start, start + length) for start, length, _ in reads)
        lead = ((n,) if self.batched else ()) + ((slice(None),) if self.channels else ())
        try:
            w = np.ascontiguousarray(self.array[(*lead, *window)])
        except ValueError:
            raise  # already says what (a chunk refused by unetgen's checks)
        except Exception as err:  # a codec's or library's own type (RuntimeError, zlib.error, ...) on a damaged file
            where = ", ".join(f"{s.start}:{s.stop}" for s in window)
            why = f"{type(err).__name__}: {short_text(str(err) or '')}"
            raise ValueError(f"image window [{where}] cannot be read ({why}): the image file is damaged") from None
        x = torch.from_numpy(w if w.dtype.isnative else w.astype(w.dtype.newbyteorder("=")))
        x = (x if self.channels else x.unsqueeze(0)).to(self.dtype)
        if x.is_floating_point() and not torch.isfinite(x).all():
            where = ", ".join(f"{s.start}:{s.stop}" for s in window)
            raise ValueError(f"image window [{where}] contains NaN or infinite values (after the cast to {self.dtype})")
        for axis, (_, _, index) in enumerate(reads, start=1):
            if index is not None:
                x = x.index_select(axis, index)
        return x


def _array_layout(config: UNetConfig, image: Any) -> tuple[bool, bool, int, tuple[int, ...]]:
    """(batched, has a channel axis, images, spatial shape) of an array-like image, or a clear error."""
    dims = config.spatial_dims
    shape = getattr(image, "shape", None)
    if not is_int_tuple(tuple(shape) if shape is not None else None) or not hasattr(image, "__getitem__"):
        raise TypeError(f"image must be a tensor or an array-like with shape, dtype and slicing, got {type(image)}")
    shape = tuple(shape)
    kind = np.dtype(image.dtype).kind
    if kind not in "biuf":
        raise ValueError(f"image of dtype {image.dtype} cannot be predicted: give real numbers (bool, int or float)")
    if isinstance(image, LaidOut) and image.target.lstrip("b").startswith("c"):  # unetgen's layout, by its axes
        check_fit(config, image)
    if len(shape) == dims + 2:
        batched, channels, images, c = True, True, shape[0], shape[1]
    elif len(shape) == dims + 1:
        batched, channels, images, c = False, True, 1, shape[0]
    elif len(shape) == dims and config.in_channels == 1:
        batched, channels, images, c = False, False, 1, 1
    else:
        raise _dims_error(config, shape)
    if c != config.in_channels:
        raise _channels_error(config, shape, c)
    if math.prod(shape) == 0:
        raise ValueError(f"image of shape {shape} is empty")
    return batched, channels, images, shape[-dims:]


def open_source(config: UNetConfig, image: Any, dtype: torch.dtype) -> tuple[TensorSource | ArraySource, bool, int]:
    """The source of tiles, whether the image has a batch axis, and its number of images."""
    if isinstance(image, torch.Tensor):
        x = check_image(config, image, dtype)
        return TensorSource(x), image.dim() == config.spatial_dims + 2, x.shape[0]
    batched, channels, images, _ = _array_layout(config, image)
    return ArraySource(image, batched, channels, dtype), batched, images


def spatial_shape(config: UNetConfig, image: Any) -> tuple[int, ...]:
    """The spatial shape of an image (its last `spatial_dims` axes)."""
    return tuple(image.shape[-config.spatial_dims :])
