"""Issue 18, part C: the training helpers, the memory planner and the config layer, tried the way
a careless or hostile caller would: configs in every form `build_unet` takes, planner answers for
any image size, every numeric argument checked (type, finiteness, range, length per axis),
targets checked against the classes, and config lists that read two ways refused."""

from __future__ import annotations

import json
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


@pytest.mark.parametrize("helper", ["shapes.output_shape", "costs.count_parameters", "memory.plan_training"])
def test_a_preset_name_is_a_config(helper: str) -> None:
    call = HELPERS[helper]
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


@pytest.mark.parametrize(
    "config, memory_, image",
    [
        ("ronneberger2015", "1GiB", (10**6, 10**6)),
        ("ronneberger2015", "1GiB", (10**9, 10**9)),
        ("ronneberger2015", "64GiB", (10**9, 7)),
        ("cicek2016", "8GiB", (10**9, 10**9, 10**9)),
        ("cicek2016", "8GiB", (10**6, 20, 10**9)),
        ("ronneberger2015", 10**40, (10**30, 10**30)),
    ],
)
def test_plan_any_image_size_in_well_under_a_second(config: str, memory_: Any, image: tuple[int, ...]) -> None:
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
