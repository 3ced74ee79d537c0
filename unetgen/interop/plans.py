"""nnU-Net plans files -> `UNetConfig`, and back.

- `from_nnunet_plans(plans, configuration, in_channels=..., out_channels=...)`: the `UNetConfig`
  of the network nnU-Net builds from a plans file (both plans formats, `inherits_from`, deep
  supervision as nnU-Net trains it).
- `to_nnunet_architecture(config)`: the way back, the plans ``architecture`` block.
- `nnunet_yaml(plans_path, configuration, ...)`: the commented YAML of `unetgen import nnunet`.
- `NNUNetSpec`: an nnU-Net network normalised, as read from a plans file here or from a built
  network by `unetgen.interop.nnunet`, and its unetgen config.

Plans are plain data: nnU-Net is never imported.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import documents
from ..config import options as cfgmod
from ..config.diagnostics import short_repr
from ..config.io import load_config
from ..config.unet_config import UNetConfig
from ..outputs import IMPORT_MARKER  # the mark unetgen.outputs reads back
from ..reprs import short_path, short_text
from .options import (
    UP_FIRST,
    UnsupportedModelError,
    activation_option,
    flag,
    integer,
    norm_option,
    number,
    per_axis,
    transpose_up,
    validated,
)

__all__ = [
    "IMPORT_MARKER",
    "MAX_INHERITANCE",
    "MAX_PLANS_BYTES",
    "MAX_SCHEMA",
    "NNUNET_CLASSES",
    "NNUNetSpec",
    "check_schema_marker",
    "commented_yaml",
    "from_nnunet_plans",
    "nnunet_yaml",
    "to_nnunet_architecture",
]

MAX_PLANS_BYTES = 4 * 1024 * 1024
"""Largest plans file read (real nnUNetPlans.json files are a few to a few hundred kilobytes)."""
MAX_INHERITANCE = 32
"""Longest ``inherits_from`` chain followed (nnU-Net's own plans inherit once or twice)."""
MAX_SCHEMA = 4096
"""Longest ``$schema`` path or URL written into the YAML's marker comment."""

NNUNET_CLASSES = {
    "PlainConvUNet": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "ResidualEncoderUNet": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
}
_PLAIN_NAME = re.compile(r"[\w.+-]{1,60}", re.ASCII)
_NNUNET_MODULES = (  # where plans files name the classes (residual_unet: plans converted from v2.0-2.2)
    "dynamic_network_architectures.architectures.unet",
    "dynamic_network_architectures.architectures.residual_unet",
)


# =============================================================================================
# the normalised network


@dataclass(frozen=True)
class NNUNetSpec:
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
        """The unetgen config, as plain data."""
        depth = len(self.features) - 1
        if depth < 1:
            raise UnsupportedModelError(f"n_stages={depth + 1}: a U-Net needs at least 2 stages")
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
            "up": transpose_up(self.bias),
            "decoder_convs_per_block": self.decoder_convs,
            "dropout": {"rate": 0.0},
            "deep_supervision": list(range(1, depth)) if self.deep_supervision else [],
            "init": "torch",
        }
        if any(s != 1 for s in self.strides[0]):
            out["stem_stride"] = self.strides[0]
        out |= self._units()
        if self.nonlin_first:
            out["norm_position"] = "after_activation"
        out["merge"] = UP_FIRST
        return out

    def _units(self) -> dict[str, Any]:
        if not self.residual:
            return {"convs_per_block": self.units}
        return {
            "stem": True,
            "convs_per_block": 2,
            "blocks_per_level": self.units,
            "block": {"type": "residual", "shortcut": "resnet_d"},
            "decoder_block": {"type": "residual", "shortcut": "resnet_d"} if self.residual_decoder else "plain",
        }


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
    flag(deep_supervision, "deep_supervision")
    data = _read_plans(plans) if isinstance(plans, (str, os.PathLike)) else plans
    if not isinstance(data, Mapping) or not isinstance(data.get("configurations"), Mapping):
        raise ValueError("not an nnU-Net plans file: no 'configurations' mapping at the top level")
    cls, arch = _network(data["configurations"], configuration)
    try:
        return _nnunet_config(cls, arch, in_channels, out_channels, deep_supervision)
    except (TypeError, AttributeError, OverflowError, IndexError, KeyError) as err:  # a safety net: never a raw error
        raise ValueError(f"{arch.where}: malformed ({short_text(str(err))})") from None


