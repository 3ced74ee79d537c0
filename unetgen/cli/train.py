"""`unetgen train`: images and masks to a trained model in one command.

    unetgen train MODEL --images IMGS --masks MASKS --output CKPT [--steps N] [--memory 2GiB]
    unetgen train TRAINING.yaml [--output CKPT] [--steps N] [--resume]

MODEL is a config file, a preset or a checkpoint to continue from; TRAINING.yaml a training file
(`unetgen.config.training.TrainingConfig`, schemas/training.schema.json). Under `torchrun
--nproc_per_node N` the same command trains with DDP.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..config.io import SUFFIXES, ConfigError, parse_file
from ..config.training import MAX_STEPS, LoadedTraining, load_training
from .args import file_path, nonnegative_int, positive_int, sizes_arg
from .errors import UsageError, note, show

__all__ = ["add_train_parser", "cmd_train"]


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model on images and masks (a model config, preset or checkpoint; or a training file)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "source", help="a training file (.yaml/.json with a data: section), or a model config, preset or checkpoint"
    )
    g = p.add_argument_group("with a MODEL (a training file holds these itself)")
    g.add_argument(
        "--images", nargs="+", type=file_path, default=None, help="image files or folders (.tif, .png, .npy, .zarr)"
    )
    g.add_argument("--masks", nargs="+", type=file_path, default=None, help="mask files or folders, one per image")
    g.add_argument(
        "--targets", choices=("classes", "instances"), default=None, help="what the masks hold (default classes)"
    )
    g.add_argument("--axes", default=None, help="layout of the image files, e.g. zyx, cyx, yxc")
    g.add_argument(
        "--pairing",
        choices=("auto", "name", "order"),
        default=None,
        help="pair masks by file name or by order (default auto: by name when every name pairs)",
    )
    g.add_argument(
        "--validation",
        type=float,
        default=None,
        metavar="FRACTION",
        help="hold out this fraction of every image (0: none; default 0.25 along x)",
    )
    p.add_argument(
        "--output",
        type=file_path,
        default=None,
        help="the checkpoint to write, NAME.safetensors (beside it: NAME.last.safetensors, NAME.state.pt, "
        "NAME.log.csv, NAME.curves.png)",
    )
    p.add_argument("--steps", type=steps_arg, default=None, help="optimiser steps")
    p.add_argument("--memory", default=None, help="memory budget that chooses the patch, e.g. 2GiB")
    p.add_argument("--patch", type=sizes_arg, default=None, help="input patch size, e.g. 188 or 16x64x64")
    p.add_argument("--batch", type=positive_int, default=None, help="patches per step")
    p.add_argument("--seed", type=seed_arg, default=None, help="random seed (>= 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--resume", action="store_true", help="continue the run whose state is beside --output")
    p.add_argument("--restart", action="store_true", help="start over, replacing the files of a previous run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plot", action="store_true", help="no PNG of the curves (the CSV log has them)")
    p.set_defaults(func=cmd_train)


def steps_arg(text: str) -> int:
    """--steps: an int from 1 to `MAX_STEPS`."""
    n = positive_int(text)
    if n > MAX_STEPS:
        raise argparse.ArgumentTypeError(f"{show(text)} is too many: a run has at most {MAX_STEPS:,} steps")
    return n


def seed_arg(text: str) -> int:
    """--seed: an int from 0 to 2**63 - 1."""
    n = nonnegative_int(text)
    if n >= 2**63:
        raise argparse.ArgumentTypeError(f"{show(text)} is too large: a seed is at most 2**63 - 1")
    return n


def _is_training_file(source: str) -> bool:
    if Path(source).suffix.lower() not in SUFFIXES or not Path(source).is_file():
        return False
    value = parse_file(source).value
    return isinstance(value, dict) and "data" in value


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The fields the options set, as a nested mapping."""
    out: dict[str, Any] = {}
    if args.steps is not None:
        out["steps"] = args.steps
    if args.seed is not None:
        out["seed"] = args.seed
    if args.device is not None:
        out["device"] = args.device
    patches = {}
    if args.memory is not None:
        patches["memory"] = args.memory
    if args.patch is not None:
        patches["size"] = list(args.patch) if len(args.patch) > 1 else args.patch[0]
    if args.batch is not None:
        patches["batch"] = args.batch
    if patches:
        out["patches"] = patches
    return out


def _merged(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _training(args: argparse.Namespace) -> tuple[LoadedTraining, str]:
    """The training config the command line describes, and the output path."""
    simple = ("images", "masks", "targets", "axes", "pairing", "validation")
    if _is_training_file(args.source):
        given = [f"--{name}" for name in simple if getattr(args, name) is not None]
        if given:
            raise UsageError(
                f"{' and '.join(given)} go with a MODEL; the training file {show(args.source)} names its data"
            )
        loaded = load_training(args.source)
        update = _overrides(args)
        if update:
            document = _merged(loaded.config.model_dump(mode="json", exclude_unset=True), update)
            try:
                config = load_training(document).config
            except ConfigError as err:  # a value of an option: name the command line, not the file
                where = f"the command line (over {show(args.source)})"
                raise ConfigError(str(err).replace("<training>", where)) from None
            loaded = LoadedTraining(config, loaded.source, loaded.base, loaded.positions)
        output = args.output or os.fspath(Path(args.source).with_suffix(".safetensors"))
        return loaded, output
    if args.images is None or args.masks is None:
        suffix = Path(args.source).suffix.lower()
        if suffix in (".yaml", ".yml", ".json") and not os.path.lexists(args.source):
            raise ValueError(f"{show(args.source)}: no such file (a training file, or a model config with --images)")
        raise UsageError(
            f"{show(args.source)} is not a training file (a .yaml/.json with a data: section), so it is the model: "
            "give --images and --masks (and --output)"
        )
    if args.output is None:
        raise UsageError("give --output NAME.safetensors, the checkpoint to write")
    data: dict[str, Any] = {"images": args.images, "masks": args.masks}
    if args.axes is not None:
        data["axes"] = args.axes
    if args.pairing is not None:
        data["pairing"] = args.pairing
    if args.validation is not None:
        data["validation"] = (
            {"type": "none"} if args.validation == 0 else {"type": "region", "fraction": args.validation}
        )
    document: dict[str, Any] = {"data": data, "model": args.source, **_overrides(args)}
    if args.targets is not None:
        document["targets"] = args.targets
    try:
        config = load_training(document).config
    except ConfigError as err:
        raise ConfigError(str(err).replace("<training>", "the command line")) from None
    return LoadedTraining(config, "the command line"), args.output


def cmd_train(args: argparse.Namespace) -> int:
    """Train; one line about the outputs on stderr, or one `error:` line per problem."""
    from ..train import train

    if args.resume and args.restart:
        raise UsageError("--resume continues a run and --restart starts it over: give one of them")
    loaded, output = _training(args)
    result = train(
        loaded,
        output,
        resume=args.resume,
        restart=args.restart,
        progress=not args.no_progress,
        plot=not args.no_plot,
        note=note,
    )
    if not result.writer:
        return 0
    outs = result.outputs
    best = f", best {result.best:.4f} at step {result.best_step}" if result.best is not None else ""
    note(
        f"trained {result.steps} steps (patch {'x'.join(map(str, result.patch))}, batch {result.batch}){best}: "
        f"wrote {show(str(outs.best))}, {show(outs.last.name)}, {show(outs.state.name)}, {show(outs.log.name)}"
        + (f", {show(outs.curves.name)}" if result.curves else "")
    )
    return 0
