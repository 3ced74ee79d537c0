"""The options of a prediction, each checked with a clear ValueError naming it (NumPy and torch
integer scalars are ints, bools are not), and the output types with the dtype each gives."""

from __future__ import annotations

import numbers
import operator
from typing import Any, Literal

import torch
from torch import nn

from ..config.unet_config import UNetConfig
from ..reprs import short_repr

__all__ = [
    "Amp",
    "OUTPUT_TYPES",
    "Blend",
    "OutputType",
    "Tta",
    "as_index",
    "config_of",
    "check_min_size",
    "float_dtype",
    "fraction",
    "is_int_tuple",
    "output_dtype",
    "positive_int",
    "positive_ints",
]

Blend = Literal["gaussian", "constant"]
OutputType = Literal["logits", "probabilities", "labels", "instances"]
OUTPUT_TYPES = ("logits", "probabilities", "labels", "instances")
Amp = Literal["bf16", "fp16"]  # autocast dtype on CUDA (unetgen.predict.inference)
Tta = Literal["flip"]  # test-time mirroring (unetgen.predict.inference)


def config_of(model: UNetConfig | nn.Module) -> UNetConfig:
    """The config of a unetgen `UNet` (or the config itself)."""
    config = model if isinstance(model, UNetConfig) else getattr(model, "config", None)
    if not isinstance(config, UNetConfig):
        raise TypeError(f"expected a unetgen UNet or UNetConfig, got {type(model).__name__} without a UNetConfig")
    return config


def as_index(value: Any) -> int:
    """An int from an int or an integer scalar (NumPy, torch); TypeError for bools, floats, strings."""
    if isinstance(value, bool) or "bool" in str(getattr(value, "dtype", "")):
        raise TypeError("a bool is not a count")
    return operator.index(value)


def positive_int(name: str, value: Any) -> int:
    try:
        v = as_index(value)
    except TypeError:
        v = 0
    if v < 1:
        raise ValueError(f"{name}={short_repr(value)} must be a positive int")
    return v


def positive_ints(name: str, value: Any, dims: int, *, broadcast: bool) -> tuple[int, ...]:
    """`value` as `dims` positive ints (an int is repeated when `broadcast`), or a clear error."""
    try:
        try:
            values = (as_index(value),) * dims
        except TypeError:
            if isinstance(value, (str, bytes)) or len(value) != dims:
                raise
            values = tuple(as_index(v) for v in value)
        else:
            if not broadcast:
                values = ()
    except TypeError:
        values = ()
    if len(values) != dims or min(values) < 1:
        one = "a positive int or " if broadcast else ""
        raise ValueError(f"{name}={short_repr(value)} must be {one}{dims} positive ints (one per spatial axis)")
    return values


def fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(
            f"{name}={short_repr(value)} must be a number in [0, 1): the fraction of a tile shared with a neighbour"
        )
    return float(value)


def float_dtype(dtype: Any) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype={short_repr(dtype)} must be a floating-point torch.dtype, e.g. torch.float32")
    return dtype


def is_int_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and all(isinstance(v, int) for v in value)


def output_dtype(output_type: OutputType, out_channels: int, dtype: torch.dtype = torch.float32) -> torch.dtype:
    """The dtype of a prediction of `output_type`: the model's dtype, uint8/uint16 labels, uint32 instances."""
    match output_type:
        case "logits" | "probabilities":
            return dtype
        case "labels":
            if out_channels > 1 << 16:
                raise ValueError(f"output_type='labels' holds at most 65536 classes, the model has {out_channels}")
            return torch.uint8 if out_channels <= 256 else torch.uint16
        case "instances":
            return torch.uint32
    raise ValueError(f"output_type={output_type!r} must be 'logits', 'probabilities', 'labels' or 'instances'")


def check_min_size(min_size: Any, output_type: str) -> int:
    """`min_size` (voxels; objects smaller are removed) as a non-negative int; only instances have it."""
    try:
        size = as_index(min_size)
    except TypeError:
        size = -1
    if size < 0:
        raise ValueError(f"min_size={short_repr(min_size)} must be a non-negative int (voxels; 0 keeps every object)")
    if size and output_type != "instances":
        raise ValueError(f"min_size={size} applies to output_type='instances' only, not {output_type!r}")
    return size
