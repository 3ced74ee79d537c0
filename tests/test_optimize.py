"""The inference fast path gives the eager model's outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unetgen import build_unet
from unetgen.analysis import shapes
from unetgen.model.optimize import optimize_for_inference


@pytest.mark.parametrize(
    "config",
    [
        {"norm": "batch", "depth": 2, "base_channels": 4},
        {"norm": "batch", "depth": 2, "base_channels": 4, "block": "residual", "merge": "attention"},
        {"norm": "batch", "depth": 2, "base_channels": 4, "block": {"type": "residual", "preactivation": True}},
        {"norm": "instance", "depth": 2, "base_channels": 4, "padding": "same", "spatial_dims": 3},
        {"norm": "none", "depth": 3, "base_channels": 2, "spatial_dims": 1, "deep_supervision": [1]},
    ],
)
def test_outputs_equal_eager(config: dict) -> None:
    torch.manual_seed(0)
    model = build_unet(config)
    with torch.no_grad():  # non-trivial running statistics, so folding is tested for real
        model.train()
        for _ in range(3):
            cfg = model.config
            size = [
                shapes.axis_rule(cfg, a).min_size + 2 * shapes.axis_rule(cfg, a).period for a in range(cfg.spatial_dims)
            ]
            model(torch.randn(2, cfg.in_channels, *size) * 3 + 1)
    model.eval()
    fast = optimize_for_inference(model)
    x = torch.randn(2, model.config.in_channels, *size)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)
    assert model.training is False and any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == (
        config["norm"] == "batch" and model.config.spatial_dims == 2
    )  # the original keeps its norms


def test_folds_post_activation_norms_only() -> None:
    fast = optimize_for_inference(build_unet({"norm": "batch", "depth": 1, "base_channels": 2}))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    pre = optimize_for_inference(
        build_unet({"norm": "batch", "depth": 1, "base_channels": 2, "block": {"type": "plain", "preactivation": True}})
    )
    assert any(isinstance(m, nn.BatchNorm2d) for m in pre.modules())  # norm before conv: nothing to fold into


def test_input_checks_survive() -> None:
    fast = optimize_for_inference(build_unet({"depth": 2, "base_channels": 2}))
    with pytest.raises(shapes.InputShapeError, match="nearest valid"):
        fast(torch.zeros(1, 1, 50, 50))


def test_the_copy_shares_what_it_does_not_change_and_stays_in_eval_mode() -> None:
    model = build_unet({"depth": 1, "base_channels": 2, "spatial_dims": 1, "norm": "batch"})  # 1D: no relayout
    fast = optimize_for_inference(model)
    original = {p.data_ptr() for p in model.parameters()}
    shared = [p for p in fast.parameters() if p.data_ptr() in original]
    assert shared and len(shared) < len(list(fast.parameters()))  # folded convs have their own weights
    assert all(p.requires_grad for p in model.parameters()) and not any(p.requires_grad for p in fast.parameters())
    fast.train()  # its batch-norm statistics may be the model's own storage: they must never move
    assert not any(m.training for m in fast.modules()) and model.training
