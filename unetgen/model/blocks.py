"""The building blocks of a U-Net: conv blocks, down- and up-sampling, and skip merges.

Each block receives only the slice of the config it needs."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from ..config.options import (
    Activation,
    Add,
    AttentionGate,
    AvgPool,
    Block,
    ChannelExcitation,
    ChannelSpatialExcitation,
    Concat,
    ConvDown,
    Down,
    Dropout,
    Excitation,
    FirstConvDown,
    LinearUp,
    MaxPool,
    Merge,
    NearestUp,
    NoNorm,
    Norm,
    NormPosition,
    PixelShuffleUp,
    ReLU,
    ResidualBlock,
    SpatialDims,
    SpatialExcitation,
    TransposeUp,
    Up,
)
from ..config.unet_config import Stage, conv_steps
from . import layers


def center_crop(x: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """A view of `x` (B, C, *spatial) cropped to the centred window of spatial `shape`."""
    for axis, size in enumerate(shape, start=2):
        x = x.narrow(axis, (x.shape[axis] - size) // 2, size)
    return x


class ConvBlock(nn.Module):
    """`len(stage.channels)` convolutions with norm and activation, plain or residual, followed by
    optional dropout. With valid padding each k-wide conv shrinks the map by k - 1 per axis; the
    first conv has the stage's stride (`down: first_conv`, same padding only). A residual
    block's identity path is `shortcut` (empty: the identity), then `post_act` after the sum;
    `excite` (the block's `excitation`) recalibrates the unit's output."""

    def __init__(
        self,
        dims: SpatialDims,
        stage: Stage,
        *,
        same: bool,
        norm: Norm,
        act: Activation,
        bias: bool,
        block: Block,
        dropout: nn.Module | None = None,
        position: NormPosition = "before_activation",
        conv_dropout: Dropout | None = None,
    ) -> None:
        super().__init__()
        self.residual = isinstance(block, ResidualBlock)
        self.strided = any(s != 1 for s in stage.first_stride)
        self.project = None
        if isinstance(block, ResidualBlock) and block.shortcut == "input_projection":
            if stage.in_channels != stage.out_channels:  # the convs and the identity start from its output
                self.project = layers.conv(dims, stage.in_channels, stage.out_channels, 1, bias=True)
                stage = replace(stage, in_channels=stage.out_channels)
        self.body = _body(
            dims, stage, same=same, norm=norm, act=act, bias=bias, block=block, position=position, dropout=conv_dropout
        )
        if isinstance(block, ResidualBlock):
            self.shortcut = _shortcut(dims, stage, block, norm=norm, bias=bias)
            post = block.post_activation or act
            self.post_act = None if block.preactivation else layers.activation(post, channels=stage.out_channels)
        self.excite = Excite(dims, stage.out_channels, block.excitation) if block.excitation is not None else None
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.project is not None:
            x = self.project(x)  # (B, C_out, *S)
        y = self.body(x)  # (B, C_out, *(S - sum(k - 1)))
        if self.residual:
            if self.strided:  # same padding (config rule): the strided shortcut gives y's shape
                y = y + self.shortcut(x)
            else:  # valid padding: the identity cropped centrally
                y = y + self.shortcut(center_crop(x, y.shape[2:]))
            if self.post_act is not None:
                y = self.post_act(y)
        if self.excite is not None:
            y = self.excite(y)
        if self.dropout is not None:
            y = self.dropout(y)
        return y


class Excite(nn.Module):
    """Squeeze-and-excitation of a map of `channels` channels (`option`): `channel` (cSE: global
    average pool, linear to `channels // reduction` (at least 1), ReLU, linear back, sigmoid:
    a (B, C, 1, ..., 1) gate) and `spatial` (sSE: a 1x1 conv to one channel, sigmoid: a
    (B, 1, *S) gate) each scale the map; scSE combines the two results (max or sum), cSE first."""

    def __init__(self, dims: SpatialDims, channels: int, option: Excitation) -> None:
        super().__init__()
        self.option = option
        self.channel = self.spatial = None
        match option:
            case ChannelExcitation(reduction=r) | ChannelSpatialExcitation(reduction=r):
                hidden = max(1, channels // r)
                self.channel = nn.Sequential(
                    layers.GLOBAL_AVG_POOL[dims](1),
                    layers.ChannelLinear(channels, hidden),
                    nn.ReLU(),
                    layers.ChannelLinear(hidden, channels),
                    nn.Sigmoid(),
                )
        match option:
            case SpatialExcitation() | ChannelSpatialExcitation():
                self.spatial = nn.Sequential(layers.conv(dims, channels, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x * self.channel(x) if self.channel is not None else None  # (B, C, *S): gate (B, C, 1, ..., 1)
        s = x * self.spatial(x) if self.spatial is not None else None  # (B, C, *S): gate (B, 1, *S)
        if c is None or s is None:
            return c if s is None else s
        match self.option:
            case ChannelSpatialExcitation(combine="max"):
                return torch.maximum(c, s)
            case ChannelSpatialExcitation(combine="add"):
                return c + s
        raise AssertionError(f"unhandled excitation {self.option!r}")


def _body(
    dims: SpatialDims,
    stage: Stage,
    *,
    same: bool,
    norm: Norm,
    act: Activation,
    bias: bool,
    block: Block,
    position: NormPosition,
    dropout: Dropout | None = None,
) -> nn.Sequential:
    """A block's convs with their norms and activations (and `dropout` after each conv's step
    `dropout.after`: `placement: every_conv`); the first conv has the stage's stride. A
    pre-activation block runs norm and activation before each conv; a residual block's last conv
    is activated after the sum, so not here."""
    pre, norm_after = block.preactivation, position == "after_activation"
    residual = isinstance(block, ResidualBlock)
    out: list[nn.Module] = []
    cin = stage.in_channels
    for j, cout in enumerate(stage.channels):
        conv = layers.conv(
            dims, cin, cout, stage.kernel, stride=stage.first_stride if j == 0 else 1, same=same, bias=bias
        )
        if pre:
            n = layers.norm(norm, dims, cin)
            # activation first (no norm, or norm_after): in place it would overwrite the block's
            # input, which may be a skip or the identity
            a = layers.activation(act, inplace=n is not None and not norm_after, channels=cin)
            after = dropout.after if dropout is not None else None
            parts = {"norm": n, "act": a, "conv": conv}
            for step in conv_steps(position, pre=True, dropout_after=after):
                m = layers.dropout_layer(dropout, dims) if step == "drop" else parts[step]  # type: ignore[arg-type]
                out += [m] if m is not None else []
        else:
            a = None if residual and j == len(stage.channels) - 1 else layers.activation(act, channels=cout)
            out += layers.with_norm_act(conv, norm, dims, a, position, dropout)
        cin = cout
    return nn.Sequential(*out)


def _shortcut(dims: SpatialDims, stage: Stage, block: ResidualBlock, *, norm: Norm, bias: bool) -> nn.Sequential:
    """A residual block's identity path: empty (the identity), or a 1x1 conv where channels or
    size change (`projection`; `resnet_d`: an average pool where it strides, then a 1x1 conv
    without bias where channels change), followed by a norm unless the block pre-activates."""
    cin, cout, stride = stage.in_channels, stage.out_channels, stage.first_stride
    pre, strided = block.preactivation, any(s != 1 for s in stride)
    proj: list[nn.Module] = []
    match block.shortcut:
        case "projection" if cin != cout or strided:
            proj.append(layers.conv(dims, cin, cout, 1, stride=stride, bias=bias or pre))
        case "resnet_d":
            if strided:
                proj.append(layers.AVG_POOL[dims](stride, stride, ceil_mode=True))
            if cin != cout:
                proj.append(layers.conv(dims, cin, cout, 1, bias=False))
    projected = bool(proj) and isinstance(proj[-1], nn.modules.conv._ConvNd)
    if projected and not pre and (n := layers.norm(norm, dims, cout)) is not None:
        proj.append(n)
    return nn.Sequential(*proj)


def conv_norm_act(
    dims: SpatialDims,
    stage: Stage,
    *,
    same: bool,
    norm: Norm,
    act: Activation,
    bias: bool,
    position: NormPosition = "before_activation",
    dropout: Dropout | None = None,
) -> nn.Sequential:
    """One conv of `stage` (its kernel and first stride) with norm and activation in the order of
    `position` (and `dropout`, `placement: every_conv`): the stem."""
    cin, cout = stage.in_channels, stage.out_channels
    conv = layers.conv(dims, cin, cout, stage.kernel, stride=stage.first_stride, same=same, bias=bias)
    a = layers.activation(act, channels=cout)
    return nn.Sequential(*layers.with_norm_act(conv, norm, dims, a, position, dropout))


def make_down(option: Down, dims: SpatialDims, channels: int, stride: tuple[int, ...]) -> nn.Module | None:
    """Down-sampling by `stride` with kernel = stride; the channels stay. None for `first_conv`,
    whose stride is in the next block's first conv."""
    match option:
        case FirstConvDown():
            return None
        case MaxPool():
            return layers.MAX_POOL[dims](stride, stride)
        case AvgPool():
            return layers.AVG_POOL[dims](stride, stride)
        case ConvDown():
            return layers.CONV[dims](channels, channels, stride, stride=stride)
    raise AssertionError(f"unhandled down {option!r}")


