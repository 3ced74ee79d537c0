"""The `unetgen` command line: inspect configs, their shapes and their valid input sizes; predict; train; export.

`build_parser` wires every command (``cmd_*`` in the command modules) to its arguments; `main`
runs one. A command prints its answer on stdout and returns its exit status (0, or 1 when the
answer is no: `summary` of an invalid size, `validate` of a config with problems); it reports a
failure by raising, and `main` alone turns the exception into ``error:`` lines and an exit code
(`unetgen.cli.errors`: 1, 2 for a bad command line, 130 for Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .args import (
    Parser,
    axes_arg,
    device,
    file_path,
    fraction,
    gib,
    nonnegative_int,
    npy_path,
    positive_int,
    sizes_arg,
    yaml_path,
)
from .draw import cmd_draw
from .errors import DEBUG_ENV, UsageError, report, report_broken_pipe, report_interrupt
from .export import add_export_parser
from .imports import cmd_import
from .inspect import LISTED_SIZES, cmd_presets, cmd_schema, cmd_sizes, cmd_summary, cmd_trace, cmd_validate
from .plan import cmd_plan
from .predict import add_inference_options, cmd_predict
from .train import add_train_parser

__all__ = ["DEBUG_ENV", "LISTED_SIZES", "UsageError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="unetgen", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("summary", help="torchinfo summary, shape trace and valid sizes of a config")
    p.add_argument("config", help="a .yaml/.json config file, a preset name or a .safetensors checkpoint")
    p.add_argument("--input-size", type=sizes_arg, default=None, help="spatial size, e.g. 572 or 572x572")
    p.add_argument("--batch-size", type=positive_int, default=1)
    p.add_argument("--depth", type=positive_int, default=3, help="module nesting shown by torchinfo")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("sizes", help="valid input sizes of a config")
    p.add_argument("config", help="a .yaml/.json config file, a preset name or a .safetensors checkpoint")
    p.add_argument("--near", type=sizes_arg, default=None, help="the valid sizes nearest to N (or NxM, per axis)")
    p.add_argument("--max", type=positive_int, default=1024, help="list valid sizes up to N")
    p.set_defaults(func=cmd_sizes)

    p = sub.add_parser("predict", help="predict an image of any size tile by tile (overlap-tile strategy)")
    p.add_argument("config", help="a .yaml/.json config file, a preset name or a .safetensors checkpoint")
    p.add_argument("--weights", type=file_path, default=None, help="a unetgen .safetensors checkpoint or a state_dict")
    p.add_argument(
        "--input",
        type=file_path,
        required=True,
        help=".npy, .png or .tif: (C, *spatial), (N, C, *spatial) or (*spatial)",
    )
    p.add_argument(
        "--output", type=npy_path, required=True, help="where to write the prediction (.npy, .tif/.ome.tif or .zarr)"
    )
    p.add_argument(
        "--axes",
        type=axes_arg,
        default=None,
        help="the input's axes where its file does not say them (or says them wrong): yx, zyx, cyx, yxc, czyx, "
        "zyxc, byx (a stack of 2D images) ...",
    )
    p.add_argument("--output-type", choices=("logits", "probabilities", "labels", "instances"), default="logits")
    p.add_argument(
        "--min-size",
        type=nonnegative_int,
        default=0,
        metavar="VOXELS",
        help="--output-type instances: remove objects of fewer voxels (default 0: keep all)",
    )
    p.add_argument("--tile-size", type=sizes_arg, default=None, help="largest input tile, e.g. 572 or 572x572")
    p.add_argument("--batch-size", type=positive_int, default=1, help="tiles per forward pass")
    p.add_argument("--overlap", type=fraction, default=None, help="tile overlap for padding=same (default 0.25)")
    p.add_argument("--blend", choices=("gaussian", "constant"), default="gaussian", help="padding=same only")
    p.add_argument("--device", type=device, default=None, help="e.g. cpu or cuda (default cpu)")
    p.add_argument("--memory-limit", type=gib, default=None, metavar="GIB", help="refuse above this (default 16)")
    p.add_argument("--dry-run", action="store_true", help="check everything, print the tile plan and stop")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--no-preprocessing", action="store_true", help="ignore the preprocessing stored with the model; predict as is"
    )
    _add_large_options(p)
    add_inference_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("validate", help="check config files; one FILE:LINE:COLUMN: field: message line per problem")
    p.add_argument("files", nargs="+", metavar="FILE", type=file_path, help=".yaml/.yml/.json config files")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("schema", help="print the JSON Schema of config files")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("presets", help="list the named configs and their sources")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("trace", help="stage, channels and shape of every stage for an input size (Figure 1)")
    p.add_argument("config", help="a .yaml/.json config file, a preset name or a .safetensors checkpoint")
    p.add_argument("--input-size", type=sizes_arg, default=None, help="spatial size, e.g. 572 or 572x572")
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser("draw", help="the network as a diagram in the style of the paper's Figure 1 (.svg, .png, .pdf)")
    p.add_argument("config", help="a .yaml/.json config file, a preset name or a .safetensors checkpoint")
    p.add_argument("--input-size", type=sizes_arg, default=None, help="e.g. 572 or 132x132x116 (default: smallest)")
    p.add_argument(
        "-o", "--output", type=file_path, default="unet.svg", help="unet.svg, or .png/.pdf with the `render` extra"
    )
    p.set_defaults(func=cmd_draw)

    _add_import_parser(sub)
    add_export_parser(sub)

    p = sub.add_parser("plan", help="the largest training patch (and batch) that fits a memory budget")
    p.add_argument("config", help="a .yaml/.json config file, a preset name or a .safetensors checkpoint")
    p.add_argument("--memory", required=True, help="the budget, e.g. 8GiB, 512MiB, 16GB")
    p.add_argument(
        "--image", type=sizes_arg, required=True, help="spatial image size, e.g. 80x512x512 (one number: every axis)"
    )
    p.add_argument(
        "--batch", type=positive_int, default=None, help="fixed batch size (default: 2, more if the image fits)"
    )
    p.add_argument("--optimizer", choices=("adam", "adamw", "momentum", "sgd"), default="adam")
    p.set_defaults(func=cmd_plan)

    add_train_parser(sub)
    return parser


# -- unetgen import (issue 11) ------------------------------------------------------------------


def _add_import_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="write a unetgen config for a network of another library (nnU-Net plans)")
    p.add_argument("source", choices=("nnunet",), help="the library: nnunet (an nnUNetPlans.json file)")
    p.add_argument("plans", type=file_path, help="the nnU-Net plans file, e.g. nnUNetPlans.json")
    p.add_argument("--configuration", required=True, help="e.g. 2d, 3d_fullres, 3d_lowres")
    p.add_argument("--in-channels", type=positive_int, required=True, help="input channels (the dataset's channels)")
    p.add_argument("--out-channels", type=positive_int, required=True, help="outputs (labels or regions)")
    p.add_argument("--no-deep-supervision", action="store_true", help="the network nnU-Net predicts with")
    p.add_argument("-o", "--output", type=yaml_path, required=True, help="the .yaml file to write")
    p.add_argument(
        "--schema",
        default="schemas/unet-config.schema.json",
        help="the JSON Schema for the editor marker: a path (written relative to the output) or a URL",
    )
    p.set_defaults(func=cmd_import)


def _add_large_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("images larger than memory (.zarr/.tif input, .zarr output; docs/large-images.md)")
    g.add_argument("--scheduler", default=None, help="address of a Dask scheduler, e.g. tcp://host:8786")
    g.add_argument(
        "--workers", type=positive_int, default=None, help="start a local Dask cluster of N worker processes"
    )
    g.add_argument("--block-size", type=sizes_arg, default=None, help="output pixels per block/chunk, e.g. 2048")
    g.add_argument("--restart", action="store_true", help="discard the progress recorded in --output; start over")
    if "--output-type" not in p._option_string_actions:  # issue 10b adds the same option for .npy outputs
        g.add_argument("--output-type", choices=("logits", "probabilities", "labels", "instances"), default="logits")


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
        return report_interrupt()
    except BrokenPipeError:
        return report_broken_pipe()
    except Exception as err:
        if debug:
            raise
        return report(err)


if __name__ == "__main__":
    sys.exit(main())
