"""Predict on images of any size: the overlap-tile strategy of Ronneberger et al. 2015 (Figure 2).

An unpadded (``padding: valid``) U-Net maps an input tile to a smaller output tile: ``halo``
pixels are lost on every side, and only some input sizes are valid (see `unetgen.shapes`).
`predict_tiled` splits the image into output tiles, feeds each one with its input tile (the
output tile plus the halo on every side) and writes the results side by side into one
preallocated tensor of the image's own spatial size. Context outside the image is mirrored.

Valid padding is exact: every tile starts on the network's pooling grid (a multiple of the
period of `shapes.axis_rule`), so the prediction equals one forward pass over the whole
mirror-padded image, cropped to the image, for any tile size. This holds for networks whose
output is local (no instance, group or layer norm: those normalise over the whole tile; and
``up: linear`` clamps at the tile border, so it differs from the whole-image pass near tile
borders; batch norm in eval mode, pooling, transposed convs, nearest up-sampling, attention
gates and residual blocks are exact).

Same padding (``padding: same``): the network keeps the size, so tiles overlap by `overlap` and
are blended with normalised weights (Gaussian or constant).

Mirroring is reflection without repeating the edge pixel (torch's and NumPy's ``reflect``):
``... 2 1 | 0 1 2 ... n-1 | n-2 n-3 ...``. When the image is smaller than the context needed,
the reflection repeats (the image is unfolded periodically with period ``2*(n-1)``, as NumPy's
``np.pad(mode="reflect")`` does); an axis of size 1 is repeated.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import itertools
import json
import math
import numbers
import operator
import os
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..analysis import shapes
from ..analysis.memory import estimate_tile_memory
from ..config.unet_config import UNetConfig
from ..reprs import short_repr

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "DEFAULT_MEMORY_LIMIT",
    "DEFAULT_OVERLAP",
    "EvenStarts",
    "OutputType",
    "TilePlan",
    "check_image",
    "check_memory",
    "default_block_shape",
    "estimate_tile_memory",
    "output_dtype",
    "output_layout",
    "plan_tiles",
    "predict_tiled",
]

DEFAULT_MEMORY_BUDGET = 1 << 30
"""Bytes of activations that one batch of tiles may use when the tile size is chosen automatically."""
DEFAULT_MEMORY_LIMIT = 16 << 30
"""Bytes `predict_tiled` may need (tiles in flight and the result it allocates, as estimated by
`check_memory`) before it refuses to start; raise it with `memory_limit=`."""
DEFAULT_OVERLAP = 0.25
"""Fraction of a tile shared with its neighbour, for same padding."""
GAUSSIAN_SIGMA = 0.125
"""Standard deviation of the Gaussian blend window, as a fraction of the tile size."""

Blend = Literal["gaussian", "constant"]
OutputType = Literal["logits", "probabilities", "labels"]
_CANDIDATES = 256  # tile sizes the automatic plan compares at most


@dataclass(frozen=True)
class EvenStarts(Sequence[int]):
    """`count` tile starts spread evenly from 0 to `last` (same padding): start ``k`` is
    ``k * last / (count - 1)`` rounded half up, computed on demand (O(1) memory for any count)."""

    last: int
    count: int

    def __len__(self) -> int:
        return self.count

    @overload
    def __getitem__(self, index: int) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[int, ...]: ...
    def __getitem__(self, index: int | slice) -> int | tuple[int, ...]:
        if isinstance(index, slice):
            return tuple(self[k] for k in range(*index.indices(self.count)))
        k = operator.index(index)
        k = k + self.count if k < 0 else k
        if not 0 <= k < self.count:
            raise IndexError(f"tile {index} of {self.count}")
        return 0 if self.count == 1 else (2 * k * self.last + self.count - 1) // (2 * (self.count - 1))


@dataclass(frozen=True)
class TilePlan:
    """How `predict_tiled` covers an image with tiles. Inspect it with `plan_tiles` before running.

    A plan is O(spatial axes) in size whatever the image: `starts` are lazy sequences (a `range`
    for valid padding, an `EvenStarts` for same padding), so planning a 10**9 x 10**9 image costs
    what planning a small one does."""

    image_shape: tuple[int, ...]
    """Spatial shape of the image, and of the prediction."""
    padding: Literal["valid", "same"]
    """The network's padding: `valid` tiles do not overlap in the output, `same` tiles are blended."""
    tile_input: tuple[int, ...]
    """Spatial size of every input tile: a valid input size of the network on every axis."""
    tile_output: tuple[int, ...]
    """Spatial size of every output tile: `tile_input - 2*halo`."""
    halo: tuple[int, ...]
    """Context the network consumes on each side, per axis (0 for same padding)."""
    starts: tuple[Sequence[int], ...]
    """Per axis, where each tile's output begins in image coordinates; its input begins `halo`
    earlier. Each is a lazy sequence of ints (compare with ``tuple(plan.starts[axis])``)."""
    overlap: float
    """Requested overlap between neighbouring tiles (same padding; 0 for valid padding)."""
    batch_size: int
    """Most tiles run through the network at once (the automatic plan lowers it to what fits its
    memory budget); fewer when the images have fewer tiles."""
    memory_bytes: int
    """Estimated peak activation memory of one batch of min(batch_size, num_tiles) tiles (not
    counting the image and the result: `check_memory` adds those)."""
    memory_budget: int | None
    """The budget the tile size was chosen for; None when the tile size was given."""

    @property
    def tiles_per_axis(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.starts)

    @property
    def num_tiles(self) -> int:
        """Tiles per image."""
        return math.prod(self.tiles_per_axis)

    @property
    def computed_ratio(self) -> float:
        """Input pixels computed / output pixels: 1 is no overhead; the rest is halo, overlap and
        the part of the last tiles beyond the image."""
        return self.num_tiles * math.prod(self.tile_input) / math.prod(self.image_shape)

    def summary(self) -> str:
        """One line for people: tiles, sizes, overhead and memory."""

        def fmt(shape: Sequence[int]) -> str:
            return "x".join(map(str, shape))

        return (
            f"{fmt(self.image_shape)} image, {self.padding} padding: {fmt(self.tiles_per_axis)} = {self.num_tiles} "
            f"tiles of {fmt(self.tile_input)} -> {fmt(self.tile_output)} (halo {fmt(self.halo)}), "
            f"computed/output pixels {self.computed_ratio:.2f}, "
            f"~{_bytes(self.memory_bytes)} per batch of {min(self.batch_size, self.num_tiles)}"
        )


def _bytes(n: int) -> str:
    """A byte count for people: 512 bytes, 12 KiB, 382 MiB, 1.5 GiB, 4.2e+09 GiB."""
    if n < 1 << 10:
        return f"{n} bytes"
    if n < 1 << 20:
        return f"{n / 2**10:.0f} KiB"
    if n < 1 << 30:
        return f"{n / 2**20:.0f} MiB"
    if n.bit_length() > 1000:
        return f"about 2**{n.bit_length() - 1} bytes"
    return f"{n / 2**30:.3g} GiB"


