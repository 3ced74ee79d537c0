"""The converter of nnU-Net's networks (dynamic_network_architectures): `PlainConvUNet`,
`ResidualEncoderUNet` and `ResidualUNet` (one residual unit per decoder stage).

A network is read into the `NNUNetSpec` a plans file would give (`unetgen.interop.plans`), and
its parametric layers are listed in the order unetgen's model runs its own: the stem, the encoder
stages, then the decoder stages as nnU-Net runs them (the deepest first), each after its
transposed conv and followed by its deep-supervision head.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from ..config.diagnostics import short_repr
from .options import UnsupportedModelError, activation_option, axes, norm_from_module
from .plans import NNUNetSpec
from .registry import Converted, register_converter
from .weights import PAIRED

__all__ = ["from_nnunet_module"]

_NORMS = (_BatchNorm, _InstanceNorm, nn.GroupNorm)


@register_converter("dynamic_network_architectures", "PlainConvUNet", "ResidualEncoderUNet", "ResidualUNet")
def from_nnunet_module(net: nn.Module, ignore_dropout: bool) -> Converted:
    """The config data and the parametric layers (in unetgen's order) of an nnU-Net network."""
    res_decoder = _residual_decoder(net)
    residual = type(net).__name__ in ("ResidualEncoderUNet", "ResidualUNet")
    dims = _conv_dims(net)
    dropout = {"rate": 0.0} if residual or ignore_dropout else _plain_dropout(net, dims)
    ignore_dropout = ignore_dropout or not residual  # a plain net's dropout is carried
    stem = _stem_layers(net, ignore_dropout) if residual else []
    stages = _encoder_units(net, residual, ignore_dropout)
    layers = [*stem, *(m for units in stages for unit in units for m in unit)]
    layers += _decoder_layers(net, res_decoder, ignore_dropout)
    spec = _spec(net, dims, layers, [len(units) for units in stages], residual, res_decoder)
    return spec.config_dict() | {"dropout": dropout}, layers


def _plain_dropout(net: nn.Module, dims: int) -> dict[str, Any]:
    """PlainConvUNet's `dropout_op`: after every conv of every stage (ConvDropoutNormReLU: conv,
    dropout, norm, non-linearity), carried as `placement: every_conv, after: conv`. (A residual
    unit's second conv has none: refused there, see `_cdnr_layers`.)"""
    found = set()
    for m in net.modules():
        if type(m).__name__ == "ConvDropoutNormReLU":
            drop = getattr(m, "dropout", None)
            found.add(None if drop is None or drop.p == 0 else (type(drop), drop.p))
    if found == {None}:
        return {"rate": 0.0}
    channel = {1: nn.Dropout1d, 2: nn.Dropout2d, 3: nn.Dropout3d}[dims]
    if len(found) > 1 or next(iter(found))[0] not in (nn.Dropout, channel):
        raise UnsupportedModelError(
            f"{type(net).__name__}: dropout_op {short_repr(sorted(map(str, found)))}: unetgen carries one nn.Dropout "
            f"or {channel.__name__} after every conv"
        )
    cls, p = found.pop()
    return {"rate": p, "placement": "every_conv", "after": "conv", "spatial": cls is channel}


def _conv_dims(net: nn.Module) -> int:
    dims = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}.get(net.encoder.conv_op)
    if dims is None:
        raise UnsupportedModelError(
            f"{type(net).__name__}.encoder.conv_op {net.encoder.conv_op!r} is not a plain Conv1d/2d/3d"
        )
    return dims


def _spec(
    net: nn.Module, dims: int, layers: list[nn.Module], units: list[int], residual: bool, res_decoder: bool
) -> NNUNetSpec:
    """The network normalised, from its encoder and decoder settings and its parametric `layers`."""
    enc, dec = net.encoder, net.decoder
    where = f"{type(net).__name__}.encoder"
    d = len(enc.stages) - 1
    return NNUNetSpec(
        dims=dims,
        in_channels=layers[0].in_channels,
        out_channels=dec.num_classes,
        features=[int(c) for c in enc.output_channels],
        kernels=[axes(k, dims) for k in enc.kernel_sizes],
        strides=[axes(s, dims) for s in enc.strides],
        units=units,
        decoder_convs=[2 if res_decoder else len(dec.stages[d - 1 - i].convs) for i in range(d)],
        bias=bool(enc.conv_bias),
        norm=norm_from_module(next((m for m in layers if isinstance(m, _NORMS)), None), where),
        activation=_nonlin_from_class(enc.nonlin, enc.nonlin_kwargs or {}, where),
        nonlin_first=_nonlin_first(net),
        residual=residual,
        residual_decoder=res_decoder,
        deep_supervision=bool(dec.deep_supervision),
    )


def _residual_decoder(net: nn.Module) -> bool:
    """Whether the decoder is ResidualUNet's (UNetResDecoder) rather than a UNetDecoder."""
    kind = type(net.decoder).__name__
    if kind not in ("UNetDecoder", "UNetResDecoder"):
        raise UnsupportedModelError(f"{type(net).__name__}.decoder is a {kind}; UNetDecoder or UNetResDecoder only")
    return kind == "UNetResDecoder"


