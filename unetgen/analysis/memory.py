"""Memory of one training step, from the config alone, and the largest patch that fits a budget.

`saved_activations` lists the tensors autograd keeps from the forward pass for the backward
pass, layer by layer, from the architecture and `shapes.trace` (no model, no memory):

- a convolution (and a transposed one, a strided one, the stem) keeps its input; a max pool its
  input and its int64 indices; an average pool (also the `resnet_d` shortcut's) its input;
  interpolation, crops, concatenations and sums keep nothing;
- ReLU keeps its output (in place: the tensor it overwrote); leaky ReLU and ELU their output in
  place, else their input; GELU its input; SiLU its input, in place a copy of it; PReLU (never in
  place) its input;
- batch norm keeps its input and two per-channel statistics; instance norm its input and two
  (three with affine) per sample-and-channel vectors; group and layer norm their input and two
  (N, groups) statistics; dropout its random mask (on CPU a mask of the input's dtype; on CUDA
  torch keeps a 1-byte mask, so this counts high there);
- the attention gate: its two 1x1 convs' inputs (the cropped skip, a view, and the up-sampled map),
  its activation, the sigmoid's output, and the product's two factors;
- the loss: cross-entropy keeps its log-softmax and the int64 target.

Blocks run unit by unit (`blocks_per_level`), norm and activation in the config's order
(`norm_position`), and a transposed conv with `norm_act` is followed by both.

A tensor kept by several layers (the output of an in-place ReLU is also the next conv's input;
a skip is kept by the pooling and, cropped, by the decoder) is counted once.

With `checkpointing: true` the model runs every level as one checkpoint segment: the forward pass
keeps only each segment's inputs and outputs, and the backward pass recomputes one segment at a
time, so the largest segment's own saved tensors come on top.

`estimate_training_memory` adds the parameter gradients, the optimizer state and the largest
transient of the backward pass, and `plan_training` searches the valid patch sizes for the
largest that fits. Measured against real training steps: benchmarks/training_memory.py.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ..config.options import (
    ELU,
    GELU,
    Activation,
    Add,
    AttentionGate,
    AvgPool,
    BatchNorm,
    Block,
    Concat,
    ConvDown,
    FirstConvDown,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    LeakyReLU,
    LinearUp,
    MaxPool,
    NearestUp,
    NoNorm,
    PixelShuffleUp,
    PReLU,
    ReLU,
    ResidualBlock,
    SiLU,
    TransposeUp,
)
from ..config.unet_config import Stage, UNetConfig
from . import costs, shapes

__all__ = [
    "OPTIMIZER_STATE",
    "SavedTensor",
    "TrainingMemory",
    "TrainingPlan",
    "estimate_training_memory",
    "parse_bytes",
    "plan_training",
    "saved_activations",
]

OPTIMIZER_STATE = {"sgd": 0, "momentum": 1, "adam": 2, "adamw": 2}
"""Optimizer state per parameter, in parameter-sized tensors: SGD none, SGD with momentum one
buffer, Adam and AdamW two moments."""

Optimizer = Literal["sgd", "momentum", "adam", "adamw"]

BLOCK = 8
"""On CPU, oneDNN convolutions work on copies of their input and output in a channel-blocked
layout (nChw8c), the channels padded to a multiple of `BLOCK`: a conv holds such copies in the
forward pass, and its backward holds the input and output gradients plus copies of both. A 3D
conv with a single input channel runs as im2col + GEMM instead: a buffer of kernel volume x
output positions (measured: 160 MiB for 1 -> 8 channels at 116^3, 3x3x3)."""


@dataclass(frozen=True)
class SavedTensor:
    """One tensor autograd keeps for the backward pass: which layer keeps it, its storage (`key`:
    tensors with the same key share memory), elements and bytes per element."""

    layer: str
    key: int
    numel: int
    itemsize: int

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize


class _Walk:
    """Replays the forward pass of `UNet` on tensor sizes: `new` allocates, `save` records."""

    def __init__(self, config: UNetConfig, input_shape: Sequence[int], batch: int, itemsize: int) -> None:
        self.config, self.batch, self.itemsize = config, batch, itemsize
        self.rows = {r.name: r for r in shapes.trace(config, tuple(input_shape))}
        self.saved: list[SavedTensor] = []
        self.sizes: dict[int, int] = {}  # key -> numel
        self.channels: dict[int, int] = {}  # key -> channels
        self.segment = self.opened = 0  # the current checkpoint segment, how many have begun
        self.segments: list[int] = []  # segment of each saved tensor (0: outside any)
        self.time = 0  # forward order of tensors and saves
        self.born: dict[int, int] = {}  # key -> time created
        self.saved_at: list[int] = []  # time of each save
        self.convs: list[tuple[int, int, int, int]] = []  # (time, segment, input + output, their copies)
        self.skips: list[tuple[int, int, int]] = []  # (numel, time created, time merged)
        self.constant: set[int] = set()  # tensors that do not require grad (the input)

    def new(self, channels: int, shape: Sequence[int]) -> int:
        key = len(self.sizes)
        self.sizes[key] = self.batch * channels * math.prod(shape)
        self.channels[key] = channels
        self.time += 1
        self.born[key] = self.time
        return key

    def checkpoint(self, name: str, *inputs: int) -> None:
        """A new segment (one level of the network); with checkpointing, autograd keeps its inputs."""
        if self.config.checkpointing:
            self.segment = 0
            for x in inputs:
                self.save(f"{name}.checkpoint", x)
        self.opened += 1
        self.segment = self.opened

    def like(self, x: int) -> int:
        """A new tensor of the size of `x`."""
        c = self.channels[x]
        return self.new(c, (self.sizes[x] // (self.batch * c),))

    def save(self, layer: str, key: int, numel: int | None = None, itemsize: int | None = None) -> None:
        n = self.sizes[key] if numel is None else numel
        self.saved.append(SavedTensor(layer, key, n, self.itemsize if itemsize is None else itemsize))
        self.segments.append(self.segment)
        self.time += 1
        self.saved_at.append(self.time)

    def side(self, layer: str, numel: int, itemsize: int | None = None) -> None:
        """A small tensor of its own (statistics, masks) saved by `layer`."""
        key = len(self.sizes)
        self.sizes[key] = numel
        self.born[key] = self.time
        self.save(layer, key, numel, itemsize)

    def conv(self, layer: str, x: int, channels: int, shape: Sequence[int], kernel: Sequence[int] = ()) -> int:
        self.save(layer, x)
        y = self.new(channels, shape)
        copies = sum(self.sizes[k] // self.channels[k] * -(-self.channels[k] // BLOCK) * BLOCK for k in (x, y))
        if len(shape) == 3 and self.channels[x] == 1:  # oneDNN: im2col + GEMM, a column per kernel tap
            copies += self.batch * math.prod(kernel) * math.prod(shape)
        self.convs.append((self.time, self.segment, self.sizes[x] + self.sizes[y], copies))
        return y

    def norm(self, layer: str, x: int, channels: int) -> int:
        c, n = self.config.norm, self.batch
        if isinstance(c, NoNorm):
            return x
        if x in self.constant and isinstance(c, InstanceNorm) and not c.affine:  # nothing requires grad
            y = self.like(x)
            self.constant.add(y)
            return y
        match c:
            case BatchNorm():
                self.save(layer, x)
                self.side(layer, channels)
                self.side(layer, channels)
            case InstanceNorm(affine=affine):
                self.save(layer, x)
                for _ in range(3 if affine else 2):  # (weight repeated per sample), mean, 1/std
                    self.side(layer, n * channels)
            case GroupNorm() | LayerNorm():
                groups = c.num_groups if isinstance(c, GroupNorm) else 1
                self.save(layer, x)
                self.side(layer, n * groups)
                self.side(layer, n * groups)
            case _:
                raise AssertionError(f"unhandled norm {c!r}")
        return self.like(x)  # same size as x

    def act(self, layer: str, x: int, *, inplace: bool = True) -> int:
        """The activation as `layers.activation` builds it (in place where torch supports it)."""
        option: Activation = self.config.activation
        fresh = self.like(x)
        if isinstance(option, PReLU):  # never in place; its weight requires grad, so it keeps its input
            self.save(layer, x)
            return fresh
        if x in self.constant:  # no autograd node, nothing saved
            y = x if inplace and not isinstance(option, GELU) else fresh
            self.constant.add(y)
            return y
        match option:
            case ReLU():
                y = x if inplace else fresh
                self.save(layer, y)
            case LeakyReLU() | ELU():
                y = x if inplace else fresh
                self.save(layer, y if inplace else x)
            case GELU():
                y = fresh
                self.save(layer, x)
            case SiLU():
                y = x if inplace else fresh
                self.save(layer, self.like(x) if inplace else x)  # in place: a copy
            case _:
                raise AssertionError(f"unhandled activation {option!r}")
        return y

    def dropout(self, layer: str, x: int, channels: int, drop: bool) -> int:
        if not drop:
            return x
        spatial = self.config.dropout.spatial
        self.side(layer, self.batch * channels if spatial else self.sizes[x])
        return self.like(x)


def _coarse(w: _Walk, x: int) -> tuple[int, ...]:
    """The spatial size of `x` as one flat axis (enough for counting elements)."""
    return (w.sizes[x] // (w.batch * w.channels[x]),)


def _norm_act(w: _Walk, name: str, x: int, channels: int, *, inplace: bool = True) -> int:
    """Norm and activation in the config's order (`layers.norm_act`)."""
    if w.config.norm_position == "after_activation":
        return w.norm(f"{name}.norm", w.act(f"{name}.act", x, inplace=inplace), channels)
    return w.act(f"{name}.act", w.norm(f"{name}.norm", x, channels), inplace=inplace)


