"""Instance labels (``output_type="instances"``): the connected components of the predicted
foreground, one uint32 id per object (docs/tiling.md, "Instance labels").

The setting is the paper's (Ronneberger et al. 2015, Section 3): the network separates touching
objects by a thin gap of background (the border weight map trains for it), so objects are the
connected components of the foreground with the minimal connectivity, face neighbours only (4 in
2D, 6 in 3D: `scipy.ndimage.generate_binary_structure(dims, 1)`), so that a one-pixel gap, even
a diagonal one, separates. Foreground: every non-zero class of the predicted labels (class 1 of
a 2-class network, logit > 0 for one channel; with more classes every class but 0, the
background, and touching objects of different classes are one object). Ids are 1..n in the
order of each object's first voxel in C (raster) order, 0 is background, dtype uint32. Objects
of fewer than `min_size` voxels are removed (set to 0) and the others numbered 1..n again.

- In memory (`out=None`, a tensor or NumPy array): the class labels are predicted, then labelled
  whole by `scipy.ndimage.label` (`label_instances`).
- Out of core (a zarr `out` on a local disk): the class labels are predicted, resumably, into a
  temporary zarr array beside the output (``.OUT.classes.zarr``, made by
  `unetgen.arrays.create_output`, so marked as unetgen's), then labelled block by block
  (`label_out_of_core`): each block's components (scipy) are written into the output as
  fragments; the pairs of fragments that touch across the two-voxel faces between neighbouring
  blocks are the edges of a graph whose connected components
  (`scipy.sparse.csgraph.connected_components`) are the objects; each block is then rewritten
  with the final ids. The result equals the in-memory labelling exactly (same ids, not just a
  permutation), whatever the blocks. The temporary is removed when the output is complete; an
  interrupted run leaves it, and the next run with the same arguments resumes its prediction.
  (This is dask-image's ``ndmeasure.label`` scheme, run over unetgen's blocks in a loop:
  ``ndmeasure.label`` itself keeps every labelled block until its relabelling, and its Dask graph
  took about 150 KiB per block, so it is not used.)

Memory (`labelling_bytes`, counted by `check_memory` before anything is allocated): in memory,
the class labels and the foreground mask (`IN_MEMORY_BYTES` per voxel) beside the uint32 result;
out of core, the temporaries of one block (`BLOCK_BYTES` per voxel of a block) plus, once the
blocks are labelled, tables of about `FRAGMENT_BYTES` per fragment (an object's part in one
block), checked against the limit when their number is known.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ..reprs import short_path

__all__ = [
    "ATTRIBUTE",
    "BLOCK_BYTES",
    "FRAGMENT_BYTES",
    "IN_MEMORY_BYTES",
    "MAX_FRAGMENTS",
    "label_instances",
    "label_out_of_core",
    "labelling_bytes",
    "temporary_path",
]

IN_MEMORY_BYTES = 3
"""Bytes per voxel that in-memory labelling holds beside the uint32 result: the predicted class
labels (uint8, uint16 beyond 256 classes) and the foreground mask (bool)."""
BLOCK_BYTES = 24
"""Bytes per voxel of one block that out-of-core labelling holds at most (measured with
tracemalloc: 16-22 for its class labels, mask and uint32 fragments and the int64 copies NumPy
makes to count and renumber them)."""
FRAGMENT_BYTES = 192
"""Bytes per fragment (an object's part in one block) of the out-of-core merge tables: sizes,
first voxels, the touching pairs, the graph and its components (measured: 125-165)."""
ATTRIBUTE = "unetgen_instances"
"""The attribute of an out-of-core instance output that says what it holds: the number of objects
(a list for (N, *spatial) images), `min_size` and the connectivity."""
MAX_FRAGMENTS = (1 << 31) - 2
"""Most fragments the out-of-core merge takes (scipy.sparse.csgraph indexes with int32)."""
_SLAB = 1 << 16  # voxels renumbered at a time in memory (bounds NumPy's int64 index copies)


def _structure(dims: int) -> np.ndarray:
    return ndimage.generate_binary_structure(dims, 1)


def labelling_bytes(
    image_shape: Sequence[int], *, images: int = 1, in_memory: bool, block_shape: Sequence[int] | None = None
) -> int:
    """What labelling instances adds to a prediction's memory, beyond the tiles and the result:
    in memory `IN_MEMORY_BYTES` per voxel of all images; out of core `BLOCK_BYTES` per voxel of
    one block (`block_shape`; default the image) and nothing per image (the fragment tables are
    checked when their size is known)."""
    if in_memory:
        return images * math.prod(image_shape) * IN_MEMORY_BYTES
    block = image_shape if block_shape is None else [min(b, s) for b, s in zip(block_shape, image_shape, strict=True)]
    return math.prod(block) * BLOCK_BYTES


def _renumber(labels: np.ndarray, table: np.ndarray) -> None:
    """labels[...] = table[labels], in place, a slab at a time (NumPy indexes through int64)."""
    assert labels.flags.c_contiguous
    flat = labels.reshape(-1)
    for start in range(0, flat.size, _SLAB):
        part = flat[start : start + _SLAB]
        part[...] = table[part]


def _counts(labels: np.ndarray, n: int) -> np.ndarray:
    """Voxels per id 0..n of `labels` (int64), a slab at a time."""
    flat = labels.reshape(-1)
    sizes = np.zeros(n + 1, np.int64)
    for start in range(0, flat.size, _SLAB):
        sizes += np.bincount(flat[start : start + _SLAB], minlength=n + 1)
    return sizes


def _keep(sizes: np.ndarray, min_size: int) -> np.ndarray:
    """The new id (uint32) of each id 0..n: 0 for background and objects below `min_size`, the
    others 1..m in their order."""
    keep = sizes >= min_size
    keep[0] = False
    return (np.cumsum(keep) * keep).astype(np.uint32)


def label_instances(classes: Any, min_size: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """The instance labels (uint32, 0 background, 1..n in raster order of each object's first
    voxel) of one image's class labels (*spatial; every non-zero class is foreground): face-connected
    components, objects of fewer than `min_size` voxels removed; written into `out` (a C-contiguous
    uint32 array of the same shape) when given."""
    if isinstance(classes, torch.Tensor):
        classes = classes.cpu().numpy()
    foreground = np.asarray(classes) != 0
    direct = out is not None and out.dtype == np.uint32 and out.flags.c_contiguous and out.shape == foreground.shape
    labels = out if direct else np.empty(foreground.shape, np.uint32)
    n = int(ndimage.label(foreground, _structure(foreground.ndim), output=labels))
    del foreground
    if min_size > 1 and n:
        _renumber(labels, _keep(_counts(labels, n), min_size))
    if out is not None and not direct:
        out[...] = labels
        return out
    return labels


# ---------------------------------------------------------------------------------------------
# out of core


def temporary_path(out_path: str | os.PathLike[str]) -> Path:
    """Where the class labels of an out-of-core instance prediction into `out_path` are kept while
    it runs: ``.NAME.classes.zarr`` beside it."""
    path = Path(os.path.abspath(out_path))
    return path.with_name(f".{path.name}.classes.zarr")


def _face_pairs(
    out: Any,
    lead: tuple[int, ...],
    region: tuple[slice, ...],
    bounds: Sequence[Sequence[int]],
    index: tuple[int, ...],
    offsets: np.ndarray,
) -> list[np.ndarray]:
    """The pairs of fragment ids (global, int64, shape (2, m)) that touch across the faces between
    the block at grid `index` and its next neighbour on each axis: voxels face to face, both
    foreground. Reads two voxel-thick slabs of `out` per face."""
    pairs = []
    here = offsets[index]
    for axis, k in enumerate(index):
        if k + 2 >= len(bounds[axis]):
            continue  # the last block on this axis
        stop = region[axis].stop
        slab = list(region)
        slab[axis] = slice(stop - 1, stop + 1)
        faces = np.asarray(out[(*lead, *slab)])
        a = np.take(faces, 0, axis=axis).astype(np.int64)
        b = np.take(faces, 1, axis=axis).astype(np.int64)
        touch = (a > 0) & (b > 0)
        if touch.any():
            there = offsets[(*index[:axis], k + 1, *index[axis + 1 :])]
            found = np.unique(np.stack([a[touch] + here, b[touch] + there]), axis=1)
            pairs.append(found)
    return pairs


def _merge(pairs: list[np.ndarray], total: int) -> np.ndarray:
    """The object (0..K, numbered in the order of their least fragment) of each fragment 0..total
    (0 is background): the connected components of the graph whose edges are the touching pairs
    (`scipy.sparse.csgraph.connected_components`)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    edges = np.concatenate(pairs, axis=1) if pairs else np.zeros((2, 0), np.int64)
    graph = coo_matrix((np.ones(edges.shape[1], np.int8), (edges[0], edges[1])), shape=(total + 1, total + 1))
    _, components = connected_components(graph.tocsr(), directed=False)
    assert components.shape == (total + 1,) and components[0] == 0  # node 0 (background) has no edges
    return components


def _check_tables(total: int, memory_limit: int | None) -> None:
    """The fragment tables of `total` fragments fit the merge and `memory_limit`, or a ValueError."""
    if total > MAX_FRAGMENTS:
        raise ValueError(
            f"the foreground falls into more than {MAX_FRAGMENTS:,} parts of objects in blocks, more than the merge "
            "takes (scipy's graphs count with int32): use larger blocks (block_shape=, CLI --block-size)"
        )
    need = total * FRAGMENT_BYTES
    if memory_limit is not None and need > memory_limit:
        raise ValueError(
            f"joining the {total:,} parts of objects found so far across blocks needs about {need:,} bytes, more "
            f"than memory_limit={memory_limit}: use larger blocks, or raise memory_limit if the machine has the memory"
        )


def label_out_of_core(
    classes: Any,
    out: Any,
    regions: Callable[[], Any],
    bounds: Sequence[Sequence[int]],
    *,
    image: int | None,
    min_size: int = 0,
    memory_limit: int | None = None,
) -> int:
    """Label the instances of one image of the class labels `classes` (a zarr array, (N, *spatial)
    when `image` is an index, else (*spatial)) into `out` (uint32, the same layout), block by
    block: `regions()` yields each block's region (a tuple of slices; the blocks tile the image
    on the grid `bounds`, per axis, in C order). Returns the number of objects. Equal to
    `label_instances` on the whole image; holds one block and the fragment tables
    (`FRAGMENT_BYTES` each; more than `memory_limit` is a ValueError before they are built)."""
    dims = len(bounds)
    structure = _structure(dims)
    lead = () if image is None else (image,)
    counts: list[int] = []
    sizes: list[np.ndarray] = []
    firsts: list[np.ndarray] = []
    for region in regions():
        foreground = np.asarray(classes[(*lead, *region)]) != 0
        local = np.empty(foreground.shape, np.uint32)
        k = int(ndimage.label(foreground, structure, output=local))
        del foreground
        counts.append(k)
        _check_tables(sum(counts), memory_limit)
        if k:
            sizes.append(_counts(local, k)[1:])
            flat = local.reshape(-1)
            first = np.flatnonzero(np.diff(np.maximum.accumulate(flat), prepend=np.uint32(0)))  # ids appear in order
            corner = np.array([r.start for r in region], np.int64)
            firsts.append(np.stack(np.unravel_index(first, local.shape), axis=1).astype(np.int64) + corner)
        out[(*lead, *region)] = local
    total = sum(counts)
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    table = np.zeros(total + 1, np.uint32)
    if total:
        grid = offsets[:-1].reshape([len(ax) - 1 for ax in bounds])
        pairs: list[np.ndarray] = []
        for index, region in zip(np.ndindex(*grid.shape), regions(), strict=True):
            pairs += _face_pairs(out, lead, region, bounds, index, grid)
        components = _merge(pairs, total)
        del pairs
        objects = int(components.max())
        frag_sizes, frag_first = np.concatenate(sizes), np.concatenate(firsts)
        of = components[1:]
        object_sizes = np.bincount(of, weights=frag_sizes, minlength=objects + 1).round().astype(np.int64)
        # each object's first voxel in raster order: the least first voxel of its fragments
        order = np.lexsort((*(frag_first[:, d] for d in reversed(range(dims))), of))
        starts = np.flatnonzero(np.diff(of[order], prepend=-1))
        object_first = np.zeros((objects + 1, dims), np.int64)
        object_first[of[order][starts]] = frag_first[order][starts]
        del order, starts
        rank = np.lexsort(tuple(object_first[1:, d] for d in reversed(range(dims))))  # objects 1..K, raster order
        keep = object_sizes[1:][rank] >= max(min_size, 1)
        new = np.zeros(objects + 1, np.uint32)
        new[1 + rank[keep]] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
        table[1:] = new[of]
        kept = int(keep.sum())
    else:
        kept = 0
    for k, region in enumerate(regions()):
        if counts[k]:
            local = np.ascontiguousarray(out[(*lead, *region)])
            block_table = table[offsets[k] : offsets[k + 1] + 1].copy()
            block_table[0] = 0
            _renumber(local, block_table)
            out[(*lead, *region)] = local
    return kept


def remove_temporary(path: Path) -> None:
    """Remove the class labels' temporary array at `path` (only an array unetgen made: its files,
    then the folder if nothing else is left in it)."""
    from .arrays import _existing_local, _remove_output

    if not os.path.lexists(path):
        return
    if _existing_local(path) is not None:  # a ValueError for anything that is not unetgen's array
        _remove_output(path)
    try:
        path.rmdir()
    except OSError as err:
        raise ValueError(f"cannot remove the temporary {short_path(str(path))}: {err.strerror}") from None


# ---------------------------------------------------------------------------------------------
# the prediction: class labels, then instances


def _out_of_core(out: Any) -> bool:
    """`out` is labelled block by block: an array-like (not in memory) on a local disk with attributes."""
    from collections.abc import MutableMapping

    from .ownership import storage_path

    if out is None or isinstance(out, (torch.Tensor, np.ndarray)):
        return False
    return storage_path(out) is not None and isinstance(getattr(out, "attrs", None), MutableMapping)


def predict_instances(
    model: Any,
    image: Any,
    *,
    out: Any,
    min_size: int,
    plan_options: dict[str, Any],
    blend: str,
    block_shape: Any,
    device: Any,
    memory_limit: int | None,
    resume: bool,
    journal: Any,
    callback: Any,
    progress: bool,
    inference: dict[str, Any] | None = None,
    predict: Callable[..., Any],
    prepare: Callable[..., Any],
) -> Any:
    """`predict_tiled(..., output_type="instances")`: the class labels, then their instances (see
    the module docstring); the arguments are checked and the memory estimated first. `inference`:
    `predict_tiled`'s optimize, amp, tta and tta_axes, for the class labels. `predict` and
    `prepare` are `unetgen.predict.run`'s (which calls this: passed in, not imported)."""
    from .options import check_min_size, config_of, is_int_tuple
    from .ownership import check_apart
    from .plan import check_memory, plan_tiles
    from .sinks import check_out
    from .sources import ArraySource, open_source, spatial_shape

    min_size = check_min_size(min_size, "instances")
    config = config_of(model)
    dtype = next(model.parameters()).dtype
    source, batched, images = open_source(config, image, dtype)
    spatial = spatial_shape(config, image)
    plan = plan_tiles(model, spatial, **plan_options, dtype=dtype)
    shape = ((images,) if batched else ()) + spatial
    if out is not None:
        check_apart(image, out)
        check_out(out, shape, "instances", config.out_channels)
    chunked = _out_of_core(out)
    chunks = getattr(out, "chunks", None)
    block = block_shape if block_shape is not None or not is_int_tuple(chunks) else chunks[-len(spatial) :]
    check_memory(
        config,
        plan,
        images=images,
        output_type="instances",
        dtype=dtype,
        memory_limit=memory_limit,
        allocate_result=not chunked,
        read_bytes=source.read_bytes(plan.tile_input) if isinstance(source, ArraySource) else 0,
        labelling_bytes=labelling_bytes(
            spatial, images=images, in_memory=not chunked, block_shape=None if block is None else _ints(block, spatial)
        ),
    )
    common = dict(**plan_options, blend=blend, output_type="labels", progress=progress, memory_limit=memory_limit)
    common.update(inference or {})
    if chunked:

        def predict_classes(classes: Any) -> None:
            predict(model, image, **common, out=classes, block_shape=block, resume=resume, journal=journal,
                          callback=callback)  # fmt: skip

        return predict_chunked(model, image, out, block, plan, min_size, resume, memory_limit, predict_classes, prepare)
    classes = predict(model, image, **common, device="cpu", block_shape=block_shape, journal=journal,
                            resume=resume, callback=callback)  # fmt: skip
    batch = classes if batched else classes[None]
    if out is None:
        result = torch.empty((images, *spatial), dtype=torch.uint32)
        for n in range(images):
            label_instances(batch[n], min_size, out=result[n].numpy())
        del classes, batch
        target = device if device is not None else image.device if isinstance(image, torch.Tensor) else "cpu"
        result = result.to(target)
        return result if batched else result[0]
    for n in range(images):
        labels = label_instances(batch[n], min_size)
        value = torch.from_numpy(labels) if isinstance(out, torch.Tensor) else labels
        out[(n, Ellipsis) if batched else Ellipsis] = value
    return out


def _ints(block: Any, spatial: Sequence[int]) -> tuple[int, ...]:
    from .options import positive_ints

    return positive_ints("block_shape", block, len(spatial), broadcast=True)


def predict_chunked(
    model: Any,
    image: Any,
    out: Any,
    block: Any,
    plan: Any,
    min_size: int,
    resume: bool,
    memory_limit: int | None,
    predict_classes: Callable[[Any], None],
    prepare: Callable[..., Any],
) -> Any:
    """Out of core: the class labels into the temporary beside `out` (by `predict_classes(array)`:
    `predict_tiled` or a Dask cluster), then labelled into `out` block by block; the temporary is
    removed when `out` is complete."""
    from .arrays import create_output
    from .ownership import output_lock, storage_path

    out_path = storage_path(out)
    assert out_path is not None
    temp = temporary_path(out_path)
    with output_lock(out_path):
        job, record = _open_record(model, image, out, block, plan, min_size, resume, prepare)
        if record.completed < job.num_blocks:
            if ATTRIBUTE in out.attrs:
                del out.attrs[ATTRIBUTE]  # from an earlier run: true again only when this one completes
            classes = create_output(temp, model, image, output_type="labels", block_shape=block, plan=plan,
                                    overwrite=not resume)  # fmt: skip
            predict_classes(classes)
            objects = _label_job(job, classes, out, min_size, memory_limit)
            out.attrs[ATTRIBUTE] = {"objects": objects if job.batched else objects[0], "min_size": min_size,
                                    "connectivity": "face"}  # fmt: skip
            for b in range(job.num_blocks):
                record.mark(b)
            record.flush()
        remove_temporary(temp)
    return out


def _open_record(
    model: Any, image: Any, out: Any, block: Any, plan: Any, min_size: int, resume: bool, prepare: Callable[..., Any]
) -> Any:
    """The block layout of `out` and its progress record (all blocks or none: complete when labelled)."""
    import hashlib

    from .journal import Journal
    from .sinks import stored_record

    job, _, _ = prepare(model, image, out, output_type="labels", block_shape=block, plan=plan)
    fingerprint = hashlib.sha256(f"instances:min_size={min_size}:{job.fingerprint(model)}".encode()).hexdigest()
    reread = functools.partial(stored_record, out)
    return job, Journal(out.attrs, fingerprint, job.num_blocks, resume=resume, reread=reread)


def _label_job(job: Any, classes: Any, out: Any, min_size: int, memory_limit: int | None) -> list[int]:
    """Label every image of `job` from `classes` into `out`, block by block: the objects of each."""
    per = math.prod(job.blocks_per_axis)
    bounds = [tuple(ax.bounds) for ax in job.blocks]
    objects = []
    for n in range(job.images):

        def regions(n: int = n) -> Any:
            return (job.block(b)[1] for b in range(n * per, (n + 1) * per))

        image = n if job.batched else None
        objects.append(
            label_out_of_core(classes, out, regions, bounds, image=image, min_size=min_size, memory_limit=memory_limit)
        )
    return objects
