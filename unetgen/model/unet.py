"""`UNet`: the network described by a `UNetConfig`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..analysis import shapes
from ..config.options import FirstConvDown
from ..config.unet_config import UNetConfig
from . import layers
from .blocks import ConvBlock, SkipMerge, conv_norm_act, make_down, make_head, make_up, paper_init_, stem_pool


class EncoderLevel(nn.Module):
    """One encoder level: down-sample the finer map (not at level 0, nor with `down: first_conv`,
    whose block strides), the stem conv (level 0 with `stem: true`), then the block: a
    `ConvBlock`, or a `Sequential` of them with `blocks_per_level` > 1."""

    def __init__(self, down: nn.Module | None, block: nn.Module, stem: nn.Module | None = None) -> None:
        super().__init__()
        self.down, self.stem, self.block = down, stem, block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down is not None:
            x = self.down(x)  # (B, C_prev, *(S / stride))
        if self.stem is not None:
            x = self.stem(x)  # (B, C_0, *(S - shrink))
        return self.block(x)  # (B, C_level, *(S - shrink))


class DecoderLevel(nn.Module):
    """One decoder level: up-sample the coarser map, merge it with the skip, convolve; `aux` is
    the level's deep-supervision head (applied by `UNet.forward` in training mode), if any."""

    def __init__(self, up: nn.Module | None, merge: SkipMerge, block: ConvBlock, aux: nn.Module | None = None) -> None:
        super().__init__()
        self.up, self.merge, self.block, self.aux = up, merge, block, aux

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.up is not None:  # None: a bottleneck at this level's resolution (`resample_bottleneck: false`)
            x = self.up(x)  # (B, C_up, *(S * stride))
        x = self.merge(skip, x)  # (B, C_skip + C_up, ...) for concat
        return self.block(x)  # (B, C_level, *(S' - shrink))


