"""`convert(module)`: an instantiated peer as a unetgen `UNet` with the peer's weights and buffers.

The peer's class is looked up in the registry (`unetgen.interop.registry`); its converter
(`unetgen.interop.nnunet`, `unetgen.interop.monai`) gives the config and the peer's parametric
layers in unetgen's order; the model is built empty and the layers are checked pair by pair and
copied (`unetgen.interop.weights`). Never an approximation: anything unetgen cannot express
exactly raises `UnsupportedModelError` naming the layer and the missing feature.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config.diagnostics import short_repr
from ..config.unet_config import UNetConfig
from ..model.unet import UNet
from . import monai, nnunet  # noqa: F401  (importing them registers their converters)
from .options import UnsupportedModelError, validated
from .registry import find_converter
from .weights import copy_paired, unetgen_layers

__all__ = ["convert"]


def convert(module: nn.Module, *, ignore_dropout: bool = False) -> UNet:
    """A unetgen `UNet` computing the same function as the peer `module`, with its weights and
    buffers copied (batch-norm running statistics too), in the peer's dtype and device.

    Supported: nnU-Net's (dynamic_network_architectures) `PlainConvUNet`, `ResidualEncoderUNet` and
    `ResidualUNet` (one residual unit per decoder stage), MONAI's `BasicUNet` and `DynUNet`: the
    classes registered with `unetgen.interop.registry.register_converter`. Anything unetgen cannot
    express exactly raises `UnsupportedModelError` naming the layer and the missing feature.
    Dropout is refused unless `ignore_dropout=True`, which drops it: eval-mode outputs are then
    still exact, training differs. The result is in the peer's train/eval mode."""
    converter = find_converter(module)
    name = type(module).__name__
    data, peer_layers = converter(module, ignore_dropout)
    target = _empty_like(validated(data, name), module)
    layers = unetgen_layers(target)
    covered = {id(t) for m in layers for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]}
    if left := [n for n, t in [*target.named_parameters(), *target.named_buffers()] if id(t) not in covered]:
        raise UnsupportedModelError(f"{name}: unetgen tensors {short_repr(left)} have no counterpart in the peer")
    copy_paired(peer_layers, layers, name)
    target.train(module.training)
    return target


def _empty_like(config: UNetConfig, peer: nn.Module) -> UNet:
    """The model of `config`, uninitialised, on the peer's device and in its dtype."""
    ref = next(iter(peer.parameters()), None)
    with torch.device("meta"):
        target = UNet(config)
    target = target.to_empty(device=ref.device if ref is not None else "cpu")
    return target.to(ref.dtype) if ref is not None else target
