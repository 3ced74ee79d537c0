"""A diagram of a U-Net in the style of Figure 1 of Ronneberger et al. 2015, as SVG text.

One box per feature map: its height grows with the spatial size (log scale), its width with the
channel count (log scale); the channels stand above the box, the spatial size at its lower left.
The contracting path runs down the left, the expansive path up the right, and grey copy (and
crop) arrows join them. The diagram reads the network from `analysis.ops`: a box for every op
that ends a `shapes.trace` row (`op.row`), placed by its `level` and `part`, drawn by its type,
sized by `op_shapes`; the legend lists the options the ops came from (`op.source`), so only what
the network computes.

Pure standard library: the SVG is built with `xml.etree.ElementTree` (which escapes all text),
uses generic font families only and references nothing outside itself. `write_diagram` writes
it to a file (.svg, or .png/.pdf through the optional cairosvg) without ever leaving a partial one.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from . import atomic
from .analysis import shapes
from .analysis.ops import (
    INPUT,
    Act,
    Conv,
    Crop,
    Drop,
    Interpolate,
    Mul,
    NormOp,
    Op,
    Pool,
    Resize,
    Shuffle,
    Sum,
    network_ops,
    op_shapes,
)
from .config.diagnostics import short_repr
from .config.io import ConfigSource, load_config
from .config.options import (
    ELU,
    GELU,
    Add,
    AttentionGate,
    AvgPool,
    BatchNorm,
    ChannelExcitation,
    ChannelSpatialExcitation,
    Concat,
    ConvDown,
    ConvHead,
    FirstConvDown,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    LeakyReLU,
    LinearUp,
    MaxPool,
    NearestUp,
    PixelShuffleUp,
    PReLU,
    ReLU,
    ResidualBlock,
    SiLU,
    SpatialExcitation,
    TransposeHead,
    TransposeUp,
    UpsampleHead,
)
from .config.unet_config import UNetConfig
from .outputs import SOFTWARE, SVG_MARK_ID, check_replaceable
from .reprs import short_path

__all__ = ["CONVS_DRAWN", "MAX_WIDTH", "draw_unet"]

CONVS_DRAWN = (3, 2, 1)
"""Conv maps drawn per block, tried in turn until the diagram fits in `MAX_WIDTH`: a block with
more convs shows its first maps and its last, the arrow into the last labelled xN for the N
convs it stands for."""
MAX_WIDTH = 2400
"""The widest diagram (px). A layout still wider with one map per block (absurd sizes) is scaled
down to it: its viewBox keeps the natural size, its width attribute is MAX_WIDTH."""

# Okabe-Ito colours (safe for the common colour-vision deficiencies), one per operation
BLUE, VERMILLION, GREEN, PURPLE, ORANGE, YELLOW, SKY = (
    "#0072B2",
    "#D55E00",
    "#009E73",
    "#CC79A7",
    "#E69F00",
    "#F0E442",
    "#56B4E9",
)
GREY, BLACK, WHITE = "#8C8C8C", "#000000", "#FFFFFF"
COLOURS = {"conv": BLUE, "down": VERMILLION, "up": GREEN, "copy": GREY, "head": PURPLE, "aux": ORANGE}

FONT = "sans-serif"
CH_FONT, SIZE_FONT, NOTE_FONT, LEGEND_FONT, TITLE_FONT = 11, 10, 9, 12, 13
H_MIN, H_MAX = 14.0, 150.0  # box heights of the smallest and largest map
GAP = 30.0  # between the boxes of a row: the arrow and the next box's size label
VGAP = 34.0  # between rows: the down- and up-sampling arrows
LABEL_H = 15.0  # channel labels above the boxes
BRACKET_H = 10.0  # residual brackets above the labels
MARGIN = 16.0


def text_width(text: str, size: float) -> float:
    """A generous estimate of the advance width of `text` in a generic sans-serif font."""
    units = 0.0
    for ch in text:
        if ch in "il.,:;'|!":
            units += 0.34
        elif ch in "()[] ":  # DejaVu Sans: parentheses 0.39 em, space 0.32 em
            units += 0.42
        elif ch in "mwMW@%":
            units += 0.92
        elif ch.isupper() or ch in "\u00d7\u2192\u2295\u25c6":
            units += 0.74
        else:
            units += 0.63
    return units * size


def _box_width(channels: int) -> float:
    return 6.0 + 2.0 * math.log2(channels)


def _path(*runs: Sequence[tuple[float, float]]) -> str:
    """SVG path data: one polyline per run."""
    return " ".join(f"{'M' if i == 0 else 'L'}{_fmt(x)} {_fmt(y)}" for run in runs for i, (x, y) in enumerate(run))


def _points(points: Sequence[tuple[float, float]]) -> str:
    return " ".join(f"{_fmt(x)},{_fmt(y)}" for x, y in points)


def _dims_text(values: Sequence[int]) -> str:
    return "x".join(map(str, values))


def _fmt(v: float) -> str:
    return f"{round(v, 1):g}"


# ---------------------------------------------------------------------------------------------
# the scene: boxes, arrows and texts in absolute coordinates


@dataclass
class _Box:
    w: float
    h: float
    shape: tuple[int, ...]
    channels: int | None  # label above the box (None: no label)
    role: str  # input, map, pool, copy, up, head, aux
    size_label: bool = True
    dashed: bool = False
    label_right: bool = False  # the label moves right of an arrow leaving the box's top
    cx: float = 0.0
    cy: float = 0.0

    @property
    def left(self) -> float:
        return self.cx - self.w / 2

    @property
    def right(self) -> float:
        return self.cx + self.w / 2

    @property
    def top(self) -> float:
        return self.cy - self.h / 2

    @property
    def bottom(self) -> float:
        return self.cy + self.h / 2

    def label_span(self) -> tuple[float, float]:
        """Horizontal extent of the channel label (or of this box when it has none)."""
        if self.channels is None:
            return self.left, self.right
        w = text_width(str(self.channels), CH_FONT)
        return (self.cx + 4, self.cx + 4 + w) if self.label_right else (self.cx - w / 2, self.cx + w / 2)


@dataclass
class _Unit:
    """Boxes drawn side by side as one (the pair of a cropped copy and an up-sampled map)."""

    boxes: list[_Box]
    label: int | None
    inner_gap: float = 0.0
    arrow_note: str | None = None  # on the arrow into this unit (compacted convs)

    @property
    def width(self) -> float:
        return sum(b.w for b in self.boxes) + self.inner_gap * (len(self.boxes) - 1)

    def place(self, left: float, cy: float) -> None:
        x = left
        for b in self.boxes:
            b.cx, b.cy = x + b.w / 2, cy
            x += b.w + self.inner_gap

    @property
    def left(self) -> float:
        return self.boxes[0].left

    @property
    def right(self) -> float:
        return self.boxes[-1].right

    def label_span(self) -> tuple[float, float]:
        if self.label is None:
            return self.left, self.right
        if len(self.boxes) == 1:
            return self.boxes[0].label_span()
        if self.boxes[-1].label_right:  # an up arrow leaves the last box's top: the label right of it
            return self._right_label()
        w = text_width(str(self.label), CH_FONT)
        mid = (self.left + self.right) / 2
        return mid - w / 2, mid + w / 2

    def _right_label(self) -> tuple[float, float]:
        """The unit's label right of the up arrow that leaves its last box's top."""
        x = self.boxes[-1].cx + 4
        return x, x + text_width(str(self.label), CH_FONT)


@dataclass
class _Scene:
    root: ET.Element

    def rect(self, x: float, y: float, w: float, h: float, **attrs: str) -> ET.Element:
        """A rectangle whose rounded edges are those of any neighbour it touches."""
        x0, y0, x1, y1 = (round(v, 1) for v in (x, y, x + w, y + h))
        return ET.SubElement(
            self.root, "rect", {"x": _fmt(x0), "y": _fmt(y0), "width": _fmt(x1 - x0), "height": _fmt(y1 - y0), **attrs}
        )

    def text(self, x: float, y: float, content: str, size: float, *, anchor: str = "start", **attrs: str) -> None:
        el = ET.SubElement(self.root, "text", {"x": _fmt(x), "y": _fmt(y), "font-size": _fmt(size), **attrs})
        if anchor != "start":
            el.set("text-anchor", anchor)
        el.text = content

    def arrow(self, points: list[tuple[float, float]], kind: str, *, dashed: bool = False) -> None:
        colour = COLOURS[kind]
        g = ET.SubElement(self.root, "g", {"class": f"arrow {kind}"})
        (x0, y0), (x1, y1) = points[-2], points[-1]
        length = math.hypot(x1 - x0, y1 - y0) or 1.0
        ux, uy = (x1 - x0) / length, (y1 - y0) / length
        head = min(7.0, length * 0.6)
        bx, by = x1 - ux * head, y1 - uy * head  # base of the head: the line stops there
        attrs = {"d": _path([*points[:-1], (bx, by)]), "fill": "none", "stroke": colour, "stroke-width": "2"}
        if dashed:
            attrs["stroke-dasharray"] = "4 2"
        ET.SubElement(g, "path", attrs)
        half = head * 0.55
        tip = _points([(x1, y1), (bx - uy * half, by + ux * half), (bx + uy * half, by - ux * half)])
        ET.SubElement(g, "polygon", {"points": tip, "fill": colour})


FILLS = {"input": WHITE, "map": SKY, "pool": SKY, "copy": WHITE, "up": SKY, "head": PURPLE, "aux": ORANGE}


# ---------------------------------------------------------------------------------------------
# the network, as `analysis.ops` describes it

_OpT = TypeVar("_OpT", bound=Op)
BLOCKS = ("encoder", "bottleneck", "decoder")  # the parts that are a level's block


@dataclass(frozen=True)
class _Net:
    """The ops of the network and the output shape of each for one input, looked up by place."""

    config: UNetConfig
    input_shape: tuple[int, ...]
    ops: tuple[Op, ...]
    out_shapes: tuple[tuple[int, ...], ...]  # `op_shapes`: op i's output shape

    def find(self, *parts: str, level: int | None = None, kind: type[_OpT] = Op) -> list[_OpT]:
        """The ops of type `kind` in `parts` (at `level`), in the order the network runs them."""
        return [
            op for op in self.ops if op.part in parts and (level is None or op.level == level) and isinstance(op, kind)
        ]

    def residual_sums(self, *parts: str, level: int | None = None) -> list[Sum]:
        """The residual sums in `parts` (at `level`), not a squeeze-and-excitation's (scSE, add)."""
        return [op for op in self.find(*parts, level=level, kind=Sum) if isinstance(op.source, ResidualBlock)]

    def rows(self, level: int, *parts: str) -> list[Op]:
        """The ops at `level` in `parts` that end a `shapes.trace` row: one box each."""
        return [op for op in self.find(*parts, level=level) if op.row is not None]

    def shape(self, index: int) -> tuple[int, ...]:
        """The spatial shape of op `index`'s output (`INPUT`: the network's input)."""
        return self.input_shape if index == INPUT else self.out_shapes[index]

    def block(self, level: int) -> str:
        """The part of encoder `level` that is its block."""
        return "bottleneck" if level == self.config.depth else "encoder"


