"""`UNetConfig`: the declarative description of a U-Net, its resolved per-stage view (`Stage`,
`Layout`) and its cross-field rules.

`UNetConfig()` is the network of Ronneberger et al. 2015 (Figure 1). Its option types are in
`options`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from .options import (
    MAX_BLOCKS,
    MAX_CHANNELS,
    MAX_CONVS,
    MAX_DEPTH,
    MAX_KERNEL,
    MAX_STRIDE,
    Activation,
    Add,
    AttentionGate,
    Block,
    Concat,
    ConvHead,
    Down,
    Dropout,
    DropoutShorthand,
    FirstConvDown,
    GroupNorm,
    Head,
    MaxPool,
    Merge,
    NoNorm,
    Norm,
    NormPosition,
    Padding,
    PlainBlock,
    ReLU,
    ResidualBlock,
    SpatialDims,
    TransposeHead,
    TransposeUp,
    Up,
    UpsampleHead,
    _Model,
)

# ---------------------------------------------------------------------------------------------
# the resolved, per-stage view


@dataclass(frozen=True)
class Stage:
    """One block of convolutions: its input channels, the output channels of each conv and the
    kernel size of its convs per spatial axis; `stride` is the stride of its first conv (all
    ones unless `down: first_conv`)."""

    in_channels: int
    channels: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...] | None = None
    units: int = 1
    """Blocks (units) the convs form, each with an equal share of `channels` (`blocks_per_level`);
    only the first unit changes channels and strides."""

    @property
    def first_stride(self) -> tuple[int, ...]:
        """The stride of the first conv, per axis."""
        return self.stride if self.stride is not None else (1,) * len(self.kernel)

    def split_units(self) -> tuple[Stage, ...]:
        """One single-unit stage per unit, in order (none for a level of no units: the stem alone)."""
        if self.units == 0:
            return ()
        m = len(self.channels) // self.units
        out, cin = [], self.in_channels
        for u in range(self.units):
            chans = self.channels[u * m : (u + 1) * m]
            out.append(Stage(cin, chans, self.kernel, self.stride if u == 0 else None))
            cin = out[-1].out_channels
        return tuple(out)

    @property
    def out_channels(self) -> int:
        """The channels of the last conv's output (a block of no convs passes its input on)."""
        return self.channels[-1] if self.channels else self.in_channels


@dataclass(frozen=True)
class Layout:
    """The config resolved to explicit per-stage values: `encoder` has depth+1 stages (the last is
    the bottleneck); `strides[i]` goes from level i to level i+1; `coarse_channels[i]` (the map
    decoder level i up-samples), `up_channels[i]` and `decoder[i]` belong to level i (0 = full
    resolution); `stem_stride` is the stride of level 0's first conv (per axis) and `stem` the
    conv before level 0 (None without `stem: true`); `encoder_dropout[i]` and
    `decoder_dropout[i]` say whether that level's block ends in dropout."""

    encoder: tuple[Stage, ...]
    strides: tuple[tuple[int, ...], ...]
    coarse_channels: tuple[int, ...]
    up_channels: tuple[int, ...]
    decoder: tuple[Stage, ...]
    stem_stride: tuple[int, ...] = ()
    stem: Stage | None = None
    encoder_dropout: tuple[bool, ...] = ()
    decoder_dropout: tuple[bool, ...] = ()


PerStage = int | tuple[int | tuple[int, ...], ...]
Width = Annotated[int, Field(ge=1, le=MAX_CHANNELS)]
ChannelSpec = tuple[Width | Annotated[tuple[Width, ...], Field(min_length=1)], ...]
ConvCount = Annotated[int, Field(ge=1, le=MAX_CONVS)]
DecoderConvCount = Annotated[int, Field(ge=0, le=MAX_CONVS)]
BlockCount = Annotated[int, Field(ge=1, le=MAX_BLOCKS)]
LevelBlockCount = Annotated[int, Field(ge=0, le=MAX_BLOCKS)]


