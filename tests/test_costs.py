"""Analytic parameter and multiply-add counts against the built model and FlopCounterMode."""

from __future__ import annotations

import pytest
import torch
from conftest import config_dicts, valid_shapes
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from unetgen import UNet, UNetConfig, build_unet
from unetgen.analysis.costs import DEFAULT_MAX_PARAMETERS, ParameterBudgetError, count_macs, count_parameters


@st.composite
def wide_configs(draw: st.DrawFn, *, instance_norm: bool = True) -> UNetConfig:
    """conftest's configs plus the options they leave at defaults (attention, keep, per-level
    convs and channels, deep supervision, bias, anisotropic strides and, unless a forward pass
    must run on maps of 1 pixel, which it refuses, instance norm)."""
    d = draw(config_dicts(max_depth=3))
    depth, dims = d["depth"], d["spatial_dims"]
    d["merge"] = draw(st.sampled_from([d["merge"], {"type": "attention", "inter_channels": 2}, "attention"]))
    d["up_channels"] = draw(st.sampled_from([d.get("up_channels", "skip"), "skip", "keep"]))
    if d["merge"] == "add":
        d["up_channels"] = "skip"
    if instance_norm:
        d["norm"] = draw(st.sampled_from([d["norm"], {"type": "instance", "affine": False}, "instance"]))
    d["bias"] = draw(st.sampled_from([None, True, False]))
    if draw(st.booleans()):
        width = st.integers(2 if d["up_channels"] == "half" else 1, 3)
        d["channels"] = [draw(st.lists(width, min_size=1, max_size=1)) * 2 for _ in range(depth + 1)]
        d["convs_per_block"] = 2
        d.pop("base_channels", None), d.pop("channel_multiplier", None)
        if isinstance(d["block"], dict) and d["block"].get("bottleneck"):  # three convs per unit
            d["block"] = "residual"
    d["decoder_convs_per_block"] = draw(st.lists(st.integers(1, 2), min_size=depth, max_size=depth))
    if depth > 1:
        d["deep_supervision"] = draw(st.lists(st.integers(1, depth - 1), max_size=1))
    d["strides"] = [draw(st.lists(st.integers(1, 2), min_size=dims, max_size=dims)) for _ in range(depth)]
    if not d.get("resample_bottleneck", True):  # the bottleneck at the deepest level's resolution: last stride 1
        d["strides"][-1] = [1] * dims
    return UNetConfig.model_validate(d)


def _real_parameters(config: UNetConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in UNet(config).parameters())


def _real_macs(config: UNetConfig, shape: tuple[int, ...], training: bool) -> int:
    """FlopCounterMode's FLOPs / 2 per sample (a batch of 2: norms refuse single values)."""
    with torch.device("meta"):
        model = UNet(config).train(training)
        x = torch.empty(2, config.in_channels, *shape)
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 4


@given(wide_configs())
def test_parameters_equal_the_model(config: UNetConfig) -> None:
    assert count_parameters(config) == _real_parameters(config)


@given(wide_configs(instance_norm=False), st.data(), st.booleans())
def test_macs_equal_flop_counter(config: UNetConfig, data: st.DataObject, training: bool) -> None:
    shape = data.draw(valid_shapes(config, max_steps=2))
    assert count_macs(config, shape, training=training) == _real_macs(config, shape, training)


def test_paper_network() -> None:
    paper = UNetConfig()
    assert count_parameters(paper) == 31_030_658 == _real_parameters(paper)
    macs = count_macs(paper, (572, 572))
    assert macs == _real_macs(paper, (572, 572), False)
    assert round(macs / 1e9, 1) == 150.4
    assert count_parameters(UNetConfig(norm="batch")) == _real_parameters(UNetConfig(norm="batch"))


def test_budget_refuses_big_configs_with_the_count() -> None:
    huge = UNetConfig(spatial_dims=3, base_channels=512, channel_multiplier=2, depth=4, kernel_size=5)
    n = count_parameters(huge)
    assert n > DEFAULT_MAX_PARAMETERS
    with pytest.raises(ParameterBudgetError, match=f"{n:,} parameters"):
        build_unet(huge)
    meta = build_unet(huge, device="meta")  # allocates nothing: no budget
    assert sum(p.numel() for p in meta.parameters()) == n
    small = UNetConfig(base_channels=2, depth=2)
    with pytest.raises(ParameterBudgetError, match="max_parameters=100"):
        build_unet(small, max_parameters=100)
    assert sum(p.numel() for p in build_unet(small, max_parameters=None).parameters()) == count_parameters(small)


def test_summary_shows_true_macs_and_torchinfo(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from unetgen.cli import main

    path = tmp_path / "small.yaml"
    path.write_text("base_channels: 4\ndepth: 2\n")
    assert main(["summary", str(path), "--input-size", "60", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    macs = 2 * count_macs(UNetConfig(base_channels=4, depth=2), (60, 60))
    assert f"Convolution multiply-adds (true, as FlopCounterMode counts them): {macs / 1e9:.2f} G ({macs:,})" in out
    assert "torchinfo's mult-adds above:" in out and "stride**dims" in out
