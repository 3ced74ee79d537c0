"""Exact shape arithmetic of a U-Net, from the config alone: pure integers, no torch.

Along one spatial axis every size in the network is an affine function of ``b``, the size
entering the bottleneck block. Going up the encoder, ``input = P*b + Q`` (P = product of the
strides, Q = the convs' shrinkage weighted by the strides above them), so the valid input sizes
are exactly ``Q + P*b`` for every integer ``b >= b_min``, where ``b_min`` is the smallest value
that keeps every map in the network at least one pixel wide. The output is ``P*b + R``, and
the halo ``(input - output) / 2 = (Q - R) / 2`` is the same for every valid input.

This module is the single source of truth for sizes: the model, the CLI and the tests call it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from .config import FirstConvDown, InstanceNorm, Stage, UNetConfig

__all__ = [
    "AxisRule",
    "InputShapeError",
    "SkipCrop",
    "TraceRow",
    "aux_shapes",
    "axis_rule",
    "halo",
    "input_size_for_output",
    "is_valid_input_shape",
    "min_input_shape",
    "nearest_valid_input_size",
    "output_shape",
    "skip_crops",
    "trace",
    "valid_input_sizes",
]


class InputShapeError(ValueError):
    """An input whose spatial shape the network cannot process exactly."""


@dataclass(frozen=True)
class AxisRule:
    """The size rule of one spatial axis: valid inputs are ``offset + period*b`` for ``b >= b_min``,
    and such an input gives the output ``out_period*b + out_offset``, where ``out_period`` is
    ``period / stem`` (``stem`` = `stem_stride` on this axis, 1 unless the output is at a
    reduced resolution)."""

    period: int
    offset: int
    b_min: int
    out_offset: int
    enc_shrink: tuple[int, ...]
    strides: tuple[int, ...]
    dec_shrink: tuple[int, ...]
    conv_shrink_enc: tuple[tuple[int, ...], ...]
    conv_shrink_dec: tuple[tuple[int, ...], ...]
    stem: int = 1
    stem_shrink: int = 0

    @property
    def out_period(self) -> int:
        """Output growth per step of ``b``: ``period / stem``."""
        return self.period // self.stem

    @property
    def min_size(self) -> int:
        """The smallest valid input size."""
        return self.offset + self.period * self.b_min

    @property
    def halo(self) -> int:
        """Context lost on each side: (input - output) / 2, the same for every valid input.
        Raises ValueError when `stem_stride` puts the output at a lower resolution (no halo)."""
        if self.stem != 1:
            raise ValueError(
                f"stem_stride={self.stem} puts the output at 1/{self.stem} of the input's resolution, so "
                "input and output pixels do not correspond one to one (no halo, no overlap-tile "
                "prediction); use stem_stride: 1"
            )
        return (self.offset - self.out_offset) // 2

    def output(self, size: int) -> int | None:
        """The output size for `size`, or None when `size` is not a valid input size."""
        b, rest = divmod(size - self.offset, self.period)
        return self.out_period * b + self.out_offset if rest == 0 and b >= self.b_min else None


@lru_cache(maxsize=256)
def axis_rule(config: UNetConfig, axis: int = 0) -> AxisRule:
    """The size rule of `axis` (0-based among the spatial axes). O(depth), cached per config."""
    if not 0 <= axis < config.spatial_dims:
        raise ValueError(f"axis={axis} is out of range for spatial_dims={config.spatial_dims}")
    layout, valid = config.layout, config.padding == "valid"

    def shrinks(stage_kernel: tuple[int, ...], convs: int) -> tuple[int, ...]:
        return (stage_kernel[axis] - 1 if valid else 0,) * convs

    enc = tuple(shrinks(s.kernel, len(s.channels)) for s in layout.encoder)
    dec = tuple(shrinks(s.kernel, len(s.channels)) for s in layout.decoder)
    strides = tuple(s[axis] for s in layout.strides)
    enc_shrink, dec_shrink = tuple(map(sum, enc)), tuple(map(sum, dec))
    depth = config.depth
    # input = offset + period * b, built from the bottleneck up.
    period, offset = 1, 0
    for i in reversed(range(depth)):
        offset = enc_shrink[i] + strides[i] * offset
        period *= strides[i]
    stem = layout.stem_stride[axis] if layout.stem_stride else 1
    assert stem == 1 or not valid, "a stem stride needs same padding (config rule)"
    period *= stem  # same padding: input = stem * (level 0's map)
    stem_shrink = layout.stem.kernel[axis] - 1 if valid and layout.stem is not None else 0
    offset += stem_shrink  # the stem conv (`stem: true`) comes before level 0
    # every later map is alpha*b + beta >= 1: the bottleneck's output, then each decoder level's.
    alpha, beta = 1, -enc_shrink[depth]
    b_min = max(1, 1 - beta)
    for i in reversed(range(depth)):
        alpha, beta = alpha * strides[i], beta * strides[i] - dec_shrink[i]
        b_min = max(b_min, -((beta - 1) // alpha))  # ceil((1 - beta) / alpha)
    return AxisRule(period, offset, b_min, beta, enc_shrink, strides, dec_shrink, enc, dec, stem, stem_shrink)


def _rules(config: UNetConfig) -> tuple[AxisRule, ...]:
    return tuple(axis_rule(config, a) for a in range(config.spatial_dims))


def _check_rank(config: UNetConfig, shape: Sequence[int]) -> None:
    if len(shape) != config.spatial_dims:
        raise InputShapeError(
            f"input shape {tuple(shape)} has {len(shape)} spatial axes but spatial_dims={config.spatial_dims}"
        )


def _invalid(config: UNetConfig, shape: Sequence[int], axis: int) -> InputShapeError:
    rule, size = axis_rule(config, axis), shape[axis]
    below = _nearest(rule, size, "down")
    above = _nearest(rule, size, "up")
    where = f" on axis {axis}" if len(shape) > 1 else ""
    near = ", ".join(str(s) for s in (below, above) if s is not None)
    return InputShapeError(
        f"input size {size}{where} of spatial shape {tuple(shape)} is not valid for depth={config.depth}, "
        f"padding='{config.padding}'; nearest valid: {near} "
        f"(valid sizes are {rule.min_size} + {rule.period}*k, k >= 0)"
    )


def output_shape(config: UNetConfig, input_shape: Sequence[int]) -> tuple[int, ...]:
    """The spatial output shape for a spatial input shape; raises `InputShapeError` if invalid."""
    _check_rank(config, input_shape)
    out = []
    for axis, (rule, size) in enumerate(zip(_rules(config), input_shape, strict=True)):
        o = rule.output(size)
        if o is None:
            raise _invalid(config, input_shape, axis)
        out.append(o)
    if isinstance(config.norm, InstanceNorm):
        _check_instance_norm(config, input_shape)
    return tuple(out)


def _check_instance_norm(config: UNetConfig, input_shape: Sequence[int]) -> None:
    """Instance norm needs more than one element per map: refuse inputs whose smallest map is 1."""
    rows = _walk(config, input_shape, check=False)[0]
    small = min(rows[1:-1], key=lambda r: math.prod(r.shape))
    if math.prod(small.shape) <= 1:
        bigger = tuple(
            nearest_valid_input_size(config, s + 1, direction="up", axis=a) for a, s in enumerate(input_shape)
        )
        raise InputShapeError(
            f"input shape {tuple(input_shape)} shrinks to a single element at {small.name} "
            f"({'x'.join(map(str, small.shape))}), which norm='instance' cannot normalise; "
            f"use a larger input, e.g. {bigger}"
        )


def is_valid_input_shape(config: UNetConfig, input_shape: Sequence[int]) -> bool:
    """Whether the network maps this spatial input shape exactly (no padding, no lost pixels)."""
    try:
        output_shape(config, input_shape)
    except InputShapeError:
        return False
    return True


def valid_input_sizes(config: UNetConfig, max_size: int, *, min_size: int = 1, axis: int = 0) -> list[int]:
    """Every valid input size in [min_size, max_size] along `axis`, ascending."""
    rule = axis_rule(config, axis)
    lo = max(min_size, rule.min_size)
    start = rule.min_size + -(-(lo - rule.min_size) // rule.period) * rule.period
    return list(range(start, max_size + 1, rule.period))


def _nearest(rule: AxisRule, size: int, direction: Literal["up", "down"]) -> int | None:
    k = (size - rule.min_size) / rule.period
    k = math.ceil(k) if direction == "up" else math.floor(k)
    return None if k < 0 and direction == "down" else rule.min_size + max(k, 0) * rule.period


def nearest_valid_input_size(
    config: UNetConfig, size: int, *, direction: Literal["nearest", "up", "down"] = "nearest", axis: int = 0
) -> int:
    """The valid input size nearest to `size` (ties go up), or the next one up or down."""
    rule = axis_rule(config, axis)
    if direction not in ("nearest", "up", "down"):
        raise ValueError(f"direction={direction!r} must be 'nearest', 'up' or 'down'")
    up = _nearest(rule, size, "up")
    assert up is not None
    if direction == "up":
        return up
    down = _nearest(rule, size, "down")
    if direction == "down":
        if down is None:
            raise ValueError(
                f"no valid input size is <= {size} for depth={config.depth}, padding='{config.padding}'; "
                f"the smallest is {rule.min_size}"
            )
        return down
    return up if down is None or up - size <= size - down else down


def min_input_shape(config: UNetConfig) -> tuple[int, ...]:
    """The smallest spatial input the network accepts: each axis's smallest valid size, grown by
    whole periods on every axis while instance norm would see a single-element map."""
    rules = _rules(config)
    shape = tuple(r.min_size for r in rules)
    while not is_valid_input_shape(config, shape):
        shape = tuple(s + r.period for s, r in zip(shape, rules, strict=True))
    return shape


def input_size_for_output(config: UNetConfig, output_size: int, *, axis: int = 0) -> int:
    """The smallest valid input size along `axis` whose output is at least `output_size`."""
    rule = axis_rule(config, axis)
    b = max(rule.b_min, -(-(output_size - rule.out_offset) // rule.out_period))
    return rule.offset + rule.period * b


def halo(config: UNetConfig) -> tuple[int, ...]:
    """Per axis, the context the network consumes on each side: (input - output) / 2."""
    return tuple(r.halo for r in _rules(config))


@dataclass(frozen=True)
class TraceRow:
    """One stage of the network: its name, its output channels and its spatial shape."""

    name: str
    channels: int
    shape: tuple[int, ...]


@dataclass(frozen=True)
class SkipCrop:
    """The skip connection of decoder `level`: the encoder map's shape, the up-sampled map's
    shape, and the offset of the centred crop per axis (skip[offset : offset + up])."""

    level: int
    skip_shape: tuple[int, ...]
    up_shape: tuple[int, ...]
    offset: tuple[int, ...]


def _walk(
    config: UNetConfig, input_shape: Sequence[int], *, check: bool = True
) -> tuple[list[TraceRow], list[SkipCrop]]:
    if check:
        output_shape(config, input_shape)  # validates, with the helpful error
    rules, layout = _rules(config), config.layout
    size = list(input_shape)
    rows = [TraceRow("input", config.in_channels, tuple(size))]
    skips: list[tuple[int, ...]] = []

    def convs(prefix: str, stage_index: int, stage: Stage, shrink_of) -> None:
        for j, c in enumerate(stage.channels):
            for a, r in enumerate(rules):
                if j == 0:  # down: first_conv (same padding): the first conv strides
                    size[a] //= stage.first_stride[a]
                size[a] -= shrink_of(r)[stage_index][j]
            rows.append(TraceRow(f"{prefix}.conv{j + 1}", c, tuple(size)))

    if layout.stem is not None:
        size = [s - r.stem_shrink for s, r in zip(size, rules, strict=True)]
        rows.append(TraceRow("stem", layout.stem.out_channels, tuple(size)))
    separate_down = not isinstance(config.down, FirstConvDown)
    for i, stage in enumerate(layout.encoder):
        name = "bottleneck" if i == config.depth else f"enc{i}"
        convs(name, i, stage, lambda r: r.conv_shrink_enc)
        if i < config.depth:
            skips.append(tuple(size))
            if separate_down:
                size = [s // r.strides[i] for s, r in zip(size, rules, strict=True)]
                rows.append(TraceRow(f"down{i}", stage.out_channels, tuple(size)))
    crops: list[SkipCrop] = []
    for i in reversed(range(config.depth)):
        size = [s * r.strides[i] for s, r in zip(size, rules, strict=True)]
        rows.append(TraceRow(f"up{i}", layout.up_channels[i], tuple(size)))
        skip = skips[i]
        crops.append(SkipCrop(i, skip, tuple(size), tuple((s - u) // 2 for s, u in zip(skip, size, strict=True))))
        merged = layout.decoder[i].in_channels
        rows.append(TraceRow(f"merge{i}", merged, tuple(size)))
        convs(f"dec{i}", i, layout.decoder[i], lambda r: r.conv_shrink_dec)
        if i in config.deep_supervision:
            rows.append(TraceRow(f"aux{i}", config.out_channels, tuple(size)))
    rows.append(TraceRow("head", config.out_channels, tuple(size)))
    return rows, crops[::-1]


def trace(config: UNetConfig, input_shape: Sequence[int]) -> list[TraceRow]:
    """Every stage's channels and spatial shape for this input, as in Figure 1 of the paper."""
    return _walk(config, input_shape)[0]


def skip_crops(config: UNetConfig, input_shape: Sequence[int]) -> list[SkipCrop]:
    """The centred crop of every skip connection, level 0 (full resolution) first."""
    return _walk(config, input_shape)[1]


def aux_shapes(config: UNetConfig, input_shape: Sequence[int]) -> list[tuple[int, ...]]:
    """Spatial shapes of the deep-supervision outputs, in the order `forward` returns them."""
    rows = {r.name: r.shape for r in trace(config, input_shape)}
    return [rows[f"aux{level}"] for level in sorted(config.deep_supervision)]