class UNetConfig(_Model):
    """A U-Net, declared as data. The defaults are the network of Ronneberger et al. 2015."""

    spatial_dims: SpatialDims = 2
    """Number of spatial axes: 1 (signals), 2 (images) or 3 (volumes)."""
    in_channels: int = Field(1, ge=1, le=MAX_CHANNELS)
    """Channels of the input image."""
    out_channels: int = Field(2, ge=1, le=MAX_CHANNELS)
    """Channels of the output (classes for segmentation)."""
    depth: int = Field(4, ge=1, le=MAX_DEPTH)
    """Number of down-sampling steps; the network has depth+1 resolution levels (paper: 4)."""
    base_channels: int = Field(64, ge=1, le=MAX_CHANNELS)
    """Channels of the first level; level i has base_channels * channel_multiplier**i."""
    channel_multiplier: int = Field(2, ge=1, le=8)
    """Factor between the channels of consecutive levels."""
    channels: ChannelSpec | None = None
    """Explicit channels per level (depth+1 entries, the last is the bottleneck). An entry is an
    int (every conv of the block) or a list with one value per conv (the 3D U-Net doubles the
    channels inside each block: [[32, 64], [64, 128], ...]; with `blocks_per_level`, per unit).
    Overrides base_channels and channel_multiplier, which must then be left at their defaults or
    agree."""
    decoder_channels: ChannelSpec | None = None
    """Channels of each decoder level's convs (depth entries, level 0 first); default: the
    output channels of the encoder level at the same resolution."""
    convs_per_block: ConvCount | tuple[ConvCount, ...] = 2
    """Convolutions per encoder block (per unit with `blocks_per_level`): one int, or one per
    level including the bottleneck."""
    decoder_convs_per_block: DecoderConvCount | tuple[DecoderConvCount, ...] | None = None
    """Convolutions per decoder block: one int or one per level (level 0 first); default: as
    the encoder block of the same level. 0: the level has no conv, its merged map goes on as it
    is (MONAI's UNet); such a level's block must be plain."""
    blocks_per_level: BlockCount | tuple[LevelBlockCount, ...] = 1
    """Blocks (units) per encoder level, each of `convs_per_block` convs: one int, or one per
    level including the bottleneck (nnU-Net ResEnc's n_blocks_per_stage, e.g. [1, 3, 4, 6, 6, 6]).
    Only the first unit of a level changes the channels and strides. Level 0 may have 0 with
    `stem: true`: level 0 is then the stem alone, which carries `stem_stride` (ResNet's input
    stem: `[0, 2, 2, 2, 2]`)."""
    stem: bool = False
    """One conv (level 0's kernel, in_channels -> level 0's channels) + norm + activation before
    level 0's blocks (nnU-Net ResEnc's stem)."""
    kernel_size: int | tuple[int | tuple[int, ...], ...] = 3
    """Conv kernel size (odd): one int, or one entry per level (depth+1), each an int or a list
    with one value per spatial axis, e.g. [[1, 3, 3], [3, 3, 3], ...] for anisotropic volumes.
    Decoder level i uses the kernel of encoder level i (see `decoder_kernel`). A list of ints that
    could also be one value per axis (depth+1 = spatial_dims, values not all equal) is refused:
    write its entries as lists."""
    decoder_kernel: Literal["same_level", "level_below"] = "same_level"
    """The kernel of decoder level i: `same_level` = kernel_size[i] (the paper, nnU-Net);
    `level_below` = kernel_size[i + 1], the level it up-samples from (MONAI's DynUNet)."""
    strides: int | tuple[int | tuple[int, ...], ...] = 2
    """Down-sampling factor of each step: one int, or one entry per step (depth), each an int
    or one value per axis, e.g. [[1, 2, 2], [2, 2, 2], ...]. Pool, strided-conv and up-sampling
    kernels equal the stride. A list of ints that could also be one value per axis (depth =
    spatial_dims, values not all equal) is refused: write its entries as lists."""
    stem_stride: int | tuple[int, ...] = 1
    """Stride of the first conv of level 0 (MONAI DynUNet's strides[0]): one int or one per
    axis; the output is then at 1/stem_stride of the input's resolution. Only with
    `down: first_conv` (and so `padding: same`)."""
    resample_bottleneck: bool = True
    """`false`: the bottleneck works at the resolution of the deepest encoder level (MONAI's
    UNet): the last entry of `strides` must be 1, nothing down-samples into the bottleneck and
    decoder level depth-1 merges the bottleneck's output as it is (no up-sampling layer, whatever
    `up` and `up_channels` say)."""
    padding: Padding = "valid"
    """`valid`: unpadded convs, each k x k conv shrinks the map by k-1 (the paper); `same`:
    zero padding keeps the size."""
    norm: Norm = NoNorm()
    """Normalisation after each conv: none (the paper), batch, instance, group or layer."""
    bias: bool | None = None
    """Conv bias; default on without norm and off with it."""
    activation: Activation = ReLU()
    """Non-linearity after each conv (after its norm, see `norm_position`)."""
    decoder_norm: Norm | None = None
    """Normalisation of the decoder blocks' convs (not of the up-sampling, the gates or the
    heads); default: `norm` (MONAI's AttentionUnet: instance norm there, batch norm elsewhere)."""
    decoder_activation: Activation | None = None
    """Non-linearity of the decoder blocks' convs; default: `activation` (MONAI's AttentionUnet:
    PReLU there, ReLU elsewhere)."""
    norm_position: NormPosition = "before_activation"
    """Where the norm sits: conv, norm, activation (`before_activation`, the usual order),
    conv, activation, norm (`after_activation`, e.g. jvanvugt's pytorch-unet with batch_norm;
    pre-activation blocks then run activation, norm, conv) or norm, conv, activation
    (`before_conv`, pytorch-3dunet's default `gcr` order: the norm sees the conv's input; for the
    block convs, the stem and a transposed conv with `norm_act`, not for projections)."""
    block: Block = PlainBlock()
    """Block type: plain (the paper) or residual."""
    decoder_block: Block | None = None
    """Block type of the decoder levels; default: as `block` (nnU-Net ResEnc: residual encoder,
    plain decoder)."""
    merge: Merge = Concat()
    """How a decoder level combines its skip with the up-sampled map."""
    down: Down = MaxPool()
    """Down-sampling: max pooling (the paper), average pooling, a strided conv, or `first_conv`:
    the stride in the first conv of each lower level (nnU-Net, DynUNet)."""
    up: Up = TransposeUp()
    """Up-sampling: a transposed conv (the paper's up-convolution), interpolation + 1x1 conv, or
    a sub-pixel conv (pixel shuffle)."""
    up_channels: Literal["skip", "keep", "half"] | tuple[Width, ...] = "skip"
    """Channels after up-sampling: `skip` = those of the skip it is merged with (the paper halves
    1024 to 512), `keep` = unchanged (the 3D U-Net of Cicek et al. 2016), `half` = half the
    coarser map's (rounded down; MONAI's BasicUNet), or one int per decoder level (level 0
    first)."""
    dropout: Annotated[Dropout, DropoutShorthand()] = Dropout()
    """Dropout rate and placement; the paper puts it at the end of the contracting path. A number
    is the rate (`dropout: 0.2`), `0`, `false` or `null` mean no dropout, `true` the paper's
    (rate 0.5 at the end of the contracting path, the default)."""
    head: Head = ConvHead()
    """The output layer: a conv at level 0's resolution (`conv`, 1x1 by default: the paper) or a
    transposed conv that up-samples by `stem_stride` (`transpose`: MONAI's UNet)."""
    deep_supervision: tuple[Annotated[int, Field(ge=1, le=MAX_DEPTH - 1)], ...] = ()
    """Decoder levels (1..depth-1, 0 is the main output) that get a 1x1 auxiliary head; in
    training mode `forward` then returns [main, aux(level) for each level in ascending order]."""
    init: Literal["paper", "torch"] = "paper"
    """Weight init: `paper` = Gaussian with std sqrt(2/fan_in) and zero bias (He et al.), as in
    the paper; `torch` = PyTorch's default."""
    checkpointing: bool = False
    """Activation checkpointing per level in training: less memory, more compute."""

    # -- cross-field rules -------------------------------------------------------------------

    @model_validator(mode="after")
    def _check(self) -> UNetConfig:
        """Run every rule of `_RULES` and report all their problems at once; a rule whose
        prerequisite rules failed is skipped (it would only repeat their problem)."""
        failed: set[Rule] = set()
        problems: list[InitErrorDetails] = []
        for r in _RULES:
            if failed.intersection(r.needs):
                failed.add(r)
                continue
            try:
                r.check(self)
            except ValueError as err:
                failed.add(r)
                problems.append(r.error(str(err), self))
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if self.channels is not None:  # explicit channels replace base_channels/channel_multiplier
            data.pop("base_channels", None)
            data.pop("channel_multiplier", None)
        return data

    # -- resolved view -----------------------------------------------------------------------

    def _encoder_convs(self) -> tuple[int, ...]:
        c = self.convs_per_block
        return c if isinstance(c, tuple) else (c,) * (self.depth + 1)

    def _decoder_convs(self) -> tuple[int, ...]:
        c = self.decoder_convs_per_block
        if c is None:
            return self._encoder_convs()[: self.depth]
        return c if isinstance(c, tuple) else (c,) * self.depth

    @cached_property
    def layout(self) -> Layout:
        """Every per-stage value made explicit (computed once per config)."""
        d, n = self.depth, self.spatial_dims
        enc_convs, dec_convs = self._encoder_convs(), self._decoder_convs()
        if self.channels is None:
            widths: tuple[Any, ...] = tuple(self.base_channels * self.channel_multiplier**i for i in range(d + 1))
        else:
            widths = self.channels
        kernels = _expand_axes(self.kernel_size, d + 1, n)
        strides = _expand_axes(self.strides, d, n)
        encoder: list[Stage] = []
        cin = self.in_channels
        stem = None
        units = self.blocks_per_level
        units = units if isinstance(units, tuple) else (units,) * (d + 1)
        first_conv = isinstance(self.down, FirstConvDown)
        stem_stride = self.stem_stride if isinstance(self.stem_stride, tuple) else (self.stem_stride,) * n
        if self.stem:  # the stem alone at level 0 (no units there) carries the stem stride
            stem = Stage(cin, (_last(widths[0]),), kernels[0], stem_stride if units[0] == 0 and first_conv else None)
            cin = stem.out_channels
        pooled = first_conv and self.down.first_step == "max_pool"  # type: ignore[union-attr]
        for i in range(d + 1):
            chans = _expand_convs(widths[i], enc_convs[i])
            stride = (stem_stride if i == 0 else strides[i - 1]) if first_conv and not (pooled and i == 1) else None
            encoder.append(Stage(cin, chans * units[i], kernels[i], stride, units[i]))
            cin = chans[-1]
        dec_widths = self.decoder_channels or tuple(encoder[i].out_channels for i in range(d))
        coarse, ups, decoder = [0] * d, [0] * d, []
        below = encoder[d].out_channels  # the map coming up from the level below
        for i in reversed(range(d)):
            coarse[i] = below
            match self.up_channels:
                case _ if i == d - 1 and not self.resample_bottleneck:  # not up-sampled: as it is
                    ups[i] = below
                case "skip":
                    ups[i] = encoder[i].out_channels
                case "keep":
                    ups[i] = below
                case "half":
                    ups[i] = below // 2
                case tuple(given):
                    ups[i] = given[i]
            skip = 0 if isinstance(self.merge, Add) else encoder[i].out_channels
            chans = _expand_convs(dec_widths[i], dec_convs[i])
            kernel = kernels[i + 1] if self.decoder_kernel == "level_below" else kernels[i]
            decoder.insert(0, Stage(ups[i] + skip, chans, kernel))
            below = decoder[0].out_channels  # the merged map itself where the level has no conv
        enc_drop, dec_drop = _dropout_levels(self.dropout, d)
        return Layout(
            tuple(encoder), strides, tuple(coarse), tuple(ups), tuple(decoder), stem_stride, stem, enc_drop, dec_drop
        )

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> UNetConfig:
        """A validated copy with `update` applied (configs are frozen; this is how to vary one)."""
        return type(self).model_validate({**self.model_dump(exclude_unset=True), **(update or {})})

    @property
    def attention_channels(self) -> tuple[int, ...]:
        """Intermediate channels of each level's attention gate (level 0 first); empty without gates."""
        if not isinstance(self.merge, AttentionGate):
            return ()
        return tuple(self.merge.inter_channels or max(1, s.out_channels // 2) for s in self.layout.encoder[:-1])

    @property
    def decoder_block_type(self) -> PlainBlock | ResidualBlock:
        """The decoder's block option: `decoder_block`, or `block` when that is None."""
        return self.decoder_block if self.decoder_block is not None else self.block

    @property
    def conv_dropout(self) -> str | None:
        """The step of every block conv that dropout follows (`dropout.placement: every_conv`, a
        rate above 0): "conv", "norm" or "activation"; None otherwise."""
        d = self.dropout
        return d.after if d.placement == "every_conv" and d.rate > 0 else None

    @property
    def decoder_norm_type(self) -> Norm:
        """The decoder blocks' norm: `decoder_norm`, or `norm` when that is None."""
        return self.decoder_norm if self.decoder_norm is not None else self.norm

    @property
    def decoder_activation_type(self) -> Activation:
        """The decoder blocks' activation: `decoder_activation`, or `activation` when that is None."""
        return self.decoder_activation if self.decoder_activation is not None else self.activation

    @property
    def conv_bias(self) -> bool:
        """Whether convs followed by a norm have a bias: `bias`, or on exactly when norm is none."""
        return self.bias if self.bias is not None else isinstance(self.norm, NoNorm)


# ---------------------------------------------------------------------------------------------
# cross-field rules: small and independent, each raising ValueError with one problem. `@rule`
# declares the fields a rule is about (its message quotes them), the other fields it reads and
# the rules that must have passed first (the per-stage layout needs every length and per-axis
# rule), and registers it in `_RULES`, the reporting order; one run reports every independent
# problem, each carrying its fields so that diagnostics can point at them


Check = Callable[[UNetConfig], None]
"""A rule's check: raises ValueError with one problem of the config."""


@dataclass(frozen=True, eq=False)
class Rule:
    """A cross-field rule: `check` raises ValueError with one problem. `fields` are the fields its
    problem is about (always named with it), `reads` the other fields its outcome depends on
    (named where the config sets them to other than their default), and `needs` the rules that
    must have passed for it to run (it would only repeat their problem)."""

    check: Check
    fields: tuple[str, ...]
    reads: tuple[str, ...] = ()
    needs: tuple[Rule, ...] = ()

    def error(self, message: str, config: UNetConfig) -> InitErrorDetails:
        """The pydantic error for `message` about `config`; its ctx carries `fields` and the
        `reads` that `config` sets to other than their default."""
        reads = tuple(f for f in self.reads if getattr(config, f) != UNetConfig.model_fields[f].default)
        ctx = {"message": message, "fields": self.fields, "reads": reads}
        return InitErrorDetails(type=PydanticCustomError("value_error", "{message}", ctx), loc=(), input=None)


_RULES: list[Rule] = []
"""Every cross-field rule, in reporting order (the order they are defined in)."""


def rule(*fields: str, reads: tuple[str, ...] = (), needs: tuple[Rule, ...] = ()) -> Callable[[Check], Rule]:
    """Register the decorated check as a `Rule` about `fields` (see `Rule`)."""
    unknown = [f for f in (*fields, *reads) if f not in UNetConfig.model_fields]
    assert not unknown, f"a rule declares fields that UNetConfig does not have: {unknown}"

    def register(check: Check) -> Rule:
        _RULES.append(new := Rule(check, fields, reads, needs))
        return new

    return register


_WIDTHS = ("channels", "decoder_channels", "base_channels", "channel_multiplier")
"""The fields that set the channels of every level."""


@rule("channels", reads=("depth",))
def _check_channels_length(c: UNetConfig) -> None:
    if c.channels is not None:
        _expect_len("channels", c.channels, c.depth + 1, "one per level, the bottleneck last")


@rule("channels", "base_channels", "channel_multiplier", reads=("depth",), needs=(_check_channels_length,))
def _check_channels_agree(c: UNetConfig) -> None:
    if c.channels is None or not {"base_channels", "channel_multiplier"} & c.model_fields_set:
        return
    implied = tuple(c.base_channels * c.channel_multiplier**i for i in range(c.depth + 1))
    if tuple(_last(e) for e in c.channels) != implied:
        raise ValueError(
            f"channels={_fmt(c.channels)} contradicts base_channels={c.base_channels} "
            f"and channel_multiplier={c.channel_multiplier} (which give {list(implied)}); "
            "set either channels or base_channels/channel_multiplier"
        )


@rule("base_channels", "channel_multiplier", "depth")
def _check_channel_limit(c: UNetConfig) -> None:
    if c.channels is None and c.base_channels * c.channel_multiplier**c.depth > MAX_CHANNELS:
        raise ValueError(
            f"base_channels={c.base_channels} * channel_multiplier={c.channel_multiplier}"
            f"**depth={c.depth} = {c.base_channels * c.channel_multiplier**c.depth} exceeds the limit "
            f"of {MAX_CHANNELS} channels; lower base_channels, channel_multiplier or depth"
        )


@rule("decoder_channels", reads=("depth",))
def _check_decoder_channels_length(c: UNetConfig) -> None:
    if c.decoder_channels is not None:
        _expect_len("decoder_channels", c.decoder_channels, c.depth, "one per decoder level, level 0 first")


@rule("convs_per_block", reads=("depth",))
def _check_convs_length(c: UNetConfig) -> None:
    if isinstance(c.convs_per_block, tuple):
        _expect_len("convs_per_block", c.convs_per_block, c.depth + 1, "one per level, the bottleneck last")


@rule("decoder_convs_per_block", reads=("depth",))
def _check_decoder_convs_length(c: UNetConfig) -> None:
    if isinstance(c.decoder_convs_per_block, tuple):
        _expect_len("decoder_convs_per_block", c.decoder_convs_per_block, c.depth, "one per decoder level")


@rule("up_channels", reads=("depth",))
def _check_up_channels_length(c: UNetConfig) -> None:
    if isinstance(c.up_channels, tuple):
        _expect_len("up_channels", c.up_channels, c.depth, "one per decoder level, level 0 first")


@rule("blocks_per_level", reads=("depth",))
def _check_blocks_length(c: UNetConfig) -> None:
    if isinstance(c.blocks_per_level, tuple):
        _expect_len("blocks_per_level", c.blocks_per_level, c.depth + 1, "one per level, the bottleneck last")


_LENGTHS = (
    _check_channels_length,
    _check_decoder_channels_length,
    _check_convs_length,
    _check_decoder_convs_length,
    _check_up_channels_length,
    _check_blocks_length,
)


@rule("channels", reads=("convs_per_block",), needs=_LENGTHS)
def _check_channels_per_conv(c: UNetConfig) -> None:
    _expect_per_conv("channels", c.channels, c._encoder_convs())


# the decoder's per-conv widths wait for the encoder's: one per-conv problem at a time
@rule(
    "decoder_channels",
    reads=("decoder_convs_per_block", "convs_per_block"),
    needs=(*_LENGTHS, _check_channels_per_conv),
)
def _check_decoder_channels_per_conv(c: UNetConfig) -> None:
    _expect_per_conv("decoder_channels", c.decoder_channels, c._decoder_convs())


@rule("kernel_size", reads=("depth",))
def _check_kernel_size_length(c: UNetConfig) -> None:
    if isinstance(c.kernel_size, tuple):
        hint = _per_axis_hint(c.kernel_size, c.spatial_dims, c.depth + 1, "level")
        _expect_len("kernel_size", c.kernel_size, c.depth + 1, "one per level", hint)


@rule("kernel_size", "spatial_dims", "depth", needs=(_check_kernel_size_length,))
def _check_kernel_size_reading(c: UNetConfig) -> None:
    _expect_one_reading("kernel_size", c.kernel_size, c.spatial_dims, "level", "depth+1")


# values, then axes: the values rule stops at the first entry with the wrong number of axes and
# the axes rule waits for it, so that the first problem in entry order is the one reported
@rule("kernel_size", needs=(_check_kernel_size_length,))
def _check_kernel_size_values(c: UNetConfig) -> None:
    _expect_range("kernel_size", c.kernel_size, 1, MAX_KERNEL, c.spatial_dims, odd=True)


@rule("kernel_size", "spatial_dims", needs=(_check_kernel_size_values,))
def _check_kernel_size_axes(c: UNetConfig) -> None:
    _expect_axes("kernel_size", c.kernel_size, c.spatial_dims)


@rule("strides", reads=("depth",))
def _check_strides_length(c: UNetConfig) -> None:
    if isinstance(c.strides, tuple):
        hint = _per_axis_hint(c.strides, c.spatial_dims, c.depth, "step")
        _expect_len("strides", c.strides, c.depth, "one per down-sampling step", hint)


@rule("strides", "spatial_dims", "depth", needs=(_check_strides_length,))
def _check_strides_reading(c: UNetConfig) -> None:
    _expect_one_reading("strides", c.strides, c.spatial_dims, "step", "depth")


@rule("strides", needs=(_check_strides_length,))
def _check_strides_values(c: UNetConfig) -> None:
    _expect_range("strides", c.strides, 1, MAX_STRIDE, c.spatial_dims, odd=False)


@rule("strides", "spatial_dims", needs=(_check_strides_values,))
def _check_strides_axes(c: UNetConfig) -> None:
    _expect_axes("strides", c.strides, c.spatial_dims)


@rule("stem_stride", "spatial_dims")
def _check_stem_stride_axes(c: UNetConfig) -> None:
    value, n = c.stem_stride, c.spatial_dims
    if isinstance(value, tuple) and len(value) != n:
        raise ValueError(f"stem_stride={list(value)} has {len(value)} values but spatial_dims={n}")


@rule("stem_stride", needs=(_check_stem_stride_axes,))
def _check_stem_stride_values(c: UNetConfig) -> None:
    if not all(1 <= s <= MAX_STRIDE for s in _axes(c.stem_stride)):
        raise ValueError(f"stem_stride={_fmt(c.stem_stride)} must be between 1 and {MAX_STRIDE}")


@rule("stem_stride", "down", needs=(_check_stem_stride_values,))
def _check_stem_stride_down(c: UNetConfig) -> None:
    if any(s != 1 for s in _axes(c.stem_stride)) and not isinstance(c.down, FirstConvDown):
        raise ValueError(
            f"stem_stride={_fmt(c.stem_stride)} strides the first conv of level 0, which needs "
            f"down='first_conv' (got down='{c.down.type}'); set down: first_conv or stem_stride: 1"
        )


@rule("down", "padding")
def _check_first_conv(c: UNetConfig) -> None:
    if isinstance(c.down, FirstConvDown) and c.padding != "same":
        raise ValueError(
            "down='first_conv' needs padding='same': without padding a strided conv with kernel k and "
            "stride s shifts the coarser grid by (k - s) / 2 pixels, so no skip crop could be centred; "
            "use padding: same (as nnU-Net and DynUNet do) or, for valid padding, down: max, avg or conv"
        )


@rule("norm_position", "block", "decoder_block")
def _check_norm_before_conv(c: UNetConfig) -> None:
    blocks = (c.block, c.decoder_block_type)
    if c.norm_position == "before_conv" and any(b.preactivation for b in blocks):
        raise ValueError(
            "norm_position='before_conv' puts a norm before every conv already; a pre-activation block "
            "(preactivation: true) runs norm, activation, conv: use norm_position: before_activation with "
            "it, or preactivation: false for norm, conv, activation"
        )


@rule("block", "decoder_block", "down")
def _check_input_projection(c: UNetConfig) -> None:
    blocks = (c.block, c.decoder_block_type)
    if isinstance(c.down, FirstConvDown) and any(_input_projection(b) for b in blocks):
        raise ValueError(
            "shortcut='input_projection' maps a unit's input with an unstrided 1x1 conv before its convs, but "
            "down='first_conv' strides the first conv of each level; use down: max, avg or conv with it, or "
            "shortcut: projection"
        )


@rule("dropout", "norm")
def _check_dropout_after_norm(c: UNetConfig) -> None:
    d = c.dropout
    if d.placement == "every_conv" and d.after == "norm" and isinstance(c.norm, NoNorm) and d.rate > 0:
        raise ValueError(
            "dropout.after='norm' drops out after each conv's norm, but norm is none; use dropout.after: conv "
            "or activation, or set a norm"
        )


@rule("depth", "deep_supervision")
def _check_deep_supervision_levels(c: UNetConfig) -> None:
    for level in c.deep_supervision:
        if level >= c.depth:
            raise ValueError(
                f"deep_supervision level {level} does not exist for depth={c.depth}; use levels 1..{c.depth - 1}"
            )


@rule("deep_supervision")
def _check_deep_supervision_repeats(c: UNetConfig) -> None:
    if len(set(c.deep_supervision)) != len(c.deep_supervision):
        raise ValueError(f"deep_supervision={_fmt(c.deep_supervision)} repeats a level")


@rule("resample_bottleneck", "strides", needs=(_check_strides_length, _check_strides_axes))
def _check_bottleneck_stride(c: UNetConfig) -> None:
    last = c.strides[-1] if isinstance(c.strides, tuple) else c.strides
    if not c.resample_bottleneck and any(s != 1 for s in _axes(last)):
        want = [*(_listify(c.strides[:-1]) if isinstance(c.strides, tuple) else [c.strides] * (c.depth - 1)), 1]
        raise ValueError(
            f"resample_bottleneck=false keeps the bottleneck at the deepest level's resolution, but the last "
            f"stride is {_fmt(last)}; make it 1 (strides: {_fmt(want)}) or set resample_bottleneck: true"
        )


@rule("decoder_convs_per_block", "decoder_block", reads=("block", "depth"), needs=(_check_decoder_convs_length,))
def _check_empty_decoder_levels(c: UNetConfig) -> None:
    if isinstance(c.decoder_block_type, ResidualBlock) and 0 in c._decoder_convs():
        level = c._decoder_convs().index(0)
        raise ValueError(
            f"decoder level {level} has 0 convs (decoder_convs_per_block={_fmt(c.decoder_convs_per_block)}) but "
            "a residual decoder block: a residual block needs at least one conv; use decoder_block: plain or "
            "give the level convs"
        )


@rule("blocks_per_level", "stem", needs=(_check_blocks_length,))
def _check_level_without_blocks(c: UNetConfig) -> None:
    counts = c.blocks_per_level if isinstance(c.blocks_per_level, tuple) else ()
    for i, n in enumerate(counts):
        if n == 0 and (i > 0 or not c.stem):
            where = "only level 0 may have none, and only with stem: true" if i > 0 else "set stem: true"
            raise ValueError(
                f"blocks_per_level[{i}]=0 leaves level {i} without convs; {where} (level 0 is then the stem alone)"
            )


@rule("block", "decoder_block", "convs_per_block", "decoder_convs_per_block", needs=_LENGTHS)
def _check_bottleneck_units(c: UNetConfig) -> None:
    for name, option, convs in (
        ("block", c.block, c._encoder_convs()),
        ("decoder_block", c.decoder_block_type, c._decoder_convs()),
    ):
        if isinstance(option, ResidualBlock) and option.bottleneck and any(n != 3 for n in convs):
            what = "convs_per_block" if name == "block" else "decoder_convs_per_block"
            raise ValueError(
                f"{name}.bottleneck=true has three convs per unit (1x1, kxk, 1x1) but {what} gives "
                f"{_fmt(convs)}; set {what}: 3"
            )


@rule("up", "head", "padding")
def _check_residual_unit_padding(c: UNetConfig) -> None:
    for name, option in (("up", c.up), ("head", c.head)):
        if getattr(option, "residual_unit", False) and c.padding != "same":
            raise ValueError(
                f"{name}.residual_unit adds a conv's output to its input, which needs padding='same' "
                f"(got '{c.padding}'); use padding: same or {name}.residual_unit: false"
            )


_LAYOUT = (
    *_LENGTHS,
    _check_channels_per_conv,
    _check_decoder_channels_per_conv,
    _check_kernel_size_length,
    _check_kernel_size_reading,
    _check_kernel_size_values,
    _check_kernel_size_axes,
    _check_strides_length,
    _check_strides_reading,
    _check_strides_values,
    _check_strides_axes,
    _check_stem_stride_axes,
    _check_stem_stride_values,
    _check_stem_stride_down,
    _check_bottleneck_stride,
)
"""The rules that must have passed before the rules below compute the per-stage layout: every
length, per-conv, per-axis and stem-stride rule."""


@rule(
    "norm",
    reads=(*_WIDTHS, "depth", "in_channels", "block", "decoder_block", "merge", "up", "up_channels", "norm_position"),
    needs=_LAYOUT,
)
def _check_group_norm(c: UNetConfig) -> None:
    if not isinstance(c.norm, GroupNorm):
        return
    g, normed = c.norm.num_groups, _normed_channels(c)
    if bad := sorted(ch for ch in normed if ch % c.norm.groups_for(ch)):
        raise ValueError(
            f"norm.num_groups={g} does not divide the channel count(s) {_fmt(tuple(bad))}; choose "
            f"num_groups dividing every channel count (e.g. {_common_divisor(normed)})"
        )


@rule("merge", "up_channels", reads=_WIDTHS, needs=_LAYOUT)
def _check_add_merge(c: UNetConfig) -> None:
    if not isinstance(c.merge, Add):
        return
    layout = c.layout
    for i, (up, skip) in enumerate(zip(layout.up_channels, layout.encoder, strict=False)):
        if up != skip.out_channels and i == c.depth - 1 and not c.resample_bottleneck:
            raise ValueError(
                f"merge='add' needs equal channels, but decoder level {i} adds the bottleneck's output as it is "
                f"(resample_bottleneck=false), {up} channels, to a skip of {skip.out_channels}; give the bottleneck "
                f"{skip.out_channels} channels or use merge='concat'"
            )
        if up != skip.out_channels:
            raise ValueError(
                f"merge='add' needs equal channels, but at level {i} the up-sampled map has "
                f"{up} (up_channels={_listify(c.up_channels)!r}) and the skip {skip.out_channels}; "
                "use merge='concat' or up_channels='skip'"
            )


@rule("up_channels", reads=_WIDTHS, needs=_LAYOUT)
def _check_half_up_channels(c: UNetConfig) -> None:
    if c.up_channels == "half" and 0 in c.layout.up_channels:
        i = c.layout.up_channels.index(0)
        raise ValueError(
            f"up_channels='half' halves the 1 channel that decoder level {i} up-samples to 0; "
            "give the coarser levels more channels or up_channels as a list of ints"
        )


def _normed_channels(c: UNetConfig) -> set[int]:
    """Every channel count that a norm layer sees: each conv's output, or its input where the
    norm comes first (pre-activation blocks, `norm_position: before_conv`); a projected
    shortcut's output (not in pre-activation blocks); the stem's; the attention gates'; a
    `norm_act` transposed conv's."""
    layout, first = c.layout, c.norm_position == "before_conv"
    units = [(u, c.block) for s in layout.encoder for u in s.split_units()]
    if c.decoder_norm is None:  # else the decoder blocks have a norm of their own
        units += [(u, c.decoder_block_type) for s in layout.decoder for u in s.split_units()]
    normed = _units_normed(c, units)
    if layout.stem is not None:
        normed.add(layout.stem.in_channels if first else layout.stem.out_channels)
    if isinstance(c.merge, AttentionGate):
        normed |= set(c.attention_channels) | ({1} if c.merge.psi_norm else set())
    ups = range(c.depth if c.resample_bottleneck else c.depth - 1)  # the levels that up-sample
    if isinstance(c.up, TransposeUp) and c.up.norm_act:
        normed |= {(layout.coarse_channels if first else layout.up_channels)[i] for i in ups}
    if isinstance(c.up, TransposeUp) and c.up.residual_unit:
        normed |= {layout.up_channels[i] for i in ups}
    if isinstance(c.head, TransposeHead) and c.head.norm_act:
        normed.add(layout.decoder[0].out_channels if first else c.out_channels)
    if c.decoder_norm is None:
        normed |= _head_normed(c)
    return normed


def _input_projection(block: Block) -> bool:
    """Whether the block maps its input by a 1x1 conv before its convs (`shortcut: input_projection`)."""
    return isinstance(block, ResidualBlock) and block.shortcut == "input_projection"


def conv_steps(position: NormPosition, *, pre: bool, dropout_after: str | None = None) -> tuple[str, ...]:
    """The steps of one conv of a block in the order they run: "norm", "conv", "act" and, where
    `dropout_after` names one of "conv", "norm" or "activation", "drop" right after it. `pre`:
    a pre-activation unit (norm and activation before the conv). Callers leave out the norm where
    there is none and the activation where the conv is not activated (the drop stays in place)."""
    if pre:
        steps = ["act", "norm", "conv"] if position == "after_activation" else ["norm", "act", "conv"]
    else:
        steps = {
            "before_activation": ["conv", "norm", "act"],
            "after_activation": ["conv", "act", "norm"],
            "before_conv": ["norm", "conv", "act"],
        }[position]
    if dropout_after is not None:
        at = steps.index("act" if dropout_after == "activation" else dropout_after)
        steps.insert(at + 1, "drop")
    return tuple(steps)


def _head_normed(c: UNetConfig) -> set[int]:
    """The channels the norms of `head: upsample`'s convs see (they take the decoder's norm)."""
    if not isinstance(c.head, UpsampleHead) or not c.head.channels:
        return set()
    widths = (c.layout.decoder[0].out_channels, *c.head.channels)
    return set(widths[:-1] if c.norm_position == "before_conv" else widths[1:])


def _units_normed(c: UNetConfig, units: list[tuple[Stage, Block]]) -> set[int]:
    """The channel counts the norms of these block units see (`_normed_channels`)."""
    first, normed = c.norm_position == "before_conv", set()
    for u, block in units:
        if not u.channels:  # a decoder level of no convs
            continue
        cin = u.out_channels if _input_projection(block) else u.in_channels  # the convs see the projected input
        normed |= {cin, *u.channels[:-1]} if first or block.preactivation else set(u.channels)
        if _projected(block, u) and not block.preactivation and block.shortcut != "conv":  # conv, then norm
            normed.add(u.out_channels)
    return normed


@rule(
    "decoder_norm", reads=(*_WIDTHS, "depth", "decoder_block", "merge", "up_channels", "norm_position"), needs=_LAYOUT
)
def _check_decoder_group_norm(c: UNetConfig) -> None:
    if not isinstance(c.decoder_norm, GroupNorm):
        return
    units = [(u, c.decoder_block_type) for s in c.layout.decoder for u in s.split_units()]
    g, normed = c.decoder_norm.num_groups, _units_normed(c, units) | _head_normed(c)
    if bad := sorted(ch for ch in normed if ch % c.decoder_norm.groups_for(ch)):
        raise ValueError(
            f"decoder_norm.num_groups={g} does not divide the channel count(s) {_fmt(tuple(bad))}; choose "
            f"num_groups dividing every decoder channel count (e.g. {_common_divisor(normed)})"
        )


def _projected(block: Block, unit: Stage) -> bool:
    """Whether a unit's shortcut ends in a conv (a norm follows it, except with `shortcut: conv`)."""
    if not isinstance(block, ResidualBlock) or block.shortcut == "input_projection":
        return False
    if block.shortcut == "resnet_d":
        return unit.in_channels != unit.out_channels
    return unit.in_channels != unit.out_channels or any(s != 1 for s in unit.first_stride)


# ---------------------------------------------------------------------------------------------
# helpers


def _dropout_levels(dropout: Dropout, depth: int) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
    """Which encoder levels (0..depth, the last the bottleneck) and decoder levels end in dropout."""
    if dropout.rate == 0 or dropout.placement == "every_conv":  # every_conv: inside the blocks, not at their ends
        return (False,) * (depth + 1), (False,) * depth
    match dropout.placement:
        case "contracting_end":  # the paper: the last encoder level and the bottleneck
            enc = tuple(i >= depth - 1 for i in range(depth + 1))
        case "bottleneck":
            enc = tuple(i == depth for i in range(depth + 1))
        case "encoder" | "all":
            enc = (True,) * (depth + 1)
        case "decoder":
            enc = (False,) * (depth + 1)
    return enc, (dropout.placement in ("decoder", "all"),) * depth


def _last(entry: int | tuple[int, ...]) -> int:
    return entry[-1] if isinstance(entry, tuple) else entry


def _axes(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return value if isinstance(value, tuple) else (value,)


def _fmt(value: Any) -> str:
    """`value` as a list for a message, at most about 100 characters."""
    text = str(_listify(value))
    if len(text) <= 100:
        return text
    count = f" ({len(value)} entries)" if isinstance(value, tuple) else ""
    return f"{text[:80]}…{text[-12:]}{count}"


def _listify(value: Any) -> Any:
    return [_listify(v) for v in value] if isinstance(value, tuple) else value


def _expect_len(name: str, value: tuple[Any, ...], want: int, what: str, hint: str = "") -> None:
    if len(value) != want:
        raise ValueError(f"{name} has {len(value)} entries but needs {want} ({what}): {name}={_fmt(value)}{hint}")


def _flat(value: PerStage) -> bool:
    """Whether `value` is a list of plain ints (each could be a stage's value or an axis's)."""
    return isinstance(value, tuple) and all(isinstance(e, int) for e in value)


def _per_axis_hint(value: PerStage, dims: int, stages: int, stage: str) -> str:
    """For a list of ints with one value per spatial axis (meant per axis, read per stage): how to
    give those values at every stage."""
    if not _flat(value) or len(value) != dims or dims == 1:  # type: ignore[arg-type]
        return ""
    return f"; for one value per spatial axis at every {stage}, write {[_listify(value)] * stages}"


def _expect_one_reading(name: str, value: PerStage, dims: int, stage: str, count: str) -> None:
    """Refuse a list of ints that has both one entry per stage (`count` of them) and one per spatial
    axis, where the two readings differ: spell out both and how to write each unambiguously."""
    if not _flat(value) or len(value) != dims or len(set(value)) == 1:  # type: ignore[arg-type]
        return
    assert isinstance(value, tuple)
    n = len(value)
    per_stage = "; ".join(f"{stage} {i}: {'x'.join([str(v)] * dims)}" for i, v in enumerate(value))
    raise ValueError(
        f"{name}={_fmt(value)} reads two ways: its {n} entries are one per {stage} ({count} = {n}: "
        f"{per_stage}) and also one per spatial axis (spatial_dims = {n}: {'x'.join(map(str, value))} at every "
        f"{stage}); it is not read either way. Write {_fmt([list(value)] * n)} for one value per axis at every "
        f"{stage}, or {_fmt([[v] * dims for v in value])} for one value per {stage}"
    )


def _expect_per_conv(name: str, value: ChannelSpec | None, convs: tuple[int, ...]) -> None:
    for i, entry in enumerate(value or ()):
        if isinstance(entry, tuple) and len(entry) != convs[i]:
            raise ValueError(
                f"{name}[{i}]={_fmt(entry)} has {len(entry)} values but level {i} has "
                f"{convs[i]} convs; give one value per conv or a single int"
            )


def _per_stage(name: str, value: PerStage) -> list[tuple[str, int | tuple[int, ...]]]:
    """(where, entry) for each stage's entry of a per-stage value: `name[i]` for a list, `name`
    for a single value."""
    if isinstance(value, tuple):
        return [(f"{name}[{i}]", entry) for i, entry in enumerate(value)]
    return [(name, value)]


def _expect_axes(name: str, value: PerStage, dims: int) -> None:
    for where, entry in _per_stage(name, value):
        if isinstance(entry, tuple) and len(entry) != dims:
            raise ValueError(f"{where}={list(entry)} has {len(entry)} values but spatial_dims={dims}")


def _expect_range(name: str, value: PerStage, lo: int, hi: int, dims: int, *, odd: bool) -> None:
    """Each value between `lo` and `hi` (and odd), up to the first entry without `dims` values:
    that entry's problem is its length (`_expect_axes`), which comes first."""
    for where, entry in _per_stage(name, value):
        if isinstance(entry, tuple) and len(entry) != dims:
            return
        for k in _axes(entry):
            if not lo <= k <= hi:
                raise ValueError(f"{where}={_fmt(entry)} must be between {lo} and {hi}")
            if odd and k % 2 == 0:
                raise ValueError(
                    f"{where}={_fmt(entry)} must be odd so that every crop stays centred; use {k - 1} or {k + 1}"
                )


def _expand_axes(value: PerStage, stages: int, dims: int) -> tuple[tuple[int, ...], ...]:
    entries = value if isinstance(value, tuple) else (value,) * stages
    return tuple(e if isinstance(e, tuple) else (e,) * dims for e in entries)


def _expand_convs(entry: int | tuple[int, ...], convs: int) -> tuple[int, ...]:
    return entry if isinstance(entry, tuple) else (entry,) * convs


def _common_divisor(values: set[int]) -> int:
    from math import gcd

    g = 0
    for v in values:
        g = gcd(g, v)
    return g
