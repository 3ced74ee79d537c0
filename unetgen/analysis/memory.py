"""Memory of one training step, from the config alone, and the largest patch that fits a budget.

`saved_activations` lists the tensors autograd keeps from the forward pass for the backward
pass, op by op, from the network's ops (`unetgen.analysis.ops`: no model, no memory):

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

The ops come in the order `UNet.forward` runs them (blocks unit by unit, norm and activation in
the config's order, dropout where the layout puts it), each with its shape from `op_shapes`.

A tensor kept by several layers (the output of an in-place ReLU is also the next conv's input;
a skip is kept by the pooling and, cropped, by the decoder) is counted once.

With `checkpointing: true` the model runs every level as one checkpoint segment: the forward pass
keeps only each segment's inputs and outputs, and the backward pass recomputes one segment at a
time, so the largest segment's own saved tensors come on top.

`estimate_training_memory` adds the parameter gradients, the optimizer state and the largest
transient of the backward pass, and `plan_training` searches the valid patch sizes for the
largest that fits. Measured against real training steps: benchmarks/training_memory.py.

`estimate_tile_memory` is the inference counterpart, per batch of tiles (`unetgen.predict.plan`).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

import torch

from ..config.io import ConfigSource, resolve_config
from ..config.options import ELU, GELU, InstanceNorm, LeakyReLU, PReLU, ReLU, SiLU
from ..config.unet_config import UNetConfig
from ..reprs import int_text, short_repr
from . import costs, shapes
from .arguments import as_count, as_flag, as_float_dtype
from .ops import (
    INPUT,
    Act,
    Cat,
    Conv,
    Crop,
    Drop,
    GlobalPool,
    Interpolate,
    Linear,
    Max,
    Mul,
    NormOp,
    Op,
    Pad,
    Pool,
    Resize,
    Shuffle,
    Sigmoid,
    Sum,
    network_ops,
    op_shapes,
)

__all__ = [
    "OPTIMIZER_STATE",
    "SavedTensor",
    "TileMemory",
    "TrainingMemory",
    "TrainingPlan",
    "estimate_tile_memory",
    "estimate_training_memory",
    "parse_bytes",
    "plan_training",
    "saved_activations",
    "tile_memory",
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


def _layer(op: Op) -> str:
    """The name a saved tensor is filed under: the `shapes.trace` row the op ends (``enc0.conv1``,
    ``down0``, ``up1``, ``aux1``, ``head``), else its module, else its place (``decoder.0.merge.mul``)."""
    return op.row or op.module or f"{op.segment}.{op.part}.{type(op).__name__.lower()}"


def _im2col_taps(op: Conv) -> int:
    """Kernel taps per output position of the im2col buffer of a 3D conv with one input channel
    (`BLOCK`). Measured for the block and stem convs: their kernel volume. The down-sampling conv
    and the transposed up-sampling conv count one tap, the up-sampling's conv on the coarse map
    none, as the estimate has always counted them (unmeasured)."""
    if op.part == "up" and not op.transposed:
        return 0
    if op.part in ("down", "up"):
        return 1
    return math.prod(op.kernel)


def _segment_inputs(ops: Sequence[Op]) -> dict[str | None, list[int]]:
    """Per checkpoint segment, the producers outside it that its ops read, in the order first read."""
    where = {op.index: op.segment for op in ops}
    inputs: dict[str | None, list[int]] = {}
    for op in ops:
        outside = inputs.setdefault(op.segment, [])
        for i in op.inputs:
            if (i == INPUT or where[i] != op.segment) and i not in outside:
                outside.append(i)
    return inputs


@dataclass
class _Walk:
    """Replays the forward pass of `UNet` on tensor sizes, op by op (`run`): `new` allocates a
    tensor (a `key`), `save` records what autograd keeps."""

    config: UNetConfig
    batch: int
    itemsize: int
    saved: list[SavedTensor] = field(default_factory=list)
    sizes: dict[int, int] = field(default_factory=dict)  # key -> numel
    channels: dict[int, int] = field(default_factory=dict)  # key -> channels
    segment: int = 0  # the current checkpoint segment (0: outside any)
    opened: int = 0  # how many segments have begun
    segments: list[int] = field(default_factory=list)  # segment of each saved tensor
    time: int = 0  # forward order of tensors and saves
    born: dict[int, int] = field(default_factory=dict)  # key -> time created
    saved_at: list[int] = field(default_factory=list)  # time of each save
    convs: list[tuple[int, int, int, int]] = field(default_factory=list)  # (time, segment, input + output, copies)
    skips: list[tuple[int, int, int]] = field(default_factory=list)  # (numel, time created, time merged)
    constant: set[int] = field(default_factory=set)  # tensors that do not require grad (the input)
    keys: dict[int, int] = field(default_factory=dict)  # op index (INPUT: the input) -> key of its output
    held: list[int] = field(default_factory=list)  # segment boundaries: the input, each segment's output
    outputs: list[tuple[str, int]] = field(default_factory=list)  # (layer, key) of every head

    # -- tensors ---------------------------------------------------------------------------

    def new(self, channels: int, shape: Sequence[int]) -> int:
        key = len(self.sizes)
        self.sizes[key] = self.batch * channels * math.prod(shape)
        self.channels[key] = channels
        self.time += 1
        self.born[key] = self.time
        return key

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
        """A small tensor of its own (statistics, masks, indices) saved by `layer`."""
        key = len(self.sizes)
        self.sizes[key] = numel
        self.born[key] = self.time
        self.save(layer, key, numel, itemsize)

    def checkpoint(self, name: str, inputs: Sequence[int]) -> None:
        """A new segment (one level of the network); with checkpointing, autograd keeps its inputs."""
        if self.config.checkpointing:
            self.segment = 0
            for x in inputs:
                self.save(f"{name}.checkpoint", x)
        self.opened += 1
        self.segment = self.opened

    # -- layers: what each op allocates and keeps ---------------------------------------------

    def conv(self, op: Conv, x: int, shape: Sequence[int]) -> int:
        """A convolution keeps its input; on CPU it also holds blocked copies of input and output."""
        self.save(_layer(op), x)
        y = self.new(op.out_channels, shape)
        copies = sum(self.sizes[k] // self.channels[k] * -(-self.channels[k] // BLOCK) * BLOCK for k in (x, y))
        if len(shape) == 3 and self.channels[x] == 1:  # oneDNN: im2col + GEMM, a column per kernel tap
            copies += self.batch * _im2col_taps(op) * math.prod(shape)
        self.convs.append((self.time, self.segment, self.sizes[x] + self.sizes[y], copies))
        return y

    def norm(self, op: NormOp, x: int) -> int:
        """A norm keeps its input and its statistics, unless nothing requires grad."""
        if x in self.constant and not op.affine:
            y = self.like(x)
            self.constant.add(y)
            return y
        layer, c = _layer(op), op.out_channels
        self.save(layer, x)
        if op.groups == 0:  # batch norm: per-channel mean and 1/std
            self.side(layer, c)
            self.side(layer, c)
        else:  # per sample and group: mean, 1/std (instance norm with affine: the weight repeated per sample)
            count = 3 if isinstance(op.option, InstanceNorm) and op.affine else 2
            for _ in range(count):
                self.side(layer, self.batch * op.groups)
        return self.like(x)

    def act(self, op: Act, x: int) -> int:
        """What the activation keeps depends on its kind and on `op.inplace` (torch's own rules)."""
        layer, option, inplace = _layer(op), op.option, op.inplace
        fresh = self.like(x)
        if isinstance(option, PReLU):  # never in place; its weight requires grad, so it keeps its input
            self.save(layer, x)
            return fresh
        y = x if inplace else fresh
        if x in self.constant:  # no autograd node, nothing saved
            self.constant.add(y)
            return y
        match option:
            case ReLU():
                self.save(layer, y)
            case LeakyReLU() | ELU():
                self.save(layer, y if inplace else x)
            case GELU():
                self.save(layer, x)
            case SiLU():
                self.save(layer, self.like(x) if inplace else x)  # in place: a copy
            case _:
                raise AssertionError(f"unhandled activation {option!r}")
        return y

    def pool(self, op: Pool, x: int, shape: Sequence[int]) -> int:
        """Pooling keeps its input (max pooling also its int64 indices), unless nothing requires grad."""
        if x in self.constant:
            y = self.new(op.out_channels, shape)
            self.constant.add(y)
            return y
        layer = _layer(op)
        self.save(layer, x)
        if op.mode == "max":
            self.side(layer, self.batch * op.out_channels * math.prod(shape), 8)
        return self.new(op.out_channels, shape)

    def dropout(self, op: Drop, x: int) -> int:
        """Dropout keeps its random mask: one value per channel (`spatial`) or per element; none on a
        tensor that does not require grad (the input, after a pre-activation unit's first
        activation with `placement: every_conv`)."""
        if x in self.constant:
            y = self.like(x)
            self.constant.add(y)
            return y
        self.side(_layer(op), self.batch * op.out_channels if op.spatial else self.sizes[x])
        return self.like(x)

    def merge_crop(self, x: int) -> None:
        """The skip `x` is merged: its gradient waits from here back to its birth."""
        self.time += 1
        self.skips.append((self.sizes[x], self.born[x], self.time))

    def step(self, op: Op, shape: Sequence[int]) -> int:
        """Run `op` on the keys of its inputs; the key of its output."""
        x = self.keys[op.inputs[0]]
        match op:
            case Conv():
                return self.conv(op, x, shape)
            case NormOp():
                return self.norm(op, x)
            case Act():
                return self.act(op, x)
            case Drop():
                return self.dropout(op, x)
            case Pool():
                return self.pool(op, x, shape)
            case Interpolate() | Resize() | Shuffle() | Pad() | Sum() | Cat():  # keep nothing (shuffle: copies a view)
                return self.new(op.out_channels, shape)
            case Sigmoid():  # keeps its output
                y = self.new(op.out_channels, shape)
                self.save(_layer(op), y)
                return y
            case Mul():  # keeps both factors
                self.save(_layer(op), self.keys[op.inputs[1]])
                self.save(_layer(op), x)
                return self.new(op.out_channels, shape)
            case GlobalPool():  # a mean over space: keeps nothing
                return self.new(op.out_channels, shape)
            case Linear():  # keeps its input (flattened: a view), the weight is a parameter
                self.save(_layer(op), x)
                return self.new(op.out_channels, shape)
            case Max():  # keeps both inputs
                self.save(_layer(op), x)
                self.save(_layer(op), self.keys[op.inputs[1]])
                return self.new(op.out_channels, shape)
            case Crop():  # a view of its input
                if op.part == "merge":
                    self.merge_crop(x)
                return x
        raise AssertionError(f"unhandled op {op!r}")

    # -- the network ---------------------------------------------------------------------------

    def run(self, input_shape: Sequence[int]) -> None:
        """Every op of the network in forward order, checkpoint segments opened as they begin."""
        ops, out = network_ops(self.config), op_shapes(self.config, input_shape)
        boundaries = _segment_inputs(ops)
        x = self.keys[INPUT] = self.new(self.config.in_channels, input_shape)
        self.constant.add(x)
        self.held.append(x)
        current: str | None = None
        for op in ops:
            if op.segment != current:
                if current is not None:  # a segment ends: its output is held
                    self.held.append(self.keys[op.index - 1])
                current = op.segment
                if current is None:  # the heads run outside the segments
                    self.segment = 0
                else:
                    self.checkpoint(current, [self.keys[i] for i in boundaries[current]])
            self.keys[op.index] = self.step(op, out[op.index])
            if op.training_only or op.index == len(ops) - 1:  # a deep-supervision head, or the head
                self.outputs.append((_layer(op), self.keys[op.index]))

    def loss(self) -> None:
        """Cross-entropy on every head keeps its log-softmax (twice: log_softmax and nll) and the int64 target."""
        for name, k in self.outputs:
            log_probs = self.like(k)
            self.save(f"loss.{name}.log_softmax", log_probs)
            self.save(f"loss.{name}.nll", log_probs)
            self.side(f"loss.{name}.target", self.sizes[k] // self.config.out_channels, 8)


def _input_shape(config: UNetConfig, input_shape: Sequence[int]) -> tuple[int, ...]:
    """`input_shape` as ints, checked (`InputShapeError`, naming the nearest valid sizes)."""
    shape = shapes.as_shape(config, input_shape)
    shapes.output_shape(config, shape)
    return shape


def saved_activations(
    config: ConfigSource,
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
    config = resolve_config(config)
    batch_size, dtype = as_count("batch_size", batch_size), as_float_dtype("dtype", dtype)
    return _walk(config, input_shape, batch_size, dtype, as_flag("loss", loss))[0].saved


def _walk(
    config: UNetConfig, input_shape: Sequence[int], batch: int, dtype: torch.dtype, loss: bool
) -> tuple[_Walk, list[int]]:
    """The walk, and the keys of the tensors each checkpoint segment receives or returns."""
    w = _Walk(config, batch, dtype.itemsize)
    w.run(_input_shape(config, input_shape))
    if loss:
        w.loss()
    return w, w.held + [k for _, k in w.outputs]


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
    config: ConfigSource,
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
    config = resolve_config(config)
    optimizer = _optimizer(optimizer)
    batch_size, dtype = as_count("batch_size", batch_size), as_float_dtype("dtype", dtype)
    w, held = _walk(config, input_shape, batch_size, dtype, loss=True)
    item = dtype.itemsize
    first = _first_saves(w)
    kept = _kept(w, held, first)
    nbytes = {t.key: t.nbytes for t in w.saved}
    size = {k: nbytes.get(k, w.sizes[k] * item) for k in kept}
    activations = sum(size.values())
    out_grads = sum(w.sizes[k] * item for _, k in w.outputs)
    peak = max(
        activations + out_grads,  # the backward starts: the outputs' gradients
        _forward_peak(w, kept, size),
        _backward_peak(w, kept, size, first),
    )
    params = costs.count_parameters(config) * item
    return TrainingMemory(
        parameters=params,
        gradients=params,
        optimizer_state=OPTIMIZER_STATE[optimizer] * params,
        activations=activations,
        transient=peak - activations,
    )


def _optimizer(optimizer: object) -> Optimizer:
    """`optimizer` checked: one of `OPTIMIZER_STATE`'s names."""
    if not isinstance(optimizer, str) or optimizer not in OPTIMIZER_STATE:
        raise ValueError(f"optimizer={short_repr(optimizer)} must be one of {', '.join(OPTIMIZER_STATE)}")
    return optimizer  # type: ignore[return-value]


def _first_saves(w: _Walk) -> dict[int, int]:
    """Key -> time of its first save: the backward frees the tensor after that op's gradient."""
    first: dict[int, int] = {}
    for t, time in zip(w.saved, w.saved_at, strict=True):
        first.setdefault(t.key, time)
    return first


def _kept(w: _Walk, held: Sequence[int], first: dict[int, int]) -> dict[int, int]:
    """What the forward pass keeps for the backward pass, key -> the time it is kept from. Without
    checkpointing: every saved tensor and the outputs; with it: the segment boundaries (`held`) and
    what is saved outside the segments."""
    if not w.config.checkpointing:
        return dict(first) | {k: w.born[k] for _, k in w.outputs}
    outside = {t.key: first[t.key] for t, seg in zip(w.saved, w.segments, strict=True) if seg == 0}
    return {k: w.born[k] for k in held} | outside


def _alive(kept: dict[int, int], size: dict[int, int], time: int) -> int:
    """Bytes of the kept tensors that exist at `time`."""
    return sum(b for k, b in size.items() if kept[k] <= time)


def _forward_peak(w: _Walk, kept: dict[int, int], size: dict[int, int]) -> int:
    """The forward pass at each conv: everything kept so far, the conv's input and output and their blocked copies."""
    return max(_alive(kept, size, time) + (n_io + n_copies) * w.itemsize for time, _, n_io, n_copies in w.convs)


def _recomputed(w: _Walk, segment: int, kept: dict[int, int], first: dict[int, int], time: int) -> int:
    """Bytes the recomputed `segment` holds when the backward pass reaches `time` (freed as it proceeds)."""
    return sum(
        {
            t.key: t.nbytes
            for t, seg in zip(w.saved, w.segments, strict=True)
            if seg == segment and t.key not in kept and first[t.key] <= time
        }.values()
    )


def _backward_peak(w: _Walk, kept: dict[int, int], size: dict[int, int], first: dict[int, int]) -> int:
    """The backward pass at each conv: what is still kept (with checkpointing, also its recomputed
    segment), the gradients of the skips waiting for their merge, and the conv's input and output
    gradients plus their blocked copies."""
    peak = 0
    for time, segment, n_io, n_copies in w.convs:
        alive = _alive(kept, size, time)
        if w.config.checkpointing and segment:
            alive += _recomputed(w, segment, kept, first, time)
        pending = sum(n for n, born, merged in w.skips if born < time < merged) * w.itemsize
        peak = max(peak, alive + pending + (n_io + n_copies) * w.itemsize)
    return peak


def _padded(channels: int) -> int:
    """Channels of oneDNN's blocked layout (`BLOCK`)."""
    return -(-channels // BLOCK) * BLOCK


def _scopes(ops: Sequence[Op]) -> list[tuple[str, ...]]:
    """Per op, the module calls it runs inside whose frames hold their argument until they
    return: its level (`segment`) and its conv block (``encoder.0.block`` or, with several
    blocks per level, ``encoder.0.block.1``). Ops without a module (crops, sums, concatenations)
    run in the block of the op before them, if they are in the same segment."""
    scopes: list[tuple[str, ...]] = []
    block: str | None = None
    for op in ops:
        if op.module is not None:
            m = re.match(r"(.*?\.block(?:\.\d+)?)(?:\.|$)", op.module)
            block = m.group(1) if m and op.segment is not None and m.group(1).startswith(op.segment) else None
        elif scopes and ops[len(scopes) - 1].segment != op.segment:
            block = None
        scopes.append(tuple(s for s in (op.segment, block) if s is not None))
    return scopes


def _lifetimes(ops: Sequence[Op], keys: dict[int, int]) -> dict[int, int]:
    """Storage key -> the index of the last op during which it exists. A tensor lives until its
    last reader ends, and until the end of every module call that received it as an argument
    (Python frames hold a module's input until it returns: a level holds its input, a conv block
    holds its input through the block; `nn.Sequential` lets go of each step's input)."""
    scopes = _scopes(ops)
    ends: dict[str, int] = {}
    members: dict[str, set[int]] = {}
    for op, scope in zip(ops, scopes, strict=True):
        for s in scope:
            ends[s] = op.index
            members.setdefault(s, set()).add(op.index)
    last: dict[int, int] = {}
    for op, scope in zip(ops, scopes, strict=True):
        for i in op.inputs:
            k = keys[i]
            end = op.index
            for s in scope:
                if i not in members[s]:  # an argument of the call `s`: held until it returns
                    end = max(end, ends[s])
            last[k] = max(last.get(k, -1), end)
    return last


_NATIVE_CONV = 20480
"""torch's `use_mkldnn` (aten/src/ATen/native/Convolution.cpp) leaves a float32 CPU conv to its
native im2col kernel when N x C x the first two spatial sizes of its input are at most this (and
the batch is 1, the kernel at most 3 wide): small maps, and in 3D most one-channel inputs."""


def _conv_bytes(op: Conv, o: int, in_shape: Sequence[int], out_shape: Sequence[int], w: _Inference) -> tuple[int, int]:
    """(bytes a convolution allocates and holds while it runs, its output included; bytes of
    oneDNN's scratchpad it needs), on CPU. oneDNN keeps its scratchpad after the conv (one
    buffer per thread, grown to the largest need and never shrunk); measured: about 4 output
    maps of the conv's size for an output channel count off the `BLOCK` grid, little otherwise."""
    batch, item = w.batch, w.itemsize
    ones = all(k == 1 for k in op.kernel) and all(s == 1 for s in op.stride)
    lead = batch * op.in_channels * math.prod(in_shape[:2])
    mkldnn = (not ones or batch >= 16 or w.threads > 1) and (
        batch > 1 or lead > _NATIVE_CONV or (len(op.kernel) > 1 and all(k > 3 for k in op.kernel[-2:]))
    )
    blocked_in = batch * _padded(op.in_channels) * math.prod(in_shape) * item
    blocked_out = batch * _padded(op.out_channels) * math.prod(out_shape) * item
    if op.transposed:
        return (o if w.channels_last and mkldnn else 3 * o + blocked_in), 0
    if not mkldnn:  # im2col: a column of kernel taps x input channels per output position
        return o + (0 if ones else batch * op.in_channels * math.prod(op.kernel) * math.prod(out_shape) * item), 0
    if w.channels_last:
        return o, 0
    scratch = 0 if op.out_channels % BLOCK == 0 else 4 * batch * math.prod(out_shape) * item
    return blocked_in + blocked_out, scratch


@dataclass(frozen=True)
class _Inference:
    batch: int
    itemsize: int
    channels_last: bool
    threads: int


@functools.lru_cache(maxsize=64)
def _schedule(config: UNetConfig) -> tuple[tuple[Op, ...], dict[int, int], dict[int, int]]:
    """The ops of an inference pass (no deep-supervision heads), each op's storage key (an alias
    shares its input's: crops, dropout in eval, in-place activations) and each key's lifetime
    (`_lifetimes`; the input and the output live throughout). Do not mutate: cached per config."""
    ops = tuple(op for op in network_ops(config) if not op.training_only)
    keys: dict[int, int] = {INPUT: INPUT}
    for op in ops:
        alias = isinstance(op, (Crop, Drop)) or (isinstance(op, Act) and op.inplace)
        keys[op.index] = keys[op.inputs[0]] if alias else op.index
    last = _lifetimes(ops, keys)
    last[INPUT] = last[keys[ops[-1].index]] = ops[-1].index + 1  # held by the caller: the input batch, the result
    return ops, keys, last


def _inference_peak(config: UNetConfig, shape: Sequence[int], w: _Inference) -> TileMemory:
    """The memory of one forward pass of `w.batch` samples in inference mode, replaying
    `UNet.forward` op by op: each op's output is allocated while its inputs and everything still
    needed later are alive (skips, the inputs of the level and block being run), plus what the
    op itself holds meanwhile.

    Measured on CPU (one thread, fresh processes, glibc's mmap threshold fixed:
    benchmarks/predict_memory.py): a convolution that oneDNN runs on a contiguous (NCHW) map
    holds a copy of its input in the channel-blocked layout and a blocked output (`BLOCK`
    channels); with an output channel count off that grid it also grows oneDNN's scratchpad,
    which stays (about four output maps). One that torch runs natively (`_NATIVE_CONV`) holds
    an im2col buffer of kernel taps x input channels per output position. A transposed conv
    holds about three outputs and the blocked input; max pooling its output and int64
    indices; a conv of a crop (a strided view) first copies it; 1x1 convs, norms,
    interpolation, concatenations and sums hold only their output. With channels-last weights
    and input (`optimize_for_inference`) oneDNN's convs hold only their output. In-place
    activations, dropout (eval: the identity) and crops (views) allocate nothing."""
    ops, keys, last = _schedule(config)
    out = op_shapes(config, shape)
    item = w.itemsize
    every = network_ops(config)

    def nbytes(i: int) -> int:
        spatial = shape if i == INPUT else out[i]
        channels = config.in_channels if i == INPUT else every[i].out_channels
        return w.batch * channels * math.prod(spatial) * item

    size = {INPUT: nbytes(INPUT)}
    alive = {INPUT}
    peak = size[INPUT]
    scratch = 0  # oneDNN's scratchpad, kept once grown
    for op in ops:
        k = keys[op.index]
        if k == op.index:
            size[k] = o = nbytes(op.index)
            x = op.inputs[0]
            in_shape = shape if x == INPUT else out[x]
            match op:
                case Conv():
                    held, need = _conv_bytes(op, o, in_shape, out[op.index], w)
                    scratch = max(scratch, need)
                    if x != INPUT and isinstance(every[x], Crop):  # a conv copies a cropped (strided) view first
                        held += nbytes(x)
                case Pool(mode="max"):
                    held = o + o // item * 8  # int64 indices
                case Shuffle():
                    held = 2 * o  # a permuted copy, then the contiguous output
                case _:
                    held = o
            peak = max(peak, sum(size[a] for a in alive) + held)
            alive.add(k)
        alive = {a for a in alive if last.get(a, -1) > op.index}
    if w.channels_last:  # `InferenceUNet` copies a many-channel input and output between the layouts
        copies = (config.in_channels > 1) * size[INPUT] + (ops[-1].out_channels > 1) * size[keys[ops[-1].index]]
        peak = max(peak, size[INPUT] + size[keys[ops[-1].index]] + copies)
    return TileMemory(input=size[INPUT], output=size[keys[ops[-1].index]], peak=peak, scratchpad=scratch)


@dataclass(frozen=True)
class TileMemory:
    """Bytes of one forward pass over a batch of tiles in inference mode (`tile_memory`)."""

    input: int
    """The input batch."""
    output: int
    """The output batch (the logits)."""
    peak: int
    """The most bytes alive at once during the pass, the input included: tensors and what the
    ops hold while they run (blocked copies, im2col buffers, pooling indices)."""
    scratchpad: int
    """oneDNN's scratchpad the pass grows on CPU; it stays allocated after the pass."""

    @property
    def total(self) -> int:
        """The peak of a pass that runs with the scratchpad already grown (every pass but the first)."""
        return self.peak + self.scratchpad


def tile_memory(
    config: ConfigSource,
    tile_input: Sequence[int],
    batch_size: int = 1,
    dtype: torch.dtype = torch.float32,
    *,
    channels_last: bool = False,
    threads: int | None = None,
) -> TileMemory:
    """The parts of `estimate_tile_memory` (`TileMemory`). `channels_last`: the model runs in
    channels-last layout (`optimize_for_inference`), whose convolutions need no blocked copies;
    `threads`: torch's intra-op threads (default `torch.get_num_threads()`; with one thread torch
    runs 1x1 convs natively, with more through oneDNN). Raises `InputShapeError` for an invalid
    tile, `ValueError` for a bad argument."""
    config = resolve_config(config)
    shape = _input_shape(config, tile_input)
    batch_size, dtype = as_count("batch_size", batch_size), as_float_dtype("dtype", dtype)
    threads = torch.get_num_threads() if threads is None else as_count("threads", threads)
    return _inference_peak(
        config, shape, _Inference(batch_size, dtype.itemsize, as_flag("channels_last", channels_last), threads)
    )


def estimate_tile_memory(
    config: ConfigSource,
    tile_input: Sequence[int],
    batch_size: int = 1,
    dtype: torch.dtype = torch.float32,
    *,
    channels_last: bool = False,
    threads: int | None = None,
) -> int:
    """Estimated peak bytes of one forward pass in inference mode over `batch_size` tiles, the
    input batch included, with oneDNN's scratchpad grown (`tile_memory`'s total): the largest,
    over the ops in the order `UNet.forward` runs them, of every tensor alive at that op (the
    input, the skips, the inputs of the level and block being run) plus what the op allocates
    and holds meanwhile (a CPU convolution's channel-blocked copies or im2col buffer: see
    `_inference_peak`). Measured against forward passes on CPU (benchmarks/predict_memory.py:
    within a few percent with glibc's mmap threshold fixed). Fixed costs (weights, libraries)
    are not included; `unetgen.predict.plan.estimate_memory` adds what a whole prediction
    holds. Raises `InputShapeError` for an invalid tile."""
    return tile_memory(config, tile_input, batch_size, dtype, channels_last=channels_last, threads=threads).total


# ---------------------------------------------------------------------------------------------
# planning


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip
_SIZE_TEXT = 40
"""Longest memory string `parse_bytes` reads (a longer one is refused, never cut)."""


def parse_bytes(text: str | int) -> int:
    """``"8GiB"``, ``"512 MB"``, ``"1.5G"`` or a plain int as bytes (GiB = 2**30, GB = 10**9),
    exactly (a decimal fraction is rounded down to whole bytes). Python, NumPy and torch ints are
    ints; a float, a bool or anything else is a `ValueError` naming it."""
    if isinstance(text, str):
        if len(text) > _SIZE_TEXT:
            raise ValueError(
                f"memory {short_repr(text)} is longer than {_SIZE_TEXT} characters, so it is not read; "
                "write e.g. 8GiB, 512MiB, 16GB or 1000000"
            )
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]{0,3})\s*", text)
        if m is None or m.group(2).lower() not in _UNITS:
            raise ValueError(f"memory {short_repr(text)} is not a size; write e.g. 8GiB, 512MiB, 16GB or 1000000")
        value = int(Fraction(m.group(1)) * _UNITS[m.group(2).lower()])
    else:
        value = as_count("memory", text, minimum=1)
    if value < 1:
        raise ValueError(f"memory {short_repr(text)} must be at least 1 byte; write e.g. 8GiB or 1000000")
    return value


def _gib(n: int) -> str:
    """`n` bytes in GiB with two decimals, or whole GiB in bounded digits beyond 2**80 bytes."""
    return f"{n / 2**30:.2f}" if n.bit_length() <= 80 else int_text(n >> 30)


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
            return "x".join(map(int_text, shape))

        m = self.memory
        return (
            f"patch {fmt(self.patch_input)} -> {fmt(self.patch_output)}, batch {int_text(self.batch_size)}: "
            f"{_gib(self.total_bytes)} GiB of {_gib(self.budget)} GiB (parameters {_gib(m.parameters)}, "
            f"gradients {_gib(m.gradients)}, optimizer {_gib(m.optimizer_state)}, "
            f"activations {_gib(m.activations)}, transient {_gib(m.transient)})"
        )


MAX_BATCH = 4096
"""The largest batch `plan_training` raises the batch to when the whole image fits."""


def _last_true(lo: int, hi: int, ok: Callable[[int], bool]) -> int:
    """The largest n in [lo, hi] with ok(n), given ok(lo) and that ok is monotone (true, then
    false), for any ints: galloping up from `lo` (lo + 1, lo + 2, lo + 4, ...) to the first
    failure, then bisecting the last doubling, so O(log(answer - lo)) calls, however far `hi` is."""
    step = 1
    while lo < hi:
        probe = min(hi, lo + step)
        if ok(probe):
            lo, step = probe, step * 2
            continue
        hi = probe - 1
        while lo < hi:  # bisect (lo, probe): ok(lo), not ok(probe)
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
    return lo


@dataclass
class _Planner:
    """The search of `plan_training`: estimates of candidate patches against the budget (each
    patch and batch estimated once)."""

    config: UNetConfig
    budget: int
    optimizer: Optimizer
    dtype: torch.dtype
    smallest: tuple[int, ...]
    full: tuple[int, ...]
    estimates: dict[tuple[tuple[int, ...], int], TrainingMemory] = field(default_factory=dict)

    def fits(self, patch: tuple[int, ...], batch: int) -> bool:
        m = self.estimate(patch, batch)
        return m.parameters + m.total <= self.budget

    def estimate(self, patch: tuple[int, ...], batch: int) -> TrainingMemory:
        """`estimate_training_memory` of `batch` patches, remembered."""
        if (patch, batch) not in self.estimates:
            self.estimates[patch, batch] = estimate_training_memory(
                self.config, patch, batch, optimizer=self.optimizer, dtype=self.dtype
            )
        return self.estimates[patch, batch]

    def patch_for(self, length: int) -> tuple[int, ...]:
        """The smallest patch whose output is at least `length` on every axis, within [smallest, full]."""
        return tuple(
            min(f, max(s, shapes.input_size_for_output(self.config, length, axis=a)))
            for a, (s, f) in enumerate(zip(self.smallest, self.full, strict=True))
        )

    def grow(self, patch: tuple[int, ...], axis: int, batch: int) -> tuple[int, ...]:
        """`patch` (which fits) with `axis` at its largest valid size up to `full` that still fits."""
        sizes = shapes.valid_input_sizes(self.config, self.full[axis], min_size=patch[axis], axis=axis)
        count = (sizes.stop - sizes.start + sizes.step - 1) // sizes.step  # len() stops at sys.maxsize

        def at(k: int) -> tuple[int, ...]:
            return (*patch[:axis], sizes[k], *patch[axis + 1 :])

        return at(_last_true(0, count - 1, lambda k: self.fits(at(k), batch)))

    def largest(self, batch: int) -> tuple[int, ...] | None:
        """The largest patch that fits with `batch` (None if not even the smallest does): first
        the longest output length L (in steps of the largest output period) whose patch
        (`patch_for`) fits, by galloping search (`_last_true`); then every axis, the smallest
        output first (of equal ones the last axis first), grown to its largest valid size that
        still fits, by galloping search over its valid sizes (`shapes.valid_input_sizes`). Memory
        grows with every axis, so no axis can then grow by one valid step and still fit."""
        if not self.fits(self.smallest, batch):
            return None
        step = max(shapes.axis_rule(self.config, a).out_period for a in range(len(self.full)))
        top = -(-max(shapes.output_shape(self.config, self.full)) // step)
        patch = self.patch_for(step * _last_true(0, top, lambda k: self.fits(self.patch_for(step * k), batch)))
        out = shapes.output_shape(self.config, patch)
        for a in sorted(range(len(patch)), key=lambda a: (out[a], -a)):  # ties: the last axis first
            patch = self.grow(patch, a, batch)
        return patch


def plan_training(
    config: ConfigSource,
    memory: int | str,
    *,
    image_shape: Sequence[int],
    batch_size: int | None = None,
    optimizer: Optimizer = "adam",
    dtype: torch.dtype = torch.float32,
) -> TrainingPlan:
    """The largest valid training patch (and batch) whose step fits `memory` bytes (an int or a
    string such as ``"8GiB"``) including the parameters, for images of spatial `image_shape`
    (positive ints, one per spatial axis).

    The patch is searched between the smallest valid input (`shapes.min_input_shape`) and the
    patch whose output covers the whole image, by galloping search (`_Planner.largest`): O(axes *
    log(image size)) estimates (`estimate_training_memory`), well under a second for any image
    size. No axis of the answer can grow by one valid step (up to covering the image) and still
    fit. `batch_size=None` plans for a batch of 2 (nnU-Net's smallest; 1 if even the smallest
    patch does not fit 2) and, when the whole image fits, raises the batch (by the same search, up
    to `MAX_BATCH`) while it fits. Raises `ValueError` when not even the smallest valid patch fits,
    naming what it needs, and for a bad argument (`InputShapeError` for `image_shape`)."""
    config = resolve_config(config)
    budget = parse_bytes(memory)
    image = shapes.as_shape(config, image_shape, "image_shape")
    if min(image) < 1:
        raise shapes.InputShapeError(
            f"image_shape={short_repr(image_shape)} must be positive sizes, one per spatial axis "
            f"(spatial_dims={config.spatial_dims})"
        )
    fixed = None if batch_size is None else as_count("batch_size", batch_size)
    planner = _Planner(
        config,
        budget,
        _optimizer(optimizer),
        as_float_dtype("dtype", dtype),
        smallest := shapes.min_input_shape(config),
        # the patch whose output covers the image; with a stem stride the output is at 1/stem of
        # the image's resolution, so it covers the image at ceil(size / stem) output pixels
        tuple(
            max(m, shapes.input_size_for_output(config, -(-s // shapes.axis_rule(config, a).stem), axis=a))
            for a, (s, m) in enumerate(zip(image, smallest, strict=True))
        ),
    )
    batch = fixed or 2
    patch = planner.largest(batch)
    if patch is None and fixed is None:
        batch, patch = 1, planner.largest(1)
    if patch is None:
        need = planner.estimate(smallest, batch)
        raise ValueError(
            f"not even the smallest valid patch {'x'.join(map(str, smallest))} fits {_gib(budget)} GiB with "
            f"batch {int_text(batch)}: it needs {_gib(need.parameters + need.total)} GiB "
            f"(parameters {_gib(need.parameters)} GiB); give more memory or a smaller config"
        )
    if fixed is None and patch == planner.full and planner.fits(patch, batch + 1):
        batch = _last_true(batch, MAX_BATCH, lambda n: planner.fits(patch, n))
    return TrainingPlan(image, patch, shapes.output_shape(config, patch), batch, planner.estimate(patch, batch), budget)
