"""The converter of pytorch-3dunet's networks (`pytorch3dunet.unet3d.model`): `UNet3D`, `UNet2D`,
`ResidualUNet3D`, `ResidualUNet2D` and `ResidualUNetSE3D`.

The network is read from its modules (not from its constructor's arguments): every `SingleConv`
spells its `layer_order` in the names of its children (`conv`, `groupnorm`, `batchnorm`, `ReLU`,
`LeakyReLU`, `ELU`, `dropout`, `dropout2d`), which map onto `norm_position`, `activation` and
`dropout` (`placement: every_conv`, `after` the step before the `d`). pytorch-3dunet's GroupNorm
falls back to one group where a layer has fewer channels than `num_groups`: `fewer_channels:
one_group`. Its `ResNetBlock` maps its input by a 1x1 conv (with bias) where the channels change
and adds it to the two convs' output: `shortcut: input_projection`. Its `TransposeConvUpsampling`
is a transposed conv with kernel 3, padding 1 and no output padding, resized (nearest) to the
skip's size: `up: {type: transpose, kernel_size: 3, size_by: nearest_resize}`. Its `ResNetBlock`
activates the sum with its own `non_linearity` (LeakyReLU 0.1 in the `l` orders, whose convs use
0.01): `post_activation` where it differs. `ResNetBlockSE` ends each block in its `se_module`:
`excitation: {type: scse, combine: max}` (`ChannelSpatialSELayer3D`), `cse` or `sse`, its
reduction ratio (1) carried; its `nn.Linear` layers pair with unetgen's `ChannelLinear`.

pytorch-3dunet applies its `final_activation` (sigmoid or softmax, `is_segmentation=True`) in
its forward, in training and eval mode alike; the converted model computes the logits (the
second value of pytorch-3dunet's ``forward(x, return_logits=True)``), which is what the probe
run compares: apply ``torch.sigmoid`` or ``torch.softmax(dim=1)`` to them for the probabilities.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.modules.conv import _ConvNd

from .options import UnsupportedModelError, activation_from_module, axes, norm_from_module
from .registry import Converted, register_converter
from .weights import PAIRED

__all__ = ["from_pytorch3dunet", "pytorch3dunet_logits"]

_STEP = {
    "conv": "c",
    "groupnorm": "g",
    "batchnorm": "b",
    "ReLU": "r",
    "LeakyReLU": "l",
    "ELU": "e",
    "dropout": "d",
    "dropout2d": "D",
}
_AFTER = {"c": "conv", "g": "norm", "b": "norm", "r": "activation", "l": "activation", "e": "activation"}


def pytorch3dunet_logits(net: nn.Module, x: Any) -> Any:
    """pytorch-3dunet's logits: the output before its `final_activation`."""
    return net(x, return_logits=True)[1]


