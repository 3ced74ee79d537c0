"""Command-line arguments: the argparse types, and what the commands make of the values (a config,
a size per axis, a file to read, a file to write).

An argparse type raises ArgumentTypeError, which argparse reports as ``usage ... error: argument
X: msg``, exit 2; the helpers below raise UsageError (exit 2) or ValueError (exit 1).
"""

from __future__ import annotations

import argparse
import math
import os
import stat
from pathlib import Path
from typing import Any

from ..analysis import shapes
from ..checkpoint import checkpoint_config, sniff
from ..config.io import SUFFIXES, load_config
from ..config.unet_config import UNetConfig
from ..outputs import check_replaceable
from ..predict.formats import check_regular_file
from .errors import UsageError, show

# ---------------------------------------------------------------------------------------------
# argument types


def _int(text: str) -> int:
    try:
        return int(text.strip().replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{show(text)} is not an integer") from None


def positive_int(text: str) -> int:
    n = _int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{show(text)} must be a positive integer (1, 2, ...)")
    return n


def nonnegative_int(text: str) -> int:
    n = _int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"{show(text)} must be a non-negative integer (0, 1, 2, ...)")
    return n


def sizes_arg(text: str) -> tuple[int, ...]:
    """``572``, ``572x572`` or ``80,512,512``: positive ints, one per axis (or one for every axis)."""
    parts = text.strip().lower().replace(",", "x").split("x")
    try:
        sizes = tuple(int(p.replace("_", "")) for p in parts)
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"{show(text)} is not a size; give one positive integer per spatial axis, e.g. 572 or 572x572"
        )
    return sizes


def spatial_axes_arg(text: str) -> tuple[int, ...]:
    """``0,1`` (or ``0x1``): spatial axes, non-negative ints, the first spatial axis 0."""
    parts = text.strip().lower().replace("x", ",").split(",")
    try:
        axes = tuple(int(p.strip()) for p in parts)
    except ValueError:
        axes = ()
    if not axes or min(axes) < 0 or len(set(axes)) != len(axes):
        raise argparse.ArgumentTypeError(
            f"{show(text)} is not a list of spatial axes; give distinct axes counted from 0, e.g. 0,1 (2D) or 1,2"
        )
    return axes


def _float(text: str) -> float:
    """`text` as a float, NaN (refused by every range check) when it is not a number."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def fraction(text: str) -> float:
    value = _float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{show(text)} must be a number in [0, 1), e.g. 0.25")
    return value


def gib(text: str) -> int:
    value = _float(text)
    if not 0 < value < 2**40:
        raise argparse.ArgumentTypeError(f"{show(text)} must be a positive number of GiB, e.g. 16 or 0.5")
    return int(value * 2**30)


def file_path(text: str) -> str:
    if not text or "\0" in text:
        what = "is empty" if not text else "contains a NUL byte"
        raise argparse.ArgumentTypeError(f"the path {show(text)} {what}; give a file path")
    return text


def npy_path(text: str) -> str:
    file_path(text)
    if Path(text.rstrip("/")).suffix.lower() not in (".npy", ".zarr", ".tif", ".tiff"):
        raise argparse.ArgumentTypeError(
            f"{show(text)} must end in .npy (a NumPy array), .tif/.tiff (a TIFF; .ome.tif: an OME-TIFF) or .zarr "
            f"(an OME-Zarr group, out of core), e.g. {show(text)}.npy"
        )
    return text


def axes_arg(text: str) -> str:
    """--axes: a layout in bioimage.io's letters (`unetgen.predict.axes.parse_axes`)."""
    from ..predict.axes import parse_axes

    try:
        return parse_axes(text, "--axes")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--axes=")) from None


def yaml_path(text: str) -> str:
    file_path(text)
    if Path(text).suffix.lower() not in (".yaml", ".yml"):
        raise argparse.ArgumentTypeError(f"{show(text)} must end in .yaml or .yml, e.g. {show(text)}.yaml")
    return text


