"""The `unetgen` command line: inspect configs, their shapes and their valid input sizes.

Errors never show a traceback. A failure prints one ``error: ...`` line per problem to stderr,
naming the value and the fix, and exits 1; a bad command line (an unknown flag, a value that is
not a positive int, a size of the wrong rank for the config, a device this torch build lacks)
exits 2, as argparse does; Ctrl-C exits 130; a closed pipe (``unetgen schema | head``) ends
quietly with exit 1 (Python's recipe: stdout is pointed at devnull). An unexpected exception, a
bug in unetgen, prints one ``error: internal error: ...`` line; set ``UNETGEN_DEBUG=1`` to see
its traceback (it then re-raises every exception).
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import stat
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..analysis import shapes
from ..checkpoint import CheckpointError, checkpoint_config
from ..config.io import SUFFIXES, ConfigError, load_config
from ..config.unet_config import UNetConfig
from ..reprs import short_repr

DEBUG_ENV = "UNETGEN_DEBUG"
"""Set to 1 to see the traceback of any error instead of its one-line message."""
LISTED_SIZES = 64
"""`unetgen sizes` lists at most this many valid sizes per axis, then says how many more there are."""
_MAX_LINE = 1000  # an error line is cut after this many characters
_MAX_LINES = 40  # and at most this many lines are printed per error


class UsageError(ValueError):
    """A command-line value that does not fit the config (e.g. a size of the wrong rank): exit 2."""


def _show(text: str) -> str:
    """A path or value as typed, bounded; repr'd when it holds control or odd characters."""
    text = str(text)
    if text.isprintable() and len(text) <= 200:
        return text
    return short_repr(text)


# ---------------------------------------------------------------------------------------------
# argument types: argparse reports their ArgumentTypeError as `usage ... error: argument X: msg`, exit 2


def _int(text: str) -> int:
    try:
        return int(text.strip().replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{_show(text)} is not an integer") from None


def _positive_int(text: str) -> int:
    n = _int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{_show(text)} must be a positive integer (1, 2, ...)")
    return n


def _sizes_arg(text: str) -> tuple[int, ...]:
    """``572``, ``572x572`` or ``80,512,512``: positive ints, one per axis (or one for every axis)."""
    parts = text.strip().lower().replace(",", "x").split("x")
    try:
        sizes = tuple(int(p.replace("_", "")) for p in parts)
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"{_show(text)} is not a size; give one positive integer per spatial axis, e.g. 572 or 572x572"
        )
    return sizes