def _pool(w: _Walk, layer: str, x: int, shape: Sequence[int]) -> int:
    """Average pooling keeps its input, unless nothing requires grad."""
    y = w.new(w.channels[x], shape)
    if x in w.constant:
        w.constant.add(y)
    else:
        w.save(layer, x)
    return y


def _unit(w: _Walk, prefix: str, stage: Stage, first: int, x: int, block: Block) -> int:
    """One `ConvBlock` whose convs are the trace's rows `prefix.conv{first + 1}`..."""
    c = w.config
    pre, residual = block.preactivation, isinstance(block, ResidualBlock)
    # a pre-activation runs in place only after a norm (the block's input may be a skip)
    inplace = not isinstance(c.norm, NoNorm) and c.norm_position == "before_activation"
    h, cin, last = x, stage.in_channels, len(stage.channels) - 1
    names = [f"{prefix}.conv{first + j + 1}" for j in range(len(stage.channels))]
    for j, (name, cout) in enumerate(zip(names, stage.channels, strict=True)):
        shape = w.rows[name].shape
        if pre:
            h = _norm_act(w, name, h, cin, inplace=inplace)
            h = w.conv(name, h, cout, shape, stage.kernel)
        elif residual and j == last:  # activated after the sum
            h = w.norm(f"{name}.norm", w.conv(name, h, cout, shape, stage.kernel), cout)
        else:
            h = _norm_act(w, name, w.conv(name, h, cout, shape, stage.kernel), cout)
        cin = cout
    if not residual:
        return h
    assert isinstance(block, ResidualBlock)
    shape, cin, cout = w.rows[names[-1]].shape, stage.in_channels, stage.out_channels
    strided = any(s != 1 for s in stage.first_stride)
    s: int | None = None  # the shortcut's conv output, if it has one
    match block.shortcut:
        case "projection" if cin != cout or strided:
            s = w.conv(f"{prefix}.shortcut", x, cout, shape)  # strided, or on the cropped view of x
        case "resnet_d":
            pooled = _pool(w, f"{prefix}.shortcut.pool", x, shape) if strided else x
            if cin != cout:
                s = w.conv(f"{prefix}.shortcut", pooled, cout, shape)
    if s is not None and not pre:
        w.norm(f"{prefix}.shortcut.norm", s, cout)
    h = w.new(cout, shape)  # the sum
    return h if pre else w.act(f"{prefix}.post_act", h)


