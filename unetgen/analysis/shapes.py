"""Exact shape arithmetic of a U-Net, from the config alone: pure integers, no torch.

The sizes are solved over the network's ops (`unetgen.analysis.ops`), the one description of
what the network computes. Along one spatial axis every op maps a size ``s`` to
``(s - shrink) / divide * multiply``, so every size in the network is an affine function of
``b``, the size entering the bottleneck block. Going up the encoder, ``input = P*b + Q`` (P =
product of the strides, Q = the convs' shrinkage weighted by the strides above them), so the
valid input sizes are exactly ``Q + P*b`` for every integer ``b >= b_min``, where ``b_min`` is
the smallest value that keeps every map in the network at least one pixel wide. The output is
``P*b + R``, and the halo ``(input - output) / 2 = (Q - R) / 2`` is the same for every valid
input.

This module is the single source of truth for sizes: the model, the CLI and the tests call it.

Sizes are Python ints end to end, so every answer is exact for any int (``10**400`` included).
A size is an int (or anything with ``__index__`` but a bool: numpy integers, 0-d integer
arrays); a shape is a sequence of them, one per spatial axis. Every helper that takes a size
takes either an int with ``axis=`` and answers an int, or a shape and answers a tuple (one entry
per axis). Anything else (floats, NaN, strings, booleans) is an `InputShapeError` naming it.

Every helper takes its config as `build_unet` does (`unetgen.config.io.resolve_config`): a
`UNetConfig`, a mapping, a .json/.yaml/.yml path or a preset name.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, TypeVar, overload

from ..config.io import ConfigSource, resolve_config
from ..config.options import InstanceNorm
from ..config.unet_config import UNetConfig
from ..reprs import int_text, short_repr
from .ops import INPUT, Conv, Crop, network_ops, op_shapes

__all__ = [
    "AxisRule",
    "as_shape",
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
    "valid_input_shape",
    "valid_input_sizes",
]


class InputShapeError(ValueError):
    """An input whose spatial shape the network cannot process exactly, or a size that is not an
    integer (a float, NaN, a string, a boolean) or a shape with the wrong number of axes."""


_T = TypeVar("_T")


def _size(value: Any, what: str = "size") -> int:
    """`value` as an int, or `InputShapeError` naming it: sizes are integers, never booleans."""
    dtype = getattr(value, "dtype", None)
    if isinstance(value, bool) or (dtype is not None and str(dtype).endswith("bool")):
        raise InputShapeError(f"{what} must be an integer, not the boolean {short_repr(value)}")
    try:
        return operator.index(value)
    except TypeError:
        pass
    hint = ""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        hint = f"; write {int_text(int(value))}"
    elif isinstance(value, float):
        hint = "; sizes are whole numbers of pixels" if math.isfinite(value) else "; sizes are finite"
    elif isinstance(value, str):
        hint = "; parse it first, e.g. int(text)"
    kind = type(value).__name__
    raise InputShapeError(f"{what} must be an integer, got {short_repr(value)} ({kind}){hint}")


def _is_size(value: Any) -> bool:
    """Whether `value` is one size (an int-like scalar) rather than a shape."""
    if isinstance(value, (str, bytes)):
        return True  # refused by `_size` with its message
    if getattr(value, "ndim", None) == 0 or isinstance(value, (int, float)):
        return True
    return not hasattr(value, "__len__") and not hasattr(value, "__iter__")


def as_shape(config: ConfigSource, value: Any, what: str = "input shape") -> tuple[int, ...]:
    """`value` as a tuple of ints, one per spatial axis, or `InputShapeError` naming it."""
    config = resolve_config(config)
    if _is_size(value) or not hasattr(value, "__len__"):
        raise InputShapeError(
            f"{what} must be a sequence of {config.spatial_dims} integers (one per spatial axis), "
            f"got {short_repr(value)} ({type(value).__name__})"
        )
    n = len(value)
    if n != config.spatial_dims:
        shown = f" {short_repr(tuple(value))}" if n <= 16 else ""
        raise InputShapeError(f"{what}{shown} has {n:,} spatial axes but spatial_dims={config.spatial_dims}")
    return tuple(_size(v, f"{what}[{a}]") for a, v in enumerate(value))


def valid_input_shape(config: ConfigSource, value: Any, what: str = "input shape") -> tuple[int, ...]:
    """`value` (one size for every spatial axis, or one per axis) as a valid input shape, or
    `InputShapeError` naming `what` and the nearest valid sizes."""
    config = resolve_config(config)
    if not hasattr(value, "__len__") or getattr(value, "ndim", 1) == 0:
        value = (value,) * config.spatial_dims
    shape = as_shape(config, value, what)
    output_shape(config, shape)  # raises InputShapeError with the nearest valid sizes
    return shape


def _axis(config: UNetConfig, axis: Any) -> int:
    if isinstance(axis, bool):
        raise ValueError(f"axis must be an integer, not the boolean {axis}")
    try:
        a = operator.index(axis)
    except TypeError:
        raise ValueError(f"axis must be an integer, got {short_repr(axis)}") from None
    if not 0 <= a < config.spatial_dims:
        raise ValueError(f"axis={short_repr(a)} is out of range for spatial_dims={config.spatial_dims}")
    return a


def _per_axis(config: UNetConfig, value: Any, axis: Any, what: str, answer: Callable[[int, int], _T]) -> Any:
    """`answer(axis, size)` for an int `value` (on `axis`, default 0), or a tuple of the answers
    per axis for a shape (then `axis` must be None)."""
    if _is_size(value):
        return answer(_axis(config, 0 if axis is None else axis), _size(value, what))
    if axis is not None:
        raise ValueError(f"axis={short_repr(axis)} goes with a single size; a shape {what} has one per axis")
    return tuple(answer(a, v) for a, v in enumerate(as_shape(config, value, what)))


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
    """How much each encoder level's block (the bottleneck last) shrinks the map."""
    strides: tuple[int, ...]
    dec_shrink: tuple[int, ...]
    """How much each decoder level's block (level 0 first) shrinks the map."""
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


