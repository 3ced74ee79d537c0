"""Shared hypothesis profiles and strategies: small, fast configs covering the whole option space."""

from __future__ import annotations

import math
import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from unetgen import UNetConfig, shapes

settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("dev", max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

NORMS = ["none", "batch", {"type": "group", "num_groups": 1}, "layer"]  # instance: tested apart (1-pixel maps)


@st.composite
def config_dicts(draw: st.DrawFn, *, dims: tuple[int, ...] = (1, 2, 3), max_depth: int = 5) -> dict[str, Any]:
    """A tiny-channel config dict drawn from the whole option space."""
    d = draw(st.sampled_from(dims))
    depth = draw(st.integers(1, max_depth))
    return {
        "spatial_dims": d,
        "in_channels": draw(st.integers(1, 2)),
        "out_channels": draw(st.integers(1, 3)),
        "depth": depth,
        "base_channels": draw(st.integers(1, 3)),
        "channel_multiplier": 1,
        "convs_per_block": draw(st.integers(1, 3)),
        "kernel_size": draw(st.sampled_from([3, 5])),
        "padding": draw(st.sampled_from(["valid", "same"])),
        "norm": draw(st.sampled_from(NORMS)),
        "activation": draw(st.sampled_from(["relu", "leaky_relu", "elu", "gelu", "silu"])),
        "merge": draw(st.sampled_from(["concat", "add"])),
        "down": draw(st.sampled_from(["max", "avg", "conv"])),
        "up": draw(st.sampled_from(["transpose", "nearest", "linear"])),
        "block": draw(st.sampled_from(["plain", "residual", {"type": "residual", "preactivation": True}])),
        "dropout": {"rate": 0.0},
        "init": "torch",
    }


def configs(**kwargs: Any) -> st.SearchStrategy[UNetConfig]:
    return config_dicts(**kwargs).map(UNetConfig.model_validate)


@st.composite
def valid_shapes(draw: st.DrawFn, config: UNetConfig, max_steps: int = 3) -> tuple[int, ...]:
    """A valid spatial input shape: each axis the smallest valid size plus a few periods."""
    out = []
    for axis in range(config.spatial_dims):
        rule = shapes.axis_rule(config, axis)
        out.append(rule.min_size + rule.period * draw(st.integers(0, max_steps)))
    return tuple(out)


def numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)
