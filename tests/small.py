"""Every registered preset with its channel counts divided down, for fast tests that keep the
architecture (depth, kernels, strides, blocks, norms, merges, up/down-sampling, heads)."""

from __future__ import annotations

import math
from typing import Any

from unetgen import PRESETS, UNetConfig, get_preset
from unetgen.config import AttentionGate, GroupNorm


def shrink(config: UNetConfig, first: int = 2) -> UNetConfig:
    """`config` with every channel count divided by one factor, so the first level has about
    `first` channels; a group norm that no longer divides the channels gets one group."""
    lay = config.layout
    counts = [c for s in lay.encoder + lay.decoder for c in s.channels]
    factor = max(1, min(counts) // first)
    if factor == 1:
        return config

    def div(entry: Any) -> Any:
        return tuple(div(e) for e in entry) if isinstance(entry, tuple) else max(1, entry // factor)

    data = config.model_dump(exclude_unset=True)
    if config.channels is None:
        data["base_channels"] = max(1, config.base_channels // factor)
    else:
        data["channels"] = div(config.channels)
    if config.decoder_channels is not None:
        data["decoder_channels"] = div(config.decoder_channels)
    if isinstance(config.merge, AttentionGate) and config.merge.inter_channels:
        data["merge"] = {"type": "attention", "inter_channels": div(config.merge.inter_channels)}
    small = UNetConfig.model_validate({**data, "norm": config.norm.model_dump()})
    if isinstance(config.norm, GroupNorm):
        new = [c for s in small.layout.encoder + small.layout.decoder for c in s.channels]
        groups = math.gcd(config.norm.num_groups, *new)
        small = UNetConfig.model_validate({**data, "norm": {**config.norm.model_dump(), "num_groups": groups}})
    return small


def small_presets() -> dict[str, UNetConfig]:
    return {name: shrink(get_preset(name)) for name in sorted(PRESETS)}
