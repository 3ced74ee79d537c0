"""unetgen.interop against pytorch-3dunet (`pytorch3dunet` 1.9.6, installed with --no-deps plus
scikit-image, which its model module imports): every layer order its `create_conv` offers that
unetgen can express, `f_maps` as int and list, `conv_upscale`, its up-samplings, its GroupNorm
falling back to one group, its residual nets. Per configuration: equal parameter counts, the
logits in float64 in eval and in training mode (dropout with the same seed), and equal gradients
after one backward. Skipped where pytorch-3dunet is not installed."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from unetgen import build_unet, count_parameters
from unetgen.config import ChannelExcitation, ChannelSpatialExcitation, LeakyReLU
from unetgen.interop import UnsupportedModelError, convert, copy_weights
from unetgen.interop.pytorch3dunet import from_pytorch3dunet
from unetgen.interop.weights import unetgen_layers

M = pytest.importorskip("pytorch3dunet.unet3d.model", reason="pytorch-3dunet is not installed")
BB = pytest.importorskip("pytorch3dunet.unet3d.buildingblocks")

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:dropout2d. Received a 5-D input"),  # the peer's 'D' in 3D
]
TOL = 1e-10

S2, S3 = (2, 2, 16, 16), (1, 1, 8, 8, 8)  # batch, channels, spatial (3 levels: multiples of 4)
SMALL = {"f_maps": 4, "num_levels": 3}
ORDERS = ["gcr", "cr", "crg", "cgr", "cbr", "bcr", "crb", "cl", "ce", "gce", "cgl", "bcl"]
CASES: list[tuple[str, Any, dict[str, Any], tuple[int, ...]]] = [
    ("UNet3D default gcr, GroupNorm 4 -> 1 group on 1-2 channels", M.UNet3D, {**SMALL, "num_groups": 4}, S3),
    *[(f"UNet2D {o}", M.UNet2D, {**SMALL, "in_channels": 2, "layer_order": o, "num_groups": 2}, S2) for o in ORDERS],
    ("UNet2D f_maps list, conv_upscale 1", M.UNet2D, {"f_maps": [3, 5, 6], "conv_upscale": 1, "in_channels": 2,
                                                      "layer_order": "cbr"}, S2),
    ("UNet2D upsample deconv", M.UNet2D, {**SMALL, "in_channels": 2, "upsample": "deconv", "layer_order": "bcr"}, S2),
    ("UNet2D upsample bilinear", M.UNet2D, {**SMALL, "in_channels": 2, "upsample": "bilinear", "layer_order": "cbr"},
     S2),
    ("UNet2D upsample area", M.UNet2D, {**SMALL, "in_channels": 2, "upsample": "area", "layer_order": "cr"}, S2),
    ("UNet3D upsample trilinear, not segmentation", M.UNet3D, {**SMALL, "upsample": "trilinear", "layer_order": "cbr",
                                                               "is_segmentation": False}, S3),
    ("UNet2D gcrd: dropout after the activation", M.UNet2D, {**SMALL, "in_channels": 2, "layer_order": "gcrd",
                                                             "num_groups": 2, "dropout_prob": 0.3}, S2),
    ("UNet2D cbdr: dropout after the norm", M.UNet2D, {**SMALL, "in_channels": 2, "layer_order": "cbdr",
                                                       "dropout_prob": 0.3}, S2),
    ("UNet2D cDbr: channel dropout after the conv", M.UNet2D, {**SMALL, "in_channels": 2, "layer_order": "cDbr",
                                                               "dropout_prob": 0.3}, S2),
    ("UNet3D crD: channel dropout (Dropout2d on 5-D)", M.UNet3D, {**SMALL, "layer_order": "crD",
                                                                  "dropout_prob": 0.3}, S3),
    ("ResidualUNet3D default gcr", M.ResidualUNet3D, {**SMALL, "num_groups": 2}, S3),
    ("ResidualUNet2D cbe", M.ResidualUNet2D, {**SMALL, "layer_order": "cbe"}, (2, 1, 16, 16)),
    ("ResidualUNet2D bcr, upsample deconv (concat)", M.ResidualUNet2D, {**SMALL, "layer_order": "bcr",
                                                                        "upsample": "deconv"}, (2, 1, 16, 16)),
    ("ResidualUNet2D gcrd", M.ResidualUNet2D, {**SMALL, "layer_order": "gcrd", "num_groups": 2}, (2, 1, 16, 16)),
    ("ResidualUNet3D cl: LeakyReLU 0.01, 0.1 after the sum", M.ResidualUNet3D, {**SMALL, "layer_order": "cl"}, S3),
    ("ResidualUNetSE3D default gcr, scSE", M.ResidualUNetSE3D, {**SMALL, "num_groups": 2}, S3),
    ("ResidualUNetSE3D cbl, scSE", M.ResidualUNetSE3D, {**SMALL, "layer_order": "cbl"}, (2, 1, 8, 8, 8)),
    ("ResidualUNetSE3D gcr, se_module cse", M.ResidualUNetSE3D, {**SMALL, "num_groups": 2, "se": "cse"}, S3),
    ("ResidualUNetSE3D gce, se_module sse", M.ResidualUNetSE3D, {**SMALL, "layer_order": "gce", "num_groups": 2,
                                                                 "se": "sse"}, S3),
]  # fmt: skip


def _peer(cls: Any, kwargs: dict[str, Any]) -> nn.Module:
    """`cls(**kwargs)`; with `se` (ResidualUNetSE3D), each block's squeeze-excitation module is the one
    `ResNetBlockSE(..., se_module=se)` builds (ResidualUNetSE3D itself always builds 'scse')."""
    kw = dict(kwargs)
    se = kw.pop("se", None)
    net = cls(**kw)
    if se is not None:
        for level in [*net.encoders, *net.decoders]:
            block = level.basic_module
            c = block.conv3.conv.out_channels
            block.se_module = BB.ResNetBlockSE(c, c, order="cr", se_module=se).se_module
    return net


def _seeded(peer: nn.Module) -> nn.Module:
    """Random weights (variance 1/fan-in) and random norm parameters and running statistics."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in peer.modules():
            for name, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]:
                if not t.is_floating_point():
                    continue
                r = torch.rand(t.shape, generator=g, dtype=t.dtype) - 0.5
                if t.dim() > 1:
                    fan_in = t[0].numel() if not getattr(m, "transposed", False) else t[:, 0].numel()
                    t.copy_(r * (12 / fan_in) ** 0.5)
                else:
                    t.copy_(1 + r if name in ("weight", "running_var") else r)
    return peer


