"""What every part of `unetgen.interop` shares: `UnsupportedModelError`, the unetgen options of
torch's norm and activation layers (from a class name and its kwargs, as plans files spell them,
or from an instance, as the converters find them), and the validation of an inferred config."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from ..config.diagnostics import short_repr
from ..config.unet_config import UNetConfig

__all__ = [
    "UP_FIRST",
    "UnsupportedModelError",
    "activation_from_module",
    "activation_option",
    "axes",
    "flag",
    "integer",
    "norm_from_module",
    "norm_option",
    "number",
    "per_axis",
    "transpose_up",
    "validated",
]

UP_FIRST = {"type": "concat", "order": "up_first"}  # nnU-Net and DynUNet concatenate (up, skip)


class UnsupportedModelError(ValueError):
    """A peer model, plans file or config that unetgen (or nnU-Net, on the way back) cannot
    express exactly; the message names the layer or option and the missing feature."""


def axes(value: Any, dims: int) -> list[int]:
    """A per-axis value (kernel, stride) as a list of `dims` ints: 3 -> [3, 3, 3]."""
    return [int(value)] * dims if isinstance(value, int) else [int(v) for v in value]


def transpose_up(bias: bool) -> dict[str, Any]:
    """A transposed-conv up-sampling with or without bias (the schema's default is with)."""
    return {"type": "transpose"} if bias else {"type": "transpose", "bias": False}


def validated(data: dict[str, Any], where: str) -> UNetConfig:
    """`data` as a `UNetConfig`; the first validation error as an `UnsupportedModelError`."""
    from pydantic import ValidationError

    try:
        return UNetConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(map(str, first["loc"])) or "(config)"
        raise UnsupportedModelError(
            f"{where}: unetgen cannot express this network: {field}: {first['msg']} ({len(err.errors())} problem(s))"
        ) from None


# ---------------------------------------------------------------------------------------------
# class names and kwargs -> options


def _refuse_leftovers(kw: Mapping[str, Any], name: str | None, where: str) -> None:
    if kw:
        raise UnsupportedModelError(f"{where}: {name} options {short_repr(dict(kw))} are not supported")


def _instance_norm(name: str, kw: dict[str, Any], where: str) -> dict[str, Any]:
    if flag(kw.pop("track_running_stats", False), f"{where}.track_running_stats"):
        raise UnsupportedModelError(f"{where}: {name} with track_running_stats=True")
    out = {
        "type": "instance",
        "affine": flag(kw.pop("affine", False), f"{where}.affine"),
        "eps": number(kw.pop("eps", 1e-5), f"{where}.eps"),
    }
    if (momentum := kw.pop("momentum", None)) is not None:  # unused without running statistics
        number(momentum, f"{where}.momentum")
    return out


def _batch_norm(name: str, kw: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "batch",
        "eps": number(kw.pop("eps", 1e-5), f"{where}.eps"),
        "momentum": number(kw.pop("momentum", 0.1), f"{where}.momentum"),
    }
    if not flag(kw.pop("affine", True), f"{where}.affine"):
        out["affine"] = False
    if not flag(kw.pop("track_running_stats", True), f"{where}.track_running_stats"):
        raise UnsupportedModelError(f"{where}: {name} with track_running_stats=False")
    return out


def norm_option(name: str | None, kwargs: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The unetgen norm option for a torch norm class name (None: no norm) and its kwargs;
    `where` names the kwargs (a key path such as ``...arch_kwargs.norm_op_kwargs``): a value of
    the wrong type is a `ValueError` naming ``where.key``."""
    kw = dict(kwargs)
    if name is None:
        return {"type": "none"}
    if name.startswith("InstanceNorm"):
        out = _instance_norm(name, kw, where)
    elif name.startswith("BatchNorm"):
        out = _batch_norm(name, kw, where)
    else:  # nnU-Net calls norm_op(channels, **norm_op_kwargs), which GroupNorm's signature does not fit
        raise UnsupportedModelError(f"{where}: norm_op {short_repr(name)} is not supported (batch, instance)")
    kw.pop("device", None), kw.pop("dtype", None)
    _refuse_leftovers(kw, name, where)
    return out


def activation_option(name: str | None, kwargs: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The unetgen activation option for a torch non-linearity class name and its kwargs (`where`
    names the kwargs, as for `norm_option`)."""
    kw = dict(kwargs)
    flag(kw.pop("inplace", False), f"{where}.inplace")
    match name:
        case "ReLU":
            out: dict[str, Any] = {"type": "relu"}
        case "LeakyReLU":
            out = {
                "type": "leaky_relu",
                "negative_slope": number(kw.pop("negative_slope", 0.01), f"{where}.negative_slope"),
            }
        case "ELU":
            out = {"type": "elu", "alpha": number(kw.pop("alpha", 1.0), f"{where}.alpha")}
        case "GELU" if kw.get("approximate", "none") == "none":
            kw.pop("approximate", None)
            out = {"type": "gelu"}
        case "SiLU":
            out = {"type": "silu"}
        case "PReLU":
            count = integer(kw.pop("num_parameters", 1), f"{where}.num_parameters", 1, None)
            out = {"type": "prelu", "num_parameters": "one" if count == 1 else "channels"}
            out["init"] = number(kw.pop("init", 0.25), f"{where}.init")
        case None:
            raise UnsupportedModelError(f"{where}: no non-linearity (nonlin=None) is not supported")
        case _:
            raise UnsupportedModelError(f"{where}: activation {short_repr(name)} is not supported")
    _refuse_leftovers(kw, name, where)
    return out


# ---------------------------------------------------------------------------------------------
# plain values of the types they must have (plans files are data: a string is never a number)


def _write_instead(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return f" (write {int(value)})"
    if isinstance(value, str):
        return " (a string: write the number without quotes)"
    return ""


def integer(value: Any, where: str, low: int | None = 1, high: int | None = None) -> int:
    """`value` as an int in [low, high]; bools, floats (even 32.0) and strings are refused with a
    `ValueError` naming `where` (an int out of range: `UnsupportedModelError`)."""
    if isinstance(value, bool) or not isinstance(value, int):
        span = f" from {low}" if low is not None else ""
        span += f" to {high}" if high is not None else ""
        raise ValueError(f"{where}={short_repr(value)} must be an integer{span}{_write_instead(value)}")
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"at least {low}" if high is None else f"from {low} to {high}" if low is not None else f"at most {high}"
        raise UnsupportedModelError(f"{where}={short_repr(value)}: unetgen builds {span}")
    return value


def number(value: Any, where: str) -> float:
    """`value` (an int or a float, finite; not a bool or a string) as a float, or a `ValueError`
    naming `where`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}={short_repr(value)} must be a number{_write_instead(value)}")
    try:
        out = float(value)
    except OverflowError:
        out = math.inf
    if not math.isfinite(out):
        raise ValueError(f"{where}={short_repr(value)} must be a finite number")
    return out


def flag(value: Any, where: str) -> bool:
    """`value` as a bool: only true or false (not 0, 1 or "false"), or a `ValueError` naming `where`."""
    if not isinstance(value, bool):
        raise ValueError(f"{where}={short_repr(value)} must be true or false")
    return value


def per_axis(value: Any, dims: int, where: str, high: int) -> list[int]:
    """A kernel or stride as nnU-Net writes it: one int for every axis, or a list of `dims` ints
    from 1 to `high` (its length checked before its entries)."""
    if not isinstance(value, (list, tuple)):
        return [integer(value, where, 1, high)] * dims
    if len(value) != dims:
        raise ValueError(f"{where}={short_repr(value)} must have {dims} entries, one per spatial axis (conv_op)")
    return [integer(v, f"{where}[{a}]", 1, high) for a, v in enumerate(value)]


# ---------------------------------------------------------------------------------------------
# layer instances -> options


def norm_from_module(m: nn.Module | None, where: str) -> dict[str, Any]:
    """The unetgen norm option of a norm layer instance (None: no norm)."""
    if m is None:
        return {"type": "none"}
    if isinstance(m, _InstanceNorm):
        if m.track_running_stats:
            raise UnsupportedModelError(f"{where}: {type(m).__name__} with track_running_stats=True")
        return {"type": "instance", "affine": m.affine, "eps": m.eps}
    if isinstance(m, _BatchNorm):
        if not m.track_running_stats or m.momentum is None:
            raise UnsupportedModelError(f"{where}: {type(m).__name__} without running statistics or momentum")
        out = {"type": "batch", "eps": m.eps, "momentum": m.momentum}
        if not m.affine:
            out["affine"] = False
        return out
    if isinstance(m, nn.GroupNorm):
        if not m.affine:
            raise UnsupportedModelError(f"{where}: GroupNorm with affine=False")
        return {"type": "group", "num_groups": m.num_groups, "eps": m.eps}
    raise UnsupportedModelError(f"{where}: norm {type(m).__name__} is not supported")


def activation_from_module(m: nn.Module | None, where: str) -> dict[str, Any]:
    """The unetgen activation option of a non-linearity instance."""
    if m is None:
        raise UnsupportedModelError(f"{where}: no activation")
    kw: dict[str, Any] = {}
    if isinstance(m, nn.LeakyReLU):
        kw["negative_slope"] = m.negative_slope
    elif isinstance(m, nn.ELU):
        kw["alpha"] = m.alpha
    elif isinstance(m, nn.GELU):
        kw["approximate"] = m.approximate
    elif isinstance(m, nn.PReLU):
        kw["num_parameters"] = m.num_parameters  # its weights are copied: the init does not matter
    elif not isinstance(m, (nn.ReLU, nn.SiLU)):
        raise UnsupportedModelError(f"{where}: activation {type(m).__name__} is not supported")
    return activation_option(type(m).__name__, kw, where)
