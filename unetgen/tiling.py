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

import itertools
import math
import operator
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from tqdm import tqdm

from . import shapes
from .config import UNetConfig

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "DEFAULT_OVERLAP",
    "TilePlan",
    "check_image",
    "estimate_tile_memory",
    "plan_tiles",
    "predict_tiled",
]

DEFAULT_MEMORY_BUDGET = 1 << 30
"""Bytes of activations that one batch of tiles may use when the tile size is chosen automatically."""
DEFAULT_OVERLAP = 0.25
"""Fraction of a tile shared with its neighbour, for same padding."""
GAUSSIAN_SIGMA = 0.125
"""Standard deviation of the Gaussian blend window, as a fraction of the tile size."""

Blend = Literal["gaussian", "constant"]
_CANDIDATES = 256  # tile sizes the automatic plan compares at most


@dataclass(frozen=True)
class TilePlan:
    """How `predict_tiled` covers an image with tiles. Inspect it with `plan_tiles` before running."""

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
    starts: tuple[tuple[int, ...], ...]
    """Per axis, where each tile's output begins in image coordinates; its input begins `halo` earlier."""
    overlap: float
    """Requested overlap between neighbouring tiles (same padding; 0 for valid padding)."""
    batch_size: int
    """Tiles run through the network at once."""
    memory_bytes: int
    """Estimated peak activation memory of one batch of tiles (not counting the image and the result)."""
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
            f"~{self.memory_bytes / 2**20:.0f} MiB per batch of {self.batch_size}"
        )


def estimate_tile_memory(
    config: UNetConfig, tile_input: Sequence[int], batch_size: int = 1, dtype: torch.dtype = torch.float32
) -> int:
    """Estimated peak activation bytes of one forward pass in inference mode over `batch_size`
    tiles, from `shapes.trace`: the input tile, every skip map (all are held until the pass ends)
    and the largest layer step, counted as its input twice (CPU convolutions copy their input
    into a blocked layout) plus its output. On CPU the measured peak of the paper's network is
    within 10% of this (see docs/tiling.md); fixed costs (weights, libraries) are not included."""
    rows = shapes.trace(config, tuple(tile_input))
    sizes = [r.channels * math.prod(r.shape) for r in rows]
    skips = sum(sizes[k - 1] for k, r in enumerate(rows) if r.name.startswith("down"))
    step = max(2 * a + b for a, b in itertools.pairwise(sizes))
    return (sizes[0] + skips + step) * batch_size * dtype.itemsize


def _positive_ints(name: str, value: int | Sequence[int], dims: int, *, broadcast: bool) -> tuple[int, ...]:
    """`value` as `dims` positive ints (an int is repeated when `broadcast`), or a clear error."""
    try:
        values = (operator.index(value),) * dims if broadcast and not isinstance(value, Sequence) else tuple(value)
        values = tuple(operator.index(v) for v in values)
    except TypeError:
        values = ()
    if len(values) != dims or min(values) < 1:
        one = "a positive int or " if broadcast else ""
        raise ValueError(f"{name}={value!r} must be {one}{dims} positive ints (one per spatial axis)")
    return values


