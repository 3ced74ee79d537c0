"""MONAI's `UNet` (num_res_units 0, 1, 2; strides with 1) and `AttentionUnet` against unetgen, as
installed packages (the `peers` extra): per configuration, equal parameter counts, float64 outputs
in eval and in train mode, and the gradients of every paired layer after one backward pass. The
measured numbers are in docs/interop.md."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from tests.test_interop_peers import _params, _seeded
from unetgen import count_parameters
from unetgen.interop import UnsupportedModelError, convert, copy_weights
from unetgen.interop.registry import find_converter
from unetgen.interop.weights import unetgen_layers

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-10


def compare(peer: nn.Module, shape: tuple[int, ...], **kw: Any) -> dict[str, Any]:
    """Convert `peer` (seeded, float64) and measure: parameters, max abs difference in eval and
    in train mode, and whether the gradients of every paired layer agree after one backward."""
    peer = _seeded(peer).double().eval()
    ours = convert(peer, **kw)
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eval_diff = float((peer(x) - ours(x)).abs().max())
    peer.train(), ours.train()
    a, b = peer(x), ours(x)
    train_diff = float((a - b).detach().abs().max())
    weight = torch.randn(a.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (a * weight).sum().backward()
    (b * weight).sum().backward()
    theirs = find_converter(peer)(peer, kw.get("ignore_dropout", False))[1]
    grads = 0.0
    for s, t in zip(theirs, unetgen_layers(ours), strict=True):
        for (name, p), q in zip(s.named_parameters(), t.parameters(), strict=True):
            assert p.grad is not None and q.grad is not None, name
            grads = max(grads, float((p.grad - q.grad).abs().max()))
    return {"params": (_params(peer), _params(ours), count_parameters(ours.config)), "eval": eval_diff,
            "train": train_diff, "grads": grads, "model": ours}  # fmt: skip


def check(result: dict[str, Any]) -> None:
    peer, ours, counted = result["params"]
    assert peer == ours == counted
    assert result["eval"] < TOL and result["train"] < TOL and result["grads"] < TOL, result


UNET = [  # id, kwargs, input shape
    ("2d-res0", {"spatial_dims": 2, "channels": (2, 3, 4), "strides": (2, 2)}, (2, 1, 8, 8)),
    ("2d-res2-stride1", {"spatial_dims": 2, "channels": (2, 3, 4, 5), "strides": (2, 1, 2), "num_res_units": 2},
     (2, 1, 8, 12)),
    ("2d-res1-batch-relu-NA-k5", {"spatial_dims": 2, "channels": (3, 4), "strides": (2,), "num_res_units": 1,
     "norm": "batch", "act": "relu", "kernel_size": 5, "up_kernel_size": 1, "bias": False, "adn_ordering": "AN"},
     (2, 1, 6, 4)),
    ("3d-res2", {"spatial_dims": 3, "channels": (2, 2, 3), "strides": ((1, 2, 2), 2), "num_res_units": 2,
     "norm": ("group", {"num_groups": 1})}, (1, 1, 4, 8, 8)),
    ("1d-res0-stride1-first", {"spatial_dims": 1, "channels": (2, 3, 4), "strides": (1, 2), "act": "elu"},
     (2, 1, 8)),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "shape"), [c[1:] for c in UNET], ids=[c[0] for c in UNET])
def test_monai_unet(kwargs: dict[str, Any], shape: tuple[int, ...]) -> None:
    nets = pytest.importorskip("monai.networks.nets")
    check(compare(nets.UNet(in_channels=1, out_channels=2, **kwargs), shape))


ATTENTION = [
    ("2d", {"spatial_dims": 2, "channels": (2, 4, 6), "strides": (2, 2)}, (2, 1, 8, 8)),
    ("2d-stride1-upk1", {"spatial_dims": 2, "channels": (2, 3, 4), "strides": (1, 2), "up_kernel_size": 1},
     (2, 1, 4, 6)),
    ("3d", {"spatial_dims": 3, "channels": (2, 4), "strides": ((1, 2, 2),)}, (2, 1, 2, 4, 4)),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "shape"), [c[1:] for c in ATTENTION], ids=[c[0] for c in ATTENTION])
def test_monai_attention_unet(kwargs: dict[str, Any], shape: tuple[int, ...]) -> None:
    nets = pytest.importorskip("monai.networks.nets")
    check(compare(nets.AttentionUnet(in_channels=1, out_channels=2, **kwargs), shape))


def test_monai_dropout_is_refused_or_ignored() -> None:
    nets = pytest.importorskip("monai.networks.nets")
    peer = nets.UNet(2, 1, 2, channels=(2, 3), strides=(2,), dropout=0.2)
    with pytest.raises(UnsupportedModelError, match="Dropout"):
        convert(peer)
    ours = convert(_seeded(peer).double().eval(), ignore_dropout=True)
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        assert float((peer(x) - ours(x)).abs().max()) < TOL
    attention = nets.AttentionUnet(2, 1, 2, channels=(2, 4), strides=(2,), dropout=0.1)
    with pytest.raises(UnsupportedModelError, match="Dropout"):
        convert(attention)


def test_monai_checkpoint_unet_and_anisotropic_up_kernel_are_refused() -> None:
    nets = pytest.importorskip("monai.networks.nets")
    with pytest.raises(UnsupportedModelError, match="checkpointing: true"):
        convert(pytest.importorskip("monai.networks.nets.unet").CheckpointUNet(2, 1, 2, channels=(2, 3), strides=(2,)))
    with pytest.raises(UnsupportedModelError, match="up_kernel_size"):
        convert(nets.UNet(2, 1, 2, channels=(2, 3), strides=(2,), up_kernel_size=(3, 1)))
    with pytest.raises(UnsupportedModelError, match="merge convs are 3x3"):
        convert(nets.AttentionUnet(2, 1, 2, channels=(2, 3), strides=(2,), kernel_size=5))


@pytest.mark.parametrize("which", ["UNet", "AttentionUnet"])
def test_copy_weights_pairs_monai_nets(which: str) -> None:
    """copy_weights (pairing by execution order) gives the converted config MONAI's weights."""
    nets = pytest.importorskip("monai.networks.nets")
    peer = _seeded(getattr(nets, which)(2, 1, 2, channels=(2, 3, 4), strides=(2, 2))).double().eval()
    config = convert(peer).config
    from unetgen import build_unet

    target = build_unet(config).double().eval()
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    copy_weights(peer, target, x)
    with torch.no_grad():
        assert float((peer(x) - target(x)).abs().max()) < TOL
