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

import functools
import itertools
import logging
import os
import socket
import struct
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..checkpoint import load_unet
from ..config.preprocessing import Preprocessing
from ..reprs import short_repr
from .arrays import create_output, open_image, open_output
from .inference import check_amp, check_optimize, inference_model, mirror_axes
from .journal import Journal
from .options import Amp, Blend, OutputType, Tta, check_min_size
from .ownership import check_apart, is_local, output_lock, storage_path
from .plan import TilePlan, plan_tiles
from .preprocess import Normalizer, PreprocessingArg, prepare_input, spec_of
from .run import Job, prepare, run
from .sinks import stored_record
from .sources import spatial_shape

__all__ = [
    "MAX_TASKS_IN_FLIGHT",
    "SCHEDULER_TIMEOUT",
    "connect_scheduler",
    "predict_distributed",
    "scheduler_location",
    "worker_model",
]

log = logging.getLogger("unetgen.predict")

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


def worker_model(checkpoint: str | os.PathLike[str], device: str = "cpu", optimize: bool = False) -> nn.Module:
    """The model in `checkpoint` on `device`, loaded once per process and kept while the file is
    unchanged (same path, modification time and size); one model is kept at a time. With
    `optimize`, its inference fast path (`inference_model`), made once: the loaded model is not
    kept beside it."""
    global loads
    key = (*_checkpoint_key(checkpoint), str(device), optimize)
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            _MODELS.clear()
            model = _MODELS[key] = inference_model(load_unet(checkpoint, device=device).eval(), optimize)
            loads += 1
    return model


