"""Shared hypothesis profiles and strategies: small, fast configs covering the whole option space."""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from unetgen import UNetConfig
from unetgen.analysis import shapes

DEFAULT_THREADS = torch.get_num_threads()  # before any test's `one_thread`

settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("dev", max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

NORMS = [
    "none",
    "batch",
    {"type": "batch", "affine": False},
    {"type": "group", "num_groups": 1},
    {"type": "group", "num_groups": 64, "fewer_channels": "one_group"},  # every map narrower (<= 54): one group
    "layer",
]  # instance: tested apart (1-pixel maps)
PRELU_CHANNELS = {"type": "prelu", "num_parameters": "channels", "init": 0.1}
UPS = [
    "transpose",
    {"type": "transpose", "bias": False},
    {"type": "transpose", "kernel_size": 3, "norm_act": True},
    {"type": "transpose", "kernel_size": 3, "size_by": "nearest_resize", "bias": False},
    {"type": "transpose", "kernel_size": 5, "size_by": "nearest_resize", "norm_act": True},
    "nearest",
    {"type": "nearest", "conv": "when_channels_change"},
    "linear",
    {"type": "linear", "conv": "when_channels_change", "align_corners": True},
    "pixelshuffle",
    {"type": "pixelshuffle", "kernel_size": 1, "pad_pool": False},
]
BLOCKS = [
    "plain",
    "residual",
    {"type": "residual", "preactivation": True},
    {"type": "residual", "shortcut": "resnet_d"},
    {"type": "residual", "shortcut": "resnet_d", "preactivation": True},
    {"type": "residual", "shortcut": "input_projection"},
    {"type": "residual", "shortcut": "input_projection", "preactivation": True},
    {"type": "residual", "shortcut": "input_projection", "excitation": "scse"},  # pytorch-3dunet's ResNetBlockSE
    {"type": "plain", "excitation": {"type": "cse", "reduction": 4}},
    {"type": "residual", "preactivation": True, "excitation": "sse"},
    {"type": "residual", "post_activation": "elu", "excitation": {"type": "scse", "combine": "add", "reduction": 1}},
]
DROPOUTS = [  # dropout at the end of blocks, or after every conv at each step
    *({"placement": p} for p in ("contracting_end", "bottleneck", "encoder", "decoder", "all")),
    *({"placement": "every_conv", "after": a} for a in ("conv", "norm", "activation")),
]


@st.composite
def config_dicts(
    draw: st.DrawFn, *, dims: tuple[int, ...] = (1, 2, 3), max_depth: int = 5, full_resolution: bool = False
) -> dict[str, Any]:
    """A tiny-channel config dict drawn from the whole option space: per-stage lists, per-axis
    (anisotropic) kernels and strides, every block, merge, down and up type, deep supervision.
    `full_resolution`: the output at the input's resolution (no `stem_stride`), as tiling needs."""
    d = draw(st.sampled_from(dims))
    depth = draw(st.integers(1, max_depth))
    merge = draw(st.sampled_from(["concat", {"type": "concat", "order": "up_first"}, "add", "attention"]))
    convs = draw(st.integers(1, 3) | st.lists(st.integers(1, 3), min_size=depth + 1, max_size=depth + 1))
    per_level = convs if isinstance(convs, list) else [convs] * (depth + 1)
    norm = draw(st.sampled_from(NORMS))
    # torch's group norm needs > 1 value per group: wider channels where maps can be 1 pixel
    grouped = norm not in ("none", "batch")
    ups = st.sampled_from(["skip", "keep", "half"]) | st.lists(st.integers(1, 3), min_size=depth, max_size=depth)
    up_channels = "skip" if merge == "add" else draw(ups)
    width = st.sampled_from([4, 6]) if grouped else st.integers(2 if up_channels == "half" else 1, 3)
    out: dict[str, Any] = {
        "spatial_dims": d,
        "in_channels": draw(st.integers(2 if grouped else 1, 2)),
        "out_channels": draw(st.integers(1, 3)),
        "depth": depth,
        "convs_per_block": convs,
        "padding": draw(st.sampled_from(["valid", "same"])),
        "norm": norm,
        "activation": draw(st.sampled_from(["relu", "leaky_relu", "elu", "gelu", "silu", "prelu", PRELU_CHANNELS])),
        "norm_position": draw(st.sampled_from(["before_activation", "after_activation", "before_conv"])),
        "merge": merge,
        "down": draw(st.sampled_from(["max", "avg", "conv", "first_conv"])),
        "up": draw(st.sampled_from(UPS)),
        "block": draw(st.sampled_from(BLOCKS)),
        "dropout": draw(st.sampled_from([{"rate": 0.0}, 0, 0.0, None, False])),  # no dropout, every spelling
        "init": "torch",
    }
    if draw(st.booleans()):
        out |= {"base_channels": draw(width), "channel_multiplier": 1}
    else:  # explicit channels, some per conv
        out["channels"] = [draw(width | st.lists(width, min_size=n, max_size=n)) for n in per_level]
    if up_channels != "skip":
        out["up_channels"] = up_channels
    if draw(st.booleans()):
        out["decoder_convs_per_block"] = draw(st.integers(1, 3))
    kernel = st.sampled_from([3, 5])
    if draw(st.booleans()):
        axis_kernel = st.sampled_from([1, 3, 5])
        out["kernel_size"] = [draw(kernel | st.lists(axis_kernel, min_size=d, max_size=d)) for _ in range(depth + 1)]
        if depth + 1 == d and len(set(map(str, out["kernel_size"]))) > 1:  # ints per level that read per axis too
            out["kernel_size"] = [k if isinstance(k, list) else [k] * d for k in out["kernel_size"]]  # (refused)
    else:
        out["kernel_size"] = draw(kernel)
    out["decoder_kernel"] = draw(st.sampled_from(["same_level", "level_below"]))
    if draw(st.booleans()):
        axis_stride = st.sampled_from([1, 2, 3])
        out["strides"] = [draw(st.just(2) | st.lists(axis_stride, min_size=d, max_size=d)) for _ in range(depth)]
    if draw(st.booleans()):  # nnU-Net ResEnc: several units per level, a stem, a plain decoder
        out["blocks_per_level"] = draw(
            st.integers(1, 2) | st.lists(st.integers(1, 2), min_size=depth + 1, max_size=depth + 1)
        )
        out["stem"] = draw(st.booleans())
        out["decoder_block"] = draw(st.sampled_from([None, *BLOCKS]))
    if out["down"] == "first_conv":
        out["padding"] = "same"
        if not full_resolution and draw(st.booleans()):
            per_axis = st.lists(st.sampled_from([1, 2]), min_size=d, max_size=d)
            out["stem_stride"] = draw(st.sampled_from([2, 3]) | per_axis)
    if depth > 1:
        out["deep_supervision"] = draw(st.lists(st.integers(1, depth - 1), unique=True, max_size=2))
    if draw(st.integers(0, 2)) == 0:
        out |= draw(monai_options(out))
    blocks = [out["block"], out.get("decoder_block")]
    projecting = any(isinstance(b, dict) and b.get("shortcut") == "input_projection" for b in blocks)
    down = out["down"] if isinstance(out["down"], str) else out["down"]["type"]
    if down == "first_conv" and projecting:
        out["block"], out["decoder_block"] = "residual", None  # input_projection runs unstrided
    if out["norm_position"] == "before_conv" and any(isinstance(b, dict) and b.get("preactivation") for b in blocks):
        out["norm_position"] = "before_activation"  # pre-activation blocks normalise before the conv already
    return out


MONAI_BLOCK = {"type": "residual", "shortcut": "conv", "last_activation": "before_sum"}


@st.composite
def monai_options(draw: st.DrawFn, out: dict[str, Any]) -> dict[str, Any]:
    """The options MONAI's UNet and AttentionUnet need, over a drawn config `out`: decoder levels
    of no conv (plain decoder blocks), a bottleneck at the deepest level's resolution, a conv or
    transposed head, residual units after up-sampling, MONAI's residual unit, gate options and the
    decoder blocks' own norm and activation."""
    depth, d, same = out["depth"], out["spatial_dims"], out["padding"] == "same"
    extra: dict[str, Any] = {"block": draw(st.sampled_from([out["block"], MONAI_BLOCK]))}
    decoder = out.get("decoder_block") or extra["block"]
    if decoder == "plain" and draw(st.booleans()):
        extra["decoder_convs_per_block"] = draw(
            st.just(0) | st.lists(st.integers(0, 1), min_size=depth, max_size=depth)
        )
    if out["merge"] != "add" and draw(st.booleans()):  # the last stride 1: no resampling around the bottleneck
        extra["strides"] = [[2] * d] * (depth - 1) + [[1] * d]
        extra["resample_bottleneck"] = False
    heads = ["conv", {"type": "conv", "kernel_size": 3}, "transpose", {"type": "transpose", "kernel_size": 1}]
    if same:
        heads.append({"type": "transpose", "norm_act": True, "residual_unit": True})
        if draw(st.booleans()):
            extra["up"] = {"type": "transpose", "kernel_size": 3, "norm_act": True, "residual_unit": True}
    extra["head"] = draw(st.sampled_from(heads))
    if out["merge"] == "attention":
        extra["merge"] = {"type": "attention", "psi_norm": draw(st.booleans()), "branch_order": "gate_first"}
    if draw(st.booleans()):
        extra["decoder_norm"] = draw(st.sampled_from(["none", "batch", {"type": "group", "num_groups": 1}]))
        extra["decoder_activation"] = draw(st.sampled_from(["relu", "prelu", "elu"]))
    if draw(st.booleans()):  # segmentation_models_pytorch's ResNet U-Net
        extra |= draw(resnet_options({**out, **extra}))
    return extra


@st.composite
def resnet_options(draw: st.DrawFn, out: dict[str, Any]) -> dict[str, Any]:
    """ResNet encoders (smp's Unet): the stem alone at level 0 (carrying the stem stride), the
    stem pool, bottleneck units, and a head that up-samples and convolves."""
    depth, extra = out["depth"], {}
    if draw(st.booleans()):
        extra["stem"] = True
        units = out.get("blocks_per_level", 1)
        units = units if isinstance(units, list) else [units] * (depth + 1)
        extra["blocks_per_level"] = [0, *units[1:]]
    if out["down"] == "first_conv" and draw(st.booleans()):
        extra["down"] = {"type": "first_conv", "first_step": "max_pool"}
    if draw(st.booleans()):
        extra["block"] = {"type": "residual", "bottleneck": True}
        extra["convs_per_block"] = 3
        if "channels" in out:  # one width per level: the three convs share it
            extra["channels"] = [c if isinstance(c, int) else c[-1] for c in out["channels"]]
        if out.get("decoder_block") is None:  # else the decoder would have bottleneck units too
            extra["decoder_block"] = "plain"
    if draw(st.booleans()):
        widths = draw(st.lists(st.sampled_from([2, 4]), max_size=2))
        extra["head"] = {"type": "upsample", "channels": widths, "kernel_size": draw(st.sampled_from([1, 3]))}
    return extra


def configs(**kwargs: Any) -> st.SearchStrategy[UNetConfig]:
    return config_dicts(**kwargs).map(UNetConfig.model_validate)


@st.composite
def valid_shapes(draw: st.DrawFn, config: UNetConfig, max_steps: int = 3) -> tuple[int, ...]:
    """A valid spatial input shape: each axis the smallest valid size plus a few periods."""
    out = []
    for axis in range(config.spatial_dims):
        rule = shapes.axis_rule(config, axis)
        out.append(rule.min_size + rule.period * draw(st.integers(0, max_steps)))
    return tuple(out)


def numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiles of tiny networks are many small ops: one thread avoids thread start-up per op.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def all_threads() -> Iterator[None]:
    """torch's default thread count for one test of a module that runs `one_thread` (a big network)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(DEFAULT_THREADS)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def frozen_heap() -> Iterator[None]:
    """Peers that call `gc.collect()` on every model unload (bioimage.io's adapters, ten times per
    model test) walk the whole heap of the test session each time: 0.4 s or more per call. The
    objects alive before the test are frozen (`gc.freeze`, O(1)) so that those walks see only what
    the test made, and unfrozen after it (garbage among them is collected later, as before).
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("frozen_heap")``."""
    gc.freeze()
    yield
    gc.unfreeze()
