"""What a config costs, from integer arithmetic alone (no model, no memory).

`count_parameters` equals ``sum(p.numel() for p in build_unet(config).parameters())``.

`count_macs` counts the multiply-adds of every convolution and transposed convolution, the way
`torch.utils.flop_counter.FlopCounterMode` does (its FLOPs / 2): output positions x kernel
volume x input channels x output channels per conv (input positions for a transposed conv, which
for kernel = stride is the same total as output positions x 1; an interpolation's 1x1 conv runs on
the coarser map, before the interpolation). Bias additions, norms,
activations, pooling, interpolation, crops, concatenations and the attention gate's elementwise
products are not counted (they are cheap, and FlopCounterMode ignores them too).

torchinfo's "mult-adds" charge a transposed conv its whole weight at every *output* position:
stride**dims times its true cost (4x for the paper's 2x2 up-convolutions), and add the biases,
so for the paper's network at 572x572 torchinfo reports 167.46 G (167.34 G with batch norm, whose
convs have no bias) where the convolutions do 150.43 G.

Sizes come from `unetgen.shapes.trace`, the single source of truth for shapes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..config.options import (
    ELU,
    GELU,
    Activation,
    Add,
    AttentionGate,
    AvgPool,
    BatchNorm,
    Block,
    Concat,
    ConvDown,
    FirstConvDown,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    LeakyReLU,
    LinearUp,
    MaxPool,
    NearestUp,
    NoNorm,
    Norm,
    PixelShuffleUp,
    PReLU,
    ReLU,
    ResidualBlock,
    SiLU,
    TransposeUp,
)
from ..config.unet_config import Stage, UNetConfig
from . import shapes

__all__ = ["DEFAULT_MAX_PARAMETERS", "ParameterBudgetError", "check_parameter_budget", "count_macs", "count_parameters"]

DEFAULT_MAX_PARAMETERS = 2_000_000_000
"""`build_unet` refuses configs with more parameters (8 GB of float32 weights) unless the caller
passes a larger `max_parameters` (or None); the paper's network has 31,030,658."""


class ParameterBudgetError(ValueError):
    """A config with more parameters than the caller allowed."""


def _conv(cin: int, cout: int, kernel: Sequence[int], bias: bool) -> int:
    return cin * cout * math.prod(kernel) + (cout if bias else 0)


def _norm(option: Norm, channels: int) -> int:
    """Learnable parameters of a norm layer (running statistics are buffers, not parameters)."""
    match option:
        case NoNorm():
            return 0
        case InstanceNorm(affine=affine):
            return 2 * channels if affine else 0
        case BatchNorm() | GroupNorm() | LayerNorm():
            return 2 * channels
    raise AssertionError(f"unhandled norm {option!r}")


def _shortcut_conv(block: Block, stage: Stage) -> bool:
    """Whether a block's identity path has a 1x1 conv (where channels or size change)."""
    if not isinstance(block, ResidualBlock):
        return False
    match block.shortcut:
        case "projection":
            return stage.in_channels != stage.out_channels or any(s != 1 for s in stage.first_stride)
        case "resnet_d":
            return stage.in_channels != stage.out_channels
    raise AssertionError(f"unhandled shortcut {block.shortcut!r}")


def _act(option: Activation, channels: int) -> int:
    """Learnable parameters of an activation layer on `channels` channels."""
    match option:
        case PReLU(num_parameters=count):
            return channels if count == "channels" else 1
        case ReLU() | LeakyReLU() | ELU() | GELU() | SiLU():
            return 0
    raise AssertionError(f"unhandled activation {option!r}")


def _block_parameters(config: UNetConfig, stage: Stage, block: Block) -> int:
    bias, norm, act, total = config.conv_bias, config.norm, config.activation, 0
    residual = isinstance(block, ResidualBlock)
    for unit in stage.split_units():
        pre, cin = block.preactivation, unit.in_channels
        for j, cout in enumerate(unit.channels):
            total += _conv(cin, cout, unit.kernel, bias) + _norm(norm, cin if pre else cout)
            if pre:
                total += _act(act, cin)
            elif not (residual and j == len(unit.channels) - 1):  # residual: activated after the sum
                total += _act(act, cout)
            cin = cout
        if residual and not pre:
            total += _act(act, unit.out_channels)
        if _shortcut_conv(block, unit):
            resnet_d = isinstance(block, ResidualBlock) and block.shortcut == "resnet_d"
            total += _conv(unit.in_channels, unit.out_channels, (1,), (bias or pre) and not resnet_d)
            total += 0 if pre else _norm(norm, unit.out_channels)
    return total


