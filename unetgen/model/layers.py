"""Dimension-generic layers: typed tables from spatial dims to torch classes, and factories
that turn config options into modules."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config.options import (
    ELU,
    GELU,
    Activation,
    BatchNorm,
    Dropout,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    LeakyReLU,
    NoNorm,
    Norm,
    NormPosition,
    PReLU,
    ReLU,
    SiLU,
    SpatialDims,
)
from ..config.unet_config import conv_steps

CONV: dict[SpatialDims, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONV_TRANSPOSE: dict[SpatialDims, type[nn.Module]] = {
    1: nn.ConvTranspose1d,
    2: nn.ConvTranspose2d,
    3: nn.ConvTranspose3d,
}
MAX_POOL: dict[SpatialDims, type[nn.Module]] = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
CONSTANT_PAD: dict[SpatialDims, type[nn.Module]] = {1: nn.ConstantPad1d, 2: nn.ConstantPad2d, 3: nn.ConstantPad3d}
AVG_POOL: dict[SpatialDims, type[nn.Module]] = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
BATCH_NORM: dict[SpatialDims, type[nn.Module]] = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
INSTANCE_NORM: dict[SpatialDims, type[nn.Module]] = {
    1: nn.InstanceNorm1d,
    2: nn.InstanceNorm2d,
    3: nn.InstanceNorm3d,
}
GLOBAL_AVG_POOL: dict[SpatialDims, type[nn.Module]] = {
    1: nn.AdaptiveAvgPool1d,
    2: nn.AdaptiveAvgPool2d,
    3: nn.AdaptiveAvgPool3d,
}
CHANNEL_DROPOUT: dict[SpatialDims, type[nn.Module]] = {1: nn.Dropout1d, 2: nn.Dropout2d, 3: nn.Dropout3d}
INTERPOLATION: dict[SpatialDims, str] = {1: "linear", 2: "bilinear", 3: "trilinear"}


def conv(
    dims: SpatialDims,
    cin: int,
    cout: int,
    kernel: int | tuple[int, ...],
    *,
    stride: int | tuple[int, ...] = 1,
    same: bool = False,
    bias: bool = True,
) -> nn.Module:
    """A convolution; `same` pads by kernel // 2 (odd kernels keep the size)."""
    k = kernel if isinstance(kernel, tuple) else (kernel,) * dims
    padding = tuple(s // 2 for s in k) if same else 0
    return CONV[dims](cin, cout, k, stride=stride, padding=padding, bias=bias)


def norm_act(norm: nn.Module | None, act: nn.Module, *, after: bool) -> list[nn.Module]:
    """The norm (if any) and the activation in order: the norm first unless `after`."""
    return [m for m in ((act, norm) if after else (norm, act)) if m is not None]


def with_norm_act(
    conv: nn.Module,
    option: Norm,
    dims: SpatialDims,
    act: nn.Module | None,
    position: NormPosition,
    dropout: Dropout | None = None,
    *,
    after_conv: nn.Module | None = None,
) -> list[nn.Module]:
    """`conv` with its norm and activation (None: none, e.g. before a residual sum) in the order
    of `position`: conv, norm, act; conv, act, norm; or norm, conv, act (the norm then sees the
    conv's input channels); with `dropout` (`placement: every_conv`), its dropout after the step
    `dropout.after` names (`unet_config.conv_steps`); `after_conv` (a resize) right after the conv."""
    cin, cout = conv.in_channels, conv.out_channels
    out: list[nn.Module | None] = []
    for step in conv_steps(position, pre=False, dropout_after=dropout.after if dropout is not None else None):
        match step:
            case "conv":
                out += [conv, after_conv]
            case "norm":
                out.append(norm(option, dims, cin if position == "before_conv" else cout))
            case "act":
                out.append(act)
            case "drop":
                out.append(dropout_layer(dropout, dims))  # type: ignore[arg-type]
    return [m for m in out if m is not None]


def dropout_layer(option: Dropout, dims: SpatialDims) -> nn.Module:
    """The dropout of `option`: of single elements, or of whole channels (`spatial`)."""
    return CHANNEL_DROPOUT[dims](option.rate) if option.spatial else nn.Dropout(option.rate)


class NearestResize(nn.Module):
    """Nearest-neighbour resize that grows each spatial axis by `grow` (torch's `interpolate` to
    that size): the size fix of a transposed conv with `size_by: nearest_resize`."""

    def __init__(self, grow: tuple[int, ...]) -> None:
        super().__init__()
        self.grow = tuple(grow)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = [s + g for s, g in zip(x.shape[2:], self.grow, strict=True)]
        return F.interpolate(x, size=size, mode="nearest")  # (B, C, *(S + grow))

    def extra_repr(self) -> str:
        return f"grow={self.grow}"


def norm(option: Norm, dims: SpatialDims, channels: int) -> nn.Module | None:
    """The normalisation layer of `option`, or None for no norm."""
    match option:
        case NoNorm():
            return None
        case BatchNorm(momentum=momentum, eps=eps, affine=affine):
            return BATCH_NORM[dims](channels, eps=eps, momentum=momentum, affine=affine)
        case InstanceNorm(affine=affine, eps=eps):
            return INSTANCE_NORM[dims](channels, eps=eps, affine=affine)
        case GroupNorm(eps=eps):
            return nn.GroupNorm(option.groups_for(channels), channels, eps=eps)
        case LayerNorm(eps=eps):
            return nn.GroupNorm(1, channels, eps=eps)
    raise AssertionError(f"unhandled norm {option!r}")


def activation(option: Activation, *, inplace: bool = True, channels: int = 1) -> nn.Module:
    """The non-linearity of `option` on maps of `channels` channels; in-place where torch
    supports it and the caller allows."""
    match option:
        case PReLU(num_parameters=count, init=init):
            return nn.PReLU(channels if count == "channels" else 1, init=init)
        case ReLU():
            return nn.ReLU(inplace=inplace)
        case LeakyReLU(negative_slope=slope):
            return nn.LeakyReLU(slope, inplace=inplace)
        case ELU(alpha=alpha):
            return nn.ELU(alpha, inplace=inplace)
        case GELU():
            return nn.GELU()
        case SiLU():
            return nn.SiLU(inplace=inplace)
    raise AssertionError(f"unhandled activation {option!r}")


def pixel_shuffle(x: torch.Tensor, factors: tuple[int, ...]) -> torch.Tensor:
    """N-d pixel shuffle: (B, C * prod(factors), *S) -> (B, C, *(S * factors)). Channel c * prod(f)
    + j (j the row-major index over the factors) goes to offset j within each output cell: the
    layout of torch's 2-d `PixelShuffle` and MONAI's `pixelshuffle`, per axis."""
    b, ch, *size = x.shape
    n = len(size)
    c = ch // math.prod(factors)
    x = x.reshape(b, c, *factors, *size)  # (B, C, f_1..f_n, S_1..S_n)
    order = [0, 1] + [a for i in range(n) for a in (2 + n + i, 2 + i)]  # (B, C, S_1, f_1, ..., S_n, f_n)
    return x.permute(order).reshape(b, c, *(s * f for s, f in zip(size, factors, strict=True)))


class PixelShuffle(nn.Module):
    """`pixel_shuffle` as a module (torch.nn.PixelShuffle is 2-d and isotropic only)."""

    def __init__(self, factors: tuple[int, ...]) -> None:
        super().__init__()
        self.factors = tuple(factors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle(x, self.factors)

    def extra_repr(self) -> str:
        return f"factors={self.factors}"


class ChannelLinear(nn.Linear):
    """A linear layer over the channels of a (B, C, 1, ..., 1) map (a squeeze-and-excitation's
    fully connected layers): `nn.Linear`'s weight (C_out, C_in) and bias, applied to the
    flattened channels, the singleton spatial axes kept, so that it holds and computes what the
    peers' `nn.Linear` do (pytorch-3dunet, MONAI)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ones = x.shape[2:]
        return F.linear(x.flatten(1), self.weight, self.bias).view(x.shape[0], -1, *ones)  # (B, C_out, 1, ..., 1)