def _read_plans(path: str | os.PathLike[str]) -> Any:
    """The JSON of the plans file at `path`: a regular file (`documents.open_regular`: a FIFO or
    device is refused before it is opened, so nothing blocks) of at most `MAX_PLANS_BYTES`."""
    where = short_path(path)
    try:
        fd = documents.open_regular(path)
    except documents.ParseError as err:
        raise ValueError(f"plans file {where}: {err.message}; give an nnUNetPlans.json file") from None
    try:
        with os.fdopen(fd, "rb") as f:
            raw = f.read(MAX_PLANS_BYTES + 1)
    except OSError as err:
        raise ValueError(f"plans file {where}: cannot read it: {err.strerror or err}") from None
    if len(raw) > MAX_PLANS_BYTES:
        raise ValueError(
            f"plans file {where}: larger than {MAX_PLANS_BYTES} bytes; an nnU-Net plans file is far smaller"
        )

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(raw.decode("utf-8-sig"), parse_constant=refuse)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ValueError(f"plans file {where}: not a JSON plans file ({short_text(str(err))})") from None


def _resolve_configuration(configurations: Mapping[str, Any], name: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The configuration `name` with what it inherits (``inherits_from``, followed for at most
    `MAX_INHERITANCE` steps) merged in, the child's keys winning as in nnU-Net; and for each key,
    the configuration it was read from (for messages that name the key's path)."""
    if not isinstance(name, str):
        raise ValueError(
            f"configuration={short_repr(name)} must be a str: the name of one of the plans' configurations "
            f"({_names(configurations)})"
        )
    chain: list[str] = []  # in order, for messages; `seen` answers "been here?" in O(1)
    seen: set[str] = set()
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    while True:
        if name not in configurations:
            where = f" (inherited by {short_repr(chain[-1])})" if chain else ""
            raise ValueError(
                f"the plans have no configuration {short_repr(name)}{where}; available: {_names(configurations)}"
            )
        if name in seen:
            raise ValueError(f"configurations inherit in a circle: {_chain_text([*chain, name])}")
        if len(chain) == MAX_INHERITANCE:
            raise ValueError(
                f"configuration {short_repr(chain[0])}: its inherits_from chain is longer than {MAX_INHERITANCE} "
                f"({_chain_text(chain)} -> ...); nnU-Net's plans inherit once or twice: shorten the chain"
            )
        seen.add(name)
        chain.append(name)
        conf = configurations[name]
        if not isinstance(conf, Mapping):
            raise ValueError(f"{key_path('configurations', name)} is a {type(conf).__name__}, not a mapping")
        origin |= {key: name for key in conf if key not in merged}
        merged = {**conf, **merged}  # the child's keys win
        parent = conf.get("inherits_from")
        if parent is None:
            merged.pop("inherits_from", None)
            return merged, origin
        if not isinstance(parent, str):
            raise ValueError(
                f"{key_path('configurations', name, 'inherits_from')}={short_repr(parent)} must be a str: the name of "
                f"another configuration ({_names(configurations)}), or absent"
            )
        name = parent


def _name(name: Any) -> str:
    """A configuration name as messages show it: bare when it is a plain word (3d_fullres), else a
    bounded repr."""
    return name if isinstance(name, str) and _PLAIN_NAME.fullmatch(name) else short_repr(name)


def key_path(*parts: Any) -> str:
    """A key path as messages name it: ``configurations.3d_fullres.architecture.arch_kwargs.kernel_sizes[2][0]``
    (a key that is not a plain word in brackets, as a bounded repr)."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and _PLAIN_NAME.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{short_repr(part)}]"
    return out


def _names(configurations: Mapping[str, Any], shown: int = 8) -> str:
    """The first `shown` configuration names, bounded, and how many more there are."""
    names = [_name(k) for _, k in zip(range(shown), configurations, strict=False)]
    more = len(configurations) - len(names)
    return (", ".join(names) or "none") + (f" and {more:,} more" if more > 0 else "")


def _chain_text(chain: list[str]) -> str:
    """'a' -> 'b' -> ... -> 'z', each name bounded and at most six shown."""
    names = [_name(n) for n in chain]
    if len(names) > 6:
        names = [*names[:3], f"... ({len(chain) - 5} more)", *names[-2:]]
    return " -> ".join(names)


def _network(configurations: Mapping[str, Any], configuration: Any) -> tuple[str, _ArchKwargs]:
    """(class name, arch_kwargs) of a configuration, inheritance resolved and the v2.0-2.2
    format translated; each arch_kwargs key knows the plans key it was read from."""
    conf, origin = _resolve_configuration(configurations, configuration)
    if "architecture" in conf:
        return _architecture_block(
            conf["architecture"], key_path("configurations", origin["architecture"], "architecture")
        )
    return _old_format(conf, origin, configuration)


def _architecture_block(arch: Any, where: str) -> tuple[str, _ArchKwargs]:
    """(class name, arch_kwargs) of a v2.3+ ``architecture`` block at key path `where`."""
    if not isinstance(arch, Mapping) or not isinstance(arch.get("arch_kwargs"), Mapping):
        raise ValueError(f"{where} needs 'network_class_name' and 'arch_kwargs' (a mapping)")
    full = arch.get("network_class_name", "")
    if not isinstance(full, str):
        raise ValueError(f"{where}.network_class_name={short_repr(full)} must be a class name (a string)")
    module, _, cls = full.rpartition(".")
    if cls not in NNUNET_CLASSES or (module and module not in _NNUNET_MODULES):
        raise UnsupportedModelError(
            f"{where}: network class {short_repr(full)} is not supported; unetgen reads "
            f"{', '.join(NNUNET_CLASSES.values())}"
        )
    return cls, _ArchKwargs(dict(arch["arch_kwargs"]), f"{where}.arch_kwargs")


_OLD_KEYS = (
    "UNet_class_name", "conv_kernel_sizes", "pool_op_kernel_sizes", "UNet_base_num_features", "unet_max_num_features",
    "n_conv_per_stage_encoder", "n_conv_per_stage_decoder",
)  # fmt: skip


def _old_format(conf: Mapping[str, Any], origin: Mapping[str, str], name: str) -> tuple[str, _ArchKwargs]:
    """(class name, arch_kwargs) of a v2.0-2.2 configuration: the keys nnU-Net derived them from.
    The stage count (the length of ``conv_kernel_sizes``) is checked before any per-stage work."""

    def path(key: str) -> str:
        return key_path("configurations", origin.get(key, name), key)

    if missing := [key for key in _OLD_KEYS if key not in conf]:
        raise ValueError(
            f"configuration {_name(name)} has neither an 'architecture' block (nnU-Net v2.3+) nor the key "
            f"{missing[0]!r} of the v2.0-2.2 format"
        )
    cls = conf["UNet_class_name"]
    if not isinstance(cls, str) or cls not in NNUNET_CLASSES:
        raise UnsupportedModelError(
            f"{path('UNet_class_name')}={short_repr(cls)} is not supported; unetgen reads {', '.join(NNUNET_CLASSES)}"
        )
    kernels = conf["conv_kernel_sizes"]
    if not isinstance(kernels, list):
        raise ValueError(f"{path('conv_kernel_sizes')}={short_repr(kernels)} must be a list: one kernel per stage")
    n = _stage_count(len(kernels), f"{path('conv_kernel_sizes')} (one kernel per stage)")
    dims = len(kernels[0]) if isinstance(kernels[0], list) else 0
    if dims not in (1, 2, 3):
        raise ValueError(
            f"{path('conv_kernel_sizes')}[0]={short_repr(kernels[0])} must list one kernel size per spatial axis "
            "(1 to 3 axes)"
        )
    base = integer(conf["UNet_base_num_features"], path("UNet_base_num_features"), 1, cfgmod.MAX_CHANNELS)
    top = integer(conf["unet_max_num_features"], path("unet_max_num_features"), 1, cfgmod.MAX_CHANNELS)
    units = "n_conv_per_stage" if cls == "PlainConvUNet" else "n_blocks_per_stage"
    kwargs = {
        "n_stages": n,
        "features_per_stage": [min(base * 2**i, top) for i in range(n)],
        "conv_op": f"torch.nn.Conv{dims}d",
        "kernel_sizes": kernels,
        "strides": conf["pool_op_kernel_sizes"],
        units: conf["n_conv_per_stage_encoder"],
        "n_conv_per_stage_decoder": conf["n_conv_per_stage_decoder"],
        "conv_bias": True,
        "norm_op": f"torch.nn.InstanceNorm{dims}d",
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    keys = {
        "kernel_sizes": path("conv_kernel_sizes"),
        "strides": path("pool_op_kernel_sizes"),
        units: path("n_conv_per_stage_encoder"),
        "n_conv_per_stage_decoder": path("n_conv_per_stage_decoder"),
    }
    return cls, _ArchKwargs(kwargs, key_path("configurations", name), keys)


def _stage_count(n: Any, where: str) -> int:
    """The number of stages, from 2 to MAX_DEPTH + 1 (checked before anything is read per stage)."""
    if isinstance(n, int) and not isinstance(n, bool) and not 2 <= n <= cfgmod.MAX_DEPTH + 1:
        raise UnsupportedModelError(
            f"{where}: {short_repr(n)} stages; unetgen builds 2 to {cfgmod.MAX_DEPTH + 1} "
            f"(depth 1 to {cfgmod.MAX_DEPTH})"
        )
    return integer(n, where, 2, cfgmod.MAX_DEPTH + 1)


_ARCH_KWARGS = {
    "n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "n_conv_per_stage_decoder", "conv_bias",
    "norm_op", "norm_op_kwargs", "dropout_op", "dropout_op_kwargs", "nonlin", "nonlin_kwargs",
}  # fmt: skip
_RESENC_KWARGS = {"n_blocks_per_stage", "block", "bottleneck_channels", "stem_channels"}
_PLAIN_KWARGS = {"n_conv_per_stage", "nonlin_first"}
_CLASS_EXAMPLES = {
    "norm_op": "torch.nn.InstanceNorm3d", "nonlin": "torch.nn.LeakyReLU", "dropout_op": "torch.nn.Dropout3d",
    "block": "BasicBlockD",
}  # fmt: skip


@dataclass(frozen=True)
class _ArchKwargs:
    """A configuration's arch_kwargs, read with the type each key must have and errors that name
    the key's path in the plans file (`keys`: where a translated v2.0-2.2 key came from)."""

    kw: Mapping[str, Any]
    where: str
    keys: Mapping[str, str] = field(default_factory=dict)

    def path(self, key: str) -> str:
        return self.keys.get(key) or f"{self.where}.{key}"

    def get(self, key: str, default: Any = KeyError) -> Any:
        if key in self.kw:
            return self.kw[key]
        if default is KeyError:
            raise ValueError(f"{self.where} has no {key!r}")
        return default

    def per_stage(self, key: str, n: int) -> list[tuple[Any, str]]:
        """`key`'s value, one (entry, its key path) per stage; a single value counts for every
        stage. The length is checked before any entry is read."""
        value = self.get(key)
        if not isinstance(value, (list, tuple)):
            return [(value, self.path(key))] * n
        if len(value) != n:
            raise ValueError(f"{self.path(key)}={short_repr(value)} needs {n} entries (n_stages)")
        return [(v, f"{self.path(key)}[{i}]") for i, v in enumerate(value)]

    def ints(self, key: str, n: int, high: int) -> list[int]:
        """One int from 1 to `high` per stage."""
        return [integer(v, where, 1, high) for v, where in self.per_stage(key, n)]

    def axes(self, key: str, n: int, dims: int, high: int) -> list[list[int]]:
        """A kernel or stride per stage: each one int (every axis) or `dims` ints from 1 to `high`."""
        return [per_axis(v, dims, where, high) for v, where in self.per_stage(key, n)]

    def flag(self, key: str) -> bool:
        return flag(self.get(key, False), self.path(key))

    def class_name(self, key: str, default: str | None = None) -> str | None:
        """The class named by `key` without its module ('torch.nn.modules.conv.Conv3d' -> 'Conv3d'),
        or None for null."""
        value = self.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str):
            example = _CLASS_EXAMPLES.get(key, "torch.nn.Conv3d")
            raise ValueError(f"{self.path(key)}={short_repr(value)} must be a class name such as {example}")
        return value.rpartition(".")[2]

    def kwargs(self, key: str) -> Mapping[str, Any]:
        """The keyword arguments under `key` ({} for null or absent)."""
        value = self.get(key, None)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ValueError(f"{self.path(key)}={short_repr(value)} must be a mapping of keyword arguments, or null")
        return value


def _nnunet_config(
    cls: str, arch: _ArchKwargs, in_channels: int, out_channels: int, deep_supervision: bool
) -> UNetConfig:
    residual = cls == "ResidualEncoderUNet"
    _refuse_unknown_kwargs(arch, residual)
    dims = _conv_dims(arch)
    n = _stage_count(arch.get("n_stages"), arch.path("n_stages"))  # counts first: every list is checked against it
    units = "n_blocks_per_stage" if residual else "n_conv_per_stage"
    spec = NNUNetSpec(
        dims=dims,
        in_channels=in_channels,
        out_channels=out_channels,
        features=arch.ints("features_per_stage", n, cfgmod.MAX_CHANNELS),
        kernels=arch.axes("kernel_sizes", n, dims, cfgmod.MAX_KERNEL),
        strides=arch.axes("strides", n, dims, cfgmod.MAX_STRIDE),
        units=arch.ints(units, n, cfgmod.MAX_BLOCKS if residual else cfgmod.MAX_CONVS),
        # nnU-Net lists the deepest decoder stage first
        decoder_convs=arch.ints("n_conv_per_stage_decoder", n - 1, cfgmod.MAX_CONVS)[::-1],
        bias=arch.flag("conv_bias"),
        norm=norm_option(arch.class_name("norm_op"), arch.kwargs("norm_op_kwargs"), arch.path("norm_op_kwargs")),
        activation=_nonlin(arch),
        nonlin_first=arch.flag("nonlin_first"),
        residual=residual,
        residual_decoder=False,
        deep_supervision=deep_supervision,
    )
    _refuse_stem_and_block(arch, residual)
    _refuse_dropout(arch)
    return validated(spec.config_dict(), arch.where)


def _refuse_unknown_kwargs(arch: _ArchKwargs, residual: bool) -> None:
    known = _ARCH_KWARGS | (_RESENC_KWARGS if residual else _PLAIN_KWARGS)
    if unknown := [key for key in arch.kw if key not in known]:
        raise UnsupportedModelError(
            f"{arch.where}: {short_repr(sorted(map(str, unknown[:20])))} ({len(unknown)} key(s)) are not supported "
            "by unetgen.interop"
        )


def _conv_dims(arch: _ArchKwargs) -> int:
    dims = {"Conv1d": 1, "Conv2d": 2, "Conv3d": 3}.get(arch.class_name("conv_op", "") or "")
    if dims is None:
        raise UnsupportedModelError(
            f"{arch.path('conv_op')}={short_repr(arch.get('conv_op', None))} is not Conv1d, Conv2d or Conv3d"
        )
    return dims


def _refuse_stem_and_block(arch: _ArchKwargs, residual: bool) -> None:
    for option in ("bottleneck_channels", "stem_channels"):
        if arch.get(option, None) is not None:
            raise UnsupportedModelError(
                f"{arch.path(option)}={short_repr(arch.get(option))} (unetgen's stem has the level-0 channels)"
            )
    if residual and arch.class_name("block", "BasicBlockD") != "BasicBlockD":
        raise UnsupportedModelError(
            f"{arch.path('block')}={short_repr(arch.get('block'))}: only BasicBlockD residual units are supported"
        )


def _nonlin(arch: _ArchKwargs) -> dict[str, Any]:
    act = activation_option(arch.class_name("nonlin"), arch.kwargs("nonlin_kwargs"), arch.path("nonlin_kwargs"))
    if act.get("num_parameters") == "channels":
        raise UnsupportedModelError(f"{arch.where}: PReLU with num_parameters != 1 for every conv, whatever its width")
    return act


def _refuse_dropout(arch: _ArchKwargs) -> None:
    where = f"{arch.path('dropout_op_kwargs')}.p"
    p = number(arch.kwargs("dropout_op_kwargs").get("p", 0.5), where)
    if not 0 <= p <= 1:
        raise ValueError(f"{where}={short_repr(p)} must be a probability from 0 to 1")
    if arch.class_name("dropout_op") is not None and p > 0:
        raise UnsupportedModelError(
            f"{arch.path('dropout_op')}={short_repr(arch.get('dropout_op'))}: nnU-Net drops out after every conv, "
            "unetgen after whole blocks"
        )


# =============================================================================================
# UNetConfig -> nnU-Net plans `architecture`


def to_nnunet_architecture(config: UNetConfig | Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """The nnU-Net plans ``architecture`` block (``network_class_name``, ``arch_kwargs``,
    ``_kw_requires_import``) that builds the same network as `config`, for every config nnU-Net
    can build (`PlainConvUNet` or `ResidualEncoderUNet`). Deep supervision is a trainer setting in
    nnU-Net, not part of the block. Raises `UnsupportedModelError` naming the first option nnU-Net
    lacks."""
    c = load_config(config)  # a UNetConfig, a mapping, a file or a preset name; ConfigError if invalid
    data = c.model_dump()
    _check_sampling(c, data)
    _check_widths(c, data)
    _check_regularisation(c, data)
    residual = _check_blocks(c, data)
    _check_unet_extras(c, data)
    cls = "ResidualEncoderUNet" if residual else "PlainConvUNet"
    return {
        "network_class_name": NNUNET_CLASSES[cls],
        "arch_kwargs": _arch_kwargs(c, data, residual),
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def _refuse(data: Mapping[str, Any], field: str, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{field}={short_repr(data.get(field))}: nnU-Net cannot build it ({why})")


def _check_sampling(c: UNetConfig, data: Mapping[str, Any]) -> None:
    """Padding, down-sampling, up-sampling and merge as nnU-Net builds them."""
    if c.padding != "same":
        raise _refuse(data, "padding", "its convs always pad to keep the size")
    if data["down"]["type"] != "first_conv":
        raise _refuse(data, "down", "it down-samples with the first conv of a stage: use down: first_conv")
    up = data["up"]
    if up["type"] != "transpose" or up.get("bias", True) != c.conv_bias or up.get("kernel_size") is not None:
        raise _refuse(
            data, "up", f"it up-samples with a transposed conv, kernel = stride, bias = conv bias ({c.conv_bias})"
        )
    if up.get("norm_act"):
        raise _refuse(data, "up", "no norm or activation after its transposed conv")
    if data["merge"]["type"] != "concat":
        raise _refuse(data, "merge", "it concatenates")


def _check_widths(c: UNetConfig, data: Mapping[str, Any]) -> None:
    """One width per stage, shared by the up-sampling and the decoder level; nnU-Net's kernels."""
    lay = c.layout
    if any(u != s.out_channels for u, s in zip(lay.up_channels, lay.encoder, strict=False)):
        raise _refuse(data, "up_channels", "its transposed convs output the skip's channels")
    if any(len(set(s.channels)) != 1 for s in lay.encoder) or (
        lay.stem and lay.stem.out_channels != lay.encoder[0].out_channels
    ):
        raise _refuse(data, "channels", "one width per stage")
    if any(
        dec.channels != (enc.out_channels,) * len(dec.channels)
        for dec, enc in zip(lay.decoder, lay.encoder, strict=False)
    ):
        raise _refuse(data, "decoder_channels", "a decoder level has the channels of its skip")
    if data.get("decoder_kernel", "same_level") != "same_level":
        raise _refuse(data, "decoder_kernel", "a decoder level uses the kernel of its skip's level")


def _check_unet_extras(c: UNetConfig, data: Mapping[str, Any]) -> None:
    """Options that none of nnU-Net's networks has (those of MONAI's UNet and AttentionUnet)."""
    if not c.resample_bottleneck:
        raise _refuse(data, "resample_bottleneck", "every stage but the first down-samples")
    if data["head"] != {"type": "conv", "kernel_size": 1}:
        raise _refuse(data, "head", "its output is a 1x1 conv")
    if 0 in c._decoder_convs():
        raise _refuse(data, "decoder_convs_per_block", "every decoder stage has convs")
    for name in ("decoder_norm", "decoder_activation"):
        if data[name] is not None:
            raise _refuse(data, name, "one norm and one activation throughout")
    if data["up"].get("residual_unit"):
        raise _refuse(data, "up", "nothing between its transposed conv and the concatenation")
    if data["block"].get("last_activation", "after_sum") != "after_sum" or data["block"].get("bottleneck"):
        raise _refuse(data, "block", "its residual units are two convs, activated after the sum")
    if data["down"].get("first_step", "conv") != "conv":
        raise _refuse(data, "down", "its first stage down-samples with a strided conv, not a pool")
    if any(s.units == 0 for s in c.layout.encoder):
        raise _refuse(data, "blocks_per_level", "every stage has at least one block")


def _check_regularisation(c: UNetConfig, data: Mapping[str, Any]) -> None:
    if c.dropout.rate > 0:
        raise _refuse(data, "dropout", "unetgen drops out after blocks, nnU-Net after convs")
    if c.deep_supervision and list(c.deep_supervision) != list(range(1, c.depth)):
        raise _refuse(data, "deep_supervision", "nnU-Net supervises every decoder level or none")


def _check_blocks(c: UNetConfig, data: Mapping[str, Any]) -> bool:
    """Whether the blocks are those of ResidualEncoderUNet (else PlainConvUNet's)."""
    if data["block"].get("preactivation"):
        raise _refuse(data, "block", "no pre-activation units")
    residual = data["block"]["type"] == "residual"
    if residual:
        _check_residual(c, data)
    elif data.get("stem"):
        raise _refuse(data, "stem", "only its residual encoder has a stem")
    if data.get("norm_position", "before_activation") != "before_activation" and residual:
        raise _refuse(data, "norm_position", "only PlainConvUNet can normalise after the activation")
    return residual


def _check_residual(c: UNetConfig, data: Mapping[str, Any]) -> None:
    """ResidualEncoderUNet: a stem, ResNet-D units of 2 convs, a plain decoder."""
    if data["block"].get("shortcut") != "resnet_d" or not data.get("stem"):
        raise _refuse(
            data,
            "block",
            "its residual encoder has a stem and ResNet-D shortcuts (block.shortcut: resnet_d, stem: true)",
        )
    if (data.get("decoder_block") or data["block"])["type"] != "plain":
        raise _refuse(data, "decoder_block", "its decoder is plain")
    if any(n != 2 for n in _encoder_convs(c)):
        raise _refuse(data, "convs_per_block", "its residual units have 2 convs")


def _arch_kwargs(c: UNetConfig, data: Mapping[str, Any], residual: bool) -> dict[str, Any]:
    lay, dims = c.layout, c.spatial_dims
    norm_op, norm_kwargs = _nnunet_norm(data["norm"], dims)
    nonlin, nonlin_kwargs = _nnunet_nonlin(data["activation"])
    if residual:
        units: dict[str, Any] = {"n_blocks_per_stage": [s.units for s in lay.encoder]}
    else:
        units = {"n_conv_per_stage": list(_encoder_convs(c))}
    kwargs: dict[str, Any] = {
        "n_stages": c.depth + 1,
        "features_per_stage": [s.out_channels for s in lay.encoder],
        "conv_op": f"torch.nn.modules.conv.Conv{dims}d",
        "kernel_sizes": [list(s.kernel) for s in lay.encoder],
        "strides": [list(lay.stem_stride) or [1] * dims] + [list(s) for s in lay.strides],
        **units,
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
    return kwargs


def _encoder_convs(c: UNetConfig) -> tuple[int, ...]:
    """Convs per unit of each encoder level."""
    return tuple(len(s.channels) // s.units for s in c.layout.encoder)


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
    `schema` (a path relative to where the YAML will be written, or a URL) when given.

    The config is written by ``yaml.safe_dump``; the comments hold values from the plans file
    (the dataset name, the configuration, the file name) only as bounded, escaped reprs, so no
    value can end a comment and add a key: the text is checked to read back as the config."""
    if schema is not None:
        check_schema_marker(schema, "schema")
    plans = _read_plans(plans_path)
    config = from_nnunet_plans(
        plans, configuration, in_channels=in_channels, out_channels=out_channels, deep_supervision=deep_supervision
    )
    conf = _resolve_configuration(plans["configurations"], configuration)[0]
    cls = _network(plans["configurations"], configuration)[0]
    dataset = plans.get("dataset_name")
    notes = [
        f"nnU-Net {cls}, configuration {short_repr(configuration)} of {short_repr(Path(plans_path).name)}"
        + (f" (dataset {short_repr(dataset)})" if isinstance(dataset, str) else ""),
        IMPORT_MARKER.removeprefix("# ") + ": the same network as nnU-Net builds (unetgen.interop).",
        *_patch_size_comment(config, conf.get("patch_size")),
    ]
    if config.deep_supervision:
        notes.append("deep_supervision: heads on every decoder level but the deepest, as nnU-Net trains.")
    return commented_yaml(config.model_dump(mode="json", exclude_unset=True), notes, schema)


def check_schema_marker(schema: Any, option: str) -> None:
    """`schema` can follow ``$schema=`` on one comment line: a non-empty str of printable
    characters (no line break, tab or control character), at most `MAX_SCHEMA` long."""
    if not isinstance(schema, str) or not 0 < len(schema) <= MAX_SCHEMA or not schema.isprintable():
        raise ValueError(
            f"{option}={short_repr(schema)} must be a path or URL of 1 to {MAX_SCHEMA} printable characters on one "
            "line (it is written into a YAML comment); give e.g. schemas/unet-config.schema.json"
        )


def commented_yaml(data: Mapping[str, Any], notes: list[str], schema: str | None = None) -> str:
    """`data` as YAML (``yaml.safe_dump``) after the schema marker and one comment line per note.
    Every note must be one line of printable characters (reprs of outside values are: `short_repr`
    escapes line breaks, including YAML's U+0085, U+2028 and U+2029); the text is read back and
    must equal `data`, so a comment can never have added or changed a key."""
    import yaml

    head = []
    if schema is not None:
        check_schema_marker(schema, "schema")
        head.append(f"# yaml-language-server: $schema={schema}")
    for note in notes:
        if not note.isprintable():
            raise AssertionError(f"a comment line that is not one printable line: {short_repr(note)}")
        head.append(f"# {note}")
    body = yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=None)
    text = "\n".join([*head, body])
    if yaml.safe_load(text) != data:
        raise AssertionError("the comments changed what the YAML says")
    return text


def _patch_size_comment(config: UNetConfig, patch: Any) -> list[str]:
    """Whether nnU-Net's patch size is a valid input of `config` (and the nearest valid if not)."""
    from ..analysis import shapes

    if patch is None:
        return []
    if (
        not isinstance(patch, list)
        or len(patch) != config.spatial_dims
        or not all(isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in patch)
    ):
        return [
            f"nnU-Net's patch_size {short_repr(patch)} is not {config.spatial_dims} positive integers: not checked."
        ]
    size = tuple(patch)
    if shapes.is_valid_input_shape(config, size):
        return [f"nnU-Net's patch size {list(size)} is valid: output {list(shapes.output_shape(config, size))}."]
    near = [shapes.nearest_valid_input_size(config, s, axis=a) for a, s in enumerate(size)]
    return [f"nnU-Net's patch size {list(size)} is not a valid input; nearest valid: {near}."]
