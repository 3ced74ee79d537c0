"""unetgen.memory: the analytic saved-tensor count against the real model on the meta device,
the step estimate's parts, plan_training and `unetgen plan`. (Peaks measured in fresh processes:
benchmarks/training_memory.py, not a test.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import DROPOUTS, config_dicts, valid_shapes
from hypothesis import given
from hypothesis import strategies as st

from unetgen import UNetConfig, build_unet, cli
from unetgen.analysis import shapes
from unetgen.analysis.memory import (
    _walk,
    estimate_training_memory,
    parse_bytes,
    plan_training,
    saved_activations,
)


def saved(config: UNetConfig, shape: tuple[int, ...], batch: int, *, loss: bool = False) -> list[torch.Tensor]:
    """The tensors one real training-mode forward pass saves on the meta device, in order,
    parameters and buffers left out; with `loss`, cross-entropy on every head."""
    model = build_unet(config, device="meta").train()
    exclude = {p.untyped_storage()._cdata for p in [*model.parameters(), *model.buffers()]}
    packed: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        packed.append(t)
        return t

    x = torch.empty(batch, config.in_channels, *shape, device="meta")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
        if loss:  # a target per head, of its shape (crop_target has no halo with stem_stride)
            for o in out if isinstance(out, list) else [out]:
                F.cross_entropy(o, torch.zeros(batch, *o.shape[2:], dtype=torch.long, device="meta"))
    return [t for t in packed if t.untyped_storage()._cdata not in exclude and t.dim() > 0]


def measure(config: UNetConfig, shape: tuple[int, ...], batch: int, *, loss: bool = False) -> tuple[int, int]:
    """(number of tensors saved, bytes of their distinct storages) of `saved`."""
    return count(saved(config, shape, batch, loss=loss))


def count(acts: list[torch.Tensor]) -> tuple[int, int]:
    """(number of tensors, bytes of their distinct storages)."""
    return len(acts), sum({t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in acts}.values())


def estimate(config: UNetConfig, shape: tuple[int, ...], batch: int, *, loss: bool = False) -> tuple[int, int]:
    saved = saved_activations(config, shape, batch, loss=loss)
    return len(saved), sum({t.key: t.nbytes for t in saved}.values())


NNUNET_RESENC = {  # nnU-Net ResEnc M in miniature: stem, strided first convs, several resnet_d units
    "spatial_dims": 3,
    "in_channels": 1,
    "depth": 3,
    "channels": [4, 8, 8, 8],
    "padding": "same",
    "down": "first_conv",
    "strides": [[1, 2, 2], 2, 2],
    "blocks_per_level": [1, 2, 3, 2],
    "stem": True,
    "block": {"type": "residual", "shortcut": "resnet_d"},
    "decoder_block": "plain",
    "norm": {"type": "instance", "affine": True},
    "activation": "leaky_relu",
    "deep_supervision": [1, 2],
}

FIRST_CONV, RESIDUAL = {"down": "first_conv"}, {"block": "residual"}
PRE = {"block": {"type": "residual", "preactivation": True}}
RESNET_D = {"block": {"type": "residual", "shortcut": "resnet_d"}}
OPTIONS = {  # (the config it needs, the option): each option the walk follows beyond the plain U-Net
    "first_conv": ({}, FIRST_CONV),
    "stem_stride": (FIRST_CONV, {"stem_stride": [2, 1]}),
    "first_conv, strided projection": ({**RESIDUAL, "channel_multiplier": 1}, FIRST_CONV),
    "blocks_per_level": (RESIDUAL, {"blocks_per_level": [2, 1, 3]}),
    "stem": ({}, {"stem": True}),
    "stem + stem_stride": (FIRST_CONV, {"stem": True, "stem_stride": 2}),
    "resnet_d": (FIRST_CONV, RESNET_D),
    "resnet_d, pooling only": ({**FIRST_CONV, "channel_multiplier": 1}, RESNET_D),
    "resnet_d pre-activation": (
        {**FIRST_CONV, "stem_stride": 2},
        {"block": {"type": "residual", "shortcut": "resnet_d", "preactivation": True}},
    ),
    "norm_position": ({}, {"norm_position": "after_activation"}),
    "norm_position, pre-activation": (PRE, {"norm_position": "after_activation"}),
    "norm_position, layer norm, gelu": (
        {"norm": "layer", "activation": "gelu", **RESIDUAL},
        {"norm_position": "after_activation"},
    ),
    "prelu": ({}, {"activation": "prelu"}),
    "prelu per channel, attention": (
        {"merge": "attention", **PRE},
        {"activation": {"type": "prelu", "num_parameters": "channels"}},
    ),
    "up norm_act": ({}, {"up": {"type": "transpose", "kernel_size": 3, "norm_act": True}}),
    "up pixelshuffle": ({}, {"up": "pixelshuffle"}),
    "up pixelshuffle, anisotropic": ({"strides": [[2, 1], 3]}, {"up": {"type": "pixelshuffle", "kernel_size": 1}}),
    "group norm, one group below num_groups": (
        {"norm": "layer"},
        {"norm": {"type": "group", "num_groups": 4, "fewer_channels": "one_group"}},
    ),
    "input_projection": (RESIDUAL, {"block": {"type": "residual", "shortcut": "input_projection"}}),
    # (up size_by: nearest_resize saves what the plain transposed conv saves: checked by the property test)
    "dropout after every conv": (
        {"stem": True},
        {"dropout": {"rate": 0.2, "placement": "every_conv", "after": "norm", "spatial": True}},
    ),
    "excitation scse (max), post_activation": (
        RESIDUAL,
        {"block": {"type": "residual", "excitation": "scse", "post_activation": "leaky_relu"}},
    ),
    "excitation cse, plain": ({}, {"block": {"type": "plain", "excitation": {"type": "cse", "reduction": 2}}}),
    "dropout every_conv in pre-activation units, no norm (none on the input)": (
        {**PRE, "norm": "none"},
        {"dropout": {"rate": 0.2, "placement": "every_conv", "after": "activation"}},
    ),
    "up norm_act after activation": (
        {"norm_position": "after_activation", "activation": "silu"},
        {"up": {"type": "transpose", "norm_act": True}},
    ),
}


@pytest.mark.parametrize("name", OPTIONS)
def test_each_option_is_estimated_exactly(name: str) -> None:
    """Each option changes what the real model saves, and the walk follows it: same count, same bytes."""
    needs, option = OPTIONS[name]
    base = {"spatial_dims": 2, "in_channels": 1, "depth": 2, "base_channels": 2, "norm": "batch", "padding": "same"}
    config = UNetConfig.model_validate({**base, **needs, **option})
    without = UNetConfig.model_validate({**base, **needs})
    shape = (24, 24)  # valid for every case (same padding, strides 2 and 3 at most twice)
    assert shapes.is_valid_input_shape(config, shape) and shapes.is_valid_input_shape(without, shape)
    for loss in (False, True):
        acts = saved(config, shape, 2, loss=loss)
        truth = count(acts)
        assert estimate(config, shape, 2, loss=loss) == truth
        sizes = [t.numel() for t in acts]  # no crops here: the walk's order too
        assert [t.numel for t in saved_activations(config, shape, 2, loss=loss)] == sizes
        # the option is exercised: the real model saves other tensors without it
        other = saved(without, shape, 2, loss=loss)
        assert (truth, sizes) != (count(other), [t.numel() for t in other])
    if "down" not in needs | option:  # and with valid padding (crops; units and the stem shrink the map)
        valid = UNetConfig.model_validate({**base, **needs, **option, "padding": "valid"})
        shape = shapes.min_input_shape(valid)
        assert estimate(valid, shape, 2, loss=True) == measure(valid, shape, 2, loss=True)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_nnunet_resenc_is_estimated_exactly(checkpointing: bool) -> None:
    """With checkpointing, autograd keeps only what lies outside the segments (their inputs, the heads, the loss)."""
    config = UNetConfig.model_validate({**NNUNET_RESENC, "checkpointing": checkpointing})
    shape = shapes.min_input_shape(config)
    w, _ = _walk(config, shape, 2, torch.float32, True)
    kept = [t for t, seg in zip(w.saved, w.segments, strict=True) if seg == 0 or not checkpointing]
    assert (len(kept), sum({t.key: t.nbytes for t in kept}.values())) == measure(config, shape, 2, loss=True)
    assert len(kept) < len(w.saved) if checkpointing else kept == w.saved


@given(config_dicts(), st.data())
def test_saved_tensors_equal_the_real_models(raw: dict, data: st.DataObject) -> None:
    """Every option of the schema: the same number of saved tensors and the same bytes."""
    config = UNetConfig.model_validate(raw)
    shape = data.draw(valid_shapes(config, max_steps=1))
    batch = data.draw(st.integers(2, 3))
    loss = data.draw(st.booleans())
    assert estimate(config, shape, batch, loss=loss) == measure(config, shape, batch, loss=loss)


@given(config_dicts(max_depth=3), st.data())
def test_saved_tensors_with_instance_norm_and_dropout(raw: dict, data: st.DataObject) -> None:
    if data.draw(st.booleans()):
        raw["norm"] = {"type": "instance", "affine": data.draw(st.booleans())}
    raw["dropout"] = {"rate": 0.5, **data.draw(st.sampled_from(DROPOUTS)), "spatial": data.draw(st.booleans())}
    if raw["dropout"].get("after") == "norm" and raw.get("norm") == "none":
        raw["dropout"]["after"] = "conv"
    config = UNetConfig.model_validate(raw)
    shape = shapes.min_input_shape(config)
    assert estimate(config, shape, 2) == measure(config, shape, 2)


def test_a_missed_layer_is_caught(monkeypatch) -> None:
    """The comparison has teeth: forgetting what max pooling saves changes both numbers."""
    config = UNetConfig(depth=2, base_channels=2)
    shape = shapes.min_input_shape(config)
    truth = measure(config, shape, 2)
    from unetgen.analysis import memory

    monkeypatch.setattr(memory._Walk, "side", lambda self, *a, **k: None)
    assert estimate(config, shape, 2) != truth


def test_checkpointing_saves_only_outside_the_segments() -> None:
    """With checkpointing autograd keeps only the inputs of every level's segment and what runs
    outside the segments (the heads); the segments' own tensors are recomputed."""
    config = UNetConfig(depth=3, base_channels=2, checkpointing=True, deep_supervision=[1])
    shape = shapes.min_input_shape(config)
    w, _ = _walk(config, shape, 2, torch.float32, False)
    outside = [t for t, seg in zip(w.saved, w.segments, strict=True) if seg == 0]
    assert [t.layer for t in outside if not t.layer.endswith(".checkpoint")] == ["aux1", "head"]
    assert len(outside) == 2 + 4 + 3 * 2  # the heads, 4 encoder segments with one input, 3 decoder with two
    assert measure(config, shape, 2) == (len(outside), sum({t.key: t.nbytes for t in outside}.values()))


