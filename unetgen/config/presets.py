"""Named configs, as data. Each preset has a one-line source; registering a name twice raises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .unet_config import UNetConfig

__all__ = ["PRESETS", "Preset", "get_preset", "register"]


@dataclass(frozen=True)
class Preset:
    """A named config and where it comes from."""

    name: str
    source: str
    config: dict[str, Any]

    def build_config(self) -> UNetConfig:
        return UNetConfig.model_validate(self.config)


PRESETS: dict[str, Preset] = {}


def register(name: str, source: str, config: dict[str, Any]) -> Preset:
    """Add a preset; the config is validated now, and a name already taken raises `ValueError`."""
    if name in PRESETS:
        raise ValueError(f"preset {name!r} is already registered ({PRESETS[name].source})")
    preset = Preset(name, source, config)
    preset.build_config()
    PRESETS[name] = preset
    return preset


def get_preset(name: str) -> UNetConfig:
    """The config of a registered preset."""
    try:
        return PRESETS[name].build_config()
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None


register(
    "ronneberger2015",
    "Ronneberger, Fischer, Brox 2015, U-Net (MICCAI), Figure 1: 1x572x572 -> 2x388x388, no batch norm",
    {},
)
register(
    "ronneberger2015-batchnorm",
    "Ronneberger et al. 2015 as widely reimplemented: BatchNorm after every 3x3 conv, conv bias off",
    {"norm": "batch"},
)
register(
    "cicek2016",
    "Cicek et al. 2016, 3D U-Net (MICCAI), Figure 1: 3x132x132x116 -> 3x44x44x28, channels doubled "
    "inside each block, batch norm, up-convolutions keep the channels",
    {
        "spatial_dims": 3,
        "in_channels": 3,
        "out_channels": 3,
        "depth": 3,
        "channels": [[32, 64], [64, 128], [128, 256], [256, 512]],
        "norm": "batch",
        "up_channels": "keep",
        "dropout": {"rate": 0.0},
    },
)
register(
    "oktay2018",
    "Oktay et al. 2018, Attention U-Net (MIDL): 3D, additive attention gates on every skip, deep "
    "supervision, batch norm, same padding, trilinear up-sampling; filters 16-256 (feature_scale 4)",
    {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "depth": 4,
        "base_channels": 16,
        "padding": "same",
        "norm": "batch",
        "merge": "attention",
        "up": "linear",
        "deep_supervision": [1, 2, 3],
        "dropout": {"rate": 0.0},
        "init": "torch",
    },
)
register(
    "zhang2018-resunet",
    "Zhang, Liu, Wang 2018, Road Extraction by Deep Residual U-Net: pre-activation residual units, "
    "3 down-sampling steps by strided conv, channels 64-512, batch norm, same padding",
    {
        "in_channels": 3,
        "out_channels": 1,
        "depth": 3,
        "base_channels": 64,
        "padding": "same",
        "norm": "batch",
        "block": {"type": "residual", "preactivation": True},
        "down": "conv",
        "up": "nearest",
        "dropout": {"rate": 0.0},
        "init": "torch",
    },
)
register(
    "nnunet-3d-anisotropic",
    "An nnU-Net-style 3D plan (Isensee et al. 2021) for anisotropic volumes, patch 40x224x192: "
    "in-plane-only first stages, channels capped at 320, instance norm, leaky ReLU, deep supervision",
    {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 3,
        "depth": 5,
        "channels": [32, 64, 128, 256, 320, 320],
        "kernel_size": [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
        "strides": [[1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
        "padding": "same",
        "norm": {"type": "instance", "eps": 1e-5},
        "activation": {"type": "leaky_relu", "negative_slope": 0.01},
        "down": "conv",
        "deep_supervision": [1, 2, 3, 4],
        "dropout": {"rate": 0.0},
        "init": "torch",
    },
)