@register_converter(
    "pytorch3dunet", "UNet3D", "UNet2D", "ResidualUNet3D", "ResidualUNet2D", "ResidualUNetSE3D",
    output=pytorch3dunet_logits,
)  # fmt: skip
def from_pytorch3dunet(net: nn.Module, ignore_dropout: bool) -> Converted:
    """The config data and the parametric layers (in unetgen's order) of a pytorch-3dunet U-Net."""
    name = type(net).__name__
    encoders, decoders = list(net.encoders), list(net.decoders)
    depth = len(encoders) - 1
    if depth < 1 or len(decoders) != depth:
        raise UnsupportedModelError(f"{name}: {len(encoders)} encoders and {len(decoders)} decoders")
    blocks = [e.basic_module for e in encoders] + [d.basic_module for d in reversed(decoders)]  # decoder level 0 first
    kinds = {type(b).__name__ for b in blocks}
    if kinds not in ({"DoubleConv"}, {"ResNetBlock"}, {"ResNetBlockSE"}):
        raise UnsupportedModelError(f"{name}: basic modules {sorted(kinds)}; DoubleConv, ResNetBlock or ResNetBlockSE")
    residual = "DoubleConv" not in kinds
    units = [_unit(b, residual, f"{name}.{_where(i, depth)}") for i, b in enumerate(blocks)]
    singles = [s for u in units for s in u["singles"]]
    dims = net.final_conv.weight.dim() - 2
    data: dict[str, Any] = {
        "spatial_dims": dims,
        "in_channels": units[0]["in_channels"],
        "out_channels": net.final_conv.out_channels,
        "depth": depth,
        "channels": [u["channels"] for u in units[: depth + 1]],
        "decoder_channels": [u["channels"] for u in units[depth + 1 :]],
        "padding": "same",
        "init": "torch",
        **_layer_order(singles, name, ignore_dropout),
        **_kernel(singles, dims, depth, name),
    }
    if residual:
        data["block"] = {"type": "residual", "shortcut": "input_projection"}
        data["block"] |= _post_activation(units, data["activation"], name)
        data["block"] |= _excitation(units, name)
    data |= _down(encoders, dims, name)
    ups, up_data = _up(net, decoders, dims, data["strides"], name)
    data |= up_data
    if net.final_conv.kernel_size != (1,) * dims or net.final_conv.bias is None:
        raise UnsupportedModelError(f"{name}.final_conv: {net.final_conv}; only a 1x1 conv with bias")
    layers: list[nn.Module] = [m for u in units[: depth + 1] for m in u["layers"]]
    for level in reversed(range(depth)):  # as they run: the deepest first
        layers += ups[level] + units[depth + 1 + level]["layers"]
    layers.append(net.final_conv)
    return data, layers


def _where(i: int, depth: int) -> str:
    return f"encoders[{i}]" if i <= depth else f"decoders[{2 * depth - i}]"


def _unit(block: nn.Module, residual: bool, where: str) -> dict[str, Any]:
    """A basic module's input channels, per-conv output channels, SingleConvs and parametric layers."""
    if not residual:
        singles = [block.SingleConv1, block.SingleConv2]
        convs = [_conv_of(s, where) for s in singles]
        chans: Any = [c.out_channels for c in convs]
        layers = [m for s in singles for m in s.children() if isinstance(m, PAIRED)]
        return {"in_channels": convs[0].in_channels, "channels": chans, "singles": singles, "layers": layers}
    singles = [block.conv2, block.conv3]
    convs = [_conv_of(s, where) for s in singles]
    project = block.conv1
    if isinstance(project, nn.Identity):
        cin, layers = convs[0].in_channels, []
    elif isinstance(project, _ConvNd) and project.kernel_size == (1,) * (project.weight.dim() - 2):
        cin, layers = project.in_channels, [project]
        if project.bias is None or project.out_channels != convs[0].in_channels:
            raise UnsupportedModelError(f"{where}.conv1: {project} is not the 1x1 projection with bias")
    else:
        raise UnsupportedModelError(f"{where}.conv1: {type(project).__name__} is not a 1x1 conv or the identity")
    layers += [m for s in singles for m in s.children() if isinstance(m, PAIRED)]
    se = getattr(block, "se_module", None)  # ResNetBlockSE: after the sum's activation
    if se is not None:
        layers += _se_layers(se, convs[-1].out_channels, where)
    return {"in_channels": cin, "channels": convs[-1].out_channels, "singles": singles, "layers": layers,
            "post_act": block.non_linearity, "se": se, "where": where}  # fmt: skip


