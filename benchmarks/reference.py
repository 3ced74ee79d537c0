"""A plain, hand-written U-Net (Ronneberger et al. 2015), the baseline the benchmarks measure against.

Written from the paper's description in the common DoubleConv / Down / Up shape: two 3x3 convolutions
each followed by a ReLU, 2x2 max pooling down, 2x2 transposed convolution up (halving the channels),
a centre crop of the skip connection, concatenation, and a final 1x1 convolution. With the defaults a
1x1x572x572 input gives a 1x2x388x388 output through 64-128-256-512-1024 channels.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Padding = Literal["valid", "same"]

CONV = {2: nn.Conv2d, 3: nn.Conv3d}
CONV_UP = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


class DoubleConv(nn.Sequential):
    """(conv 3x3 -> [batch norm] -> ReLU) x 2."""

    def __init__(self, in_ch: int, out_ch: int, padding: Padding, batch_norm: bool, dims: int) -> None:
        pad = 1 if padding == "same" else 0
        layers: list[nn.Module] = []
        for c_in in (in_ch, out_ch):
            layers.append(CONV[dims](c_in, out_ch, kernel_size=3, padding=pad, bias=not batch_norm))
            if batch_norm:
                layers.append(NORM[dims](out_ch))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Down(nn.Sequential):
    """2x2 max pooling, then a DoubleConv."""

    def __init__(self, in_ch: int, out_ch: int, padding: Padding, batch_norm: bool, dims: int) -> None:
        super().__init__(POOL[dims](2), DoubleConv(in_ch, out_ch, padding, batch_norm, dims))


def center_crop(skip: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Crop the spatial dims of `skip` around its centre to `size`."""
    slices = [slice(None), slice(None)]
    for have, want in zip(skip.shape[2:], size, strict=True):
        start = (have - want) // 2
        slices.append(slice(start, start + want))
    return skip[tuple(slices)]


class Up(nn.Module):
    """2x2 transposed convolution halving the channels, crop the skip, concatenate, DoubleConv."""

    def __init__(self, in_ch: int, out_ch: int, padding: Padding, batch_norm: bool, dims: int) -> None:
        super().__init__()
        self.up = CONV_UP[dims](in_ch, in_ch // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_ch, out_ch, padding, batch_norm, dims)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        skip = center_crop(skip, x.shape[2:])
        return self.conv(torch.cat([skip, x], dim=1))


class ReferenceUNet(nn.Module):
    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        base: int = 64,
        depth: int = 4,
        padding: Padding = "valid",
        batch_norm: bool = False,
        dims: int = 2,
    ) -> None:
        super().__init__()
        channels = [base * 2**level for level in range(depth + 1)]
        self.inc = DoubleConv(in_channels, channels[0], padding, batch_norm, dims)
        self.downs = nn.ModuleList(Down(channels[i], channels[i + 1], padding, batch_norm, dims) for i in range(depth))
        self.ups = nn.ModuleList(
            Up(channels[i + 1], channels[i], padding, batch_norm, dims) for i in reversed(range(depth))
        )
        self.outc = CONV[dims](channels[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inc(x)
        skips = []
        for down in self.downs:
            skips.append(x)
            x = down(x)
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)