def _predict_blocks(
    checkpoint: str,
    image: Any,
    out: Any,
    plan: TilePlan,
    options: dict[str, Any],
    preprocessing: tuple[dict[str, Any], list[Normalizer | None]] | None,
    blocks: Sequence[int],
    device: str,
    axes: str | None = None,
) -> list[int]:
    """One Dask task: predict `blocks` on this worker and write them into `out`; `preprocessing`
    is the spec (as JSON) with the numbers the client measured, applied as they are (never
    measured again here)."""
    try:
        from distributed import get_worker

        torch.set_num_threads(max(1, get_worker().state.nthreads))
    except (ImportError, ValueError):
        pass  # not on a Dask worker
    model = worker_model(checkpoint, device, optimize=options.get("optimize", True))
    if preprocessing is None:
        source = open_image(image, axes)
    else:  # read in the spec's layout, as the client did
        spec, normalizers = Preprocessing.model_validate(preprocessing[0]), preprocessing[1]
        source = prepare_input(model.config, open_image(image, axes, layout=spec.axes), spec, normalizers=normalizers)
    job, source, sink = prepare(model, source, open_output(out), plan=plan, **options)
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
    axes: str | None = None,
    preprocessing: PreprocessingArg = None,
    min_size: int = 0,
    optimize: bool = True,
    amp: Amp | None = None,
    tta: Tta | None = None,
    tta_axes: Sequence[int] | None = None,
) -> Any:
    """Predict `image` with the model in `checkpoint` on a Dask cluster, into the zarr array `out`.

    `image`: a path (`.zarr`, `.npy`, `.tif`: see `unetgen.arrays.open_image`) or a zarr array,
    readable by every worker (shared or object storage); `axes` as in `open_image` (the workers
    read it so too). `out`: a path, created with
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
    `preprocessing` as in `predict_tiled` (None: the spec stored in the checkpoint; False: none;
    or a spec): the client measures each image's statistics once (`prepare_input`) and sends the
    fixed numbers with every task, so that every block is normalised alike and no worker reads
    the image to measure again; the numbers are part of the output's resume fingerprint.
    `output_type="instances"` (with `min_size`): the cluster predicts the class labels into a
    temporary zarr array beside `out` (on a local or shared disk), which this process then labels
    into `out` block by block (`unetgen.predict.instances`) and removes.
    `optimize` (default True: each worker process makes its model's inference fast path once,
    see `worker_model`), `amp`, `tta` and `tta_axes` are `predict_tiled`'s (`amp` is checked on
    the client against `device`). Returns the zarr array.
    """
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ImportError("distributed prediction needs Dask: pip install 'unetgen[large]'") from None
    if isinstance(blocks_per_task, bool) or not isinstance(blocks_per_task, int) or blocks_per_task < 1:
        raise ValueError(f"blocks_per_task={short_repr(blocks_per_task)} must be a positive int")
    if client is not None and workers is not None:
        raise ValueError("give client or workers, not both: workers starts a local cluster")
    check_min_size(min_size, output_type)
    model = load_unet(checkpoint, device="cpu").eval()  # the plan and the fingerprint; tasks load their own
    if amp is not None:  # here the value and the device's type; on the workers their GPU too
        try:
            on = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise ValueError(f"device={short_repr(device)} is not a torch device, e.g. cpu or cuda") from None
        check_amp(amp, on, next(model.parameters()).dtype)
    check_optimize(optimize), mirror_axes(tta, tta_axes, model.config.spatial_dims)  # before the output is made
    spec = spec_of(model, preprocessing)
    raw = open_image(image, axes, layout=None if spec is None else spec.axes)
    if is_local(out):
        check_apart(raw, out)  # before the output is created
    # measured once, here: the tasks get the numbers
    source = raw if spec is None else prepare_input(model.config, raw, spec)
    sent = None
    if spec is not None:
        normalizers = list(getattr(source, "normalizers", None) or [source.normalizer])
        sent = (spec.model_dump(mode="json"), normalizers)
    plan_options = dict(tile_size=tile_size, batch_size=batch_size, overlap=overlap, memory_budget=memory_budget)
    if output_type == "instances":
        everything = dict(
            client=client, workers=workers, blend=blend, blocks_per_task=blocks_per_task, device=device,
            resume=resume, progress=progress, callback=callback, axes=axes, preprocessing=preprocessing, **plan_options,
            optimize=optimize, amp=amp, tta=tta, tta_axes=tta_axes,
        )  # fmt: skip
        return _predict_instances(checkpoint, model, image, source, out, block_shape, min_size, everything)
    with output_lock(Path(os.path.abspath(out)) if is_local(out) else storage_path(out)):
        if is_local(out):
            target = create_output(out, model, source, output_type=output_type, block_shape=block_shape, **plan_options)
            out = str(Path(out).resolve())  # workers may run elsewhere: no relative paths
        else:
            target = out
        check_apart(source, target)
        options = dict(blend=blend, output_type=output_type, block_shape=block_shape, optimize=optimize, tta=tta)
        options.update(tta_axes=tta_axes)
        job, _, _ = prepare(model, source, target, **plan_options, **options)  # checks all but amp
        job = replace(job, amp=amp)  # the workers check it on their device
        options.update(amp=amp)
        _check_aligned(job, target)
        reread = functools.partial(stored_record, target)
        journal = Journal(target.attrs, job.fingerprint(model), job.num_blocks, resume=resume, reread=reread)
        if journal.resumed:
            log.info("resuming: %d of %d blocks done", journal.resumed, job.num_blocks)
        del model
        where = str(Path(image).resolve()) if isinstance(image, (str, os.PathLike)) else raw
        args = (str(Path(checkpoint).resolve()), where, out, job.plan, options, sent)
        with _cluster(client, workers) as client:
            show = progress and sys.stderr.isatty()
            _run_tasks(client, args, job, journal, blocks_per_task, device, show, callback, axes)
    return target


def _predict_instances(
    checkpoint: str | os.PathLike[str],
    model: nn.Module,
    image: Any,
    source: Any,
    out: Any,
    block_shape: Any,
    min_size: int,
    options: dict[str, Any],
) -> Any:
    """Instances on a cluster: its class labels into the temporary beside `out`, labelled here."""
    from .instances import predict_chunked, temporary_path

    plan_keys = ("tile_size", "batch_size", "overlap", "memory_budget")
    plan_options = {k: options[k] for k in plan_keys}
    local = Path(os.path.abspath(out)) if is_local(out) else storage_path(out)
    if local is None:
        raise ValueError(
            "output_type='instances' on a cluster writes its class labels to a temporary beside out: give out as "
            "a path (or a zarr array) on a local or shared disk"
        )
    with output_lock(local):
        target = out
        if is_local(out):
            target = create_output(out, model, source, output_type="instances", block_shape=block_shape, **plan_options)
        check_apart(source, target)
        block = block_shape if block_shape is not None else tuple(target.chunks)[-model.config.spatial_dims :]
        dtype = next(model.parameters()).dtype
        plan = plan_tiles(model, spatial_shape(model.config, source), **plan_options, dtype=dtype)
        temp = str(temporary_path(local))  # a path: the workers open it themselves

        def predict_classes(classes: Any) -> None:
            predict_distributed(checkpoint, image, temp, output_type="labels", block_shape=block, **options)

        return predict_chunked(
            model, source, target, block, plan, min_size, options["resume"], None, predict_classes, prepare
        )