def test_estimate_parts() -> None:
    config = UNetConfig(base_channels=8)
    shape = (572, 572)
    adam = estimate_training_memory(config, shape, 1)
    params = sum(p.numel() for p in build_unet(config, device="meta").parameters()) * 4
    assert adam.parameters == adam.gradients == params and adam.optimizer_state == 2 * params
    assert estimate_training_memory(config, shape, 1, optimizer="sgd").optimizer_state == 0
    assert adam.activations >= sum({t.key: t.nbytes for t in saved_activations(config, shape, 1)}.values())
    assert adam.transient > 0
    two = estimate_training_memory(config, shape, 2)
    assert two.activations > 1.9 * adam.activations
    ckpt = estimate_training_memory(config.model_copy(update={"checkpointing": True}), shape, 1)
    assert ckpt.total < 0.8 * adam.total
    half = estimate_training_memory(config, shape, 1, dtype=torch.bfloat16)
    assert half.activations < 0.75 * adam.activations  # pooling indices stay int64
    with pytest.raises(ValueError, match="optimizer"):
        estimate_training_memory(config, shape, 1, optimizer="lbfgs")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        estimate_training_memory(config, shape, 0)
    with pytest.raises(shapes.InputShapeError, match="nearest valid"):
        estimate_training_memory(config, (570, 570), 1)


