"""The network as one ordered list of typed operations: the single description that shapes,
costs, memory, the diagram and interop read.

`network_ops(config)` walks the resolved layout once, in the order `UNet.forward` runs it, and
returns every step: each convolution, norm, activation, pooling, up-sampling, crop, sum and
concatenation, with its channels, its place in the model (`module`, the qualified name of the
`nn.Module` that runs it, None for tensor arithmetic), the ops whose outputs it reads
(`inputs`), the config option it came from (`source`) and, per spatial axis, how it changes the
size of the map on the exact grid of valid inputs (`grid`).

Sizes are not part of an op: a map's size depends on the input. Along one axis every op maps
its input size ``s`` to ``(s - shrink) / divide * multiply``, exactly (``divide`` divides
``s - shrink`` for every valid input); `op_shapes` runs that walk for one input shape, and
`unetgen.analysis.shapes` solves it once, symbolically, for every valid size.

`tests/test_ops.py` builds real models for drawn configs and checks that this list equals the
modules the model runs, in order, kind, channels and shapes, so that model and analysis cannot
drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Literal

from ..config.options import (
    GELU,
    Activation,
    Add,
    AttentionGate,
    AvgPool,
    BatchNorm,
    Block,
    ChannelExcitation,
    ChannelSpatialExcitation,
    Concat,
    ConvDown,
    ConvHead,
    Dropout,
    Excitation,
    FirstConvDown,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    LinearUp,
    MaxPool,
    NearestUp,
    NoNorm,
    Norm,
    PixelShuffleUp,
    PReLU,
    ReLU,
    ResidualBlock,
    SpatialExcitation,
    TransposeHead,
    TransposeUp,
    UpsampleHead,
)
from ..config.unet_config import Stage, UNetConfig, conv_steps

__all__ = [
    "INPUT",
    "Act",
    "Cat",
    "Conv",
    "Crop",
    "GlobalPool",
    "Interpolate",
    "Linear",
    "Max",
    "Mul",
    "NormOp",
    "Op",
    "Pad",
    "Pool",
    "Resize",
    "Shuffle",
    "Sigmoid",
    "Sum",
    "Drop",
    "network_ops",
    "op_shapes",
]

INPUT = -1
"""The producer index of the network's input in `Op.inputs`."""

Part = Literal["down", "stem", "encoder", "bottleneck", "up", "merge", "decoder", "aux", "head"]


@dataclass(frozen=True, kw_only=True)
class Op:
    """One step of the forward pass. `inputs` are the indices of the ops whose outputs it reads
    (`INPUT` for the network's input), the first being the map it transforms. `level` is the
    resolution level (0 = full resolution, `depth` = the bottleneck); `part` says where in the
    level it sits; `segment` is the top-level module that runs it as one checkpoint segment
    (None for the deep-supervision heads and the head, which run outside any); `row` names the
    `shapes.trace` row its output is, if any; `source` is the config option it came from."""

    index: int
    module: str | None
    inputs: tuple[int, ...]
    in_channels: int
    out_channels: int
    level: int
    part: Part
    segment: str | None
    row: str | None = None
    source: object = None
    training_only: bool = False
    """Runs only in training mode (the deep-supervision heads)."""

    def grid(self, axis: int) -> tuple[int, int, int]:
        """(shrink, divide, multiply) on `axis`: the output size is (s - shrink) / divide * multiply
        (+ `offset`)."""
        return 0, 1, 1

    def offset(self, axis: int) -> int:
        """Added to the size on `axis` after `grid`: the (in - 1) * stride + 1 of a transposed conv
        without output padding (`size_by: nearest_resize`) is in * stride - (stride - 1)."""
        return 0

    @property
    def parameters(self) -> int:
        """Learnable parameters (running statistics are buffers, not parameters)."""
        return 0

    def macs(self, in_shape: Sequence[int], out_shape: Sequence[int]) -> int:
        """Multiply-adds for one sample (convolutions only, as `FlopCounterMode` counts them)."""
        return 0