# ---------------------------------------------------------------------------------------------
# options: every one checked with a clear ValueError (NumPy and torch integer scalars are ints)


def _as_index(value: Any) -> int:
    """An int from an int or an integer scalar (NumPy, torch); TypeError for bools, floats, strings."""
    if isinstance(value, bool) or "bool" in str(getattr(value, "dtype", "")):
        raise TypeError("a bool is not a count")
    return operator.index(value)


def _positive_int(name: str, value: Any) -> int:
    try:
        v = _as_index(value)
    except TypeError:
        v = 0
    if v < 1:
        raise ValueError(f"{name}={short_repr(value)} must be a positive int")
    return v


def _positive_ints(name: str, value: Any, dims: int, *, broadcast: bool) -> tuple[int, ...]:
    """`value` as `dims` positive ints (an int is repeated when `broadcast`), or a clear error."""
    try:
        try:
            values = (_as_index(value),) * dims
        except TypeError:
            if isinstance(value, (str, bytes)) or len(value) != dims:
                raise
            values = tuple(_as_index(v) for v in value)
        else:
            if not broadcast:
                values = ()
    except TypeError:
        values = ()
    if len(values) != dims or min(values) < 1:
        one = "a positive int or " if broadcast else ""
        raise ValueError(f"{name}={short_repr(value)} must be {one}{dims} positive ints (one per spatial axis)")
    return values


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(
            f"{name}={short_repr(value)} must be a number in [0, 1): the fraction of a tile shared with a neighbour"
        )
    return float(value)


def _float_dtype(dtype: Any) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype={short_repr(dtype)} must be a floating-point torch.dtype, e.g. torch.float32")
    return dtype


# ---------------------------------------------------------------------------------------------
# planning: O(spatial axes), never O(image)