@pytest.mark.parametrize(
    "text, value",
    [("8GiB", 8 * 2**30), ("512 MiB", 512 * 2**20), ("1.5G", 1_500_000_000), ("1000", 1000), (4096, 4096)],
)
def test_parse_bytes(text, value) -> None:
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["8Gx", "", "-1GiB", "0", "GiB", "1e9", "x" * 10_000])
def test_parse_bytes_refuses(text) -> None:
    with pytest.raises(ValueError, match="memory"):
        parse_bytes(text)


@given(st.sampled_from([2, 3]), st.integers(200, 4000), st.sampled_from([None, 1, 2]))
def test_plan_is_the_largest_that_fits(dims: int, mib: int, batch) -> None:
    config = UNetConfig(spatial_dims=dims, depth=3, base_channels=4)
    image = (300, 256) if dims == 2 else (40, 128, 128)
    budget = mib * 2**20
    try:
        plan = plan_training(config, budget, image_shape=image, batch_size=batch)
    except ValueError as err:
        assert "not even the smallest" in str(err)
        smallest = estimate_training_memory(config, shapes.min_input_shape(config), batch or 1)
        assert smallest.parameters + smallest.total > budget
        return
    assert plan.total_bytes <= budget
    assert shapes.is_valid_input_shape(config, plan.patch_input)
    assert plan.patch_output == shapes.output_shape(config, plan.patch_input)
    if batch is not None:
        assert plan.batch_size == batch
    # no axis can grow by one valid step (up to covering the image) and still fit
    for a in range(dims):
        if plan.patch_output[a] >= image[a]:
            continue
        bigger = list(plan.patch_input)
        bigger[a] = shapes.nearest_valid_input_size(config, bigger[a] + 1, direction="up", axis=a)
        m = estimate_training_memory(config, tuple(bigger), plan.batch_size)
        assert m.parameters + m.total > budget


