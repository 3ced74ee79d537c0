"""What every part of `unetgen.interop` shares: `UnsupportedModelError`, the unetgen options of
torch's norm and activation layers (from a class name and its kwargs, as plans files spell them,
or from an instance, as the converters find them), and the validation of an inferred config."""

from __future__ import annotations

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
    "norm_from_module",
    "norm_option",
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
    if kw.pop("track_running_stats", False):
        raise UnsupportedModelError(f"{where}: {name} with track_running_stats=True")
    out = {"type": "instance", "affine": bool(kw.pop("affine", False)), "eps": float(kw.pop("eps", 1e-5))}
    kw.pop("momentum", None)  # unused without running statistics
    return out


def _batch_norm(name: str, kw: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "batch",
        "eps": float(kw.pop("eps", 1e-5)),
        "momentum": float(kw.pop("momentum", 0.1)),
    }
    if not kw.pop("affine", True):
        out["affine"] = False
    if not kw.pop("track_running_stats", True):
        raise UnsupportedModelError(f"{where}: {name} with track_running_stats=False")
    return out


def norm_option(name: str | None, kwargs: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The unetgen norm option for a torch norm class name (None: no norm) and its kwargs."""
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
    """The unetgen activation option for a torch non-linearity class name and its kwargs."""
    kw = {k: v for k, v in kwargs.items() if k != "inplace"}
    match name:
        case "ReLU":
            out: dict[str, Any] = {"type": "relu"}
        case "LeakyReLU":
            out = {"type": "leaky_relu", "negative_slope": float(kw.pop("negative_slope", 0.01))}
        case "ELU":
            out = {"type": "elu", "alpha": float(kw.pop("alpha", 1.0))}
        case "GELU" if kw.get("approximate", "none") == "none":
            kw.pop("approximate", None)
            out = {"type": "gelu"}
        case "SiLU":
            out = {"type": "silu"}
        case "PReLU":
            out = {"type": "prelu", "num_parameters": "one" if kw.pop("num_parameters", 1) == 1 else "channels"}
            out["init"] = float(kw.pop("init", 0.25))
        case None:
            raise UnsupportedModelError(f"{where}: no non-linearity (nonlin=None) is not supported")
        case _:
            raise UnsupportedModelError(f"{where}: activation {short_repr(name)} is not supported")
    _refuse_leftovers(kw, name, where)
    return out


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