def _valid_axis(config: UNetConfig, axis: int, size: int, tile: int, low: int) -> tuple[int, range]:
    """Valid padding, one axis: the smallest valid input tile (at least `low`, the joint minimum of
    `shapes.min_input_shape`) that covers `size` output pixels with as many tiles as `tile`
    needs, and the output start of each tile (multiples of the period)."""
    rule = shapes.axis_rule(config, axis)
    period = rule.period

    def out(t: int) -> int:
        o = rule.output(t)
        assert o is not None
        return o

    def step(t: int) -> int:  # tiles must start on the pooling grid: a multiple of the period
        return out(t) - out(t) % period

    def tiles(t: int) -> int:
        return 1 if out(t) >= size else 1 + -(-(size - out(t)) // step(t))

    tile = max(tile, low)
    count = 1
    if out(tile) < size:
        tile = max(tile, shapes.input_size_for_output(config, period, axis=axis))
        count = tiles(tile)
    t = max(low, shapes.input_size_for_output(config, -(-size // count), axis=axis))
    while (count - 1) * step(t) + out(t) < size:
        t += period
    count = tiles(t)  # fewer when `low` made the tile larger than needed
    return t, range(0, count * step(t), step(t)) if count > 1 else range(1)


def _same_axis(
    config: UNetConfig, axis: int, size: int, tile: int, overlap: float, low: int
) -> tuple[int, Sequence[int]]:
    """Same padding, one axis: tiles of `tile` evenly spread over the image, overlapping by at
    least `overlap`; one tile of the smallest valid size (at least `low`) covering the image if
    that is smaller."""
    tile = max(tile, low)
    if tile >= size:
        return max(low, shapes.nearest_valid_input_size(config, size, direction="up", axis=axis)), range(1)
    stride = max(1, math.floor(tile * (1 - overlap)))
    count = 1 + -(-(size - tile) // stride)
    return tile, EvenStarts(size - tile, count)


def _cover(config: UNetConfig, axis: int, size: int) -> int:
    """The smallest input tile that covers the whole axis in one tile."""
    if config.padding == "valid":
        return shapes.input_size_for_output(config, size, axis=axis)
    return shapes.nearest_valid_input_size(config, size, direction="up", axis=axis)


def _plan(
    config: UNetConfig,
    image_shape: tuple[int, ...],
    tile: tuple[int, ...],
    overlap: float,
    batch_size: int,
    budget: int | None,
    dtype: torch.dtype,
) -> TilePlan:
    low = shapes.min_input_shape(config)
    axes = []
    for axis, (size, t) in enumerate(zip(image_shape, tile, strict=True)):
        if config.padding == "valid":
            axes.append(_valid_axis(config, axis, size, t, low[axis]))
        else:
            axes.append(_same_axis(config, axis, size, t, overlap, low[axis]))
    tile_input = tuple(t for t, _ in axes)
    starts = tuple(s for _, s in axes)
    num_tiles = math.prod(len(s) for s in starts)
    if budget is not None:  # automatic plan: batch_size is the most tiles per pass, as many as fit the budget
        batch_size = min(batch_size, max(1, budget // estimate_tile_memory(config, tile_input, 1, dtype)))
    return TilePlan(
        image_shape=image_shape,
        padding=config.padding,
        tile_input=tile_input,
        tile_output=shapes.output_shape(config, tile_input),
        halo=shapes.halo(config),
        starts=starts,
        overlap=overlap,
        batch_size=batch_size,
        memory_bytes=estimate_tile_memory(config, tile_input, min(batch_size, num_tiles), dtype),
        memory_budget=budget,
    )


def _lengths(lo: int, hi: int, count: int) -> list[int]:
    """About `count` ints from `lo` to `hi` (both included), geometrically spaced; exact integer
    arithmetic for any size."""
    octaves = max(1, (hi // lo).bit_length())
    per = max(1, count // octaves)  # steps per doubling
    out = {lo, hi}
    for j in range(octaves * per + 1):
        q, r = divmod(j, per)
        out.add(min(hi, ((lo << q) * round(2 ** (r / per) * 2**20)) >> 20))
    return sorted(out)


def _auto_plan(
    config: UNetConfig,
    image_shape: tuple[int, ...],
    overlap: float,
    batch_size: int,
    budget: int,
    dtype: torch.dtype,
) -> TilePlan:
    """The plan with the fewest computed pixels whose memory estimate fits `budget` (the plan with
    the least memory if none fits); each plan runs as many tiles per pass as fit the budget, at
    most `batch_size`, so a huge `batch_size` never shrinks the tiles. Candidates: tiles of about
    L pixels per axis for about `_CANDIDATES` lengths L geometrically spaced from the smallest
    valid tile to the largest cover, each axis between its joint minimum
    (`shapes.min_input_shape`) and the tile that covers it whole. O(axes * candidates), whatever
    the image size."""
    dims = config.spatial_dims
    low = shapes.min_input_shape(config)
    covers = [max(low[a], _cover(config, a, s)) for a, s in enumerate(image_shape)]
    plans: dict[tuple[int, ...], TilePlan] = {}
    for length in sorted(set(_lengths(min(low), max(covers), _CANDIDATES)) | set(covers)):
        tile = []
        for a in range(dims):
            t = low[a]
            if length >= shapes.axis_rule(config, a).min_size:
                t = max(t, shapes.nearest_valid_input_size(config, length, direction="down", axis=a))
            tile.append(min(covers[a], t))
        if tuple(tile) in plans:
            continue
        plans[tuple(tile)] = plan = _plan(config, image_shape, tuple(tile), overlap, batch_size, budget, dtype)
        if estimate_tile_memory(config, tile, 1, dtype) > budget and plan.memory_bytes > budget:
            break  # larger tiles need more memory still (a plan may use a smaller tile than asked)
    fitting = [p for p in plans.values() if p.memory_bytes <= budget]
    if not fitting:
        return min(plans.values(), key=lambda p: p.memory_bytes)
    return min(fitting, key=lambda p: (p.num_tiles * math.prod(p.tile_input), p.num_tiles))


def _config_of(model: UNetConfig | nn.Module) -> UNetConfig:
    config = model if isinstance(model, UNetConfig) else getattr(model, "config", None)
    if not isinstance(config, UNetConfig):
        raise TypeError(f"expected a unetgen UNet or UNetConfig, got {type(model).__name__} without a UNetConfig")
    return config


def plan_tiles(
    model: UNetConfig | nn.Module,
    image_shape: Sequence[int],
    *,
    tile_size: int | Sequence[int] | None = None,
    batch_size: int = 1,
    overlap: float | None = None,
    memory_budget: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> TilePlan:
    """The tiles `predict_tiled` will use for an image of spatial shape `image_shape`, without running.

    `tile_size` is the largest input tile (an int for every axis or one per axis), rounded to the
    nearest valid input size of `shapes`. With valid padding, each axis then uses the smallest
    valid tile that covers it with the same number of tiles (never more than `tile_size`, except
    that a tile grows to cover an image smaller than it, to output at least one pooling period
    when several tiles are needed, and to the smallest input the whole network accepts,
    `shapes.min_input_shape`, e.g. with instance norm). With same padding, tiles of `tile_size`
    overlap by at least `overlap` (default `DEFAULT_OVERLAP`).

    `tile_size=None` chooses the tile with the fewest computed pixels whose estimated memory
    (`estimate_tile_memory` for one tile of `dtype`) fits `memory_budget` (default
    `DEFAULT_MEMORY_BUDGET`, 1 GiB; if none fits, the smallest tile), and runs as many tiles per
    pass as fit the budget, at most `batch_size` (the plan's `batch_size`). With `tile_size`
    given, `batch_size` is kept as given.

    Planning runs nothing, allocates nothing and costs O(spatial axes) whatever the image size.
    Every option is checked (ints: Python, NumPy or torch integers, not bools; `overlap`: a real
    number in [0, 1)); a bad one is a `ValueError` naming it.
    """
    config = _config_of(model)
    dims = config.spatial_dims
    image_shape = _positive_ints("image_shape", image_shape, dims, broadcast=False)
    batch_size = _positive_int("batch_size", batch_size)
    dtype = _float_dtype(dtype)
    if config.padding == "valid":
        if overlap is not None and (isinstance(overlap, bool) or not isinstance(overlap, numbers.Real) or overlap):
            raise ValueError(
                f"overlap={short_repr(overlap)} applies to padding='same' only; "
                "valid-padding tiles are exact without overlap"
            )
        overlap = 0.0
    else:
        overlap = DEFAULT_OVERLAP if overlap is None else _fraction("overlap", overlap)
    if tile_size is not None:
        if memory_budget is not None:
            raise ValueError("give tile_size or memory_budget, not both: the budget only chooses the tile size")
        tile = tuple(
            shapes.nearest_valid_input_size(config, t, axis=a)
            for a, t in enumerate(_positive_ints("tile_size", tile_size, dims, broadcast=True))
        )
        return _plan(config, image_shape, tile, overlap, batch_size, None, dtype)
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else _positive_int("memory_budget", memory_budget)
    return _auto_plan(config, image_shape, overlap, batch_size, budget, dtype)


def check_memory(
    model: UNetConfig | nn.Module,
    plan: TilePlan,
    *,
    images: int = 1,
    output_type: OutputType = "logits",
    dtype: torch.dtype = torch.float32,
    memory_limit: int | None = None,
    allocate_result: bool = True,
) -> int:
    """The estimated bytes `predict_tiled` needs for `images` images planned as `plan`: one batch
    of min(batch_size, images * tiles) tiles in flight (`estimate_tile_memory`) plus the result it
    allocates (`allocate_result`, i.e. no `out=` array; in `output_type`'s dtype). Raises
    `ValueError` with the estimate when it exceeds `memory_limit` (default
    `DEFAULT_MEMORY_LIMIT`, 16 GiB), before anything is allocated. Not counted: the image (it
    already exists) and the output blocks in flight (those one batch of tiles touches)."""
    config = _config_of(model)
    limit = DEFAULT_MEMORY_LIMIT if memory_limit is None else _positive_int("memory_limit", memory_limit)
    images = _positive_int("images", images)
    dtype = _float_dtype(dtype)
    batch = min(plan.batch_size, images * plan.num_tiles)
    tiles = estimate_tile_memory(config, plan.tile_input, batch, dtype)
    pixels = images * math.prod(plan.image_shape)
    result = 0
    if allocate_result:
        channels = 1 if output_type == "labels" else config.out_channels
        result = pixels * channels * output_dtype(output_type, config.out_channels, dtype).itemsize
    total = tiles + result
    if total > limit:
        fix = "use a smaller tile_size or batch_size"
        if result > tiles:
            fix = "predict fewer images at once" + (", or output_type='labels'" if output_type != "labels" else "")
        raise ValueError(
            f"predicting needs about {_bytes(total)} (tiles: {_bytes(tiles)} for a batch of {batch} tiles of "
            f"{'x'.join(map(str, plan.tile_input))}; result: {_bytes(result)}), more than "
            f"memory_limit={limit} bytes ({_bytes(limit)}); {fix}, or raise memory_limit if the machine has "
            "the memory"
        )
    return total


# ---------------------------------------------------------------------------------------------
# running a plan


def _mirror(positions: torch.Tensor, size: int) -> torch.Tensor:
    """Reflect positions into [0, size) without repeating the edge pixel, periodically."""
    if size == 1:
        return torch.zeros_like(positions)
    period = 2 * (size - 1)
    p = positions.remainder(period)
    return torch.where(p >= size, period - p, p)


@dataclass(frozen=True)
class _AxisTiles:
    """One axis of a plan, per tile position: where to read the input (a contiguous window
    `start, length` of the image, then an optional index for mirrored context), where to write in
    the result, which part of the tile's output to write, and the blend weights (same padding)."""

    read: tuple[tuple[int, int, torch.Tensor | None], ...]
    write: tuple[slice, ...]
    crop: tuple[slice, ...]
    weight: tuple[torch.Tensor | None, ...]


def _window(length: int, blend: Blend) -> torch.Tensor:
    if blend == "constant":
        return torch.ones(length, dtype=torch.float64)
    x = torch.arange(length, dtype=torch.float64) - (length - 1) / 2
    return torch.exp(-0.5 * (x / (GAUSSIAN_SIGMA * length)) ** 2)


def _axis_tiles(
    plan: TilePlan, axis: int, blend: Blend, source: torch.device, work: torch.device, dtype: torch.dtype
) -> _AxisTiles:
    """Indices live on the image's device (`source`), blend weights on the model's (`work`)."""
    size, t_in, t_out = plan.image_shape[axis], plan.tile_input[axis], plan.tile_output[axis]
    starts, halo = plan.starts[axis], plan.halo[axis]
    read, write, crop = [], [], []
    for k, start in enumerate(starts):
        first = start - halo
        if first >= 0 and first + t_in <= size:
            read.append((first, t_in, None))
        else:
            index = _mirror(torch.arange(first, first + t_in), size)
            lo, hi = int(index.min()), int(index.max())
            read.append((lo, hi - lo + 1, (index - lo).to(source)))
        stop = min(start + t_out, size) if plan.padding == "same" or k == len(starts) - 1 else starts[k + 1]
        write.append(slice(start, stop))
        crop.append(slice(0, stop - start))
    weight: list[torch.Tensor | None] = [None] * len(starts)
    if plan.padding == "same":
        window, total = _window(t_out, blend), torch.zeros(size, dtype=torch.float64)
        for w, c in zip(write, crop, strict=True):
            total[w] += window[c]
        weight = [(window[c] / total[w]).to(device=work, dtype=dtype) for w, c in zip(write, crop, strict=True)]
    return _AxisTiles(tuple(read), tuple(write), tuple(crop), tuple(weight))


def _gather(image: torch.Tensor, reads: Sequence[tuple[int, int, torch.Tensor | None]]) -> torch.Tensor:
    """One input tile of `image` (C, *spatial): views of the image where the tile lies inside it,
    an index only along axes that need mirrored context; never more than a tile is copied."""
    x = image
    for axis, (start, length, _) in enumerate(reads, start=1):
        x = x.narrow(axis, start, length)
    for axis, (_, _, index) in enumerate(reads, start=1):
        if index is not None:
            x = x.index_select(axis, index)
    return x


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def check_image(config: UNetConfig, image: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(N, C, *spatial) view of a (C, *spatial) or (N, C, *spatial) image; a clear error if it has the
    wrong number of dims or channels, is empty or complex, or holds values that are NaN or
    infinite once cast to `dtype` (the model's dtype; default: the image's own, floats only), so a
    float64 value beyond float32's range is caught. Reads the image in bounded chunks."""
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"image must be a torch.Tensor, got {type(image).__name__}")
    dims = config.spatial_dims
    if image.dim() not in (dims + 1, dims + 2):
        raise shapes.InputShapeError(
            f"image of shape {tuple(image.shape)} has {image.dim()} dims but spatial_dims={dims} needs "
            f"(C, *spatial) with {dims + 1} dims or (N, C, *spatial) with {dims + 2}"
        )
    x = image if image.dim() == dims + 2 else image.unsqueeze(0)
    if x.shape[1] != config.in_channels:
        raise ValueError(
            f"image of shape {tuple(image.shape)} has {x.shape[1]} channels but in_channels={config.in_channels}"
        )
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


def predict_tiled(
    model: nn.Module,
    image: Any,
    *,
    tile_size: int | Sequence[int] | None = None,
    batch_size: int = 1,
    overlap: float | None = None,
    blend: Blend = "gaussian",
    progress: bool = True,
    device: torch.device | str | None = None,
    memory_budget: int | None = None,
    output_type: OutputType = "logits",
    out: Any = None,
    block_shape: int | Sequence[int] | None = None,
    resume: bool = True,
    journal: str | os.PathLike[str] | None = None,
    callback: Callable[[int, tuple[int, ...]], None] | None = None,
    memory_limit: int | None = None,
) -> Any:
    """Predict an image of any size with a unetgen `UNet`, tile by tile (the overlap-tile strategy).

    `image` is (C, *spatial) or (N, C, *spatial), of any spatial size: a tensor, or any array-like
    that supports slicing (NumPy, a memory-mapped `.npy`, a `zarr` array, a TIFF opened through
    tifffile's zarr store: see `unetgen.arrays.open_image`); an array-like with in_channels=1 may
    also be (*spatial). Array-likes are read one tile window at a time and checked for NaN and
    infinite values as they are read. The result is (out_channels, *spatial) or
    (N, out_channels, *spatial) (labels: without the channel axis): the image's own spatial size.

    Valid padding: output tiles tile the image without overlap, each fed with the output tile
    plus the halo on every side, context outside the image mirrored (reflection without
    repeating the edge pixel, periodic when the image is smaller than the halo: see the module
    docstring). The result equals one forward pass over the whole mirror-padded image.
    Same padding: tiles overlap by `overlap` and are blended with `blend` ("gaussian" or
    "constant") weights that sum to one at every pixel; an image smaller than a tile is mirrored
    up to the next valid size.

    `output_type`: "logits" (the model's output, its dtype), "probabilities" (softmax over the
    channels; sigmoid for one channel) or "labels" (argmax over the channels; logit > 0 for one
    channel; uint8, or uint16 beyond 256 classes; no channel axis). Same padding blends the
    tiles' probabilities (labels: the argmax of the blended probabilities, > 0.5 for one channel).

    `out`: where to write the result, a writable array of the result's shape (a tensor, a NumPy
    array or memmap, a zarr array: `unetgen.arrays.create_output` makes one with aligned chunks);
    it is returned. Without it a tensor is allocated on `device` (default: the image's; CPU for
    array-likes). Tiles are computed on the model's device.

    The output is written in blocks (`block_shape`: output pixels per axis; default: the chunks
    of a zarr `out`, else one output tile with valid padding, and with same padding the whole
    image for a tensor result, `default_block_shape` otherwise). With valid padding a block is
    rounded to whole output tiles; with same padding the tiles overlapping a block's border are
    computed for each block they touch (the same result, at some extra cost). A block is written
    once, when all its tiles are done, so memory holds one batch of tiles and the blocks it
    touches, never the image (docs/large-images.md).

    Resuming: when `out` has a zarr-like `attrs` mapping (or `journal` names a JSON file), the
    completed blocks are recorded there under a fingerprint of the arguments (config, weights,
    plan, blocks, output type and dtype, image shape and dtype; not the image's content), at most
    every second and when the run stops. A run started again with the same arguments skips the
    recorded blocks and completes with the result of an uninterrupted run (bit for bit with
    `batch_size=1`; batches may be grouped differently otherwise, a float round-off difference);
    a record with another fingerprint is an error unless `resume=False`, which starts over.

    `callback(n, tile)` is called after each tile (and after the block it completes is written);
    an exception from it stops the run (the record keeps the blocks completed so far).
    `tile_size`, `batch_size`, `overlap` and `memory_budget` are as in `plan_tiles` (which shows
    the plan without running). Before anything is allocated, `check_memory` estimates one batch
    of tiles plus the result (when no `out` is given) and refuses (`ValueError`, with the
    estimate) above `memory_limit` bytes (default `DEFAULT_MEMORY_LIMIT`, 16 GiB). Every option
    is checked first (a `ValueError` naming it). Runs under `torch.inference_mode()` in eval
    mode, then restores the model's training mode. A tqdm progress bar counts the tiles when
    `progress` is on and stderr is a terminal.
    """
    options = dict(tile_size=tile_size, batch_size=batch_size, overlap=overlap, memory_budget=memory_budget)
    job, source, sink = prepare(
        model,
        image,
        out,
        **options,
        blend=blend,
        output_type=output_type,
        block_shape=block_shape,
        device=device,
        memory_limit=memory_limit,
    )
    record = None
    if journal is not None or _has_attrs(sink.target):
        where = Path(journal) if journal is not None else sink.target.attrs
        record = Journal(where, job.fingerprint(model), job.num_blocks, resume=resume)
    run(model, job, source, sink, journal=record, callback=callback, progress=progress)
    return sink.target if out is not None or job.batched else sink.target[0]


# ---------------------------------------------------------------------------------------------
# reading tiles, writing blocks


def _has_attrs(target: Any) -> bool:
    return isinstance(getattr(target, "attrs", None), MutableMapping)


def output_dtype(output_type: OutputType, out_channels: int, dtype: torch.dtype = torch.float32) -> torch.dtype:
    """The dtype of a prediction of `output_type`: the model's dtype, or uint8/uint16 labels."""
    match output_type:
        case "logits" | "probabilities":
            return dtype
        case "labels":
            if out_channels > 1 << 16:
                raise ValueError(f"output_type='labels' holds at most 65536 classes, the model has {out_channels}")
            return torch.uint8 if out_channels <= 256 else torch.uint16
    raise ValueError(f"output_type={output_type!r} must be 'logits', 'probabilities' or 'labels'")


def _probabilities(logits: torch.Tensor, channel_axis: int) -> torch.Tensor:
    return logits.sigmoid() if logits.shape[channel_axis] == 1 else logits.softmax(channel_axis)


def _finish(values: torch.Tensor, output_type: OutputType, blended: bool) -> torch.Tensor:
    """A finished block (C, *block) as `output_type`. `values` are logits, or (`blended`: same
    padding, output_type not logits) the blended per-tile probabilities. Labels lose the channel
    axis: the argmax over the channels, or for one channel logit > 0 (probability > 0.5)."""
    match output_type:
        case "logits":
            return values
        case "probabilities":
            return values if blended else _probabilities(values, 0)
        case "labels":
            labels = values.argmax(0) if values.shape[0] > 1 else values[0] > (0.5 if blended else 0)
            return labels.to(output_dtype("labels", values.shape[0]))
    raise AssertionError(output_type)


class TensorSource:
    """Tiles of an (N, C, *spatial) tensor: views, an index only along axes with mirrored context."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self.device = x.device

    def read(self, n: int, reads: Sequence[tuple[int, int, torch.Tensor | None]]) -> torch.Tensor:
        return _gather(self.x[n], reads)


class ArraySource:
    """Tiles of an array-like that supports slicing: each tile reads one window (the part of the
    tile inside the image) and builds the mirrored context from it, checking it for NaN/inf
    after the cast to the model's dtype."""

    device = torch.device("cpu")

    def __init__(self, array: Any, batched: bool, channels: bool, dtype: torch.dtype) -> None:
        self.array, self.batched, self.channels, self.dtype = array, batched, channels, dtype

    def read(self, n: int, reads: Sequence[tuple[int, int, torch.Tensor | None]]) -> torch.Tensor:
        window = tuple(slice(start, start + length) for start, length, _ in reads)
        lead = ((n,) if self.batched else ()) + ((slice(None),) if self.channels else ())
        w = np.ascontiguousarray(self.array[(*lead, *window)])
        x = torch.from_numpy(w if w.dtype.isnative else w.astype(w.dtype.newbyteorder("=")))
        x = (x if self.channels else x.unsqueeze(0)).to(self.dtype)
        if x.is_floating_point() and not torch.isfinite(x).all():
            where = ", ".join(f"{s.start}:{s.stop}" for s in window)
            raise ValueError(f"image window [{where}] contains NaN or infinite values (after the cast to {self.dtype})")
        for axis, (_, _, index) in enumerate(reads, start=1):
            if index is not None:
                x = x.index_select(axis, index)
        return x


class Sink:
    """Writes finished blocks into `target` ((N, ...) for batched images): a tensor (blocks of
    logits are accumulated in place) or an array-like that supports slice assignment."""

    def __init__(self, target: Any, batched: bool, in_place: bool) -> None:
        self.target, self.batched, self.in_place = target, batched, in_place
        self.device = target.device if isinstance(target, torch.Tensor) else torch.device("cpu")

    def _index(self, n: int, region: Sequence[slice]) -> tuple[Any, ...]:
        return ((n,) if self.batched else ()) + (Ellipsis, *region)

    def view(self, n: int, region: Sequence[slice]) -> torch.Tensor | None:
        """The block of the result itself, to accumulate into (tensor targets of logits)."""
        return self.target[self._index(n, region)] if self.in_place else None

    def write(self, n: int, region: Sequence[slice], value: torch.Tensor) -> None:
        if self.in_place:
            return
        if isinstance(self.target, torch.Tensor):
            self.target[self._index(n, region)] = value.to(self.device)
        else:
            value = value.float() if value.dtype == torch.bfloat16 else value
            self.target[self._index(n, region)] = value.cpu().numpy()


@dataclass(frozen=True)
class _AxisBlocks:
    """One axis of the block layout: block j covers output [bounds[j], bounds[j+1]) and needs
    the tiles `tiles[j]` (with valid padding exactly its own tiles, with same padding every tile
    whose output meets it)."""

    bounds: tuple[int, ...]
    tiles: tuple[range, ...]


def _axis_blocks(plan: TilePlan, axis: int, length: int) -> _AxisBlocks:
    size, starts, t_out = plan.image_shape[axis], plan.starts[axis], plan.tile_output[axis]
    count = len(starts)
    if plan.padding == "valid":  # whole tiles: a block ends where a tile's output ends
        group = max(1, length // (starts[1] - starts[0])) if count > 1 else 1
        firsts = range(0, count, group)
        bounds = (*(starts[k] for k in firsts), size)
        return _AxisBlocks(bounds, tuple(range(k, min(k + group, count)) for k in firsts))
    bounds = (*range(0, size, length), size)
    tiles = tuple(  # tile k writes [starts[k], starts[k] + t_out): it meets [lo, hi) if it starts in (lo - t_out, hi)
        range(bisect.bisect_right(starts, lo - t_out), bisect.bisect_left(starts, hi))
        for lo, hi in itertools.pairwise(bounds)
    )
    return _AxisBlocks(bounds, tiles)


def default_block_shape(plan: TilePlan, max_pixels: int = 1 << 24) -> tuple[int, ...]:
    """Output pixels per block when neither `block_shape` nor zarr chunks say: one output tile
    with valid padding (no extra work); with same padding 8 tile strides per axis (the tiles on a
    block's border are computed for both blocks), halving the longest axis (not below a tile)
    while the block has more than `max_pixels`."""
    if plan.padding == "valid":
        return tuple(s[1] - s[0] if len(s) > 1 else n for s, n in zip(plan.starts, plan.image_shape, strict=True))
    shape = [
        min(size, 8 * (s[1] - s[0] if len(s) > 1 else t))
        for size, t, s in zip(plan.image_shape, plan.tile_output, plan.starts, strict=True)
    ]
    while math.prod(shape) > max_pixels:
        floor = [min(t, n) for t, n in zip(plan.tile_output, plan.image_shape, strict=True)]
        shrinkable = [a for a, v in enumerate(shape) if v // 2 >= floor[a]]
        if not shrinkable:
            break
        a = max(shrinkable, key=shape.__getitem__)
        shape[a] //= 2
    return tuple(shape)


@dataclass(frozen=True)
class Job:
    """A plan with its block layout and options: what `run` executes, block by block. Blocks are
    numbered image by image, then in C order over the per-axis blocks."""

    plan: TilePlan
    axes: tuple[_AxisTiles, ...]
    blocks: tuple[_AxisBlocks, ...]
    images: int
    batched: bool
    blend: Blend
    output_type: OutputType
    out_shape: tuple[int, ...]
    out_dtype: str
    image_dtype: str

    @property
    def blocks_per_axis(self) -> tuple[int, ...]:
        return tuple(len(b.tiles) for b in self.blocks)

    @property
    def num_blocks(self) -> int:
        return self.images * math.prod(self.blocks_per_axis)

    def block(self, b: int) -> tuple[int, tuple[slice, ...], tuple[range, ...]]:
        """Block `b`: its image, its output region and its tiles per axis."""
        n, rest = divmod(b, math.prod(self.blocks_per_axis))
        index = []
        for count in reversed(self.blocks_per_axis):
            rest, k = divmod(rest, count)
            index.append(k)
        index.reverse()
        region = tuple(slice(ax.bounds[k], ax.bounds[k + 1]) for ax, k in zip(self.blocks, index, strict=True))
        return n, region, tuple(ax.tiles[k] for ax, k in zip(self.blocks, index, strict=True))

    def num_tiles(self, b: int) -> int:
        return math.prod(len(r) for r in self.block(b)[2])

    def group(self, b: int) -> int:
        """The group of block `b`: `batch_size` consecutive blocks, batched together (see `run`)."""
        return b // self.plan.batch_size

    def members(self, group: int) -> range:
        size = self.plan.batch_size
        return range(group * size, min((group + 1) * size, self.num_blocks))

    def tiles(self, group: int) -> Iterator[tuple[int, int, tuple[slice, ...], tuple[int, ...]]]:
        """(block, image, region, tile) for every tile of every block of `group`, in order."""
        for b in self.members(group):
            n, region, tiles = self.block(b)
            for tile in itertools.product(*tiles):
                yield b, n, region, tile

    def fingerprint(self, model: nn.Module) -> str:
        """sha256 of everything the result depends on, the image's content aside: config, weights,
        plan, blocks, options, image and output shapes and dtypes."""
        plan = self.plan
        h = hashlib.sha256()
        facts = dict(
            config=_config_of(model).model_dump(mode="json"),
            image_shape=plan.image_shape,
            tile_input=plan.tile_input,
            starts=[list(s) for s in plan.starts],
            batch_size=plan.batch_size,
            bounds=[list(b.bounds) for b in self.blocks],
            images=self.images,
            blend=self.blend if plan.padding == "same" else None,
            output_type=self.output_type,
            out_shape=self.out_shape,
            out_dtype=self.out_dtype,
            image_dtype=self.image_dtype,
        )
        h.update(json.dumps(facts, sort_keys=True).encode())
        for name, tensor in sorted(model.state_dict().items()):
            h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            h.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()


def _open_source(config: UNetConfig, image: Any, dtype: torch.dtype) -> tuple[TensorSource | ArraySource, bool, int]:
    """The source of tiles, whether the image has a batch axis, and its number of images."""
    if isinstance(image, torch.Tensor):
        x = check_image(config, image, dtype)
        return TensorSource(x), image.dim() == config.spatial_dims + 2, x.shape[0]
    batched, channels, images, _ = _array_layout(config, image)
    return ArraySource(image, batched, channels, dtype), batched, images


def _spatial(config: UNetConfig, image: Any) -> tuple[int, ...]:
    return tuple(image.shape[-config.spatial_dims :])


def output_layout(
    model: nn.Module,
    image: Any,
    *,
    output_type: OutputType = "logits",
    block_shape: int | Sequence[int] | None = None,
    plan: TilePlan | None = None,
    **options: Any,
) -> tuple[tuple[int, ...], torch.dtype, tuple[int, ...]]:
    """Shape, dtype and chunks (one chunk per block: see `predict_tiled`) of the prediction of
    `image`, without reading it: what `unetgen.arrays.create_output` creates. `options` are
    `plan_tiles`'s (`tile_size`, `batch_size`, `overlap`, `memory_budget`)."""
    config = _config_of(model)
    dtype = next(model.parameters()).dtype
    _, batched, images = _open_source(config, image, dtype)
    spatial = _spatial(config, image)
    plan = plan if plan is not None else plan_tiles(config, spatial, **options, dtype=dtype)
    channels = () if output_type == "labels" else (config.out_channels,)
    block = _positive_ints(
        "block_shape", default_block_shape(plan) if block_shape is None else block_shape, len(spatial), broadcast=True
    )
    lengths = []
    for a in range(len(spatial)):
        bounds = _axis_blocks(plan, a, block[a]).bounds
        lengths.append(bounds[1] - bounds[0])
    lead = (images,) if batched else ()
    shape = lead + channels + spatial
    chunks = (1,) * len(lead) + channels + tuple(lengths)
    return shape, output_dtype(output_type, config.out_channels, dtype), chunks


def prepare(
    model: nn.Module,
    image: Any,
    out: Any = None,
    *,
    tile_size: int | Sequence[int] | None = None,
    batch_size: int = 1,
    overlap: float | None = None,
    memory_budget: int | None = None,
    blend: Blend = "gaussian",
    output_type: OutputType = "logits",
    block_shape: int | Sequence[int] | None = None,
    device: torch.device | str | None = None,
    plan: TilePlan | None = None,
    memory_limit: int | None = None,
) -> tuple[Job, TensorSource | ArraySource, Sink]:
    """Check the arguments of `predict_tiled` and plan the work (the tiles, the blocks, where to
    read and write) without running the model; `plan` skips planning (workers get the client's).
    The memory estimate (`check_memory`) is checked before anything is allocated."""
    config = _config_of(model)
    dims = config.spatial_dims
    if blend not in ("gaussian", "constant"):
        raise ValueError(f"blend={short_repr(blend)} must be 'gaussian' or 'constant'")
    if output_type not in ("logits", "probabilities", "labels"):
        raise ValueError(f"output_type={short_repr(output_type)} must be 'logits', 'probabilities' or 'labels'")
    try:
        target = None if device is None else torch.device(device)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"device={short_repr(device)} is not a torch device: {err}") from None
    param = next(model.parameters())
    dtype, work = param.dtype, param.device
    final = output_dtype(output_type, config.out_channels, dtype)
    source, batched, images = _open_source(config, image, dtype)
    spatial = _spatial(config, image)
    options = dict(tile_size=tile_size, batch_size=batch_size, overlap=overlap, memory_budget=memory_budget)
    plan = plan if plan is not None else plan_tiles(config, spatial, **options, dtype=dtype)
    if plan.image_shape != spatial:
        raise ValueError(f"the plan is for an image of {plan.image_shape}, the image is {spatial}")
    check_memory(
        config,
        plan,
        images=images,
        output_type=output_type,
        dtype=dtype,
        memory_limit=memory_limit,
        allocate_result=out is None,
    )
    channels_out = () if output_type == "labels" else (config.out_channels,)
    shape = ((images,) if batched else ()) + channels_out + spatial
    if out is None:  # a tensor with the batch axis (predict_tiled drops it for a (C, *spatial) image)
        target = source.device if target is None else target
        out = torch.zeros((images, *shape[batched:]), dtype=final, device=target)
        in_place, batched_out = output_type == "logits", True
    else:
        _check_out(out, shape, output_type, config.out_channels)
        in_place, batched_out = False, batched
    if block_shape is None:
        chunks = getattr(out, "chunks", None)
        block_shape = tuple(chunks[-dims:]) if _is_int_tuple(chunks) else default_block_shape(plan)
        if in_place and plan.padding == "same":
            block_shape = spatial  # blend in place: nothing computed twice
    block = _positive_ints("block_shape", block_shape, dims, broadcast=True)
    axes = tuple(_axis_tiles(plan, a, blend, source.device, work, dtype) for a in range(dims))
    blocks = tuple(_axis_blocks(plan, a, block[a]) for a in range(dims))
    image_dtype = (
        str(image.dtype).removeprefix("torch.") if isinstance(image, torch.Tensor) else str(np.dtype(image.dtype))
    )
    out_dtype = str(out.dtype).removeprefix("torch.") if isinstance(out, torch.Tensor) else str(np.dtype(out.dtype))
    job = Job(plan, axes, blocks, images, batched, blend, output_type, tuple(out.shape), out_dtype, image_dtype)
    return job, source, Sink(out, batched_out, in_place)


def _is_int_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and all(isinstance(v, int) for v in value)


def _array_layout(config: UNetConfig, image: Any) -> tuple[bool, bool, int, tuple[int, ...]]:
    """(batched, has a channel axis, images, spatial shape) of an array-like image, or a clear error."""
    dims = config.spatial_dims
    shape = getattr(image, "shape", None)
    if not _is_int_tuple(tuple(shape) if shape is not None else None) or not hasattr(image, "__getitem__"):
        raise TypeError(f"image must be a tensor or an array-like with shape, dtype and slicing, got {type(image)}")
    shape = tuple(shape)
    kind = np.dtype(image.dtype).kind
    if kind not in "biuf":
        raise ValueError(f"image of dtype {image.dtype} cannot be predicted: give real numbers (bool, int or float)")
    if len(shape) == dims + 2:
        batched, channels, images, c = True, True, shape[0], shape[1]
    elif len(shape) == dims + 1:
        batched, channels, images, c = False, True, 1, shape[0]
    elif len(shape) == dims and config.in_channels == 1:
        batched, channels, images, c = False, False, 1, 1
    else:
        raise shapes.InputShapeError(
            f"image of shape {shape} has {len(shape)} dims but spatial_dims={dims} needs (C, *spatial) with "
            f"{dims + 1} dims or (N, C, *spatial) with {dims + 2}"
            + (" or (*spatial)" if config.in_channels == 1 else "")
        )
    if c != config.in_channels:
        raise ValueError(f"image of shape {shape} has {c} channels but in_channels={config.in_channels}")
    if math.prod(shape) == 0:
        raise ValueError(f"image of shape {shape} is empty")
    return batched, channels, images, shape[-dims:]


def _check_out(out: Any, shape: tuple[int, ...], output_type: OutputType, out_channels: int) -> None:
    got = tuple(getattr(out, "shape", ()))
    if got != shape or not hasattr(out, "__setitem__"):
        raise ValueError(
            f"out of shape {got} cannot hold the {output_type} of this image: it must be a writable array of "
            f"shape {shape} (unetgen.arrays.create_output makes one)"
        )
    if isinstance(out, torch.Tensor):
        kind = "f" if out.is_floating_point() else "b" if out.dtype == torch.bool else "i"
        top = torch.iinfo(out.dtype).max if kind == "i" else None
    else:
        kind, top = np.dtype(out.dtype).kind, None
        top = np.iinfo(out.dtype).max if kind in "iu" else None
    if output_type != "labels" and kind != "f":
        raise ValueError(f"out of dtype {out.dtype} cannot hold {output_type}: use a float dtype")
    if output_type == "labels" and (top is None or top < max(out_channels - 1, 1)):
        raise ValueError(f"out of dtype {out.dtype} cannot hold labels of {out_channels} classes: use uint8 or uint16")


def run(
    model: nn.Module,
    job: Job,
    source: TensorSource | ArraySource,
    sink: Sink,
    *,
    todo: Iterable[int] | None = None,
    journal: Journal | None = None,
    callback: Callable[[int, tuple[int, ...]], None] | None = None,
    progress: bool = True,
) -> None:
    """Predict the blocks `todo` (default: all not in `journal`) of `job`: the one tile loop.

    Blocks go in groups of `batch_size` consecutive blocks (`Job.group`); the tiles of a group
    stream block after block through batches of `batch_size` that never span groups, so a tile
    is always computed in the same batch, whichever blocks were done before (resumed runs and
    Dask tasks, which take whole groups, give the result of one uninterrupted run bit for bit).
    Each tile's output is put (valid padding) or added with its blend weights (same padding)
    into the buffers of the blocks it meets; a block is converted to the output type and
    written when its last tile is in, then recorded in `journal`. A group with a block missing
    is computed whole. In flight: one batch of tiles and the blocks it touches."""
    plan = job.plan
    groups = sorted({job.group(b) for b in (range(job.num_blocks) if todo is None else todo)})
    if journal is not None:
        groups = [g for g in groups if not all(b in journal for b in job.members(g))]
    blocks = [b for g in groups for b in job.members(g)]
    param = next(model.parameters())
    dtype, work = param.dtype, param.device
    blended = plan.padding == "same" and job.output_type != "logits"
    total = sum(job.num_tiles(b) for b in blocks)
    channels = _config_of(model).in_channels
    buffer = torch.empty((max(1, min(plan.batch_size, total)), channels, *plan.tile_input), dtype=dtype, device=work)
    open_blocks: dict[int, list[Any]] = {}
    was_training = model.training
    model.eval()
    quiet = not progress or not sys.stderr.isatty()
    try:
        with torch.inference_mode(), tqdm(total=total, unit="tile", desc="predict", disable=quiet) as bar:
            batches = (chunk for g in groups for chunk in _batches(job.tiles(g), plan.batch_size))
            for chunk in batches:
                for j, (_, n, _, tile) in enumerate(chunk):
                    buffer[j].copy_(source.read(n, [job.axes[a].read[k] for a, k in enumerate(tile)]))
                pred = model(buffer[: len(chunk)])
                if blended:  # same padding blends probabilities (labels: their argmax)
                    pred = _probabilities(pred, 1)
                for j, (b, n, region, tile) in enumerate(chunk):
                    if b not in open_blocks:
                        view = sink.view(n, region)
                        if view is None:
                            size = tuple(r.stop - r.start for r in region)
                            view = torch.zeros((pred.shape[1], *size), dtype=dtype, device=sink.device)
                        open_blocks[b] = [view, job.num_tiles(b)]
                    state = open_blocks[b]
                    _put(state[0], pred[j], job.axes, tile, region, plan.starts)
                    state[1] -= 1
                    if state[1] == 0:
                        del open_blocks[b]
                        sink.write(n, region, _finish(state[0], job.output_type, blended))
                        if journal is not None:
                            journal.mark(b)
                    if callback is not None:
                        callback(n, tile)
                bar.update(len(chunk))
    finally:
        model.train(was_training)
        if journal is not None:
            journal.flush()


def _put(
    block: torch.Tensor,
    pred: torch.Tensor,
    axes: Sequence[_AxisTiles],
    tile: Sequence[int],
    region: Sequence[slice],
    starts: Sequence[Sequence[int]],
) -> None:
    """Put one tile's prediction (out_channels, *tile_output) into a block (out_channels, *block)
    covering `region` of the image: the part where the tile's output region meets the block."""
    src, dst, weights = [slice(None)], [slice(None)], []
    for a, k in enumerate(tile):
        start, write = starts[a][k], axes[a].write[k]
        lo, hi = max(write.start, region[a].start), min(write.stop, region[a].stop)
        src.append(slice(lo - start, hi - start))
        dst.append(slice(lo - region[a].start, hi - region[a].start))
        weight = axes[a].weight[k]
        weights.append(None if weight is None else weight[lo - start : hi - start])
    part = pred[tuple(src)]
    if weights[0] is None:
        block[tuple(dst)] = part
        return
    dims = len(axes)
    for a, w in enumerate(weights):
        part = part * w.view(-1, *([1] * (dims - 1 - a)))
    block[tuple(dst)] += part.to(block.device)


class Journal:
    """Which blocks of an output are complete, under a fingerprint of the prediction's arguments:
    a JSON record in a zarr-like `attrs` mapping (key `unetgen_progress`) or a JSON file, written
    (atomically: zarr stores and `os.replace`) at most every `interval` seconds and on `flush`."""

    KEY = "unetgen_progress"
    INTERVAL = 1.0
    """Default seconds between writes of the record (blocks completed since are redone after a kill)."""

    def __init__(
        self,
        where: MutableMapping[str, Any] | Path,
        fingerprint: str,
        total: int,
        *,
        resume: bool = True,
        interval: float | None = None,
    ) -> None:
        self.where, self.fingerprint, self.total = where, fingerprint, total
        self.interval = self.INTERVAL if interval is None else interval
        self.done = bytearray(-(-total // 8))
        record = self._load()
        if record is not None and resume:
            if record.get("fingerprint") != fingerprint or record.get("blocks") != total:
                raise ValueError(
                    f"{self._name()} holds a prediction made with other arguments (another model, plan, "
                    "output type or image shape): pass resume=False (CLI: --restart) to overwrite it, "
                    "or write to another output"
                )
            self.done = bytearray(zlib.decompress(base64.b64decode(record["done"])))
        self.dirty, self.last = True, 0.0
        try:
            self.flush()  # before any compute: an unwritable record fails now
        except OSError as err:
            raise ValueError(f"{self._name()}: cannot write the progress record: {err}") from None

    def _name(self) -> str:
        return str(self.where) if isinstance(self.where, Path) else "the output's attributes"

    def _load(self) -> dict[str, Any] | None:
        if isinstance(self.where, Path):
            try:
                return json.loads(self.where.read_text())
            except FileNotFoundError:
                return None
            except (OSError, ValueError) as err:
                raise ValueError(f"{self.where}: not a unetgen progress record: {err}") from None
        record = self.where.get(self.KEY)
        return dict(record) if isinstance(record, Mapping) else None

    def __contains__(self, b: int) -> bool:
        return bool(self.done[b >> 3] & (1 << (b & 7)))

    @property
    def completed(self) -> int:
        return sum(bin(v).count("1") for v in self.done)

    def mark(self, b: int) -> None:
        self.done[b >> 3] |= 1 << (b & 7)
        self.dirty = True
        if time.monotonic() - self.last >= self.interval:
            self.flush()

    def flush(self) -> None:
        if not self.dirty:
            return
        record = {
            "fingerprint": self.fingerprint,
            "blocks": self.total,
            "completed": self.completed,
            "done": base64.b64encode(zlib.compress(bytes(self.done))).decode(),
        }
        if isinstance(self.where, Path):
            tmp = self.where.with_name(f".{self.where.name}.tmp")
            tmp.write_text(json.dumps(record))
            os.replace(tmp, self.where)
        else:
            self.where[self.KEY] = record
        self.dirty, self.last = False, time.monotonic()
