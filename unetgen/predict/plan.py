"""Tile plans: how `predict_tiled` covers an image with tiles, chosen per axis from the network's
valid input sizes (`unetgen.analysis.shapes`) and the memory estimate of one batch of tiles.
Planning runs nothing, allocates nothing and costs O(spatial axes) whatever the image size."""

from __future__ import annotations

import itertools
import math
import numbers
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import overload

import torch
from torch import nn

from ..analysis import costs, shapes
from ..analysis.memory import estimate_tile_memory, tile_memory
from ..analysis.ops import tile_dependence
from ..config.io import resolve_config
from ..config.unet_config import UNetConfig
from ..reprs import short_repr
from .geometry import axis_blocks, default_block_shape
from .options import OutputType, config_of, float_dtype, fraction, output_dtype, positive_int, positive_ints
from .tileplan import TilePlan, format_bytes

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "DEFAULT_MEMORY_LIMIT",
    "DEFAULT_OVERLAP",
    "MAX_IMAGE_SIZE",
    "EvenStarts",
    "MemoryEstimate",
    "TilePlan",
    "check_memory",
    "estimate_memory",
    "estimate_tile_memory",
    "format_bytes",
    "plan_tiles",
]

DEFAULT_MEMORY_BUDGET = 1 << 30
"""Bytes of activations that one batch of tiles may use when the tile size is chosen automatically."""
DEFAULT_MEMORY_LIMIT = 16 << 30
"""Bytes `predict_tiled` may need (tiles in flight and the result it allocates, as estimated by
`check_memory`) before it refuses to start; raise it with `memory_limit=`."""
DEFAULT_OVERLAP = 0.25
"""Fraction of a tile shared with its neighbour, for same padding."""
_CANDIDATES = 256  # tile sizes the automatic plan compares at most
_PLAN_THREADS = 2
"""The plans estimate tiles for multi-threaded torch (which runs 1x1 convs through oneDNN, a
little more memory than one thread), whatever this process's thread count: a plan (and so a
resumable run's fingerprint) must not depend on it."""
MAX_IMAGE_SIZE = 1 << 62
"""Longest image axis `plan_tiles` plans (no array can hold more; tile counts stay below sys.maxsize)."""


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
        batch_size = min(
            batch_size, max(1, budget // estimate_tile_memory(config, tile_input, 1, dtype, threads=_PLAN_THREADS))
        )
    return TilePlan(
        image_shape=image_shape,
        padding=config.padding,
        tile_input=tile_input,
        tile_output=shapes.output_shape(config, tile_input),
        halo=shapes.halo(config),
        starts=starts,
        overlap=overlap,
        batch_size=batch_size,
        memory_bytes=estimate_tile_memory(config, tile_input, min(batch_size, num_tiles), dtype, threads=_PLAN_THREADS),
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
        if estimate_tile_memory(config, tile, 1, dtype, threads=_PLAN_THREADS) > budget and plan.memory_bytes > budget:
            break  # larger tiles need more memory still (a plan may use a smaller tile than asked)
    fitting = [p for p in plans.values() if p.memory_bytes <= budget]
    if not fitting:
        return min(plans.values(), key=lambda p: p.memory_bytes)
    return min(fitting, key=lambda p: (p.num_tiles * math.prod(p.tile_input), p.num_tiles))


def model_tile(
    model: UNetConfig | nn.Module | None, tile_size: int | Sequence[int] | None, memory_budget: int | None = None
) -> int | Sequence[int] | None:
    """The tile a prediction uses when none is given: the patch the model was trained on
    (`model.patch_size`, which `load_unet` reads from a checkpoint `unetgen train` or
    ``save_unet(..., patch_size=...)`` wrote) when its output depends on the tile
    (`tile_dependence`: instance, group or layer norm, a global pool), as nnU-Net predicts with its
    training patch; else `tile_size` as given (None: the planner's choice for `memory_budget`)."""
    if tile_size is not None or memory_budget is not None or not isinstance(model, nn.Module):
        return tile_size
    patch = getattr(model, "patch_size", None)
    if patch is None or tile_dependence(config_of(model)) is None:
        return tile_size
    return tuple(patch)


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

    A model (not a config) that carries the patch it was trained on and whose output depends on
    the tile is planned with that patch when neither `tile_size` nor `memory_budget` is given
    (`model_tile`), as `predict_tiled` predicts it.

    Planning runs nothing, allocates nothing and costs O(spatial axes) whatever the image size
    (up to `MAX_IMAGE_SIZE`, 2**62 pixels per axis).
    Every option is checked (ints: Python, NumPy or torch integers, not bools; `overlap`: a real
    number in [0, 1)); a bad one is a `ValueError` naming it.
    """
    config = config_of(model) if isinstance(model, nn.Module) else resolve_config(model)
    tile_size = model_tile(model, tile_size, memory_budget)
    dims = config.spatial_dims
    image_shape = positive_ints("image_shape", image_shape, dims, broadcast=False)
    if max(image_shape) > MAX_IMAGE_SIZE:
        raise ValueError(
            f"image_shape={short_repr(image_shape)}: an axis of more than 2**62 pixels is not an image any array "
            "can hold (a damaged header or metadata?); give the image's real size"
        )
    batch_size = positive_int("batch_size", batch_size)
    dtype = float_dtype(dtype)
    if config.padding == "valid":
        if overlap is not None and (isinstance(overlap, bool) or not isinstance(overlap, numbers.Real) or overlap):
            raise ValueError(
                f"overlap={short_repr(overlap)} applies to padding='same' only; "
                "valid-padding tiles are exact without overlap"
            )
        overlap = 0.0
    else:
        overlap = DEFAULT_OVERLAP if overlap is None else fraction("overlap", overlap)
    if tile_size is not None:
        if memory_budget is not None:
            raise ValueError("give tile_size or memory_budget, not both: the budget only chooses the tile size")
        tile = tuple(
            shapes.nearest_valid_input_size(config, t, axis=a)
            for a, t in enumerate(positive_ints("tile_size", tile_size, dims, broadcast=True))
        )
        return _plan(config, image_shape, tile, overlap, batch_size, None, dtype)
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else positive_int("memory_budget", memory_budget)
    return _auto_plan(config, image_shape, overlap, batch_size, budget, dtype)


RUNTIME_BYTES = 48 << 20
"""What a process adds when it first predicts, beyond the tensors: oneDNN's generated kernels and
primitive cache, torch's thread pool, zarr's and the codecs' buffers (measured: 20-40 MiB)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak bytes of one prediction (`estimate_memory`) **on top of the process as it
    is when the prediction starts**: the Python interpreter, torch and the other libraries, the
    model's weights and an image already in memory are that baseline, not part of the estimate
    (the CLI measures the baseline and prints both). The parts are not all alive at once; the
    peak (`total`) is what is held throughout (the result, the input batch, oneDNN's scratchpad,
    a block whose tiles span batches, `runtime`, `weights`) plus the largest of three phases:
    the forward pass (with the previous batch's prediction still referenced), reading a tile
    window, and finishing a block (the batch's prediction, the block's float buffer, its
    conversion to the output type and its encoding)."""

    tiles: int
    """The forward pass over one batch of tiles, the input batch and oneDNN's scratchpad
    included (`estimate_tile_memory`)."""
    predictions: int
    """A batch of the network's outputs held beside the next pass (and its probabilities when
    same padding blends them)."""
    reads: int
    """Reading one tile window: the input chunks it touches, decoded whole, and its copies."""
    blocks: int
    """One output block being finished: its float buffer, the conversion and the encoded chunk."""
    result: int
    """The result allocated in memory (none when writing into `out`)."""
    runtime: int
    """oneDNN's kernels, torch's threads, I/O buffers: `RUNTIME_BYTES`."""
    weights: int
    """Weights not loaded yet (a CLI dry run without weights), else 0."""
    total: int
    """The estimated peak on top of the baseline."""

    def summary(self) -> str:
        parts = [
            ("tiles", self.tiles),
            ("predictions", self.predictions),
            ("input reads", self.reads),
            ("output blocks", self.blocks),
            ("result", self.result),
            ("runtime", self.runtime),
            ("weights", self.weights),
        ]
        return ", ".join(f"{name} {format_bytes(n)}" for name, n in parts if n)


def _block_pixels(plan: TilePlan, block_shape: Sequence[int] | None, in_place_same: bool) -> tuple[int, int]:
    """(pixels of the largest output block, most tiles it needs) as `prepare` lays the blocks out."""
    if in_place_same:
        block = plan.image_shape
    else:
        block = tuple(block_shape) if block_shape is not None else default_block_shape(plan)
    pixels, tiles = 1, 1
    for a, length in enumerate(block):
        layout = axis_blocks(plan, a, length)
        pixels *= max(hi - lo for lo, hi in itertools.pairwise(layout.bounds))
        tiles *= max(len(r) for r in layout.tiles)
    return pixels, tiles


def estimate_memory(
    model: UNetConfig | nn.Module,
    plan: TilePlan,
    *,
    images: int = 1,
    output_type: OutputType = "logits",
    dtype: torch.dtype = torch.float32,
    allocate_result: bool = True,
    read_bytes: int = 0,
    chunked_input: bool = False,
    encoded_output: bool = False,
    block_shape: int | Sequence[int] | None = None,
    channels_last: bool = False,
    threads: int | None = None,
    weights_loaded: bool = True,
    optimize: bool = False,
    mirrored: bool = False,
) -> MemoryEstimate:
    """The peak bytes `predict_tiled` needs for `images` images planned as `plan`, on top of the
    process as it is when it starts (`MemoryEstimate`): the forward pass of one batch of
    min(batch_size, images * tiles) tiles (`tile_memory`), the result it allocates
    (`allocate_result`, i.e. no `out=` array; in `output_type`'s dtype), `read_bytes` (what reading
    one tile window decodes: `ArraySource.read_bytes`) and the window's copies (`chunked_input`:
    read from an array-like, cast and mirrored), the output blocks (`block_shape`, default as
    `predict_tiled` lays them out; `encoded_output`: written into a zarr array, which encodes each
    chunk), `RUNTIME_BYTES` and, unless `weights_loaded`, the weights. `channels_last` and
    `threads` as in `tile_memory`. `optimize`: the inference fast path (`predict_tiled`'s default):
    channels-last tiles, and its copy of the weights beside the model's (counted whole: an upper
    bound, as the copy shares the tensors it does not change). `mirrored`: test-time mirroring,
    a flipped copy of the batch and the running mean beside each flip's prediction. Measured
    against whole runs of `unetgen predict` (benchmarks/predict_memory.py): the printed baseline
    plus this bounds the peak RSS within 25% with glibc's mmap threshold fixed, as the CLI fixes
    it (docs/large-images.md)."""
    config = config_of(model)
    images = positive_int("images", images)
    dtype = float_dtype(dtype)
    item = dtype.itemsize
    batch = min(plan.batch_size, images * plan.num_tiles)
    tm = tile_memory(config, plan.tile_input, batch, dtype, channels_last=channels_last or optimize, threads=threads)
    c_out = config.out_channels
    blended = (plan.padding == "same" or mirrored) and output_type != "logits"
    in_place = allocate_result and output_type == "logits"
    pixels = images * math.prod(plan.image_shape)
    final = output_dtype(output_type, c_out, dtype).itemsize
    result = pixels * (1 if output_type in ("labels", "instances") else c_out) * final if allocate_result else 0
    shape = (
        None
        if block_shape is None
        else positive_ints("block_shape", block_shape, len(plan.image_shape), broadcast=True)
    )
    block_px, block_tiles = _block_pixels(plan, shape, in_place and plan.padding == "same")
    one_tile = c_out * math.prod(plan.tile_output) * item
    buffer = 0 if in_place else c_out * block_px * item  # a block of logits in a tensor result is the result itself
    match output_type:
        case "labels":
            conversion = block_px * (8 if c_out > 1 else 1) + block_px * final  # argmax's int64, then the labels
        case "probabilities":
            conversion = 0 if blended else c_out * block_px * item
        case _:
            conversion = 0
    encoded = 2 * block_px * (1 if output_type in ("labels", "instances") else c_out) * final if encoded_output else 0
    blocks = buffer + conversion + encoded + 2 * one_tile  # a tile's share, weighted (same padding)
    window = config.in_channels * math.prod(plan.tile_input) * item
    reads = read_bytes + (3 if chunked_input else 2) * window
    predictions = tm.output * (2 if blended else 1)
    parameters = costs.count_parameters(config) * item
    weights = (0 if weights_loaded else parameters) + (parameters if optimize else 0)
    held = result + tm.input + tm.scratchpad + (buffer if block_tiles > 1 else 0) + RUNTIME_BYTES + weights
    flips = tm.input + tm.output if mirrored else 0  # the flipped batch; the mean beside the next prediction
    phases = (tm.peak - tm.input + predictions + flips, reads, predictions + blocks)
    return MemoryEstimate(
        tiles=tm.total,
        predictions=predictions,
        reads=reads,
        blocks=blocks,
        result=result,
        runtime=RUNTIME_BYTES,
        weights=weights,
        total=held + max(phases),
    )


def check_memory(
    model: UNetConfig | nn.Module,
    plan: TilePlan,
    *,
    images: int = 1,
    output_type: OutputType = "logits",
    dtype: torch.dtype = torch.float32,
    memory_limit: int | None = None,
    allocate_result: bool = True,
    read_bytes: int = 0,
    labelling_bytes: int = 0,
    **options: object,
) -> int:
    """The estimated peak bytes `predict_tiled` needs for `images` images planned as `plan`, on
    top of the process as it is (`estimate_memory`'s total; `options` are its other keywords).
    Raises `ValueError` with the estimate when it exceeds `memory_limit` (default
    `DEFAULT_MEMORY_LIMIT`, 16 GiB), before anything is allocated. Not counted: the image when
    it is already in memory, the weights and the libraries (the process's baseline). `labelling_bytes`:
    what turning class labels into instance labels holds (`unetgen.predict.instances.labelling_bytes`),
    added to the peak."""
    limit = DEFAULT_MEMORY_LIMIT if memory_limit is None else positive_int("memory_limit", memory_limit)
    est = estimate_memory(
        model,
        plan,
        images=images,
        output_type=output_type,
        dtype=dtype,
        allocate_result=allocate_result,
        read_bytes=read_bytes,
        **options,  # type: ignore[arg-type]
    )
    total = est.total + labelling_bytes
    if total > limit:
        batch = min(plan.batch_size, positive_int("images", images) * plan.num_tiles)
        tiles, result = est.tiles + est.predictions, est.result
        fix = "use a smaller tile_size or batch_size"
        if result > tiles:
            fix = "predict fewer images at once" + (
                ", or output_type='labels'" if output_type not in ("labels", "instances") else ""
            )
        if read_bytes > max(tiles, result):
            fix = "store the image in smaller chunks (tiles or strips about the tile's size)"
        reads = f"; input chunks decoded per tile: {format_bytes(read_bytes)}" if read_bytes else ""
        if labelling_bytes:
            reads += f"; instance labelling: {format_bytes(labelling_bytes)}"
            if labelling_bytes > max(tiles, result, read_bytes):
                fix = "write the instances to a .zarr output (labelled block by block), or use smaller blocks"
        raise ValueError(
            f"predicting needs about {format_bytes(total)} (tiles: {format_bytes(tiles)} for a batch of {batch} "
            f"tiles of {'x'.join(map(str, plan.tile_input))}; result: {format_bytes(result)}{reads}), more than "
            f"memory_limit={limit} bytes ({format_bytes(limit)}); {fix}, or raise memory_limit if the machine has "
            "the memory"
        )
    return total
