"""The `unetgen` command line: inspect configs, their shapes and their valid input sizes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import shapes
from .checkpoint import CheckpointError, checkpoint_config
from .io import ConfigError, load_config


def _sizes_arg(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.replace("x", ",").split(",") if v)


def _spatial(cfg, size: tuple[int, ...] | None) -> tuple[int, ...]:
    """The given input size broadcast to every axis, or the smallest valid input."""
    if size is None:
        return shapes.min_input_shape(cfg)
    if len(size) == 1:
        size = size * cfg.spatial_dims
    return size


def _near(cfg, size: tuple[int, ...]) -> str:
    lines = []
    for axis, s in enumerate(size):
        below = shapes.valid_input_sizes(cfg, s - 1, axis=axis)[-3:]
        above = shapes.valid_input_sizes(cfg, s + 3 * shapes.axis_rule(cfg, axis).period, min_size=s + 1, axis=axis)
        lines.append(f"  axis {axis}: {', '.join(map(str, below))} | {s} | {', '.join(map(str, above))}")
    return "\n".join(lines)


def cmd_summary(args: argparse.Namespace) -> int:
    import torch
    import torchinfo

    from .unet import UNet

    if str(args.config).endswith(".safetensors"):
        cfg = checkpoint_config(args.config)
    else:
        cfg = load_config(args.config)
    size = _spatial(cfg, args.input_size)
    valid = shapes.is_valid_input_shape(cfg, size)
    print(f"config: {args.config}")
    if not valid:
        print(f"input size {size} is not valid; valid sizes nearby (below | given | above):\n{_near(cfg, size)}")
        return 1
    with torch.device("meta"):
        model = UNet(cfg)
    stats = torchinfo.summary(
        model,
        input_size=(args.batch_size, cfg.in_channels, *size),
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
    print(f"output shape: {shapes.output_shape(cfg, size)}; halo per side: {shapes.halo(cfg)}")
    return 0


def _print_macs(cfg, size: tuple[int, ...], batch_size: int, torchinfo_mult_adds: int) -> None:
    from .costs import count_macs

    macs = count_macs(cfg, size) * batch_size
    print(f"Convolution multiply-adds (true, as FlopCounterMode counts them): {macs / 1e9:.2f} G ({macs:,})")
    print(f"torchinfo's mult-adds above: {torchinfo_mult_adds / 1e9:.2f} G")
    print(
        "  (torchinfo charges a transposed conv its whole weight at every output position, stride**dims\n"
        "   times its true cost, and adds the biases; the true count is the multiply-adds of the convs)"
    )


def _print_trace(cfg, size: tuple[int, ...]) -> None:
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
            load_config(Path(name))
        except ConfigError as err:
            ok = False
            for line in err.problems or [f"{name}:1:1: (file): {err}"]:
                print(line)
    return 0 if ok else 1


def cmd_schema(args: argparse.Namespace) -> int:
    from .schema import schema_text

    sys.stdout.write(schema_text())
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from .presets import PRESETS

    width = max(map(len, PRESETS))
    for name, preset in PRESETS.items():
        print(f"{name:<{width}}  {preset.source}")
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    size = _spatial(cfg, args.input_size)
    out = shapes.output_shape(cfg, size)
    print(f"{args.config}: input {' x '.join(map(str, size))} -> output {' x '.join(map(str, out))}")
    _print_trace(cfg, size)
    return 0


def cmd_sizes(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    for axis in range(cfg.spatial_dims):
        rule = shapes.axis_rule(cfg, axis)
        head = f"axis {axis}: valid input sizes are {rule.min_size} + {rule.period}*k; halo {rule.halo} per side"
        print(head)
        if args.near is not None:
            lo = (
                shapes.nearest_valid_input_size(cfg, args.near, direction="down", axis=axis)
                if args.near >= rule.min_size
                else None
            )
            hi = shapes.nearest_valid_input_size(cfg, args.near, direction="up", axis=axis)
            out = shapes.output_shape(cfg, (hi,) * cfg.spatial_dims)[axis]
            below = f"{lo}" if lo is not None else f"none (the smallest is {rule.min_size})"
            print(f"  near {args.near}: below {below}, above {hi} (-> output {out})")
        else:
            sizes = shapes.valid_input_sizes(cfg, args.max, axis=axis)
            print("  " + ", ".join(f"{s}->{rule.output(s)}" for s in sizes))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    try:
        import numpy as np
    except ImportError:
        print("error: `unetgen predict` reads and writes .npy files with NumPy: pip install numpy", file=sys.stderr)
        return 2
    import torch

    from .checkpoint import load_unet
    from .tiling import check_image, plan_tiles, predict_tiled
    from .unet import build_unet

    if args.config.endswith(".safetensors"):  # a checkpoint holds config and weights
        if args.weights is not None:
            print(f"error: {args.config} is a checkpoint with its own weights; drop --weights", file=sys.stderr)
            return 2
        model = load_unet(args.config, device=args.device)
    elif args.weights is None:
        print("error: --weights FILE is needed with a config file (or pass a .safetensors checkpoint)", file=sys.stderr)
        return 2
    elif args.weights.endswith(".safetensors"):
        model = load_unet(args.weights, device=args.device)
        if model.config != load_config(args.config):
            print(f"error: the config stored in {args.weights} differs from {args.config}", file=sys.stderr)
            return 2
    else:
        model = build_unet(args.config, device=args.device)
        try:
            model.load_state_dict(torch.load(args.weights, map_location=args.device or "cpu", weights_only=True))
        except (OSError, RuntimeError, TypeError, AttributeError, ValueError) as err:
            print(f"error: {args.weights}: not a state_dict of this config: {err}", file=sys.stderr)
            return 2
    cfg = model.config
    try:
        image = torch.from_numpy(np.load(args.input, allow_pickle=False))
    except (OSError, ValueError, TypeError) as err:
        print(f"error: {args.input}: cannot read a NumPy array (.npy): {err}", file=sys.stderr)
        return 2
    if image.dim() == cfg.spatial_dims and cfg.in_channels == 1:
        image = image.unsqueeze(0)  # a single-channel image without its channel axis
    tile = args.tile_size[0] if args.tile_size is not None and len(args.tile_size) == 1 else args.tile_size
    options = dict(tile_size=tile, batch_size=args.batch_size, overlap=args.overlap)
    try:
        spatial = tuple(check_image(cfg, image).shape[2:])
        plan = plan_tiles(cfg, spatial, **options, dtype=next(model.parameters()).dtype)
        print(f"plan: {plan.summary()}", file=sys.stderr)
        if args.dry_run:
            return 0
        result = predict_tiled(model, image, **options, blend=args.blend, progress=not args.no_progress)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    np.save(args.output, result.cpu().numpy())
    dtype = str(result.dtype).removeprefix("torch.")
    print(f"wrote {args.output}: shape {tuple(result.shape)}, {dtype}", file=sys.stderr)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """The largest training patch (and batch) whose step fits the memory: one line, or one `error:` line."""
    from .memory import plan_training

    try:
        cfg = load_config(args.config)
        try:
            image = _sizes_arg(args.image)
        except ValueError:
            raise ValueError(f"--image {args.image[:40]!r} must be sizes like 512x512 or 80x512x512") from None
        if len(image) == 1:
            image = image * cfg.spatial_dims
        plan = plan_training(cfg, args.memory, image_shape=image, batch_size=args.batch, optimizer=args.optimizer)
    except (ValueError, ConfigError) as err:  # ConfigError and InputShapeError are ValueErrors
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    print(plan.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unetgen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("summary", help="torchinfo summary, shape trace and valid sizes of a config")
    p.add_argument("config", help="a .yaml/.json config file, a preset name or a .safetensors checkpoint")
    p.add_argument("--input-size", type=_sizes_arg, default=None, help="spatial size, e.g. 572 or 572x572")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--depth", type=int, default=3, help="module nesting shown by torchinfo")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("sizes", help="valid input sizes of a config")
    p.add_argument("config")
    p.add_argument("--near", type=int, default=None, help="show the valid sizes nearest to N")
    p.add_argument("--max", type=int, default=1024, help="list valid sizes up to N")
    p.set_defaults(func=cmd_sizes)

    p = sub.add_parser("predict", help="predict a .npy image of any size tile by tile (overlap-tile strategy)")
    p.add_argument("config", help="a .yaml/.json config file, a preset name or a .safetensors checkpoint")
    p.add_argument("--weights", default=None, help="a unetgen .safetensors checkpoint or a torch.save state_dict")
    p.add_argument("--input", required=True, help="a .npy array: (C, *spatial), (N, C, *spatial) or (*spatial)")
    p.add_argument("--output", required=True, help="where to write the prediction (.npy)")
    p.add_argument("--tile-size", type=_sizes_arg, default=None, help="largest input tile, e.g. 572 or 572x572")
    p.add_argument("--batch-size", type=int, default=1, help="tiles per forward pass")
    p.add_argument("--overlap", type=float, default=None, help="tile overlap for padding=same (default 0.25)")
    p.add_argument("--blend", choices=("gaussian", "constant"), default="gaussian", help="padding=same only")
    p.add_argument("--device", default=None, help="e.g. cpu or cuda (default cpu)")
    p.add_argument("--dry-run", action="store_true", help="print the tile plan and stop")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("validate", help="check config files; one FILE:LINE:COLUMN: field: message line per problem")
    p.add_argument("files", nargs="+", metavar="FILE", help=".yaml/.yml/.json config files")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("schema", help="print the JSON Schema of config files")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("presets", help="list the named configs and their sources")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("trace", help="stage, channels and shape of every stage for an input size (Figure 1)")
    p.add_argument("config", help="a .yaml/.json config file or a preset name")
    p.add_argument("--input-size", type=_sizes_arg, default=None, help="spatial size, e.g. 572 or 572x572")
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser("plan", help="the largest training patch (and batch) that fits a memory budget")
    p.add_argument("config", help="a .yaml/.json config file or a preset name")
    p.add_argument("--memory", required=True, help="the budget, e.g. 8GiB, 512MiB, 16GB")
    p.add_argument("--image", required=True, help="spatial image size, e.g. 80x512x512 (one number: every axis)")
    p.add_argument("--batch", type=int, default=None, help="fixed batch size (default: 2, more if the image fits)")
    p.add_argument("--optimizer", choices=("adam", "adamw", "momentum", "sgd"), default="adam")
    p.set_defaults(func=cmd_plan)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, CheckpointError, shapes.InputShapeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
