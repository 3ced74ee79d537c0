"""Apply a `Preprocessing` spec: the raw image's layout to unetgen's ``(C, *spatial)``, then the
normalisation steps, in NumPy or torch.

Every step is, once its statistics are known, a per-channel affine map or a clip, so a spec is
applied in two parts: `resolve` measures the statistics (percentiles, mean, standard deviation)
and turns the spec into a `Normalizer` of fixed numbers, which then applies to any part of the
image alike. That makes tile-by-tile prediction of an image larger than memory exact:
`prepare_image` wraps such an array in a lazy view (`PreparedImage`) whose every window comes
out laid out and normalised, with the same numbers everywhere.

Per-sample statistics of an image up to `EXACT_VOXELS` voxels per channel are exact (every
voxel). Beyond that they come from a bounded, deterministic sample (`sample_values`): the
spatial block grid (blocks of `SAMPLE_BLOCK` voxels per axis) is sampled at up to
`SAMPLE_BLOCKS` blocks, spread evenly over every axis (about ``SAMPLE_BLOCKS ** (1/dims)`` per
axis, both ends included), and each block read is subsampled with one stride on every axis so
that at most `SAMPLE_PER_BLOCK` of its voxels are kept. At most 64 blocks of 65,536 voxels:
4 Mi values per channel, read block by block.

Where a model predicts (`predict_tiled`, `unetgen predict`, `predict_distributed`) and trains
(`PatchSampler(preprocessing=...)`), the spec is applied by `prepare_input`: the spec comes from
`spec_of` (the model's own `preprocessing`, set by every loader, unless another is given or it
is turned off), the statistics are measured once per image as above, and the image becomes a
lazy `PreparedImage` (`PreparedBatch` for a leading image axis) whose windows are normalised
with those numbers: in memory and out of core alike, so both give the same result.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..analysis.shapes import InputShapeError
from ..config.preprocessing import (
    Clip,
    Preprocessing,
    ScaleLinear,
    ScaleRange,
    Step,
    ZeroMeanUnitVariance,
    check_channels,
    load_preprocessing,
)
from ..config.unet_config import UNetConfig
from ..reprs import short_repr
from .axes import LaidOut

__all__ = [
    "EXACT_VOXELS",
    "SAMPLE_BLOCK",
    "SAMPLE_BLOCKS",
    "SAMPLE_PER_BLOCK",
    "PREPARED",
    "Normalizer",
    "PreparedBatch",
    "PreparedImage",
    "PreprocessingArg",
    "prepare_image",
    "prepare_input",
    "preprocess",
    "resolve",
    "describe_prepared",
    "raw_image",
    "sample_values",
    "spec_of",
    "to_model_layout",
]

SAMPLE_BLOCK = 128
"""Edge (voxels per spatial axis) of the blocks the bounded sample reads."""
SAMPLE_BLOCKS = 64
"""Most blocks the bounded sample reads."""
SAMPLE_PER_BLOCK = 1 << 16
"""Most voxels the bounded sample keeps of one block (per channel)."""
EXACT_VOXELS = SAMPLE_BLOCKS * SAMPLE_PER_BLOCK
"""Images up to this many voxels per channel get exact statistics (every voxel)."""


# ---------------------------------------------------------------------------------------------
# layout


def _layout(spec: Preprocessing | None, ndim: int) -> tuple[int | None, int]:
    """(position of the channel axis or None, number of spatial axes) of a raw image."""
    if spec is None or spec.axes is None:
        return None, ndim
    if ndim != len(spec.axes):
        raise ValueError(f"the image has {ndim} axes but the preprocessing's axes={spec.axes!r} has {len(spec.axes)}")
    return spec.channel_axis, len(spec.axes) - (spec.channel_axis is not None)


def to_model_layout(image: Any, spec: Preprocessing | None) -> Any:
    """`image` (NumPy array or tensor) in `spec.axes`'s layout as ``(C, *spatial)``: the channel
    axis moved first, or added when the layout has none. Without `spec.axes`, returned as is."""
    if spec is None or spec.axes is None:
        return image
    channel, _ = _layout(spec, image.ndim)
    if channel is None:
        return image[None]
    return torch.movedim(image, channel, 0) if isinstance(image, torch.Tensor) else np.moveaxis(image, channel, 0)


# ---------------------------------------------------------------------------------------------
# resolved steps


@dataclass(frozen=True)
class _Standardize:
    """``(x - sub) / div``, per channel (scale_range, zero_mean_unit_variance)."""

    sub: tuple[float, ...]
    div: tuple[float, ...]

    def apply(self, x: Any, c: int) -> Any:
        return (x - np.float32(self.sub[c])) / np.float32(self.div[c])


@dataclass(frozen=True)
class _Linear:
    """``x * gain + offset``, per channel (scale_linear)."""

    gain: tuple[float, ...]
    offset: tuple[float, ...]

    def apply(self, x: Any, c: int) -> Any:
        return x * np.float32(self.gain[c]) + np.float32(self.offset[c])


@dataclass(frozen=True)
class _Clip:
    low: float | None
    high: float | None

    def apply(self, x: Any, c: int) -> Any:
        if isinstance(x, torch.Tensor):
            return x.clamp(self.low, self.high)
        return np.clip(x, self.low, self.high)


_Op = _Standardize | _Linear | _Clip


@dataclass(frozen=True)
class Normalizer:
    """A spec with its statistics measured: fixed per-channel operations that normalise any part
    of the image alike. `apply` takes (C, *spatial) in float32 (NumPy or torch)."""

    ops: tuple[_Op, ...]
    channels: int

    def apply(self, x: Any) -> Any:
        """`x` (C, *spatial), normalised as float32 (NumPy in, NumPy out; torch in, torch out)."""
        if x.shape[0] != self.channels:
            raise ValueError(f"the image has {x.shape[0]} channels, the normalisation was measured on {self.channels}")
        out = x.to(torch.float32) if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
        parts = []
        for c in range(self.channels):
            part = out[c]
            for op in self.ops:
                part = op.apply(part, c)
            parts.append(part)
        if isinstance(out, torch.Tensor):
            return torch.stack(parts).to(torch.float32)
        return np.stack(parts).astype(np.float32, copy=False)

    def describe(self) -> list[dict[str, Any]]:
        """The resolved operations as plain values (for logs and model cards)."""
        return [{"op": type(op).__name__.lstrip("_").lower(), **op.__dict__} for op in self.ops]


def _per_channel(value: float | tuple[float, ...], channels: int) -> tuple[float, ...]:
    return tuple(float(v) for v in value) if isinstance(value, tuple) else (float(value),) * channels


def _joint(values: Sequence[np.ndarray], per_channel: bool) -> list[np.ndarray]:
    """The values the statistics are taken over, one array per channel (the same one for all
    channels unless `per_channel`)."""
    return list(values) if per_channel else [np.concatenate(values)] * len(values)


def _resolve_step(step: Step, values: Sequence[np.ndarray]) -> _Op:
    n = len(values)
    match step:
        case ScaleRange(mode="per_dataset"):
            low, high = _per_channel(step.low, n), _per_channel(step.high, n)
            return _Standardize(low, tuple(h - lo + step.eps for lo, h in zip(low, high, strict=True)))
        case ScaleRange():
            q = np.array([step.min_percentile, step.max_percentile])
            pairs = [np.percentile(v, q) for v in _joint(values, step.per_channel)]
            return _Standardize(tuple(float(p[0]) for p in pairs), tuple(float(p[1] - p[0]) + step.eps for p in pairs))
        case ZeroMeanUnitVariance(mode="per_dataset"):
            mean, std = _per_channel(step.mean, n), _per_channel(step.std, n)
            return _Standardize(mean, tuple(s + step.eps for s in std))
        case ZeroMeanUnitVariance():
            joint = _joint(values, step.per_channel)
            return _Standardize(tuple(float(v.mean()) for v in joint), tuple(float(v.std()) + step.eps for v in joint))
        case ScaleLinear():
            return _Linear(_per_channel(step.gain, n), _per_channel(step.offset, n))
        case Clip():
            return _Clip(step.min, step.max)
    raise AssertionError(step)


def resolve(spec: Preprocessing, values: Sequence[np.ndarray]) -> Normalizer:
    """The `Normalizer` of `spec` for an image whose voxels (all, or a sample: `sample_values`)
    are `values`, one 1-D array per channel. Each per-sample statistic is taken over the values
    as the steps before it left them (in float32, as bioimage.io computes them)."""
    current = [np.asarray(v, dtype=np.float32).reshape(-1) for v in values]
    if any(v.size == 0 for v in current):
        raise ValueError("cannot measure normalisation statistics on an empty image")
    ops = []
    for step in spec.normalize:
        op = _resolve_step(step, current)
        ops.append(op)
        current = [np.asarray(op.apply(v, c), dtype=np.float32) for c, v in enumerate(current)]
    return Normalizer(tuple(ops), len(current))


# ---------------------------------------------------------------------------------------------
# images in memory


def preprocess(image: Any, spec: Preprocessing | None) -> Any:
    """`image` (a NumPy array or tensor in `spec.axes`'s layout) as the network's input:
    ``(C, *spatial)`` float32, normalised with statistics over every voxel. Without a spec (or
    with no steps) the image is only laid out (and cast to float32)."""
    x = to_model_layout(image, spec)
    if spec is None or not spec.normalize:
        return x.to(torch.float32) if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
    host = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return resolve(spec, [c.reshape(-1) for c in host]).apply(x)


# ---------------------------------------------------------------------------------------------
# images larger than memory


def _host(x: Any) -> np.ndarray:
    """A window as a NumPy array on the host (a tensor's, whatever its device and dtype)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        try:
            return x.numpy()
        except TypeError:  # bfloat16 and other dtypes NumPy lacks
            return x.to(torch.float32).numpy()
    return np.asarray(x)


def _itemsize(array: Any) -> int:
    dtype = array.dtype
    return dtype.itemsize if isinstance(dtype, torch.dtype) else np.dtype(dtype).itemsize


class _Item:
    """Image `n` of an array-like with a leading image axis, lazily (nothing is read)."""

    def __init__(self, array: Any, n: int) -> None:
        self.array, self.n = array, n
        self.shape = tuple(int(s) for s in array.shape)[1:]
        self.dtype = array.dtype
        chunks = getattr(array, "chunks", None)
        self.chunks = tuple(chunks)[1:] if isinstance(chunks, tuple) else None

    def __getitem__(self, key: tuple[Any, ...]) -> Any:
        return self.array[(self.n, *key)]


class _LaidOut:
    """A lazy (C, *spatial) view of a raw array-like in `spec.axes`'s layout."""

    def __init__(self, array: Any, spec: Preprocessing | None) -> None:
        self.array = array
        shape = tuple(int(s) for s in array.shape)
        self.raw_shape = shape
        self.channel, _ = _layout(spec, len(shape))
        self.add_channel = spec is not None and spec.axes is not None and self.channel is None
        if self.add_channel:
            shape = (1, *shape)
        elif self.channel is not None:
            shape = (shape[self.channel], *shape[: self.channel], *shape[self.channel + 1 :])
        self.shape = shape

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        """`key`: one slice per axis of (C, *spatial); a NumPy array (C, *window)."""
        channels, spatial = key[0], tuple(key[1:])
        if self.add_channel:
            return _host(self.array[spatial])[None][channels]
        if self.channel is None:
            return _host(self.array[key])
        raw = (*spatial[: self.channel], channels, *spatial[self.channel :])
        return np.moveaxis(_host(self.array[raw]), self.channel, 0)

    def read_bytes(self, tile_input: Sequence[int]) -> int:
        """The most bytes reading one window of (at most) `tile_input` decodes: the chunks it
        touches, read whole, for a chunked array (zarr, a TIFF's tiles), and the raw window."""
        spatial = [min(int(t), n) for t, n in zip(tile_input, self.shape[1:], strict=True)]
        if self.add_channel:
            spans = spatial
        elif self.channel is None:
            spans = [self.shape[0], *spatial]
        else:
            spans = [*spatial[: self.channel], self.shape[0], *spatial[self.channel :]]
        shape, itemsize = self.raw_shape, _itemsize(self.array)
        window = itemsize * math.prod(spans)
        chunks = getattr(self.array, "chunks", None)
        chunks = tuple(chunks) if isinstance(chunks, (tuple, list)) else None
        if chunks is None or len(chunks) != len(shape) or not all(isinstance(c, int) and c > 0 for c in chunks):
            return window
        decoded = itemsize
        for n, c, span in zip(shape, chunks, spans, strict=True):
            decoded *= min(-(-n // c), -(-(span - 1) // c) + 1) * c
        return decoded + window


def _axis_picks(blocks: int, wanted: int) -> list[int]:
    """`wanted` block indices out of `blocks`, evenly spread, both ends included."""
    if wanted >= blocks:
        return list(range(blocks))
    if wanted == 1:
        return [blocks // 2]
    return sorted({round(i * (blocks - 1) / (wanted - 1)) for i in range(wanted)})


def sample_values(
    image: Any,
    *,
    block: int = SAMPLE_BLOCK,
    max_blocks: int = SAMPLE_BLOCKS,
    max_per_block: int = SAMPLE_PER_BLOCK,
) -> list[np.ndarray]:
    """A bounded, deterministic sample of the voxels of `image` ((C, *spatial), any array-like
    that slices), one 1-D array per channel: the spatial grid of blocks of `block` voxels per
    axis is sampled at up to `max_blocks` blocks, the same number per axis (as many as fit),
    evenly spread with both ends included; each block is read whole and kept at one stride on
    every axis, the smallest that keeps at most `max_per_block` voxels of a whole block (the same
    stride for the smaller blocks at the image's far edges, so that every voxel counts alike). An image with no more
    than `max_blocks * max_per_block` voxels per channel is read whole instead (exact)."""
    shape = tuple(int(s) for s in image.shape)
    channels, spatial = shape[0], shape[1:]
    dims = len(spatial)
    if math.prod(spatial) <= max_blocks * max_per_block:
        whole = np.asarray(image[tuple(slice(None) for _ in shape)], dtype=np.float32)
        return [whole[c].reshape(-1) for c in range(channels)]
    grid = [-(-s // block) for s in spatial]
    per_axis = max(1, math.floor(max_blocks ** (1 / dims) + 1e-9))
    picks = [_axis_picks(n, per_axis) for n in grid]
    # one stride for every block (edge blocks included), so every voxel is kept alike
    stride = max(1, math.ceil((block**dims / max_per_block) ** (1 / dims) - 1e-9))
    while math.ceil(block / stride) ** dims > max_per_block:
        stride += 1
    parts: list[list[np.ndarray]] = [[] for _ in range(channels)]
    for index in itertools.product(*picks):
        window = tuple(slice(i * block, min((i + 1) * block, s)) for i, s in zip(index, spatial, strict=True))
        data = np.asarray(image[(slice(None), *window)], dtype=np.float32)
        kept = data[(slice(None), *(slice(min(stride // 2, n - 1), None, stride) for n in data.shape[1:]))]
        for c in range(channels):
            parts[c].append(kept[c].reshape(-1))
    return [np.concatenate(p) for p in parts]


class PreparedImage:
    """A lazy view of a raw array-like as the network's input: shape (C, *spatial), dtype
    float32; every window read is laid out and normalised with the same `normalizer`. Pass it
    to `predict_tiled` as the image (it is used as it is: its spec is not applied again)."""

    dtype = np.dtype(np.float32)

    def __init__(self, laid_out: Any, normalizer: Normalizer | None, spec: Preprocessing | None = None) -> None:
        self._image, self.normalizer, self.spec = laid_out, normalizer, spec
        self.shape = tuple(laid_out.shape)
        self.ndim = len(self.shape)

    @property
    def source(self) -> Any:
        """The raw array-like this view reads."""
        array = getattr(self._image, "array", self._image)
        return array.array if isinstance(array, _Item) else array

    @property
    def axes(self) -> Any:
        """The axes the raw image was read with (`unetgen.predict.axes.Axes`: its pixel size goes
        into an OME-Zarr output), None when they are not known."""
        return getattr(self.source, "axes", None)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(not isinstance(k, slice) for k in key):
            raise TypeError("a PreparedImage is read by windows: one slice per axis")
        key = key + (slice(None),) * (self.ndim - len(key))
        window = np.asarray(self._image[(slice(None), *key[1:])], dtype=np.float32)
        out = window if self.normalizer is None else self.normalizer.apply(window)
        return out[key[0]]

    def read_bytes(self, tile_input: Sequence[int]) -> int:
        """The most bytes reading one window of (at most) `tile_input` takes: what the raw read
        decodes (`_LaidOut.read_bytes`; 0 for a plain array view) and the float32 window with
        the normalisation's temporaries (three windows' worth)."""
        raw = self._image.read_bytes(tile_input) if isinstance(self._image, _LaidOut) else 0
        window = 4 * self.shape[0] * math.prod(min(int(t), n) for t, n in zip(tile_input, self.shape[1:], strict=True))
        return raw + 3 * window

    def facts(self) -> dict[str, Any]:
        """What the windows depend on besides the raw pixels, as JSON values: the spec, the raw
        shape and dtype, and the measured numbers (for fingerprints of resumable runs)."""
        return _facts(self.spec, self.source, [self.normalizer])


class PreparedBatch:
    """`PreparedImage`s of the images of a raw array-like with a leading image axis: shape
    (N, C, *spatial), dtype float32; each image normalised with its own measured numbers."""

    dtype = np.dtype(np.float32)

    def __init__(self, images: Sequence[PreparedImage], spec: Preprocessing | None, source: Any) -> None:
        self.images, self.spec, self.source = tuple(images), spec, source
        self.shape = (len(self.images), *self.images[0].shape)
        self.ndim = len(self.shape)

    @property
    def axes(self) -> Any:
        """As `PreparedImage.axes`."""
        return getattr(self.source, "axes", None)

    @property
    def normalizers(self) -> tuple[Normalizer | None, ...]:
        return tuple(image.normalizer for image in self.images)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        first, rest = (key[0], key[1:]) if key else (slice(None), ())
        if isinstance(first, slice):
            return np.stack([self.images[n][rest] for n in range(*first.indices(len(self.images)))])
        if isinstance(first, (int, np.integer)) and not isinstance(first, (bool, np.bool_)):
            return self.images[first][rest]
        raise TypeError("a PreparedBatch is read by an image index (or a slice) and one slice per other axis")

    def read_bytes(self, tile_input: Sequence[int]) -> int:
        """As `PreparedImage.read_bytes`, for one image's window."""
        return self.images[0].read_bytes(tile_input)

    def facts(self) -> dict[str, Any]:
        """As `PreparedImage.facts`, with one set of numbers per image."""
        return _facts(self.spec, self.source, self.normalizers)


PREPARED = (PreparedImage, PreparedBatch)
"""The types of prepared images: `predict_tiled` uses them as they are."""


def _facts(spec: Preprocessing | None, source: Any, normalizers: Sequence[Normalizer | None]) -> dict[str, Any]:
    dtype = str(source.dtype).removeprefix("torch.") if isinstance(source, torch.Tensor) else str(source.dtype)
    return {
        "spec": None if spec is None else spec.model_dump(mode="json"),
        "raw_shape": [int(s) for s in source.shape],
        "raw_dtype": dtype,
        "normalizers": [None if n is None else n.describe() for n in normalizers],
    }


def raw_image(image: Any) -> Any:
    """The raw array-like a prepared image reads (`image` itself for anything else)."""
    return image.source if isinstance(image, PREPARED) else image


def prepare_image(
    image: Any,
    spec: Preprocessing | None,
    *,
    normalizer: Normalizer | None = None,
    block: int = SAMPLE_BLOCK,
    max_blocks: int = SAMPLE_BLOCKS,
    max_per_block: int = SAMPLE_PER_BLOCK,
) -> PreparedImage:
    """A lazy `PreparedImage` of a raw array-like (NumPy, memmap, zarr, ...) in `spec.axes`'s
    layout: its statistics measured once (`sample_values`: exact up to `EXACT_VOXELS` voxels per
    channel, a bounded sample beyond), nothing else read until a window is asked for. Pass the
    `normalizer` measured elsewhere (a Dask client's, say) to skip measuring."""
    laid_out = _LaidOut(image, spec)
    if spec is None or not spec.normalize:
        return PreparedImage(laid_out, None, spec)
    if normalizer is None:
        values = sample_values(laid_out, block=block, max_blocks=max_blocks, max_per_block=max_per_block)
        normalizer = resolve(spec, values)
    return PreparedImage(laid_out, normalizer, spec)


# ---------------------------------------------------------------------------------------------
# where a model predicts or trains: the spec to apply, and the image prepared with it

PreprocessingArg = Preprocessing | Mapping[str, Any] | str | os.PathLike[str] | bool | None
"""What `predict_tiled(preprocessing=...)` and its kin take: None (the model's own spec, if it has
one), False (none: the image as it is), or a spec (a `Preprocessing`, a mapping or a .json/.yaml
file) to apply instead of the model's."""


def _model_spec(model: Any) -> Preprocessing | None:
    """The `preprocessing` attribute the loaders set (`load_unet` and the package loaders), also
    through DataParallel/DDP (`module`) and `torch.compile` (`_orig_mod`) wrappers."""
    for obj in (model, getattr(model, "module", None), getattr(model, "_orig_mod", None)):
        spec = getattr(obj, "preprocessing", None)
        if spec is None:
            continue
        if not isinstance(spec, Preprocessing):
            raise ValueError(
                f"model.preprocessing is a {type(spec).__name__}, not a Preprocessing spec; set it with "
                "unetgen.config.preprocessing.load_preprocessing(...), or to None"
            )
        return spec
    return None


def spec_of(model: Any, preprocessing: PreprocessingArg = None) -> Preprocessing | None:
    """The spec to apply when `model` predicts: `preprocessing` None takes the model's own (its
    `preprocessing` attribute: the spec its checkpoint, folder or package carries), False none,
    anything else is loaded as a spec (`load_preprocessing`: a `ConfigError` for a bad one). A spec
    that neither lays out (`axes`) nor normalises counts as none (the image is used as it is)."""
    if preprocessing is None:
        spec = _model_spec(model)
    elif preprocessing is False:
        return None
    elif isinstance(preprocessing, (bool, np.bool_)):
        raise ValueError(
            "preprocessing=True is not a spec: pass None (the model's own spec), False (none) or a spec "
            "(a Preprocessing, a mapping or a .json/.yaml file)"
        )
    else:
        spec = load_preprocessing(preprocessing)
    if spec is None or (spec.axes is None and not spec.normalize):
        return None
    return spec


_SPATIAL = "zyx"


def _raw_axes(config: UNetConfig, image: Any, spec: Preprocessing) -> tuple[str, bool]:
    """The raw image's axes (`spec.axes`, or unetgen's own layout by its dims) and whether it has
    a leading image axis; a clear error for a shape, dtype or channel count that does not fit."""
    shape = getattr(image, "shape", None)
    if not hasattr(image, "__getitem__") or not isinstance(shape, (tuple, list, torch.Size)):
        raise TypeError(f"image must be a tensor or an array-like with shape, dtype and slicing, got {type(image)}")
    shape = tuple(int(s) for s in shape)
    if isinstance(image, torch.Tensor):
        if image.is_complex():
            raise ValueError(
                f"image of dtype {image.dtype} cannot be predicted: give real numbers (bool, int or float)"
            )
    elif np.dtype(image.dtype).kind not in "biuf":
        raise ValueError(f"image of dtype {image.dtype} cannot be predicted: give real numbers (bool, int or float)")
    dims, ndim = config.spatial_dims, len(shape)
    spatial = _SPATIAL[3 - dims :]
    off = "or turn the preprocessing off (preprocessing=False, unetgen predict --no-preprocessing)"
    if isinstance(image, LaidOut):  # the file said its axes (or axes= did): laid out as `target` says
        axes, batched = image.target.removeprefix("b"), image.target.startswith("b")
        if len(axes.replace("c", "")) != dims:
            raise ValueError(
                f"{image.axes.said}: a {len(axes.replace('c', ''))}D image, but the network is {dims}D; give the "
                "image's axes (--axes, Python: axes=) or use a network of its dims"
            )
    elif spec.axes is None:
        if ndim == dims and config.in_channels == 1:
            axes, batched = spatial, False
        elif ndim in (dims + 1, dims + 2):
            axes, batched = "c" + spatial, ndim == dims + 2
        else:
            raise InputShapeError(
                f"image of shape {shape} has {ndim} dims but spatial_dims={dims} needs (C, *spatial) with "
                f"{dims + 1} dims or (N, C, *spatial) with {dims + 2}"
                + (" or (*spatial)" if config.in_channels == 1 else "")
            )
    else:
        axes = spec.axes
        if len(axes.replace("c", "")) != dims:
            raise ValueError(
                f"the preprocessing's axes={axes!r} has {len(axes.replace('c', ''))} spatial axes but the model has "
                f"spatial_dims={dims}; give a spec whose axes fit the model, {off}"
            )
        if ndim not in (len(axes), len(axes) + 1):
            raise InputShapeError(
                f"image of shape {shape} has {ndim} dims but the preprocessing's axes={axes!r} needs {len(axes)} "
                f"(or {len(axes) + 1} with a leading image axis); give the image in that layout, {off}"
            )
        batched = ndim == len(axes) + 1
    channels = shape[axes.index("c") + batched] if "c" in axes else 1
    if channels != config.in_channels:
        raise ValueError(
            f"image of shape {shape} (axes {axes!r}) has {channels} channels but in_channels={config.in_channels}"
        )
    if math.prod(shape) == 0:
        raise ValueError(f"image of shape {shape} is empty")
    return axes, batched


def _measure(laid_out: _LaidOut, spec: Preprocessing, shape: tuple[int, ...]) -> Normalizer:
    values = sample_values(laid_out)
    if not all(np.isfinite(v).all() for v in values):
        raise ValueError(
            f"image of shape {shape} contains NaN or infinite values (as float32): the normalisation statistics "
            "cannot be measured"
        )
    return resolve(spec, values)


def prepare_input(
    config: UNetConfig,
    image: Any,
    spec: Preprocessing,
    *,
    normalizers: Sequence[Normalizer | None] | None = None,
) -> PreparedImage | PreparedBatch:
    """`image` (a tensor or any array-like that slices, in `spec.axes`'s layout, or unetgen's own
    ``(C, *spatial)``/``(*spatial)`` without `spec.axes`; a leading image axis allowed) as the
    network's input for a model of `config`: a lazy `PreparedImage` (`PreparedBatch` with an
    image axis) whose windows come out laid out and normalised. Each image's statistics are
    measured once here (`sample_values`: exact up to `EXACT_VOXELS` voxels per channel, a bounded
    sample beyond), unless `normalizers` (one per image, e.g. measured on a Dask client) are given;
    nothing else is read until a window is. A prepared image is returned as it is.

    The same rule wherever unetgen applies a spec (`predict_tiled` in memory and out of core, the
    CLI, `predict_distributed`, `PatchSampler`): the same image gives the same numbers. Errors:
    `InputShapeError` for dims that fit neither the spec nor the model, `ValueError` for channels,
    dtypes, empty images, non-finite values, per-channel values or `normalizers` that do not fit."""
    if isinstance(image, PREPARED):
        return image
    try:
        check_channels(spec, config.in_channels, config.out_channels)
    except ValueError as err:
        raise ValueError(f"preprocessing: {err}") from None
    axes, batched = _raw_axes(config, image, spec)
    laid_spec = spec if spec.axes == axes else spec.model_copy(update={"axes": axes})
    items = [_Item(image, n) for n in range(int(image.shape[0]))] if batched else [image]
    laid = [_LaidOut(item, laid_spec) for item in items]
    shape = tuple(int(s) for s in image.shape)
    if not spec.normalize:
        found: list[Normalizer | None] = [None] * len(laid)
    elif normalizers is None:
        found = [_measure(view, spec, shape) for view in laid]
    else:
        found = list(normalizers)
        channels = laid[0].shape[0]
        if len(found) != len(laid) or any(not isinstance(n, Normalizer) or n.channels != channels for n in found):
            raise ValueError(
                f"normalizers={short_repr(normalizers)} must be one Normalizer of {channels} channel(s) per image "
                f"({len(laid)}), as prepare_input measured them"
            )
    prepared = [PreparedImage(view, n, spec) for view, n in zip(laid, found, strict=True)]
    return PreparedBatch(prepared, spec, image) if batched else prepared[0]


def _op_text(op: _Op, c: int) -> str:
    match op:
        case _Standardize():
            return f"(x - {op.sub[c]:.9g}) / {op.div[c]:.9g}"
        case _Linear():
            return f"x * {op.gain[c]:.9g} + {op.offset[c]:.9g}"
        case _Clip():
            return f"clip to [{op.low}, {op.high}]"
    raise AssertionError(op)


def describe_prepared(image: PreparedImage | PreparedBatch, channels: int = 4) -> str:
    """One line on what `prepare_input` did: the layout, the steps, how the statistics were
    measured and the numbers (the first image's, up to `channels` channels)."""
    first = image.images[0] if isinstance(image, PreparedBatch) else image
    spec, normalizer = first.spec, first.normalizer
    layout = f"axes {spec.axes}" if spec is not None and spec.axes else "unetgen's (C, *spatial)"
    if normalizer is None:
        return f"{layout}, no normalisation"
    voxels = math.prod(first.shape[1:])
    how = (
        f"all {voxels:,} voxels"
        if voxels <= EXACT_VOXELS
        else f"a sample (at most {SAMPLE_BLOCKS} blocks) of its {voxels:,} voxels"
    )
    steps = ", ".join(step.type for step in spec.normalize) if spec is not None else ""
    shown = [" then ".join(_op_text(op, c) for op in normalizer.ops) for c in range(min(channels, normalizer.channels))]
    more = f"; ... ({normalizer.channels} channels)" if normalizer.channels > channels else ""
    images = f" (image 1 of {len(image.images)}: each its own)" if isinstance(image, PreparedBatch) else ""
    return f"{layout}, {steps} measured on {how}{images}: {'; '.join(shown)}{more}"
