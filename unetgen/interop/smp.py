"""The converter of segmentation_models_pytorch's `Unet` with a ResNet encoder (resnet18/34/50 and
any torchvision `ResNet` of `BasicBlock` or `Bottleneck` units, no weights needed).

smp's encoder is torchvision's ResNet: a 7x7 stride-2 stem conv (its output is the first skip),
a 3x3 stride-2 max pool, then the residual stages, the first unstrided. Its decoder up-samples by
nearest (or bilinear) interpolation, concatenates (up, skip) and runs two 3x3 conv + norm + ReLU;
its last block has no skip and works at the input's resolution, and a 3x3 conv gives the output.
In unetgen that is: `stem: true` alone at level 0 (`blocks_per_level: [0, ...]`) carrying
`stem_stride: 2`, `down: {type: first_conv, first_step: max_pool}`, residual blocks (`bottleneck:
true` for `Bottleneck` units), and `head: {type: upsample, channels: [...], kernel_size: 3}`.
The peer is never imported: its classes are recognised by name.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..config.diagnostics import short_repr
from .options import UnsupportedModelError, activation_from_module, axes, norm_from_module
from .registry import Converted, register_converter

__all__ = ["from_smp_unet"]

_INTERPOLATION = {"nearest": {"type": "nearest", "conv": "when_channels_change"},
                  "bilinear": {"type": "linear", "conv": "when_channels_change", "align_corners": False}}  # fmt: skip


@register_converter("segmentation_models_pytorch", "Unet")
def from_smp_unet(net: nn.Module, ignore_dropout: bool) -> Converted:
    """The config data and the parametric layers (in unetgen's order) of an smp `Unet` with a
    ResNet encoder."""
    enc = net.encoder
    if type(enc).__name__ != "ResNetEncoder":
        raise UnsupportedModelError(
            f"smp Unet with encoder {type(enc).__name__}: unetgen converts ResNet encoders (resnet18/34/50, ...)"
        )
    if getattr(net, "classification_head", None) is not None:
        raise UnsupportedModelError("smp Unet with aux_params: its classification head is a second output")
    head = net.segmentation_head
    if not isinstance(head[1], nn.Identity) or not isinstance(getattr(head[2], "activation", None), nn.Identity):
        raise UnsupportedModelError(
            "smp Unet: its segmentation head up-samples or applies an activation (activation=...); unetgen's "
            "output is the conv's: build it with activation=None and apply the activation to the output"
        )
    if not isinstance(net.decoder.center, nn.Identity):
        raise UnsupportedModelError("smp Unet: a center block (VGG encoders) is not supported")
    d = int(enc._depth)
    if d < 2:
        raise UnsupportedModelError(f"smp Unet encoder_depth={d}: unetgen needs at least 2 (a stem and one stage)")
    stages = [getattr(enc, f"layer{k}") for k in range(1, d)]
    dims = 2
    kind = type(stages[0][0]).__name__
    if kind not in ("BasicBlock", "Bottleneck") or any(type(u).__name__ != kind for s in stages for u in s):
        raise UnsupportedModelError(f"smp Unet: ResNet units {kind}; only BasicBlock or Bottleneck throughout")
    bottleneck = kind == "Bottleneck"
    _check_stem(enc)
    layers: list[nn.Module] = [enc.conv1, enc.bn1]
    channels: list[Any] = [enc.conv1.out_channels]
    kernels, strides = [list(enc.conv1.kernel_size)], [axes(enc.maxpool.stride, dims)]
    for k, stage in enumerate(stages):
        for u, unit in enumerate(stage):
            layers += _unit_layers(unit, f"encoder.layer{k + 1}.{u}", bottleneck)
        middle = stage[0].conv2 if bottleneck else stage[0].conv1  # the strided k x k conv
        kernels.append(list(middle.kernel_size))
        if k > 0:
            strides.append(list(middle.stride))
        last = stage[-1]
        channels.append([last.conv1.out_channels, last.conv2.out_channels, last.conv3.out_channels]
                        if bottleneck else last.conv2.out_channels)  # fmt: skip
    blocks = list(net.decoder.blocks)  # the deepest first; the last has no skip
    if len(blocks) != d:
        raise UnsupportedModelError(f"smp Unet: {len(blocks)} decoder blocks for encoder_depth={d}")
    modes = {b.interpolation_mode for b in blocks}
    if len(modes) != 1 or next(iter(modes)) not in _INTERPOLATION:
        raise UnsupportedModelError(
            f"smp Unet decoder_interpolation={short_repr(sorted(modes))}: unetgen converts nearest and bilinear"
        )
    decoder_layers = [_decoder_block(b, f"decoder.blocks.{j}") for j, b in enumerate(blocks)]
    norm_ref = decoder_layers[0][1]
    for j in range(d - 2, -1, -1):  # unetgen's decoder level i is smp's block d - 2 - i, the deepest first
        layers += decoder_layers[d - 2 - j][0]
    layers += decoder_layers[-1][0] + [head[0]]
    norm = norm_from_module(enc.bn1, "smp Unet encoder")
    dec_norm = norm_from_module(norm_ref, "smp Unet decoder")
    for j, b in enumerate(blocks):
        if j < d - 1 and list(b.conv1[0].kernel_size) != kernels[d - 1 - j]:  # decoder level d - 2 - j: level_below
            raise UnsupportedModelError(f"smp Unet decoder block {j}: kernel other than its encoder stage's")
    data: dict[str, Any] = {
        "spatial_dims": dims,
        "in_channels": enc.conv1.in_channels,
        "out_channels": head[0].out_channels,
        "depth": d - 1,
        "channels": channels,
        "blocks_per_level": [0, *(len(s) for s in stages)],
        "convs_per_block": 3 if bottleneck else 2,
        "stem": True,
        "stem_stride": list(enc.conv1.stride),
        "kernel_size": kernels,
        "strides": strides,
        "down": {"type": "first_conv", "first_step": "max_pool"},
        "padding": "same",
        "norm": norm,
        "bias": False,
        "activation": activation_from_module(enc.relu, "smp Unet encoder"),
        "block": {"type": "residual", "bottleneck": True} if bottleneck else "residual",
        "decoder_block": "plain",
        "decoder_channels": [blocks[d - 2 - i].conv1[0].out_channels for i in range(d - 1)],
        "decoder_convs_per_block": 2,
        "decoder_kernel": "level_below",
        "up": _INTERPOLATION[next(iter(modes))],
        "up_channels": "keep",
        "merge": {"type": "concat", "order": "up_first"},
        "head": {
            "type": "upsample",
            "channels": [blocks[-1].conv1[0].out_channels, blocks[-1].conv2[0].out_channels],
            "kernel_size": head[0].kernel_size[0],
        },
        "dropout": {"rate": 0.0},
        "init": "torch",
    }
    if dec_norm != norm:
        data["decoder_norm"] = dec_norm
    if head[0].kernel_size != (head[0].kernel_size[0],) * dims or head[0].padding != (head[0].kernel_size[0] // 2,) * 2:
        raise UnsupportedModelError(f"smp Unet segmentation head {head[0]}: only an odd, 'same'-padded square conv")
    return data, layers


def _check_stem(enc: nn.Module) -> None:
    conv, pool = enc.conv1, enc.maxpool
    if conv.padding != tuple(k // 2 for k in conv.kernel_size) or conv.bias is not None:
        raise UnsupportedModelError(f"smp Unet encoder stem {conv}: only a 'same'-padded conv without bias")
    stride = axes(pool.stride, 2)
    want = (tuple(2 * s - 1 for s in stride), tuple(s - 1 for s in stride))
    if (tuple(axes(pool.kernel_size, 2)), tuple(axes(pool.padding, 2))) != want or pool.ceil_mode:
        raise UnsupportedModelError(f"smp Unet encoder pool {pool}: only ResNet's 3x3, stride 2, padding 1")


def _unit_layers(unit: nn.Module, where: str, bottleneck: bool) -> list[nn.Module]:
    """A torchvision BasicBlock's or Bottleneck's layers: the body, then the projection."""
    convs = [unit.conv1, unit.conv2, *([unit.conv3] if bottleneck else [])]
    if any(c.groups != 1 or c.dilation != (1, 1) for c in convs):
        raise UnsupportedModelError(f"smp Unet {where}: grouped or dilated convs (ResNeXt, output_stride < 32)")
    out = [unit.conv1, unit.bn1, unit.conv2, unit.bn2, *([unit.conv3, unit.bn3] if bottleneck else [])]
    if unit.downsample is not None:
        out += list(unit.downsample)
    return out


def _decoder_block(block: nn.Module, where: str) -> tuple[list[nn.Module], nn.Module]:
    """A decoder block's layers (conv, norm, conv, norm) and its norm."""
    for name in ("attention1", "attention2"):
        if not isinstance(getattr(block, name).attention, nn.Identity):
            raise UnsupportedModelError(
                f"smp Unet {where}.{name}: decoder_attention_type='scse' (squeeze-and-excitation) is not expressible"
            )
    out = []
    for conv in (block.conv1, block.conv2):
        c, n, a = conv
        if isinstance(n, nn.Identity) or c.bias is not None:
            raise UnsupportedModelError(
                f"smp Unet {where}: decoder_use_norm=False gives the decoder's convs a bias and the encoder's none; "
                "unetgen has one conv bias: use batchnorm or instancenorm"
            )
        if not isinstance(a, nn.ReLU):
            raise UnsupportedModelError(f"smp Unet {where}: norm {type(n).__name__} with its own activation")
        out += [c, n]
    return out, block.conv1[1]