def _float(text: str) -> float:
    """`text` as a float, NaN (refused by every range check) when it is not a number."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def _fraction(text: str) -> float:
    value = _float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{_show(text)} must be a number in [0, 1), e.g. 0.25")
    return value


def _gib(text: str) -> int:
    value = _float(text)
    if not 0 < value < 2**40:
        raise argparse.ArgumentTypeError(f"{_show(text)} must be a positive number of GiB, e.g. 16 or 0.5")
    return int(value * 2**30)


def _path(text: str) -> str:
    if not text or "\0" in text:
        what = "is empty" if not text else "contains a NUL byte"
        raise argparse.ArgumentTypeError(f"the path {_show(text)} {what}; give a file path")
    return text


def _npy_path(text: str) -> str:
    _path(text)
    if Path(text.rstrip("/")).suffix.lower() not in (".npy", ".zarr"):
        raise argparse.ArgumentTypeError(
            f"{_show(text)} must end in .npy (a NumPy array) or .zarr (out of core), e.g. {_show(text)}.npy"
        )
    return text


def _device(text: str) -> str:
    """A device that exists in this torch build and on this machine."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"{_show(text)} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    kind = device.type
    if kind == "meta":
        raise argparse.ArgumentTypeError("meta tensors hold no data, nothing can be predicted on them; use cpu or cuda")
    if kind == "cpu":
        return text
    if kind == "cuda":
        if torch.version.cuda is None or not torch.cuda.is_available():
            build = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise argparse.ArgumentTypeError(f"{_show(text)}: {build}; use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"{_show(text)}: this machine has {count} CUDA device(s), cuda:0 first")
        return text
    backend = getattr(torch.backends, kind, None) or getattr(torch, kind, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise argparse.ArgumentTypeError(f"{_show(text)}: not available in this torch build or machine; use cpu")
    return text


class _Parser(argparse.ArgumentParser):
    """argparse with bounded messages: a 60,000-character argument is not echoed in full."""

    def error(self, message: str) -> Any:
        if len(message) > 300:
            message = message[:200] + " ... " + message[-60:]
        return super().error(message)


# ---------------------------------------------------------------------------------------------
# files: only regular files are opened (a FIFO would block, a device could be endless)


def _regular_file(path: str | Path, what: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ValueError(f"{what} {_show(str(path))}: no such file") from None
    except (OSError, ValueError) as err:
        raise ValueError(f"{what} {_show(str(path))}: cannot read it ({getattr(err, 'strerror', err)})") from None
    if stat.S_ISDIR(mode):
        raise ValueError(f"{what} {_show(str(path))} is a directory; give a file")
    if not stat.S_ISREG(mode):
        raise ValueError(f"{what} {_show(str(path))} is not a regular file (a FIFO, device or socket); give a file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{what} {_show(str(path))}: permission denied")


def _config(name: str, what: str = "CONFIG") -> UNetConfig:
    """A config from a file, a preset name or a .safetensors checkpoint's header."""
    suffix = Path(name).suffix.lower()
    if suffix in SUFFIXES or suffix == ".safetensors":
        _regular_file(name, what)
    if suffix == ".safetensors":
        return checkpoint_config(name)
    return load_config(name)


def _spatial(cfg: UNetConfig, size: tuple[int, ...] | None, option: str = "--input-size") -> tuple[int, ...]:
    """The given size broadcast to every axis (one value) or checked per axis, or the smallest
    valid input when no size is given."""
    if size is None:
        return shapes.min_input_shape(cfg)
    if len(size) == 1:
        return size * cfg.spatial_dims
    if len(size) != cfg.spatial_dims:
        example = "x".join(map(str, shapes.min_input_shape(cfg)))
        raise UsageError(
            f"{option} {'x'.join(map(str, size))} has {len(size)} axes but the config has spatial_dims="
            f"{cfg.spatial_dims}; give one size for every axis or {cfg.spatial_dims} sizes, e.g. {example}"
        )
    return size


def _near(cfg: UNetConfig, size: tuple[int, ...]) -> str:
    """Up to three valid sizes below and above `size` on every axis (O(1) each, for any size)."""
    lines = []
    for axis, s in enumerate(size):
        rule = shapes.axis_rule(cfg, axis)
        below: list[int] = []
        if s - 1 >= rule.min_size:
            below = [shapes.nearest_valid_input_size(cfg, s - 1, direction="down", axis=axis)]
            below += [v for v in (below[0] - rule.period, below[0] - 2 * rule.period) if v >= rule.min_size]
        first = shapes.nearest_valid_input_size(cfg, s + 1, direction="up", axis=axis)
        above = [v for v in (first, first + rule.period, first + 2 * rule.period) if v <= s + 3 * rule.period]
        lines.append(f"  axis {axis}: {', '.join(map(str, below[::-1]))} | {s} | {', '.join(map(str, above))}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# commands


def cmd_summary(args: argparse.Namespace) -> int:
    import torch
    import torchinfo

    from ..model.unet import UNet

    cfg = _config(args.config)
    size = _spatial(cfg, args.input_size)
    valid = shapes.is_valid_input_shape(cfg, size)
    print(f"config: {_show(args.config)}")
    if not valid:
        print(f"input size {size} is not valid; valid sizes nearby (below | given | above):\n{_near(cfg, size)}")
        return 1
    largest = max(r.channels * math.prod(r.shape) for r in shapes.trace(cfg, size)) * args.batch_size
    if largest >= 2**62:  # torch sizes are int64
        raise ValueError(
            f"input size {'x'.join(map(str, size))} with --batch-size {args.batch_size} makes maps of "
            f"{largest:.3g} elements, more than torch can index; give a smaller --input-size or --batch-size"
        )
    with torch.device("meta"):
        model = UNet(cfg)
        data = torch.empty((args.batch_size, cfg.in_channels, *size))  # meta: no memory, whatever the size
    stats = torchinfo.summary(
        model,
        input_data=data,
        device="meta",
        depth=args.depth,
        col_names=("output_size", "num_params"),
        verbose=0,
    )
    print(stats)
    _print_macs(cfg, size, args.batch_size, stats.total_mult_adds)
    print("\nshape trace:")
    _print_trace(cfg, size)
    print(f"\nvalid input sizes nearby (below | given | above):\n{_near(cfg, size)}")
    rules = [shapes.axis_rule(cfg, a) for a in range(cfg.spatial_dims)]
    halo = shapes.halo(cfg) if all(r.stem == 1 for r in rules) else ", ".join(map(_halo_text, rules))
    print(f"output shape: {shapes.output_shape(cfg, size)}; halo per side: {halo}")
    return 0


def _print_macs(cfg: UNetConfig, size: tuple[int, ...], batch_size: int, torchinfo_mult_adds: int) -> None:
    from ..analysis.costs import count_macs

    macs = count_macs(cfg, size) * batch_size
    print(f"Convolution multiply-adds (true, as FlopCounterMode counts them): {macs / 1e9:.2f} G ({macs:,})")
    print(f"torchinfo's mult-adds above: {torchinfo_mult_adds / 1e9:.2f} G")
    print(
        "  (torchinfo charges a transposed conv its whole weight at every output position, stride**dims\n"
        "   times its true cost, and adds the biases; the true count is the multiply-adds of the convs)"
    )


def _print_trace(cfg: UNetConfig, size: tuple[int, ...]) -> None:
    rows = shapes.trace(cfg, size)
    width = max(len("stage"), *(len(r.name) for r in rows))
    print(f"  {'stage':<{width}}  {'channels':>8}  shape")
    for r in rows:
        print(f"  {r.name:<{width}}  {r.channels:>8}  {' x '.join(map(str, r.shape))}")


def cmd_validate(args: argparse.Namespace) -> int:
    """One `FILE:LINE:COLUMN: field.path: message` line per problem; exit 1 if any."""
    ok = True
    for name in args.files:
        try:
            _regular_file(name, "config file")
            load_config(Path(name))
        except ConfigError as err:
            ok = False
            for line in err.problems or [f"{name}:1:1: (file): {err}"]:
                print(line)
        except ValueError as err:
            ok = False
            print(f"{_show(name)}:1:1: (file): {err}")
    return 0 if ok else 1


def cmd_schema(args: argparse.Namespace) -> int:
    from ..config.schema import schema_text

    sys.stdout.write(schema_text())
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from ..config.presets import PRESETS

    width = max(map(len, PRESETS))
    for name, preset in PRESETS.items():
        print(f"{name:<{width}}  {preset.source}")
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    cfg = _config(args.config)
    size = _spatial(cfg, args.input_size)
    out = shapes.output_shape(cfg, size)
    print(f"{_show(args.config)}: input {' x '.join(map(str, size))} -> output {' x '.join(map(str, out))}")
    _print_trace(cfg, size)
    return 0


def _halo_text(rule: shapes.AxisRule) -> str:
    """The halo of one axis, or why there is none (`stem_stride`: output at a lower resolution)."""
    return str(rule.halo) if rule.stem == 1 else f"none (output at 1/{rule.stem} resolution)"


def cmd_sizes(args: argparse.Namespace) -> int:
    cfg = _config(args.config)
    near = None if args.near is None else _spatial(cfg, args.near, "--near")
    for axis in range(cfg.spatial_dims):
        rule = shapes.axis_rule(cfg, axis)
        print(f"axis {axis}: valid input sizes are {rule.min_size} + {rule.period}*k; halo {_halo_text(rule)} per side")
        if near is not None:
            n = near[axis]
            lo = shapes.nearest_valid_input_size(cfg, n, direction="down", axis=axis) if n >= rule.min_size else None
            hi = shapes.nearest_valid_input_size(cfg, n, direction="up", axis=axis)
            below = f"{lo}" if lo is not None else f"none (the smallest is {rule.min_size})"
            print(f"  near {n}: below {below}, above {hi} (-> output {rule.output(hi)})")
            continue
        if args.max < rule.min_size:
            print(f"  none up to {args.max} (the smallest is {rule.min_size})")
            continue
        cap = rule.min_size + rule.period * (LISTED_SIZES - 1)  # never materialise more than is printed
        sizes = list(shapes.valid_input_sizes(cfg, min(args.max, cap), axis=axis))
        print("  " + ", ".join(f"{s}->{rule.output(s)}" for s in sizes))
        last = shapes.nearest_valid_input_size(cfg, args.max, direction="down", axis=axis)
        if last > sizes[-1]:
            print(f"  ... and {(last - sizes[-1]) // rule.period} more up to {last} (-> {rule.output(last)})")
    return 0


# ---------------------------------------------------------------------------------------------
# predict: everything is checked before any prediction runs


def _check_output(path: str, option: str = "--output") -> None:
    """The output can be written: not a directory or a device (a FIFO would block), in an
    existing, writable folder."""
    p = Path(path)
    if p.is_dir():
        example = _show(str(p / ("pred" + (Path(path).suffix or ".npy"))))
        raise ValueError(f"{option} {_show(path)} is a directory; give a file in it, e.g. {example}")
    if os.path.lexists(p):
        try:
            mode = os.stat(p).st_mode
        except OSError as err:
            raise ValueError(f"{option} {_show(path)}: {err.strerror}") from None
        if not stat.S_ISREG(mode):
            raise ValueError(f"{option} {_show(path)} exists and is not a regular file (a device, FIFO or socket)")
        if not os.access(p, os.W_OK):
            raise ValueError(f"{option} {_show(path)} exists and is not writable")
    parent = p.parent
    if not parent.is_dir():
        raise ValueError(f"{option} {_show(path)}: the folder {_show(str(parent))} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {_show(path)}: cannot write into the folder {_show(str(parent))}")


def _check_weights_arg(args: argparse.Namespace) -> None:
    """--weights is given exactly when CONFIG is a config file (a checkpoint holds its weights)."""
    if Path(args.config).suffix.lower() == ".safetensors":
        if args.weights is not None:
            raise UsageError(f"{_show(args.config)} is a checkpoint with its own weights; drop --weights")
    elif args.weights is None and not args.dry_run:
        raise UsageError("--weights FILE is needed with a config file (or pass a .safetensors checkpoint as CONFIG)")


def _load_model(args: argparse.Namespace, cfg: UNetConfig) -> Any:
    """The model with its weights (None for a dry run without weights)."""
    import torch

    from ..build import build_unet
    from ..checkpoint import load_unet

    if Path(args.config).suffix.lower() == ".safetensors":
        return load_unet(args.config, device=args.device)
    if args.weights is None:
        return None
    _regular_file(args.weights, "--weights")
    if Path(args.weights).suffix.lower() == ".safetensors":
        model = load_unet(args.weights, device=args.device)
        if model.config != cfg:
            raise ValueError(
                f"the config stored in {_show(args.weights)} differs from {_show(args.config)}; "
                "pass the checkpoint alone as CONFIG"
            )
        return model
    model = build_unet(cfg, device=args.device)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing
            warnings.simplefilter("ignore")
            state = torch.load(args.weights, map_location=args.device or "cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as err:  # unpickling refused, not a zip, wrong keys or shapes, not a dict
        if isinstance(err, pickle.UnpicklingError):
            why = "it is a pickle that needs code to load, which is never run (torch.load weights_only=True)"
        else:
            why = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise ValueError(
            f"--weights {_show(args.weights)}: not a state_dict of this config ({why}); save one with "
            "torch.save(model.state_dict(), path), or use a unetgen .safetensors checkpoint"
        ) from None
    return model.eval()


def cmd_predict(args: argparse.Namespace) -> int:
    if _is_large(args):  # zarr/TIFF images, Dask: out-of-core, resumable (docs/large-images.md)
        return cmd_predict_large(args)
    import torch

    from ..predict.formats import image_format, read_image, write_image
    from ..predict.plan import DEFAULT_MEMORY_LIMIT, check_memory, format_bytes, plan_tiles
    from ..predict.run import predict_tiled
    from ..predict.sources import check_image

    _check_weights_arg(args)
    cfg = _config(args.config)
    tile = None if args.tile_size is None else _spatial(cfg, args.tile_size, "--tile-size")
    _check_output(args.output)
    image_format(args.input, "--input")  # a readable file of a known format, before the model loads
    model = _load_model(args, cfg)
    image = read_image(args.input, "--input")
    if image.dim() == cfg.spatial_dims and cfg.in_channels == 1:
        image = image.unsqueeze(0)  # a single-channel image without its channel axis
    dtype = next(model.parameters()).dtype if model is not None else torch.float32
    x = check_image(cfg, image, dtype)
    options = dict(tile_size=tile, batch_size=args.batch_size, overlap=args.overlap)
    plan = plan_tiles(cfg, tuple(x.shape[2:]), **options, dtype=dtype)
    print(f"plan: {plan.summary()}", file=sys.stderr)
    limit = args.memory_limit if args.memory_limit is not None else DEFAULT_MEMORY_LIMIT
    images = x.shape[0]
    need = check_memory(cfg, plan, images=images, output_type=args.output_type, dtype=dtype, memory_limit=limit)
    print(
        f"memory: ~{format_bytes(need)} for tiles and result (limit {format_bytes(limit)}: --memory-limit)",
        file=sys.stderr,
    )
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
    )
    write_image(args.output, result.cpu().numpy())
    dtype_name = str(result.dtype).removeprefix("torch.")
    print(f"wrote {_show(args.output)}: {args.output_type}, shape {tuple(result.shape)}, {dtype_name}", file=sys.stderr)
    return 0


# --- out-of-core and distributed prediction (issue 14): a separate branch of `predict` -------


def _is_large(args: argparse.Namespace) -> bool:
    """A .zarr output or a Dask option: the out-of-core branch (any .npy/.zarr/.tif input)."""
    zarr_output = str(args.output).lower().rstrip("/").endswith(".zarr")
    return zarr_output or args.scheduler is not None or args.workers is not None


def cmd_predict_large(args: argparse.Namespace) -> int:
    """`predict` from a .zarr/.tif/.npy image into a .zarr output, block by block, resumable;
    on a Dask cluster with --scheduler or --workers."""
    from ..predict.arrays import create_output, open_image
    from ..predict.journal import Journal
    from ..predict.plan import plan_tiles
    from ..predict.run import predict_tiled

    def fail(message: str, code: int = 1) -> int:
        print(f"error: {message}", file=sys.stderr)
        return code

    if not str(args.config).endswith(".safetensors") or args.weights is not None:
        return fail("out-of-core prediction takes a .safetensors checkpoint (unetgen.save_unet) as CHECKPOINT", 2)
    if not str(args.output).rstrip("/").endswith(".zarr"):
        return fail(f"--output {_show(args.output)}: out-of-core prediction writes a .zarr array (e.g. out.zarr)", 2)
    if args.scheduler is not None and args.workers is not None:
        return fail("give --scheduler or --workers, not both", 2)
    if args.workers is not None and args.workers < 1:
        return fail(f"--workers {args.workers} must be a positive number of worker processes", 2)
    tile = args.tile_size[0] if args.tile_size is not None and len(args.tile_size) == 1 else args.tile_size
    block = args.block_size[0] if args.block_size is not None and len(args.block_size) == 1 else args.block_size
    output_type = getattr(args, "output_type", None) or "logits"
    plan_options = dict(tile_size=tile, batch_size=args.batch_size, overlap=args.overlap)
    options = dict(**plan_options, blend=args.blend, output_type=output_type, block_shape=block)
    try:
        from ..checkpoint import load_unet

        model = load_unet(args.config, device=args.device or "cpu")
        image = open_image(args.input)
        spatial = tuple(image.shape[-model.config.spatial_dims :])
        plan = plan_tiles(model, spatial, **plan_options, dtype=next(model.parameters()).dtype)
        print(f"plan: {plan.summary()}", file=sys.stderr)
        if args.dry_run:
            return 0
        if args.scheduler is None and args.workers is None:
            out = create_output(
                args.output,
                model,
                image,
                output_type=output_type,
                block_shape=block,
                overwrite=args.restart,
                **plan_options,
            )
            predict_tiled(model, image, out=out, **options, resume=not args.restart, progress=not args.no_progress)
        else:
            from ..predict.distributed import predict_distributed

            client = None
            if args.scheduler is not None:
                from distributed import Client

                client = Client(args.scheduler, timeout="30s")
                print(f"dask dashboard: {client.dashboard_link}", file=sys.stderr)
            del model  # the workers load their own
            out = predict_distributed(
                args.config,
                args.input,
                args.output,
                client=client,
                workers=args.workers,
                **options,
                device=args.device or "cpu",
                resume=not args.restart,
                progress=not args.no_progress,
            )
            if client is not None:
                client.close()
    except (ValueError, ImportError, OSError, TimeoutError) as err:
        return fail(str(err))
    record = out.attrs.get(Journal.KEY, {})
    print(
        f"wrote {args.output}: shape {tuple(out.shape)}, {out.dtype}, chunks {tuple(out.chunks)}; "
        f"{record.get('completed', '?')}/{record.get('blocks', '?')} blocks complete",
        file=sys.stderr,
    )
    return 0


def _add_large_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("images larger than memory (.zarr/.tif input, .zarr output; docs/large-images.md)")
    g.add_argument("--scheduler", default=None, help="address of a Dask scheduler, e.g. tcp://host:8786")
    g.add_argument(
        "--workers", type=_positive_int, default=None, help="start a local Dask cluster of N worker processes"
    )
    g.add_argument("--block-size", type=_sizes_arg, default=None, help="output pixels per block/chunk, e.g. 2048")
    g.add_argument("--restart", action="store_true", help="discard the progress recorded in --output; start over")
    if "--output-type" not in p._option_string_actions:  # issue 10b adds the same option for .npy outputs
        g.add_argument("--output-type", choices=("logits", "probabilities", "labels"), default="logits")


def cmd_draw(args: argparse.Namespace) -> int:
    """The Figure-1-style diagram: .svg as is, .png and .pdf through cairosvg (the `render` extra)."""
    from ..draw import draw_unet

    suffix = Path(args.output).suffix.lower()
    if suffix not in (".svg", ".png", ".pdf"):
        raise UsageError(f"-o {_show(args.output)}: unknown format {_show(suffix or '(none)')}; use .svg, .png, .pdf")
    cfg = _config(args.config)
    _check_output(args.output, "-o")
    svg = draw_unet(cfg, None if args.input_size is None else _spatial(cfg, args.input_size))
    try:
        if suffix == ".svg":
            Path(args.output).write_text(svg, encoding="utf-8")
        else:
            try:
                import cairosvg  # cairocffi raises OSError when the system cairo library is missing
            except (ImportError, OSError) as err:
                print(
                    f"error: writing {suffix} needs the optional renderer: pip install 'unetgen[render]' "
                    f"(cairosvg, with the system cairo library, e.g. apt-get install libcairo2); {err}",
                    file=sys.stderr,
                )
                return 1
            render = cairosvg.svg2png if suffix == ".png" else cairosvg.svg2pdf
            render(bytestring=svg.encode("utf-8"), write_to=args.output, scale=2 if suffix == ".png" else 1)
    except OSError as err:
        print(f"error: cannot write {_show(args.output)}: {err.strerror or err}", file=sys.stderr)
        return 1
    print(f"wrote {_show(args.output)}", file=sys.stderr)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """The largest training patch (and batch) whose step fits the memory: one line, or one `error:` line."""
    from ..analysis.memory import plan_training

    cfg = _config(args.config)
    image = _spatial(cfg, args.image, "--image")
    plan = plan_training(cfg, args.memory, image_shape=image, batch_size=args.batch, optimizer=args.optimizer)
    print(plan.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="unetgen", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("summary", help="torchinfo summary, shape trace and valid sizes of a config")
    p.add_argument("config", help="a .yaml/.json config file, a preset name or a .safetensors checkpoint")
    p.add_argument("--input-size", type=_sizes_arg, default=None, help="spatial size, e.g. 572 or 572x572")
    p.add_argument("--batch-size", type=_positive_int, default=1)
    p.add_argument("--depth", type=_positive_int, default=3, help="module nesting shown by torchinfo")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("sizes", help="valid input sizes of a config")
    p.add_argument("config", help="a .yaml/.json config file, a preset name or a .safetensors checkpoint")
    p.add_argument("--near", type=_sizes_arg, default=None, help="the valid sizes nearest to N (or NxM, per axis)")
    p.add_argument("--max", type=_positive_int, default=1024, help="list valid sizes up to N")
    p.set_defaults(func=cmd_sizes)

    p = sub.add_parser("predict", help="predict an image of any size tile by tile (overlap-tile strategy)")
    p.add_argument("config", help="a .yaml/.json config file, a preset name or a .safetensors checkpoint")
    p.add_argument("--weights", type=_path, default=None, help="a unetgen .safetensors checkpoint or a state_dict")
    p.add_argument(
        "--input", type=_path, required=True, help=".npy, .png or .tif: (C, *spatial), (N, C, *spatial) or (*spatial)"
    )
    p.add_argument("--output", type=_npy_path, required=True, help="where to write the prediction (.npy or .zarr)")
    p.add_argument("--output-type", choices=("logits", "probabilities", "labels"), default="logits")
    p.add_argument("--tile-size", type=_sizes_arg, default=None, help="largest input tile, e.g. 572 or 572x572")
    p.add_argument("--batch-size", type=_positive_int, default=1, help="tiles per forward pass")
    p.add_argument("--overlap", type=_fraction, default=None, help="tile overlap for padding=same (default 0.25)")
    p.add_argument("--blend", choices=("gaussian", "constant"), default="gaussian", help="padding=same only")
    p.add_argument("--device", type=_device, default=None, help="e.g. cpu or cuda (default cpu)")
    p.add_argument("--memory-limit", type=_gib, default=None, metavar="GIB", help="refuse above this (default 16)")
    p.add_argument("--dry-run", action="store_true", help="check everything, print the tile plan and stop")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_large_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("validate", help="check config files; one FILE:LINE:COLUMN: field: message line per problem")
    p.add_argument("files", nargs="+", metavar="FILE", type=_path, help=".yaml/.yml/.json config files")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("schema", help="print the JSON Schema of config files")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("presets", help="list the named configs and their sources")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("trace", help="stage, channels and shape of every stage for an input size (Figure 1)")
    p.add_argument("config", help="a .yaml/.json config file, a preset name or a .safetensors checkpoint")
    p.add_argument("--input-size", type=_sizes_arg, default=None, help="spatial size, e.g. 572 or 572x572")
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser("draw", help="the network as a diagram in the style of the paper's Figure 1 (.svg, .png, .pdf)")
    p.add_argument("config", help="a .yaml/.json config file, a preset name or a .safetensors checkpoint")
    p.add_argument("--input-size", type=_sizes_arg, default=None, help="e.g. 572 or 132x132x116 (default: smallest)")
    p.add_argument(
        "-o", "--output", type=_path, default="unet.svg", help="unet.svg, or .png/.pdf with the `render` extra"
    )
    p.set_defaults(func=cmd_draw)

    _add_import_parser(sub)

    p = sub.add_parser("plan", help="the largest training patch (and batch) that fits a memory budget")
    p.add_argument("config", help="a .yaml/.json config file, a preset name or a .safetensors checkpoint")
    p.add_argument("--memory", required=True, help="the budget, e.g. 8GiB, 512MiB, 16GB")
    p.add_argument(
        "--image", type=_sizes_arg, required=True, help="spatial image size, e.g. 80x512x512 (one number: every axis)"
    )
    p.add_argument(
        "--batch", type=_positive_int, default=None, help="fixed batch size (default: 2, more if the image fits)"
    )
    p.add_argument("--optimizer", choices=("adam", "adamw", "momentum", "sgd"), default="adam")
    p.set_defaults(func=cmd_plan)
    return parser


# -- unetgen import (issue 11) ------------------------------------------------------------------


def _add_import_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="write a unetgen config for a network of another library (nnU-Net plans)")
    p.add_argument("source", choices=("nnunet",), help="the library: nnunet (an nnUNetPlans.json file)")
    p.add_argument("plans", type=_path, help="the nnU-Net plans file, e.g. nnUNetPlans.json")
    p.add_argument("--configuration", required=True, help="e.g. 2d, 3d_fullres, 3d_lowres")
    p.add_argument("--in-channels", type=_positive_int, required=True, help="input channels (the dataset's channels)")
    p.add_argument("--out-channels", type=_positive_int, required=True, help="outputs (labels or regions)")
    p.add_argument("--no-deep-supervision", action="store_true", help="the network nnU-Net predicts with")
    p.add_argument("-o", "--output", type=_yaml_path, required=True, help="the .yaml file to write")
    p.add_argument(
        "--schema",
        default="schemas/unet-config.schema.json",
        help="the JSON Schema for the editor marker: a path (written relative to the output) or a URL",
    )
    p.set_defaults(func=cmd_import)


def _yaml_path(text: str) -> str:
    _path(text)
    if Path(text).suffix.lower() not in (".yaml", ".yml"):
        raise argparse.ArgumentTypeError(f"{_show(text)} must end in .yaml or .yml, e.g. {_show(text)}.yaml")
    return text


def cmd_import(args: argparse.Namespace) -> int:
    from ..interop.convert import nnunet_yaml

    _check_output(args.output)
    out = Path(args.output)
    schema = args.schema
    if "://" not in schema:
        schema = Path(os.path.relpath(Path(schema).resolve(), out.resolve().parent)).as_posix()
    text = nnunet_yaml(  # UnsupportedModelError, a malformed plans file, bad channels: ValueErrors, one line each
        args.plans,
        args.configuration,
        in_channels=args.in_channels,
        out_channels=args.out_channels,
        deep_supervision=not args.no_deep_supervision,
        schema=schema,
    )
    out.write_text(text, encoding="utf-8")
    load_config(out)  # what was written validates
    print(f"wrote {out}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------
# errors: one line each, never a traceback


def _describe(err: BaseException) -> tuple[int, list[str]]:
    """Exit code and message lines for an exception raised by a command."""
    if isinstance(err, UsageError):
        return 2, str(err).splitlines()
    if isinstance(err, (ConfigError, CheckpointError, shapes.InputShapeError, ValueError)):
        return 1, str(err).splitlines() or [type(err).__name__]
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        first = (str(err).strip().splitlines() or ["out of memory"])[0]
        return 1, [f"out of memory ({first[:200]}); use a smaller --tile-size or --batch-size"]
    if isinstance(err, OSError):
        where = f"{_show(str(err.filename))}: " if err.filename is not None else "writing the output: "
        return 1, [f"{where}{err.strerror or err}"]
    if isinstance(err, ImportError):
        return 1, [f"{err}; install the missing package (see the README)"]
    first = (str(err).strip().splitlines() or [""])[0]
    return 1, [
        f"internal error: {type(err).__name__}: {first[:300]} (a bug in unetgen: set {DEBUG_ENV}=1 to see the "
        "traceback, and please report it)"
    ]


def _stderr(line: str) -> None:
    try:
        sys.stderr.write(f"error: {line[:_MAX_LINE]}\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr is closed or broken too: nothing more to say
        pass


def _silence_stdout() -> None:
    """Point stdout at devnull so that the interpreter's final flush cannot fail (Python's recipe
    for SIGPIPE, https://docs.python.org/3/library/signal.html#note-on-sigpipe)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no file descriptor (captured output): nothing to silence
        pass


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        _silence_stdout()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (argparse raises SystemExit(2) on usage errors)."""
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        args = build_parser().parse_args(argv)
        code = args.func(args)
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        if debug:
            raise
        _flush_stdout()
        _stderr("interrupted")
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return 1
    except Exception as err:
        if debug:
            raise
        code, lines = _describe(err)
        _flush_stdout()
        for line in lines[:_MAX_LINES]:
            _stderr(line)
        if len(lines) > _MAX_LINES:
            _stderr(f"... and {len(lines) - _MAX_LINES} more lines")
        return code


if __name__ == "__main__":
    sys.exit(main())