def _role(op: Op) -> str:
    """How the map of a row op is drawn, from the op's type: 'pool' (down-sampled, by a pool or
    a strided conv), 'up', 'head', 'aux' or 'map' (a conv of a block or the stem)."""
    match op:
        case Pool(part="down") | Conv(part="down"):
            return "pool"
        case Op(part="head"):  # a conv, or a sum (`head: {type: transpose, residual_unit: true}`)
            return "head"
        case Conv(part="aux"):
            return "aux"
        case Conv(transposed=True) | Interpolate() | Shuffle() | Pool(part="up") | Resize() | Sum(part="up"):
            return "up"
        case Conv():
            return "map"
    raise AssertionError(f"no box for {op!r}")


@dataclass(frozen=True)
class _Merge:
    """How decoder level i merges its skip: the copy arrow's note (the crop offset per side, with
    valid padding), an attention gate on the copy (`Mul`), a sum with the up-sampled map (`Sum`)."""

    crop: str | None
    gate: bool
    add: bool


def _merge(net: _Net, level: int) -> _Merge:
    [crop] = net.find("merge", level=level, kind=Crop)
    skip, up = (net.shape(k) for k in crop.inputs)
    offset = tuple((s - u) // 2 for s, u in zip(skip, up, strict=True))
    [merged] = net.rows(level, "merge")
    return _Merge(
        crop=_crop_text(offset) if net.config.padding == "valid" else None,
        gate=bool(net.find("merge", level=level, kind=Mul)),
        add=isinstance(merged, Sum),
    )


def _crop_text(offset: tuple[int, ...]) -> str:
    return f"crop {offset[0]}" if len(set(offset)) == 1 else f"crop {_dims_text(offset)}"


def _dropout_levels(config: UNetConfig) -> tuple[set[int], bool]:
    """Encoder levels (depth = the bottleneck) whose block ends in dropout, and whether the
    decoder's do: where the network has `Drop` ops."""
    drops = [op for op in network_ops(config) if isinstance(op, Drop)]
    return {op.level for op in drops if op.part != "decoder"}, any(op.part == "decoder" for op in drops)


# ---------------------------------------------------------------------------------------------
# the legend: the options the ops came from, one `match` per kind of option


def _per_level(values: Sequence[tuple[int, ...]], what: str) -> tuple[str, bool]:
    """One text for per-level values: '3x3' when uniform, else grouped by consecutive levels.
    The bool says whether they vary."""
    texts = [_dims_text(v) for v in values]
    if len(set(texts)) == 1:
        return texts[0], False
    groups: list[tuple[str, int, int]] = []
    for i, t in enumerate(texts):
        if groups and groups[-1][0] == t:
            groups[-1] = (t, groups[-1][1], i)
        else:
            groups.append((t, i, i))
    parts = [f"{t} ({what} {a})" if a == b else f"{t} ({what}s {a}-{b})" for t, a, b in groups]
    return ", ".join(parts), True


def _norm_text(option: object) -> str:
    match option:
        case BatchNorm():
            return "batch norm"
        case InstanceNorm():
            return "instance norm"
        case GroupNorm(num_groups=g):
            return f"group norm ({g} groups)"
        case LayerNorm():
            return "layer norm"
        case other:
            raise TypeError(f"draw_unet has no legend entry for norm {type(other).__name__}; add one")


def _activation_text(option: object) -> str:
    match option:
        case ReLU():
            return "ReLU"
        case LeakyReLU(negative_slope=s):
            return f"leaky ReLU ({s:g})"
        case ELU(alpha=a):
            return "ELU" if a == 1 else f"ELU ({a:g})"
        case GELU():
            return "GELU"
        case SiLU():
            return "SiLU"
        case PReLU(num_parameters=count):
            return "PReLU" if count == "one" else "PReLU (per channel)"
        case other:
            raise TypeError(f"draw_unet has no legend entry for activation {type(other).__name__}; add one")


def _head_text(config: UNetConfig) -> str:
    """The output layer's legend entry (`head`)."""
    match config.head:
        case ConvHead(kernel_size=k):
            return f"conv {k}x{k} (output)" if k > 1 else "conv 1x1 (output)"
        case TransposeHead(kernel_size=k, norm_act=norm_act, residual_unit=unit):
            extra = (", norm, activation" if norm_act else "") + (", plus a conv of itself" if unit else "")
            return f"transposed conv {k}x{k} by the stem stride{extra} (output)"
        case UpsampleHead(channels=widths, kernel_size=k):
            convs = f", {len(widths)} conv(s) with norm and activation" if widths else ""
            return f"up-sampling by the stem stride{convs}, conv {k}x{k} (output)"
    raise TypeError(f"draw_unet has no legend entry for head {type(config.head).__name__}; add one")


def _legend(net: _Net, compacted: bool) -> list[tuple[str, str]]:
    """(glyph, text) pairs; glyph is an arrow kind, 'box:<role>', 'residual', 'dropout', 'gate',
    'plus', 'excite' or 'note'. Only what the network computes: an entry per kind of op it runs."""
    size, factor, each = _stride_words(net.config)
    # no up-sampling, no down-sampling: depth 1 with `resample_bottleneck: false` keeps one resolution
    resampled = bool(net.rows(0, "up"))
    items = [
        ("conv", _block_text(net)),
        *_merge_items(net),
        *([("down", _down_text(net, size, each)), ("up", _up_text(net, size, factor, each))] if resampled else []),
        ("head", _head_text(net.config)),
    ]
    if net.find("aux"):
        items.append(("aux", "conv 1x1 auxiliary output (deep supervision, training only)"))
    items += _residual_items(net) + _excitation_items(net) + _dropout_items(net)
    if compacted:
        items.append(("note", "xN: N convs in a row (the maps between are not drawn)"))
    items.append(("box:map", "feature map: channels above, size at the lower left"))
    return items


def _stride_words(config: UNetConfig) -> tuple[str, str, str]:
    """The strides as the legend words them: uniform ones in its text (' 2x2', ' by 2', ''),
    per-step or per-axis ones at each arrow instead."""
    strides = config.layout.strides
    text, varies = _per_level(strides, "step")
    if varies:
        return "", " (factor at each arrow)", ", stride at each arrow"
    return f" {text}", f" by {strides[0][0]}", ""


def _block_text(net: _Net) -> str:
    """The block's conv (its kernel per level), norm and activation, in the order the first conv
    of level 0 and the layers around it run."""
    found = [net.find(net.block(i), level=i, kind=Conv) for i in range(net.config.depth + 1)]
    kernels = [convs[0].kernel for convs in found if convs]  # none at level 0 when it is the stem alone
    first = next(i for i, convs in enumerate(found) if convs)
    padding = " (no padding)" if net.config.padding == "valid" else " (zero padding)"
    conv = f"conv {_per_level(kernels, 'level')[0]}{padding}"
    steps: list[str] = []
    for op in net.find(net.block(first), level=first):
        match op:
            case Conv(row=str()) if conv in steps:
                break  # the block's next conv
            case Conv(row=str()):
                text = conv
            case Act(module=str(module)) if module.endswith(".post_act"):
                continue  # after the residual sum: in the residual entry
            case NormOp() | Act() if not _excites(op):
                text = _layer_text(op)
            case _:
                continue  # the residual shortcut and sum, squeeze-and-excitation, dropout
        if text not in steps:
            steps.append(text)
    return ", ".join(steps)


def _layer_text(op: NormOp | Act) -> str:
    return _norm_text(op.option) if isinstance(op, NormOp) else _activation_text(op.option)


def _merge_items(net: _Net) -> list[tuple[str, str]]:
    copy = "copy and crop" if net.config.padding == "valid" else "copy"
    match net.rows(0, "merge")[0].source:
        case Concat():
            return [("copy", f"{copy}, concatenate (white box: the copy)")]
        case Add():
            return [
                ("copy", f"{copy}, add to the up-sampled map"),
                ("plus", "sum of the copy (white) and the up-sampled map"),
            ]
        case AttentionGate():
            return [
                ("copy", f"{copy}, concatenate (white box: the gated copy)"),
                ("gate", "attention gate on the copy, gated by the up-sampled map"),
            ]
        case other:
            raise TypeError(f"draw_unet has no legend entry for merge {type(other).__name__}; add one")


def _down_text(net: _Net, size: str, each: str) -> str:
    downs = net.find("down")
    if not downs:  # `down: first_conv`: the first conv of each level below strides
        return f"stride{size} in the first conv of the level below{each}"
    match downs[0].source:
        case MaxPool():
            return f"max pool{size} (kernel = stride{each})"
        case AvgPool():
            return f"average pool{size} (kernel = stride{each})"
        case ConvDown():
            return f"strided conv{size} (kernel = stride{each})"
        case FirstConvDown():  # `first_step: max_pool`: ResNet's stem pool, then strided first convs
            pool = f"max pool{size} (kernel 2*stride-1, padding stride-1)"
            return f"{pool}, then stride in the first conv of each level below"
        case other:
            raise TypeError(f"draw_unet has no legend entry for down {type(other).__name__}; add one")


def _up_text(net: _Net, size: str, factor: str, each: str) -> str:
    then = "".join(f", {_layer_text(op)}" for op in net.find("up", level=0) if isinstance(op, (NormOp, Act)))
    match net.rows(0, "up")[0].source:
        case TransposeUp(kernel_size=k, size_by=size_by):
            kernel = "kernel = stride" if k is None else f"kernel {k}"
            resize = ", nearest resize to the stride" if k is not None and size_by == "nearest_resize" else ""
            return f"up-conv{size} (transposed conv, {kernel}{each}){resize}{then}"
        case NearestUp(conv=when) | LinearUp(conv=when):
            [interpolate] = net.find("up", level=0, kind=Interpolate)
            conv1 = "conv 1x1" if when == "always" else "conv 1x1 where the channels change"
            return f"{interpolate.mode} up-sampling{factor}, {conv1}"
        case PixelShuffleUp(kernel_size=k, pad_pool=pad_pool):
            pad = ", zero pad + average pool (kernel = stride)" if pad_pool else ""
            return f"sub-pixel conv (kernel {k}), pixel shuffle{factor}{pad}"
        case other:
            raise TypeError(f"draw_unet has no legend entry for up {type(other).__name__}; add one")


def _residual_items(net: _Net) -> list[tuple[str, str]]:
    sums = net.residual_sums(*BLOCKS)
    if not sums:
        return []
    match sums[0].source:
        case ResidualBlock(preactivation=pre, post_activation=post):
            kind = "pre-activation residual" if pre else "residual"
            then = "" if post is None else f", then {_activation_text(post)}"
            return [("residual", f"{kind} block: input added to output (1x1 conv if channels change){then}")]
        case other:
            raise TypeError(f"draw_unet has no legend entry for block {type(other).__name__}; add one")


def _excites(op: Op) -> bool:
    return isinstance(op.source, (ChannelExcitation, SpatialExcitation, ChannelSpatialExcitation))


def _excitation_items(net: _Net) -> list[tuple[str, str]]:
    """One entry per kind of squeeze-and-excitation the blocks end in."""
    seen: dict[object, set[str]] = {}  # option -> "encoder" and/or "decoder"
    for op in net.find(*BLOCKS):
        if _excites(op):
            seen.setdefault(op.source, set()).add("decoder" if op.part == "decoder" else "encoder")
    items = []
    for option, parts in seen.items():
        where = "block" if len(parts) == 2 else f"{next(iter(parts))} block"
        items.append(("excite", f"{_excitation_text(option)} at the end of each {where}"))
    return items


def _excitation_text(option: object) -> str:
    match option:
        case ChannelExcitation(reduction=r):
            what = f"channel squeeze-and-excitation (cSE, reduction {r})"
        case SpatialExcitation():
            what = "spatial squeeze-and-excitation (sSE)"
        case ChannelSpatialExcitation(reduction=r, combine=combine):
            what = f"channel and spatial squeeze-and-excitation (scSE, reduction {r}, {combine} of the two)"
        case other:
            raise TypeError(f"draw_unet has no legend entry for excitation {type(other).__name__}; add one")
    return what


def _dropout_items(net: _Net) -> list[tuple[str, str]]:
    drops = net.find(*BLOCKS, kind=Drop)
    if not drops:
        return []
    kind = "channel dropout" if drops[0].spatial else "dropout"
    return [("dropout", f"{kind} {drops[0].rate:g} after the block (dashed box)")]


# ---------------------------------------------------------------------------------------------
# layout


def _unit(net: _Net, op: Op, arrow_note: str | None = None) -> _Unit:
    """The box of a row op's map. Pooled maps carry no channel label (those of the map above)."""
    role = _role(op)
    label = None if role == "pool" else op.out_channels
    box = _Box(_box_width(op.out_channels), 0, net.shape(op.index), label, role)
    return _Unit([box], label, arrow_note=arrow_note)


def _conv_units(net: _Net, convs: list[Op], cap: int) -> list[_Unit]:
    """The conv maps of a block; long blocks keep their first maps and their last."""
    count = len(convs)
    keep = list(range(count))
    if count > cap:
        keep = [*range(cap - 1), count - 1]
    units = []
    for j in keep:
        note = f"x{count - cap + 1}" if count > cap and j == count - 1 else None
        units.append(_unit(net, convs[j], note))
    return units


def _size_extent(box: _Box) -> float:
    """How far below the row centre the box and its rotated size label reach."""
    if not box.size_label:
        return box.h / 2
    return max(box.h / 2, 6 + text_width(_dims_text(box.shape), SIZE_FONT))


def _place_row(units: list[_Unit], first_left: float, cy: float) -> None:
    x = first_left
    for i, u in enumerate(units):
        if i:
            prev = units[i - 1]
            u.place(0, cy)  # measure this unit's label relative to its own left edge
            lo, _ = u.label_span()
            _, hi = prev.label_span()
            gap = max(GAP, hi + 8 - (prev.right + lo))
            if u.arrow_note:
                gap = max(gap, text_width(u.arrow_note, NOTE_FONT) + 18)
            x = prev.right + gap
        u.place(x, cy)


def draw_unet(config: ConfigSource, input_shape: Sequence[int] | int | None = None) -> str:
    """The network as an SVG document in the style of the paper's Figure 1.

    `config` is anything `load_config` accepts (a `UNetConfig`, a mapping, a file, a preset name).
    Sizes are those of `op_shapes` (the rows of `shapes.trace`) at `input_shape` (one int is used
    for every axis); with None, the smallest valid input (`shapes.min_input_shape`), as the caption
    says. An invalid shape raises `InputShapeError` naming the nearest valid sizes."""
    config = load_config(config)
    ops = network_ops(config)
    bottleneck = [op for op in ops if op.part == "bottleneck" and op.row is not None]
    if not any(op.part == "down" and op.level == config.depth for op in ops) and len(bottleneck) < 2:
        raise ValueError(
            "draw_unet needs two or more conv maps in the bottleneck with down='first_conv' or "
            "resample_bottleneck=false (the down arrow ends at the first, the up arrow leaves from the last, "
            "and no pooled map sits between); "
            "draw it with 2 convs in the bottleneck (convs_per_block or blocks_per_level)"
        )
    shape = _input_shape(config, input_shape)
    net = _Net(config, shape, ops, op_shapes(config, shape))
    for cap in CONVS_DRAWN:
        root, width, height = _render(net, input_shape is not None, cap)
        if width <= MAX_WIDTH:
            break
    else:
        root.set("width", _fmt(MAX_WIDTH))
        root.set("height", _fmt(height * MAX_WIDTH / width))
    ET.indent(root, space="")
    return ET.tostring(root, encoding="unicode") + "\n"


def _input_shape(config: UNetConfig, input_shape: Sequence[int] | int | None) -> tuple[int, ...]:
    """`input_shape` as a valid shape (the smallest valid one for None), or `InputShapeError`."""
    if input_shape is None:
        return shapes.min_input_shape(config)
    shape = (input_shape,) * config.spatial_dims if isinstance(input_shape, int) else tuple(input_shape)
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise shapes.InputShapeError(f"input_shape={short_repr(input_shape)} must be whole numbers, e.g. (572, 572)")
    shapes.output_shape(config, shape)  # an invalid shape: the error names the nearest valid sizes
    return shape


def _render(net: _Net, given: bool, cap: int) -> tuple[ET.Element, float, float]:
    """The diagram with at most `cap` conv maps per block, and its natural width and height."""
    depth = net.config.depth
    enc, dec = _levels(net, cap)
    merges = [_merge(net, i) for i in range(depth)]
    residual = bool(net.residual_sums(*BLOCKS))  # room for the brackets over the blocks
    centres, y = _rows(enc, dec, residual, top=MARGIN + 2 * TITLE_FONT + 14)
    _columns(enc, dec, centres, merges)
    body = ET.Element("g", {"font-family": FONT, "fill": BLACK})
    scene = _Scene(body)
    for i in range(depth + 1):
        _draw_row(scene, enc[i], centres[i], bool(net.residual_sums(net.block(i), level=i)))
        if i < depth:
            _draw_row(scene, dec[i], centres[i], bool(net.residual_sums("decoder", level=i)))
    strides = net.config.layout.strides
    varies = _per_level(strides, "step")[1]
    for i in range(depth):
        _draw_links(scene, enc, dec, i, centres[i], merges[i], _dims_text(strides[i]) if varies else None)
    return _canvas(net, body, enc, dec, given, y)


def _canvas(
    net: _Net, body: ET.Element, enc: list[list[_Unit]], dec: list[list[_Unit]], given: bool, y: float
) -> tuple[ET.Element, float, float]:
    """The drawn network under its caption, above its legend, on a white canvas that holds all."""
    config, shape, scene = net.config, net.input_shape, _Scene(body)
    drawn_right = max(
        max(u.label_span()[1] for level in enc + dec for u in level),
        max(b.right for level in enc + dec for u in level for b in u.boxes),
    )
    [head] = net.rows(0, "head")
    caption = (
        f"U-Net, {config.spatial_dims}D, depth {config.depth}: input {config.in_channels}x{_dims_text(shape)}"
        f" → output {config.out_channels}x{_dims_text(net.shape(head.index))}"
    )
    scene.text(MARGIN, MARGIN + TITLE_FONT, caption, TITLE_FONT, **{"font-weight": "bold"})
    note = (
        f"sizes for input {_dims_text(shape)}"
        if given
        else f"sizes for the smallest valid input, {_dims_text(shape)} (pass another input size to redraw)"
    )
    scene.text(MARGIN, MARGIN + 2 * TITLE_FONT + 4, note, NOTE_FONT + 1, fill="#444444")
    items = _legend(net, compacted=any(u.arrow_note for level in enc + dec for u in level))
    width = max(
        drawn_right + MARGIN,
        MARGIN + text_width(caption, TITLE_FONT) + MARGIN,
        MARGIN + text_width(note, NOTE_FONT + 1) + MARGIN,
    )
    legend = _Scene(ET.SubElement(body, "g", {"class": "legend"}))
    height = _draw_legend(legend, items, MARGIN, y - VGAP + 22, width) + MARGIN
    width = max(width, _legend_width(items) + 2 * MARGIN)
    root = ET.Element("svg", {"xmlns": "http://www.w3.org/2000/svg", "version": "1.1"})
    root.set("width", _fmt(width))
    root.set("height", _fmt(height))
    root.set("viewBox", f"0 0 {_fmt(width)} {_fmt(height)}")
    title = ET.SubElement(root, "title")
    title.text = caption
    mark = ET.SubElement(root, "metadata", {"id": SVG_MARK_ID})  # unetgen's mark (unetgen.outputs)
    mark.text = "drawn by unetgen.draw_unet"
    ET.SubElement(root, "rect", {"width": "100%", "height": "100%", "fill": WHITE})
    root.append(body)
    return root, width, height


def _levels(net: _Net, cap: int) -> tuple[list[list[_Unit]], list[list[_Unit]]]:
    """The boxes of every level, encoder (depth + 1 levels, the bottleneck last) and decoder."""
    depth, config = net.config.depth, net.config
    enc_drop, dec_drop = _dropout_levels(config)
    enc: list[list[_Unit]] = []
    for i in range(depth + 1):
        firsts = []
        if i == 0:
            c = config.in_channels
            firsts.append(_Unit([_Box(_box_width(c), 0, net.input_shape, c, "input")], c))
        firsts += [_unit(net, op) for op in net.rows(i, "stem", "down")]  # `stem: true`; the pooled map
        convs = _conv_units(net, net.rows(i, net.block(i)), cap)
        if not firsts:  # `down: first_conv`: the down arrow ends at the first (strided) conv map
            convs[0].boxes[0].label_right = True  # its label moves right of the arrow
        if convs:  # none: level 0 is the stem alone (`blocks_per_level: [0, ...]`)
            convs[-1].boxes[0].dashed = i in enc_drop
        enc.append([*firsts, *convs])
    dec = [_decoder_level(net, i, cap, dec_drop) for i in range(depth)]
    # the maps the up-sampling arrows leave from: their labels move right of the arrow
    for b in [enc[depth][-1].boxes[0]] + [_last_conv(dec[i]) for i in range(1, depth)]:
        b.label_right = True
    return enc, dec


def _decoder_level(net: _Net, i: int, cap: int, dropout: bool) -> list[_Unit]:
    """The pair of the (cropped) copy and the up-sampled map, the block's convs, the heads."""
    ups, [merged] = net.rows(i, "up"), net.rows(i, "merge")
    [crop] = net.find("merge", level=i, kind=Crop)
    copy = _Box(_box_width(crop.out_channels), 0, net.shape(crop.index), None, "copy")
    up = ups[0] if ups else net.ops[crop.inputs[1]]  # none: the bottleneck's map as it is (same resolution)
    upbox = _Box(_box_width(up.out_channels), 0, net.shape(up.index), None, "up", size_label=False)
    gap = 14.0 if isinstance(merged, Sum) else 0.0  # room for the circled plus
    units = [_Unit([copy, upbox], merged.out_channels, inner_gap=gap)]
    units += _conv_units(net, net.rows(i, "decoder"), cap)
    units[-1].boxes[0].dashed = dropout
    units += [_unit(net, op) for op in net.rows(i, "aux", "head")]  # deep supervision at level i; the output
    return units


def _rows(enc: list[list[_Unit]], dec: list[list[_Unit]], residual: bool, top: float) -> tuple[list[float], float]:
    """Box heights (log of the geometric-mean size), each level's centre line, and the bottom."""
    every = [b for level in enc + dec for u in level for b in u.boxes]
    measure = {id(b): math.log(max(1, math.prod(b.shape))) / len(b.shape) for b in every}
    lo, hi = min(measure.values()), max(measure.values())
    for b in every:
        t = (measure[id(b)] - lo) / (hi - lo) if hi > lo else 1.0
        b.h = H_MIN + (H_MAX - H_MIN) * t
    y, centres = top, []
    for i in range(len(enc)):
        level = [b for u in enc[i] + (dec[i] if i < len(dec) else []) for b in u.boxes]
        above = max(b.h for b in level) / 2 + LABEL_H + (BRACKET_H if residual else 0)
        below = max(_size_extent(b) for b in level)
        centres.append(y + above)
        y = y + above + below + VGAP
    return centres, y


def _columns(enc: list[list[_Unit]], dec: list[list[_Unit]], centres: list[float], merges: list[_Merge]) -> None:
    """Each encoder level starts under the last map of the level above; each decoder level above
    the map its up-sampling arrow leaves from; the copy arrows get room for their labels."""
    depth = len(dec)
    _place_row(enc[0], MARGIN + 14, centres[0])
    for i in range(1, depth + 1):
        _place_row(enc[i], enc[i - 1][-1].boxes[0].cx - enc[i][0].width / 2, centres[i])
    _place_decoder(dec, enc, centres, depth)
    need = 0.0
    for i, merge in enumerate(merges):
        want = 36.0 + (text_width(merge.crop, NOTE_FONT) if merge.crop is not None else 0.0)
        want += 28.0 if merge.gate else 0.0
        need = max(need, want - (dec[i][0].left - enc[i][-1].right))
    if need > 0:  # widen the bottleneck's last step: the whole decoder moves right
        last = enc[depth][-1]
        last.place(last.left + need, centres[depth])
        _place_decoder(dec, enc, centres, depth)


def _last_map(units: list[_Unit]) -> int:
    """The index of a row's last conv map (before the auxiliary and output heads); a decoder level
    of no conv: 0, its merged pair."""
    return max((k for k, u in enumerate(units) if u.boxes[0].role == "map"), default=0)


def _last_conv(units: list[_Unit]) -> _Box:
    """The last conv map of a row (of a decoder level of no conv: the up-sampled map of its pair)."""
    return units[_last_map(units)].boxes[-1]


def _place_decoder(dec: list[list[_Unit]], enc: list[list[_Unit]], centres: list[float], depth: int) -> None:
    """Decoder level i starts above the map its up-sampling arrow leaves from."""
    for i in reversed(range(depth)):
        pair = dec[i][0]
        up = pair.boxes[1]
        src = enc[depth][-1].boxes[0] if i == depth - 1 else _last_conv(dec[i + 1])
        left = src.cx - up.w / 2 - pair.inner_gap - pair.boxes[0].w
        _place_row(dec[i], left, centres[i])


def _draw_row(scene: _Scene, units: list[_Unit], cy: float, residual: bool) -> None:
    for k, u in enumerate(units):
        for b in u.boxes:
            attrs = {"class": f"map {b.role}", "fill": FILLS[b.role], "stroke": BLACK, "stroke-width": "1"}
            if b.dashed:
                attrs["stroke-dasharray"] = "3 2"
                attrs["stroke-width"] = "1.6"
            scene.rect(b.left, b.top, b.w, b.h, **attrs)
            if b.size_label:
                text = _dims_text(b.shape)
                base = max(b.bottom, cy + 6 + text_width(text, SIZE_FONT))
                x = b.left - 3
                scene.text(x, base, text, SIZE_FONT, transform=f"rotate(-90 {_fmt(x)} {_fmt(base)})")
        if u.label is not None:
            top = min(b.top for b in u.boxes) - 4
            if u.boxes[-1].label_right:  # right of the up arrow leaving the last box's top
                scene.text(u.boxes[-1].cx + 4, top, str(u.label), CH_FONT)
            else:
                scene.text((u.left + u.right) / 2, top, str(u.label), CH_FONT, anchor="middle")
        if k:
            prev = units[k - 1].boxes[-1]
            b = u.boxes[0]
            kind = {"head": "head", "aux": "aux"}.get(b.role, "conv")
            scene.arrow([(prev.right, cy), (b.left, cy)], kind, dashed=kind == "aux")
            if u.arrow_note:
                scene.text((prev.right + b.left) / 2 - 2, cy - 5, u.arrow_note, NOTE_FONT, anchor="middle", fill=BLUE)
    if residual:
        # the block: from its input map (the first unit) to its last conv map
        row_top = min(b.top for u in units for b in u.boxes) - LABEL_H - 1
        x0, x1 = units[0].right - 1, units[_last_map(units)].boxes[0].left + 1
        y0 = row_top - BRACKET_H + 2
        _bracket(scene.root, x0, x1, y0, row_top)


def _draw_links(
    scene: _Scene, enc: list[list[_Unit]], dec: list[list[_Unit]], i: int, cy: float, merge: _Merge, note: str | None
) -> None:
    """Level i's down- and up-sampling arrows (`note`: their stride, where strides vary) and its
    copy arrow with the merge's marks."""
    depth = len(dec)
    a, b = enc[i][-1].boxes[0], enc[i + 1][0].boxes[0]
    scene.arrow([(a.cx, a.bottom), (b.cx, b.top)], "down")
    src = enc[depth][-1].boxes[0] if i == depth - 1 else _last_conv(dec[i + 1])
    dst = dec[i][0].boxes[1]
    scene.arrow([(src.cx, src.top), (dst.cx, dst.bottom)], "up")
    if note is not None:
        mid_d = (a.bottom + b.top) / 2 + NOTE_FONT / 2 - 1
        mid_u = (src.top + dst.bottom) / 2 + NOTE_FONT / 2 - 1
        # the down note right of its arrow, the up note left of its; outwards where they would meet
        inward = a.cx < src.cx and src.cx - a.cx < 2 * text_width(note, NOTE_FONT) + 14
        side = -1 if inward else 1
        scene.text(a.cx + 5 * side, mid_d, note, NOTE_FONT, anchor="end" if inward else "start", **{"class": "stride"})
        scene.text(
            src.cx - 5 * side, mid_u, note, NOTE_FONT, anchor="start" if inward else "end", **{"class": "stride"}
        )
    # the copy (and crop) arrow
    s, c = enc[i][-1].boxes[0], dec[i][0].boxes[0]
    scene.arrow([(s.right, cy), (c.left, cy)], "copy")
    if merge.crop is not None:
        scene.text((s.right + c.left) / 2, cy - 5, merge.crop, NOTE_FONT, anchor="middle", fill=GREY)
    if merge.gate:
        _gate(scene.root, c.left - 18, cy)
    if merge.add:
        _plus(scene.root, (c.right + dec[i][0].boxes[1].left) / 2, cy)


def _bracket(parent: ET.Element, x0: float, x1: float, top: float, base: float) -> None:
    """The residual path over a block: up from its input, across, down to its output (the dot: the sum)."""
    d = _path([(x0, base), (x0, top), (x1, top), (x1, base)])
    ET.SubElement(parent, "path", {"class": "residual", "d": d, "fill": "none", "stroke": BLACK})
    ET.SubElement(parent, "circle", {"cx": _fmt(x1), "cy": _fmt(top), "r": "2.5", "fill": BLACK})


def _gate(parent: ET.Element, cx: float, cy: float) -> None:
    r = 6.5
    pts = _points([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)])
    ET.SubElement(parent, "polygon", {"class": "gate", "points": pts, "fill": YELLOW, "stroke": BLACK})


