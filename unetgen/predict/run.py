"""Predict on images of any size: the overlap-tile strategy of Ronneberger et al. 2015 (Figure 2).

An unpadded (``padding: valid``) U-Net maps an input tile to a smaller output tile: ``halo``
pixels are lost on every side, and only some input sizes are valid (see `unetgen.shapes`).
`predict_tiled` splits the image into output tiles, feeds each one with its input tile (the
output tile plus the halo on every side) and writes the results side by side into one
preallocated tensor of the image's own spatial size. Context outside the image is mirrored
(reflection: see `unetgen.predict.geometry`).

Valid padding is exact: every tile starts on the network's pooling grid (a multiple of the
period of `shapes.axis_rule`), so the prediction equals one forward pass over the whole
mirror-padded image, cropped to the image, for any tile size. This holds for networks whose
output is local (no instance, group or layer norm: those normalise over the whole tile; and
``up: linear`` clamps at the tile border, so it differs from the whole-image pass near tile
borders; batch norm in eval mode, pooling, transposed convs, nearest up-sampling, attention
gates and residual blocks are exact).

Same padding (``padding: same``): the network keeps the size, so tiles overlap by `overlap` and
are blended with normalised weights (Gaussian or constant).

`plan_tiles` (`unetgen.predict.plan`) shows the plan without running; `prepare` checks the
arguments and plans the work (a `Job`), `run` executes it block by block.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..reprs import short_repr
from .geometry import AxisBlocks, AxisTiles, axis_blocks, axis_tiles, default_block_shape
from .inference import autocast, check_amp, check_optimize, inference_model, mirror_axes, mirror_flips
from .journal import Journal
from .options import (
    Amp,
    Blend,
    OutputType,
    Tta,
    check_min_size,
    config_of,
    is_int_tuple,
    output_dtype,
    positive_ints,
)
from .ownership import check_apart, check_folder, output_lock, storage_path
from .plan import TilePlan, check_memory, plan_tiles
from .preprocess import PREPARED, PreprocessingArg, prepare_input, spec_of
from .sinks import Sink, check_out
from .sources import ArraySource, TensorSource, open_source, spatial_shape

__all__ = ["Job", "predict_tiled", "prepare", "run"]

log = logging.getLogger("unetgen.predict")


@dataclass(frozen=True)
class Job:
    """A plan with its block layout and options: what `run` executes, block by block. Blocks are
    numbered image by image, then in C order over the per-axis blocks."""

    plan: TilePlan
    axes: tuple[AxisTiles, ...]
    blocks: tuple[AxisBlocks, ...]
    images: int
    batched: bool
    blend: Blend
    output_type: OutputType
    out_shape: tuple[int, ...]
    out_dtype: str
    image_dtype: str
    preprocessing: dict[str, Any] | None = None
    """The spec applied, the raw image's shape and dtype and the measured numbers (`facts` of a
    prepared image); None when the image is used as it is."""
    mirror_axes: tuple[int, ...] = ()  # test-time mirroring: the spatial axes flipped (unetgen.predict.inference)
    optimize: bool = False  # the inference fast path (prepare's default: True)
    amp: Amp | None = None  # autocast on CUDA

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

    def groups(self, todo: Iterable[int] | None = None, *, done: Container[int] | None = None) -> Iterator[int]:
        """The groups of the blocks `todo` (default: all), in order, less those whose blocks are
        all `done` (e.g. in a `Journal`): lazily, one at a time (O(1) memory for any block count)."""
        if todo is None:
            groups: Iterable[int] = range(self.group(self.num_blocks - 1) + 1)
        else:
            groups = sorted({self.group(b) for b in todo})
        if done is None:
            return iter(groups)
        return (g for g in groups if not all(b in done for b in self.members(g)))

    def count_tiles(self, groups: Iterable[int] | None = None) -> int:
        """Tiles computed for `groups` (default: every group, counted per axis in O(axes))."""
        if groups is None:
            per_axis = (sum(len(r) for r in axis.tiles) for axis in self.blocks)
            return self.images * math.prod(per_axis)
        return sum(self.num_tiles(b) for g in groups for b in self.members(g))

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
        plan, blocks, options, image and output shapes and dtypes, and the preprocessing applied
        with its measured numbers (so a run resumed with another normalisation is refused)."""
        plan = self.plan
        h = hashlib.sha256()
        facts = dict(
            config=config_of(model).model_dump(mode="json"),
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
            tta_axes=list(self.mirror_axes) if self.mirror_axes else None,
            optimize=self.optimize,
            amp=self.amp,
        )
        if self.preprocessing is not None:  # absent without one: fingerprints of such runs as before
            facts["preprocessing"] = self.preprocessing
        h.update(json.dumps(facts, sort_keys=True).encode())
        for name, tensor in sorted(model.state_dict().items()):
            h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            h.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()


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
    optimize: bool = True,
    amp: Amp | None = None,
    tta: Tta | None = None,
    tta_axes: Sequence[int] | None = None,
) -> tuple[Job, TensorSource | ArraySource, Sink]:
    """Check the arguments of `predict_tiled` and plan the work (the tiles, the blocks, where to
    read and write) without running the model; `plan` skips planning (workers get the client's).
    The memory estimate (`check_memory`) is checked before anything is allocated."""
    config = config_of(model)
    dims = config.spatial_dims
    if blend not in ("gaussian", "constant"):
        raise ValueError(f"blend={short_repr(blend)} must be 'gaussian' or 'constant'")
    if output_type not in ("logits", "probabilities", "labels"):
        also = " (instances: predict_tiled, which labels the class labels it predicts)"
        raise ValueError(
            f"output_type={short_repr(output_type)} must be 'logits', 'probabilities' or 'labels'"
            + (also if output_type == "instances" else "")
        )
    try:
        target = None if device is None else torch.device(device)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"device={short_repr(device)} is not a torch device: {err}") from None
    param = next(model.parameters())
    dtype, work = param.dtype, param.device
    fast = check_optimize(optimize), check_amp(amp, work, dtype), mirror_axes(tta, tta_axes, dims)
    final = output_dtype(output_type, config.out_channels, dtype)
    source, batched, images = open_source(config, image, dtype)
    spatial = spatial_shape(config, image)
    options = dict(tile_size=tile_size, batch_size=batch_size, overlap=overlap, memory_budget=memory_budget)
    plan = plan if plan is not None else plan_tiles(model, spatial, **options, dtype=dtype)
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
        read_bytes=source.read_bytes(plan.tile_input) if isinstance(source, ArraySource) else 0,
        optimize=fast[0],
        mirrored=bool(fast[2]),
    )
    channels_out = () if output_type == "labels" else (config.out_channels,)
    shape = ((images,) if batched else ()) + channels_out + spatial
    if out is None:  # a tensor with the batch axis (predict_tiled drops it for a (C, *spatial) image)
        target = source.device if target is None else target
        out = torch.zeros((images, *shape[batched:]), dtype=final, device=target)
        in_place, batched_out = output_type == "logits", True
    else:
        check_out(out, shape, output_type, config.out_channels)
        in_place, batched_out = False, batched
    if block_shape is None:
        chunks = getattr(out, "chunks", None)
        block_shape = tuple(chunks[-dims:]) if is_int_tuple(chunks) else default_block_shape(plan)
        if in_place and plan.padding == "same":
            block_shape = spatial  # blend in place: nothing computed twice
    block = positive_ints("block_shape", block_shape, dims, broadcast=True)
    axes = tuple(axis_tiles(plan, a, blend, source.device, work, dtype) for a in range(dims))
    blocks = tuple(axis_blocks(plan, a, block[a]) for a in range(dims))
    image_dtype = (
        str(image.dtype).removeprefix("torch.") if isinstance(image, torch.Tensor) else str(np.dtype(image.dtype))
    )
    out_dtype = str(out.dtype).removeprefix("torch.") if isinstance(out, torch.Tensor) else str(np.dtype(out.dtype))
    facts = image.facts() if isinstance(image, PREPARED) else None
    job = Job(plan, axes, blocks, images, batched, blend, output_type, tuple(out.shape), out_dtype, image_dtype, facts)
    job = replace(job, optimize=fast[0], amp=fast[1], mirror_axes=fast[2])
    return job, source, Sink(out, batched_out, in_place)


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
    is computed whole. In flight: one batch of tiles and the blocks it touches.

    `model` is run as `inference_model(model, job.optimize)`: with the fast path, a copy made once
    per call (a model already optimised, e.g. a Dask worker's cached one, runs as given)."""
    model = inference_model(model, job.optimize)
    param = next(model.parameters())
    blocks = _OpenBlocks(job, sink, journal, param.dtype)
    plan, channels = job.plan, config_of(model).in_channels
    shape = (max(1, min(plan.batch_size, job.count_tiles())), channels, *plan.tile_input)
    buffer = torch.empty(shape, dtype=param.dtype, device=param.device)
    was_training = model.training
    model.eval()
    quiet = not progress or not sys.stderr.isatty()
    total = None
    if not quiet:  # the bar's total: O(axes) for a whole run, one pass over the blocks otherwise
        whole = todo is None and (journal is None or journal.completed == 0)
        total = job.count_tiles() if whole else job.count_tiles(job.groups(todo, done=journal))
    groups = job.groups(todo, done=journal)
    try:
        with torch.inference_mode(), tqdm(total=total, unit="tile", desc="predict", disable=quiet) as bar:
            for chunk in (chunk for g in groups for chunk in _batches(job.tiles(g), plan.batch_size)):
                pred = _predict_batch(model, job, source, chunk, buffer, blocks.blended)
                for j, (b, n, region, tile) in enumerate(chunk):
                    blocks.put(b, n, region, tile, pred[j])
                    if callback is not None:
                        callback(n, tile)
                bar.update(len(chunk))
    finally:
        model.train(was_training)
        if journal is not None:
            journal.flush()


def _predict_batch(
    model: nn.Module,
    job: Job,
    source: TensorSource | ArraySource,
    chunk: Sequence[tuple[int, int, tuple[slice, ...], tuple[int, ...]]],
    buffer: torch.Tensor,
    blended: bool,
) -> torch.Tensor:
    """The model's output for one batch of tiles (`Job.tiles` items), read into `buffer`, in the
    model's dtype (autocast with `job.amp`); with `blended` (output_type not logits, and same
    padding or test-time mirroring) as probabilities, which are blended or averaged. Test-time
    mirroring: the mean over every flip of `job.mirror_axes` (identity first), each flipped back."""
    for j, (_, n, _, tile) in enumerate(chunk):
        buffer[j].copy_(source.read(n, [job.axes[a].read[k] for a, k in enumerate(tile)]))
    x, total = buffer[: len(chunk)], None
    flips = mirror_flips(job.mirror_axes)
    for dims in flips:
        with autocast(job.amp, x.device):
            pred = model(x.flip(dims) if dims else x)
        pred = pred.to(buffer.dtype)
        pred = _probabilities(pred, 1) if blended else pred
        pred = pred.flip(dims) if dims else pred
        total = pred if total is None else total.add_(pred)
    assert total is not None
    return total.div_(len(flips)) if len(flips) > 1 else total


class _OpenBlocks:
    """The output blocks some of whose tiles are in: for each, the buffer it is accumulated in
    (the result itself for tensor targets of logits) and how many of its tiles are still to come.
    A block is finished, written and recorded in the journal when its last tile is in."""

    def __init__(self, job: Job, sink: Sink, journal: Journal | None, dtype: torch.dtype) -> None:
        self.job, self.sink, self.journal, self.dtype = job, sink, journal, dtype
        # the tiles give probabilities: blended (same padding) or averaged over flips (tta)
        self.blended = job.output_type != "logits" and (job.plan.padding == "same" or bool(job.mirror_axes))
        self.open: dict[int, list[Any]] = {}

    def put(self, b: int, n: int, region: tuple[slice, ...], tile: tuple[int, ...], pred: torch.Tensor) -> None:
        """Put the prediction of `tile` (out_channels, *tile_output) into block `b` of image `n`."""
        if b not in self.open:
            view = self.sink.view(n, region)
            if view is None:
                size = tuple(r.stop - r.start for r in region)
                view = torch.zeros((pred.shape[0], *size), dtype=self.dtype, device=self.sink.device)
            self.open[b] = [view, self.job.num_tiles(b)]
        state = self.open[b]
        _put(state[0], pred, self.job.axes, tile, region, self.job.plan.starts)
        state[1] -= 1
        if state[1] == 0:
            del self.open[b]
            self.sink.write(n, region, _finish(state[0], self.job.output_type, self.blended))
            if self.journal is not None:
                self.journal.mark(b)


def _put(
    block: torch.Tensor,
    pred: torch.Tensor,
    axes: Sequence[AxisTiles],
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


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _probabilities(logits: torch.Tensor, channel_axis: int) -> torch.Tensor:
    return logits.sigmoid() if logits.shape[channel_axis] == 1 else logits.softmax(channel_axis)


def _finish(values: torch.Tensor, output_type: OutputType, blended: bool) -> torch.Tensor:
    """A finished block (C, *block) as `output_type`. `values` are logits, or (`blended`: same
    padding or test-time mirroring, output_type not logits) the per-tile probabilities, blended
    or averaged. Labels lose the channel axis: the argmax over the channels, or for one channel
    logit > 0 (probability > 0.5)."""
    match output_type:
        case "logits":
            return values
        case "probabilities":
            return values if blended else _probabilities(values, 0)
        case "labels":
            labels = values.argmax(0) if values.shape[0] > 1 else values[0] > (0.5 if blended else 0)
            return labels.to(output_dtype("labels", values.shape[0]))
    raise AssertionError(output_type)


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
    preprocessing: PreprocessingArg = None,
    min_size: int = 0,
    optimize: bool = True,
    amp: Amp | None = None,
    tta: Tta | None = None,
    tta_axes: Sequence[int] | None = None,
) -> Any:
    """Predict an image of any size with a unetgen `UNet`, tile by tile (the overlap-tile strategy).

    `image` is (C, *spatial) or (N, C, *spatial), of any spatial size: a tensor, or any array-like
    that supports slicing (NumPy, a memory-mapped `.npy`, a `zarr` array, a TIFF opened through
    tifffile's zarr store: see `unetgen.arrays.open_image`); an array-like with in_channels=1 may
    also be (*spatial). Array-likes are read one tile window at a time and checked for NaN and
    infinite values as they are read. The result is (out_channels, *spatial) or
    (N, out_channels, *spatial) (labels: without the channel axis): the image's own spatial size.

    `preprocessing`: None (default) applies the model's own spec (`model.preprocessing`, which
    `load_unet` sets from a checkpoint, model folder or bioimage.io package saved with one), False
    none, a spec (`Preprocessing`, mapping or .json/.yaml file) that one. With a spec the image is
    the raw image in the spec's `axes` layout (a leading image axis allowed), and
    `unetgen.predict.preprocess.prepare_input` measures each image's statistics once (exact up to
    `EXACT_VOXELS` voxels per channel, a bounded sample beyond) and normalises every tile window
    with those numbers, in float32, whether the image is a tensor or read tile by tile; the
    result's device is still the tensor's. A model without a spec (or False) predicts the image as
    it is, as before. An image from `prepare_image`/`prepare_input` is used as it is.

    Valid padding: output tiles tile the image without overlap, each fed with the output tile
    plus the halo on every side, context outside the image mirrored (reflection without
    repeating the edge pixel, periodic when the image is smaller than the halo: see the module
    docstring). The result equals one forward pass over the whole mirror-padded image.
    Same padding: tiles overlap by `overlap` and are blended with `blend` ("gaussian" or
    "constant") weights that sum to one at every pixel; an image smaller than a tile is mirrored
    up to the next valid size.

    `output_type`: "logits" (the model's output, its dtype), "probabilities" (softmax over the
    channels; sigmoid for one channel) or "labels" (argmax over the channels; logit > 0 for one
    channel; uint8, or uint16 beyond 256 classes; no channel axis), or "instances" (the face-connected
    components of the labels' foreground, every non-zero class; uint32 ids 1..n in raster order
    of each object's first voxel, 0 background; objects of fewer than `min_size` voxels removed:
    `unetgen.predict.instances`; a zarr `out` on a local disk is labelled block by block, equal to
    the in-memory result). Same padding blends the tiles' probabilities (labels: the argmax of the
    blended probabilities, > 0.5 for one channel).

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
    a record with another fingerprint is an error unless `resume=False`, which starts over. A
    resumed run logs "resuming: K of N blocks done" (logger ``unetgen.predict``, level INFO).

    Ownership: `out` (and `journal`) is not, does not contain and does not sit inside the image
    (paths resolved, arrays by their memory), and one run at a time writes it: a run holds the
    lock ``OUT.lock`` beside a local `out` (or the journal) while it runs (`output_lock`); a
    second run is refused, naming the first. Before each write of the record the stored record is
    read back: one written by another run meanwhile stops this run (ValueError).

    `callback(n, tile)` is called after each tile (and after the block it completes is written);
    an exception from it stops the run (the record keeps the blocks completed so far).
    `tile_size`, `batch_size`, `overlap` and `memory_budget` are as in `plan_tiles` (which shows
    the plan without running). Before anything is allocated, `check_memory` estimates one batch
    of tiles plus the result (when no `out` is given) and refuses (`ValueError`, with the
    estimate) above `memory_limit` bytes (default `DEFAULT_MEMORY_LIMIT`, 16 GiB). Every option
    is checked first (a `ValueError` naming it). Runs under `torch.inference_mode()` in eval
    mode, then restores the model's training mode. A tqdm progress bar counts the tiles when
    `progress` is on and stderr is a terminal.

    How tiles are computed (`unetgen.predict.inference`, docs/tiling.md):

    - `optimize` (default True): a unetgen `UNet` runs as `optimize_for_inference(model)`, a copy
      made once per call with batch norm folded and channels-last layout (its own copy of the
      conv weights for 2D/3D models: the parameter memory once more; `optimize=False` runs the
      model itself); the model is never changed. Results equal the eager model's to float
      rounding. An `InferenceUNet` or a compiled model runs as given.
    - `amp` ("bf16" or "fp16"): the forward under `torch.autocast` on CUDA; tile outputs are cast
      back to the model's dtype. Refused for models not on CUDA or not float32.
    - `tta="flip"`: test-time mirroring over `tta_axes` (spatial axes, default all): 2**k
      forward passes per tile, the flipped-back predictions averaged (probabilities for
      "probabilities" and "labels", logits for "logits"). Valid padding stays exact: the result
      equals the same average over whole-image forward passes of the flipped mirror-padded image.

    The fingerprint of resumable runs includes `optimize`, `amp` and the mirrored axes.

    A model that carries the patch it was trained on (`model.patch_size`, from a checkpoint of
    `unetgen train`) and whose output depends on the tile (instance, group or layer norm, a global
    pool) is tiled with that patch when neither `tile_size` nor `memory_budget` is given
    (`plan.model_tile`, which `plan_tiles` applies): it then sees its input as it saw it in training.
    """
    options = dict(tile_size=tile_size, batch_size=batch_size, overlap=overlap, memory_budget=memory_budget)
    check_min_size(min_size, output_type)
    if out is not None:
        check_apart(image, out)
    spec = spec_of(model, preprocessing)
    if spec is not None and not isinstance(image, PREPARED):
        if device is None and isinstance(image, torch.Tensor):
            device = image.device  # the result where it would be without a spec
        image = prepare_input(config_of(model), image, spec)  # lazy: windows normalised as read
    if output_type == "instances":
        from .instances import predict_instances

        return predict_instances(
            model, image, out=out, min_size=min_size, plan_options=options, blend=blend, block_shape=block_shape,
            device=device, memory_limit=memory_limit, resume=resume, journal=journal, callback=callback,
            progress=progress, inference=dict(optimize=optimize, amp=amp, tta=tta, tta_axes=tta_axes),
            predict=predict_tiled, prepare=prepare,
        )  # fmt: skip
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
        optimize=optimize,
        amp=amp,
        tta=tta,
        tta_axes=tta_axes,
    )
    if journal is not None:
        try:
            check_folder(journal, "journal")
        except ValueError as err:
            raise ValueError(f"cannot write the progress record: {err}") from None
        fix = "give the journal another path"
        check_apart(image, journal, what="the journal", fix=fix)
        check_apart(out, journal, what="the journal", source_what="the output", fix=fix)
    with output_lock(storage_path(out) or (None if journal is None else storage_path(journal))):
        record = None
        if journal is not None or sink.attrs is not None:
            where = Path(journal) if journal is not None else sink.attrs
            reread = None if journal is not None else sink.stored_attrs
            record = Journal(where, job.fingerprint(model), job.num_blocks, resume=resume, reread=reread)
            if record.resumed:
                log.info("resuming: %d of %d blocks done", record.resumed, job.num_blocks)
        run(model, job, source, sink, journal=record, callback=callback, progress=progress)
    return sink.target if out is not None or job.batched else sink.target[0]
