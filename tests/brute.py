"""A deliberately naive, independent size simulator: one axis, pixel by pixel through the network."""

from __future__ import annotations

from unetgen import UNetConfig


def kernels(config: UNetConfig, axis: int) -> list[int]:
    k = config.kernel_size
    entries = k if isinstance(k, tuple) else [k] * (config.depth + 1)
    return [e[axis] if isinstance(e, tuple) else e for e in entries]


def strides(config: UNetConfig, axis: int) -> list[int]:
    s = config.strides
    entries = s if isinstance(s, tuple) else [s] * config.depth
    return [e[axis] if isinstance(e, tuple) else e for e in entries]


def per_level(value: int | tuple[int, ...], level: int) -> int:
    return value if isinstance(value, int) else value[level]


def simulate(config: UNetConfig, size: int, axis: int = 0) -> int | None:
    """The output size along `axis`, or None if some map would vanish or a pool would drop pixels."""
    lay = config.layout
    ks, ss = kernels(config, axis), strides(config, axis)
    shrink = config.padding == "valid"
    first_conv = config.down.type == "first_conv"  # the first conv of each level strides (same padding)
    stem = config.stem_stride if isinstance(config.stem_stride, int) else config.stem_stride[axis]
    if size % stem:  # the output would not be size / stem
        return None
    skips = []
    x = size
    if config.stem:  # one conv with level 0's kernel before level 0
        if per_level(config.blocks_per_level, 0) == 0 and first_conv:  # the stem alone: it strides
            x = -(-x // stem)
        x -= ks[0] - 1 if shrink else 0
        if x < 1:
            return None
    bottleneck = config.block.type == "residual" and config.block.bottleneck  # only the middle conv is k x k
    for level in range(config.depth + 1):
        pooled = first_conv and config.down.first_step == "max_pool" and level == 1
        if pooled:  # ResNet's stem pool: kernel 2s - 1, padding s - 1: ceil(x / s) outputs
            x = -(-x // ss[0])
        convs = per_level(config.convs_per_block, level)
        for j in range(per_level(config.blocks_per_level, level) * convs):
            if first_conv and j == 0 and not pooled:
                s = stem if level == 0 else ss[level - 1]
                x = -(-x // s)  # a strided conv padded by k // 2: ceil(x / s) outputs
            if bottleneck and j % convs != 1:  # a 1x1 conv
                continue
            x -= ks[level] - 1 if shrink else 0
            if x < 1:
                return None
        if level < config.depth:
            skips.append(x)
            if first_conv:
                continue
            if x % ss[level]:
                return None
            x //= ss[level]
    for level in reversed(range(config.depth)):
        x *= ss[level]
        if skips[level] < x or (skips[level] - x) % 2:
            return None
        k = ks[level + 1] if config.decoder_kernel == "level_below" else ks[level]
        dec = config.decoder_block or config.block
        for j, _ in enumerate(lay.decoder[level].channels):
            if dec.type == "residual" and dec.bottleneck and j % 3 != 1:  # a 1x1 conv
                continue
            x -= k - 1 if shrink else 0
            if x < 1:
                return None
    if config.head.type == "transpose":  # up-sampled by the stem stride: the input's resolution
        return x * stem
    if config.head.type == "upsample":  # up-sampled by the stem stride, then convs with decoder level 0's kernel
        x *= stem
        k = ks[1] if config.decoder_kernel == "level_below" else ks[0]
        x -= (k - 1) * len(config.head.channels) if shrink else 0
    x -= config.head.kernel_size - 1 if shrink else 0
    return x if x >= 1 else None