def device(text: str) -> str:
    """A device that exists in this torch build and on this machine."""
    import torch

    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"{show(text)} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    kind = parsed.type
    if kind == "meta":
        raise argparse.ArgumentTypeError("meta tensors hold no data, nothing can be predicted on them; use cpu or cuda")
    if kind == "cpu":
        return text
    if kind == "cuda":
        if torch.version.cuda is None or not torch.cuda.is_available():
            build = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise argparse.ArgumentTypeError(f"{show(text)}: {build}; use --device cpu")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise argparse.ArgumentTypeError(f"{show(text)}: this machine has {count} CUDA device(s), cuda:0 first")
        return text
    backend = getattr(torch.backends, kind, None) or getattr(torch, kind, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise argparse.ArgumentTypeError(f"{show(text)}: not available in this torch build or machine; use cpu")
    return text


class Parser(argparse.ArgumentParser):
    """argparse with bounded messages: a 60,000-character argument is not echoed in full."""

    def error(self, message: str) -> Any:
        if len(message) > 300:
            message = message[:200] + " ... " + message[-60:]
        return super().error(message)


# ---------------------------------------------------------------------------------------------
# values: only regular files are opened (a FIFO would block, a device could be endless)


def regular_file(path: str | Path, what: str) -> None:
    """`path` is a regular file this process can read, else a ValueError naming `what` it is: the
    same check (and open) every file prediction reads goes through (`check_regular_file`)."""
    check_regular_file(path, what)


def read_config(name: str, what: str = "CONFIG") -> UNetConfig:
    """A config from a file, a preset name or a .safetensors checkpoint's header. A file of another
    suffix is read as a checkpoint when it is one (by its first bytes), else refused saying what it
    is (a torch pickle, a NumPy array...) and where it goes."""
    suffix = Path(name).suffix.lower()
    if suffix in SUFFIXES or suffix == ".safetensors":
        regular_file(name, what)
    elif suffix and os.path.isfile(name):
        regular_file(name, what)
        found = sniff(name)
        if found.kind != "safetensors":
            raise ValueError(
                f"{what} {show(name)}: this is {found.what or 'a file unetgen does not recognise'}, not a config "
                f"(.json, .yaml, .yml), a preset or a .safetensors checkpoint; {found.advice}"
            )
        return checkpoint_config(name)
    if suffix == ".safetensors":
        return checkpoint_config(name)
    return load_config(name)


def spatial(cfg: UNetConfig, size: tuple[int, ...] | None, option: str = "--input-size") -> tuple[int, ...]:
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


def check_output(path: str, option: str = "--output") -> None:
    """The output can be written: not a directory or a device (a FIFO would block), in an
    existing, writable folder; and, if something is there, a file unetgen wrote, which it may
    replace (`unetgen.outputs.check_replaceable`: the one rule every writer follows). A symbolic
    link, a foreign file or one of a kind with no mark (.npy) is refused, naming `option`."""
    p = Path(path)
    if p.is_dir():
        example = show(str(p / ("pred" + (Path(path).suffix or ".npy"))))
        raise ValueError(f"{option} {show(path)} is a directory; give a file in it, e.g. {example}")
    if os.path.lexists(p) and (os.path.exists(p) or not os.path.islink(p)):  # a dangling link: below
        try:
            mode = os.stat(p).st_mode
        except OSError as err:
            raise ValueError(f"{option} {show(path)}: {err.strerror}") from None
        if not stat.S_ISREG(mode):
            raise ValueError(f"{option} {show(path)} exists and is not a regular file (a device, FIFO or socket)")
        if not os.access(p, os.W_OK):
            raise ValueError(f"{option} {show(path)} exists and is not writable")
    if os.path.islink(p):
        raise ValueError(
            f"{option} {show(path)} is a symbolic link; unetgen never replaces a link nor writes through it: "
            "give a new name, or remove it yourself"
        )
    parent = p.parent
    if not parent.is_dir():
        raise ValueError(f"{option} {show(path)}: the folder {show(str(parent))} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {show(path)}: cannot write into the folder {show(str(parent))}")
    check_replaceable(path, option)