_NO_NORM, _RELU = NoNorm(), ReLU()


def make_up(
    option: Up,
    dims: SpatialDims,
    cin: int,
    cout: int,
    stride: tuple[int, ...],
    *,
    norm: Norm = _NO_NORM,
    act: Activation = _RELU,
    position: NormPosition = "before_activation",
) -> nn.Module:
    """Up-sampling by `stride` from `cin` to `cout` channels; `norm`, `act` and `position`
    serve a transposed conv with `norm_act`."""
    match option:
        case TransposeUp(bias=bias, kernel_size=k, norm_act=norm_act, size_by=size_by):
            resize = None
            if k is None:  # kernel = stride: no padding
                conv = layers.CONV_TRANSPOSE[dims](cin, cout, stride, stride=stride, bias=bias)
            elif size_by == "nearest_resize":  # (in - 1) * stride + 1, resized to in * stride (pytorch-3dunet)
                conv = layers.CONV_TRANSPOSE[dims](cin, cout, k, stride=stride, padding=k // 2, bias=bias)
                resize = layers.NearestResize(tuple(s - 1 for s in stride))
            else:  # padded by k // 2, output padding stride - 1: out = in * stride (MONAI's rule)
                extra = tuple(s - 1 for s in stride)
                conv = layers.CONV_TRANSPOSE[dims](
                    cin, cout, k, stride=stride, padding=k // 2, output_padding=extra, bias=bias
                )
            if not norm_act:
                return conv if resize is None else nn.Sequential(conv, resize)
            a = layers.activation(act, channels=cout)
            return nn.Sequential(*layers.with_norm_act(conv, norm, dims, a, position, after_conv=resize))
        case NearestUp(conv=when) | LinearUp(conv=when):
            if isinstance(option, LinearUp):
                mode, corners = layers.INTERPOLATION[dims], option.align_corners
                upsample = nn.Upsample(scale_factor=stride, mode=mode, align_corners=corners)
            else:
                upsample = nn.Upsample(scale_factor=stride, mode="nearest")
            wanted = when == "always" or cin != cout
            return InterpolateUp(upsample, layers.conv(dims, cin, cout, 1) if wanted else None)
        case PixelShuffleUp(kernel_size=k, pad_pool=pad_pool):
            conv = layers.conv(dims, cin, cout * math.prod(stride), k, same=True)
            parts: list[nn.Module] = [conv, layers.PixelShuffle(stride)]  # (B, C_out, *(S * stride))
            if pad_pool:  # zeros before each axis (padding lists the last axis first), then a mean
                lead = tuple(p for s in reversed(stride) for p in (s - 1, 0))
                parts += [layers.CONSTANT_PAD[dims](lead, 0.0), layers.AVG_POOL[dims](stride, 1)]
            return nn.Sequential(*parts)
    raise AssertionError(f"unhandled up {option!r}")


class InterpolateUp(nn.Sequential):
    """Interpolation and an optional 1x1 conv, held as (upsample, conv) but run conv first: a
    1x1 conv commutes with nearest and (bi/tri)linear interpolation (whose weights sum to 1), and
    on the coarser map it costs 1/stride**dims as much (MONAI's UpSample runs it first too)."""

    def __init__(self, upsample: nn.Upsample, conv: nn.Module | None) -> None:
        super().__init__(upsample, *([conv] if conv is not None else []))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self) > 1:
            x = self[1](x)  # (B, C_up, *S)
        return self[0](x)  # (B, C_up, *(S * stride))