def compare(peer: nn.Module, shape: tuple[int, ...]) -> dict[str, Any]:
    """Convert `peer` (float64) and measure: parameters, max abs difference of the logits in eval
    and in training mode (the same dropout seed), and of every paired parameter's gradient."""
    peer = _seeded(peer).double().eval()
    ours = convert(peer)
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eval_diff = float((peer(x, return_logits=True)[1] - ours(x)).abs().max())
    peer.train(), ours.train()
    weight = torch.randn(ours(x).shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(3)
    theirs = peer(x, return_logits=True)[1]
    torch.manual_seed(3)
    mine = ours(x)
    train_diff = float((theirs - mine).detach().abs().max())
    (theirs * weight).sum().backward()
    (mine * weight).sum().backward()
    grad_diff = 0.0
    for a, b in zip(from_pytorch3dunet(peer, False)[1], unetgen_layers(ours), strict=True):
        for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
            assert na == nb
            grad_diff = max(grad_diff, float((pa.grad - pb.grad).abs().max()))
    params = (sum(p.numel() for p in peer.parameters()), sum(p.numel() for p in ours.parameters()))
    assert params[1] == count_parameters(ours.config)
    return {"config": ours.config, "params": params, "eval": eval_diff, "train": train_diff, "grads": grad_diff}


@pytest.mark.parametrize(("name", "cls", "kwargs", "shape"), CASES, ids=[c[0] for c in CASES])
def test_pytorch3dunet_is_exact(name: str, cls: Any, kwargs: dict[str, Any], shape: tuple[int, ...]) -> None:
    kw = {"in_channels": shape[1], "out_channels": 3, **kwargs}
    r = compare(_peer(cls, kw), shape)
    assert r["params"][0] == r["params"][1]
    assert r["eval"] < TOL and r["train"] < TOL and r["grads"] < TOL, r


def test_pytorch3dunet_options_read() -> None:
    """The config says what the peer is: GroupNorm before the conv with the one-group fallback,
    nearest up-sampling keeping the channels, dropout after every conv at its step."""
    c = compare(M.UNet3D(1, 2, **SMALL, num_groups=4), S3)["config"]
    assert c.norm_position == "before_conv" and c.norm.num_groups == 4 and c.norm.fewer_channels == "one_group"
    assert c.up.type == "nearest" and c.up_channels == "keep" and c.channels[0] == (2, 4)
    c = compare(M.UNet2D(2, 2, **SMALL, layer_order="cbdr", dropout_prob=0.3), S2)["config"]
    assert (c.dropout.placement, c.dropout.after, c.dropout.rate) == ("every_conv", "norm", 0.3)
    c = compare(M.ResidualUNet3D(1, 2, **SMALL, num_groups=2), S3)["config"]
    assert c.block.shortcut == "input_projection" and c.merge.type == "add"
    assert (c.up.kernel_size, c.up.size_by, c.up.bias) == (3, "nearest_resize", False)
    c = convert(M.ResidualUNetSE3D(1, 2, **SMALL, layer_order="cl")).config
    assert c.block.excitation == ChannelSpatialExcitation(reduction=1, combine="max")
    assert c.activation == LeakyReLU(negative_slope=0.01) and c.block.post_activation == LeakyReLU(negative_slope=0.1)
    c = convert(_peer(M.ResidualUNetSE3D, {"in_channels": 1, "out_channels": 2, **SMALL, "se": "cse"})).config
    assert c.block.excitation == ChannelExcitation(reduction=1) and c.block.post_activation is None


def test_copy_weights_pairs_pytorch3dunet() -> None:
    """copy_weights into a unetgen model built from the converted config: the same logits."""
    for cls in (M.ResidualUNet3D, M.ResidualUNetSE3D):
        peer = _seeded(cls(1, 2, **SMALL, num_groups=2)).double().eval()
        target = build_unet(convert(peer).config).double().eval()
        x = torch.randn(S3, dtype=torch.float64)
        copy_weights(peer, target, x)
        with torch.no_grad():
            assert float((peer(x, return_logits=True)[1] - target(x)).abs().max()) < TOL


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (M.ResidualUNetSE3D, {**SMALL, "se": "other"}, "se_module"),
        (M.UNet2D, {**SMALL, "layer_order": "cb"}, "no activation"),
        (M.UNet2D, {**SMALL, "conv_padding": 0, "layer_order": "cr"}, "padding"),
        (M.UNet2D, {**SMALL, "layer_order": "dcr", "dropout_prob": 0.1}, "before every other layer"),
        (M.UNet2D, {**SMALL, "layer_order": "cr", "dropout_prob": (0.1, 0.2)}, "differ|dropout"),
    ],
)
def test_pytorch3dunet_refusals_name_the_reason(cls: Any, kwargs: dict[str, Any], match: str) -> None:
    kw = {"in_channels": 1, "out_channels": 2, **kwargs}
    if kw.get("dropout_prob") is not None and kw.get("layer_order") == "cr":
        kw["layer_order"] = "crd"
    se = kw.pop("se", None)
    net = cls(**kw)
    if se == "other":  # a block whose squeeze-excitation is not one pytorch-3dunet builds
        net.encoders[0].basic_module.se_module = nn.Identity()
    with pytest.raises(UnsupportedModelError, match=match):
        convert(net)
