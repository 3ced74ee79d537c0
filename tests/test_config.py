"""The schema: defaults are the paper, options as types, cross-field rules with named fields."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from unetgen import UNetConfig
from unetgen.config import BatchNorm, Concat, GroupNorm, MaxPool, NoNorm, ReLU, TransposeUp


def test_defaults_are_the_paper() -> None:
    c = UNetConfig()
    assert (c.spatial_dims, c.in_channels, c.out_channels, c.depth, c.padding) == (2, 1, 2, 4, "valid")
    assert [s.out_channels for s in c.layout.encoder] == [64, 128, 256, 512, 1024]
    assert c.layout.encoder[0].channels == (64, 64)
    assert c.layout.up_channels == (64, 128, 256, 512)
    assert (c.norm, c.activation, c.merge, c.down, c.up) == (NoNorm(), ReLU(), Concat(), MaxPool(), TransposeUp())
    assert c.conv_bias and c.init == "paper" and c.dropout.placement == "contracting_end"


def test_bare_strings_and_dicts() -> None:
    assert UNetConfig(norm="batch").norm == BatchNorm()
    assert UNetConfig(norm={"type": "group", "num_groups": 4}).norm == GroupNorm(num_groups=4)
    assert not UNetConfig(norm="batch").conv_bias  # bias follows the norm
    assert UNetConfig(norm="batch", bias=True).conv_bias
    with pytest.raises(ValidationError, match="'grop'"):
        UNetConfig(norm="grop")


def test_frozen_and_hashable() -> None:
    c = UNetConfig()
    with pytest.raises(ValidationError):
        c.depth = 3  # type: ignore[misc]
    assert hash(c) == hash(UNetConfig()) and c == UNetConfig()
    d = c.model_copy(update={"depth": 3})
    assert d.depth == 3 and len(d.layout.encoder) == 4  # the copy is revalidated, its layout fresh


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"chanels": 32}, "chanels"),
        ({"depth": "four"}, "depth"),
        ({"depth": 1000}, "depth"),
        ({"base_channels": 10**9}, "base_channels"),
        ({"base_channels": 1024, "depth": 8}, "exceeds the limit"),
        ({"kernel_size": 4}, "kernel_size=4 must be odd"),
        ({"channels": [8, 16]}, r"channels has 2 entries but needs 5"),
        ({"channels": [8, 16, 32, 64, 128], "base_channels": 32}, "contradicts base_channels=32"),
        ({"channels": [[8, 8, 8], 16, 32, 64, 128]}, r"channels\[0\]=\[8, 8, 8\] has 3 values but level 0 has 2"),
        ({"norm": {"type": "group", "num_groups": 3}}, "norm.num_groups=3 does not divide"),
        ({"merge": "add", "up_channels": "keep"}, "merge='add' needs equal channels"),
        ({"deep_supervision": [4]}, "deep_supervision level 4 does not exist for depth=4"),
        ({"kernel_size": [[3, 3, 3]] * 5}, r"kernel_size\[0\]=\[3, 3, 3\] has 3 values but spatial_dims=2"),
        ({"strides": [2, 2, 2]}, "strides has 3 entries but needs 4"),
        ({"dropout": {"rate": 1.5}}, "dropout.rate"),
        ({"block": {"type": "residual", "preactivation": True, "post_activation": "elu"}}, "post_activation"),
        ({"block": {"type": "plain", "excitation": {"type": "cse", "reduction": 0}}}, "reduction"),
        ({"block": {"type": "plain", "excitation": "se"}}, "cse"),
    ],
)
def test_refused_with_the_field_named(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        UNetConfig.model_validate(fields)


def test_explicit_channels_agree_with_base() -> None:
    c = UNetConfig(channels=[64, 128, 256, 512, 1024], base_channels=64)
    assert c.layout == UNetConfig().layout
    c = UNetConfig(depth=2, channels=[[4, 8], [8, 16], [16, 32]], up_channels="keep")
    assert [s.channels for s in c.layout.encoder] == [(4, 8), (8, 16), (16, 32)]
    assert c.layout.up_channels == (16, 32) and c.layout.decoder[1].in_channels == 32 + 16


def test_per_axis_kernels_and_strides() -> None:
    c = UNetConfig(spatial_dims=3, depth=2, kernel_size=[[1, 3, 3], 3, 3], strides=[[1, 2, 2], 2])
    assert c.layout.encoder[0].kernel == (1, 3, 3) and c.layout.strides == ((1, 2, 2), (2, 2, 2))
