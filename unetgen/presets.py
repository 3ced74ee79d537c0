"""Named configs, as data. Each preset has a one-line source; registering a name twice raises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import UNetConfig


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
    "Ronneberger, Fischer, Brox 2015, U-Net (MICCAI), Figure 1: 572x572 -> 388x388, no batch norm",
    {},
)
register(
    "ronneberger2015-batchnorm",
    "The widely copied variant of Ronneberger et al. 2015 with BatchNorm after every 3x3 conv, conv bias off",
    {"norm": "batch"},
)