def _se_layers(se: nn.Module, channels: int, where: str) -> list[nn.Module]:
    """The parametric layers of pytorch-3dunet's squeeze-excitation module in unetgen's order
    (cSE's two linear layers, then sSE's 1x1 conv), checked to be what its constructor builds."""
    match type(se).__name__:
        case "ChannelSELayer3D" | "SpatialSELayer3D":
            parts = [se]
        case "ChannelSpatialSELayer3D":
            parts = [se.cSE, se.sSE]
        case kind:
            raise UnsupportedModelError(f"{where}.se_module: {kind}; ChannelSELayer3D, SpatialSELayer3D or both")
    out: list[nn.Module] = []
    for part in parts:
        if type(part).__name__ == "ChannelSELayer3D":
            fcs, r = [part.fc1, part.fc2], part.reduction_ratio
            hidden = max(1, channels // r)
            shapes = [(fc.in_features, fc.out_features, fc.bias is not None) for fc in fcs]
            if shapes != [(channels, hidden, True), (hidden, channels, True)]:
                raise UnsupportedModelError(f"{where}.se_module: {part} is not the cSE of {channels} channels, r={r}")
            out += fcs
        else:
            conv = part.conv
            if conv.out_channels != 1 or conv.kernel_size != (1, 1, 1) or conv.bias is None:
                raise UnsupportedModelError(f"{where}.se_module: {part} is not the sSE's 1x1 conv to one channel")
            out.append(conv)
    return out


def _conv_of(single: nn.Module, where: str) -> nn.Module:
    conv = getattr(single, "conv", None)
    if not isinstance(conv, _ConvNd) or conv.transposed:
        raise UnsupportedModelError(f"{where}: a SingleConv without its conv")
    return conv


def _order(single: nn.Module, where: str) -> str:
    """The layer_order of a `SingleConv`, from its children's names."""
    names = [n for n, _ in single.named_children()]
    if unknown := [n for n in names if n not in _STEP]:
        raise UnsupportedModelError(f"{where}: layers {unknown} are not pytorch-3dunet's create_conv layers")
    return "".join(_STEP[n] for n in names)


def _layer_order(singles: list[nn.Module], name: str, ignore_dropout: bool) -> dict[str, Any]:
    """norm, norm_position, bias, activation and dropout of the SingleConvs (all of one layer_order;
    a residual unit's second conv without the activation)."""
    orders = {_order(s, name) for s in singles}
    full = max(orders, key=len)
    if any(o != full and o != _without_activation(full) for o in orders):
        raise UnsupportedModelError(f"{name}: layer orders {sorted(orders)} differ between convs")
    kinds = (("c", "c"), ("n", "gb"), ("a", "rle"), ("d", "dD"))
    counts = {k: sum(full.count(ch) for ch in chars) for k, chars in kinds}
    if counts["c"] != 1 or counts["n"] > 1 or counts["a"] > 1 or counts["d"] > 1:
        raise UnsupportedModelError(
            f"{name}: layer_order {full!r}: unetgen runs one conv with at most one norm, one activation and one dropout"
        )
    if counts["a"] == 0:
        raise UnsupportedModelError(f"{name}: layer_order {full!r} has no activation; unetgen activates every conv")
    first = singles[0]
    modules = dict(first.named_children())
    conv = modules["conv"]
    act = next(m for n, m in modules.items() if _STEP[n] in "rle")
    norm = next((m for n, m in modules.items() if _STEP[n] in "gb"), None)
    out: dict[str, Any] = {"bias": conv.bias is not None, "activation": activation_from_module(act, name)}
    out |= _norm(singles, norm, name)
    if norm is not None:
        c, n, a = (full.index("c"), *(next(full.index(ch) for ch in chars if ch in full) for chars in ("gb", "rle")))
        out["norm_position"] = "before_conv" if n < c else "before_activation" if n < a else "after_activation"
    out["dropout"] = _dropout(singles, full, name, ignore_dropout)
    return out


def _without_activation(order: str) -> str:
    for ch in "rel":
        order = order.replace(ch, "")
    return order


def _norm(singles: list[nn.Module], norm: nn.Module | None, name: str) -> dict[str, Any]:
    """The norm option: GroupNorm's num_groups is the largest of its layers', with pytorch-3dunet's
    fallback to one group on narrower layers (each layer's groups are checked when copying)."""
    if norm is None:
        return {"norm": {"type": "none"}}
    if not isinstance(norm, nn.GroupNorm):
        return {"norm": norm_from_module(norm, name)}
    groups = max(m.num_groups for s in singles for m in s.children() if isinstance(m, nn.GroupNorm))
    option = norm_from_module(norm, name) | {"num_groups": groups}
    if groups > 1:
        option["fewer_channels"] = "one_group"
    return {"norm": option}


def _dropout(singles: list[nn.Module], order: str, name: str, ignore_dropout: bool) -> dict[str, Any]:
    drops = [m for s in singles for m in s.children() if isinstance(m, (nn.Dropout, nn.Dropout2d))]
    if not drops or ignore_dropout or all(d.p == 0 for d in drops):
        return {"rate": 0.0}
    at = next(order.index(ch) for ch in "dD" if ch in order)
    if at == 0:
        raise UnsupportedModelError(f"{name}: layer_order {order!r} drops out before every other layer")
    rates = {d.p for d in drops}
    if len(rates) > 1:
        raise UnsupportedModelError(f"{name}: dropout rates {sorted(rates)} differ between convs; unetgen has one rate")
    # 'D' is nn.Dropout2d: per channel in 2D, and on a 5-D input torch drops whole channels as Dropout3d does
    spatial = isinstance(drops[0], nn.Dropout2d)
    return {"rate": drops[0].p, "placement": "every_conv", "after": _AFTER[order[at - 1]], "spatial": spatial}


def _kernel(singles: list[nn.Module], dims: int, depth: int, name: str) -> dict[str, Any]:
    convs = [s.conv for s in singles]
    kernels = {c.kernel_size for c in convs}
    if len(kernels) != 1:
        raise UnsupportedModelError(f"{name}: conv kernels {sorted(kernels)} differ")
    k = next(iter(kernels))
    for c in convs:
        if any(v % 2 == 0 for v in k) or c.padding != tuple(v // 2 for v in k) or c.stride != (1,) * dims:
            raise UnsupportedModelError(
                f"{name}: conv kernel {k} with padding {c.padding} (conv_padding): unetgen builds padding = "
                "kernel // 2 (same size); with other padding pytorch-3dunet resizes each up-sampled map to its "
                "skip's size"
            )
        if c.dilation != (1,) * dims or c.groups != 1 or c.padding_mode != "zeros":
            raise UnsupportedModelError(f"{name}: conv {c}: only plain zero-padded convs")
    return {"kernel_size": k[0] if len(set(k)) == 1 else [list(k)] * (depth + 1)}


def _post_activation(units: list[dict[str, Any]], act: dict[str, Any], name: str) -> dict[str, Any]:
    """A ResNetBlock activates after the sum with its own `non_linearity` (the 'l' orders: LeakyReLU
    with slope 0.1, where the convs' has 0.01): `post_activation` where it differs from the convs'."""
    posts = [activation_from_module(u["post_act"], u["where"]) for u in units]
    if any(p != posts[0] for p in posts):
        raise UnsupportedModelError(f"{name}: the activations after the residual sums differ between blocks")
    return {} if posts[0] == act else {"post_activation": posts[0]}


def _excitation(units: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """ResNetBlockSE's `se_module` (the same kind and ratio in every block): `excitation`."""
    options = set()
    for u in units:
        se = u["se"]
        match type(se).__name__:
            case "NoneType":
                options.add(None)
            case "ChannelSELayer3D":
                options.add((("type", "cse"), ("reduction", se.reduction_ratio)))
            case "SpatialSELayer3D":
                options.add((("type", "sse"),))
            case _:  # ChannelSpatialSELayer3D (checked by _se_layers): the maximum of the two
                options.add((("type", "scse"), ("reduction", se.cSE.reduction_ratio), ("combine", "max")))
    if len(options) != 1:
        raise UnsupportedModelError(f"{name}: its blocks' squeeze-excitation modules differ")
    option = options.pop()
    return {} if option is None else {"excitation": dict(option)}


def _down(encoders: list[nn.Module], dims: int, name: str) -> dict[str, Any]:
    strides, kinds = [], set()
    if encoders[0].pooling is not None:
        raise UnsupportedModelError(f"{name}.encoders[0]: pooling before the first level")
    for i, e in enumerate(encoders[1:], start=1):
        pool = e.pooling
        if not isinstance(pool, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
            raise UnsupportedModelError(f"{name}.encoders[{i}].pooling: {type(pool).__name__}; max or average pooling")
        k, s = axes(pool.kernel_size, dims), axes(pool.stride, dims)
        if k != s or any(axes(pool.padding, dims)) or getattr(pool, "ceil_mode", False):
            raise UnsupportedModelError(f"{name}.encoders[{i}].pooling: {pool}; only kernel = stride, no padding")
        strides.append(k)
        kinds.add("max" if "Max" in type(pool).__name__ else "avg")
    if len(kinds) > 1:
        raise UnsupportedModelError(f"{name}: mixed max and average pooling")
    return {"strides": strides, "down": kinds.pop()}


def _up(
    net: nn.Module, decoders: list[nn.Module], dims: int, strides: list[list[int]], name: str
) -> tuple[list[list[nn.Module]], dict[str, Any]]:
    """Per decoder level (level 0 first), the up-sampling's parametric layers, and the up, merge
    and up_channels options."""
    depth = len(decoders)
    options, merges, layers, up_channels = set(), set(), [[] for _ in range(depth)], []
    for k, dec in enumerate(decoders):
        level, where = depth - 1 - k, f"{name}.decoders[{k}]"
        up, kind = dec.upsampling, type(dec.upsampling).__name__
        joining = getattr(dec.joining, "keywords", {})
        if "concat" not in joining:
            raise UnsupportedModelError(f"{where}.joining: not pytorch-3dunet's concat/sum joining")
        merges.add("concat" if joining["concat"] else "add")
        if kind == "InterpolateUpsampling":
            mode = up.upsample.keywords.get("mode")
            if mode in ("nearest", "area"):  # area interpolation by a whole factor repeats each pixel: nearest
                options.add((("type", "nearest"), ("conv", "when_channels_change")))
            elif mode == {1: "linear", 2: "bilinear", 3: "trilinear"}[dims]:
                options.add((("type", "linear"), ("conv", "when_channels_change")))
            else:
                raise UnsupportedModelError(
                    f"{where}.upsampling: mode {mode!r} in {dims}D; nearest, area or (bi/tri)linear"
                )
            up_channels.append(None)
        elif kind == "TransposeConvUpsampling":
            t = up.upsample.conv_transposed
            k3 = t.kernel_size
            if len(set(k3)) != 1 or k3[0] % 2 == 0 or t.padding != tuple(v // 2 for v in k3) or any(t.output_padding):
                raise UnsupportedModelError(
                    f"{where}.upsampling: transposed conv {t}: unetgen's has one odd kernel size k and padding k // 2 "
                    "(pytorch-3dunet pads by 1: kernel 3)"
                )
            if list(t.stride) != strides[level]:
                raise UnsupportedModelError(f"{where}.upsampling: stride {t.stride} differs from the pooling's")
            options.add((("type", "transpose"), ("kernel_size", k3[0]), ("bias", t.bias is not None),
                         ("size_by", "nearest_resize")))  # fmt: skip
            layers[level] = [t]
            up_channels.append(t.out_channels)
        else:
            raise UnsupportedModelError(f"{where}.upsampling: {kind}; interpolation or a transposed conv")
    if len(options) != 1 or len(merges) != 1:
        raise UnsupportedModelError(f"{name}: decoders differ in up-sampling or joining")
    option = dict(next(iter(options)))
    out: dict[str, Any] = {"up": option, "merge": merges.pop()}
    if option["type"] == "transpose":
        out["up_channels"] = list(reversed(up_channels))  # level 0 first
    else:
        out["up_channels"] = "keep"  # interpolation keeps the coarser map's channels
    return layers, out
