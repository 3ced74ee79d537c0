"""Tiles and blocks on a plan, per axis: where each tile reads its input (mirrored context
outside the image), where its output goes and with which blend weights, and which tiles each
output block needs.

Mirroring is reflection without repeating the edge pixel (torch's and NumPy's ``reflect``):
``... 2 1 | 0 1 2 ... n-1 | n-2 n-3 ...``. When the image is smaller than the context needed,
the reflection repeats (the image is unfolded periodically with period ``2*(n-1)``, as NumPy's
``np.pad(mode="reflect")`` does); an axis of size 1 is repeated.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .options import Blend
from .tileplan import TilePlan

__all__ = [
    "GAUSSIAN_SIGMA",
    "AxisBlocks",
    "AxisTiles",
    "axis_blocks",
    "axis_tiles",
    "default_block_shape",
    "gather",
]

GAUSSIAN_SIGMA = 0.125
"""Standard deviation of the Gaussian blend window, as a fraction of the tile size."""


def _mirror(positions: torch.Tensor, size: int) -> torch.Tensor:
    """Reflect positions into [0, size) without repeating the edge pixel, periodically."""
    if size == 1:
        return torch.zeros_like(positions)
    period = 2 * (size - 1)
    p = positions.remainder(period)
    return torch.where(p >= size, period - p, p)


@dataclass(frozen=True)
class AxisTiles:
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


def axis_tiles(
    plan: TilePlan, axis: int, blend: Blend, source: torch.device, work: torch.device, dtype: torch.dtype
) -> AxisTiles:
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
    return AxisTiles(tuple(read), tuple(write), tuple(crop), tuple(weight))


def gather(image: torch.Tensor, reads: Sequence[tuple[int, int, torch.Tensor | None]]) -> torch.Tensor:
    """One input tile of `image` (C, *spatial): views of the image where the tile lies inside it,
    an index only along axes that need mirrored context; never more than a tile is copied."""
    x = image
    for axis, (start, length, _) in enumerate(reads, start=1):
        x = x.narrow(axis, start, length)
    for axis, (_, _, index) in enumerate(reads, start=1):
        if index is not None:
            x = x.index_select(axis, index)
    return x


@dataclass(frozen=True)
class AxisBlocks:
    """One axis of the block layout: block j covers output [bounds[j], bounds[j+1]) and needs
    the tiles `tiles[j]` (with valid padding exactly its own tiles, with same padding every tile
    whose output meets it)."""

    bounds: tuple[int, ...]
    tiles: tuple[range, ...]


def axis_blocks(plan: TilePlan, axis: int, length: int) -> AxisBlocks:
    size, starts, t_out = plan.image_shape[axis], plan.starts[axis], plan.tile_output[axis]
    count = len(starts)
    if plan.padding == "valid":  # whole tiles: a block ends where a tile's output ends
        group = max(1, length // (starts[1] - starts[0])) if count > 1 else 1
        firsts = range(0, count, group)
        bounds = (*(starts[k] for k in firsts), size)
        return AxisBlocks(bounds, tuple(range(k, min(k + group, count)) for k in firsts))
    bounds = (*range(0, size, length), size)
    tiles = tuple(  # tile k writes [starts[k], starts[k] + t_out): it meets [lo, hi) if it starts in (lo - t_out, hi)
        range(bisect.bisect_right(starts, lo - t_out), bisect.bisect_left(starts, hi))
        for lo, hi in itertools.pairwise(bounds)
    )
    return AxisBlocks(bounds, tiles)


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
