"""The options MONAI's UNet/AttentionUnet and smp's ResNet U-Net need, on their own: the config
rules refuse what cannot be built (naming field, value and fix), and what can is built, counted
and round-tripped through a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from tests.test_export import MONAI_UNET, RESNET_UNET
from unetgen import UNetConfig, build_unet, count_parameters, load_unet, output_shape, save_unet
from unetgen.analysis import ops, shapes

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: threads only add overhead

BASE = {"depth": 2, "base_channels": 2, "padding": "same", "down": "first_conv"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"decoder_convs_per_block": [0, 1], "block": "residual"}, r"decoder level 0 has 0 convs .* plain"),
        ({"resample_bottleneck": False}, r"the last stride is 2; make it 1 \(strides: \[2, 1\]\)"),
        ({"up": {"type": "transpose", "residual_unit": True}, "padding": "valid", "down": "max"},
         r"up.residual_unit adds .* padding='same' \(got 'valid'\)"),
        ({"head": {"type": "transpose", "residual_unit": True}, "padding": "valid", "down": "max"},
         "head.residual_unit"),
        ({"blocks_per_level": [1, 0, 1]}, r"blocks_per_level\[1\]=0 .* only level 0"),
        ({"blocks_per_level": [0, 1, 1]}, r"blocks_per_level\[0\]=0 .* set stem: true"),
        ({"block": {"type": "residual", "bottleneck": True}}, "bottleneck=true has three convs per unit"),
        ({"block": {"type": "residual", "preactivation": True, "last_activation": "before_sum"}}, "pre-activation"),
        ({"decoder_norm": {"type": "group", "num_groups": 3}, "base_channels": 3, "decoder_channels": [4, 6]},
         r"decoder_norm.num_groups=3 does not divide the channel count\(s\) \[\d"),
        ({"merge": {"type": "attention", "psi_norm": True}, "norm": {"type": "group", "num_groups": 2},
          "base_channels": 4}, r"num_groups=2 does not divide the channel count\(s\) \[1\]"),
        ({"head": {"type": "conv", "kernel_size": 2}}, "head.kernel_size=2 must be odd"),
        ({"head": {"type": "upsample", "kernel_size": 4}}, "head.kernel_size=4 must be odd"),
        ({"merge": "add", "channels": [2, 2, 4], "strides": [[2, 2], [1, 1]], "resample_bottleneck": False},
         "adds the bottleneck's output as it is"),
    ],
)  # fmt: skip
def test_rules_name_the_fix(fields: dict[str, Any], message: str) -> None:
    data = {**BASE, **fields}
    if "channels" in fields:
        del data["base_channels"]
    with pytest.raises(ValidationError, match=message):
        UNetConfig.model_validate(data)


@pytest.mark.parametrize("fields", [MONAI_UNET, RESNET_UNET], ids=["monai-unet", "resnet-unet"])
def test_built_counted_and_checkpointed(fields: dict[str, Any], tmp_path: Path) -> None:
    config = UNetConfig.model_validate(fields)
    model = build_unet(config, seed=0).eval()
    assert count_parameters(config) == sum(p.numel() for p in model.parameters())
    assert sum(op.parameters for op in ops.network_ops(config)) == count_parameters(config)
    size = shapes.min_input_shape(config)
    assert output_shape(config, size) == size  # the transposed / up-sampling head: the input's resolution
    assert shapes.halo(config) == (0, 0)
    save_unet(model, tmp_path / "m.safetensors")
    loaded = load_unet(tmp_path / "m.safetensors").eval()
    assert loaded.config == config
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_no_up_sampling_layer_at_a_same_resolution_bottleneck() -> None:
    config = UNetConfig.model_validate(MONAI_UNET)
    model = build_unet(config)
    assert model.decoder[1].up is None and model.bottleneck.down is None
    assert config.layout.up_channels[1] == config.layout.encoder[2].out_channels  # as it is
    assert [len(s.channels) for s in config.layout.decoder] == [0, 0]


def test_stem_alone_carries_the_stem_stride_and_the_pool_takes_the_first_step() -> None:
    config = UNetConfig.model_validate(RESNET_UNET)
    listed = ops.network_ops(config)
    stem = next(op for op in listed if op.part == "stem" and isinstance(op, ops.Conv))
    pool = next(op for op in listed if isinstance(op, ops.Pool))
    assert stem.stride == (2, 2) and stem.kernel == (7, 7)
    assert (pool.kernel, pool.stride, pool.padding) == ((3, 3), (2, 2), (1, 1))
    middle = [op for op in listed if op.module and op.module.startswith("bottleneck.block.0.body.")]
    assert [(op.kernel, op.stride) for op in middle if isinstance(op, ops.Conv)] == [
        ((1, 1), (1, 1)), ((3, 3), (2, 2)), ((1, 1), (1, 1))
    ]  # fmt: skip
