"""The converters of MONAI's `BasicUNet`, `DynUNet`, `UNet` and `AttentionUnet`, and the reason
for refusing its `CheckpointUNet`.

Each converter reads the network into unetgen config data and lists its parametric layers in the
order unetgen's model runs its own: the encoder levels, then the decoder levels from the deepest
(each: its up-sampling, its convs, its deep-supervision head), then the head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.dropout import _DropoutNd

from ..config.diagnostics import short_repr
from .options import UP_FIRST, UnsupportedModelError, activation_from_module, axes, norm_from_module, transpose_up
from .registry import Converted, register_converter, register_refusal
from .weights import PAIRED

__all__ = ["from_attention_unet", "from_basic_unet", "from_dynunet", "from_monai_unet"]

register_refusal(
    "monai",
    "CheckpointUNet",
    reason="wraps every level in activation-checkpointing wrappers, which unetgen does not copy: build "
    "monai.networks.nets.UNet with the same arguments, load the state dict, convert that, and set "
    "checkpointing: true on the config",
)

_DROPOUT_HINT = "(convert(..., ignore_dropout=True) drops it: eval outputs stay exact)"


def _adn(conv_block: nn.Module, where: str, ignore_dropout: bool) -> tuple[nn.Module | None, nn.Module | None]:
    """(norm, activation) of a MONAI `Convolution`; refuses dropout and a norm after the activation."""
    adn = getattr(conv_block, "adn", None)
    if adn is None:
        return None, None
    names = [n for n, _ in adn.named_children()]
    norm, drop, act = getattr(adn, "N", None), getattr(adn, "D", None), getattr(adn, "A", None)
    if drop is not None and getattr(drop, "p", 0) > 0 and not ignore_dropout:
        raise UnsupportedModelError(
            f"{where}: {type(drop).__name__}(p={drop.p}) after each conv; unetgen drops out after blocks "
            + _DROPOUT_HINT
        )
    if norm is not None and act is not None and names.index("N") > names.index("A"):
        raise UnsupportedModelError(f"{where}: ADN ordering {''.join(names)}: the norm after the activation")
    return norm, act


# =============================================================================================
# BasicUNet


@dataclass(frozen=True)
class _UpSampling:
    """One of BasicUNet's up-samplings: its parametric layers, its output channels and the
    unetgen `up` option it is."""

    layers: list[nn.Module]
    channels: int
    option: dict[str, Any]


@register_converter("monai", "BasicUNet")
def from_basic_unet(net: nn.Module, ignore_dropout: bool) -> Converted:
    """The config data and the parametric layers (in unetgen's order) of a MONAI BasicUNet."""
    levels = [net.conv_0, net.down_1.convs, net.down_2.convs, net.down_3.convs, net.down_4.convs]
    ups = [net.upcat_1, net.upcat_2, net.upcat_3, net.upcat_4]  # decoder level 0 first
    first = net.conv_0.conv_0
    dims = first.conv.weight.dim() - 2
    norm, act = _adn(first, "BasicUNet.conv_0.conv_0", True)  # dropout: carried below (_basic_unet_dropout)
    layers = []
    for i, two in enumerate(levels):
        layers += _two_convs(two, f"BasicUNet level {i}", True, act)
    _check_pooling(net, dims)
    features = [two.conv_1.conv.out_channels for two in levels]
    decoder = [up.convs.conv_1.conv.out_channels for up in ups]
    coarse = [*decoder[1:], features[4]]  # the map each decoder level up-samples
    samplings = [_up_sampling(up.upsample, f"BasicUNet.upcat_{i + 1}", dims, coarse[i]) for i, up in enumerate(ups)]
    for i in reversed(range(len(ups))):  # the deepest level first, as they run
        where = f"BasicUNet.upcat_{i + 1}"
        if samplings[i].option != samplings[0].option:
            raise UnsupportedModelError(f"{where}: mixed up-sampling modes")
        layers += samplings[i].layers + _two_convs(ups[i].convs, f"{where}.convs", True, act)
    layers.append(net.final_conv)
    data: dict[str, Any] = {
        "spatial_dims": dims,
        "in_channels": first.conv.in_channels,
        "out_channels": net.final_conv.out_channels,
        "depth": 4,
        "channels": features,
        "decoder_channels": decoder,
        "padding": "same",
        "norm": norm_from_module(norm, "BasicUNet"),
        "bias": first.conv.bias is not None,
        "activation": activation_from_module(act, "BasicUNet"),
        "dropout": _basic_unet_dropout([*levels, *(up.convs for up in ups)], ignore_dropout),
        "up_channels": [s.channels for s in samplings],
        "init": "torch",
        "up": samplings[0].option,
    }
    return data, layers


def _basic_unet_dropout(twos: list[nn.Module], ignore_dropout: bool) -> dict[str, Any]:
    """BasicUNet's `dropout`: in the ADN of every conv, after the step before its D (MONAI's
    default order NDA: after the norm), carried as `placement: every_conv`."""
    found = set()
    for two in twos:
        for conv in (two.conv_0, two.conv_1):
            adn = getattr(conv, "adn", None)
            names = [n for n, _ in adn.named_children()] if adn is not None else []
            drop = getattr(adn, "D", None)
            if drop is None or drop.p == 0:
                found.add(None)
                continue
            if type(drop) is not nn.Dropout:
                raise UnsupportedModelError(f"BasicUNet: dropout {type(drop).__name__}; only nn.Dropout is carried")
            before = names[: names.index("D")]
            after = {"N": "norm", "A": "activation"}[before[-1]] if before else "conv"
            found.add((drop.p, after))
    if found == {None} or ignore_dropout:
        return {"rate": 0.0}
    if len(found) > 1:
        raise UnsupportedModelError(f"BasicUNet: dropout differs between convs ({short_repr(sorted(map(str, found)))})")
    p, after = found.pop()
    return {"rate": p, "placement": "every_conv", "after": after}


def _two_convs(two: nn.Module, where: str, ignore_dropout: bool, act_ref: nn.Module | None) -> list[nn.Module]:
    """The parametric layers of a `TwoConv` (conv_0, conv_1)."""
    layers = []
    for j, conv in enumerate((two.conv_0, two.conv_1)):
        layers += _monai_conv_layers(conv, f"{where} conv {j}", ignore_dropout, act_ref)
    return layers


def _monai_conv_layers(conv: nn.Module, where: str, ignore_dropout: bool, act_ref: nn.Module | None) -> list[nn.Module]:
    norm, act = _adn(conv, where, ignore_dropout)
    if (act is None) != (act_ref is None) or (
        act is not None and activation_from_module(act, where) != activation_from_module(act_ref, where)
    ):
        raise UnsupportedModelError(f"{where}: activations differ between convs")
    out = [conv.conv] + ([norm] if norm is not None else [])
    if isinstance(act, nn.PReLU):
        out.append(act)
    return out


def _check_pooling(net: nn.Module, dims: int) -> None:
    for mp in (net.down_1.max_pooling, net.down_2.max_pooling, net.down_3.max_pooling, net.down_4.max_pooling):
        if tuple(axes(mp.kernel_size, dims)) != (2,) * dims or tuple(axes(mp.stride, dims)) != (2,) * dims:
            raise UnsupportedModelError(f"BasicUNet max pooling {mp}: only 2x2 pooling")


def _up_sampling(upsample: nn.Module, where: str, dims: int, coarse: int) -> _UpSampling:
    """A decoder level's `UpSample` (`coarse`: the channels it receives)."""
    children = dict(upsample.named_children())
    if "deconv" in children:
        return _deconv(children["deconv"], where, dims)
    if "upsample_non_trainable" in children:
        return _interpolation(children, where, dims, coarse)
    if "pixelshuffle" in children:
        return _pixelshuffle(children["pixelshuffle"], where, dims)
    raise UnsupportedModelError(f"{where}.upsample: {sorted(children)} is not a unetgen up-sampling")


def _deconv(t: nn.Module, where: str, dims: int) -> _UpSampling:
    if t.kernel_size != (2,) * dims or t.stride != (2,) * dims or any(t.padding) or any(t.output_padding):
        raise UnsupportedModelError(f"{where}.upsample: transposed conv other than kernel = stride = 2")
    return _UpSampling([t], t.out_channels, {"type": "transpose", "bias": True})


_LINEAR_MODES = ("linear", "bilinear", "trilinear")


def _interpolation(children: dict[str, nn.Module], where: str, dims: int, coarse: int) -> _UpSampling:
    """Interpolation, after a 1x1 conv (`preconv`) where the channels change."""
    pre = children.get("preconv")
    if "postconv" in children or (pre is not None and not isinstance(pre, _ConvNd)):
        raise UnsupportedModelError(f"{where}.upsample: custom pre/post conv is not supported")
    if pre is not None and (pre.kernel_size != (1,) * dims or pre.bias is None):
        raise UnsupportedModelError(f"{where}.upsample.preconv: only a 1x1 conv with bias")
    u = children["upsample_non_trainable"]
    if u.mode == "nearest":
        option: dict[str, Any] = {"type": "nearest", "conv": "when_channels_change"}
    elif u.mode in _LINEAR_MODES:
        option = {"type": "linear", "conv": "when_channels_change", "align_corners": bool(u.align_corners)}
    else:
        raise UnsupportedModelError(f"{where}.upsample: interpolation mode {u.mode!r}; only nearest or linear")
    if pre is None:
        return _UpSampling([], coarse, option)
    return _UpSampling([pre], pre.out_channels, option)


def _pixelshuffle(sub: nn.Module, where: str, dims: int) -> _UpSampling:
    conv, scale = sub.conv_block, sub.scale_factor
    if not isinstance(conv, _ConvNd) or conv.stride != (1,) * dims or conv.bias is None:
        raise UnsupportedModelError(f"{where}.upsample.pixelshuffle: only the default conv block (with bias)")
    k = conv.kernel_size[0]
    if conv.kernel_size != (k,) * dims or k % 2 == 0 or conv.padding != (k // 2,) * dims:
        raise UnsupportedModelError(f"{where}.upsample.pixelshuffle: conv {conv} is not an odd 'same' conv")
    if scale != 2 or conv.out_channels % scale**dims:
        raise UnsupportedModelError(f"{where}.upsample.pixelshuffle: scale_factor={scale}; only 2")
    pad_pool = not isinstance(sub.pad_pool, nn.Identity)
    # output channels c * 2**dims + j: unetgen's shuffle reads them the same way
    option = {"type": "pixelshuffle", "kernel_size": k, "pad_pool": pad_pool}
    return _UpSampling([conv], conv.out_channels // scale**dims, option)


# =============================================================================================
# DynUNet


@register_converter("monai", "DynUNet")
def from_dynunet(net: nn.Module, ignore_dropout: bool) -> Converted:
    """The config data and the parametric layers (in unetgen's order) of a MONAI DynUNet."""
    dims = net.spatial_dims
    strides = [axes(s, dims) for s in net.strides]
    _check_dynunet(net, strides, ignore_dropout)
    d = len(strides) - 1
    data: dict[str, Any] = {
        "spatial_dims": dims,
        "in_channels": net.in_channels,
        "out_channels": net.out_channels,
        "depth": d,
        "channels": [int(f) for f in net.filters],
        "kernel_size": [axes(k, dims) for k in net.kernel_size],
        "strides": strides[1:],
        "padding": "same",
        "norm": norm_from_module(net.input_block.norm1, "DynUNet"),
        "bias": False,
        "activation": activation_from_module(net.input_block.lrelu, "DynUNet"),
        "down": {"type": "first_conv"},
        "up": transpose_up(bool(net.trans_bias)),
        "decoder_kernel": "level_below",
        "dropout": {"rate": 0.0},
        "deep_supervision": list(range(1, net.deep_supr_num + 1)) if net.deep_supervision else [],
        "init": "torch",
    }
    if any(s != 1 for s in strides[0]):
        data["stem_stride"] = strides[0]
    if type(net.input_block).__name__ == "UnetResBlock":
        data["block"] = {"type": "residual", "shortcut": "projection"}
        data["decoder_block"] = "plain"
    data["merge"] = UP_FIRST
    return data, _dynunet_layers(net, d)


def _check_dynunet(net: nn.Module, strides: list[list[int]], ignore_dropout: bool) -> None:
    """What unetgen cannot express: up-sampling kernels other than the strides, a shared PReLU, dropout."""
    if [axes(k, net.spatial_dims) for k in net.upsample_kernel_size] != strides[1:]:
        raise UnsupportedModelError(
            f"DynUNet upsample_kernel_size={net.upsample_kernel_size} differs from strides[1:]={net.strides[1:]}: "
            "unetgen's transposed conv has kernel = stride"
        )
    if isinstance(net.input_block.lrelu, nn.PReLU):
        raise UnsupportedModelError(
            "DynUNet: its PReLU is one module shared by both convs of a block (and the residual sum); "
            "unetgen gives every activation its own parameters"
        )
    active = [m for m in net.modules() if isinstance(m, (_DropoutNd, nn.AlphaDropout)) and m.p > 0]
    if active and not ignore_dropout:
        raise UnsupportedModelError(
            f"DynUNet dropout={short_repr(net.dropout)}: dropout after every conv, the residual projections and "
            f"the output heads too; unetgen's dropout.placement every_conv leaves those out {_DROPOUT_HINT}"
        )


def _dynunet_layers(net: nn.Module, d: int) -> list[nn.Module]:
    """The encoder blocks, then the decoder levels as they run (`upsamples[0]` is the deepest),
    each with its deep-supervision head, then the output head."""
    layers: list[nn.Module] = []
    for i, blk in enumerate([net.input_block, *net.downsamples, net.bottleneck]):
        layers += _dyn_block_layers(blk, f"DynUNet level {i}")
    for k, up in enumerate(net.upsamples):
        i = d - 1 - k  # its decoder level
        layers.append(up.transp_conv.conv)
        layers += _dyn_block_layers(up.conv_block, f"DynUNet decoder level {i}")
        if net.deep_supervision and 1 <= i <= net.deep_supr_num:
            layers.append(net.deep_supervision_heads[i - 1].conv.conv)
    layers.append(net.output_block.conv.conv)
    return layers


def _dyn_block_layers(blk: nn.Module, where: str) -> list[nn.Module]:
    kind = type(blk).__name__
    if kind not in ("UnetBasicBlock", "UnetResBlock"):
        raise UnsupportedModelError(f"{where}: block {kind} is not supported")
    out = [blk.conv1.conv, blk.norm1, blk.conv2.conv, blk.norm2]
    if hasattr(blk, "conv3"):
        out += [blk.conv3.conv, blk.norm3]
    return [m for m in out if isinstance(m, PAIRED)]


# =============================================================================================
# UNet and AttentionUnet: MONAI's `Convolution` (conv + ADN) and `ResidualUnit`


@dataclass(frozen=True)
class _Adn:
    """What every `Convolution` of a network must share: its norm and activation options and
    whether the norm comes after the activation."""

    norm: dict[str, Any]
    activation: dict[str, Any]
    after: bool


def _adn_of(conv: nn.Module, where: str, ignore_dropout: bool) -> _Adn:
    norm, act = _adn_or_after(conv, where, ignore_dropout)
    names = [n for n, _ in conv.adn.named_children()]
    after = norm is not None and names.index("N") > names.index("A")
    return _Adn(norm_from_module(norm, where), activation_from_module(act, where), after)


def _adn_or_after(conv: nn.Module, where: str, ignore_dropout: bool) -> tuple[nn.Module | None, nn.Module | None]:
    """(norm, activation) of a MONAI `Convolution` (a norm after the activation allowed); dropout refused."""
    adn = getattr(conv, "adn", None)
    if adn is None:
        raise UnsupportedModelError(f"{where}: a conv without norm or activation where unetgen has them")
    drop = getattr(adn, "D", None)
    if drop is not None and getattr(drop, "p", 0) > 0 and not ignore_dropout:
        raise UnsupportedModelError(
            f"{where}: {type(drop).__name__}(p={drop.p}) after each conv; unetgen drops out after blocks "
            + _DROPOUT_HINT
        )
    return getattr(adn, "N", None), getattr(adn, "A", None)


def _conv_adn(conv: nn.Module, where: str, ignore_dropout: bool, ref: _Adn) -> list[nn.Module]:
    """The paired layers of a `Convolution` with its ADN, in unetgen's order (conv, then norm and
    PReLU in the order of the ADN); its norm and activation must be `ref`'s."""
    if _adn_of(conv, where, ignore_dropout) != ref:
        raise UnsupportedModelError(f"{where}: its norm or activation differs from the network's first conv's")
    norm, act = conv.adn.N if "N" in conv.adn._modules else None, getattr(conv.adn, "A", None)
    steps = [act, norm] if ref.after else [norm, act]
    return [conv.conv, *(m for m in steps if m is not None and isinstance(m, PAIRED))]


def _bare_conv(conv: nn.Module, where: str) -> nn.Module:
    """The conv of a `Convolution` built with conv_only."""
    if getattr(conv, "adn", None) is not None:
        raise UnsupportedModelError(f"{where}: norm or activation where MONAI's layer is a conv only")
    return conv.conv


def _isotropic(value: Any, dims: int, what: str) -> int:
    v = axes(value, dims)
    if len(set(v)) != 1:
        raise UnsupportedModelError(f"{what}={short_repr(value)}: unetgen's transposed convs have one kernel size")
    return v[0]


# ---------------------------------------------------------------------------------------------
# UNet


@register_converter("monai", "UNet")
def from_monai_unet(net: nn.Module, ignore_dropout: bool) -> Converted:
    """The config data and the parametric layers (in unetgen's order) of a MONAI UNet
    (`num_res_units` 0, or more: residual units in the encoder and after each up-sampling)."""
    dims, nru = int(net.dimensions), int(net.num_res_units)
    downs, ups, node = [], [], net.model
    while True:  # Sequential(down, SkipConnection(sub), up), down to the bottom layer
        down, skip, up = node
        downs.append(down)
        ups.append(up)
        sub = skip.submodule
        if isinstance(sub, nn.Sequential) and len(sub) == 3 and type(sub[1]).__name__ == "SkipConnection":
            node = sub
            continue
        bottom = sub
        break
    n = len(downs)  # depth: the bottom layer is the bottleneck, at the deepest level's resolution
    first = downs[0].conv.unit0 if nru > 0 else downs[0]
    ref = _adn_of(first, "UNet.model.0", ignore_dropout)
    strides = [axes(_first_conv(d, nru).stride, dims) for d in downs]
    kernel = list(_first_conv(downs[0], nru).kernel_size)
    up_k = _isotropic(net.up_kernel_size, dims, "UNet up_kernel_size")
    layers: list[nn.Module] = []
    for i, d in enumerate([*downs, bottom]):
        layers += _unet_down(d, f"UNet level {i}", nru, ignore_dropout, ref)
    for i in reversed(range(n - 1)):  # decoder level i up-samples with MONAI's up layer of level i + 1
        layers += _unet_up(ups[i + 1], f"UNet up layer {i + 1}", nru, ignore_dropout, ref, top=False)
    layers += _unet_up(ups[0], "UNet up layer 0", nru, ignore_dropout, ref, top=True)
    bias = _first_conv(downs[0], nru).bias is not None
    data: dict[str, Any] = {
        "spatial_dims": dims,
        "in_channels": int(net.in_channels),
        "out_channels": int(net.out_channels),
        "depth": n,
        "channels": [int(c) for c in net.channels[: n + 1]],
        "kernel_size": [kernel] * (n + 1),
        "strides": [*strides[1:], [1] * dims],
        "stem_stride": strides[0],
        "resample_bottleneck": False,
        "padding": "same",
        "down": {"type": "first_conv"},
        "convs_per_block": max(1, nru),
        "decoder_convs_per_block": 0,
        "block": {"type": "residual", "shortcut": "conv", "last_activation": "before_sum"} if nru else "plain",
        "decoder_block": "plain",
        "norm": ref.norm,
        "activation": ref.activation,
        "norm_position": "after_activation" if ref.after else "before_activation",
        "bias": bias,
        "up": {"type": "transpose", "kernel_size": up_k, "bias": bias, "norm_act": True, "residual_unit": nru > 0},
        "head": {"type": "transpose", "kernel_size": up_k, "bias": bias, "norm_act": nru > 0, "residual_unit": nru > 0},
        "dropout": {"rate": 0.0},
        "init": "torch",
    }
    return data, layers


def _first_conv(down: nn.Module, nru: int) -> nn.Module:
    """The first conv of a down layer: a `Convolution`'s, or a `ResidualUnit`'s first unit's."""
    return down.conv.unit0.conv if nru > 0 else down.conv


def _unet_down(d: nn.Module, where: str, nru: int, ignore_dropout: bool, ref: _Adn) -> list[nn.Module]:
    """A down (or the bottom) layer: a `Convolution`, or a `ResidualUnit` of `nru` convs and its
    shortcut (identity, or a conv)."""
    if nru == 0:
        return _conv_adn(d, where, ignore_dropout, ref)
    units = list(d.conv.children())
    if len(units) != nru:
        raise UnsupportedModelError(f"{where}: {len(units)} subunits but num_res_units={nru}")
    out = [m for j, u in enumerate(units) for m in _conv_adn(u, f"{where} unit {j}", ignore_dropout, ref)]
    return out + ([d.residual] if isinstance(d.residual, _ConvNd) else [])


def _unet_up(up: nn.Module, where: str, nru: int, ignore_dropout: bool, ref: _Adn, *, top: bool) -> list[nn.Module]:
    """An up layer: a transposed `Convolution` (conv only at the top without residual units),
    then with `nru` > 0 a one-conv `ResidualUnit` (conv only at the top) with identity shortcut."""
    if nru == 0:
        return [_bare_conv(up, where)] if top else _conv_adn(up, where, ignore_dropout, ref)
    t, ru = up
    units = list(ru.conv.children())
    if len(units) != 1 or not isinstance(ru.residual, nn.Identity):
        raise UnsupportedModelError(f"{where}: the residual unit after up-sampling is not one conv with identity")
    unit = [_bare_conv(units[0], f"{where} unit")] if top else _conv_adn(units[0], f"{where} unit", ignore_dropout, ref)
    return _conv_adn(t, where, ignore_dropout, ref) + unit


# ---------------------------------------------------------------------------------------------
# AttentionUnet


@register_converter("monai", "AttentionUnet")
def from_attention_unet(net: nn.Module, ignore_dropout: bool) -> Converted:
    """The config data and the parametric layers (in unetgen's order) of a MONAI AttentionUnet:
    batch norm and ReLU everywhere but the conv after each merge (instance norm and PReLU)."""
    dims = int(net.dimensions)
    head, layer, reduce = net.model
    blocks, attention = [head], []
    while True:  # AttentionLayer(submodule=Sequential(ConvBlock, AttentionLayer) | ConvBlock)
        attention.append(layer)
        sub = layer.submodule
        if isinstance(sub, nn.Sequential):
            blocks.append(sub[0])
            layer = sub[1]
            continue
        blocks.append(sub)
        break
    n = len(attention)
    ref = _adn_of(head.conv[0], "AttentionUnet.model.0", ignore_dropout)
    merge_ref = _adn_of(attention[0].merge, "AttentionUnet merge conv", ignore_dropout)
    layers: list[nn.Module] = []
    for i, blk in enumerate(blocks):
        for j, conv in enumerate(blk.conv):
            layers += _conv_adn(conv, f"AttentionUnet level {i} conv {j}", ignore_dropout, ref)
    for i in reversed(range(n)):
        att, where = attention[i], f"AttentionUnet decoder level {i}"
        layers += _conv_adn(att.upconv.up, f"{where} up", ignore_dropout, ref)
        gate = att.attention
        skip_channels = blocks[i].conv[-1].conv.out_channels
        if gate.W_x[0].conv.out_channels != max(1, skip_channels // 2):
            raise UnsupportedModelError(f"{where}: attention channels other than half the skip's")
        for branch in (gate.W_g, gate.W_x, gate.psi):
            layers += [_bare_conv(branch[0], f"{where} gate"), branch[1]]
        layers += _conv_adn(att.merge, f"{where} merge conv", ignore_dropout, merge_ref)
    layers.append(_bare_conv(reduce, "AttentionUnet output conv"))
    up_k = _isotropic(attention[0].upconv.up.conv.kernel_size, dims, "AttentionUnet up_kernel_size")
    kernels = [list(b.conv[0].conv.kernel_size) for b in blocks]
    if any(list(a.merge.conv.kernel_size) != kernels[i] for i, a in enumerate(attention)):
        raise UnsupportedModelError(
            f"AttentionUnet kernel_size={short_repr(net.kernel_size)}: its merge convs are 3x3 whatever kernel_size "
            "says, and unetgen's decoder convs take their level's kernel; only kernel_size=3 converts"
        )
    data: dict[str, Any] = {
        "spatial_dims": dims,
        "in_channels": int(net.in_channels),
        "out_channels": int(net.out_channels),
        "depth": n,
        "channels": [int(b.conv[-1].conv.out_channels) for b in blocks],
        "kernel_size": kernels,
        "strides": [axes(b.conv[0].conv.stride, dims) for b in blocks[1:]],
        "padding": "same",
        "down": {"type": "first_conv"},
        "decoder_convs_per_block": 1,
        "norm": ref.norm,
        "activation": ref.activation,
        "decoder_norm": merge_ref.norm,
        "decoder_activation": merge_ref.activation,
        "norm_position": "after_activation" if ref.after else "before_activation",
        "bias": head.conv[0].conv.bias is not None,
        "merge": {"type": "attention", "psi_norm": True, "branch_order": "gate_first"},
        "up": {"type": "transpose", "kernel_size": up_k, "norm_act": True},
        "dropout": {"rate": 0.0},
        "init": "torch",
    }
    if merge_ref.after != ref.after:
        raise UnsupportedModelError("AttentionUnet: the merge convs order norm and activation unlike the others")
    return data, layers
