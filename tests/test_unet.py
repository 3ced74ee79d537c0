"""The built network: the paper's exact model, input checks, init, dropout, deep supervision."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from unetgen import InputShapeError, UNetConfig, build_unet, output_shape

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: threads only add overhead

PAPER_PARAMETERS = 31_030_658  # 1 -> 2 channels, valid padding, no norm, conv bias on


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_paper_network_meta() -> None:
    model = build_unet({}, device="meta")
    assert n_params(model) == PAPER_PARAMETERS
    y = model(torch.empty(1, 1, 572, 572, device="meta"))
    assert tuple(y.shape) == (1, 2, 388, 388)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sum(m.kernel_size == (3, 3) for m in convs) == 18 and all(m.padding == (0, 0) for m in convs)
    assert all(m.bias is not None for m in convs)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    ups = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.stride) for m in ups][-1] == (1024, 512, (2, 2), (2, 2))


def test_batchnorm_variant() -> None:
    model = build_unet({"norm": "batch"}, device="meta")
    convs3 = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert all(m.bias is None for m in convs3)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 18
    bn = 2 * sum(m.out_channels for m in convs3)
    assert n_params(model) == PAPER_PARAMETERS - sum(m.out_channels for m in convs3) + bn


def test_dropout_at_end_of_contracting_path() -> None:
    model = build_unet({"depth": 2, "base_channels": 2}, device="meta")
    drops = [name for name, m in model.named_modules() if isinstance(m, nn.Dropout)]
    assert drops == ["encoder.1.block.dropout", "bottleneck.block.dropout"]
    assert not [m for m in build_unet({"dropout": {"rate": 0}}, device="meta").modules() if isinstance(m, nn.Dropout)]


def test_paper_init_std() -> None:
    torch.manual_seed(0)
    model = build_unet({"depth": 2, "base_channels": 32, "channel_multiplier": 2})
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.in_channels >= 32:
            want = math.sqrt(2 / (m.in_channels * 9))
            assert abs(m.weight.std().item() / want - 1) < 0.05
            assert torch.all(m.bias == 0)
        if isinstance(m, nn.ConvTranspose2d):  # each output pixel sees in_channels inputs
            assert abs(m.weight.std().item() / math.sqrt(2 / m.in_channels) - 1) < 0.1


def test_input_errors() -> None:
    model = build_unet({"depth": 2, "base_channels": 2})
    with pytest.raises(InputShapeError, match=r"nearest valid: 48, 52"):
        model(torch.zeros(1, 1, 50, 52))
    with pytest.raises(InputShapeError, match=r"has 3 dims but spatial_dims=2 needs \(N, C, H, W\)"):
        model(torch.zeros(1, 52, 52))
    with pytest.raises(ValueError, match="has 3 channels but in_channels=1"):
        model(torch.zeros(1, 3, 52, 52))


def test_deep_supervision_outputs() -> None:
    cfg = UNetConfig(depth=3, base_channels=2, channel_multiplier=1, deep_supervision=[1, 2], padding="same")
    model = build_unet(cfg)
    x = torch.randn(2, 1, 32, 32)
    outs = model.train()(x)
    assert [tuple(o.shape) for o in outs] == [(2, 2, 32, 32), (2, 2, 16, 16), (2, 2, 8, 8)]
    assert tuple(model.eval()(x).shape) == (2, 2, 32, 32)


def test_device_dtype_and_checkpointing() -> None:
    cfg = {"depth": 2, "base_channels": 2, "checkpointing": True, "padding": "same", "dropout": {"rate": 0}}
    model = build_unet({**cfg, "norm": {"type": "group", "num_groups": 1}}, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    plain = build_unet({**cfg, "norm": {"type": "group", "num_groups": 1}, "checkpointing": False}, dtype=torch.float64)
    plain.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    model.train()(x).sum().backward()
    plain.train()(x).sum().backward()
    for a, b in zip(model.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)
    assert output_shape(model.config, (16, 16)) == (16, 16)


@pytest.mark.parametrize("norm", ["instance", "layer", "batch", {"type": "group", "num_groups": 2}])
@pytest.mark.parametrize("block", ["plain", "residual", {"type": "plain", "preactivation": True}])
def test_norms_and_blocks_train_step(norm, block) -> None:
    cfg = {"in_channels": 2, "depth": 2, "base_channels": 4, "norm": norm, "block": block, "merge": "attention"}
    model = build_unet(cfg)
    x = torch.randn(2, 2, 60, 60)
    y = model.train()(x)
    y.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
