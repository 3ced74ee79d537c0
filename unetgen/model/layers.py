"""Dimension-generic layers: typed tables from spatial dims to torch classes, and factories
that turn config options into modules."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config.options import (
    ELU,
    GELU,
    Activation,
    BatchNorm,
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
    conv: nn.Module, option: Norm, dims: SpatialDims, act: nn.Module | None, position: NormPosition
) -> list[nn.Module]:
    """`conv` with its norm and activation (None: none, e.g. before a residual sum) in the order
    of `position`: conv, norm, act; conv, act, norm; or norm, conv, act (the norm then sees the
    conv's input channels)."""
    cin, cout = conv.in_channels, conv.out_channels
    match position:
        case "before_activation":
            steps = (conv, norm(option, dims, cout), act)
        case "after_activation":
            steps = (conv, act, norm(option, dims, cout))
        case "before_conv":
            steps = (norm(option, dims, cin), conv, act)
    return [m for m in steps if m is not None]


def norm(option: Norm, dims: SpatialDims, channels: int) -> nn.Module | None:
    """The normalisation layer of `option`, or None for no norm."""
    match option:
        case NoNorm():
            return None
        case BatchNorm(momentum=momentum, eps=eps, affine=affine):
            return BATCH_NORM[dims](channels, eps=eps, momentum=momentum, affine=affine)
        case InstanceNorm(affine=affine, eps=eps):
            return INSTANCE_NORM[dims](channels, eps=eps, affine=affine)
        case GroupNorm(num_groups=groups, eps=eps):
            return nn.GroupNorm(groups, channels, eps=eps)
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
