"""`unetgen predict`: an image of any size, tile by tile (overlap-tile strategy); everything is
checked before any prediction runs (images are read and written by `unetgen.predict.formats`).
A .zarr output or a Dask option takes the out-of-core branch (`cmd_predict_large`,
docs/large-images.md)."""

from __future__ import annotations

import argparse
import logging
import pickle
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..config.unet_config import UNetConfig
from .args import check_output, read_config, spatial, spatial_axes_arg
from .errors import CommandError, UsageError, note, show

# ---------------------------------------------------------------------------------------------
# the model


def _check_weights_arg(args: argparse.Namespace) -> None:
    """--weights is given exactly when CONFIG is a config file (a checkpoint holds its weights)."""
    if Path(args.config).suffix.lower() == ".safetensors":
        if args.weights is not None:
            raise UsageError(f"{show(args.config)} is a checkpoint with its own weights; drop --weights")
    elif args.weights is None and not args.dry_run:
        raise UsageError("--weights FILE is needed with a config file (or pass a .safetensors checkpoint as CONFIG)")


def _load_model(args: argparse.Namespace, cfg: UNetConfig) -> Any:
    """The model with its weights (None for a dry run without weights)."""
    import torch

    from ..build import build_unet
    from ..checkpoint import load_unet, sniff
    from ..predict.formats import open_regular_file

    if Path(args.config).suffix.lower() == ".safetensors":
        return load_unet(args.config, device=args.device)
    if args.weights is None:
        return None
    open_regular_file(args.weights, "--weights").close()  # one regular-file check before sniffing
    found = sniff(args.weights)  # by content, whatever the suffix
    if found.kind not in ("safetensors", "torch", "pickle"):
        what = found.what or "a file unetgen does not recognise (neither safetensors nor torch.save's format)"
        raise ValueError(f"--weights {show(args.weights)}: this is {what}, not weights; {found.advice}")
    if found.kind == "safetensors":
        model = load_unet(args.weights, device=args.device)
        if model.config != cfg:
            raise ValueError(
                f"the config stored in {show(args.weights)} differs from {show(args.config)}; "
                "pass the checkpoint alone as CONFIG"
            )
        return model
    model = build_unet(cfg, device=args.device)
    try:
        # an open file, not the path: torch.load reads a path ending in .safetensors as safetensors
        with warnings.catch_warnings(), open_regular_file(args.weights, "--weights") as f:
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing
            state = torch.load(f, map_location=args.device or "cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as err:  # unpickling refused, not a zip, wrong keys or shapes, not a dict
        if isinstance(err, ValueError) and str(err).startswith("--weights"):
            raise  # not a regular file
        if isinstance(err, pickle.UnpicklingError):
            why = "it is a pickle that needs code to load, which is never run (torch.load weights_only=True)"
        else:
            why = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise ValueError(
            f"--weights {show(args.weights)}: not a state_dict of this config ({why}); save one with "
            "torch.save(model.state_dict(), path), or use a unetgen .safetensors checkpoint"
        ) from None
    return model.eval()


def _spec(args: argparse.Namespace, model: Any) -> Any:
    """The preprocessing spec stored with the model (None without one, or with --no-preprocessing)."""
    from ..predict.preprocess import spec_of

    return None if model is None or args.no_preprocessing else spec_of(model)


# ---------------------------------------------------------------------------------------------
# how tiles are computed (unetgen.predict.inference): the fast path, autocast, test-time mirroring


def add_inference_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("how tiles are computed (docs/tiling.md)")
    g.add_argument(
        "--no-optimize", action="store_true", help="run the model as it is (default: batch norm folded, channels-last)"
    )
    g.add_argument("--amp", choices=("bf16", "fp16"), default=None, help="autocast on CUDA (needs --device cuda)")
    g.add_argument("--tta", choices=("flip",), default=None, help="test-time mirroring: average over flipped tiles")
    g.add_argument(
        "--tta-axes",
        type=spatial_axes_arg,
        default=None,
        metavar="AXES",
        help="spatial axes to flip, e.g. 0,1 (default all)",
    )


def _inference_options(args: argparse.Namespace, cfg: UNetConfig) -> dict[str, Any]:
    """`predict_tiled`'s options for the flags above, checked against the config and the device."""
    dims = cfg.spatial_dims
    if args.tta_axes is not None:
        if args.tta is None:
            raise UsageError("--tta-axes needs --tta flip")
        if max(args.tta_axes) >= dims:
            example = ",".join(map(str, range(dims)))
            raise UsageError(
                f"--tta-axes {','.join(map(str, args.tta_axes))}: the config has {dims} spatial axes, "
                f"numbered 0 to {dims - 1} (e.g. --tta-axes {example})"
            )
    if args.amp is not None and not str(args.device or "cpu").startswith("cuda"):
        raise UsageError(
            f"--amp {args.amp} runs on CUDA only (on CPU autocast is about 10x slower than float32); "
            "add --device cuda or drop --amp"
        )
    return dict(optimize=not args.no_optimize, amp=args.amp, tta=args.tta, tta_axes=args.tta_axes)


def _describe(options: dict[str, Any]) -> str:
    fast = "fast path (batch norm folded, channels-last)" if options["optimize"] else "the model as it is"
    amp = f", autocast {options['amp']}" if options["amp"] else ""
    tta = ""
    if options["tta"]:
        axes = options["tta_axes"]
        tta = f", test-time mirroring over {'every spatial axis' if axes is None else 'axes ' + str(list(axes))}"
    return f"compute: {fast}{amp}{tta}"


# ---------------------------------------------------------------------------------------------
# predict


def cmd_predict(args: argparse.Namespace) -> int:
    if getattr(args, "min_size", 0) and getattr(args, "output_type", None) != "instances":
        raise UsageError("--min-size applies to --output-type instances only")
    if _is_large(args):  # zarr/TIFF images, Dask: out-of-core, resumable (docs/large-images.md)
        return cmd_predict_large(args)
    import torch

    from ..analysis.ops import tile_dependence
    from ..predict.allocator import fix_mmap_threshold
    from ..predict.axes import LaidOut, check_fit, describe
    from ..predict.formats import as_tensor, image_format, read_view, write_image
    from ..predict.ownership import check_apart
    from ..predict.plan import DEFAULT_MEMORY_LIMIT, check_memory, model_tile, plan_tiles
    from ..predict.preprocess import describe_prepared, prepare_input
    from ..predict.run import predict_tiled
    from ..predict.sources import check_image

    _check_weights_arg(args)
    fix_mmap_threshold()  # freed tensors go back to the system: the printed estimate holds
    cfg = read_config(args.config)
    inference = _inference_options(args, cfg)
    tile = None if args.tile_size is None else spatial(cfg, args.tile_size, "--tile-size")
    check_apart(args.input, args.output, what="--output", source_what="--input")  # said first: the worst mistake
    check_output(args.output)
    image_format(args.input, "--input")  # a readable file of a known format, before the model loads
    limit = args.memory_limit if args.memory_limit is not None else DEFAULT_MEMORY_LIMIT
    model = _load_model(args, cfg)
    layout = _spec_layout(args, model)
    axes = getattr(args, "axes", None)
    view = read_view(args.input, "--input", max_bytes=limit, axes=axes, layout=layout)  # refused above the limit
    if isinstance(view, LaidOut):
        if layout is None:
            check_fit(cfg, view)  # the file's (or --axes') axes against the network, named
        note(describe(view))
    image = as_tensor(view, "--input", args.input)
    dtype = next(model.parameters()).dtype if model is not None else torch.float32
    spec = _spec(args, model)
    if spec is not None:  # the raw image in the spec's layout; windows normalised as they are read
        image = prepare_input(cfg, image, spec)
        note(f"preprocessing: {describe_prepared(image)} (--no-preprocessing: the image as it is)")
        images = image.shape[0] if image.ndim == cfg.spatial_dims + 2 else 1
    else:
        if image.dim() == cfg.spatial_dims and cfg.in_channels == 1:
            image = image.unsqueeze(0)  # a single-channel image without its channel axis
        images = check_image(cfg, image, dtype).shape[0]
    if tile is None and (tile := model_tile(model, None)) is not None:
        note(f"tile: the training patch {'x'.join(map(str, tile))} ({tile_dependence(cfg)}; --tile-size to change)")
    options = dict(tile_size=tile, batch_size=args.batch_size, overlap=args.overlap)
    plan = plan_tiles(cfg, tuple(image.shape[-cfg.spatial_dims :]), **options, dtype=dtype)
    note(f"plan: {plan.summary()}")
    read = image.read_bytes(plan.tile_input) if spec is not None else 0  # the float windows
    labelling = 0
    if args.output_type == "instances":
        from ..predict.instances import labelling_bytes

        labelling = labelling_bytes(plan.image_shape, images=images, in_memory=True)
    options_memory = dict(
        images=images, output_type=args.output_type, dtype=dtype, weights_loaded=model is not None,
        read_bytes=read, chunked_input=spec is not None, optimize=inference["optimize"],
        mirrored=inference["tta"] is not None,
    )  # fmt: skip
    check_memory(cfg, plan, **options_memory, labelling_bytes=labelling, memory_limit=limit)  # type: ignore[arg-type]
    _memory_note(cfg, plan, options_memory, limit, labelling)
    note(_describe(inference))
    if args.dry_run:
        return 0
    result = predict_tiled(
        model,
        image,
        **options,
        blend=args.blend,
        progress=not args.no_progress,
        output_type=args.output_type,
        memory_limit=limit,
        preprocessing=False,  # applied above, or turned off
        min_size=args.min_size,
        **inference,
    )
    letters, pixel = _output_axes(cfg, view, model, args.output_type, result.dim())
    write_image(args.output, result.cpu().numpy(), letters, pixel)
    if args.output_type == "instances":
        objects = [int(r.max()) for r in result.reshape(-1, *result.shape[-cfg.spatial_dims :]).cpu().numpy()]
        note(f"instances: {objects[0] if len(objects) == 1 else objects} objects (face-connected foreground, "
             f"min size {args.min_size})")  # fmt: skip
    dtype_name = str(result.dtype).removeprefix("torch.")
    note(f"wrote {show(args.output)}: {args.output_type}, shape {tuple(result.shape)}, {dtype_name}")
    return 0


def _spec_layout(args: argparse.Namespace, model: Any) -> str | None:
    """The layout of the model's preprocessing spec, when it says one and is applied (its
    normalisation lays the image out from there: `unetgen.predict.preprocess`); None with
    --no-preprocessing (the image read in unetgen's layout)."""
    spec = _spec(args, model)
    return None if spec is None else spec.axes


def _output_axes(cfg: UNetConfig, view: Any, model: Any, output_type: str, ndim: int) -> tuple[str, Any]:
    """The axes of the prediction (unetgen's layout) and where its pixel size comes from: the
    input's axes when they say it, else the model's preprocessing spec."""
    from ..predict.axes import SPATIAL, Axes, LaidOut

    spatial = view.axes.spatial if isinstance(view, LaidOut) else SPATIAL[-cfg.spatial_dims :]
    letters = ("" if output_type in ("labels", "instances") else "c") + spatial
    letters = ("b" + letters) if ndim == len(letters) + 1 else letters
    found = view.axes if isinstance(view, LaidOut) else None
    spec = getattr(model, "preprocessing", None)
    size = getattr(spec, "pixel_size", None)
    if (found is None or not found.scale) and size:
        scale = tuple((a, float(size[a])) for a in SPATIAL if a in size)
        found = Axes(spatial, "the preprocessing spec", scale, getattr(spec, "unit", None))
    return letters, found


def _memory_note(cfg: UNetConfig, plan: Any, options: dict[str, Any], limit: int | None, labelling: int = 0) -> None:
    """The estimated peak of this process: what it holds now plus what the prediction adds (and
    `labelling`: what turning class labels into instances holds)."""
    from ..predict.allocator import resident_bytes
    from ..predict.plan import DEFAULT_MEMORY_LIMIT, estimate_memory, format_bytes

    est = estimate_memory(cfg, plan, **options)
    total = est.total + labelling
    parts = est.summary() + (f", instance labelling {format_bytes(labelling)}" if labelling else "")
    now = resident_bytes()
    limit = DEFAULT_MEMORY_LIMIT if limit is None else limit
    note(
        f"memory: ~{format_bytes(now + total)} at the peak: {format_bytes(now)} this process holds now "
        f"+ ~{format_bytes(total)} for the prediction ({parts}); the prediction's share is "
        f"limited to {format_bytes(limit)} (--memory-limit)"
    )


# --- out-of-core and distributed prediction (issue 14): a separate branch of `predict` -------


def _is_large(args: argparse.Namespace) -> bool:
    """A .zarr output or a Dask option: the out-of-core branch (any .npy/.zarr/.tif input)."""
    zarr_output = str(args.output).lower().rstrip("/").endswith(".zarr")
    return zarr_output or args.scheduler is not None or args.workers is not None


def cmd_predict_large(args: argparse.Namespace) -> int:
    """`predict` from a .zarr/.tif/.npy image into a .zarr output, block by block, resumable;
    on a Dask cluster with --scheduler or --workers. Checked before anything runs: the arguments,
    the scheduler's address, the output's folder (never created) and that the output is not,
    does not contain and does not sit inside the input; then one run at a time writes the output
    (a lock beside it), and only an array unetgen made is ever resumed or, with --restart, removed."""
    from ..predict.journal import Journal
    from ..predict.ownership import check_apart, check_folder

    _check_large_args(args)
    check_folder(args.output, "--output")
    check_apart(args.input, args.output, what="--output", source_what="--input")
    tile = args.tile_size[0] if args.tile_size is not None and len(args.tile_size) == 1 else args.tile_size
    block = args.block_size[0] if args.block_size is not None and len(args.block_size) == 1 else args.block_size
    output_type = getattr(args, "output_type", None) or "logits"
    plan_options = dict(tile_size=tile, batch_size=args.batch_size, overlap=args.overlap)
    options = dict(**plan_options, blend=args.blend, output_type=output_type, block_shape=block)
    min_size = getattr(args, "min_size", 0)
    if output_type == "instances":
        options["min_size"] = min_size
    options.update(_inference_options(args, read_config(args.config)))
    try:
        with _notes():
            out = _predict_large(args, plan_options, options)
    except (ValueError, ImportError, OSError, TimeoutError) as err:  # zarr's, Dask's and the model's own words
        raise CommandError(str(err)) from err
    if out is None:  # --dry-run
        return 0
    record = out.attrs.get(Journal.KEY, {})
    found = out.attrs.get("unetgen_instances")
    if output_type == "instances" and isinstance(found, dict):
        note(f"instances: {found.get('objects')} objects (face-connected foreground, min size {min_size})")
    note(
        f"wrote {show(args.output)}: shape {tuple(out.shape)}, {out.dtype}, chunks {tuple(out.chunks)}; "
        f"{record.get('completed', '?')}/{record.get('blocks', '?')} blocks complete"
    )
    return 0


class _NoteHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        note(self.format(record))


@contextmanager
def _notes() -> Iterator[None]:
    """What prediction logs ("resuming: K of N blocks done", a lock taken over) as notes on stderr."""
    logger = logging.getLogger("unetgen.predict")
    handler, level = _NoteHandler(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _check_large_args(args: argparse.Namespace) -> None:
    from ..predict.distributed import scheduler_location

    if not str(args.config).endswith(".safetensors") or args.weights is not None:
        raise UsageError("out-of-core prediction takes a .safetensors checkpoint (unetgen.save_unet) as CHECKPOINT")
    if not str(args.output).rstrip("/").endswith(".zarr"):
        raise UsageError(f"--output {show(args.output)}: out-of-core prediction writes a .zarr array (e.g. out.zarr)")
    if args.scheduler is not None and args.workers is not None:
        raise UsageError("give --scheduler or --workers, not both")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers} must be a positive number of worker processes")
    if args.scheduler is not None:
        try:
            scheduler_location(args.scheduler)
        except ValueError as err:
            raise UsageError(f"--scheduler: {err}") from None


def _predict_large(args: argparse.Namespace, plan_options: dict[str, Any], options: dict[str, Any]) -> Any:
    """The written .zarr array, None for a dry run."""
    from ..checkpoint import load_unet
    from ..predict.allocator import fix_mmap_threshold
    from ..predict.arrays import create_output, open_image
    from ..predict.axes import LaidOut, check_fit, describe
    from ..predict.ownership import output_lock
    from ..predict.plan import check_memory, plan_tiles
    from ..predict.preprocess import describe_prepared, prepare_input
    from ..predict.run import predict_tiled
    from ..predict.sources import ArraySource, open_source, spatial_shape

    fix_mmap_threshold()  # freed tensors go back to the system: the printed estimate holds
    model = load_unet(args.config, device=args.device or "cpu")
    layout = _spec_layout(args, model)
    image = open_image(args.input, getattr(args, "axes", None), layout=layout, what="--input")
    if isinstance(image, LaidOut):
        if layout is None:
            check_fit(model.config, image)  # before anything is planned or created
        note(describe(image))
    spec = _spec(args, model)
    if spec is not None:  # measured once; every window normalised with the same numbers
        image = prepare_input(model.config, image, spec)
        note(f"preprocessing: {describe_prepared(image)} (--no-preprocessing: the image as it is)")
    dtype = next(model.parameters()).dtype
    source, _, images = open_source(model.config, image, dtype)
    plan = plan_tiles(model, spatial_shape(model.config, image), **plan_options, dtype=dtype)
    note(f"plan: {plan.summary()}")
    limit = {} if args.memory_limit is None else {"memory_limit": args.memory_limit}
    chunked = isinstance(source, ArraySource)
    labelling = 0
    if options["output_type"] == "instances":
        from ..predict.geometry import default_block_shape
        from ..predict.instances import labelling_bytes

        block = options["block_shape"] or default_block_shape(plan)
        block = (block,) * len(plan.image_shape) if isinstance(block, int) else tuple(block)
        labelling = labelling_bytes(plan.image_shape, in_memory=False, block_shape=block)
    estimate = dict(
        images=images, output_type=options["output_type"], dtype=dtype, allocate_result=False,
        read_bytes=source.read_bytes(plan.tile_input) if chunked else 0, chunked_input=chunked,
        encoded_output=True, block_shape=options["block_shape"], optimize=options["optimize"],
        mirrored=options["tta"] is not None,
    )  # fmt: skip
    check_memory(model, plan, **estimate, **limit, labelling_bytes=labelling)  # before the output is created
    _memory_note(model.config, plan, estimate, args.memory_limit, labelling)
    if args.scheduler is not None or args.workers is not None:
        note("memory: that is per process: the client and each Dask worker process hold their own")
    note(_describe(options))
    if args.dry_run:
        return None
    if args.scheduler is not None or args.workers is not None:
        del model  # the workers load their own
        return _predict_on_cluster(args, options)
    with output_lock(args.output):  # create (or reopen) and predict as one run
        out = create_output(
            args.output,
            model,
            image,
            output_type=options["output_type"],
            block_shape=options["block_shape"],
            overwrite=args.restart,
            **plan_options,
        )
        predict_tiled(
            model, image, out=out, **options, **limit, resume=not args.restart, progress=not args.no_progress,
            preprocessing=False,  # applied above, or turned off
        )  # fmt: skip
    return out


def _predict_on_cluster(args: argparse.Namespace, options: dict[str, Any]) -> Any:
    """Predict on the Dask cluster at --scheduler, or on a local one of --workers processes."""
    from ..predict.distributed import connect_scheduler, predict_distributed

    client = None
    if args.scheduler is not None:
        client = connect_scheduler(args.scheduler)
        note(f"dask dashboard: {client.dashboard_link}")
    try:
        return predict_distributed(
            args.config,
            args.input,
            args.output,
            client=client,
            workers=args.workers,
            axes=getattr(args, "axes", None),
            **options,
            device=args.device or "cpu",
            resume=not args.restart,
            progress=not args.no_progress,
            preprocessing=False if args.no_preprocessing else None,
        )
    finally:
        if client is not None:
            client.close()