def _plus(parent: ET.Element, cx: float, cy: float) -> None:
    g = ET.SubElement(parent, "g", {"class": "plus", "stroke": BLACK, "fill": WHITE})
    ET.SubElement(g, "circle", {"cx": _fmt(cx), "cy": _fmt(cy), "r": "5.5"})
    d = _path([(cx - 3.5, cy), (cx + 3.5, cy)], [(cx, cy - 3.5), (cx, cy + 3.5)])
    ET.SubElement(g, "path", {"d": d})


GLYPH_W = 40.0
ROW_H = 20.0


def _legend_width(items: list[tuple[str, str]]) -> float:
    """Width of the widest legend entry."""
    return GLYPH_W + 8 + max(text_width(t, LEGEND_FONT) for _, t in items)


def _draw_legend(scene: _Scene, items: list[tuple[str, str]], left: float, top: float, width: float) -> float:
    """The legend in as many columns as fit; returns its bottom."""
    parent = scene.root
    col_w = _legend_width(items) + 24
    cols = max(1, min(3, int((width - 2 * MARGIN + 24) // col_w)))
    per_col = -(-len(items) // cols)
    for n, (glyph, text) in enumerate(items):
        col, row = divmod(n, per_col)
        x, y = left + col * col_w, top + row * ROW_H
        mid = y + ROW_H / 2
        if glyph in COLOURS:
            scene.arrow([(x, mid), (x + GLYPH_W - 4, mid)], glyph, dashed=glyph == "aux")
        elif glyph == "box:map":
            scene.rect(x + 4, y + 2, 10, ROW_H - 4, fill=SKY, stroke=BLACK, **{"class": "legend-box"})
            scene.rect(x + 20, y + 2, 10, ROW_H - 4, fill=WHITE, stroke=BLACK, **{"class": "legend-box"})
        elif glyph == "dropout":
            scene.rect(
                x + 10, y + 2, 14, ROW_H - 4, fill=SKY, stroke=BLACK, **{"class": "legend-box"},
                **{"stroke-dasharray": "3 2", "stroke-width": "1.6"},
            )  # fmt: skip
        elif glyph == "residual":
            _bracket(parent, x + 4, x + 32, y + 5, y + ROW_H - 4)
        elif glyph == "gate":
            _gate(parent, x + 18, mid)
        elif glyph == "plus":
            _plus(parent, x + 18, mid)
        elif glyph == "excite":
            scene.text(x + 18, mid + NOTE_FONT / 2 - 1, "SE", NOTE_FONT, anchor="middle", fill=PURPLE)
        elif glyph == "note":
            scene.text(x + 18, mid + NOTE_FONT / 2 - 1, "xN", NOTE_FONT, anchor="middle", fill=BLUE)
        scene.text(x + GLYPH_W + 8, mid + LEGEND_FONT / 2 - 2, text, LEGEND_FONT)
    return top + per_col * ROW_H


# ---------------------------------------------------------------------------------------------
# writing


DIAGRAM_SUFFIXES = (".svg", ".png", ".pdf")
"""The formats `write_diagram` writes: SVG as is, PNG (at twice the size) and PDF through cairosvg."""


def write_diagram(svg: str, path: str | os.PathLike[str]) -> Path:
    """Write `svg` (from `draw_unet`) to `path`, in the format its suffix names (`DIAGRAM_SUFFIXES`;
    .png and .pdf need the `render` extra: cairosvg), and return the path.

    The diagram is rendered first, then written to a new file created exclusively beside `path`
    (never an existing file, never through a symlink), flushed and renamed over `path`: a full disk
    or a failed render leaves what was at `path` and no partial file. A path that cannot be written
    (a missing folder, a directory, a FIFO) or another suffix raises `ValueError`; a missing
    cairosvg `ImportError` saying what to install; a failed write `OSError` naming `path` and why
    ("no space left on device").

    An existing file at `path` is replaced only if unetgen wrote it (`unetgen.outputs`): an SVG
    with draw_unet's ``<metadata id="unetgen">``, a PNG with the Software text chunk this function
    sets; never a PDF (no mark), a symbolic link or another file (`ValueError`: give a new name, or
    remove it yourself)."""
    if not isinstance(svg, str):
        raise ValueError(f"write_diagram takes the SVG text draw_unet returns, not {type(svg).__name__}")
    p = atomic.check_target(path, "the diagram")
    suffix = p.suffix.lower()
    if suffix not in DIAGRAM_SUFFIXES:
        shown = short_repr(suffix or "(none)")
        raise ValueError(f"the diagram {short_path(p)}: unknown format {shown}; use .svg, .png or .pdf")
    check_replaceable(p, "the diagram")
    data = svg.encode("utf-8") if suffix == ".svg" else _rasterise(svg, suffix)
    return atomic.write_bytes(p, data)


def _rasterise(svg: str, suffix: str) -> bytes:
    """`svg` as .png (at twice the size) or .pdf bytes."""
    try:
        import cairosvg  # cairocffi raises OSError when the system cairo library is missing
    except (ImportError, OSError) as err:
        raise ImportError(
            f"writing {suffix} needs the optional renderer: pip install 'unetgen[render]' "
            f"(cairosvg, with the system cairo library, e.g. apt-get install libcairo2); {err}"
        ) from err
    if suffix == ".pdf":
        return cairosvg.svg2pdf(bytestring=svg.encode("utf-8"))
    return _marked_png(cairosvg.svg2png(bytestring=svg.encode("utf-8"), scale=2))


def _marked_png(data: bytes) -> bytes:
    """The PNG `data` with unetgen's mark, a Software text chunk (Pillow), added."""
    import io

    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", SOFTWARE)
    out = io.BytesIO()
    with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
        image.save(out, format="PNG", pnginfo=info)
    return out.getvalue()
