"""Schema features that make nnU-Net's and MONAI's U-Nets expressible: each checked on the built
model's layers and, where a property holds, on its function. Shapes, costs, export and
checkpoints of these options are covered by the property tests (tests/conftest.py draws them)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from unetgen import UNetConfig, build_unet, output_shape, shapes
from unetgen.costs import count_parameters

FIRST = {"down": "first_conv", "padding": "same", "depth": 2, "base_channels": 2, "init": "torch"}


def convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


# ---------------------------------------------------------------------------------------------
# down: first_conv, stem_stride


def test_first_conv_strides_the_first_conv_of_each_lower_level() -> None:
    model = build_unet({**FIRST, "kernel_size": [3, 5, 3], "strides": [[2, 1], 3]}, device="meta")
    assert all(level.down is None for level in [*model.encoder, model.bottleneck])
    firsts = [level.block.body[0] for level in [*model.encoder, model.bottleneck]]
    assert [(c.kernel_size, c.stride, c.padding) for c in firsts] == [
        ((3, 3), (1, 1), (1, 1)),
        ((5, 5), (2, 1), (2, 2)),
        ((3, 3), (3, 3), (1, 1)),
    ]
    assert all(c.stride == (1, 1) for c in convs(model) if c not in firsts)
    pooled = UNetConfig.model_validate({**FIRST, "down": "max"})
    assert count_parameters(UNetConfig.model_validate(FIRST)) == count_parameters(pooled)  # no layer of its own


@pytest.mark.parametrize("block", ["plain", "residual"])
def test_first_conv_samples_from_the_left_edge(block: str) -> None:
    """What holds instead of the flip test: the network equals the same weights with unstrided
    first convs followed by keeping every s-th pixel from the first (nnU-Net's sampling grid)."""
    torch.manual_seed(0)
    model = build_unet({**FIRST, "block": block, "stem_stride": 2, "strides": [[2, 3], 2]}, dtype=torch.float64)
    x = torch.randn(2, 1, 24, 36, dtype=torch.float64)
    want = model.eval()(x)
    assert want.shape[2:] == output_shape(model.config, (24, 36)) == (12, 18)
    strided = [c for c in convs(model) if c.stride != (1, 1)]
    assert len(strided) == (6 if block == "residual" else 3)  # residual: the 1x1 shortcuts stride too
    for conv in strided:
        step, conv.stride = conv.stride, (1, 1)
        conv.register_forward_hook(lambda m, i, y, step=step: y[..., :: step[0], :: step[1]])
    torch.testing.assert_close(model(x), want, rtol=1e-12, atol=1e-12)


def test_stem_stride_output_resolution_and_no_halo() -> None:
    config = UNetConfig.model_validate({**FIRST, "stem_stride": [2, 1], "spatial_dims": 2})
    rule = shapes.axis_rule(config, 0)
    assert (rule.period, rule.out_period, rule.stem) == (8, 4, 2)
    assert output_shape(config, (32, 20)) == (16, 20)
    assert shapes.valid_input_sizes(config, 40) == [8, 16, 24, 32, 40]
    assert shapes.input_size_for_output(config, 9) == 24
    with pytest.raises(ValueError, match="stem_stride=2 puts the output at 1/2"):
        shapes.halo(config)
    y = build_unet(config, device="meta")(torch.empty(1, 1, 32, 20, device="meta"))
    assert tuple(y.shape) == (1, 2, 16, 20)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({**FIRST, "padding": "valid"}, "down='first_conv' needs padding='same'.*shifts the coarser grid"),
        ({"stem_stride": 2}, "stem_stride=2 strides the first conv of level 0, which needs down='first_conv'"),
        ({**FIRST, "stem_stride": [2, 2, 2]}, r"stem_stride=\[2, 2, 2\] has 3 values but spatial_dims=2"),
        ({**FIRST, "stem_stride": 9}, "stem_stride=9 must be between 1 and 8"),
    ],
)
def test_refused_with_the_reason(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        UNetConfig.model_validate(fields)
