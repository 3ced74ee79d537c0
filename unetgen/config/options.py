"""The option types of `UNetConfig` and the limits of its numbers.

Options with parameters are discriminated unions keyed by ``type``; every option may also be
written as a bare string (``norm: batch``), which means that option with its default parameters.
"""

from __future__ import annotations

import numbers
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    model_validator,
)
from pydantic.functional_validators import BeforeValidator
from pydantic_core import core_schema


def _not_bool(value: Any) -> Any:
    # Literal[1, 2, 3] compares by equality, so True would pass as 1 (even in strict mode)
    if isinstance(value, bool):
        raise ValueError(f"spatial_dims must be 1, 2 or 3, not the boolean {str(value).lower()}")
    return value


SpatialDims = Annotated[Literal[1, 2, 3], BeforeValidator(_not_bool)]
Padding = Literal["valid", "same"]
NormPosition = Literal["before_activation", "after_activation", "before_conv"]

MAX_CHANNELS = 16384
MAX_DEPTH = 8
MAX_KERNEL = 15
MAX_STRIDE = 8
MAX_CONVS = 16
MAX_BLOCKS = 16


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class BareString:
    """Annotated marker: accept ``"name"`` for ``{"type": "name"}`` and say so in the JSON Schema."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(_bare_to_dict, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> Any:
        inner = handler(schema)
        tags = sorted(handler.resolve_ref_schema(inner).get("discriminator", {}).get("mapping", {}))
        return {"anyOf": [{"type": "string", "enum": tags}, inner]}


def _bare_to_dict(value: Any) -> Any:
    return {"type": value} if isinstance(value, str) else value


# ---------------------------------------------------------------------------------------------
# norm


class NoNorm(_Model):
    """No normalisation (the paper)."""

    type: Literal["none"] = "none"


class BatchNorm(_Model):
    """Batch normalisation after each convolution (the widely copied variant of the paper)."""

    type: Literal["batch"] = "batch"
    momentum: float = Field(0.1, gt=0, le=1)
    """Running-statistics momentum, as in `torch.nn.BatchNorm2d`."""
    eps: float = Field(1e-5, gt=0, le=1)
    """Added to the variance for numerical stability."""
    affine: bool = True
    """Learn a per-channel scale and shift (`false`: normalise only, as nnU-Net plans and MONAI
    networks may ask with `affine: False`)."""


class InstanceNorm(_Model):
    """Instance normalisation (per sample, per channel), with learnable affine parameters."""

    type: Literal["instance"] = "instance"
    affine: bool = True
    """Learn a per-channel scale and shift."""
    eps: float = Field(1e-5, gt=0, le=1)
    """Added to the variance for numerical stability."""


class GroupNorm(_Model):
    """Group normalisation (Wu and He 2018); `num_groups` must divide every channel count."""

    type: Literal["group"] = "group"
    num_groups: int = Field(8, ge=1, le=MAX_CHANNELS)
    """Number of channel groups; must divide the channels of every normalised layer."""
    eps: float = Field(1e-5, gt=0, le=1)
    """Added to the variance for numerical stability."""
    fewer_channels: Literal["refuse", "one_group"] = "refuse"
    """A layer with fewer channels than `num_groups`: the config is refused (`refuse`), or that
    layer is normalised as one group, i.e. layer norm (`one_group`, pytorch-3dunet's rule). Layers
    with at least `num_groups` channels use `num_groups`, which must divide them either way."""

    def groups_for(self, channels: int) -> int:
        """The groups of a norm layer over `channels` channels."""
        return 1 if self.fewer_channels == "one_group" and channels < self.num_groups else self.num_groups


class LayerNorm(_Model):
    """Layer normalisation over channels and space (`GroupNorm` with one group), per sample."""

    type: Literal["layer"] = "layer"
    eps: float = Field(1e-5, gt=0, le=1)
    """Added to the variance for numerical stability."""


Norm = Annotated[NoNorm | BatchNorm | InstanceNorm | GroupNorm | LayerNorm, Field(discriminator="type"), BareString()]


# ---------------------------------------------------------------------------------------------
# activation


class ReLU(_Model):
    """Rectified linear unit (the paper)."""

    type: Literal["relu"] = "relu"


class LeakyReLU(_Model):
    """Leaky ReLU."""

    type: Literal["leaky_relu"] = "leaky_relu"
    negative_slope: float = Field(0.01, ge=0, le=1)
    """Slope for negative inputs."""


class ELU(_Model):
    """Exponential linear unit."""

    type: Literal["elu"] = "elu"
    alpha: float = Field(1.0, gt=0, le=100)
    """Saturation value for negative inputs."""


class GELU(_Model):
    """Gaussian error linear unit."""

    type: Literal["gelu"] = "gelu"


class SiLU(_Model):
    """Sigmoid linear unit (swish)."""

    type: Literal["silu"] = "silu"


class PReLU(_Model):
    """Parametric ReLU (He et al. 2015): a learned slope for negative inputs."""

    type: Literal["prelu"] = "prelu"
    num_parameters: Literal["one", "channels"] = "one"
    """One slope per layer (`one`, torch's default) or one per channel (`channels`)."""
    init: float = Field(0.25, ge=-1, le=1)
    """Initial slope."""


Activation = Annotated[ReLU | LeakyReLU | ELU | GELU | SiLU | PReLU, Field(discriminator="type"), BareString()]


# ---------------------------------------------------------------------------------------------
# squeeze-and-excitation


class ChannelExcitation(_Model):
    """Channel squeeze-and-excitation, cSE (Hu et al. 2018): a global average pool, a linear
    layer to `channels // reduction` (at least 1) channels, ReLU, a linear layer back, a sigmoid;
    the map is scaled per channel by the result."""

    type: Literal["cse"] = "cse"
    reduction: int = Field(2, ge=1, le=MAX_CHANNELS)
    """The squeeze's reduction ratio r: the hidden layer has `channels // r` channels (at least 1)."""


class SpatialExcitation(_Model):
    """Spatial squeeze-and-excitation, sSE (Roy et al. 2018): a 1x1 conv (with bias) to one
    channel and a sigmoid; the map is scaled per position by the result."""

    type: Literal["sse"] = "sse"


class ChannelSpatialExcitation(_Model):
    """Concurrent spatial and channel squeeze-and-excitation, scSE (Roy et al. 2018): the cSE and
    sSE recalibrations of the map, combined element-wise (`combine`)."""

    type: Literal["scse"] = "scse"
    reduction: int = Field(2, ge=1, le=MAX_CHANNELS)
    """The cSE branch's reduction ratio r: its hidden layer has `channels // r` channels (at least 1)."""
    combine: Literal["max", "add"] = "max"
    """How the two recalibrated maps are combined: their element-wise maximum (Roy et al. 2019,
    pytorch-3dunet's ChannelSpatialSELayer3D) or their sum (Roy et al. 2018, smp's SCSEModule)."""


Excitation = Annotated[
    ChannelExcitation | SpatialExcitation | ChannelSpatialExcitation, Field(discriminator="type"), BareString()
]


# ---------------------------------------------------------------------------------------------
# block


class PlainBlock(_Model):
    """`convs_per_block` x (conv, norm, activation): the paper's block."""

    type: Literal["plain"] = "plain"
    preactivation: bool = False
    """Order norm, activation, conv (He et al. 2016b) instead of conv, norm, activation."""
    excitation: Excitation | None = None
    """A squeeze-and-excitation block (`cse`, `sse` or `scse`) at the end of each unit (after its
    last activation, before any block dropout); none by default."""


class ResidualBlock(_Model):
    """A residual block (He et al. 2016): the convs plus an identity path, projected where the
    channels or the size change and centre-cropped where valid padding shrinks the map."""

    type: Literal["residual"] = "residual"
    preactivation: bool = False
    """Pre-activation residual unit (norm, activation, conv; no activation after the sum)."""
    shortcut: Literal["projection", "resnet_d", "conv", "input_projection"] = "projection"
    """The identity path where channels or size change: `projection` = a 1x1 conv (strided like
    the block) + norm (He et al. 2016; MONAI's UnetResBlock); `resnet_d` = average pooling
    (kernel = stride, ceil mode) where the block strides, then a 1x1 conv without bias + norm
    where the channels change (He et al. 2019, "ResNet-D"; nnU-Net's BasicBlockD); `conv` = a conv
    without norm: with the block's kernel, stride and same padding where the block strides, 1x1
    where only the channels change (MONAI's ResidualUnit); `input_projection` = where the channels
    change, a 1x1 conv with bias (no norm) first maps the unit's input to its output channels, and
    the convs and the identity both start from it (pytorch-3dunet's ResNetBlock; not with
    `down: first_conv`)."""
    bottleneck: bool = False
    """A bottleneck unit (He et al. 2016; torchvision's `Bottleneck`): three convs, 1x1, the level's
    kernel (carrying the stride), 1x1, with one width per conv (`channels: [[64, 64, 256], ...]`);
    needs 3 convs per block."""
    last_activation: Literal["after_sum", "before_sum"] = "after_sum"
    """Where the last conv's activation goes: `after_sum` (He et al. 2016: norm, sum, activation)
    or `before_sum` (every conv keeps its norm and activation and nothing follows the sum, as in
    MONAI's ResidualUnit). Pre-activation blocks have neither."""
    excitation: Excitation | None = None
    """A squeeze-and-excitation block (`cse`, `sse` or `scse`) on each unit's output: after the sum
    and its activation (pytorch-3dunet's ResNetBlockSE), before any block dropout; none by default."""
    post_activation: Activation | None = None
    """The activation after the sum, where it differs from the config's `activation` (which the
    convs use): pytorch-3dunet's ResNetBlock with a LeakyReLU order activates its convs with slope
    0.01 and the sum with 0.1. Default: the config's activation. Not with `preactivation` or
    `last_activation: before_sum`, which have no activation after the sum."""

    @model_validator(mode="after")
    def _activation_around_the_sum(self) -> ResidualBlock:
        if self.preactivation and self.last_activation == "before_sum":
            raise ValueError(
                "block.last_activation='before_sum' is for post-activation blocks; a pre-activation block "
                "(preactivation: true) has no activation around the sum: drop one of the two"
            )
        if self.post_activation is not None and (self.preactivation or self.last_activation == "before_sum"):
            raise ValueError(
                "block.post_activation is the activation after the residual sum, which a pre-activation block "
                "(preactivation: true) or last_activation='before_sum' does not have; remove post_activation, or "
                "set preactivation: false and last_activation: after_sum"
            )
        return self


Block = Annotated[PlainBlock | ResidualBlock, Field(discriminator="type"), BareString()]


# ---------------------------------------------------------------------------------------------
# merge


class Concat(_Model):
    """Concatenate the centre-cropped skip and the up-sampled map along channels (the paper)."""

    type: Literal["concat"] = "concat"
    order: Literal["skip_first", "up_first"] = "skip_first"
    """Channel order of the concatenation: skip then up-sampled map (the paper, MONAI's
    BasicUNet), or the up-sampled map first (nnU-Net, MONAI's DynUNet); it orders the next
    conv's input channels, so weights copied from a peer need no permutation."""


class Add(_Model):
    """Add the centre-cropped skip to the up-sampled map; their channels must be equal."""

    type: Literal["add"] = "add"


class AttentionGate(_Model):
    """Additive attention gate on the skip (Oktay et al. 2018), gated by the up-sampled coarser
    map, then concatenation."""

    type: Literal["attention"] = "attention"
    inter_channels: int | None = Field(None, ge=1, le=MAX_CHANNELS)
    """Channels of the gate's intermediate map; default half the skip's channels (at least 1)."""
    psi_norm: bool = False
    """Normalise the one-channel map psi (the config's norm) before its sigmoid (MONAI's
    AttentionUnet: batch norm there)."""
    branch_order: Literal["skip_first", "gate_first"] = "skip_first"
    """Which 1x1 projection runs first: the skip's (`skip_first`) or the gating map's
    (`gate_first`, MONAI's AttentionUnet). The sum is the same; the order of the layers (and so
    of a weight copy by execution order) differs."""


Merge = Annotated[Concat | Add | AttentionGate, Field(discriminator="type"), BareString()]


# ---------------------------------------------------------------------------------------------
# down- and up-sampling


class MaxPool(_Model):
    """Max pooling with kernel = stride (the paper's 2x2 max-pool)."""

    type: Literal["max"] = "max"


class AvgPool(_Model):
    """Average pooling with kernel = stride."""

    type: Literal["avg"] = "avg"


class ConvDown(_Model):
    """A learned strided convolution with kernel = stride, keeping the channels."""

    type: Literal["conv"] = "conv"


class FirstConvDown(_Model):
    """No separate down-sampling layer: the first conv of each lower level's block carries the
    stride (with that level's kernel and `same` padding), as in nnU-Net and MONAI's DynUNet.
    Needs `padding: same`."""

    type: Literal["first_conv"] = "first_conv"
    first_step: Literal["conv", "max_pool"] = "conv"
    """The first step down (level 0 to 1): in level 1's first conv (`conv`), or a max pool of
    kernel 2*stride - 1 and padding stride - 1 before level 1's block (`max_pool`: ResNet's 3x3,
    stride 2, padding 1 pool after its stem)."""


Down = Annotated[MaxPool | AvgPool | ConvDown | FirstConvDown, Field(discriminator="type"), BareString()]


class TransposeUp(_Model):
    """Transposed convolution with kernel = stride (the paper's 2x2 up-convolution)."""

    type: Literal["transpose"] = "transpose"
    bias: bool = True
    """Give the transposed conv a bias (MONAI DynUNet's trans_bias=False has none)."""
    kernel_size: int | None = Field(None, ge=1, le=MAX_KERNEL)
    """Kernel size (odd), padded by kernel_size // 2 with output padding stride - 1 so that the
    map still grows by exactly the stride (MONAI's UNet and AttentionUnet: 3); default: the
    stride."""
    norm_act: bool = False
    """Follow the transposed conv by the config's norm and activation (MONAI's UNet and
    AttentionUnet)."""
    size_by: Literal["output_padding", "nearest_resize"] = "output_padding"
    """With `kernel_size`, how the conv's own output, (in - 1) * stride + 1, reaches in * stride:
    `output_padding` = torch's output padding of stride - 1 (the conv computes the extra rows;
    MONAI), or `nearest_resize` = no output padding, then a nearest-neighbour resize to
    in * stride (for stride 2 it repeats the first row of each axis; pytorch-3dunet's
    TransposeConvUpsampling). The resize comes right after the conv, before any norm_act."""
    residual_unit: bool = False
    """Then a residual unit on the up-sampled map, before the merge: a conv with the decoder
    level's kernel (same padding) and the config's norm and activation, added to its input
    (MONAI's UNet with num_res_units > 0). Needs `padding: same`."""

    @model_validator(mode="after")
    def _odd(self) -> TransposeUp:
        if self.kernel_size is not None and self.kernel_size % 2 == 0:
            k = self.kernel_size
            raise ValueError(f"up.kernel_size={k} must be odd so that the map grows by exactly the stride; use {k + 1}")
        if self.size_by == "nearest_resize" and self.kernel_size is None:
            raise ValueError(
                "up.size_by='nearest_resize' resizes the output of a transposed conv with kernel_size; without "
                "kernel_size (kernel = stride) the map grows by exactly the stride: set kernel_size (e.g. 3) or "
                "leave size_by at output_padding"
            )
        return self


InterpolationConv = Literal["always", "when_channels_change"]


class NearestUp(_Model):
    """Nearest-neighbour interpolation by the stride and a 1x1 conv to the new channels (run on
    the coarser map first: the two commute)."""

    type: Literal["nearest"] = "nearest"
    conv: InterpolationConv = "always"
    """When the 1x1 conv is there: `always`, or `when_channels_change` (MONAI's UpSample with
    pre_conv="default": none where the channels stay)."""


class LinearUp(_Model):
    """(Bi/tri)linear interpolation by the stride and a 1x1 conv to the new channels (run on the
    coarser map first: the two commute)."""

    type: Literal["linear"] = "linear"
    conv: InterpolationConv = "always"
    """When the 1x1 conv is there: `always`, or `when_channels_change` (MONAI's UpSample with
    pre_conv="default": none where the channels stay)."""
    align_corners: bool = False
    """Align the corner pixels of input and output (torch's `align_corners`; MONAI's BasicUNet
    uses True)."""


class PixelShuffleUp(_Model):
    """Sub-pixel convolution (Shi et al. 2016; MONAI's BasicUNet `upsample="pixelshuffle"`): a
    conv to `C_out * prod(stride)` channels, an N-d pixel shuffle by the stride, then (`pad_pool`)
    zero padding of stride - 1 on the leading side of each axis and average pooling with kernel =
    stride, stride 1 (Aitken et al. 2017), which keeps the size."""

    type: Literal["pixelshuffle"] = "pixelshuffle"
    kernel_size: int = Field(3, ge=1, le=MAX_KERNEL)
    """Kernel size (odd, "same" padding) of the conv before the shuffle (MONAI: 3)."""
    pad_pool: bool = True
    """Pad by stride - 1 (zeros, leading side) and average-pool with kernel = stride, stride 1
    after the shuffle (MONAI's `apply_pad_pool`, True in BasicUNet)."""

    @model_validator(mode="after")
    def _odd(self) -> PixelShuffleUp:
        if self.kernel_size % 2 == 0:
            k = self.kernel_size
            raise ValueError(f"up.kernel_size={k} must be odd so that the conv keeps the size; use {k + 1}")
        return self


Up = Annotated[TransposeUp | NearestUp | LinearUp | PixelShuffleUp, Field(discriminator="type"), BareString()]


# ---------------------------------------------------------------------------------------------
# output head


class ConvHead(_Model):
    """A conv to `out_channels` at level 0's resolution (the paper: 1x1)."""

    type: Literal["conv"] = "conv"
    kernel_size: int = Field(1, ge=1, le=MAX_KERNEL)
    """Kernel size (odd); padded as the config's `padding` says (segmentation_models_pytorch: 3)."""

    @model_validator(mode="after")
    def _odd(self) -> ConvHead:
        if self.kernel_size % 2 == 0:
            k = self.kernel_size
            raise ValueError(f"head.kernel_size={k} must be odd so that the output stays centred; use {k + 1}")
        return self


class TransposeHead(_Model):
    """A transposed conv to `out_channels` that up-samples level 0's map by `stem_stride`, so that
    the output is at the input's resolution (MONAI's UNet: its last layer)."""

    type: Literal["transpose"] = "transpose"
    kernel_size: int = Field(3, ge=1, le=MAX_KERNEL)
    """Kernel size (odd), padded by kernel_size // 2 with output padding stem_stride - 1."""
    bias: bool = True
    """Give the transposed conv a bias."""
    norm_act: bool = False
    """Follow it by the config's norm and activation (MONAI's UNet with num_res_units > 0)."""
    residual_unit: bool = False
    """Then a residual unit: a conv with level 0's kernel (same padding, no norm, no activation)
    added to its input (MONAI's UNet with num_res_units > 0). Needs `padding: same`."""

    @model_validator(mode="after")
    def _odd(self) -> TransposeHead:
        if self.kernel_size % 2 == 0:
            k = self.kernel_size
            raise ValueError(
                f"head.kernel_size={k} must be odd so that the map grows by exactly the stride; use {k + 1}"
            )
        return self


def _list_to_tuple(value: Any) -> Any:
    # a list inside an option of a union is refused by strict (JSON-document) validation otherwise
    return tuple(value) if isinstance(value, list) else value


class UpsampleHead(_Model):
    """The output at the input's resolution: level 0's map up-sampled by `stem_stride` with the
    config's `up` (keeping its channels), `channels` convs (decoder level 0's kernel, the decoder's
    norm and activation), then a conv to `out_channels` (segmentation_models_pytorch's last
    decoder block, which has no skip, and its segmentation head)."""

    type: Literal["upsample"] = "upsample"
    channels: Annotated[tuple[Annotated[int, Field(ge=1, le=MAX_CHANNELS)], ...], BeforeValidator(_list_to_tuple)] = (
        Field((), max_length=MAX_CONVS)
    )
    """Output channels of each conv after the up-sampling (none: the up-sampled map goes straight
    to the output conv)."""
    kernel_size: int = Field(1, ge=1, le=MAX_KERNEL)
    """Kernel size (odd) of the output conv; padded as the config's `padding` says."""

    @model_validator(mode="after")
    def _odd(self) -> UpsampleHead:
        if self.kernel_size % 2 == 0:
            k = self.kernel_size
            raise ValueError(f"head.kernel_size={k} must be odd so that the output stays centred; use {k + 1}")
        return self


Head = Annotated[ConvHead | TransposeHead | UpsampleHead, Field(discriminator="type"), BareString()]


# ---------------------------------------------------------------------------------------------
# dropout


class Dropout(_Model):
    """Dropout after the convolutions of chosen blocks, or after every conv."""

    rate: float = Field(0.5, ge=0, lt=1)
    """Probability of zeroing an element; 0 disables dropout."""
    placement: Literal["contracting_end", "bottleneck", "encoder", "decoder", "all", "every_conv"] = "contracting_end"
    """Where: `contracting_end` = the last encoder level and the bottleneck (the paper's "drop-out
    layers at the end of the contracting path", as in its Caffe model); `bottleneck`; every
    `encoder` block including the bottleneck; every `decoder` block; or `all` blocks (each at the
    end of the block); `every_conv` = inside every block, after each of its convs and the stem's
    (not projections, up-sampling or heads), at the step `after` names (nnU-Net's `dropout_op`,
    MONAI's `dropout`, pytorch-3dunet's `d` in `layer_order`)."""
    spatial: bool = False
    """Drop whole channels (`Dropout2d`/`Dropout3d`) instead of single elements."""
    after: Literal["conv", "norm", "activation"] = "activation"
    """With `placement: every_conv`: the step of each conv that the dropout follows: the `conv`
    itself (nnU-Net's ConvDropoutNormReLU), its `norm` (MONAI's default ADN order, "NDA") or its
    `activation` (pytorch-3dunet's `crd`); where a conv is not activated (the last conv of a
    residual unit, activated after the sum), the dropout stays where the activation would be."""

    @model_validator(mode="after")
    def _after_needs_every_conv(self) -> Dropout:
        if self.after != "activation" and self.placement != "every_conv":  # the default: a full dump round-trips
            raise ValueError(
                f"dropout.after={self.after!r} places dropout inside each conv, which only "
                f"placement='every_conv' does (placement={self.placement!r} drops out at the end of blocks); "
                "set placement: every_conv or remove after"
            )
        return self


class DropoutShorthand:
    """Annotated marker: `dropout` may be written as a number (the rate, paper placement), as
    ``0``, ``false`` or ``null`` (no dropout) or as ``true`` (the paper's dropout: `Dropout()`,
    rate 0.5 at the end of the contracting path); the JSON Schema says so."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(_dropout_shorthand, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> Any:
        return {
            "anyOf": [
                {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "description": "the rate"},
                {"type": "boolean", "description": "true: the paper's dropout (rate 0.5); false: none"},
                {"type": "null", "description": "no dropout"},
                handler(schema),
            ]
        }


def _dropout_shorthand(value: Any) -> Any:
    if value is None or value is False:
        return {"rate": 0.0}
    if value is True:
        return {}
    if isinstance(value, numbers.Real):  # numpy floats and integers too
        return {"rate": value if isinstance(value, (int, float)) else float(value)}
    if isinstance(value, str):
        raise ValueError(
            "dropout is a rate (a number in [0, 1)), false or null for none, true for the paper's 0.5, "
            "or a mapping {rate, placement, spatial}; a string is none of these"
        )
    return value