def _block(w: _Walk, prefix: str, stage: Stage, x: int, drop: bool, block: Block | None = None) -> int:
    """The level's block: one `ConvBlock` per unit (`blocks_per_level`), dropout after the last."""
    block = w.config.block if block is None else block
    first = 0
    for unit in stage.split_units():
        x = _unit(w, prefix, unit, first, x, block)
        first += len(unit.channels)
    return w.dropout(f"{prefix}.dropout", x, stage.out_channels, drop)


def saved_activations(
    config: UNetConfig,
    input_shape: Sequence[int],
    batch_size: int = 1,
    *,
    dtype: torch.dtype = torch.float32,
    loss: bool = False,
) -> list[SavedTensor]:
    """Every tensor autograd saves in one training-mode forward pass of a batch of `batch_size`
    inputs of spatial `input_shape`, in execution order, parameters and buffers left out; with
    `loss`, also those of a cross-entropy loss on every head. With checkpointing, the inputs of
    every segment (layers named ``*.checkpoint``) come first in each segment; the segments' own
    entries are then recomputed in the backward pass rather than kept."""
    return _walk(config, input_shape, batch_size, dtype, loss)[0].saved


def _walk(
    config: UNetConfig, input_shape: Sequence[int], batch: int, dtype: torch.dtype, loss: bool
) -> tuple[_Walk, list[int]]:
    """The walk, and the keys of the tensors each checkpoint segment receives or returns."""
    c, lay = config, config.layout
    w = _Walk(config, input_shape, batch, dtype.itemsize)
    x = w.new(c.in_channels, tuple(input_shape))
    w.constant.add(x)
    held = [x]  # segment boundaries: the input, each segment's output
    skips: list[int] = []
    for i, stage in enumerate(lay.encoder):
        prefix = "bottleneck" if i == c.depth else f"enc{i}"
        w.checkpoint(prefix, x)
        if i > 0 and not isinstance(c.down, FirstConvDown):  # first_conv: the block's first conv strides
            layer, ch = f"down{i - 1}", lay.encoder[i - 1].out_channels
            shape = w.rows[layer].shape
            match c.down:
                case MaxPool():
                    w.save(layer, x)
                    w.side(layer, batch * ch * math.prod(shape), 8)  # int64 indices
                    x = w.new(ch, shape)
                case AvgPool():
                    w.save(layer, x)
                    x = w.new(ch, shape)
                case ConvDown():
                    x = w.conv(layer, x, ch, shape)
                case _:
                    raise AssertionError(f"unhandled down {c.down!r}")
        if i == 0 and lay.stem is not None:  # conv, norm, activation before level 0's block
            stem = lay.stem
            x = w.conv("stem", x, stem.out_channels, w.rows["stem"].shape, stem.kernel)
            x = _norm_act(w, "stem", x, stem.out_channels)
        x = _block(w, prefix, stage, x, lay.encoder_dropout[i])
        held.append(x)
        if i < c.depth:
            skips.append(x)
    outputs = []
    for i in reversed(range(c.depth)):
        skip, up_shape, up_ch = skips[i], w.rows[f"up{i}"].shape, lay.up_channels[i]
        w.checkpoint(f"dec{i}", x, skip)
        match c.up:
            case TransposeUp(norm_act=norm_act):
                up = w.conv(f"up{i}", x, up_ch, up_shape)
                if norm_act:
                    up = _norm_act(w, f"up{i}", up, up_ch)
            case NearestUp(conv=when) | LinearUp(conv=when):  # the 1x1 conv runs first, on the coarse map
                if when == "always" or lay.coarse_channels[i] != up_ch:
                    x = w.conv(f"up{i}.conv", x, up_ch, _coarse(w, x))
                up = w.new(up_ch, up_shape)  # interpolation keeps nothing
            case PixelShuffleUp(kernel_size=k, pad_pool=pad_pool):
                kernel = (k,) * c.spatial_dims
                y = w.conv(f"up{i}.conv", x, up_ch * math.prod(lay.strides[i]), _coarse(w, x), kernel)
                up = w.new(up_ch, up_shape)  # the shuffle's reshape copies its permuted view; keeps nothing
                if pad_pool:  # the zero pad keeps nothing; the average pool keeps its (padded) input
                    padded = w.new(up_ch, [n + s - 1 for n, s in zip(up_shape, lay.strides[i], strict=True)])
                    w.save(f"up{i}.pool", padded)
                    up = w.new(up_ch, up_shape)
                del y
            case _:
                raise AssertionError(f"unhandled up {c.up!r}")
        w.time += 1
        w.skips.append((w.sizes[skip], w.born[skip], w.time))  # its gradient waits from here back to its birth
        match c.merge:
            case Concat() | Add():
                pass
            case AttentionGate():
                inter, gate = c.attention_channels[i], f"merge{i}.gate"
                a = w.norm(f"{gate}.w_x.norm", w.conv(f"{gate}.w_x", skip, inter, up_shape), inter)
                w.norm(f"{gate}.w_g.norm", w.conv(f"{gate}.w_g", up, inter, up_shape), inter)
                a = w.act(f"{gate}.act", w.new(inter, up_shape))  # act(w_x + w_g), in place
                alpha = w.conv(f"{gate}.psi", a, 1, up_shape)
                alpha = w.new(1, up_shape)  # sigmoid keeps its output
                w.save(f"{gate}.sigmoid", alpha)
                w.save(f"{gate}.mul", alpha)
                w.save(f"{gate}.mul", skip)  # the cropped skip, a view
            case _:
                raise AssertionError(f"unhandled merge {c.merge!r}")
        merged = w.new(lay.decoder[i].in_channels, up_shape)  # concatenated, summed or gated
        x = _block(w, f"dec{i}", lay.decoder[i], merged, lay.decoder_dropout[i], c.decoder_block_type)
        held.append(x)
        if i in c.deep_supervision:
            w.segment = 0  # heads run outside the segments
            outputs.append((f"aux{i}", w.conv(f"aux{i}", x, c.out_channels, w.rows[f"aux{i}"].shape)))
    w.segment = 0
    outputs.append(("head", w.conv("head", x, c.out_channels, w.rows["head"].shape)))
    held += [k for _, k in outputs]
    if loss:
        for name, k in outputs:
            log_probs = w.like(k)
            w.save(f"loss.{name}.log_softmax", log_probs)
            w.save(f"loss.{name}.nll", log_probs)
            w.side(f"loss.{name}.target", w.sizes[k] // c.out_channels, 8)
    return w, held


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes one training step needs beyond the parameters (see `estimate_training_memory`)."""

    parameters: int
    """The parameters themselves (not in `total`)."""
    gradients: int
    """One gradient per parameter."""
    optimizer_state: int
    """Optimizer buffers (Adam: two moments per parameter)."""
    activations: int
    """Tensors autograd keeps from the forward pass (with checkpointing: the segments' inputs and
    outputs plus the largest recomputed segment), the outputs and the loss's."""
    transient: int
    """The largest temporary of the backward pass: the input and output gradients of one conv, and
    the convolution's reordered copies of both on CPU."""

    @property
    def total(self) -> int:
        return self.gradients + self.optimizer_state + self.activations + self.transient


def estimate_training_memory(
    config: UNetConfig,
    input_shape: Sequence[int],
    batch_size: int = 1,
    *,
    optimizer: Optimizer = "adam",
    dtype: torch.dtype = torch.float32,
) -> TrainingMemory:
    """The memory of one training step (forward, cross-entropy loss on every head, backward,
    optimizer step) for `batch_size` inputs of spatial `input_shape`, beyond the parameters:
    gradients, optimizer state, the activations autograd saves (`saved_activations`, each storage
    once) and the largest transient. `.total` is the sum; pure arithmetic, nothing is allocated.
    Raises `InputShapeError` for an invalid input shape."""
    if optimizer not in OPTIMIZER_STATE:
        raise ValueError(f"optimizer={optimizer!r} must be one of {', '.join(OPTIMIZER_STATE)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int")
    w, held = _walk(config, tuple(input_shape), batch_size, dtype, loss=True)
    item = dtype.itemsize
    outputs = held[-1 - len(config.deep_supervision) :]
    first: dict[int, int] = {}  # key -> time of its first save: the backward frees it after that op
    for t, time in zip(w.saved, w.saved_at, strict=True):
        first.setdefault(t.key, time)
    nbytes = {t.key: t.nbytes for t in w.saved}
    if config.checkpointing:  # kept: segment boundaries and what runs outside segments
        kept = {k: w.born[k] for k in held}
        kept |= {t.key: first[t.key] for t, seg in zip(w.saved, w.segments, strict=True) if seg == 0}
    else:
        kept = dict(first) | {k: w.born[k] for k in outputs}
    size = {k: nbytes.get(k, w.sizes[k] * item) for k in kept}
    activations = sum(size.values())
    out_grads = sum(w.sizes[k] * item for k in outputs)
    peak = activations + out_grads  # the backward starts: the outputs' gradients
    for time, _, n_io, n_copies in w.convs:
        # the forward pass at this conv: everything kept so far, and the conv's blocked copies
        peak = max(peak, sum(b for k, b in size.items() if kept[k] <= time) + n_io * item + n_copies * item)
    for time, seg, n_io, n_copies in w.convs:  # the backward reaches this conv
        alive = sum(b for k, b in size.items() if kept[k] <= time)
        if config.checkpointing and seg:  # the segment recomputed, freed as its backward proceeds
            alive += sum(
                {t.key: t.nbytes for t, s_, at in zip(w.saved, w.segments, w.saved_at, strict=True)
                 if s_ == seg and t.key not in kept and first[t.key] <= time}.values()
            )  # fmt: skip
        pending = sum(n for n, born, merged in w.skips if born < time < merged) * item
        peak = max(peak, alive + pending + (n_io + n_copies) * item)  # gradients + copies
    params = costs.count_parameters(config) * item
    return TrainingMemory(
        parameters=params,
        gradients=params,
        optimizer_state=OPTIMIZER_STATE[optimizer] * params,
        activations=activations,
        transient=peak - activations,
    )


# ---------------------------------------------------------------------------------------------
# planning


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


def parse_bytes(text: str | int) -> int:
    """``"8GiB"``, ``"512 MB"``, ``"1.5G"`` or a plain int as bytes (GiB = 2**30, GB = 10**9)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]{0,3})\s*", str(text)[:40])
        if m is None or m.group(2).lower() not in _UNITS:
            raise ValueError(f"memory {str(text)[:40]!r} is not a size; write e.g. 8GiB, 512MiB, 16GB or 1000000")
        value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value < 1:
        raise ValueError(f"memory {text!r} must be positive")
    return value


@dataclass(frozen=True)
class TrainingPlan:
    """The patch and batch `plan_training` chose, and what they cost."""

    image_shape: tuple[int, ...]
    patch_input: tuple[int, ...]
    """Spatial size of each input patch: a valid input size on every axis."""
    patch_output: tuple[int, ...]
    batch_size: int
    memory: TrainingMemory
    budget: int

    @property
    def total_bytes(self) -> int:
        """Parameters plus one training step: what must fit the budget."""
        return self.memory.parameters + self.memory.total

    def summary(self) -> str:
        def fmt(shape: Sequence[int]) -> str:
            return "x".join(map(str, shape))

        m, gib = self.memory, 2**30
        return (
            f"patch {fmt(self.patch_input)} -> {fmt(self.patch_output)}, batch {self.batch_size}: "
            f"{self.total_bytes / gib:.2f} GiB of {self.budget / gib:.2f} GiB (parameters {m.parameters / gib:.2f}, "
            f"gradients {m.gradients / gib:.2f}, optimizer {m.optimizer_state / gib:.2f}, "
            f"activations {m.activations / gib:.2f}, transient {m.transient / gib:.2f})"
        )


def plan_training(
    config: UNetConfig,
    memory: int | str,
    *,
    image_shape: Sequence[int],
    batch_size: int | None = None,
    optimizer: Optimizer = "adam",
    dtype: torch.dtype = torch.float32,
) -> TrainingPlan:
    """The largest valid training patch (and batch) whose step fits `memory` bytes (an int or a
    string such as ``"8GiB"``) including the parameters, for images of spatial `image_shape`.

    Starting from the patch whose output covers the whole image, the axis with the largest output
    shrinks to its next smaller valid input size until the estimate (`estimate_training_memory`)
    fits. `batch_size=None` plans for a batch of 2 (nnU-Net's smallest; 1 if even the smallest
    patch does not fit 2) and, when the whole image fits, raises the batch while it fits. Raises
    `ValueError` when not even the smallest valid patch fits, naming what it needs."""
    budget = parse_bytes(memory)
    dims = config.spatial_dims
    try:
        image = tuple(int(s) for s in image_shape)
    except (TypeError, ValueError):
        image = ()
    if len(image) != dims or min(image) < 1:
        raise ValueError(f"image_shape={image_shape!r} must be {dims} positive ints (spatial_dims={dims})")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size={batch_size!r} must be a positive int")

    def cost(patch: tuple[int, ...], batch: int) -> TrainingMemory:
        return estimate_training_memory(config, patch, batch, optimizer=optimizer, dtype=dtype)

    smallest = shapes.min_input_shape(config)
    # the patch whose output covers the image; with a stem stride the output is at 1/stem of the
    # image's resolution, so it covers the image at ceil(size / stem) output pixels
    full = tuple(
        max(m, shapes.input_size_for_output(config, -(-s // shapes.axis_rule(config, a).stem), axis=a))
        for a, (s, m) in enumerate(zip(image, smallest, strict=True))
    )

    def largest(batch: int) -> tuple[tuple[int, ...], TrainingMemory] | None:
        patch = full
        while True:
            mem = cost(patch, batch)
            if mem.parameters + mem.total <= budget:
                return _grow(patch, mem, batch)
            out = shapes.output_shape(config, patch)
            order = sorted(range(dims), key=lambda a: -out[a])
            for a in order:  # shrink the largest axis that can still shrink
                if patch[a] > smallest[a]:
                    down = shapes.nearest_valid_input_size(config, patch[a] - 1, direction="down", axis=a)
                    candidate = tuple(down if b == a else p for b, p in enumerate(patch))
                    if shapes.is_valid_input_shape(config, candidate):
                        patch = candidate
                        break
            else:
                return None

    def _grow(patch: tuple[int, ...], mem: TrainingMemory, batch: int) -> tuple[tuple[int, ...], TrainingMemory]:
        """Grow axes (the smallest output first) by one valid step while the step still fits."""
        grown = True
        while grown:
            grown = False
            out = shapes.output_shape(config, patch)
            for a in sorted(range(dims), key=lambda a: out[a]):
                if patch[a] >= full[a]:
                    continue
                up = shapes.nearest_valid_input_size(config, patch[a] + 1, direction="up", axis=a)
                candidate = tuple(up if b == a else p for b, p in enumerate(patch))
                if shapes.is_valid_input_shape(config, candidate):
                    m = cost(candidate, batch)
                    if m.parameters + m.total <= budget:
                        patch, mem, grown = candidate, m, True
                        break
        return patch, mem

    batch = batch_size or 2
    found = largest(batch)
    if found is None and batch_size is None:
        batch, found = 1, largest(1)
    if found is None:
        need = cost(smallest, batch)
        raise ValueError(
            f"not even the smallest valid patch {'x'.join(map(str, smallest))} fits {budget / 2**30:.2f} GiB with "
            f"batch {batch}: it needs {(need.parameters + need.total) / 2**30:.2f} GiB "
            f"(parameters {need.parameters / 2**30:.2f} GiB); give more memory or a smaller config"
        )
    patch, mem = found
    if batch_size is None and patch == full:
        while batch < 4096 and (m := cost(patch, batch + 1)).parameters + m.total <= budget:
            batch, mem = batch + 1, m
    return TrainingPlan(image, patch, shapes.output_shape(config, patch), batch, mem, budget)
