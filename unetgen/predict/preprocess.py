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
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config.preprocessing import Clip, Preprocessing, ScaleLinear, ScaleRange, Step, ZeroMeanUnitVariance

__all__ = [
    "EXACT_VOXELS",
    "SAMPLE_BLOCK",
    "SAMPLE_BLOCKS",
    "SAMPLE_PER_BLOCK",
    "Normalizer",
    "PreparedImage",
    "prepare_image",
    "preprocess",
    "resolve",
    "sample_values",
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


class _LaidOut:
    """A lazy (C, *spatial) view of a raw array-like in `spec.axes`'s layout."""

    def __init__(self, array: Any, spec: Preprocessing | None) -> None:
        self.array = array
        shape = tuple(int(s) for s in array.shape)
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
            return np.asarray(self.array[spatial])[None][channels]
        if self.channel is None:
            return np.asarray(self.array[key])
        raw = (*spatial[: self.channel], channels, *spatial[self.channel :])
        return np.moveaxis(np.asarray(self.array[raw]), self.channel, 0)


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
    to `predict_tiled` as the image."""

    dtype = np.dtype(np.float32)

    def __init__(self, laid_out: Any, normalizer: Normalizer | None) -> None:
        self._image, self.normalizer = laid_out, normalizer
        self.shape = tuple(laid_out.shape)
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(not isinstance(k, slice) for k in key):
            raise TypeError("a PreparedImage is read by windows: one slice per axis")
        key = key + (slice(None),) * (self.ndim - len(key))
        window = np.asarray(self._image[(slice(None), *key[1:])], dtype=np.float32)
        out = window if self.normalizer is None else self.normalizer.apply(window)
        return out[key[0]]


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
        return PreparedImage(laid_out, None)
    if normalizer is None:
        values = sample_values(laid_out, block=block, max_blocks=max_blocks, max_per_block=max_per_block)
        normalizer = resolve(spec, values)
    return PreparedImage(laid_out, normalizer)