class UNet(nn.Module):
    """A U-Net built from a validated `UNetConfig` (see `build_unet` for dicts and files).

    `forward` takes (N, in_channels, *spatial) and first checks the spatial shape against
    `unetgen.shapes`, raising `InputShapeError` with the nearest valid sizes. It returns
    (N, out_channels, *output_shape), or in training mode with deep supervision the list
    [main, aux(level) for level in sorted(deep_supervision)].
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        c, lay, dims = config, config.layout, config.spatial_dims
        same, position = c.padding == "same", c.norm_position

        def dropout(wanted: bool) -> nn.Module | None:
            d = c.dropout
            if not wanted:
                return None
            return layers.CHANNEL_DROPOUT[dims](d.rate) if d.spatial else nn.Dropout(d.rate)

        conv_dropout = c.dropout if c.conv_dropout is not None else None  # dropout after every conv

        def block(stage, drop: bool, option=c.block, norm=c.norm, act=c.activation) -> nn.Module:
            units = [
                ConvBlock(
                    dims, unit, same=same, norm=norm, act=act, bias=c.conv_bias, block=option,
                    dropout=dropout(drop) if u == stage.units - 1 else None, position=position,
                    conv_dropout=conv_dropout,
                )
                for u, unit in enumerate(stage.split_units())
            ]  # fmt: skip
            return units[0] if len(units) == 1 else nn.Sequential(*units)

        def up(i: int) -> nn.Module | None:
            if i == c.depth - 1 and not c.resample_bottleneck:
                return None
            coarse, channels, stride = lay.coarse_channels[i], lay.up_channels[i], lay.strides[i]
            return make_up(c.up, dims, coarse, channels, stride, norm=c.norm, act=c.activation, position=position,
                           kernel=lay.decoder[i].kernel, bias=c.conv_bias)  # fmt: skip

        def encoder_level(i: int) -> EncoderLevel:
            resampled = i > 0 and (i < c.depth or c.resample_bottleneck)
            down = make_down(c.down, dims, lay.encoder[i - 1].out_channels, lay.strides[i - 1]) if resampled else None
            if i == 1 and isinstance(c.down, FirstConvDown) and c.down.first_step == "max_pool":
                down = stem_pool(dims, lay.strides[0])
            stem = None
            if i == 0 and lay.stem is not None:
                stem = conv_norm_act(
                    dims, lay.stem, same=same, norm=c.norm, act=c.activation, bias=c.conv_bias, position=position,
                    dropout=conv_dropout,
                )  # fmt: skip
            return EncoderLevel(down, block(lay.encoder[i], lay.encoder_dropout[i]), stem)

        # Modules in execution order, one per level, so that torchinfo prints one row per level.
        self.encoder = nn.ModuleList(encoder_level(i) for i in range(c.depth))
        self.bottleneck = encoder_level(c.depth)
        self.decoder = nn.ModuleList(
            DecoderLevel(
                up(i),
                SkipMerge(
                    c.merge,
                    dims,
                    lay.encoder[i].out_channels,
                    lay.up_channels[i],
                    c.norm,
                    c.activation,
                    inter=c.attention_channels[i] if c.attention_channels else 0,
                ),
                block(
                    lay.decoder[i],
                    lay.decoder_dropout[i],
                    c.decoder_block_type,
                    c.decoder_norm_type,
                    c.decoder_activation_type,
                ),
                layers.conv(dims, lay.decoder[i].out_channels, c.out_channels, 1) if i in c.deep_supervision else None,
            )
            for i in range(c.depth)
        )
        self.head = make_head(
            c.head, dims, lay.decoder[0].out_channels, c.out_channels, same=same, stride=lay.stem_stride,
            kernel=lay.encoder[0].kernel, bias=c.conv_bias, norm=c.norm, act=c.activation, position=position,
            up=c.up, decoder_kernel=lay.decoder[0].kernel, decoder_norm=c.decoder_norm_type,
            decoder_act=c.decoder_activation_type,
        )  # fmt: skip
        if c.init == "paper":
            paper_init_(self)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error unless `x` is (N, in_channels, *valid spatial shape)."""
        c = self.config
        if x.dim() != c.spatial_dims + 2:
            axes = ("L",) if c.spatial_dims == 1 else ("H", "W") if c.spatial_dims == 2 else ("D", "H", "W")
            raise shapes.InputShapeError(
                f"input of shape {tuple(x.shape)} has {x.dim()} dims but spatial_dims={c.spatial_dims} "
                f"needs (N, C, {', '.join(axes)})"
            )
        if x.shape[1] != c.in_channels:
            raise ValueError(
                f"input of shape {tuple(x.shape)} has {x.shape[1]} channels but in_channels={c.in_channels}"
            )
        self.check_spatial(tuple(x.shape[2:]))

    def check_spatial(self, spatial: tuple[int, ...]) -> None:
        """Raise `InputShapeError` (with the nearest valid sizes) unless the network takes this
        spatial input shape."""
        shapes.output_shape(self.config, spatial)

    def _run(self, fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
        """`fn(*args)`, recomputed in the backward pass instead of stored when checkpointing."""
        if self.config.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()):
            self.check_input(x)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """The network on an input already checked."""
        skips = []
        for level in self.encoder:  # one checkpoint segment per level holds its down-sampling: no pool indices stored
            x = self._run(level, x)  # (B, C_i, *S_i)
            skips.append(x)
        x = self._run(self.bottleneck, x)  # (B, C_depth, *S_depth)
        aux: list[torch.Tensor] = []
        for i in reversed(range(len(self.decoder))):
            level = self.decoder[i]
            x = self._run(level, x, skips.pop())  # (B, C_level_i, ...); skip i freed after use
            if self.training and level.aux is not None:
                aux.append(level.aux(x))  # (B, out_channels, *S_level_i)
        x = self.head(x)  # (B, out_channels, *output_shape)
        return [x, *reversed(aux)] if aux else x