def _stem_layers(net: nn.Module, ignore_dropout: bool) -> list[nn.Module]:
    """The residual encoder's stem: one conv to the level-0 channels, as unetgen's."""
    name, enc = type(net).__name__, net.encoder
    if enc.stem is None:
        raise UnsupportedModelError(f"{name}.encoder has no stem (disable_default_stem=True)")
    if enc.stem.convs[0].conv.out_channels != enc.output_channels[0] or len(enc.stem.convs) != 1:
        raise UnsupportedModelError(f"{name}.encoder.stem: stem_channels != features_per_stage[0]")
    return _cdnr_layers(enc.stem.convs[0], ignore_dropout, f"{name}.encoder.stem")


def _encoder_units(net: nn.Module, residual: bool, ignore_dropout: bool) -> list[list[list[nn.Module]]]:
    """Per encoder stage, per unit (a conv, or a residual block), its parametric layers."""
    name = type(net).__name__
    out = []
    for s, stage in enumerate(net.encoder.stages):
        where = f"{name}.encoder.stages[{s}]"
        mods = list(stage) if isinstance(stage, nn.Sequential) and not hasattr(stage, "blocks") else [stage]
        if len(mods) != 1 or (not residual and not hasattr(mods[0], "convs")):
            raise UnsupportedModelError(f"{where}: pooling before the convs (pool='max'/'avg') is not supported")
        if residual:
            blocks = mods[0].blocks
            out.append(
                [_basic_block_layers(blk, ignore_dropout, f"{where}.blocks[{b}]") for b, blk in enumerate(blocks)]
            )
        else:
            out.append([_cdnr_layers(cdnr, ignore_dropout, where) for cdnr in mods[0].convs])
    return out


def _decoder_layers(net: nn.Module, res_decoder: bool, ignore_dropout: bool) -> list[nn.Module]:
    """The decoder stages as they run (stage 0 is the deepest), each with its transposed conv
    before and its deep-supervision head after, then the output head."""
    name, dec = type(net).__name__, net.decoder
    d = len(net.encoder.stages) - 1
    layers: list[nn.Module] = []
    for s in range(d):
        where = f"{name}.decoder.stages[{s}]"
        layers.append(dec.transpconvs[s])
        if res_decoder:
            layers += _residual_decoder_stage(dec.stages[s], ignore_dropout, where)
        else:
            for cdnr in dec.stages[s].convs:
                layers += _cdnr_layers(cdnr, ignore_dropout, where)
        if dec.deep_supervision and s < d - 1:
            layers.append(dec.seg_layers[s])
    layers.append(dec.seg_layers[-1])
    return layers


def _residual_decoder_stage(stage: nn.Module, ignore_dropout: bool, where: str) -> list[nn.Module]:
    if len(stage.blocks) != 1:
        raise UnsupportedModelError(
            f"{where}: {len(stage.blocks)} residual units; a unetgen decoder level is one block "
            "(n_conv_per_stage_decoder=1 gives one BasicBlockD of 2 convs)"
        )
    return _basic_block_layers(stage.blocks[0], ignore_dropout, where)


def _basic_block_layers(blk: nn.Module, ignore_dropout: bool, where: str) -> list[nn.Module]:
    """The parametric layers of nnU-Net's BasicBlockD in unetgen's order: body, shortcut, activation."""
    if type(blk).__name__ != "BasicBlockD":
        raise UnsupportedModelError(f"{where}: {type(blk).__name__}: only BasicBlockD units are supported")
    if blk.apply_stochastic_depth or blk.apply_se:
        raise UnsupportedModelError(f"{where}: stochastic depth / squeeze-excitation are not supported")
    out = _cdnr_layers(blk.conv1, ignore_dropout, where) + _cdnr_layers(blk.conv2, ignore_dropout, where)
    if isinstance(blk.skip, nn.Sequential):
        out += [m for m in blk.skip.modules() if isinstance(m, PAIRED)]
    if isinstance(blk.nonlin2, nn.PReLU):  # unetgen's unit activates after the sum, last
        out.append(blk.nonlin2)
    return out


def _cdnr_layers(cdnr: nn.Module, ignore_dropout: bool, where: str) -> list[nn.Module]:
    """conv, norm and (a PReLU) non-linearity of nnU-Net's ConvDropoutNormReLU, in execution order."""
    drop = getattr(cdnr, "dropout", None)
    if drop is not None and drop.p > 0 and not ignore_dropout:
        raise UnsupportedModelError(
            f"{where}: dropout p={drop.p} after the first conv of each residual unit only (BasicBlockD's second "
            "conv has none); unetgen's dropout.placement every_conv drops out after every conv (convert(..., "
            "ignore_dropout=True) drops it: eval outputs stay exact)"
        )
    return [m for m in cdnr.all_modules if isinstance(m, PAIRED)]


def _nonlin_first(net: nn.Module) -> bool:
    """Whether the convs normalise after the non-linearity (nnU-Net's nonlin_first)."""
    for m in net.modules():
        if type(m).__name__ == "ConvDropoutNormReLU":
            kinds = [type(x) for x in m.all_modules]
            norm_at = next((i for i, k in enumerate(kinds) if issubclass(k, _NORMS)), None)
            return norm_at is not None and norm_at == len(kinds) - 1 and len(kinds) > 2
    return False


def _nonlin_from_class(cls: type | None, kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    return activation_option(None if cls is None else cls.__name__, kwargs, where)
