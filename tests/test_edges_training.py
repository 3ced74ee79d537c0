"""Issue 18, part C: the training helpers, the memory planner and the config layer, tried the way
a careless or hostile caller would: configs in every form `build_unet` takes, planner answers for
any image size, every numeric argument checked (type, finiteness, range, length per axis),
targets checked against the classes, and config lists that read two ways refused."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from unetgen import cli, training
from unetgen.analysis import costs, memory, shapes
from unetgen.config import ConfigError, UNetConfig, load_config, resolve_config
from unetgen.config.presets import PRESETS
from unetgen.draw import draw_unet
from unetgen.predict.plan import plan_tiles

# ---------------------------------------------------------------------------------------------
# one rule for configs: every helper takes what build_unet takes

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: threads only add overhead

SMALL = {"depth": 2, "base_channels": 4, "deep_supervision": [1]}


def _loss(cfg: Any) -> float:
    outs = [torch.zeros(2, 2, 24, 24), torch.zeros(2, 2, 14, 14)]
    target = torch.zeros(2, 64, 64, dtype=torch.int64)
    return float(training.deep_supervision_loss(outs, target, cfg, (64, 64), weight=torch.ones(2, 64, 64)))


def _patch(cfg: Any) -> list[Any]:
    sampler = training.PatchSampler(cfg, np.ones((80, 80)), np.zeros((80, 80), int), patch_size=64, seed=0)
    return [t.tolist() for t in sampler.sample()]


HELPERS: dict[str, Callable[[Any], Any]] = {
    "shapes.as_shape": lambda c: shapes.as_shape(c, [64, 64]),
    "shapes.axis_rule": lambda c: shapes.axis_rule(c, 1),
    "shapes.output_shape": lambda c: shapes.output_shape(c, (64, 64)),
    "shapes.output_shape(int)": lambda c: shapes.output_shape(c, 64, axis=1),
    "shapes.is_valid_input_shape": lambda c: shapes.is_valid_input_shape(c, (64, 66)),
    "shapes.valid_input_sizes": lambda c: shapes.valid_input_sizes(c, 200),
    "shapes.valid_input_sizes(shape)": lambda c: shapes.valid_input_sizes(c, (200, 100), min_size=50),
    "shapes.nearest_valid_input_size": lambda c: shapes.nearest_valid_input_size(c, 70, direction="down"),
    "shapes.min_input_shape": shapes.min_input_shape,
    "shapes.input_size_for_output": lambda c: shapes.input_size_for_output(c, (10, 30)),
    "shapes.halo": shapes.halo,
    "shapes.trace": lambda c: shapes.trace(c, (64, 64)),
    "shapes.skip_crops": lambda c: shapes.skip_crops(c, (64, 64)),
    "shapes.aux_shapes": lambda c: shapes.aux_shapes(c, (64, 64)),
    "costs.count_parameters": costs.count_parameters,
    "costs.count_macs": lambda c: costs.count_macs(c, (64, 64), training=True),
    "costs.check_parameter_budget": lambda c: costs.check_parameter_budget(c, 10**9),
    "memory.saved_activations": lambda c: memory.saved_activations(c, (64, 64), 2, loss=True),
    "memory.estimate_training_memory": lambda c: memory.estimate_training_memory(c, (64, 64), 2),
    "memory.estimate_tile_memory": lambda c: memory.estimate_tile_memory(c, (64, 64), 2),
    "memory.plan_training": lambda c: memory.plan_training(c, "64MiB", image_shape=(300, 200)),
    "training.crop_target": lambda c: training.crop_target(np.arange(64 * 64).reshape(64, 64), c, (64, 64)).tolist(),
    "training.head_weights": training.head_weights,
    "training.deep_supervision_targets": lambda c: [
        t.tolist() for t in training.deep_supervision_targets(np.arange(64 * 64).reshape(64, 64), c, (64, 64))
    ],
    "training.deep_supervision_loss": _loss,
    "training.PatchSampler": _patch,
    "draw.draw_unet": lambda c: draw_unet(c, (64, 64)),
    "predict.plan_tiles": lambda c: plan_tiles(c, (300, 200)),
}


def _forms(tmp_path) -> dict[str, Any]:
    (tmp_path / "c.json").write_text(json.dumps(SMALL))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(SMALL))
    return {"dict": dict(SMALL), "json path": str(tmp_path / "c.json"), "yaml path": tmp_path / "c.yaml"}


@pytest.mark.parametrize("helper", list(HELPERS))
def test_every_helper_takes_a_config_as_build_unet_does(helper: str, tmp_path) -> None:
    """A dict, a .json or .yaml path (str or Path) give the same answer as the UNetConfig."""
    call = HELPERS[helper]
    want = call(UNetConfig(**SMALL))
    for form, value in _forms(tmp_path).items():
        assert call(value) == want, form


@pytest.mark.parametrize(
    "call",
    [
        shapes.min_input_shape,
        lambda c: shapes.output_shape(c, (572, 572)),
        costs.count_parameters,
        lambda c: memory.plan_training(c, "2GiB", image_shape=(512, 512)),
        lambda c: draw_unet(c),
    ],
)
def test_a_preset_name_is_a_config(call: Callable[[Any], Any]) -> None:
    assert call("ronneberger2015") == call(PRESETS["ronneberger2015"].build_config())


@pytest.mark.parametrize(
    "helper", ["shapes.output_shape", "shapes.valid_input_sizes", "memory.estimate_training_memory"]
)
@pytest.mark.parametrize("bad", [42, None, ["depth", 2], "no-such-preset", {"depth": "x"}])
def test_what_is_not_a_config_is_a_config_error(helper: str, bad: Any) -> None:
    with pytest.raises(ConfigError):
        HELPERS[helper](bad)


def test_resolve_config_returns_a_config_unchanged() -> None:
    cfg = UNetConfig(depth=2)
    assert resolve_config(cfg) is cfg
    assert resolve_config({"depth": 2}) == cfg == load_config({"depth": 2})


# ---------------------------------------------------------------------------------------------
# the planner searches: any image size in well under a second

RESENC = {  # nnU-Net ResEnc-like: 287 ops, about 10 ms per estimate
    "spatial_dims": 3, "depth": 5, "base_channels": 8, "padding": "same", "norm": "instance", "block": "residual",
    "blocks_per_level": [1, 3, 4, 6, 6, 6], "down": "first_conv", "deep_supervision": [1, 2, 3, 4],
}  # fmt: skip


@pytest.mark.parametrize(
    "config, memory_, image",
    [
        ("ronneberger2015", "1GiB", (10**6, 10**6)),
        ("ronneberger2015", "1GiB", (10**9, 10**9)),
        ("ronneberger2015", "64GiB", (10**9, 7)),
        ("cicek2016", "8GiB", (10**9, 10**9, 10**9)),
        ("cicek2016", "8GiB", (10**6, 20, 10**9)),
        ("ronneberger2015", 10**40, (10**30, 10**30)),
        (RESENC, "24GiB", (10**9, 10**9, 10**9)),
        (RESENC, "24GiB", (10**6, 10, 10**9)),
    ],
)
def test_plan_any_image_size_in_well_under_a_second(config: Any, memory_: Any, image: tuple[int, ...]) -> None:
    cfg = load_config(config)
    start = time.perf_counter()
    plan = memory.plan_training(cfg, memory_, image_shape=image)
    assert time.perf_counter() - start < 0.5
    assert plan.total_bytes <= memory.parse_bytes(memory_)
    assert shapes.is_valid_input_shape(cfg, plan.patch_input)
    assert plan.summary().startswith("patch ")
    for a in range(len(image)):  # maximal: no axis grows by one valid step and still fits
        if plan.patch_output[a] >= image[a]:
            continue
        bigger = list(plan.patch_input)
        bigger[a] = shapes.nearest_valid_input_size(cfg, bigger[a] + 1, direction="up", axis=a)
        m = memory.estimate_training_memory(cfg, tuple(bigger), plan.batch_size)
        assert m.parameters + m.total > memory.parse_bytes(memory_)


def test_cli_plan_of_a_million_pixels_answers_at_once(capsys) -> None:
    start = time.perf_counter()
    assert cli.main(["plan", "ronneberger2015", "--memory", "1GiB", "--image", "1000000"]) == 0
    assert time.perf_counter() - start < 1.0
    assert capsys.readouterr().out.startswith("patch 364x364 -> 180x180, batch 2")


def test_the_batch_is_raised_by_search_too() -> None:
    cfg = UNetConfig(depth=2, base_channels=1)
    start = time.perf_counter()
    plan = memory.plan_training(cfg, "1TiB", image_shape=(8, 8))
    assert time.perf_counter() - start < 0.5
    assert plan.batch_size == memory.MAX_BATCH
    small = memory.plan_training(cfg, "3MiB", image_shape=(8, 8))
    assert 2 < small.batch_size < memory.MAX_BATCH
    assert memory.estimate_training_memory(cfg, small.patch_input, small.batch_size + 1).total > 0
    over = memory.estimate_training_memory(cfg, small.patch_input, small.batch_size + 1)
    assert over.parameters + over.total > 3 * 2**20


# ---------------------------------------------------------------------------------------------
# every numeric argument is checked: type, finiteness, range, length per axis; nothing is read
# as something else, nothing ends in a raw exception

CFG = UNetConfig(depth=2, base_channels=4)
LABELS3 = np.zeros((6, 6, 6), np.int64)
LABELS3[1:3, 1:3, 1:3], LABELS3[3:5, 3:5, 3:5] = 1, 2
IMG = np.ones((1, 16, 16), np.float32)
TGT = np.zeros((16, 16), np.int64)
W = np.ones((16, 16), np.float32)
LOGITS = torch.zeros(1, 2, 4, 4)
T4 = torch.zeros(1, 4, 4, dtype=torch.int64)
INF, NAN = math.inf, math.nan
RNG = np.random.default_rng(0)


def _sampler(**kw: Any) -> training.PatchSampler:
    args = {"images": np.ones((80, 80)), "targets": np.zeros((80, 80), int), "patch_size": 64} | kw
    return training.PatchSampler(CFG, **args)


BAD: dict[str, tuple[Callable[[], Any], type[Exception], str]] = {
    # plan_training (unetgen plan)
    "plan image_shape 572.9": (
        lambda: memory.plan_training(CFG, "1GiB", image_shape=[572.9] * 2),
        shapes.InputShapeError,
        r"image_shape\[0\] must be an integer, got 572.9",
    ),
    "plan image_shape inf": (
        lambda: memory.plan_training(CFG, "1GiB", image_shape=[INF] * 2),
        shapes.InputShapeError,
        r"image_shape\[0\] .*inf.*finite",
    ),
    "plan image_shape nan": (
        lambda: memory.plan_training(CFG, "1GiB", image_shape=[64, NAN]),
        shapes.InputShapeError,
        r"image_shape\[1\]",
    ),
    "plan image_shape bool": (
        lambda: memory.plan_training(CFG, "1GiB", image_shape=[True, 64]),
        shapes.InputShapeError,
        r"image_shape\[0\] .*boolean",
    ),
    "plan image_shape str": (
        lambda: memory.plan_training(CFG, "1GiB", image_shape="572"),
        shapes.InputShapeError,
        r"image_shape must be a sequence of 2 integers",
    ),
    "plan image_shape 0": (
        lambda: memory.plan_training(CFG, "1GiB", image_shape=(0, 64)),
        shapes.InputShapeError,
        r"image_shape=\(0, 64\) must be positive",
    ),
    "plan batch_size 2.0": (
        lambda: memory.plan_training(CFG, "1GiB", image_shape=(64, 64), batch_size=2.0),
        ValueError,
        r"batch_size=2.0 \(float\) must be an integer >= 1; write 2",
    ),
    "plan batch_size True": (
        lambda: memory.plan_training(CFG, "1GiB", image_shape=(64, 64), batch_size=True),
        ValueError,
        r"batch_size=True must be an integer >= 1, not a boolean",
    ),
    "plan optimizer list": (
        lambda: memory.plan_training(CFG, "1GiB", image_shape=(64, 64), optimizer=["adam"]),
        ValueError,
        r"optimizer=\['adam'\] must be one of sgd, momentum, adam, adamw",
    ),
    "plan dtype str": (
        lambda: memory.plan_training(CFG, "1GiB", image_shape=(64, 64), dtype="float32"),
        ValueError,
        r"dtype='float32' \(str\) must be a floating-point torch.dtype",
    ),
    "plan memory float": (
        lambda: memory.plan_training(CFG, 8e9, image_shape=(64, 64)),
        ValueError,
        r"memory=8000000000.0 \(float\) .*write 8000000000",
    ),
    "plan memory 50 digits": (
        lambda: memory.plan_training(CFG, "1" * 50, image_shape=(64, 64)),
        ValueError,
        r"memory '1111.* is longer than 40 characters, so it is not read",
    ),
    # the step estimates
    "estimate batch_size True": (
        lambda: memory.estimate_training_memory(CFG, (64, 64), True),
        ValueError,
        r"batch_size=True must be an integer >= 1, not a boolean",
    ),
    "estimate input_shape int": (
        lambda: memory.estimate_training_memory(CFG, 64),
        shapes.InputShapeError,
        r"input shape must be a sequence of 2 integers",
    ),
    "estimate optimizer unhashable": (
        lambda: memory.estimate_training_memory(CFG, (64, 64), optimizer={"adam": 1}),
        ValueError,
        r"optimizer=\{'adam': 1\} must be one of",
    ),
    "estimate dtype int64": (
        lambda: memory.estimate_training_memory(CFG, (64, 64), dtype=torch.int64),
        ValueError,
        r"dtype=torch.int64 \(dtype\) must be a floating-point torch.dtype",
    ),
    "tile batch_size 2.5": (
        lambda: memory.estimate_tile_memory(CFG, (64, 64), 2.5),
        ValueError,
        r"batch_size=2.5 \(float\) must be an integer >= 1",
    ),
    "tile batch_size 0": (
        lambda: memory.estimate_tile_memory(CFG, (64, 64), 0),
        ValueError,
        r"batch_size=0 must be an integer >= 1",
    ),
    "saved batch_size 0.5": (
        lambda: memory.saved_activations(CFG, (64, 64), 0.5),
        ValueError,
        r"batch_size=0.5 \(float\) must be an integer >= 1",
    ),
    "saved loss str": (
        lambda: memory.saved_activations(CFG, (64, 64), loss="no"),
        ValueError,
        r"loss='no' \(str\) must be True or False",
    ),
    # the weight map
    "border w0 str": (
        lambda: training.border_weight_map(LABELS3, w0="10"),
        ValueError,
        r"w0='10' \(str\) must be a finite number >= 0; parse it first",
    ),
    "border w0 bool": (
        lambda: training.border_weight_map(LABELS3, w0=True),
        ValueError,
        r"w0=True \(bool\) must be a finite number >= 0",
    ),
    "border sigma nan": (
        lambda: training.border_weight_map(LABELS3, sigma=NAN),
        ValueError,
        r"sigma=nan must be a finite number > 0",
    ),
    "border sampling 2 of 3 axes": (
        lambda: training.border_weight_map(LABELS3, sampling=(2, 1)),
        ValueError,
        r"sampling=\(2, 1\) has 2 values but labels has 3 axes",
    ),
    "border sampling str": (
        lambda: training.border_weight_map(LABELS3, sampling="1"),
        ValueError,
        r"sampling='1' \(str\) must be a finite number > 0",
    ),
    "border sampling tiny": (
        lambda: training.border_weight_map(LABELS3, sampling=(5e-324, 1, 1)),
        None,
        "",
    ),
    "border sampling inf": (
        lambda: training.border_weight_map(LABELS3, sampling=(1, INF, 1)),
        ValueError,
        r"sampling\[1\]=inf must be a finite number > 0",
    ),
    "class weights str": (
        lambda: training.class_weight_map(LABELS3, {0: "1", 1: "2"}),
        ValueError,
        r"class_weights\[0\]='1' \(str\) must be a finite number >= 0",
    ),
    # elastic deformation
    "elastic sigma nan": (
        lambda: training.elastic_deform(IMG, TGT, W, RNG, sigma=NAN),
        ValueError,
        r"sigma=nan must be a finite number >= 0",
    ),
    "elastic sigma str": (
        lambda: training.elastic_deform(IMG, TGT, W, RNG, sigma="10"),
        ValueError,
        r"sigma='10' \(str\)",
    ),
    "elastic points float": (
        lambda: training.elastic_deform(IMG, TGT, W, RNG, points=2.5),
        ValueError,
        r"points=2.5 \(float\) must be an integer >= 1 and <= 16",
    ),
    "elastic points huge": (
        lambda: training.elastic_deform(IMG, TGT, W, RNG, points=10**6),
        ValueError,
        r"points=1000000 must be an integer >= 1 and <= 16",
    ),
    "elastic rng int": (
        lambda: training.elastic_deform(IMG, TGT, W, 0),
        ValueError,
        r"rng=0 must be a numpy.random.Generator",
    ),
    "elastic shapes": (
        lambda: training.elastic_deform(IMG, TGT[:8], W, RNG),
        ValueError,
        r"image \(1, 16, 16\), target \(8, 16\) and weights \(16, 16\) do not fit",
    ),
    # losses
    "ce class 7": (
        lambda: training.weighted_cross_entropy(LOGITS, T4 + 7),
        ValueError,
        r"target holds class id 7, but class ids must be 0..1",
    ),
    "ce negative class": (
        lambda: training.weighted_cross_entropy(LOGITS, T4 - 100),
        ValueError,
        r"target holds the negative class id -100",
    ),
    "ce float target": (
        lambda: training.weighted_cross_entropy(LOGITS, T4 + 0.7),
        ValueError,
        r"target must hold class ids .* got dtype torch.float32",
    ),
    "ce weight nan": (
        lambda: training.weighted_cross_entropy(LOGITS, T4, torch.full((1, 4, 4), NAN)),
        ValueError,
        r"weight must hold finite real numbers >= 0",
    ),
    "ce numpy logits": (
        lambda: training.weighted_cross_entropy(LOGITS.numpy(), T4),
        ValueError,
        r"logits must be a torch tensor, got ndarray",
    ),
    "dice class 2 of 2": (
        lambda: training.soft_dice_loss(LOGITS, T4 + 2),
        ValueError,
        r"target holds class id 2, but class ids must be 0..1",
    ),
    "dice smooth nan": (
        lambda: training.soft_dice_loss(LOGITS, T4, smooth=NAN),
        ValueError,
        r"smooth=nan must be a finite number >= 0",
    ),
    "dice include_background str": (
        lambda: training.soft_dice_loss(LOGITS, T4, include_background="no"),
        ValueError,
        r"include_background='no' \(str\) must be True or False",
    ),
    "ds loss level_weights nan": (
        lambda: training.deep_supervision_loss(
            [torch.zeros(1, 2, 24, 24), torch.zeros(1, 2, 14, 14)],
            torch.zeros(1, 64, 64, dtype=torch.int64),
            SMALL,
            (64, 64),
            level_weights=[1, NAN],
        ),
        ValueError,
        r"level_weights\[1\]=nan must be a finite number >= 0",
    ),
    "ds loss outputs None": (
        lambda: training.deep_supervision_loss(None, torch.zeros(1, 64, 64, dtype=torch.int64), SMALL, (64, 64)),
        ValueError,
        r"outputs=None must be the model's output",
    ),
    "ds targets input_shape int": (
        lambda: training.deep_supervision_targets(np.zeros((64, 64)), SMALL, 64),
        shapes.InputShapeError,
        r"input_shape must be a sequence of 2 integers",
    ),
    "crop_target list": (
        lambda: training.crop_target([[0] * 64] * 64, CFG, (64, 64)),
        ValueError,
        r"target must be a NumPy array or a torch tensor, got list",
    ),
    "crop_target input_shape int": (
        lambda: training.crop_target(np.zeros((64, 64)), CFG, 64),
        shapes.InputShapeError,
        r"input_shape must be a sequence of 2 integers",
    ),
    # the patch sampler
    "sampler patch_size 572+16e9": (
        lambda: training.PatchSampler(
            "ronneberger2015", np.ones((80, 80)), np.zeros((80, 80), int), patch_size=572 + 16e9
        ),
        shapes.InputShapeError,
        r"patch_size\[0\] must be an integer, got 16000000572.0 \(float\); write 16000000572",
    ),
    "sampler patch_size 572+16e9 as int": (
        lambda: training.PatchSampler(
            "ronneberger2015", np.ones((80, 80)), np.zeros((80, 80), int), patch_size=572 + 16 * 10**9
        ),
        ValueError,
        r"need .* GiB, more than MAX_PATCH_BYTES",
    ),
    "sampler patch_size per axis wrong length": (
        lambda: _sampler(patch_size=(64, 64, 64)),
        shapes.InputShapeError,
        r"patch_size .* has 3 spatial axes but spatial_dims=2",
    ),
    "sampler seed float": (lambda: _sampler(seed=1.5), ValueError, r"seed=1.5 \(float\) must be an integer >= 0"),
    "sampler seed negative": (lambda: _sampler(seed=-1), ValueError, r"seed=-1 must be an integer >= 0"),
    "sampler image nan": (
        lambda: _sampler(images=np.full((80, 80), NAN)),
        ValueError,
        r"images\[0\] holds 6,400 NaN or infinite values",
    ),
    "sampler image complex": (
        lambda: _sampler(images=np.ones((80, 80), complex)),
        ValueError,
        r"images\[0\] must hold real numbers, got dtype complex128",
    ),
    "sampler weights negative": (
        lambda: _sampler(weights=-np.ones((80, 80))),
        ValueError,
        r"weights\[0\] holds the negative weight -1.0",
    ),
    "sampler augment not callable": (lambda: _sampler(augment=3), ValueError, r"augment=3 must be None or a function"),
    "sampler empty target": (
        lambda: _sampler(images=np.ones((0, 80)), targets=np.zeros((0, 80), int)),
        ValueError,
        r"targets\[0\] of shape \(0, 80\) must have 2 non-empty spatial axes",
    ),
    "sampler patch_size 10**400": (
        lambda: _sampler(patch_size=(10**400 + 4, 64)),
        ValueError,
        r"patch_size=100000000000…000000000004 \(401 digits\)x64 need .* GiB, more than MAX_PATCH_BYTES",
    ),
    "plan batch 10**400": (
        lambda: memory.plan_training(CFG, "1GiB", image_shape=(64, 64), batch_size=10**400),
        ValueError,
        r"batch 100000000000…000000000000 \(401 digits\): it needs",
    ),
    "border sigma 1e300": (lambda: training.border_weight_map(LABELS3, sigma=1e300), None, ""),
    # the cost helpers' options
    "budget str": (
        lambda: costs.check_parameter_budget(CFG, "10"),
        ValueError,
        r"max_parameters='10' \(str\) must be an integer >= 0",
    ),
    "macs training str": (
        lambda: costs.count_macs(CFG, (64, 64), training="yes"),
        ValueError,
        r"training='yes' \(str\) must be True or False",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_every_numeric_argument_is_checked(case: str) -> None:
    call, error, match = BAD[case]
    if error is None:  # an answer, not an error
        call()
        return
    with pytest.raises(error, match=match) as info:
        call()
    assert len(str(info.value)) < 700


@pytest.mark.parametrize(
    "call",
    [
        lambda: memory.plan_training(CFG, "1GiB", image_shape=(64, 64), batch_size=np.int64(2)),
        lambda: memory.estimate_training_memory(CFG, (64, 64), np.int64(2)),
        lambda: memory.estimate_tile_memory(CFG, np.array([64, 64]), torch.tensor(2)),
        lambda: training.border_weight_map(LABELS3, w0=np.float32(10), sigma=torch.tensor(5.0), sampling=np.ones(3)),
        lambda: training.elastic_deform(IMG, TGT, W, RNG, sigma=np.float64(3), points=np.int64(16)),
        lambda: _sampler(seed=np.uint8(3), patch_size=np.int64(64)).batch(np.int64(2)),
    ],
)
def test_numpy_and_torch_numbers_are_numbers(call: Callable[[], Any]) -> None:
    call()


def test_the_memory_string_is_read_exactly() -> None:
    assert memory.parse_bytes("99999999999999999999") == 99999999999999999999
    assert memory.parse_bytes("1.5GiB") == 3 * 2**29
    assert memory.parse_bytes(np.int64(4096)) == 4096
    plan = memory.plan_training(CFG, 10**400, image_shape=(64, 64), batch_size=1)
    assert "GiB of 931322574615…000000000000 (391 digits) GiB" in plan.summary()  # no OverflowError for a huge budget


def test_a_batch_is_refused_before_it_is_built(monkeypatch) -> None:
    monkeypatch.setattr(training, "MAX_PATCH_BYTES", 10**6)
    sampler = _sampler()  # one 64x64 sample: 64 KiB
    with pytest.raises(ValueError, match=r"100 patch\(es\) of patch_size=64x64 need .* MAX_PATCH_BYTES"):
        sampler.batch(100)
    assert sampler.batch(2)[0].shape == (2, 1, 64, 64)
    with pytest.raises(ValueError, match=r"n=2.0 \(float\) must be an integer >= 1; write 2"):
        sampler.batch(2.0)


def test_an_augment_that_changes_the_shapes_is_named() -> None:
    sampler = _sampler(augment=lambda x, y, w, rng: (x, y[1:], w))
    with pytest.raises(ValueError, match=r"augment returned .* it must return \(image, target, weights\)"):
        sampler.sample()


# ---------------------------------------------------------------------------------------------
# targets are class ids, checked against out_channels, and the advice fits the function


def _mask() -> np.ndarray:
    mask = np.zeros((80, 80), bool)
    mask[10:20, 10:20] = mask[40:50, 40:50] = mask[60:70, 5:15] = True
    return mask


def test_a_float_target_gets_class_advice_not_instance_labels() -> None:
    with pytest.raises(ValueError, match=r"targets\[0\] must hold class ids") as info:
        _sampler(targets=_mask().astype(np.float64))
    text = str(info.value)
    assert "targets[0].astype(np.int64)" in text and "ndimage.label" not in text
    with pytest.raises(ValueError, match=r"\(targets\[0\] > 0.5\).astype\(np.int64\)"):
        _sampler(targets=_mask() * 0.9)


def test_instance_labels_as_a_target_are_refused_with_the_right_advice() -> None:
    """The advice of old (scipy.ndimage.label) makes instance ids, which the loss cannot take."""
    from scipy import ndimage

    labels = ndimage.label(_mask())[0]
    with pytest.raises(ValueError, match=r"targets\[0\] holds class id 3, but class ids must be 0..1") as info:
        _sampler(targets=labels)
    assert "labels > 0" in str(info.value) and "border_weight_map(labels)" in str(info.value)
    _, y, w = _sampler(targets=labels > 0, weights=training.border_weight_map(labels)).batch(2)  # the advice works
    assert float(training.weighted_cross_entropy(torch.zeros(2, 2, *y.shape[1:]), y, w)) > 0


def test_class_ids_follow_out_channels() -> None:
    three = training.PatchSampler({**SMALL, "out_channels": 3}, np.ones((80, 80)), np.full((80, 80), 2), patch_size=64)
    assert int(three.sample()[1].max()) == 2
    one = training.PatchSampler({**SMALL, "out_channels": 1}, np.ones((80, 80)), _mask(), patch_size=64)
    assert one.sample()[1].dtype == torch.int64  # binary targets for a one-channel output
    with pytest.raises(ValueError, match=r"class id 2, but class ids must be 0..1 \(a one-channel output\)"):
        training.PatchSampler({**SMALL, "out_channels": 1}, np.ones((80, 80)), np.full((80, 80), 2), patch_size=64)
    with pytest.raises(ValueError, match=r"targets\[1\] holds the negative class id -1"):
        _sampler(images=[np.ones((80, 80))] * 2, targets=[np.zeros((80, 80), int), -np.ones((80, 80), int)])


def test_label_images_get_instance_advice() -> None:
    with pytest.raises(ValueError, match=r"its values are whole numbers: pass labels.astype\(np.int64\)"):
        training.border_weight_map(LABELS3.astype(float))
    with pytest.raises(ValueError, match=r"scipy.ndimage.label\(mask > 0\)\[0\]"):
        training.separate_touching(LABELS3 * 0.5)


# ---------------------------------------------------------------------------------------------
# config lists that read two ways are refused; a single value where a list is expected says how
# to write the list


@pytest.mark.parametrize(
    "fields, per_axis, per_stage",
    [
        (
            {"spatial_dims": 3, "depth": 2, "kernel_size": [1, 3, 3]},
            "[[1, 3, 3], [1, 3, 3], [1, 3, 3]]",
            "[[1, 1, 1], [3, 3, 3], [3, 3, 3]]",
        ),
        ({"spatial_dims": 2, "depth": 1, "kernel_size": [5, 3]}, "[[5, 3], [5, 3]]", "[[5, 5], [3, 3]]"),
        ({"spatial_dims": 2, "depth": 2, "strides": [1, 2]}, "[[1, 2], [1, 2]]", "[[1, 1], [2, 2]]"),
        (
            {"spatial_dims": 3, "depth": 3, "strides": [1, 2, 2], "padding": "same"},
            "[[1, 2, 2], [1, 2, 2], [1, 2, 2]]",
            "[[1, 1, 1], [2, 2, 2], [2, 2, 2]]",
        ),
    ],
)
def test_a_list_that_reads_per_level_and_per_axis_is_refused(
    fields: dict, per_axis: str, per_stage: str, tmp_path
) -> None:
    name = "kernel_size" if "kernel_size" in fields else "strides"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(fields))
    for source in (fields, path):
        with pytest.raises(ConfigError, match="reads two ways") as info:
            load_config(source)
        text = str(info.value)
        assert per_axis in text and per_stage in text and f"{name}=" in text
        assert len(info.value.problems) == 1 and info.value.problems[0].field.startswith(name)
    # both spellings it suggests are accepted and mean what they say
    axis = load_config({**fields, name: yaml.safe_load(per_axis)})
    stage = load_config({**fields, name: yaml.safe_load(per_stage)})
    values = tuple(fields[name])
    if name == "kernel_size":
        assert all(s.kernel == values for s in axis.layout.encoder)
        assert [s.kernel for s in stage.layout.encoder] == [(v,) * len(values) for v in values]
    else:
        assert axis.layout.strides == (values,) * len(values)
        assert stage.layout.strides == tuple((v,) * len(values) for v in values)


@pytest.mark.parametrize(
    "fields",
    [
        {"spatial_dims": 3, "depth": 2, "kernel_size": [3, 3, 3]},  # both readings agree
        {"spatial_dims": 3, "depth": 2, "kernel_size": [1, [3, 3, 3], 3]},  # a nested entry: per level
        {"spatial_dims": 2, "depth": 2, "kernel_size": [1, 3, 5]},  # 3 entries, 2 axes: per level
        {"spatial_dims": 1, "depth": 1, "kernel_size": [1, 3]},
        {"spatial_dims": 2, "depth": 3, "strides": [1, 2, 2]},
    ],
)
def test_a_list_with_one_reading_is_accepted(fields: dict) -> None:
    load_config(fields)


def test_a_per_axis_list_of_the_wrong_length_says_how_to_repeat_it() -> None:
    with pytest.raises(ConfigError, match=r"write \[\[1, 3, 3\], \[1, 3, 3\], \[1, 3, 3\], \[1, 3, 3\], \[1, 3, 3\]\]"):
        load_config({"spatial_dims": 3, "kernel_size": [1, 3, 3]})
    with pytest.raises(ConfigError, match=r"write \[\[1, 2\], \[1, 2\], \[1, 2\], \[1, 2\]\]"):
        load_config({"strides": [1, 2]})


@pytest.mark.parametrize(
    "text, hint",
    [
        ("deep_supervision: 1", "a list is expected: write [1] for a list of one (the decoder levels"),
        ("deep_supervision: '1, 2'", "a list is expected, not a string: write [1, 2]"),
        ("deep_supervision: null", "write [] for none"),
        ("deep_supervision: true", "a list is expected (the decoder levels"),
        ("channels: 64", "write [64] for a list of one (one width per level"),
        ("up_channels: 32\ndepth: 2", "write [32] for a list of one (one width per decoder level"),
        ("kernel_size: '3'", "write 3 (a number, without quotes) or a list"),
        ("kernel_size: 3.0", "write 3 (an integer)"),
        ("strides: '1 2'", "write [1, 2]"),
    ],
)
def test_a_single_value_where_a_list_is_expected_says_how_to_write_it(text: str, hint: str, tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert hint in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_pydantic_says_got_once() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"blocks_per_level": 1.5})
    assert "got 1.5" in str(info.value) or "fractional part: 1.5" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config({"depth": 4.5})
    assert str(info.value).count("got") == 1