MAX_TASKS_IN_FLIGHT = 1024
"""Most tasks submitted to the scheduler at once; more are submitted as tasks complete, so the
client holds O(this) futures, not one per block."""


def _run_tasks(
    client: Any,
    args: tuple[Any, ...],
    job: Job,
    journal: Journal,
    blocks_per_task: int,
    device: str,
    progress: bool,
    callback: Callable[[Sequence[int]], None] | None,
    axes: str | None = None,
) -> None:
    """Submit the tasks, at most `MAX_TASKS_IN_FLIGHT` at a time, recording each task's blocks in
    `journal` as it completes; on any exception cancel what is in flight and keep the record."""
    from distributed import as_completed

    tasks = _tasks(job, journal, blocks_per_task)
    total = (
        sum(job.num_tiles(b) for blocks in _tasks(job, journal, blocks_per_task) for b in blocks) if progress else None
    )
    pending: set[Any] = set()

    def submit(blocks: list[int]) -> Any:
        future = client.submit(_predict_blocks, *args, blocks, device, axes, pure=False, retries=2)
        pending.add(future)
        return future

    queue = as_completed([submit(blocks) for blocks in itertools.islice(tasks, MAX_TASKS_IN_FLIGHT)])
    try:
        with tqdm(total=total, unit="tile", desc="predict", disable=not progress) as bar:
            for future in queue:
                pending.discard(future)
                done = future.result()
                for b in done:
                    journal.mark(b)
                bar.update(sum(job.num_tiles(b) for b in done))
                if callback is not None:
                    callback(done)
                more = next(tasks, None)
                if more is not None:
                    queue.add(submit(more))
    finally:
        journal.flush()
        client.cancel([f for f in pending if not f.done()])


def _tasks(job: Job, journal: Journal, blocks_per_task: int) -> Iterator[list[int]]:
    """The blocks of each task, lazily: whole groups (see `unetgen.tiling.run`) not yet in
    `journal`, about `blocks_per_task` blocks per task."""
    groups = job.groups(done=journal)
    per_task = max(1, blocks_per_task // job.plan.batch_size)
    while chunk := list(itertools.islice(groups, per_task)):
        yield [b for g in chunk for b in job.members(g)]


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


# ---------------------------------------------------------------------------------------------
# connecting to a scheduler: bounded, and only over what unetgen can set up

SCHEDULER_TIMEOUT = 30.0
"""Seconds `connect_scheduler` waits for a scheduler: to connect, for its greeting and for the
client's handshake, each."""
_MAX_GREETING = 64 << 20  # a Dask scheduler's first message (its handshake) is a few hundred bytes
_UNSUPPORTED = {
    "tls": "needs certificates (distributed.Client(address, security=...)), which unetgen's CLI cannot pass",
    "ucx": "needs ucx-py and a UCX network",
    "inproc": "reaches only a scheduler inside this very process",
    "ws": "needs the websocket comm set up on both sides",
    "wss": "needs the websocket comm and certificates",
}


def scheduler_location(address: str) -> tuple[str, int]:
    """(host, port) of a Dask scheduler address ``tcp://HOST:PORT`` or ``HOST:PORT`` (port 8786 by
    default), or a ValueError saying what is supported (tcp only: other schemes need set-ups
    unetgen cannot make; create the `distributed.Client` yourself and pass it as `client=`)."""
    shown = short_repr(address)
    supported = "unetgen connects to Dask schedulers over tcp://HOST:PORT (or HOST:PORT), e.g. tcp://head:8786"
    if not isinstance(address, str) or not address.strip() or len(address) > 1000 or not address.isprintable():
        raise ValueError(f"scheduler address {shown} is not an address; {supported}")
    scheme, sep, rest = address.strip().partition("://")
    scheme, rest = (scheme.lower(), rest) if sep else ("tcp", address.strip())
    if scheme != "tcp":
        why = _UNSUPPORTED.get(scheme, "is not a Dask protocol unetgen knows")
        raise ValueError(
            f"scheduler address {shown}: {scheme}:// {why}; {supported}. For other protocols create "
            "distributed.Client(address, ...) yourself and pass it to "
            "unetgen.distributed.predict_distributed(client=...)"
        )
    try:
        parts = urllib.parse.urlsplit(f"tcp://{rest}")
        host, port = parts.hostname, parts.port if parts.port is not None else 8786
    except ValueError as err:
        raise ValueError(f"scheduler address {shown}: {err}; {supported}") from None
    if not host or parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"scheduler address {shown} is not HOST:PORT; {supported}")
    return host, port


