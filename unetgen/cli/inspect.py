"""Commands that inspect configs: summary, sizes, trace, validate, schema, presets.

Their answer goes to stdout. `summary` of an invalid size and `validate` of a config with
problems answer no: they print why on stdout and return 1.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..analysis import shapes
from ..config.io import ConfigError, load_config
from ..config.unet_config import UNetConfig
from .args import read_config, regular_file, spatial
from .errors import show

LISTED_SIZES = 64
"""`unetgen sizes` lists at most this many valid sizes per axis, then says how many more there are."""


def cmd_summary(args: argparse.Namespace) -> int:
    import torch
    import torchinfo

    from ..model.unet import UNet

    cfg = read_config(args.config)
    size = spatial(cfg, args.input_size)
    valid = shapes.is_valid_input_shape(cfg, size)
    print(f"config: {show(args.config)}")
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


def _halo_text(rule: shapes.AxisRule) -> str:
    """The halo of one axis, or why there is none (`stem_stride`: output at a lower resolution)."""
    return str(rule.halo) if rule.stem == 1 else f"none (output at 1/{rule.stem} resolution)"


def cmd_validate(args: argparse.Namespace) -> int:
    """One `FILE:LINE:COLUMN: field.path: message` line per problem; exit 1 if any. A file with a
    `data:` section is a training file (`unetgen train`), checked against `TrainingConfig`."""
    from ..config.io import parse_file
    from ..config.training import load_training

    ok = True
    for name in args.files:
        try:
            regular_file(name, "config file")
            value = parse_file(name).value if Path(name).suffix.lower() in (".yaml", ".yml", ".json") else None
            if isinstance(value, dict) and "data" in value:
                load_training(name)
            else:
                load_config(Path(name))
        except ConfigError as err:
            ok = False
            for line in err.problems or [f"{name}:1:1: (file): {err}"]:
                print(line)
        except ValueError as err:
            ok = False
            print(f"{show(name)}:1:1: (file): {err}")
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
    cfg = read_config(args.config)
    size = spatial(cfg, args.input_size)
    out = shapes.output_shape(cfg, size)
    print(f"{show(args.config)}: input {' x '.join(map(str, size))} -> output {' x '.join(map(str, out))}")
    _print_trace(cfg, size)
    return 0


def cmd_sizes(args: argparse.Namespace) -> int:
    cfg = read_config(args.config)
    near = None if args.near is None else spatial(cfg, args.near, "--near")
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
