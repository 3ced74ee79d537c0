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
    ConvHead,
    Down,
    Dropout,
    Excitation,
    FirstConvDown,
    Head,
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
    TransposeHead,
    TransposeUp,
    Up,
    UpsampleHead,
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
            after = not block.preactivation and block.last_activation == "after_sum"
            post = block.post_activation or act
            self.post_act = layers.activation(post, channels=stage.out_channels) if after else None
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
    residual = isinstance(block, ResidualBlock) and block.last_activation == "after_sum"  # activated after the sum
    bottleneck = isinstance(block, ResidualBlock) and block.bottleneck  # 1x1, kxk (strided), 1x1
    out: list[nn.Module] = []
    cin = stage.in_channels
    for j, cout in enumerate(stage.channels):
        kernel = 1 if bottleneck and j != 1 else stage.kernel
        stride = stage.first_stride if j == (1 if bottleneck else 0) else 1
        conv = layers.conv(dims, cin, cout, kernel, stride=stride, same=same, bias=bias)
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
        case "conv" if cin != cout or strided:  # no norm: the block's kernel where it strides, else 1x1
            return nn.Sequential(
                layers.conv(dims, cin, cout, stage.kernel if strided else 1, stride=stride, same=strided, bias=bias)
            )
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
    kernel: tuple[int, ...] = (),
    bias: bool = True,
) -> nn.Module:
    """Up-sampling by `stride` from `cin` to `cout` channels; `norm`, `act` and `position`
    serve a transposed conv with `norm_act`, `kernel` and `bias` the conv of its `residual_unit`."""
    if isinstance(option, TransposeUp) and option.residual_unit:
        up = make_up(option.model_copy(update={"residual_unit": False}), dims, cin, cout, stride, norm=norm, act=act,
                     position=position)  # fmt: skip
        conv = layers.conv(dims, cout, cout, kernel, same=True, bias=bias)
        unit = layers.with_norm_act(conv, norm, dims, layers.activation(act, channels=cout), position)
        return ResidualUnitAfter(up, nn.Sequential(*unit))
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


class ResidualUnitAfter(nn.Module):
    """`up`, then its output plus `unit` of it (MONAI's one-conv ResidualUnit after an
    up-sampling, and after the transposed-conv head)."""

    def __init__(self, up: nn.Module, unit: nn.Module) -> None:
        super().__init__()
        self.up, self.unit = up, unit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(x)  # (B, C, *(S * stride))
        return y + self.unit(y)


def make_head(
    option: Head,
    dims: SpatialDims,
    cin: int,
    cout: int,
    *,
    same: bool,
    stride: tuple[int, ...],
    kernel: tuple[int, ...],
    bias: bool,
    norm: Norm,
    act: Activation,
    position: NormPosition,
    up: Up | None = None,
    decoder_kernel: tuple[int, ...] = (),
    decoder_norm: Norm | None = None,
    decoder_act: Activation | None = None,
) -> nn.Module:
    """The output layer: a conv (`ConvHead`), a transposed conv that up-samples by `stride`
    (`TransposeHead`, with its norm and activation and residual unit of one bare conv:
    `kernel`, `bias`), or `up` by `stride`, convs (`decoder_kernel`, `decoder_norm`,
    `decoder_act`) and a conv (`UpsampleHead`)."""
    match option:
        case UpsampleHead(channels=widths, kernel_size=k):
            assert up is not None and decoder_norm is not None and decoder_act is not None
            upsample = make_up(up, dims, cin, cin, stride, norm=norm, act=act, position=position, kernel=decoder_kernel,
                               bias=bias)  # fmt: skip
            convs, c = [], cin
            for w in widths:
                conv = layers.conv(dims, c, w, decoder_kernel, same=same, bias=bias)
                a = layers.activation(decoder_act, channels=w)
                convs.append(nn.Sequential(*layers.with_norm_act(conv, decoder_norm, dims, a, position)))
                c = w
            return UpsampleHeadModule(upsample, nn.ModuleList(convs), layers.conv(dims, c, cout, k, same=same))
        case ConvHead(kernel_size=k):
            return layers.conv(dims, cin, cout, k, same=same)
        case TransposeHead(kernel_size=k, bias=tbias, norm_act=norm_act, residual_unit=unit):
            extra = tuple(s - 1 for s in stride)
            t = layers.CONV_TRANSPOSE[dims](
                cin, cout, k, stride=stride, padding=k // 2, output_padding=extra, bias=tbias
            )
            up: nn.Module = t
            if norm_act:
                up = nn.Sequential(
                    *layers.with_norm_act(t, norm, dims, layers.activation(act, channels=cout), position)
                )
            if not unit:
                return up
            return ResidualUnitAfter(up, nn.Sequential(layers.conv(dims, cout, cout, kernel, same=True, bias=bias)))
    raise AssertionError(f"unhandled head {option!r}")


class UpsampleHeadModule(nn.Module):
    """`head: upsample`: `up`, each of `convs`, then `out`."""

    def __init__(self, up: nn.Module, convs: nn.ModuleList, out: nn.Module) -> None:
        super().__init__()
        self.up, self.convs, self.out = up, convs, out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up(x)  # (B, C, *(S * stem_stride))
        for conv in self.convs:
            x = conv(x)
        return self.out(x)


def stem_pool(dims: SpatialDims, stride: tuple[int, ...]) -> nn.Module:
    """ResNet's pool after its stem: max pooling of kernel 2*stride - 1, padding stride - 1 (3/2/1)."""
    kernel, padding = tuple(2 * s - 1 for s in stride), tuple(s - 1 for s in stride)
    return layers.MAX_POOL[dims](kernel, stride, padding)


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

    def __init__(
        self,
        dims: SpatialDims,
        skip: int,
        gate: int,
        inter: int,
        norm: Norm,
        act: Activation,
        *,
        psi_norm: bool = False,
        gate_first: bool = False,
    ) -> None:
        super().__init__()

        def project(cin: int, cout: int, normed: bool = True) -> nn.Sequential:
            n = layers.norm(norm, dims, cout) if normed else None
            return nn.Sequential(*[m for m in (layers.conv(dims, cin, cout, 1), n) if m is not None])

        self.gate_first = gate_first
        self.w_x, self.w_g = project(skip, inter), project(gate, inter)
        self.act = layers.activation(act, channels=inter)
        self.psi = nn.Sequential(*project(inter, 1, psi_norm), nn.Sigmoid())  # (B, 1, *S) gate in [0, 1]

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if self.gate_first:  # the same sum; the layers run in the other order
            wg = self.w_g(g)
            wx = self.w_x(x)
        else:
            wx = self.w_x(x)
            wg = self.w_g(g)
        alpha = self.psi(self.act(wx + wg))  # (B, 1, *S)
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
            first = option.branch_order == "gate_first"
            self.gate = Gate(dims, skip, up, inter, norm, act, psi_norm=option.psi_norm, gate_first=first)

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