class Gate(nn.Module):
    """Additive attention gate (Oktay et al. 2018): the skip x is weighted by
    sigmoid(psi(act(W_x x + W_g g))), where g is the up-sampled coarser map."""

    def __init__(self, dims: SpatialDims, skip: int, gate: int, inter: int, norm: Norm, act: Activation) -> None:
        super().__init__()

        def project(cin: int, cout: int) -> nn.Sequential:
            n = layers.norm(norm, dims, cout)
            return nn.Sequential(*[m for m in (layers.conv(dims, cin, cout, 1), n) if m is not None])

        self.w_x, self.w_g = project(skip, inter), project(gate, inter)
        self.act = layers.activation(act, channels=inter)
        self.psi = nn.Sequential(layers.conv(dims, inter, 1, 1), nn.Sigmoid())  # (B, 1, *S) gate in [0, 1]

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        alpha = self.psi(self.act(self.w_x(x) + self.w_g(g)))  # (B, 1, *S)
        return x * alpha


class SkipMerge(nn.Module):
    """Centre-crops the skip to the up-sampled map and merges the two."""

    def __init__(
        self, option: Merge, dims: SpatialDims, skip: int, up: int, norm: Norm, act: Activation, inter: int = 0
    ) -> None:
        super().__init__()
        self.option = option
        self.gate = None
        if isinstance(option, AttentionGate):
            self.gate = Gate(dims, skip, up, inter, norm, act)

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        skip = center_crop(skip, up.shape[2:])  # (B, C_skip, *up.shape[2:]), a view
        match self.option:
            case Add():
                return skip + up
            case Concat(order="up_first"):
                return torch.cat([up, skip], dim=1)  # (B, C_up + C_skip, *S)
            case Concat():
                return torch.cat([skip, up], dim=1)  # (B, C_skip + C_up, *S)
            case AttentionGate():
                assert self.gate is not None
                return torch.cat([self.gate(skip, up), up], dim=1)
        raise AssertionError(f"unhandled merge {self.option!r}")


def paper_init_(module: nn.Module) -> None:
    """Gaussian weights with std sqrt(2/N), N = the inputs of one output neuron, and zero bias
    (Ronneberger et al. 2015, after He et al. 2015), for every conv and transposed conv."""
    for m in module.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            w = m.weight
            receptive = math.prod(m.kernel_size)
            if m.transposed:  # weight (C_in, C_out/g, *k): each output sees C_in * k/stride inputs
                fan_in = w.shape[0] * receptive // math.prod(m.stride)
            else:  # weight (C_out, C_in/g, *k)
                fan_in = w.shape[1] * receptive
            nn.init.normal_(w, 0.0, math.sqrt(2.0 / max(1, fan_in)))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
