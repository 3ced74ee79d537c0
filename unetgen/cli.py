"""The `unetgen` command line: inspect configs, their shapes and their valid input sizes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import shapes
from .io import ConfigError, load_config


def _sizes_arg(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.replace("x", ",").split(",") if v)


def _spatial(cfg, size: tuple[int, ...] | None) -> tuple[int, ...]:
    """The given input size broadcast to every axis, or the smallest valid input."""
    if size is None:
        return tuple(shapes.axis_rule(cfg, a).min_size for a in range(cfg.spatial_dims))
    if len(size) == 1:
        size = size * cfg.spatial_dims
    return size


def _near(cfg, size: tuple[int, ...]) -> str:
    lines = []
    for axis, s in enumerate(size):
        below = [v for v in shapes.valid_input_sizes(cfg, s, axis=axis)[-3:]]
        above = shapes.valid_input_sizes(cfg, s + 3 * shapes.axis_rule(cfg, axis).period, min_size=s + 1, axis=axis)
        lines.append(f"  axis {axis}: {', '.join(map(str, below))} | {s} | {', '.join(map(str, above))}")
    return "\n".join(lines)


def cmd_summary(args: argparse.Namespace) -> int:
    import torch
    import torchinfo

    from .unet import UNet

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
            print(f"  near {args.near}: below {lo}, above {hi} (-> output {out})")
        else:
            sizes = shapes.valid_input_sizes(cfg, args.max, axis=axis)
            print("  " + ", ".join(f"{s}->{rule.output(s)}" for s in sizes))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unetgen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("summary", help="torchinfo summary, shape trace and valid sizes of a config")
    p.add_argument("config", help="a .yaml/.json config file or a preset name")
    p.add_argument("--input-size", type=_sizes_arg, default=None, help="spatial size, e.g. 572 or 572x572")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--depth", type=int, default=3, help="module nesting shown by torchinfo")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("sizes", help="valid input sizes of a config")
    p.add_argument("config")
    p.add_argument("--near", type=int, default=None, help="show the valid sizes nearest to N")
    p.add_argument("--max", type=int, default=1024, help="list valid sizes up to N")
    p.set_defaults(func=cmd_sizes)

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, shapes.InputShapeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
