"""Presets: each builds, runs on its smallest valid input, round-trips through YAML, and has its
file in examples/; the 3D U-Net of Cicek et al. 2016 has the paper's sizes and widths."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from unetgen import PRESETS, build_unet, dump_config, get_preset, load_config
from unetgen.analysis import shapes
from unetgen.config.presets import register

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: threads only add overhead

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_builds_runs_and_round_trips(name: str, tmp_path: Path) -> None:
    config = get_preset(name)
    size = shapes.min_input_shape(config)
    with torch.device("meta"):  # full width: the real module graph, no memory
        y = build_unet(config).eval()(torch.empty(1, config.in_channels, *size))
    assert tuple(y.shape) == (1, config.out_channels, *shapes.output_shape(config, size))
    # real numbers at reduced width (same architecture), in train mode with deep supervision
    narrow = config.model_copy(update={"channels": None, "base_channels": 4, "channel_multiplier": 1})
    model = build_unet(narrow).train()
    outs = model(torch.randn(2, config.in_channels, *size))
    outs = outs if isinstance(outs, list) else [outs]
    want = [shapes.output_shape(config, size), *shapes.aux_shapes(config, size)]
    assert [tuple(o.shape[2:]) for o in outs] == want
    assert all(torch.isfinite(o).all() for o in outs)
    dump_config(config, tmp_path / "p.yaml")
    assert load_config(tmp_path / "p.yaml") == config
    assert load_config(EXAMPLES / f"{name}.yaml") == config
    assert load_config(name) == config


def test_cicek2016() -> None:
    config = get_preset("cicek2016")
    assert shapes.output_shape(config, (132, 132, 116)) == (44, 44, 28)
    lay = config.layout
    assert [s.channels for s in lay.encoder] == [(32, 64), (64, 128), (128, 256), (256, 512)]
    assert lay.up_channels == (128, 256, 512)  # the up-convolutions keep the channels
    assert [s.in_channels for s in lay.decoder] == [64 + 128, 128 + 256, 256 + 512]
    assert [s.channels for s in lay.decoder] == [(64, 64), (128, 128), (256, 256)]


def test_nnunet_anisotropic_sizes() -> None:
    config = get_preset("nnunet-3d-anisotropic")
    assert [shapes.axis_rule(config, a).period for a in range(3)] == [8, 32, 32]
    assert shapes.output_shape(config, (40, 224, 192)) == (40, 224, 192)
    assert shapes.aux_shapes(config, (40, 224, 192))[0] == (40, 112, 96)  # level 1: in-plane stride only
    with pytest.raises(shapes.InputShapeError, match="single element at down4"):
        shapes.output_shape(config, (8, 32, 32))  # instance norm cannot normalise a 1x1x1 map


def test_registry_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match="'cicek2016' is already registered"):
        register("cicek2016", "again", {})
    with pytest.raises(KeyError, match="unknown preset 'nope'; known presets: cicek2016"):
        get_preset("nope")


def test_every_example_loads() -> None:
    files = sorted(EXAMPLES.glob("*.y*ml")) + sorted(EXAMPLES.glob("*.json"))
    assert len(files) >= len(PRESETS)
    for path in files:
        config = load_config(path)
        assert math.prod(shapes.min_input_shape(config)) > 0
