"""`convert(module)`: an instantiated peer as a unetgen `UNet` with the peer's weights and buffers.

The peer's class is looked up in the registry (`unetgen.interop.registry`); its converter
(`unetgen.interop.nnunet`, `unetgen.interop.monai`, `unetgen.interop.smp`) gives the config and the peer's parametric
layers in unetgen's order; the model is built empty and the layers are checked pair by pair and
copied (`unetgen.interop.weights`). Never an approximation: anything unetgen cannot express
exactly raises `UnsupportedModelError` naming the layer and the missing feature.

A peer's layers are not always its function: forward hooks and a forward replaced on an instance
are refused up front (the converted model could not run them), and after the copy both networks
run one probe input (the smallest valid input, in eval mode, in the peer's dtype and device) and
must agree to round-off, else `UnsupportedModelError` names the largest difference and the
likely causes (a subclass or patched class that overrides forward, a swapped submodule).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from ..analysis import shapes
from ..analysis.ops import network_ops, op_shapes
from ..config.diagnostics import short_repr
from ..config.unet_config import UNetConfig
from ..model.unet import UNet
from ..reprs import short_text
from . import monai, nnunet, pytorch3dunet, smp  # noqa: F401  (importing them registers their converters)
from .options import UnsupportedModelError, flag, validated
from .registry import find_converter, find_output
from .weights import check_outputs_agree, copy_paired, main_output, unetgen_layers

__all__ = ["MAX_PROBE_ELEMENTS", "check_same_function", "convert"]

MAX_PROBE_ELEMENTS = 2**27
"""Largest probe run that checks a conversion, in map elements summed over the model's ops at its
smallest input (real nnU-Net 3D networks need about 3e7); beyond it the probe is skipped with a
warning."""


def convert(module: nn.Module, *, ignore_dropout: bool = False) -> UNet:
    """A unetgen `UNet` computing the same function as the peer `module`, with its weights and
    buffers copied (batch-norm running statistics too), in the peer's dtype and device.

    Supported: nnU-Net's (dynamic_network_architectures) `PlainConvUNet`, `ResidualEncoderUNet` and
    `ResidualUNet` (one residual unit per decoder stage), MONAI's `BasicUNet`, `DynUNet`, `UNet` and
    `AttentionUnet`, segmentation_models_pytorch's `Unet` with a ResNet encoder: the classes
    registered with `unetgen.interop.registry.register_converter`. Anything unetgen cannot express
    exactly raises `UnsupportedModelError` naming the layer and the missing feature.
    Dropout is refused unless `ignore_dropout=True`, which drops it: eval-mode outputs are then
    still exact, training differs. The result is in the peer's train/eval mode."""
    if not isinstance(module, nn.Module):
        raise UnsupportedModelError(f"convert() takes a torch nn.Module, not {type(module).__name__}")
    flag(ignore_dropout, "ignore_dropout")
    converter = find_converter(module)
    name = type(module).__name__
    _refuse_hooks(module, name)
    try:
        data, peer_layers = converter(module, ignore_dropout)
        target = _empty_like(validated(data, name), module)
        layers = unetgen_layers(target)
        covered = {id(t) for m in layers for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]}
        if left := [n for n, t in [*target.named_parameters(), *target.named_buffers()] if id(t) not in covered]:
            raise UnsupportedModelError(f"{name}: unetgen tensors {short_repr(left)} have no counterpart in the peer")
        copy_paired(peer_layers, layers, name)
    except UnsupportedModelError:
        raise
    except (AttributeError, TypeError, IndexError, KeyError, ValueError, RuntimeError) as err:
        raise UnsupportedModelError(  # a peer changed after it was built: a submodule removed or replaced
            f"{name}: not the structure of the {name} its converter reads ({type(err).__name__}: "
            f"{short_text(str(err))}); convert the network as its library builds it"
        ) from None
    target.train(module.training)
    check_same_function(module, target, name)
    return target


def _refuse_hooks(module: nn.Module, name: str) -> None:
    """Forward hooks and pre-hooks, and a forward set on an instance, are code the converted
    model would not run: refused, naming the modules."""
    hooked = [n or "(the network)" for n, m in module.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    if hooked:
        raise UnsupportedModelError(
            f"{name}: forward hooks or pre-hooks are registered on {short_repr(hooked)}; a hook can change what the "
            "network computes and the converted model would not run it: remove them (handle.remove()) and convert"
        )
    replaced = [n or "(the network)" for n, m in module.named_modules() if "forward" in vars(m)]
    if replaced:
        raise UnsupportedModelError(
            f"{name}: forward is replaced on the instance of {short_repr(replaced)}; the converted model computes "
            "the layers' own forward, not the replacement: delete it (del module.forward) or convert the original"
        )


def check_same_function(peer: nn.Module, target: UNet, name: str) -> None:
    """Run `peer` and `target` on one probe input (the smallest valid input of `target`, batch 1,
    eval mode, their dtype and device; modes restored) and compare their main outputs to
    round-off; `UnsupportedModelError` naming the largest difference otherwise."""
    config = target.config
    size = shapes.min_input_shape(config)
    work = sum(
        op.out_channels * math.prod(s) for op, s in zip(network_ops(config), op_shapes(config, size), strict=True)
    )
    ref = next(iter(target.parameters()), None)
    if ref is None or ref.device.type == "meta":
        return  # no values to compare
    if work > MAX_PROBE_ELEMENTS:
        warnings.warn(
            f"convert({name}): not checked on a probe input: the smallest input {size} needs about {work:.2e} "
            f"map elements, more than MAX_PROBE_ELEMENTS={MAX_PROBE_ELEMENTS:.2e} (unetgen.interop.convert)",
            stacklevel=3,
        )
        return
    x = torch.randn((1, config.in_channels, *size), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x.to(device=ref.device, dtype=ref.dtype)
    theirs = main_output(peer, x, name, find_output(peer))
    check_outputs_agree(theirs, main_output(target, x, "the converted model"), name, tuple(x.shape))


def _empty_like(config: UNetConfig, peer: nn.Module) -> UNet:
    """The model of `config`, uninitialised, on the peer's device and in its dtype."""
    ref = next(iter(peer.parameters()), None)
    with torch.device("meta"):
        target = UNet(config)
    target = target.to_empty(device=ref.device if ref is not None else "cpu")
    return target.to(ref.dtype) if ref is not None else target
