"""Interchange with the U-Nets people already run: nnU-Net plans, nnU-Net and MONAI modules.

- `from_nnunet_plans(plans, configuration, in_channels=..., out_channels=...)`: the `UNetConfig`
  of the network nnU-Net builds from a plans file (both plans formats, `inherits_from`, deep
  supervision as nnU-Net trains it).
- `to_nnunet_architecture(config)`: the way back, the plans ``architecture`` block.
- `convert(module)`: an instantiated peer (nnU-Net's `PlainConvUNet`, `ResidualEncoderUNet` and
  `ResidualUNet`, MONAI's `BasicUNet` and `DynUNet`) as a unetgen `UNet` with the peer's weights
  and buffers: the same function to float round-off, or `UnsupportedModelError` naming the layer
  and the missing feature. Never an approximation.
- `copy_weights(source, target, example_input)`: the generic fallback for hand-written U-Nets:
  pairs the parametric layers in forward-execution order and checks each pair numerically.

The peers are never imported here: modules are recognised by their class name and module path,
and plans are plain data. This module sits above `model/unet.py`; nothing below imports it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.instancenorm import _InstanceNorm

from ..config import options as cfgmod
from ..config.diagnostics import short_repr
from ..config.unet_config import UNetConfig
from ..model.unet import UNet
from ..reprs import short_text

__all__ = [
    "UnsupportedModelError",
    "convert",
    "copy_weights",
    "from_nnunet_plans",
    "to_nnunet_architecture",
]

MAX_PLANS_BYTES = 4 * 1024 * 1024
"""Largest plans file read (real nnUNetPlans.json files are a few to a few hundred kilobytes)."""

NNUNET_CLASSES = {
    "PlainConvUNet": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "ResidualEncoderUNet": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
}
_NNUNET_MODULES = (  # where plans files name the classes (residual_unet: plans converted from v2.0-2.2)
    "dynamic_network_architectures.architectures.unet",
    "dynamic_network_architectures.architectures.residual_unet",
)
_PAIRED = (_ConvNd, _BatchNorm, _InstanceNorm, nn.GroupNorm, nn.PReLU)
UP_FIRST = {"type": "concat", "order": "up_first"}  # nnU-Net and DynUNet concatenate (up, skip)


class UnsupportedModelError(ValueError):
    """A peer model, plans file or config that unetgen (or nnU-Net, on the way back) cannot
    express exactly; the message names the layer or option and the missing feature."""


# =============================================================================================
# nnU-Net plans -> UNetConfig


def from_nnunet_plans(
    plans: Mapping[str, Any] | str | Path,
    configuration: str,
    *,
    in_channels: int,
    out_channels: int,
    deep_supervision: bool = True,
) -> UNetConfig:
    """The `UNetConfig` of the network nnU-Net builds for `configuration` of `plans` (a plans dict
    or an nnUNetPlans.json path), with `in_channels` input channels (the dataset's channels) and
    `out_channels` outputs (its labels or regions). Reads both plans formats: v2.3+ (an
    ``architecture`` block: ``network_class_name`` + ``arch_kwargs``) and v2.0-2.2 (``UNet_class_name``,
    ``UNet_base_num_features``, ``unet_max_num_features``, ``pool_op_kernel_sizes``,
    ``conv_kernel_sizes``, ``n_conv_per_stage_encoder``/``decoder``), and resolves ``inherits_from``.
    `deep_supervision` as nnU-Net trains (a 1x1 head on every decoder level but the deepest);
    pass False for the network nnU-Net predicts with. Raises `UnsupportedModelError` for network
    classes or options unetgen cannot build, `ValueError` for a malformed plans file."""
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= cfgmod.MAX_CHANNELS:
            raise ValueError(f"{name}={short_repr(value)} must be an integer from 1 to {cfgmod.MAX_CHANNELS}")
    data = _read_plans(plans) if isinstance(plans, (str, Path)) else plans
    if not isinstance(data, Mapping) or not isinstance(data.get("configurations"), Mapping):
        raise ValueError("not an nnU-Net plans file: no 'configurations' mapping at the top level")
    conf = _resolve_configuration(data["configurations"], configuration)
    name, kwargs = _architecture(conf, configuration)
    where = f"configuration {configuration!r}"
    try:
        return _nnunet_config(name, kwargs, in_channels, out_channels, deep_supervision, where)
    except (TypeError, AttributeError, OverflowError) as err:  # a value of the wrong kind somewhere
        raise ValueError(f"{where}: malformed arch_kwargs ({short_text(str(err))})") from None


def _read_plans(path: str | Path) -> Any:
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_PLANS_BYTES + 1)
    except OSError as err:
        raise ValueError(f"{p}: cannot read the plans file: {err.strerror or err}") from None
    if len(raw) > MAX_PLANS_BYTES:
        raise ValueError(f"{p}: larger than {MAX_PLANS_BYTES} bytes; an nnU-Net plans file is far smaller")

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(raw.decode("utf-8-sig"), parse_constant=refuse)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ValueError(f"{p}: not a JSON plans file ({short_text(str(err))})") from None


def _resolve_configuration(configurations: Mapping[str, Any], name: str) -> dict[str, Any]:
    seen: list[str] = []
    merged: dict[str, Any] = {}
    while True:
        if name not in configurations:
            known = ", ".join(map(str, configurations)) or "none"
            where = f" (inherited by {seen[-1]!r})" if seen else ""
            raise ValueError(f"the plans have no configuration {name!r}{where}; available: {known}")
        if name in seen:
            raise ValueError(f"configurations inherit in a circle: {' -> '.join([*seen, name])}")
        seen.append(name)
        conf = configurations[name]
        if not isinstance(conf, Mapping):
            raise ValueError(f"configuration {name!r} is a {type(conf).__name__}, not a mapping")
        merged = {**conf, **merged}  # the child's keys win
        parent = conf.get("inherits_from")
        if parent is None:
            merged.pop("inherits_from", None)
            return merged
        name = parent


def _architecture(conf: Mapping[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    """(class name, arch_kwargs) of a resolved configuration, old formats translated."""
    if "architecture" in conf:
        arch = conf["architecture"]
        if not isinstance(arch, Mapping) or not isinstance(arch.get("arch_kwargs"), Mapping):
            raise ValueError(f"configuration {where!r}: 'architecture' needs 'network_class_name' and 'arch_kwargs'")
        full = str(arch.get("network_class_name", ""))
        module, _, cls = full.rpartition(".")
        if cls not in NNUNET_CLASSES or (module and module not in _NNUNET_MODULES):
            raise UnsupportedModelError(
                f"configuration {where!r}: network class {short_repr(full)} is not supported; unetgen reads "
                f"{', '.join(NNUNET_CLASSES.values())}"
            )
        return cls, dict(arch["arch_kwargs"])
    try:
        cls = conf["UNet_class_name"]
        if cls not in NNUNET_CLASSES:
            raise UnsupportedModelError(
                f"configuration {where!r}: UNet_class_name {short_repr(cls)} is not supported; unetgen reads "
                f"{', '.join(NNUNET_CLASSES)}"
            )
        kernels, strides = conf["conv_kernel_sizes"], conf["pool_op_kernel_sizes"]
        base, top = conf["UNet_base_num_features"], conf["unet_max_num_features"]
        n = len(kernels)
        kwargs: dict[str, Any] = {
            "n_stages": n,
            "features_per_stage": [min(base * 2**i, top) for i in range(n)],
            "conv_op": f"torch.nn.Conv{len(kernels[0])}d",
            "kernel_sizes": kernels,
            "strides": strides,
            "n_conv_per_stage" if cls == "PlainConvUNet" else "n_blocks_per_stage": conf["n_conv_per_stage_encoder"],
            "n_conv_per_stage_decoder": conf["n_conv_per_stage_decoder"],
            "conv_bias": True,
            "norm_op": f"torch.nn.InstanceNorm{len(kernels[0])}d",
            "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        }
    except KeyError as err:
        raise ValueError(
            f"configuration {where!r} has neither an 'architecture' block (nnU-Net v2.3+) nor the key "
            f"{err.args[0]!r} of the v2.0-2.2 format"
        ) from None
    except (TypeError, IndexError):
        raise ValueError(f"configuration {where!r}: malformed v2.0-2.2 network keys") from None
    return cls, kwargs


_ARCH_KWARGS = {
    "n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "n_conv_per_stage_decoder", "conv_bias",
    "norm_op", "norm_op_kwargs", "dropout_op", "dropout_op_kwargs", "nonlin", "nonlin_kwargs",
}  # fmt: skip
_RESENC_KWARGS = {"n_blocks_per_stage", "block", "bottleneck_channels", "stem_channels"}


def _tail(name: Any) -> str | None:
    """'torch.nn.modules.conv.Conv3d' -> 'Conv3d' (None stays None)."""
    return None if name is None else str(name).rpartition(".")[2]


def _nnunet_config(
    cls: str, kw: Mapping[str, Any], in_channels: int, out_channels: int, deep_supervision: bool, where: str
) -> UNetConfig:
    def get(key: str, default: Any = KeyError) -> Any:
        if key in kw:
            return kw[key]
        if default is KeyError:
            raise ValueError(f"{where}: arch_kwargs has no {key!r}")
        return default

    known = _ARCH_KWARGS | (_RESENC_KWARGS if cls == "ResidualEncoderUNet" else {"n_conv_per_stage", "nonlin_first"})
    if unknown := sorted(map(str, set(kw) - known)):
        raise UnsupportedModelError(f"{where}: arch_kwargs {short_repr(unknown)} are not supported by unetgen.interop")
    conv = _tail(get("conv_op"))
    dims = {"Conv1d": 1, "Conv2d": 2, "Conv3d": 3}.get(conv or "")
    if dims is None:
        raise UnsupportedModelError(f"{where}: conv_op {short_repr(get('conv_op'))} is not Conv1d, Conv2d or Conv3d")
    n = get("n_stages")
    if not isinstance(n, int) or not 2 <= n <= cfgmod.MAX_DEPTH + 1:
        raise UnsupportedModelError(f"{where}: n_stages={short_repr(n)}; unetgen builds 2 to {cfgmod.MAX_DEPTH + 1}")
    per_stage = _per_stage(get("features_per_stage"), n, "features_per_stage", where)
    kernels = [_axes(k, dims) for k in _per_stage(get("kernel_sizes"), n, "kernel_sizes", where)]
    strides = [_axes(s, dims) for s in _per_stage(get("strides"), n, "strides", where)]
    residual = cls == "ResidualEncoderUNet"
    key = "n_blocks_per_stage" if residual else "n_conv_per_stage"
    units = _per_stage(get(key), n, key, where)
    decoder = _per_stage(get("n_conv_per_stage_decoder"), n - 1, "n_conv_per_stage_decoder", where)
    for option in ("bottleneck_channels", "stem_channels"):
        if get(option, None) is not None:
            raise UnsupportedModelError(
                f"{where}: {option}={short_repr(get(option))} (unetgen's stem has the level-0 channels)"
            )
    if residual and _tail(get("block", "BasicBlockD")) != "BasicBlockD":
        raise UnsupportedModelError(
            f"{where}: block {short_repr(get('block'))}: only BasicBlockD residual units are supported"
        )
    norm = _norm_option(_tail(get("norm_op", None)), get("norm_op_kwargs", None) or {}, dims, where)
    act = _activation_option(_tail(get("nonlin", None)), get("nonlin_kwargs", None) or {}, where)
    if act.get("num_parameters") == "channels":
        raise UnsupportedModelError(f"{where}: PReLU with num_parameters != 1 for every conv, whatever its width")
    if get("dropout_op", None) is not None and float((get("dropout_op_kwargs", None) or {}).get("p", 0.5)) > 0:
        raise UnsupportedModelError(
            f"{where}: dropout_op {short_repr(get('dropout_op'))}: nnU-Net drops out after every conv, "
            "unetgen after whole blocks"
        )
    spec = _NNSpec(
        dims=dims,
        in_channels=in_channels,
        out_channels=out_channels,
        features=[int(f) for f in per_stage],
        kernels=kernels,
        strides=strides,
        units=[int(u) for u in units],
        decoder_convs=[int(c) for c in reversed(decoder)],  # nnU-Net lists the deepest decoder stage first
        bias=bool(get("conv_bias", False)),
        norm=norm,
        activation=act,
        nonlin_first=bool(get("nonlin_first", False)),
        residual=residual,
        residual_decoder=False,
        deep_supervision=deep_supervision,
    )
    return _validated(spec.config_dict(), where)


def _per_stage(value: Any, n: int, name: str, where: str) -> list[Any]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value] * n
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise ValueError(f"{where}: {name}={short_repr(value)} needs {n} entries (n_stages)")
    return list(value)


def _axes(value: Any, dims: int) -> list[int]:
    return [int(value)] * dims if isinstance(value, int) else [int(v) for v in value]


def _norm_option(name: str | None, kwargs: Mapping[str, Any], dims: int, where: str) -> dict[str, Any]:
    """The unetgen norm option for a torch norm class name and its kwargs."""
    kw = dict(kwargs)
    if name is None:
        return {"type": "none"}
    if name.startswith("InstanceNorm"):
        if kw.pop("track_running_stats", False):
            raise UnsupportedModelError(f"{where}: {name} with track_running_stats=True")
        out = {"type": "instance", "affine": bool(kw.pop("affine", False)), "eps": float(kw.pop("eps", 1e-5))}
        kw.pop("momentum", None)  # unused without running statistics
    elif name.startswith("BatchNorm"):
        out = {"type": "batch", "eps": float(kw.pop("eps", 1e-5)), "momentum": float(kw.pop("momentum", 0.1))}
        if not kw.pop("affine", True):
            out["affine"] = False
        if not kw.pop("track_running_stats", True):
            raise UnsupportedModelError(f"{where}: {name} with track_running_stats=False")
    else:  # nnU-Net calls norm_op(channels, **norm_op_kwargs), which GroupNorm's signature does not fit
        raise UnsupportedModelError(f"{where}: norm_op {short_repr(name)} is not supported (batch, instance)")
    kw.pop("device", None), kw.pop("dtype", None)
    if kw:
        raise UnsupportedModelError(f"{where}: {name} options {short_repr(kw)} are not supported")
    return out


def _activation_option(name: str | None, kwargs: Mapping[str, Any], where: str) -> dict[str, Any]:
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
    if kw:
        raise UnsupportedModelError(f"{where}: {name} options {short_repr(kw)} are not supported")
    return out


@dataclass(frozen=True)
class _NNSpec:
    """An nnU-Net network (PlainConvUNet, ResidualEncoderUNet, ResidualUNet), normalised: one
    entry per stage (kernels, strides per axis; `units` = convs or residual blocks), decoder
    convs level 0 first."""

    dims: int
    in_channels: int
    out_channels: int
    features: list[int]
    kernels: list[list[int]]
    strides: list[list[int]]
    units: list[int]
    decoder_convs: list[int]
    bias: bool
    norm: dict[str, Any]
    activation: dict[str, Any]
    nonlin_first: bool
    residual: bool
    residual_decoder: bool
    deep_supervision: bool

    def config_dict(self) -> dict[str, Any]:
        n = len(self.features)
        depth = n - 1
        if depth < 1:
            raise UnsupportedModelError(f"n_stages={n}: a U-Net needs at least 2 stages")
        out: dict[str, Any] = {
            "spatial_dims": self.dims,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "depth": depth,
            "channels": self.features,
            "kernel_size": self.kernels,
            "strides": self.strides[1:],
            "padding": "same",
            "norm": self.norm,
            "bias": self.bias,
            "activation": self.activation,
            "down": {"type": "first_conv"},
            "up": _transpose_up(self.bias),
            "decoder_convs_per_block": self.decoder_convs,
            "dropout": {"rate": 0.0},
            "deep_supervision": list(range(1, depth)) if self.deep_supervision else [],
            "init": "torch",
        }
        if any(s != 1 for s in self.strides[0]):
            out["stem_stride"] = self.strides[0]
        if self.residual:
            out |= {
                "stem": True,
                "convs_per_block": 2,
                "blocks_per_level": self.units,
                "block": {"type": "residual", "shortcut": "resnet_d"},
                "decoder_block": {"type": "residual", "shortcut": "resnet_d"} if self.residual_decoder else "plain",
            }
        else:
            out["convs_per_block"] = self.units
        if self.nonlin_first:
            out["norm_position"] = "after_activation"
        out["merge"] = UP_FIRST
        return out


def _transpose_up(bias: bool) -> dict[str, Any]:
    """A transposed-conv up-sampling with or without bias (the schema's default is with)."""
    return {"type": "transpose"} if bias else {"type": "transpose", "bias": False}


def _validated(data: dict[str, Any], where: str) -> UNetConfig:
    from pydantic import ValidationError

    try:
        return UNetConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(map(str, first["loc"])) or "(config)"
        raise UnsupportedModelError(
            f"{where}: unetgen cannot express this network: {field}: {first['msg']} ({len(err.errors())} problem(s))"
        ) from None


# =============================================================================================
# UNetConfig -> nnU-Net plans `architecture`


def to_nnunet_architecture(config: UNetConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The nnU-Net plans ``architecture`` block (``network_class_name``, ``arch_kwargs``,
    ``_kw_requires_import``) that builds the same network as `config`, for every config nnU-Net
    can build (`PlainConvUNet` or `ResidualEncoderUNet`). Deep supervision is a trainer setting in
    nnU-Net, not part of the block. Raises `UnsupportedModelError` naming the first option nnU-Net
    lacks."""
    c = config if isinstance(config, UNetConfig) else UNetConfig.model_validate(config)
    data = c.model_dump()
    lay = c.layout
    d, dims = c.depth, c.spatial_dims

    def refuse(field: str, why: str) -> UnsupportedModelError:
        return UnsupportedModelError(f"{field}={short_repr(data.get(field))}: nnU-Net cannot build it ({why})")

    if c.padding != "same":
        raise refuse("padding", "its convs always pad to keep the size")
    if data["down"]["type"] != "first_conv":
        raise refuse("down", "it down-samples with the first conv of a stage: use down: first_conv")
    up = data["up"]
    if up["type"] != "transpose" or up.get("bias", True) != c.conv_bias or up.get("kernel_size") is not None:
        raise refuse("up", f"it up-samples with a transposed conv, kernel = stride, bias = conv bias ({c.conv_bias})")
    if up.get("norm_act"):
        raise refuse("up", "no norm or activation after its transposed conv")
    if data["merge"]["type"] != "concat":
        raise refuse("merge", "it concatenates")
    if any(u != s.out_channels for u, s in zip(lay.up_channels, lay.encoder, strict=False)):
        raise refuse("up_channels", "its transposed convs output the skip's channels")
    if any(len(set(s.channels)) != 1 for s in lay.encoder) or (
        lay.stem and lay.stem.out_channels != lay.encoder[0].out_channels
    ):
        raise refuse("channels", "one width per stage")
    if any(
        dec.channels != (enc.out_channels,) * len(dec.channels)
        for dec, enc in zip(lay.decoder, lay.encoder, strict=False)
    ):
        raise refuse("decoder_channels", "a decoder level has the channels of its skip")
    if data.get("decoder_kernel", "same_level") != "same_level":
        raise refuse("decoder_kernel", "a decoder level uses the kernel of its skip's level")
    if c.dropout.rate > 0:
        raise refuse("dropout", "unetgen drops out after blocks, nnU-Net after convs")
    if c.deep_supervision and list(c.deep_supervision) != list(range(1, d)):
        raise refuse("deep_supervision", "nnU-Net supervises every decoder level or none")
    block, dec_block = data["block"], data.get("decoder_block") or data["block"]
    if block.get("preactivation"):
        raise refuse("block", "no pre-activation units")
    residual = block["type"] == "residual"
    if residual:
        if block.get("shortcut") != "resnet_d" or not data.get("stem"):
            raise refuse(
                "block", "its residual encoder has a stem and ResNet-D shortcuts (block.shortcut: resnet_d, stem: true)"
            )
        if dec_block["type"] != "plain":
            raise refuse("decoder_block", "its decoder is plain")
        if any(n != 2 for n in _encoder_convs(c)):
            raise refuse("convs_per_block", "its residual units have 2 convs")
    elif data.get("stem"):
        raise refuse("stem", "only its residual encoder has a stem")
    if data.get("norm_position", "before_activation") != "before_activation" and residual:
        raise refuse("norm_position", "only PlainConvUNet can normalise after the activation")
    norm_op, norm_kwargs = _nnunet_norm(data["norm"], dims)
    nonlin, nonlin_kwargs = _nnunet_nonlin(data["activation"])
    kwargs: dict[str, Any] = {
        "n_stages": d + 1,
        "features_per_stage": [s.out_channels for s in lay.encoder],
        "conv_op": f"torch.nn.modules.conv.Conv{dims}d",
        "kernel_sizes": [list(s.kernel) for s in lay.encoder],
        "strides": [list(lay.stem_stride) or [1] * dims] + [list(s) for s in lay.strides],
    }
    if residual:
        kwargs["n_blocks_per_stage"] = _blocks_per_level(c)
    else:
        kwargs["n_conv_per_stage"] = list(_encoder_convs(c))
    kwargs |= {
        "n_conv_per_stage_decoder": [len(s.channels) for s in reversed(lay.decoder)],  # the deepest first
        "conv_bias": c.conv_bias,
        "norm_op": norm_op,
        "norm_op_kwargs": norm_kwargs,
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": nonlin,
        "nonlin_kwargs": nonlin_kwargs,
    }
    if data.get("norm_position") == "after_activation":
        kwargs["nonlin_first"] = True
    cls = "ResidualEncoderUNet" if residual else "PlainConvUNet"
    return {
        "network_class_name": NNUNET_CLASSES[cls],
        "arch_kwargs": kwargs,
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def _encoder_convs(c: UNetConfig) -> tuple[int, ...]:
    """Convs per unit of each encoder level."""
    return tuple(len(s.channels) // s.units for s in c.layout.encoder)


def _blocks_per_level(c: UNetConfig) -> list[int]:
    return [s.units for s in c.layout.encoder]


def _nnunet_norm(norm: Mapping[str, Any], dims: int) -> tuple[str | None, dict[str, Any] | None]:
    match norm["type"]:
        case "none":
            return None, None
        case "instance":
            return f"torch.nn.modules.instancenorm.InstanceNorm{dims}d", {"eps": norm["eps"], "affine": norm["affine"]}
        case "batch":
            kw = {"eps": norm["eps"], "momentum": norm["momentum"]}
            if norm.get("affine") is False:
                kw["affine"] = False
            return f"torch.nn.modules.batchnorm.BatchNorm{dims}d", kw
    raise UnsupportedModelError(
        f"norm={short_repr(norm)}: nnU-Net builds norm_op(channels, **norm_op_kwargs): instance or batch norm only"
    )


def _nnunet_nonlin(act: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    match act["type"]:
        case "relu":
            return "torch.nn.ReLU", {"inplace": True}
        case "leaky_relu":
            return "torch.nn.LeakyReLU", {"inplace": True, "negative_slope": act["negative_slope"]}
        case "elu":
            return "torch.nn.ELU", {"inplace": True, "alpha": act["alpha"]}
        case "gelu":
            return "torch.nn.GELU", {}
        case "silu":
            return "torch.nn.SiLU", {"inplace": True}
        case "prelu" if act["num_parameters"] == "one":
            return "torch.nn.PReLU", {"num_parameters": 1, "init": act["init"]}
        case "prelu":
            raise UnsupportedModelError(
                "activation.num_parameters='channels': nnU-Net builds every PReLU with the same "
                "nonlin_kwargs, so one slope per channel fits only when all widths are equal; use 'one'"
            )
    raise UnsupportedModelError(f"activation={short_repr(act)}: no nnU-Net nonlin for it")


# =============================================================================================
# convert(peer module) -> UNet


def convert(module: nn.Module, *, ignore_dropout: bool = False) -> UNet:
    """A unetgen `UNet` computing the same function as the peer `module`, with its weights and
    buffers copied (batch-norm running statistics too), in the peer's dtype and device.

    Supported: nnU-Net's (dynamic_network_architectures) `PlainConvUNet`, `ResidualEncoderUNet` and
    `ResidualUNet` (one residual unit per decoder stage), MONAI's `BasicUNet` and `DynUNet`.
    Anything unetgen cannot express exactly raises `UnsupportedModelError` naming the layer and
    the missing feature. Dropout is refused unless
    `ignore_dropout=True`, which drops it: eval-mode outputs are then still exact, training differs.
    The result is in the peer's train/eval mode."""
    name = type(module).__name__
    converters: dict[str, Callable[[nn.Module, bool], tuple[dict[str, Any], list[nn.Module]]]] = {
        "PlainConvUNet": _from_nnunet_module,
        "ResidualEncoderUNet": _from_nnunet_module,
        "ResidualUNet": _from_nnunet_module,
        "BasicUNet": _from_basic_unet,
        "DynUNet": _from_dynunet,
    }
    origin = type(module).__module__
    if origin.startswith("monai") and name in ("UNet", "Unet", "AttentionUnet"):
        raise UnsupportedModelError(
            f"{origin}.{name} is a different topology: it merges at the coarse resolution before each "
            "up-sampling (no conv between merge and transposed conv), has no full-resolution conv and "
            "up-samples with kernel-3 transposed convs + norm + activation; see docs/interop.md"
        )
    if name not in converters or not origin.startswith(("dynamic_network_architectures", "monai")):
        known = "dynamic_network_architectures PlainConvUNet/ResidualEncoderUNet/ResidualUNet, monai BasicUNet/DynUNet"
        raise UnsupportedModelError(
            f"convert() does not know {origin}.{name}; it converts {known}. For another U-Net, build the "
            "matching config and use copy_weights(source, target, example_input)"
        )
    data, peer_layers = converters[name](module, ignore_dropout)
    config = _validated(data, f"{name}")
    ref = next(iter(module.parameters()), None)
    with torch.device("meta"):
        target = UNet(config)
    target = target.to_empty(device=ref.device if ref is not None else "cpu")
    if ref is not None:
        target = target.to(ref.dtype)
    paired = _paired_layers(target)
    covered = {id(t) for m in paired for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]}
    if left := [n for n, t in [*target.named_parameters(), *target.named_buffers()] if id(t) not in covered]:
        raise UnsupportedModelError(f"{name}: unetgen tensors {short_repr(left)} have no counterpart in the peer")
    _copy_paired(peer_layers, paired, name)
    target.train(module.training)
    return target


def _paired_layers(model: nn.Module) -> list[nn.Module]:
    """The layers with weights or statistics, in registration order (unetgen's canonical order)."""
    return [m for m in model.modules() if isinstance(m, _PAIRED)]


def _signature(m: nn.Module) -> tuple[Any, ...]:
    """Everything about a layer that must agree for a weight copy to give the same function."""
    if isinstance(m, _ConvNd):
        kind = "transposed conv" if m.transposed else "conv"
        extra = (m.output_padding,) if m.transposed else ()
        return (kind, m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                m.bias is not None, m.padding_mode, *extra)  # fmt: skip
    if isinstance(m, _BatchNorm):
        return ("batch norm", m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
    if isinstance(m, _InstanceNorm):
        return ("instance norm", m.num_features, m.eps, m.affine, m.track_running_stats)
    if isinstance(m, nn.GroupNorm):
        return ("group norm", m.num_groups, m.num_channels, m.eps, m.affine)
    if isinstance(m, nn.PReLU):
        return ("prelu", m.num_parameters)
    raise AssertionError(type(m))


def _copy_paired(source: list[nn.Module], target: list[nn.Module], peer: str) -> None:
    """Check that `source[i]` and `target[i]` agree in everything but their values, then copy."""
    if len(source) != len(target):
        raise UnsupportedModelError(
            f"{peer}: {len(source)} parametric layers but the unetgen model has {len(target)}; "
            "the inferred config does not reproduce the network"
        )
    for i, (s, t) in enumerate(zip(source, target, strict=True)):
        if _signature(s) != _signature(t):
            raise UnsupportedModelError(
                f"{peer}: layer {i} ({type(s).__name__}) does not match unetgen's: {_signature(s)} vs {_signature(t)}"
            )
    with torch.no_grad():
        for s, t in zip(source, target, strict=True):
            mine = t.state_dict()
            for key, value in s.state_dict().items():
                mine[key].copy_(value)


# ---------------------------------------------------------------------------------------------
# nnU-Net modules


def _from_nnunet_module(net: nn.Module, ignore_dropout: bool) -> tuple[dict[str, Any], list[nn.Module]]:
    name = type(net).__name__
    enc, dec = net.encoder, net.decoder
    res_decoder = type(dec).__name__ == "UNetResDecoder"
    if type(dec).__name__ not in ("UNetDecoder", "UNetResDecoder"):
        raise UnsupportedModelError(f"{name}.decoder is a {type(dec).__name__}; UNetDecoder or UNetResDecoder only")
    residual = name in ("ResidualEncoderUNet", "ResidualUNet")
    dims = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}.get(enc.conv_op)
    if dims is None:
        raise UnsupportedModelError(f"{name}.encoder.conv_op {enc.conv_op!r} is not a plain Conv1d/2d/3d")
    layers: list[nn.Module] = []
    units: list[int] = []
    if residual:
        if enc.stem is None:
            raise UnsupportedModelError(f"{name}.encoder has no stem (disable_default_stem=True)")
        stem_conv = enc.stem.convs[0].conv
        if stem_conv.out_channels != enc.output_channels[0] or len(enc.stem.convs) != 1:
            raise UnsupportedModelError(f"{name}.encoder.stem: stem_channels != features_per_stage[0]")
        layers += _cdnr_layers(enc.stem.convs[0], ignore_dropout, f"{name}.encoder.stem")
    for s, stage in enumerate(enc.stages):
        where = f"{name}.encoder.stages[{s}]"
        mods = list(stage) if isinstance(stage, nn.Sequential) and not hasattr(stage, "blocks") else [stage]
        if len(mods) != 1 or (not residual and not hasattr(mods[0], "convs")):
            raise UnsupportedModelError(f"{where}: pooling before the convs (pool='max'/'avg') is not supported")
        body = mods[0]
        if residual:
            blocks = list(body.blocks)
            units.append(len(blocks))
            for b, blk in enumerate(blocks):
                layers += _basic_block_layers(blk, ignore_dropout, f"{where}.blocks[{b}]")
        else:
            units.append(len(body.convs))
            for cdnr in body.convs:
                layers += _cdnr_layers(cdnr, ignore_dropout, where)
    d = len(enc.stages) - 1
    for i in range(d):  # decoder level i = decoder stage d-1-i
        s = d - 1 - i
        layers.append(dec.transpconvs[s])
        where = f"{name}.decoder.stages[{s}]"
        if res_decoder:
            if len(dec.stages[s].blocks) != 1:
                raise UnsupportedModelError(
                    f"{where}: {len(dec.stages[s].blocks)} residual units; a unetgen decoder level is one block "
                    "(n_conv_per_stage_decoder=1 gives one BasicBlockD of 2 convs)"
                )
            layers += _basic_block_layers(dec.stages[s].blocks[0], ignore_dropout, where)
        else:
            for cdnr in dec.stages[s].convs:
                layers += _cdnr_layers(cdnr, ignore_dropout, where)
        if dec.deep_supervision and i > 0:
            layers.append(dec.seg_layers[s])
    layers.append(dec.seg_layers[-1])
    norm_layer = next((m for m in layers if isinstance(m, (_BatchNorm, _InstanceNorm, nn.GroupNorm))), None)
    spec = _NNSpec(
        dims=dims,
        in_channels=layers[0].in_channels,
        out_channels=dec.num_classes,
        features=[int(c) for c in enc.output_channels],
        kernels=[_axes(k, dims) for k in enc.kernel_sizes],
        strides=[_axes(s, dims) for s in enc.strides],
        units=units,
        decoder_convs=[2 if res_decoder else len(dec.stages[d - 1 - i].convs) for i in range(d)],
        bias=bool(enc.conv_bias),
        norm=_norm_from_module(norm_layer, f"{name}.encoder"),
        activation=_nonlin_from_class(enc.nonlin, enc.nonlin_kwargs or {}, f"{name}.encoder"),
        nonlin_first=_nonlin_first(net),
        residual=residual,
        residual_decoder=res_decoder,
        deep_supervision=bool(dec.deep_supervision),
    )
    return spec.config_dict(), layers


def _basic_block_layers(blk: nn.Module, ignore_dropout: bool, where: str) -> list[nn.Module]:
    """The parametric layers of nnU-Net's BasicBlockD in unetgen's order: body, shortcut, activation."""
    if type(blk).__name__ != "BasicBlockD":
        raise UnsupportedModelError(f"{where}: {type(blk).__name__}: only BasicBlockD units are supported")
    if blk.apply_stochastic_depth or blk.apply_se:
        raise UnsupportedModelError(f"{where}: stochastic depth / squeeze-excitation are not supported")
    out = _cdnr_layers(blk.conv1, ignore_dropout, where) + _cdnr_layers(blk.conv2, ignore_dropout, where)
    if isinstance(blk.skip, nn.Sequential):
        out += [m for m in blk.skip.modules() if isinstance(m, _PAIRED)]
    if isinstance(blk.nonlin2, nn.PReLU):  # unetgen's unit activates after the sum, last
        out.append(blk.nonlin2)
    return out


def _cdnr_layers(cdnr: nn.Module, ignore_dropout: bool, where: str) -> list[nn.Module]:
    """conv, norm and (a PReLU) non-linearity of nnU-Net's ConvDropoutNormReLU, in execution order."""
    drop = getattr(cdnr, "dropout", None)
    if drop is not None and drop.p > 0 and not ignore_dropout:
        raise UnsupportedModelError(
            f"{where}: dropout p={drop.p} after the conv; unetgen drops out after blocks (convert(..., "
            "ignore_dropout=True) drops it: eval outputs stay exact)"
        )
    return [m for m in cdnr.all_modules if isinstance(m, _PAIRED)]


def _nonlin_first(net: nn.Module) -> bool:
    for m in net.modules():
        if type(m).__name__ == "ConvDropoutNormReLU":
            kinds = [type(x) for x in m.all_modules]
            norm_at = next(
                (i for i, k in enumerate(kinds) if issubclass(k, (_BatchNorm, _InstanceNorm, nn.GroupNorm))), None
            )
            return norm_at is not None and norm_at == len(kinds) - 1 and len(kinds) > 2
    return False


def _norm_from_module(m: nn.Module | None, where: str) -> dict[str, Any]:
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


def _nonlin_from_class(cls: type | None, kwargs: Mapping[str, Any], where: str) -> dict[str, Any]:
    return _activation_option(None if cls is None else cls.__name__, kwargs, where)


def _activation_from_module(m: nn.Module | None, where: str) -> dict[str, Any]:
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
    return _activation_option(type(m).__name__, kw, where)


# ---------------------------------------------------------------------------------------------
# MONAI


def _adn(conv_block: nn.Module, where: str, ignore_dropout: bool) -> tuple[nn.Module | None, nn.Module | None]:
    """(norm, activation) of a MONAI `Convolution`; refuses dropout and a norm after the activation."""
    adn = getattr(conv_block, "adn", None)
    if adn is None:
        return None, None
    names = [n for n, _ in adn.named_children()]
    norm, drop, act = getattr(adn, "N", None), getattr(adn, "D", None), getattr(adn, "A", None)
    if drop is not None and getattr(drop, "p", 0) > 0 and not ignore_dropout:
        raise UnsupportedModelError(
            f"{where}: {type(drop).__name__}(p={drop.p}) after each conv; unetgen drops out after blocks "
            "(convert(..., ignore_dropout=True) drops it: eval outputs stay exact)"
        )
    if norm is not None and act is not None and names.index("N") > names.index("A"):
        raise UnsupportedModelError(f"{where}: ADN ordering {''.join(names)}: the norm after the activation")
    return norm, act


def _from_basic_unet(net: nn.Module, ignore_dropout: bool) -> tuple[dict[str, Any], list[nn.Module]]:
    levels = [net.conv_0, net.down_1.convs, net.down_2.convs, net.down_3.convs, net.down_4.convs]
    ups = [net.upcat_1, net.upcat_2, net.upcat_3, net.upcat_4]  # decoder level 0 first
    first = net.conv_0.conv_0
    dims = first.conv.weight.dim() - 2
    norm_mod, act_mod = _adn(first, "BasicUNet.conv_0.conv_0", ignore_dropout)
    layers: list[nn.Module] = []
    for i, two in enumerate(levels):
        for j, conv in enumerate((two.conv_0, two.conv_1)):
            layers += _monai_conv_layers(conv, f"BasicUNet level {i} conv {j}", ignore_dropout, act_mod)
    for mp in (net.down_1.max_pooling, net.down_2.max_pooling, net.down_3.max_pooling, net.down_4.max_pooling):
        if tuple(_axes(mp.kernel_size, dims)) != (2,) * dims or tuple(_axes(mp.stride, dims)) != (2,) * dims:
            raise UnsupportedModelError(f"BasicUNet max pooling {mp}: only 2x2 pooling")
    features = [two.conv_1.conv.out_channels for two in levels]
    decoder = [up.convs.conv_1.conv.out_channels for up in ups]
    coarse = [*decoder[1:], features[4]]  # the map each decoder level up-samples
    up_channels: list[int] = []
    mode: str | None = None
    align: bool | None = None
    interp: str | None = None
    shuffle: dict[str, Any] = {}
    for i, up in enumerate(ups):
        where = f"BasicUNet.upcat_{i + 1}"
        children = dict(up.upsample.named_children())
        if "deconv" in children:
            t = children["deconv"]
            if t.kernel_size != (2,) * dims or t.stride != (2,) * dims or any(t.padding) or any(t.output_padding):
                raise UnsupportedModelError(f"{where}.upsample: transposed conv other than kernel = stride = 2")
            layers.append(t)
            up_channels.append(t.out_channels)
            this = "deconv"
        elif "upsample_non_trainable" in children:
            u = children["upsample_non_trainable"]
            pre = children.get("preconv")
            if "postconv" in children or (pre is not None and not isinstance(pre, _ConvNd)):
                raise UnsupportedModelError(f"{where}.upsample: custom pre/post conv is not supported")
            if pre is not None:
                if pre.kernel_size != (1,) * dims or pre.bias is None:
                    raise UnsupportedModelError(f"{where}.upsample.preconv: only a 1x1 conv with bias")
                layers.append(pre)
                up_channels.append(pre.out_channels)
            else:
                up_channels.append(coarse[i])
            interp, align = u.mode, u.align_corners
            this = "nontrainable"
        elif "pixelshuffle" in children:
            sub = children["pixelshuffle"]
            conv, scale = sub.conv_block, sub.scale_factor
            if not isinstance(conv, _ConvNd) or conv.stride != (1,) * dims or conv.bias is None:
                raise UnsupportedModelError(f"{where}.upsample.pixelshuffle: only the default conv block (with bias)")
            k = conv.kernel_size[0]
            if conv.kernel_size != (k,) * dims or k % 2 == 0 or conv.padding != (k // 2,) * dims:
                raise UnsupportedModelError(f"{where}.upsample.pixelshuffle: conv {conv} is not an odd 'same' conv")
            if scale != 2 or conv.out_channels % scale**dims:
                raise UnsupportedModelError(f"{where}.upsample.pixelshuffle: scale_factor={scale}; only 2")
            pad_pool = not isinstance(sub.pad_pool, nn.Identity)
            layers.append(conv)  # output channels c * 2**dims + j: unetgen's shuffle reads them the same way
            up_channels.append(conv.out_channels // scale**dims)
            shuffle = {"type": "pixelshuffle", "kernel_size": k, "pad_pool": pad_pool}
            this = f"pixelshuffle {k} {pad_pool}"
        else:
            raise UnsupportedModelError(f"{where}.upsample: {sorted(children)} is not a unetgen up-sampling")
        if mode not in (None, this):
            raise UnsupportedModelError(f"{where}: mixed up-sampling modes")
        mode = this
        for j, conv in enumerate((up.convs.conv_0, up.convs.conv_1)):
            layers += _monai_conv_layers(conv, f"{where}.convs conv {j}", ignore_dropout, act_mod)
    layers.append(net.final_conv)
    data: dict[str, Any] = {
        "spatial_dims": dims,
        "in_channels": first.conv.in_channels,
        "out_channels": net.final_conv.out_channels,
        "depth": 4,
        "channels": features,
        "decoder_channels": decoder,
        "padding": "same",
        "norm": _norm_from_module(norm_mod, "BasicUNet"),
        "bias": first.conv.bias is not None,
        "activation": _activation_from_module(act_mod, "BasicUNet"),
        "dropout": {"rate": 0.0},
        "up_channels": up_channels,
        "init": "torch",
    }
    if mode == "deconv":
        data["up"] = {"type": "transpose", "bias": True}
    elif mode is not None and mode.startswith("pixelshuffle"):
        data["up"] = shuffle
    else:
        kind = "nearest" if interp == "nearest" else "linear"
        up: dict[str, Any] = {"type": kind, "conv": "when_channels_change"}
        if kind == "linear":
            up["align_corners"] = bool(align)
        elif interp != "nearest":
            raise UnsupportedModelError(f"BasicUNet: interpolation mode {interp!r}")
        data["up"] = up
    return data, layers


def _monai_conv_layers(conv: nn.Module, where: str, ignore_dropout: bool, act_ref: nn.Module | None) -> list[nn.Module]:
    norm, act = _adn(conv, where, ignore_dropout)
    if (act is None) != (act_ref is None) or (
        act is not None and _activation_from_module(act, where) != _activation_from_module(act_ref, where)
    ):
        raise UnsupportedModelError(f"{where}: activations differ between convs")
    out = [conv.conv] + ([norm] if norm is not None else [])
    if isinstance(act, nn.PReLU):
        out.append(act)
    return out


def _from_dynunet(net: nn.Module, ignore_dropout: bool) -> tuple[dict[str, Any], list[nn.Module]]:
    dims = net.spatial_dims
    strides = [_axes(s, dims) for s in net.strides]
    kernels = [_axes(k, dims) for k in net.kernel_size]
    up_kernels = [_axes(k, dims) for k in net.upsample_kernel_size]
    if up_kernels != strides[1:]:
        raise UnsupportedModelError(
            f"DynUNet upsample_kernel_size={net.upsample_kernel_size} differs from strides[1:]={net.strides[1:]}: "
            "unetgen's transposed conv has kernel = stride"
        )
    d = len(strides) - 1
    residual = type(net.input_block).__name__ == "UnetResBlock"
    encoder = [net.input_block, *net.downsamples, net.bottleneck]
    act_mod = net.input_block.lrelu
    if isinstance(act_mod, nn.PReLU):
        raise UnsupportedModelError(
            "DynUNet: its PReLU is one module shared by both convs of a block (and the residual sum); "
            "unetgen gives every activation its own parameters"
        )
    active = [m for m in net.modules() if isinstance(m, (nn.modules.dropout._DropoutNd, nn.AlphaDropout)) and m.p > 0]
    if active and not ignore_dropout:
        raise UnsupportedModelError(
            f"DynUNet dropout={short_repr(net.dropout)}: dropout after every conv; unetgen drops out after "
            "blocks (convert(..., ignore_dropout=True) drops it: eval outputs stay exact)"
        )
    layers: list[nn.Module] = []
    for i, blk in enumerate(encoder):
        layers += _dyn_block_layers(blk, f"DynUNet level {i}")
    for i in range(d):
        up = net.upsamples[d - 1 - i]
        layers.append(up.transp_conv.conv)
        layers += _dyn_block_layers(up.conv_block, f"DynUNet decoder level {i}")
        if net.deep_supervision and 1 <= i <= net.deep_supr_num:
            layers.append(net.deep_supervision_heads[i - 1].conv.conv)
    layers.append(net.output_block.conv.conv)
    norm_layer = net.input_block.norm1
    data: dict[str, Any] = {
        "spatial_dims": dims,
        "in_channels": net.in_channels,
        "out_channels": net.out_channels,
        "depth": d,
        "channels": [int(f) for f in net.filters],
        "kernel_size": kernels,
        "strides": strides[1:],
        "padding": "same",
        "norm": _norm_from_module(norm_layer, "DynUNet"),
        "bias": False,
        "activation": _activation_from_module(act_mod, "DynUNet"),
        "down": {"type": "first_conv"},
        "up": _transpose_up(bool(net.trans_bias)),
        "decoder_kernel": "level_below",
        "dropout": {"rate": 0.0},
        "deep_supervision": list(range(1, net.deep_supr_num + 1)) if net.deep_supervision else [],
        "init": "torch",
    }
    if any(s != 1 for s in strides[0]):
        data["stem_stride"] = strides[0]
    if residual:
        data["block"] = {"type": "residual", "shortcut": "projection"}
        data["decoder_block"] = "plain"
    data["merge"] = UP_FIRST
    return data, layers


def _dyn_block_layers(blk: nn.Module, where: str) -> list[nn.Module]:
    kind = type(blk).__name__
    if kind not in ("UnetBasicBlock", "UnetResBlock"):
        raise UnsupportedModelError(f"{where}: block {kind} is not supported")
    out = [blk.conv1.conv, blk.norm1, blk.conv2.conv, blk.norm2]
    if hasattr(blk, "conv3"):
        out += [blk.conv3.conv, blk.norm3]
    return [m for m in out if isinstance(m, _PAIRED)]


# =============================================================================================
# copy_weights: the generic fallback


def copy_weights(source: nn.Module, target: nn.Module, example_input: torch.Tensor) -> None:
    """Copy the weights and buffers of `source` (any U-Net) into `target` (usually a unetgen
    `UNet` built to match) by pairing their parametric layers (convs, transposed convs, norms,
    PReLUs) in forward-execution order on `example_input`, checking kinds and shapes, then
    checking each pair numerically in eval mode: where a layer's input in `target` is the
    source's with its channel groups rotated (a concatenation in the other order), the input
    channels of the target's weight are permuted to match. Raises `UnsupportedModelError` naming
    the first layer that cannot be paired or whose input differs."""
    src_layers = _execution_order(source, example_input)
    tgt_layers = _execution_order(target, example_input)
    if len(src_layers) != len(tgt_layers):
        raise UnsupportedModelError(
            f"source runs {len(src_layers)} parametric layers, target {len(tgt_layers)}: "
            f"{_kinds(src_layers)} vs {_kinds(tgt_layers)}"
        )
    names_s = {m: n for n, m in source.named_modules()}
    names_t = {m: n for n, m in target.named_modules()}
    for s, t in zip(src_layers, tgt_layers, strict=True):
        ss, st_ = _shape_signature(s), _shape_signature(t)
        if ss != st_:
            raise UnsupportedModelError(
                f"cannot pair source layer {names_s[s]!r} {ss} with target layer {names_t[t]!r} {st_}"
            )
    with torch.no_grad():
        for s, t in zip(src_layers, tgt_layers, strict=True):
            tgt_state = t.state_dict()
            for key, value in s.state_dict().items():
                if key not in tgt_state:
                    raise UnsupportedModelError(f"target layer {names_t[t]!r} has no {key!r} (source {names_s[s]!r})")
                tgt_state[key].copy_(value)
    _check_inputs(source, target, src_layers, tgt_layers, example_input, names_s, names_t)


def _kinds(layers: Iterable[nn.Module]) -> str:
    return short_repr([type(m).__name__ for m in layers])


def _shape_signature(m: nn.Module) -> tuple[Any, ...]:
    return (_signature(m)[0], *(tuple(p.shape) for p in m.state_dict().values()))


def _run_hooked(model: nn.Module, layers: Iterable[nn.Module], hook: Callable[..., None], x: torch.Tensor) -> None:
    """One eval-mode forward of `x` with `hook` as a forward pre-hook on `layers`; the model's
    mode is restored and the hooks removed afterwards."""
    handles = [m.register_forward_pre_hook(hook) for m in layers]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def _execution_order(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    order: list[nn.Module] = []
    seen: set[int] = set()

    def hook(m: nn.Module, *_: Any) -> None:
        if id(m) not in seen:
            seen.add(id(m))
            order.append(m)

    _run_hooked(model, (m for m in model.modules() if isinstance(m, _PAIRED)), hook, x)
    return order


def _record_inputs(model: nn.Module, layers: list[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    inputs: dict[int, torch.Tensor] = {}

    def hook(m: nn.Module, args: tuple[Any, ...]) -> None:
        inputs.setdefault(id(m), args[0].detach().clone())

    _run_hooked(model, layers, hook, x)
    return [inputs[id(m)] for m in layers]


def _check_inputs(
    source: nn.Module,
    target: nn.Module,
    src_layers: list[nn.Module],
    tgt_layers: list[nn.Module],
    x: torch.Tensor,
    names_s: dict[nn.Module, str],
    names_t: dict[nn.Module, str],
) -> None:
    src_in = _record_inputs(source, src_layers, x)
    rotated: dict[int, int] = {}  # layer index -> channel rotation of its input, weight permuted
    start = 0
    for _ in range(len(tgt_layers) + 1):  # each pass permutes one more layer, or ends
        tgt_in = _record_inputs(target, tgt_layers, x)
        for k in range(start, len(tgt_layers)):
            a, b = src_in[k], tgt_in[k]
            if k in rotated:
                a = torch.roll(a, -rotated[k], dims=1)
            if a.shape == b.shape and _close(a, b):
                continue
            shift = None if k in rotated else _rotation(a, b)
            t = tgt_layers[k]
            if shift is None or not isinstance(t, _ConvNd) or t.transposed:
                raise UnsupportedModelError(
                    f"after copying every earlier layer, the input of target layer {names_t[t]!r} "
                    f"{tuple(b.shape)} differs from that of source layer {names_s[src_layers[k]]!r} "
                    f"{tuple(a.shape)}: the two models are not the same function up to there"
                )
            with torch.no_grad():
                t.weight.copy_(torch.roll(src_layers[k].weight, -shift, dims=1))
            rotated[k], start = shift, k
            break
        else:
            return
    raise AssertionError("copy_weights did not converge")


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    scale = max(1.0, float(a.abs().max())) if a.numel() else 1.0
    tol = (1e-9 if a.dtype == torch.float64 else 1e-4) * scale
    return bool((a - b).abs().max() <= tol) if a.numel() else True


def _rotation(a: torch.Tensor, b: torch.Tensor) -> int | None:
    """k such that b == roll(a, -k) along channels (b = cat(a[:, k:], a[:, :k])), if any."""
    if a.shape != b.shape or a.dim() < 2:
        return None
    for k in range(1, a.shape[1]):
        if _close(torch.roll(a, -k, dims=1), b):
            return k
    return None


# =============================================================================================
# the `unetgen import nnunet` command's YAML


def nnunet_yaml(
    plans_path: str | Path,
    configuration: str,
    *,
    in_channels: int,
    out_channels: int,
    deep_supervision: bool = True,
    schema: str | None = None,
) -> str:
    """A commented YAML config for `configuration` of the plans file at `plans_path` (see
    `from_nnunet_plans`), starting with the ``yaml-language-server`` schema marker pointing at
    `schema` (a path relative to where the YAML will be written, or a URL) when given."""
    import yaml

    from ..analysis import shapes

    plans = _read_plans(plans_path)
    config = from_nnunet_plans(
        plans, configuration, in_channels=in_channels, out_channels=out_channels, deep_supervision=deep_supervision
    )
    conf = _resolve_configuration(plans["configurations"], configuration)
    cls = _architecture(conf, configuration)[0]
    lines = [f"# yaml-language-server: $schema={schema}"] if schema else []
    lines += [
        f"# nnU-Net {cls}, configuration {configuration!r} of {Path(plans_path).name}"
        + (f" (dataset {name})" if isinstance(name := plans.get("dataset_name"), str) else ""),
        "# imported by `unetgen import nnunet`: the same network as nnU-Net builds (unetgen.interop).",
    ]
    patch = conf.get("patch_size")
    if isinstance(patch, list) and len(patch) == config.spatial_dims and all(isinstance(p, int) for p in patch):
        size = tuple(patch)
        if shapes.is_valid_input_shape(config, size):
            lines.append(
                f"# nnU-Net's patch size {list(size)} is valid: output {list(shapes.output_shape(config, size))}."
            )
        else:
            near = [shapes.nearest_valid_input_size(config, s, axis=a) for a, s in enumerate(size)]
            lines.append(f"# nnU-Net's patch size {list(size)} is not a valid input; nearest valid: {near}.")
    if config.deep_supervision:
        lines.append("# deep_supervision: heads on every decoder level but the deepest, as nnU-Net trains.")
    body = yaml.safe_dump(config.model_dump(mode="json", exclude_unset=True), sort_keys=False, default_flow_style=None)
    return "\n".join(lines) + "\n" + body