def test_plan_raises_the_batch_when_the_whole_image_fits() -> None:
    config = UNetConfig(depth=2, base_channels=4)
    plan = plan_training(config, "4GiB", image_shape=(64, 64))
    assert plan.patch_output[0] >= 64 and plan.batch_size > 2
    assert "batch" in plan.summary() and "GiB" in plan.summary()


def test_cli_plan(capsys) -> None:
    assert cli.main(["plan", "ronneberger2015", "--memory", "8GiB", "--image", "512x512", "--batch", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("patch ") and "batch 1" in out
    assert cli.main(["plan", "cicek2016", "--memory", "8GiB", "--image", "80x512x512"]) == 0
    assert "x" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, code, match",
    [
        (["--memory", "8Gx", "--image", "512"], 1, "not a size"),
        (["--memory", "1MiB", "--image", "512"], 1, "not even the smallest"),
        (["--memory", "8GiB", "--image", "512x5a"], 2, "--image: 512x5a is not a size"),
        (["--memory", "8GiB", "--image", "512x512x512"], 2, "--image 512x512x512 has 3 axes"),
        (["--memory", "8GiB", "--image", "512", "--batch", "0"], 2, "--batch: 0 must be a positive integer"),
    ],
)
def test_cli_plan_errors_are_one_line(capsys, args: list[str], code: int, match: str) -> None:
    """A failure is one `error:` line and exit 1; a malformed option value is a usage error, exit 2."""
    try:
        got = cli.main(["plan", "ronneberger2015", *args])
    except SystemExit as usage:  # argparse
        got = usage.code
    assert got == code
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(("error: ", "unetgen plan: error: ")) and match in err


def test_plan_with_a_stem_stride_covers_the_image_not_twice_it() -> None:
    """With `stem_stride` the output is at 1/stride resolution: the whole-image patch is the image."""
    cfg = UNetConfig(
        spatial_dims=3, depth=2, base_channels=2, padding="same", norm="instance", down="first_conv",
        stem_stride=[1, 2, 2], strides=[[1, 2, 2], [2, 2, 2]], dropout=0, init="torch",
    )  # fmt: skip
    plan = plan_training(cfg, "64GiB", image_shape=(16, 64, 64), batch_size=1)
    assert plan.patch_input == (16, 64, 64) and plan.patch_output == (16, 32, 32)