def axis_rule(config: ConfigSource, axis: int = 0) -> AxisRule:
    """The size rule of `axis` (0-based among the spatial axes), solved once over the network's
    ops (`network_ops`): O(ops), cached per config.

    ``b`` is the size at the last down-sampling (the map entering the bottleneck's block; with
    `down: first_conv`, the output of its strided first conv). Every op maps ``s`` to
    ``(s - shrink) / divide * multiply``, so every map is ``alpha*b + beta`` with integer
    coefficients: the encoder path up to there is solved backwards from ``b`` (each step exact),
    everything after it forwards."""
    config = resolve_config(config)
    return _rule(config, _axis(config, axis))


@lru_cache(maxsize=256)
def _rule(config: UNetConfig, axis: int) -> AxisRule:
    """`axis_rule` of a checked config and axis, cached."""
    ops = network_ops(config)
    size = _affine_sizes(config, axis)
    period, offset = size[INPUT]
    head = size[len(ops) - 1]
    # every map >= 1 (alpha 0: a global pool's output, of size 1 whatever the input)
    b_min = max([1, *(-((beta - 1) // alpha) for alpha, beta in size.values() if alpha)])
    enc = [0] * (config.depth + 1)
    dec = [0] * config.depth
    for op in ops:
        if isinstance(op, Conv) and op.part in ("encoder", "bottleneck", "decoder"):  # block convs
            shrink = op.grid(axis)[0]
            (enc if op.part in ("encoder", "bottleneck") else dec)[op.level] += shrink
    strides = tuple(s[axis] for s in config.layout.strides)
    stem_shrink = next((op.grid(axis)[0] for op in ops if op.part == "stem" and isinstance(op, Conv)), 0)
    return AxisRule(period, offset, b_min, head[1], tuple(enc), strides, tuple(dec), period // head[0], stem_shrink)


def _affine_sizes(config: UNetConfig, axis: int) -> dict[int, tuple[int, int]]:
    """Every op's output size on `axis` as (alpha, beta): alpha*b + beta (`INPUT`: the input)."""
    ops = network_ops(config)
    entering = [
        op
        for op in ops
        if op.level == config.depth and (op.part == "down" or (op.part == "bottleneck" and isinstance(op, Conv)))
    ]  # the down-sampling into the bottleneck: its strided op (a bottleneck unit's second conv), else its first
    pivot = next((op.index for op in entering if op.grid(axis)[1] != 1), entering[0].index)
    size: dict[int, tuple[int, int]] = {pivot: (1, 0)}
    at = pivot
    while at != INPUT:  # back along the encoder path: s_in = s_out / multiply * divide + shrink
        shrink, divide, multiply = ops[at].grid(axis)
        alpha, beta = size[at]
        assert multiply == 1 and ops[at].offset(axis) == 0, "no up-sampling before the bottleneck"
        at = ops[at].inputs[0]
        size[at] = (alpha * divide, beta * divide + shrink)
    for op in ops:  # every other op forwards, in order (its inputs come before it)
        if op.index in size:
            continue
        if isinstance(op, Crop):
            size[op.index] = size[op.inputs[1]]
            continue
        alpha, beta = size[op.inputs[0]]
        shrink, divide, multiply = op.grid(axis)
        assert alpha % divide == 0 and (beta - shrink) % divide == 0, f"inexact division at {op.module}"
        size[op.index] = (alpha // divide * multiply, (beta - shrink) // divide * multiply + op.offset(axis))
    return size


def _rules(config: UNetConfig) -> tuple[AxisRule, ...]:
    return tuple(_rule(config, a) for a in range(config.spatial_dims))


def _invalid(config: UNetConfig, size: int, axis: int, shape: Sequence[int] | None = None) -> InputShapeError:
    rule = _rule(config, axis)
    below = _nearest(rule, size, "down")
    above = _nearest(rule, size, "up")
    where = f" on axis {axis}" if config.spatial_dims > 1 else ""
    near = ", ".join(int_text(s) for s in (below, above) if s is not None)
    of = f" of spatial shape {_text(shape)}" if shape is not None and len(shape) > 1 else ""
    return InputShapeError(
        f"input size {int_text(size)}{where}{of} is not valid for depth={config.depth}, "
        f"padding='{config.padding}'; nearest valid: {near} "
        f"(valid sizes are {rule.min_size} + {rule.period}*k, k >= 0)"
    )


def _text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(map(int_text, shape)) + ("," if len(shape) == 1 else "") + ")"


@overload
def output_shape(config: ConfigSource, input_shape: int, *, axis: int | None = None) -> int: ...
@overload
def output_shape(config: ConfigSource, input_shape: Sequence[int], *, axis: None = None) -> tuple[int, ...]: ...
def output_shape(config: ConfigSource, input_shape: Any, *, axis: int | None = None) -> Any:
    """The spatial output shape for a spatial input shape (a tuple), or the output size along
    `axis` (default 0) for one input size (an int); raises `InputShapeError` if invalid. A shape
    is also checked as a whole (instance norm needs more than one element in every map)."""
    config = resolve_config(config)
    if _is_size(input_shape):
        a, size = _axis(config, 0 if axis is None else axis), _size(input_shape, "input size")
        out = _rule(config, a).output(size)
        if out is None:
            raise _invalid(config, size, a)
        return out
    if axis is not None:
        raise ValueError(f"axis={short_repr(axis)} goes with a single size; a shape has one size per axis")
    shape = as_shape(config, input_shape)
    out = []
    for a, (rule, size) in enumerate(zip(_rules(config), shape, strict=True)):
        o = rule.output(size)
        if o is None:
            raise _invalid(config, size, a, shape)
        out.append(o)
    if isinstance(config.norm, InstanceNorm):
        _check_instance_norm(config, shape)
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
            f"input shape {_text(input_shape)} shrinks to a single element at {small.name} "
            f"({'x'.join(map(str, small.shape))}), which norm='instance' cannot normalise; "
            f"use a larger input, e.g. {_text(bigger)}"
        )


def is_valid_input_shape(config: ConfigSource, input_shape: int | Sequence[int], *, axis: int | None = None) -> bool:
    """Whether the network maps this spatial input shape exactly (no padding, no lost pixels);
    for one size (an int), whether it is a valid size along `axis` (default 0). Raises
    `InputShapeError` for what is not a size or shape at all (a float, a string...)."""
    config = resolve_config(config)
    if _is_size(input_shape):
        a = _axis(config, 0 if axis is None else axis)
        return _rule(config, a).output(_size(input_shape, "input size")) is not None
    shape = as_shape(config, input_shape)
    if axis is not None:
        raise ValueError(f"axis={short_repr(axis)} goes with a single size; a shape has one size per axis")
    try:
        output_shape(config, shape)
    except InputShapeError:
        return False
    return True


@overload
def valid_input_sizes(config: ConfigSource, max_size: int, *, min_size: int = 1, axis: int | None = None) -> range: ...
@overload
def valid_input_sizes(
    config: ConfigSource, max_size: Sequence[int], *, min_size: int | Sequence[int] = 1, axis: None = None
) -> tuple[range, ...]: ...
def valid_input_sizes(config: ConfigSource, max_size: Any, *, min_size: Any = 1, axis: int | None = None) -> Any:
    """Every valid input size in [min_size, max_size] along `axis` (default 0), ascending, as a
    `range` (a `Sequence[int]` of O(1) size whatever the bounds: index it, slice it, take its
    `len`, test `in`); for a shape `max_size` (and an int or shape `min_size`), one range per axis.
    (Python's `len()` of a range stops at `sys.maxsize` elements; indexing works for any bounds.)"""
    config = resolve_config(config)

    def sizes(a: int, hi: int, lo: int) -> range:
        rule = _rule(config, a)
        lo = max(lo, rule.min_size)
        start = rule.min_size + -(-(lo - rule.min_size) // rule.period) * rule.period
        return range(start, max(start, hi + 1), rule.period)

    if _is_size(max_size):
        a = _axis(config, 0 if axis is None else axis)
        return sizes(a, _size(max_size, "max_size"), _size(min_size, "min_size"))
    if axis is not None:
        raise ValueError(f"axis={short_repr(axis)} goes with a single max_size; a shape has one per axis")
    his = as_shape(config, max_size, "max_size")
    los = (_size(min_size, "min_size"),) * len(his) if _is_size(min_size) else as_shape(config, min_size, "min_size")
    return tuple(sizes(a, hi, lo) for a, (hi, lo) in enumerate(zip(his, los, strict=True)))


def _nearest(rule: AxisRule, size: int, direction: Literal["up", "down"]) -> int | None:
    """The valid size at or above (`up`) or at or below (`down`) `size`; None when none is below.
    Integer division only, so exact for any int."""
    k, rest = divmod(size - rule.min_size, rule.period)
    if direction == "up":
        return rule.min_size + max(k + (rest > 0), 0) * rule.period
    return None if k < 0 else rule.min_size + k * rule.period


@overload
def nearest_valid_input_size(
    config: ConfigSource, size: int, *, direction: Literal["nearest", "up", "down"] = "nearest", axis: int | None = None
) -> int: ...
@overload
def nearest_valid_input_size(
    config: ConfigSource,
    size: Sequence[int],
    *,
    direction: Literal["nearest", "up", "down"] = "nearest",
    axis: None = None,
) -> tuple[int, ...]: ...
def nearest_valid_input_size(
    config: ConfigSource, size: Any, *, direction: Literal["nearest", "up", "down"] = "nearest", axis: int | None = None
) -> Any:
    """The valid input size nearest to `size` along `axis` (default 0; ties go up), or the next
    one up or down; for a shape, the answer per axis. `direction="down"` below the smallest
    valid size raises `InputShapeError`."""
    config = resolve_config(config)
    if not isinstance(direction, str) or direction not in ("nearest", "up", "down"):
        raise ValueError(f"direction={short_repr(direction)} must be 'nearest', 'up' or 'down'")

    def nearest(a: int, s: int) -> int:
        rule = _rule(config, a)
        up = _nearest(rule, s, "up")
        assert up is not None
        if direction == "up":
            return up
        down = _nearest(rule, s, "down")
        if direction == "down":
            if down is None:
                raise InputShapeError(
                    f"no valid input size is <= {int_text(s)}{f' on axis {a}' if config.spatial_dims > 1 else ''} "
                    f"for depth={config.depth}, padding='{config.padding}'; the smallest is {rule.min_size}"
                )
            return down
        return up if down is None or up - s <= s - down else down

    return _per_axis(config, size, axis, "size", nearest)


def min_input_shape(config: ConfigSource) -> tuple[int, ...]:
    """The smallest spatial input the network accepts: each axis's smallest valid size, grown by
    whole periods on every axis while instance norm would see a single-element map."""
    config = resolve_config(config)
    rules = _rules(config)
    shape = tuple(r.min_size for r in rules)
    while not is_valid_input_shape(config, shape):
        shape = tuple(s + r.period for s, r in zip(shape, rules, strict=True))
    return shape


@overload
def input_size_for_output(config: ConfigSource, output_size: int, *, axis: int | None = None) -> int: ...
@overload
def input_size_for_output(
    config: ConfigSource, output_size: Sequence[int], *, axis: None = None
) -> tuple[int, ...]: ...
def input_size_for_output(config: ConfigSource, output_size: Any, *, axis: int | None = None) -> Any:
    """The smallest valid input size along `axis` (default 0) whose output is at least
    `output_size`; for a shape, the answer per axis (each axis on its own: with instance norm
    `is_valid_input_shape` may still want a larger whole shape)."""
    config = resolve_config(config)

    def smallest(a: int, wanted: int) -> int:
        rule = _rule(config, a)
        b = max(rule.b_min, -(-(wanted - rule.out_offset) // rule.out_period))
        return rule.offset + rule.period * b

    return _per_axis(config, output_size, axis, "output_size", smallest)


@overload
def halo(config: ConfigSource, input_shape: None = None, *, axis: None = None) -> tuple[int, ...]: ...
@overload
def halo(config: ConfigSource, input_shape: int | None = None, *, axis: int) -> int: ...
@overload
def halo(config: ConfigSource, input_shape: int, *, axis: int | None = None) -> int: ...
@overload
def halo(config: ConfigSource, input_shape: Sequence[int], *, axis: None = None) -> tuple[int, ...]: ...
def halo(config: ConfigSource, input_shape: Any = None, *, axis: int | None = None) -> Any:
    """The context the network consumes on each side, (input - output) / 2: the same for every
    valid input. `halo(config)` gives it per axis (a tuple), `halo(config, axis=a)` for one axis
    (an int); with an input size (an int, on `axis`, default 0) or shape (a tuple) that input is
    checked first (`InputShapeError` if it is not valid) and the answer has the same kind."""
    config = resolve_config(config)
    if input_shape is None:
        if axis is None:
            return tuple(r.halo for r in _rules(config))
        return _rule(config, _axis(config, axis)).halo
    if _is_size(input_shape):
        output_shape(config, input_shape, axis=axis)
        return _rule(config, _axis(config, 0 if axis is None else axis)).halo
    output_shape(config, input_shape, axis=axis)
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
    """The trace rows and skip crops of `input_shape`, read off the network's ops."""
    if check:
        output_shape(config, input_shape)  # validates, with the helpful error
    ops = network_ops(config)
    out = op_shapes(config, input_shape)
    rows = [TraceRow("input", config.in_channels, tuple(input_shape))]
    rows += [TraceRow(op.row, op.out_channels, out[op.index]) for op in ops if op.row is not None]
    crops = []
    for op in ops:
        if isinstance(op, Crop) and op.part == "merge":  # the skip, cropped to the up-sampled map
            skip, up = out[op.inputs[0]], out[op.inputs[1]]
            offset = tuple((s - u) // 2 for s, u in zip(skip, up, strict=True))
            crops.append(SkipCrop(op.level, skip, up, offset))
    return rows, sorted(crops, key=lambda c: c.level)


def trace(config: ConfigSource, input_shape: Sequence[int]) -> list[TraceRow]:
    """Every stage's channels and spatial shape for this input, as in Figure 1 of the paper."""
    config = resolve_config(config)
    return _walk(config, as_shape(config, input_shape))[0]


def skip_crops(config: ConfigSource, input_shape: Sequence[int]) -> list[SkipCrop]:
    """The centred crop of every skip connection, level 0 (full resolution) first."""
    config = resolve_config(config)
    return _walk(config, as_shape(config, input_shape))[1]


def aux_shapes(config: ConfigSource, input_shape: Sequence[int]) -> list[tuple[int, ...]]:
    """Spatial shapes of the deep-supervision outputs, in the order `forward` returns them."""
    config = resolve_config(config)
    shape = as_shape(config, input_shape)
    output_shape(config, shape)
    out = op_shapes(config, shape)
    heads = sorted((op for op in network_ops(config) if op.training_only), key=lambda op: op.level)
    return [out[op.index] for op in heads]