def count_parameters(config: UNetConfig) -> int:
    """The number of learnable parameters of the model `config` describes."""
    lay, total = config.layout, 0
    if lay.stem is not None:
        total += _conv(lay.stem.in_channels, lay.stem.out_channels, lay.stem.kernel, config.conv_bias)
        total += _norm(config.norm, lay.stem.out_channels) + _act(config.activation, lay.stem.out_channels)
    for i, stage in enumerate(lay.encoder):
        total += _block_parameters(config, stage, config.block)
        if i < config.depth:
            match config.down:
                case ConvDown():
                    total += _conv(stage.out_channels, stage.out_channels, lay.strides[i], True)
                case MaxPool() | AvgPool() | FirstConvDown():
                    pass
                case _:
                    raise AssertionError(f"unhandled down {config.down!r}")
    for i, stage in enumerate(lay.decoder):
        up, coarse, skip = lay.up_channels[i], lay.coarse_channels[i], lay.encoder[i].out_channels
        match config.up:
            case TransposeUp(bias=bias, kernel_size=k, norm_act=norm_act):
                total += _conv(coarse, up, lay.strides[i] if k is None else (k,) * config.spatial_dims, bias)
                if norm_act:
                    total += _norm(config.norm, up) + _act(config.activation, up)
            case NearestUp(conv=when) | LinearUp(conv=when):
                total += _conv(coarse, up, (1,), True) if when == "always" or coarse != up else 0
            case PixelShuffleUp(kernel_size=k):  # the conv to up * prod(stride) channels; shuffle, pad, pool: none
                total += _conv(coarse, up * math.prod(lay.strides[i]), (k,) * config.spatial_dims, True)
            case _:
                raise AssertionError(f"unhandled up {config.up!r}")
        match config.merge:
            case AttentionGate():
                inter = config.attention_channels[i]
                total += _conv(skip, inter, (1,), True) + _conv(up, inter, (1,), True) + _conv(inter, 1, (1,), True)
                total += 2 * _norm(config.norm, inter) + _act(config.activation, inter)  # psi (inter -> 1): no norm
            case Concat() | Add():
                pass
            case _:
                raise AssertionError(f"unhandled merge {config.merge!r}")
        total += _block_parameters(config, stage, config.decoder_block_type)
    heads = [0, *config.deep_supervision]
    return total + sum(_conv(lay.decoder[i].out_channels, config.out_channels, (1,), True) for i in heads)


def count_macs(config: UNetConfig, input_shape: Sequence[int], *, training: bool = False) -> int:
    """Multiply-adds of all convolutions for one sample of spatial `input_shape` (multiply by the
    batch size for a batch), as FlopCounterMode counts them (FLOPs / 2). `training` adds the
    deep-supervision heads, which run only in training mode. Raises `InputShapeError` for an
    invalid shape."""
    lay = config.layout
    size = {row.name: math.prod(row.shape) for row in shapes.trace(config, input_shape)}
    total = 0

    def block(prefix: str, stage: Stage, option: Block) -> int:
        macs, j = 0, 0
        for unit in stage.split_units():
            cin = unit.in_channels
            for cout in unit.channels:
                j += 1
                macs += size[f"{prefix}.conv{j}"] * cin * cout * math.prod(unit.kernel)
                cin = cout
            if _shortcut_conv(option, unit):
                # the 1x1 conv runs on the identity cropped to the unit's output (or, strided, on
                # the whole identity, which with same padding gives the unit's output size)
                macs += size[f"{prefix}.conv{j}"] * unit.in_channels * unit.out_channels
        return macs

    if lay.stem is not None:
        total += size["stem"] * lay.stem.in_channels * lay.stem.out_channels * math.prod(lay.stem.kernel)
    for i, stage in enumerate(lay.encoder):
        total += block("bottleneck" if i == config.depth else f"enc{i}", stage, config.block)
        if i < config.depth and isinstance(config.down, ConvDown):
            total += size[f"down{i}"] * stage.out_channels**2 * math.prod(lay.strides[i])
    coarse_row = {config.depth - 1: f"bottleneck.conv{len(lay.encoder[-1].channels)}"}
    coarse_row |= {i: f"dec{i + 1}.conv{len(lay.decoder[i + 1].channels)}" for i in range(config.depth - 1)}
    for i, stage in enumerate(lay.decoder):
        up, coarse, skip = lay.up_channels[i], lay.coarse_channels[i], lay.encoder[i].out_channels
        match config.up:
            case TransposeUp(kernel_size=None):  # input positions x stride volume (= output positions) x cin x cout
                total += size[f"up{i}"] * coarse * up
            case TransposeUp(kernel_size=k):  # input positions x kernel volume x cin x cout
                total += size[coarse_row[i]] * k**config.spatial_dims * coarse * up
            case NearestUp(conv=when) | LinearUp(conv=when) if when == "always" or coarse != up:
                total += size[coarse_row[i]] * coarse * up  # the 1x1 conv runs on the coarser map
            case NearestUp() | LinearUp():
                pass
            case PixelShuffleUp(kernel_size=k):  # the "same" conv runs on the coarser map
                total += size[coarse_row[i]] * k**config.spatial_dims * coarse * up * math.prod(lay.strides[i])
            case _:
                raise AssertionError(f"unhandled up {config.up!r}")
        if isinstance(config.merge, AttentionGate):
            inter = config.attention_channels[i]
            total += size[f"up{i}"] * (skip * inter + up * inter + inter)  # W_x on the cropped skip, W_g, psi
        total += block(f"dec{i}", stage, config.decoder_block_type)
    total += size["head"] * lay.decoder[0].out_channels * config.out_channels
    if training:
        for i in config.deep_supervision:
            total += size[f"aux{i}"] * lay.decoder[i].out_channels * config.out_channels
    return total


def check_parameter_budget(config: UNetConfig, max_parameters: int | None = DEFAULT_MAX_PARAMETERS) -> int:
    """The parameter count of `config`; raises `ParameterBudgetError` if it exceeds `max_parameters`
    (None: no limit)."""
    count = count_parameters(config)
    if max_parameters is not None and count > max_parameters:
        raise ParameterBudgetError(
            f"the config has {count:,} parameters ({count * 4 / 2**30:.1f} GiB as float32), more than "
            f"max_parameters={max_parameters:,}; pass build_unet(..., max_parameters={count}) or "
            "max_parameters=None to build it anyway, or device='meta' to inspect it without memory"
        )
    return count