def _greeting(host: str, port: int, timeout: float) -> str | None:
    """Connect to `host:port` and read the first 8 bytes a Dask scheduler sends (the length of
    its handshake); None if it looks like one, else why not (each step bounded by `timeout`)."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        return f"no connection in {timeout:g} s"
    except socket.gaierror as err:
        return f"cannot resolve {short_repr(host)} ({err.strerror})"
    except OSError as err:
        return err.strerror or str(err)
    header = b""
    with sock:
        try:
            while len(header) < 8 and (part := sock.recv(8 - len(header))):
                header += part
        except TimeoutError:
            return f"it accepted the connection but sent nothing in {timeout:g} s: not a Dask scheduler"
        except OSError as err:
            return err.strerror or str(err)
    if len(header) < 8:
        return "it closed the connection without a word: not a Dask scheduler"
    (length,) = struct.unpack("<Q", header)
    if not 0 < length <= _MAX_GREETING:
        return (
            f"it does not speak Dask's protocol (it began with {short_repr(header)}): is that a Dask scheduler's port?"
        )
    return None


def connect_scheduler(address: str, timeout: float | None = None) -> Any:
    """A `distributed.Client` of the Dask scheduler at `address` (``tcp://HOST:PORT``), connected
    within about 3 x `timeout` seconds (default `SCHEDULER_TIMEOUT`), or a ValueError saying what
    was tried and what happened.

    First a plain socket connects (bounded by `timeout`) and waits for the scheduler's greeting
    (a Dask scheduler speaks first; a server that accepts and stays silent, or answers in another
    protocol, is refused here); then the client connects in a thread, given `timeout` seconds
    and abandoned after twice that. Connecting to a scheduler means trusting it: Dask's protocol
    carries pickles, which run code (docs/limits.md)."""
    from distributed import Client

    timeout = SCHEDULER_TIMEOUT if timeout is None else timeout
    host, port = scheduler_location(address)
    tried = f"tried tcp://{host}:{port} (from {short_repr(address)})"
    why = _greeting(host, port, timeout)
    if why is not None:
        raise ValueError(f"cannot reach a Dask scheduler: {tried}: {why}")
    result: dict[str, Any] = {}

    def connect() -> None:
        try:
            result["client"] = Client(f"tcp://{host}:{port}", timeout=timeout)
        except BaseException as err:  # reported to the caller below
            result["error"] = err

    thread = threading.Thread(target=connect, name="unetgen-connect-scheduler", daemon=True)
    thread.start()
    thread.join(2 * timeout)
    if thread.is_alive():
        raise ValueError(f"cannot reach a Dask scheduler: {tried}: no handshake in {timeout:g} s")
    if "error" in result:
        err = result["error"]
        if isinstance(err, MemoryError):
            why = "it answered in another protocol (Dask read an absurd message length)"
        else:
            why = short_repr(str(err) or type(err).__name__)
        raise ValueError(f"cannot reach a Dask scheduler: {tried}: {why}") from None
    return result["client"]
