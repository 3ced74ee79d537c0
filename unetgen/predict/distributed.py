"""Predict images larger than one machine on a Dask cluster (docs/large-images.md).

`predict_distributed(checkpoint, image, out, client=...)` plans the tiles and blocks of
`unetgen.predict_tiled` once, then sends each Dask task a few blocks to predict. A task loads
the model from the checkpoint path once per worker process (`worker_model`: a cache keyed by
path, modification time, size and device; the weights never travel through the scheduler),
reads its tiles from the image (a path or a zarr array that every worker can open) and writes
its blocks straight into the shared zarr output, one chunk per block. The client records the
completed blocks in the output's attributes (one writer), so an interrupted run resumes.

Dask is an optional dependency: `pip install 'unetgen[large]'` (zarr, dask[distributed], tifffile).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..checkpoint import load_unet
from .arrays import create_output, open_image, open_output
from .journal import Journal
from .options import Blend, OutputType
from .plan import TilePlan
from .run import Job, prepare, run

__all__ = ["predict_distributed", "worker_model"]

_MODELS: dict[tuple[Any, ...], nn.Module] = {}
_LOCK = threading.Lock()
loads = 0
"""How many times `worker_model` loaded a checkpoint in this process (tests check it is once)."""


def _checkpoint_key(checkpoint: str | os.PathLike[str]) -> tuple[str, int, int]:
    path = Path(checkpoint).resolve()
    try:
        stat = path.stat()
    except OSError as err:
        raise ValueError(f"{checkpoint}: cannot read the checkpoint: {err.strerror}") from None
    return str(path), stat.st_mtime_ns, stat.st_size


def worker_model(checkpoint: str | os.PathLike[str], device: str = "cpu") -> nn.Module:
    """The model in `checkpoint` on `device`, loaded once per process and kept while the file is
    unchanged (same path, modification time and size); one model is kept at a time."""
    global loads
    key = (*_checkpoint_key(checkpoint), str(device))
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            _MODELS.clear()
            model = _MODELS[key] = load_unet(checkpoint, device=device).eval()
            loads += 1
    return model


def _predict_blocks(
    checkpoint: str,
    image: Any,
    out: Any,
    plan: TilePlan,
    options: dict[str, Any],
    blocks: Sequence[int],
    device: str,
) -> list[int]:
    """One Dask task: predict `blocks` on this worker and write them into `out`."""
    try:
        from distributed import get_worker

        torch.set_num_threads(max(1, get_worker().state.nthreads))
    except (ImportError, ValueError):
        pass  # not on a Dask worker
    model = worker_model(checkpoint, device)
    job, source, sink = prepare(model, open_image(image), open_output(out), plan=plan, **options)
    run(model, job, source, sink, todo=blocks, progress=False)
    return list(blocks)


def _check_aligned(job: Job, out: Any) -> None:
    """Blocks written by different processes must not share a chunk (a chunk is rewritten whole)."""
    chunks = tuple(out.chunks)
    dims = len(job.blocks)
    if job.batched and chunks[0] != 1:
        raise ValueError(f"out has chunks {chunks}: the image axis must have chunks of 1 (use create_output)")
    for a, (blocks, chunk) in enumerate(zip(job.blocks, chunks[-dims:], strict=True)):
        bad = [b for b in blocks.bounds[1:-1] if b % chunk]
        if bad:
            raise ValueError(
                f"out has chunks {chunks}: on spatial axis {a} the block bound {bad[0]} is not on the chunk grid "
                f"({chunk}), so two tasks would write one chunk: create out with unetgen.arrays.create_output"
            )


def predict_distributed(
    checkpoint: str | os.PathLike[str],
    image: Any,
    out: Any,
    *,
    client: Any = None,
    workers: int | None = None,
    tile_size: int | Sequence[int] | None = None,
    batch_size: int = 1,
    overlap: float | None = None,
    memory_budget: int | None = None,
    blend: Blend = "gaussian",
    output_type: OutputType = "logits",
    block_shape: int | Sequence[int] | None = None,
    blocks_per_task: int = 1,
    device: str = "cpu",
    resume: bool = True,
    progress: bool = True,
    callback: Callable[[Sequence[int]], None] | None = None,
) -> Any:
    """Predict `image` with the model in `checkpoint` on a Dask cluster, into the zarr array `out`.

    `image`: a path (`.zarr`, `.npy`, `.tif`: see `unetgen.arrays.open_image`) or a zarr array,
    readable by every worker (shared or object storage). `out`: a path, created with
    `unetgen.arrays.create_output` if missing (one chunk per block), or a zarr array whose chunks
    hold whole blocks. `client`: a `distributed.Client` (e.g. `Client("tcp://host:8786")`);
    without it a `LocalCluster` of `workers` processes (default 1) with one thread each is
    started and closed. The other options are `predict_tiled`'s; the result equals
    `predict_tiled(model, image, out=out, ...)` with the same options.

    Tasks of `blocks_per_task` blocks (rounded to whole groups of `batch_size` blocks, which
    are batched together: see `unetgen.tiling.run`) are retried twice if a worker dies. The client records the
    completed blocks in `out`'s attributes; a run started again with the same arguments skips
    them (`resume`, as in `predict_tiled`). `callback(blocks)` is called on the client after each
    task; an exception from it (or Ctrl-C) cancels the remaining tasks and keeps the record.
    Returns the zarr array.
    """
    try:
        from distributed import as_completed
    except ImportError:
        raise ImportError("distributed prediction needs Dask: pip install 'unetgen[large]'") from None
    if not isinstance(blocks_per_task, int) or blocks_per_task < 1:
        raise ValueError(f"blocks_per_task={blocks_per_task!r} must be a positive int")
    if client is not None and workers is not None:
        raise ValueError("give client or workers, not both: workers starts a local cluster")
    model = load_unet(checkpoint, device="cpu").eval()  # the plan and the fingerprint; tasks load their own
    source = open_image(image)
    plan_options = dict(tile_size=tile_size, batch_size=batch_size, overlap=overlap, memory_budget=memory_budget)
    if isinstance(out, (str, os.PathLike)):
        target = create_output(out, model, source, output_type=output_type, block_shape=block_shape, **plan_options)
        out = str(Path(out).resolve())  # workers may run elsewhere: no relative paths
    else:
        target = out
    options = dict(blend=blend, output_type=output_type, block_shape=block_shape)
    job, _, _ = prepare(model, source, target, **plan_options, **options)
    _check_aligned(job, target)
    journal = Journal(target.attrs, job.fingerprint(model), job.num_blocks, resume=resume)
    tasks = _tasks(job, journal, blocks_per_task)
    del model
    spec = str(Path(image).resolve()) if isinstance(image, (str, os.PathLike)) else source
    args = (str(Path(checkpoint).resolve()), spec, out, job.plan, options)
    futures = []
    with _cluster(client, workers) as client:
        try:
            futures = [client.submit(_predict_blocks, *args, blocks, device, pure=False, retries=2) for blocks in tasks]
            quiet = not progress or not sys.stderr.isatty()
            total = sum(job.num_tiles(b) for blocks in tasks for b in blocks)
            with tqdm(total=total, unit="tile", desc="predict", disable=quiet) as bar:
                for future in as_completed(futures):
                    done = future.result()
                    for b in done:
                        journal.mark(b)
                    bar.update(sum(job.num_tiles(b) for b in done))
                    if callback is not None:
                        callback(done)
        finally:
            journal.flush()
            client.cancel([f for f in futures if not f.done()])
    return target


def _tasks(job: Job, journal: Journal, blocks_per_task: int) -> list[list[int]]:
    """The blocks of each task: whole groups (see `unetgen.tiling.run`) not yet in `journal`,
    about `blocks_per_task` blocks per task."""
    groups = job.groups(done=journal)
    per_task = max(1, blocks_per_task // job.plan.batch_size)
    return [[b for g in groups[i : i + per_task] for b in job.members(g)] for i in range(0, len(groups), per_task)]


@contextmanager
def _cluster(client: Any, workers: int | None) -> Iterator[Any]:
    """`client`, or a client of a `LocalCluster` of `workers` processes (default 1) with one
    thread each, closed on exit."""
    if client is not None:
        yield client
        return
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=workers or 1, threads_per_worker=1, dashboard_address=None)
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