def _valid_axis(config: UNetConfig, axis: int, size: int, tile: int) -> tuple[int, tuple[int, ...]]:
    """Valid padding, one axis: the smallest valid input tile that covers `size` output pixels with
    as many tiles as `tile` needs, and the output start of each tile (multiples of the period)."""
    rule = shapes.axis_rule(config, axis)
    period = rule.period

    def out(t: int) -> int:
        o = rule.output(t)
        assert o is not None
        return o

    def step(t: int) -> int:  # tiles must start on the pooling grid: a multiple of the period
        return out(t) - out(t) % period

    count = 1
    if out(tile) < size:
        tile = max(tile, shapes.input_size_for_output(config, period, axis=axis))
        count = 1 + -(-(size - out(tile)) // step(tile))
    t = shapes.input_size_for_output(config, -(-size // count), axis=axis)
    while (count - 1) * step(t) + out(t) < size:
        t += period
    return t, tuple(k * step(t) for k in range(count))


def _same_axis(config: UNetConfig, axis: int, size: int, tile: int, overlap: float) -> tuple[int, tuple[int, ...]]:
    """Same padding, one axis: tiles of `tile` evenly spread over the image, overlapping by at
    least `overlap`; one tile of the smallest valid size covering the image if that is smaller."""
    if tile >= size:
        return shapes.nearest_valid_input_size(config, size, direction="up", axis=axis), (0,)
    stride = max(1, math.floor(tile * (1 - overlap)))
    count = 1 + -(-(size - tile) // stride)
    return tile, tuple(round(k * (size - tile) / (count - 1)) for k in range(count))


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
    axes = []
    for axis, (size, t) in enumerate(zip(image_shape, tile, strict=True)):
        if config.padding == "valid":
            axes.append(_valid_axis(config, axis, size, t))
        else:
            axes.append(_same_axis(config, axis, size, t, overlap))
    tile_input = tuple(t for t, _ in axes)
    return TilePlan(
        image_shape=image_shape,
        padding=config.padding,
        tile_input=tile_input,
        tile_output=shapes.output_shape(config, tile_input),
        halo=shapes.halo(config),
        starts=tuple(s for _, s in axes),
        overlap=overlap,
        batch_size=batch_size,
        memory_bytes=estimate_tile_memory(config, tile_input, batch_size, dtype),
        memory_budget=budget,
    )


def _auto_plan(
    config: UNetConfig,
    image_shape: tuple[int, ...],
    overlap: float,
    batch_size: int,
    budget: int,
    dtype: torch.dtype,
) -> TilePlan:
    """The plan with the fewest computed pixels whose memory estimate fits `budget` (the smallest
    tile if none fits). Candidates: tiles of about L pixels per axis for valid sizes L (at most
    `_CANDIDATES`, geometrically spaced), each axis capped at the tile that covers it whole."""
    dims = config.spatial_dims
    covers = [_cover(config, a, s) for a, s in enumerate(image_shape)]
    ranges = {shapes.valid_input_sizes(config, covers[a], axis=a) for a in range(dims)}  # O(1) each
    lengths = sorted({v for r in ranges for v in _geometric(r)})
    plans: dict[tuple[int, ...], TilePlan] = {}
    for length in sorted(set(lengths) | set(covers)):
        tile = []
        for a in range(dims):
            smallest = shapes.axis_rule(config, a).min_size
            t = shapes.nearest_valid_input_size(config, length, direction="down", axis=a) if length >= smallest else 0
            tile.append(min(covers[a], max(t, smallest)))
        if tuple(tile) not in plans:
            plans[tuple(tile)] = plan = _plan(config, image_shape, tuple(tile), overlap, batch_size, budget, dtype)
            if estimate_tile_memory(config, tile, batch_size, dtype) > budget and plan.memory_bytes > budget:
                break  # larger tiles need more memory still
    fitting = [p for p in plans.values() if p.memory_bytes <= budget]
    if not fitting:
        return min(plans.values(), key=lambda p: p.memory_bytes)
    return min(fitting, key=lambda p: (p.num_tiles * math.prod(p.tile_input), p.num_tiles))


def _geometric(sizes: range) -> Sequence[int]:
    """At most `_CANDIDATES` + 2 of `sizes`, geometrically spaced by index (all if fewer)."""
    if len(sizes) <= _CANDIDATES:
        return sizes
    last = len(sizes) - 1
    return [sizes[round(last ** (k / _CANDIDATES))] for k in range(_CANDIDATES + 1)] + [sizes[0]]


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
    that a tile grows to cover an image smaller than it, and to output at least one pooling
    period when several tiles are needed). With same padding, tiles of `tile_size` overlap by at
    least `overlap` (default `DEFAULT_OVERLAP`).

    `tile_size=None` chooses the tile with the fewest computed pixels whose estimated memory
    (`estimate_tile_memory` for `batch_size` tiles of `dtype`) fits `memory_budget` (default
    `DEFAULT_MEMORY_BUDGET`, 1 GiB); if none fits, the smallest valid tile.
    """
    config = _config_of(model)
    dims = config.spatial_dims
    image_shape = _positive_ints("image_shape", image_shape, dims, broadcast=False)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int")
    if config.padding == "valid":
        if overlap not in (None, 0):
            raise ValueError(
                f"overlap={overlap} applies to padding='same' only; valid-padding tiles are exact without overlap"
            )
        overlap = 0.0
    else:
        overlap = DEFAULT_OVERLAP if overlap is None else overlap
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap={overlap} must be in [0, 1): the fraction of a tile shared with a neighbour")
    if tile_size is not None:
        if memory_budget is not None:
            raise ValueError("give tile_size or memory_budget, not both: the budget only chooses the tile size")
        tile = tuple(
            shapes.nearest_valid_input_size(config, t, axis=a)
            for a, t in enumerate(_positive_ints("tile_size", tile_size, dims, broadcast=True))
        )
        return _plan(config, image_shape, tile, overlap, batch_size, None, dtype)
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
    if not isinstance(budget, int) or budget < 1:
        raise ValueError(f"memory_budget={memory_budget!r} must be a positive number of bytes")
    return _auto_plan(config, image_shape, overlap, batch_size, budget, dtype)


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


def check_image(config: UNetConfig, image: torch.Tensor) -> torch.Tensor:
    """(N, C, *spatial) view of a (C, *spatial) or (N, C, *spatial) image; a clear error if it has the
    wrong number of dims or channels, is empty, or holds NaN or infinite values."""
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
    if x.is_floating_point():
        chunk = max(1, (1 << 24) // max(1, x[:, :, 0].numel()))  # bounded temporary memory
        for part in torch.split(x, chunk, dim=2):
            if not torch.isfinite(part).all():
                raise ValueError(f"image of shape {tuple(image.shape)} contains NaN or infinite values")
    return x


def predict_tiled(
    model: nn.Module,
    image: torch.Tensor,
    *,
    tile_size: int | Sequence[int] | None = None,
    batch_size: int = 1,
    overlap: float | None = None,
    blend: Blend = "gaussian",
    progress: bool = True,
    device: torch.device | str | None = None,
    memory_budget: int | None = None,
) -> torch.Tensor:
    """Predict an image of any size with a unetgen `UNet`, tile by tile (the overlap-tile strategy).

    `image` is (C, *spatial) or (N, C, *spatial), of any spatial size; the result is
    (out_channels, *spatial) or (N, out_channels, *spatial): the image's own spatial size, in the
    model's dtype, on `device` (default: the image's). Tiles are computed on the model's device,
    so a large image can stay in CPU memory while a GPU model predicts it.

    Valid padding: output tiles tile the image without overlap, each fed with the output tile
    plus the halo on every side, context outside the image mirrored (reflection without
    repeating the edge pixel, periodic when the image is smaller than the halo: see the module
    docstring). The result equals one forward pass over the whole mirror-padded image.
    Same padding: tiles overlap by `overlap` and are blended with `blend` ("gaussian" or
    "constant") weights that sum to one at every pixel; an image smaller than a tile is mirrored
    up to the next valid size.

    `tile_size`, `batch_size`, `overlap` and `memory_budget` are as in `plan_tiles` (which shows
    the plan without running). Memory: one batch of `batch_size` tiles is in flight at a time,
    the result is written in place into one preallocated tensor, and the image is never padded
    or copied beyond the current tile. Runs under `torch.inference_mode()` in eval mode, then
    restores the model's training mode. A tqdm progress bar counts the tiles when `progress` is
    on and stderr is a terminal.
    """
    config = _config_of(model)
    if blend not in ("gaussian", "constant"):
        raise ValueError(f"blend={blend!r} must be 'gaussian' or 'constant'")
    image = torch.as_tensor(image)
    x = check_image(config, image)
    param = next(model.parameters())
    dtype, work = param.dtype, param.device
    target = torch.device(device) if device is not None else x.device
    options = dict(tile_size=tile_size, batch_size=batch_size, overlap=overlap, memory_budget=memory_budget)
    plan = plan_tiles(config, tuple(x.shape[2:]), **options, dtype=dtype)
    axes = [_axis_tiles(plan, a, blend, x.device, work, dtype) for a in range(config.spatial_dims)]
    jobs = list(itertools.product(range(x.shape[0]), itertools.product(*(range(len(s)) for s in plan.starts))))
    result = torch.zeros((x.shape[0], config.out_channels, *plan.image_shape), dtype=dtype, device=target)
    buffer = torch.empty((min(batch_size, len(jobs)), x.shape[1], *plan.tile_input), dtype=dtype, device=work)
    was_training = model.training
    model.eval()
    try:
        quiet = not progress or not sys.stderr.isatty()
        with torch.inference_mode(), tqdm(total=len(jobs), unit="tile", desc="predict", disable=quiet) as bar:
            for chunk in _batches(jobs, batch_size):
                for j, (n, tile) in enumerate(chunk):
                    buffer[j].copy_(_gather(x[n], [axes[a].read[k] for a, k in enumerate(tile)]))
                pred = model(buffer[: len(chunk)])
                for j, (n, tile) in enumerate(chunk):
                    _write(result[n], pred[j], axes, tile)
                bar.update(len(chunk))
    finally:
        model.train(was_training)
    return result if image.dim() == config.spatial_dims + 2 else result[0]


def _write(result: torch.Tensor, pred: torch.Tensor, axes: Sequence[_AxisTiles], tile: Sequence[int]) -> None:
    """Write one tile's prediction (out_channels, *tile_output) into `result` (out_channels, *spatial)."""
    target = (slice(None), *(axes[a].write[k] for a, k in enumerate(tile)))
    part = pred[(slice(None), *(axes[a].crop[k] for a, k in enumerate(tile)))]
    if axes[0].weight[0] is None:
        result[target] = part
        return
    dims = len(axes)
    for a, k in enumerate(tile):
        part = part * axes[a].weight[k].view(-1, *([1] * (dims - 1 - a)))
    result[target] += part.to(result.device)