@dataclass(frozen=True, kw_only=True)
class Conv(Op):
    """A convolution (`transposed`: a transposed one). `same` marks the "same"-padded convs whose
    stride divides the map exactly (a strided `first_conv`); `padding` is torch's."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    bias: bool
    transposed: bool = False
    output_padding: tuple[int, ...] = ()

    def grid(self, axis: int) -> tuple[int, int, int]:
        k, s, p = self.kernel[axis], self.stride[axis], self.padding[axis]
        if self.transposed:  # (s_in - 1) * s - 2p + k + output_padding == s_in * s + offset
            return 0, 1, s
        if s == 1:
            return k - 1 - 2 * p, 1, 1
        return max(0, k - 2 * p - s), s, 1  # kernel = stride, or "same" padding: s_in / s

    def offset(self, axis: int) -> int:
        if not self.transposed:
            return 0
        k, s, p = self.kernel[axis], self.stride[axis], self.padding[axis]
        return k - 2 * p - s + self.output_padding[axis]

    @property
    def parameters(self) -> int:
        return self.in_channels * self.out_channels * math.prod(self.kernel) + (self.out_channels if self.bias else 0)

    def macs(self, in_shape: Sequence[int], out_shape: Sequence[int]) -> int:
        positions = math.prod(in_shape if self.transposed else out_shape)
        return positions * math.prod(self.kernel) * self.in_channels * self.out_channels


@dataclass(frozen=True, kw_only=True)
class NormOp(Op):
    """A normalisation layer (`option`: batch, instance, group or layer norm)."""

    option: Norm

    @property
    def groups(self) -> int:
        """The statistics per sample: channels (instance), groups (group), 1 (layer); 0 for batch."""
        match self.option:
            case BatchNorm():
                return 0
            case InstanceNorm():
                return self.out_channels
            case GroupNorm():
                return self.option.groups_for(self.out_channels)
            case LayerNorm():
                return 1
        raise AssertionError(f"unhandled norm {self.option!r}")

    @property
    def affine(self) -> bool:
        """Whether it has a learnable scale and shift per channel."""
        match self.option:
            case BatchNorm(affine=affine) | InstanceNorm(affine=affine):
                return affine
        return True

    @property
    def parameters(self) -> int:
        return 2 * self.out_channels if self.affine else 0


@dataclass(frozen=True, kw_only=True)
class Act(Op):
    """A non-linearity; `inplace` when it overwrites its input (as the model builds it)."""

    option: Activation
    inplace: bool

    @property
    def parameters(self) -> int:
        match self.option:
            case PReLU(num_parameters=count):
                return self.out_channels if count == "channels" else 1
        return 0


@dataclass(frozen=True, kw_only=True)
class Drop(Op):
    """Dropout of single elements, or of whole channels (`spatial`)."""

    rate: float
    spatial: bool


@dataclass(frozen=True, kw_only=True)
class Pool(Op):
    """Max or average pooling (`ceil_mode` for the `resnet_d` shortcut)."""

    mode: Literal["max", "avg"]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    ceil_mode: bool = False
    padding: tuple[int, ...] = ()
    """Padding per axis (ResNet's stem pool: 1); empty: none."""

    def grid(self, axis: int) -> tuple[int, int, int]:
        k, s = self.kernel[axis], self.stride[axis]
        p = self.padding[axis] if self.padding else 0
        return (k - 1 - 2 * p, 1, 1) if s == 1 else (max(0, k - 2 * p - s), s, 1)


@dataclass(frozen=True, kw_only=True)
class Interpolate(Op):
    """Nearest or (bi/tri)linear interpolation by `scale`."""

    mode: str
    scale: tuple[int, ...]
    align_corners: bool | None = None

    def grid(self, axis: int) -> tuple[int, int, int]:
        return 0, 1, self.scale[axis]


@dataclass(frozen=True, kw_only=True)
class Resize(Op):
    """Nearest-neighbour resize growing each axis by `grow` (`layers.NearestResize`)."""

    grow: tuple[int, ...]

    def grid(self, axis: int) -> tuple[int, int, int]:
        return -self.grow[axis], 1, 1


@dataclass(frozen=True, kw_only=True)
class Shuffle(Op):
    """N-d pixel shuffle: channels to space by `factors`."""

    factors: tuple[int, ...]

    def grid(self, axis: int) -> tuple[int, int, int]:
        return 0, 1, self.factors[axis]


@dataclass(frozen=True, kw_only=True)
class Pad(Op):
    """Constant padding by `before` elements at the start of each axis."""

    before: tuple[int, ...]

    def grid(self, axis: int) -> tuple[int, int, int]:
        return -self.before[axis], 1, 1


@dataclass(frozen=True, kw_only=True)
class GlobalPool(Op):
    """Global average pooling: the mean over space of each channel, a map of size 1 per axis."""

    def grid(self, axis: int) -> tuple[int, int, int]:
        return 0, 1, 0  # s * 0 + 1 = 1

    def offset(self, axis: int) -> int:
        return 1


@dataclass(frozen=True, kw_only=True)
class Linear(Op):
    """A fully connected layer over the channels of a (B, C, 1, ..., 1) map, with bias
    (`layers.ChannelLinear`)."""

    bias: bool = True

    @property
    def parameters(self) -> int:
        return self.in_channels * self.out_channels + (self.out_channels if self.bias else 0)

    def macs(self, in_shape: Sequence[int], out_shape: Sequence[int]) -> int:
        return self.in_channels * self.out_channels


@dataclass(frozen=True, kw_only=True)
class Sigmoid(Op):
    """A sigmoid: the gate of an attention gate or of a squeeze-and-excitation."""


@dataclass(frozen=True, kw_only=True)
class Crop(Op):
    """The centred window of `inputs[0]` of the size of `inputs[1]` (a view: no copy)."""


@dataclass(frozen=True, kw_only=True)
class Sum(Op):
    """Element-wise sum of its inputs (residual sum, `merge: add`)."""


@dataclass(frozen=True, kw_only=True)
class Mul(Op):
    """`inputs[0]` times `inputs[1]`, the gate broadcast over channels (the attention gate, sSE)
    or over space (cSE)."""


@dataclass(frozen=True, kw_only=True)
class Max(Op):
    """Element-wise maximum of its two inputs (scSE's combination)."""


@dataclass(frozen=True, kw_only=True)
class Cat(Op):
    """Concatenation of its inputs along the channels."""


# ---------------------------------------------------------------------------------------------
# the walk


_SQUEEZE_ACT = ReLU()  # the activation between a squeeze-and-excitation's linear layers


@dataclass
class _Walk:
    config: UNetConfig
    ops: list[Op] = field(default_factory=list)
    level: int = 0
    part: Part = "encoder"
    segment: str | None = None
    norm_option: Norm | None = None
    """The norm of the convs walked now (a decoder block's `decoder_norm`); None: the config's."""
    act_option: Activation | None = None
    """The activation of the convs walked now; None: the config's."""

    @property
    def norm_type(self) -> Norm:
        return self.norm_option if self.norm_option is not None else self.config.norm

    @property
    def act_type(self) -> Activation:
        return self.act_option if self.act_option is not None else self.config.activation

    def add(self, cls: type[Op], module: str | None, inputs: tuple[int, ...], cin: int, cout: int, **kw: object) -> int:
        self.ops.append(
            cls(
                index=len(self.ops),
                module=module,
                inputs=inputs,
                in_channels=cin,
                out_channels=cout,
                level=self.level,
                part=self.part,
                segment=self.segment,
                **kw,
            )
        )
        return len(self.ops) - 1

    def channels(self, x: int) -> int:
        return self.config.in_channels if x == INPUT else self.ops[x].out_channels

    # -- layers, as `unetgen.model.layers` builds them -------------------------------------

    def conv(
        self,
        module: str,
        x: int,
        cout: int,
        kernel: int | tuple[int, ...],
        *,
        stride: int | tuple[int, ...] = 1,
        same: bool = False,
        bias: bool = True,
        row: str | None = None,
        source: object = None,
    ) -> int:
        n = self.config.spatial_dims
        k = kernel if isinstance(kernel, tuple) else (kernel,) * n
        s = stride if isinstance(stride, tuple) else (stride,) * n
        padding = tuple(v // 2 for v in k) if same else (0,) * n
        cin = self.channels(x)
        return self.add(
            Conv, module, (x,), cin, cout, kernel=k, stride=s, padding=padding, bias=bias, row=row, source=source
        )

    def transposed(self, module: str, x: int, **kw: object) -> int:
        """A transposed conv (`Conv` fields in `kw`, `cout` its output channels)."""
        cout = kw.pop("cout")
        return self.add(Conv, module, (x,), self.channels(x), cout, transposed=True, **kw)  # type: ignore[arg-type]

    def norm(self, module: str, x: int) -> int | None:
        option = self.norm_type
        if isinstance(option, NoNorm):
            return None
        c = self.channels(x)
        return self.add(NormOp, module, (x,), c, c, option=option, source=option)

    def act(
        self, module: str, x: int, *, inplace: bool = True, option: Activation | None = None, source: object = None
    ) -> int:
        option = self.act_type if option is None else option
        supported = not isinstance(option, (GELU, PReLU))  # layers.activation: torch has no in-place form
        c = self.channels(x)
        source = option if source is None else source
        return self.add(Act, module, (x,), c, c, option=option, inplace=inplace and supported, source=source)

    def norm_act(self, prefix: str, index: int, x: int, *, inplace: bool = True) -> tuple[int, int]:
        """Norm and activation in the config's order (`layers.norm_act`) before a pre-activation
        conv, as the modules `prefix.index`, `prefix.index + 1`: the last op and the next free index."""
        after = self.config.norm_position == "after_activation"
        x, index = self.act_at(prefix, index, x, inplace=inplace) if after else self.norm_at(prefix, index, x)
        return self.norm_at(prefix, index, x) if after else self.act_at(prefix, index, x, inplace=inplace)

    def norm_at(self, prefix: str, index: int, x: int) -> tuple[int, int]:
        """The norm (if any) as module `prefix.index`: the last op and the next free index."""
        if isinstance(self.norm_type, NoNorm):
            return x, index
        return self.norm(f"{prefix}.{index}", x), index + 1  # type: ignore[return-value]

    def act_at(self, prefix: str, index: int, x: int, *, inplace: bool = True) -> tuple[int, int]:
        return self.act(f"{prefix}.{index}", x, inplace=inplace), index + 1

    def with_norm_act(
        self,
        prefix: str,
        index: int,
        x: int,
        conv: Callable[[str, int], int],
        *,
        activate: bool = True,
        dropout: bool = False,
        after_conv: Callable[[str, int], int] | None = None,
    ) -> tuple[int, int]:
        """`conv(module, x)` with its norm and activation (`activate`) in the order of
        `norm_position` (`layers.with_norm_act`), with the config's dropout after each conv where
        `dropout` (`placement: every_conv`) and `after_conv(module, x)` (a resize) right after the
        conv, as modules `prefix.index`, ...: the last op and the next free index."""
        after = self.config.conv_dropout if dropout else None
        return self.steps(conv_steps(self.config.norm_position, pre=False, dropout_after=after), prefix, index, x,
                          {"conv": conv}, activate=activate, after_conv=after_conv)  # fmt: skip

    def steps(
        self,
        names: tuple[str, ...],
        prefix: str,
        index: int,
        x: int,
        parts: dict[str, Callable[[str, int], int]],
        *,
        activate: bool = True,
        inplace: bool = True,
        after_conv: Callable[[str, int], int] | None = None,
    ) -> tuple[int, int]:
        """The steps `names` of one conv (`unet_config.conv_steps`) as modules `prefix.index`, ...:
        the norm (if any), the activation (if `activate`), the conv `parts["conv"]`, the dropout."""
        for name in names:
            match name:
                case "conv":
                    x, index = parts["conv"](f"{prefix}.{index}", x), index + 1
                    if after_conv is not None:
                        x, index = after_conv(f"{prefix}.{index}", x), index + 1
                case "norm":
                    x, index = self.norm_at(prefix, index, x)
                case "act" if activate:
                    x, index = self.act_at(prefix, index, x, inplace=inplace)
                case "drop":
                    x, index = self.drop(f"{prefix}.{index}", x), index + 1
        return x, index

    def drop(self, module: str, x: int) -> int:
        d: Dropout = self.config.dropout
        c = self.channels(x)
        return self.add(Drop, module, (x,), c, c, rate=d.rate, spatial=d.spatial, source=d)

    # -- blocks, as `unetgen.model.blocks` builds them ------------------------------------

    def unit(self, path: str, row_prefix: str, first_row: int, stage: Stage, x: int, option: Block) -> int:
        """One `ConvBlock` at `path`: its body, then the residual shortcut and sum, then any excitation."""
        c = self.config
        pre, residual = option.preactivation, isinstance(option, ResidualBlock)
        same = c.padding == "same"
        norm_after = c.norm_position == "after_activation"
        has_norm = not isinstance(self.norm_type, NoNorm)
        after_sum = residual and option.last_activation == "after_sum"  # type: ignore[union-attr]
        stride = stage.first_stride
        strided = any(s != 1 for s in stride)
        if residual and option.shortcut == "input_projection" and stage.in_channels != stage.out_channels:
            x = self.conv(f"{path}.project", x, stage.out_channels, 1, bias=True, source=option)
        h, index = x, 0
        last = len(stage.channels) - 1
        body = f"{path}.body"
        bottleneck = residual and option.bottleneck  # type: ignore[union-attr]
        for j, cout in enumerate(stage.channels):
            row = f"{row_prefix}.conv{first_row + j + 1}"
            conv = partial(
                self.conv,
                cout=cout,
                kernel=1 if bottleneck and j != 1 else stage.kernel,  # 1x1, kxk (strided), 1x1
                stride=stride if j == (1 if bottleneck else 0) else 1,
                same=same,
                bias=c.conv_bias,
                row=row,
            )
            if pre:
                # activation first (no norm, or norm_after): in place it would overwrite the block's input
                names = conv_steps(c.norm_position, pre=True, dropout_after=c.conv_dropout)
                h, index = self.steps(names, body, index, h, {"conv": conv}, inplace=has_norm and not norm_after)
            else:  # a residual block's last conv is activated after the sum (`last_activation`)
                activate = not (after_sum and j == last)
                h, index = self.with_norm_act(body, index, h, conv, activate=activate, dropout=True)
        if not residual:
            return h if option.excitation is None else self.excite(f"{path}.excite", h, option.excitation)
        assert isinstance(option, ResidualBlock)
        cin, cout = self.channels(x), stage.out_channels
        identity = x if strided else self.add(Crop, None, (x, h), cin, cin, source=option)
        s, k = identity, 0
        projected = False
        match option.shortcut:
            case "conv" if cin != cout or strided:  # the block's kernel where it strides, else 1x1; no norm
                kernel = stage.kernel if strided else 1
                s = self.conv(
                    f"{path}.shortcut.0", s, cout, kernel, stride=stride, same=strided, bias=c.conv_bias, source=option
                )
                k = 1
            case "projection" if cin != cout or strided:
                s = self.conv(f"{path}.shortcut.0", s, cout, 1, stride=stride, bias=c.conv_bias or pre, source=option)
                k, projected = 1, True
            case "resnet_d":
                if strided:
                    s = self.add(
                        Pool,
                        f"{path}.shortcut.0",
                        (s,),
                        cin,
                        cin,
                        mode="avg",
                        kernel=stride,
                        stride=stride,
                        ceil_mode=True,
                        source=option,
                    )
                    k = 1
                if cin != cout:
                    s = self.conv(f"{path}.shortcut.{k}", s, cout, 1, bias=False, source=option)
                    k, projected = k + 1, True
        if projected and not pre and has_norm:
            s = self.norm(f"{path}.shortcut.{k}", s)  # type: ignore[assignment]
        h = self.add(Sum, None, (h, s), cout, cout, source=option)
        if after_sum and not pre:
            h = self.act(f"{path}.post_act", h, option=option.post_activation)
        return h if option.excitation is None else self.excite(f"{path}.excite", h, option.excitation)

    def excite(self, path: str, x: int, option: Excitation) -> int:
        """Squeeze-and-excitation of `x` (`blocks.Excite`): cSE, then sSE, then their combination."""
        c = self.channels(x)
        gated: list[int] = []
        match option:
            case ChannelExcitation(reduction=r) | ChannelSpatialExcitation(reduction=r):
                hidden, at = max(1, c // r), f"{path}.channel"
                g = self.add(GlobalPool, f"{at}.0", (x,), c, c, source=option)
                g = self.add(Linear, f"{at}.1", (g,), c, hidden, source=option)
                g = self.act(f"{at}.2", g, inplace=False, option=_SQUEEZE_ACT, source=option)
                g = self.add(Linear, f"{at}.3", (g,), hidden, c, source=option)
                g = self.add(Sigmoid, f"{at}.4", (g,), c, c, source=option)  # (B, C, 1, ..., 1)
                gated.append(self.add(Mul, None, (x, g), c, c, source=option))
        match option:
            case SpatialExcitation() | ChannelSpatialExcitation():
                g = self.conv(f"{path}.spatial.0", x, 1, 1, source=option)
                g = self.add(Sigmoid, f"{path}.spatial.1", (g,), 1, 1, source=option)  # (B, 1, *S)
                gated.append(self.add(Mul, None, (x, g), c, c, source=option))
        if len(gated) == 1:
            return gated[0]
        assert isinstance(option, ChannelSpatialExcitation)
        combine = Max if option.combine == "max" else Sum
        return self.add(combine, None, tuple(gated), c, c, source=option)

    def block(self, path: str, row_prefix: str, stage: Stage, x: int, option: Block, dropout: bool) -> int:
        """A level's block: one `ConvBlock` per unit (`blocks_per_level`), dropout after the last."""
        units = stage.split_units()
        first = 0
        for u, unit in enumerate(units):
            unit_path = f"{path}.{u}" if len(units) > 1 else path
            x = self.unit(unit_path, row_prefix, first, unit, x, option)
            first += len(unit.channels)
        if dropout and units:  # a level of no units (the stem alone) has no dropout
            d: Dropout = self.config.dropout
            c = self.channels(x)
            last = f"{path}.{len(units) - 1}" if len(units) > 1 else path
            x = self.add(Drop, f"{last}.dropout", (x,), c, c, rate=d.rate, spatial=d.spatial, source=d)
        return x

    def head_up(self, x: int) -> int:
        """`head: upsample`'s up-sampling of level 0's map by the stem stride, keeping its channels."""
        lay = self.config.layout
        return self.up("head.up", x, 0, cout=self.channels(x), stride=lay.stem_stride, row=None)

    def up(
        self,
        path: str,
        x: int,
        i: int,
        *,
        cout: int | None = None,
        stride: tuple[int, ...] | None = None,
        row: str | None = "",
    ) -> int:
        """Decoder level `i`'s up-sampling (`unetgen.model.blocks.make_up`); `cout`, `stride` and
        `row` given: the head's (`head: upsample`)."""
        c, lay, n = self.config, self.config.layout, self.config.spatial_dims
        cout = lay.up_channels[i] if cout is None else cout
        stride = lay.strides[i] if stride is None else stride
        option = c.up
        row = f"up{i}" if row == "" else row
        match option:
            case TransposeUp(bias=bias, kernel_size=k, norm_act=norm_act, size_by=size_by, residual_unit=unit):
                resize = None
                if k is None:  # kernel = stride: no padding
                    kw = dict(kernel=stride, padding=(0,) * n, output_padding=(0,) * n)
                elif size_by == "nearest_resize":  # (in - 1) * stride + 1, then resized to in * stride
                    kw = dict(kernel=(k,) * n, padding=(k // 2,) * n, output_padding=(0,) * n)
                    grow = tuple(s - 1 for s in stride)
                    resize = partial(self.resize, grow=grow, row=None if unit else row, source=option)
                else:  # padded by k // 2, output padding stride - 1: out = in * stride
                    kw = dict(kernel=(k,) * n, padding=(k // 2,) * n, output_padding=tuple(s - 1 for s in stride))
                conv_row = None if resize is not None or unit else row
                conv = partial(self.transposed, cout=cout, stride=stride, bias=bias, row=conv_row, source=option, **kw)
                up = f"{path}.up" if unit else path
                if not norm_act:
                    x = conv(up, x) if resize is None else resize(f"{up}.1", conv(f"{up}.0", x))
                else:
                    x = self.with_norm_act(up, 0, x, conv, after_conv=resize)[0]
                if unit:  # conv, norm, activation, added to the up-sampled map
                    x = self.residual_unit(f"{path}.unit", x, c.layout.decoder[i].kernel, row=row, source=option)
                return x
            case NearestUp(conv=when) | LinearUp(conv=when):
                if when == "always" or self.channels(x) != cout:  # the 1x1 conv runs first, on the coarser map
                    x = self.conv(f"{path}.1", x, cout, 1, source=option)
                if isinstance(option, LinearUp):
                    mode, corners = {1: "linear", 2: "bilinear", 3: "trilinear"}[n], option.align_corners
                else:
                    mode, corners = "nearest", None
                return self.add(
                    Interpolate,
                    f"{path}.0",
                    (x,),
                    cout,
                    cout,
                    mode=mode,
                    scale=stride,
                    align_corners=corners,
                    row=row,
                    source=option,
                )
            case PixelShuffleUp(kernel_size=k, pad_pool=pad_pool):
                x = self.conv(f"{path}.0", x, cout * math.prod(stride), k, same=True, source=option)
                shuffled = None if pad_pool else row
                x = self.add(
                    Shuffle,
                    f"{path}.1",
                    (x,),
                    cout * math.prod(stride),
                    cout,
                    factors=stride,
                    row=shuffled,
                    source=option,
                )
                if pad_pool:  # zeros before each axis, then a stride-1 mean over stride-wide windows
                    x = self.add(Pad, f"{path}.2", (x,), cout, cout, before=tuple(s - 1 for s in stride), source=option)
                    x = self.add(
                        Pool,
                        f"{path}.3",
                        (x,),
                        cout,
                        cout,
                        mode="avg",
                        kernel=stride,
                        stride=(1,) * n,
                        row=row,
                        source=option,
                    )
                return x
        raise AssertionError(f"unhandled up {option!r}")

    def resize(self, module: str, x: int, *, grow: tuple[int, ...], row: str | None, source: object) -> int:
        c = self.channels(x)
        return self.add(Resize, module, (x,), c, c, grow=grow, row=row, source=source)

    def residual_unit(
        self, path: str, x: int, kernel: tuple[int, ...], *, activate: bool = True, row: str | None, source: object
    ) -> int:
        """`x` plus a same-padded conv of it (with its norm and activation if `activate`), as the
        modules `path.0`, ...: MONAI's one-conv ResidualUnit after an up-sampling."""
        cout = self.channels(x)
        conv = partial(self.conv, cout=cout, kernel=kernel, same=True, bias=self.config.conv_bias, source=source)
        if activate:
            h = self.with_norm_act(path, 0, x, conv)[0]
        else:
            h = conv(f"{path}.0", x)
        return self.add(Sum, None, (h, x), cout, cout, row=row, source=source)

    def merge(self, path: str, skip: int, up: int, i: int) -> int:
        """The skip, centre-cropped to the up-sampled map, merged with it (`SkipMerge`)."""
        option, row = self.config.merge, f"merge{i}"
        cs, cu = self.channels(skip), self.channels(up)
        self.part = "merge"
        crop = self.add(Crop, None, (skip, up), cs, cs, source=option)
        match option:
            case Add():
                return self.add(Sum, None, (crop, up), cu, cu, row=row, source=option)
            case Concat(order="up_first"):
                return self.add(Cat, None, (up, crop), cu + cs, cu + cs, row=row, source=option)
            case Concat():
                return self.add(Cat, None, (crop, up), cs + cu, cs + cu, row=row, source=option)
            case AttentionGate(psi_norm=psi_norm, branch_order=order):
                inter, gate = self.config.attention_channels[i], f"{path}.gate"
                projected = {}
                for branch in ("w_x", "w_g") if order == "skip_first" else ("w_g", "w_x"):
                    h = self.conv(f"{gate}.{branch}.0", crop if branch == "w_x" else up, inter, 1, source=option)
                    projected[branch] = self.norm(f"{gate}.{branch}.1", h) or h
                wx, wg = projected["w_x"], projected["w_g"]
                a = self.act(f"{gate}.act", self.add(Sum, None, (wx, wg), inter, inter, source=option))
                psi = self.conv(f"{gate}.psi.0", a, 1, 1, source=option)
                k = 1
                if psi_norm and not isinstance(self.config.norm, NoNorm):
                    psi, k = self.norm(f"{gate}.psi.1", psi), 2  # type: ignore[assignment]
                alpha = self.add(Sigmoid, f"{gate}.psi.{k}", (psi,), 1, 1, source=option)  # (B, 1, *S) in [0, 1]
                gated = self.add(Mul, None, (crop, alpha), cs, cs, source=option)
                return self.add(Cat, None, (gated, up), cs + cu, cs + cu, row=row, source=option)
        raise AssertionError(f"unhandled merge {option!r}")


@lru_cache(maxsize=256)
def network_ops(config: UNetConfig) -> tuple[Op, ...]:
    """Every operation of the network `config` describes, in the order `UNet.forward` runs them
    in training mode (the deep-supervision heads, `training_only`, are skipped in eval mode)."""
    c, lay, depth = config, config.layout, config.depth
    w = _Walk(config)
    x, skips = INPUT, []
    for i, stage in enumerate(lay.encoder):
        path = "bottleneck" if i == depth else f"encoder.{i}"
        w.level, w.segment = i, path
        same_level = i == depth and not c.resample_bottleneck  # no down-sampling into the bottleneck
        if i == 1 and isinstance(c.down, FirstConvDown) and c.down.first_step == "max_pool":  # ResNet's stem pool
            w.part, stride, ch = "down", lay.strides[0], w.channels(x)
            x = w.add(
                Pool, f"{path}.down", (x,), ch, ch, mode="max", kernel=tuple(2 * s - 1 for s in stride),
                stride=stride, padding=tuple(s - 1 for s in stride), row="down0", source=c.down,
            )  # fmt: skip
        if i > 0 and not isinstance(c.down, FirstConvDown) and not same_level:  # first_conv: the block's conv strides
            w.part, stride, ch, row = "down", lay.strides[i - 1], w.channels(x), f"down{i - 1}"
            match c.down:
                case MaxPool() | AvgPool():
                    mode = "max" if isinstance(c.down, MaxPool) else "avg"
                    x = w.add(
                        Pool,
                        f"{path}.down",
                        (x,),
                        ch,
                        ch,
                        mode=mode,
                        kernel=stride,
                        stride=stride,
                        row=row,
                        source=c.down,
                    )
                case ConvDown():
                    x = w.conv(f"{path}.down", x, ch, stride, stride=stride, row=row, source=c.down)
                case _:
                    raise AssertionError(f"unhandled down {c.down!r}")
        if i == 0 and lay.stem is not None:  # conv, norm, activation before level 0's block
            w.part, stem, same = "stem", lay.stem, c.padding == "same"
            kw = dict(cout=stem.out_channels, kernel=stem.kernel, stride=stem.first_stride, same=same, bias=c.conv_bias)
            x, _ = w.with_norm_act(f"{path}.stem", 0, x, partial(w.conv, row="stem", **kw), dropout=True)
        w.part = "bottleneck" if i == depth else "encoder"
        prefix = "bottleneck" if i == depth else f"enc{i}"
        x = w.block(f"{path}.block", prefix, stage, x, c.block, lay.encoder_dropout[i])
        if i < depth:
            skips.append(x)
    for i in reversed(range(depth)):
        path = f"decoder.{i}"
        w.level, w.segment, w.part = i, path, "up"
        up = x if i == depth - 1 and not c.resample_bottleneck else w.up(f"{path}.up", x, i)  # else as it is
        x = w.merge(f"{path}.merge", skips[i], up, i)
        w.part = "decoder"
        w.norm_option, w.act_option = c.decoder_norm, c.decoder_activation
        x = w.block(f"{path}.block", f"dec{i}", lay.decoder[i], x, c.decoder_block_type, lay.decoder_dropout[i])
        w.norm_option = w.act_option = None
        if i in c.deep_supervision:
            w.part, w.segment = "aux", None
            w.add(
                Conv,
                f"{path}.aux",
                (x,),
                w.channels(x),
                c.out_channels,
                kernel=(1,) * c.spatial_dims,
                stride=(1,) * c.spatial_dims,
                padding=(0,) * c.spatial_dims,
                bias=True,
                row=f"aux{i}",
                training_only=True,
            )
    w.level, w.segment, w.part = 0, None, "head"
    match c.head:
        case ConvHead(kernel_size=k):
            w.conv("head", x, c.out_channels, k, same=c.padding == "same", row="head", source=c.head)
        case TransposeHead(kernel_size=k, bias=bias, norm_act=norm_act, residual_unit=unit):
            s, n = lay.stem_stride, c.spatial_dims  # up-samples level 0 by the stem stride: the input's resolution
            conv = partial(
                w.transposed, cout=c.out_channels, stride=s, kernel=(k,) * n, padding=(k // 2,) * n,
                output_padding=tuple(v - 1 for v in s), bias=bias, row=None if unit else "head", source=c.head,
            )  # fmt: skip
            up = "head.up" if unit else "head"
            x = conv(up, x) if not norm_act else w.with_norm_act(up, 0, x, conv)[0]
            if unit:  # a conv alone (MONAI: the network's last conv), added to its input
                w.residual_unit("head.unit", x, lay.encoder[0].kernel, activate=False, row="head", source=c.head)
        case UpsampleHead(channels=widths, kernel_size=k):  # up-sampled by the stem stride, convs, output conv
            w.part = "head"
            x = w.head_up(x)
            kernel, same = lay.decoder[0].kernel, c.padding == "same"
            w.norm_option, w.act_option = c.decoder_norm, c.decoder_activation
            for j, cout in enumerate(widths):
                conv = partial(w.conv, cout=cout, kernel=kernel, same=same, bias=c.conv_bias, source=c.head)
                x = w.with_norm_act(f"head.convs.{j}", 0, x, conv)[0]
            w.norm_option = w.act_option = None
            w.conv("head.out", x, c.out_channels, k, same=same, row="head", source=c.head)
        case _:
            raise AssertionError(f"unhandled head {c.head!r}")
    return tuple(w.ops)


def tile_dependence(config: UNetConfig) -> str | None:
    """Why the network's output at a pixel depends on the whole input it is given, not only on
    the pixels around it: the first op that takes statistics over space (instance, group or layer
    norm; a global pool), named; None when it has none, so that tiles of any valid size compute
    the same function (up to the border effects of same padding). A model trained on patches of
    one size and tile-dependent is predicted best with tiles of that size (nnU-Net's rule)."""
    for op in network_ops(config):
        if isinstance(op, NormOp) and op.groups:
            kind = type(op.option).__name__.removesuffix("Norm").lower()
            return f"{op.module or 'a layer'} ({kind} norm) normalises over the whole tile"
        if isinstance(op, GlobalPool):
            return f"{op.module or 'a layer'} averages over the whole tile"
    return None


def op_shapes(config: UNetConfig, input_shape: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """The spatial output shape of every op of `network_ops(config)` for a valid `input_shape`
    (check it with `shapes.output_shape` first: here an inexact division is an internal error)."""
    ops = network_ops(config)
    out: list[tuple[int, ...]] = []
    for op in ops:
        if isinstance(op, Crop):
            out.append(out[op.inputs[1]])
            continue
        src = tuple(input_shape) if op.inputs[0] == INPUT else out[op.inputs[0]]
        shape = []
        for a, s in enumerate(src):
            shrink, divide, multiply = op.grid(a)
            q, r = divmod(s - shrink, divide)
            assert r == 0 and q >= 1, f"{op.module or type(op).__name__}: size {s} is off the grid"
            shape.append(q * multiply + op.offset(a))
        out.append(tuple(shape))
    return tuple(out)
