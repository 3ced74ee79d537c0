"""segmentation_models_pytorch's `Unet` with ResNet encoders (resnet18/34/50, no weights) against
unetgen: per encoder, equal parameter counts, float64 outputs in eval and in train mode, and the
gradients of every paired layer after one backward pass.

Opt-in, not in CI: smp's ResNet encoders import torchvision, and the torchvision build on the
registry needs a matching torch (PyPI's torchvision beside the CPU torch 2.13.0 fails on import:
'operator torchvision::nms does not exist'); unetgen never depends on torchvision. Run it in a
separate environment with torch and torchvision that match, e.g.::

    python -m venv --system-site-packages /tmp/smp-env
    /tmp/smp-env/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/smp-env/bin/pip install --no-deps segmentation-models-pytorch==0.6.0 timm
    /tmp/smp-env/bin/python -m pytest -q tests/test_interop_smp.py

Where smp or torchvision does not import, every test here skips."""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_interop_monai_nets import check, compare
from unetgen.interop import UnsupportedModelError, convert

pytestmark = pytest.mark.usefixtures("one_thread")


def _smp() -> Any:
    try:
        import segmentation_models_pytorch as smp
    except Exception as err:  # not installed, or torchvision that does not import beside this torch
        pytest.skip(f"segmentation_models_pytorch does not import here ({type(err).__name__}): see the module doc")
    return smp


CASES = [  # encoder, decoder kwargs, input shape
    ("resnet18", {}, (2, 1, 32, 64)),
    ("resnet34", {"decoder_interpolation": "bilinear"}, (2, 1, 32, 32)),
    ("resnet50", {}, (2, 1, 32, 32)),
    ("resnet18", {"encoder_depth": 3, "decoder_channels": (6, 5, 4)}, (2, 1, 8, 16)),
]


@pytest.mark.parametrize(("encoder", "kwargs", "shape"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_smp_unet(encoder: str, kwargs: dict[str, Any], shape: tuple[int, ...]) -> None:
    smp = _smp()
    kw = {"decoder_channels": (8, 6, 5, 4, 3), **kwargs}
    peer = smp.Unet(encoder, encoder_weights=None, in_channels=1, classes=2, **kw)
    result = compare(peer, shape)
    if kw.get("encoder_depth", 5) < 5:  # smp keeps the unused ResNet stages (their parameters count)
        assert result["params"][1] == result["params"][2] < result["params"][0]
        result["params"] = (result["params"][1], *result["params"][1:])
    check(result)


def test_smp_refusals() -> None:
    smp = _smp()
    with pytest.raises(UnsupportedModelError, match="scse"):
        convert(smp.Unet("resnet18", encoder_weights=None, decoder_attention_type="scse"))
    with pytest.raises(UnsupportedModelError, match="activation"):
        convert(smp.Unet("resnet18", encoder_weights=None, activation="sigmoid"))
    with pytest.raises(UnsupportedModelError, match="decoder_use_norm=False"):
        convert(smp.Unet("resnet18", encoder_weights=None, decoder_use_norm=False))


@pytest.mark.parametrize("encoder", ["resnet18", "resnet50"])
def test_copy_weights_pairs_smp_unet(encoder: str) -> None:
    """copy_weights (pairing by execution order) gives the converted config smp's weights."""
    import torch

    from tests.test_interop_peers import _seeded
    from unetgen import build_unet
    from unetgen.interop import copy_weights

    smp = _smp()
    peer = smp.Unet(encoder, encoder_weights=None, in_channels=1, classes=2, decoder_channels=(8, 6, 5, 4, 3))
    peer = _seeded(peer).double().eval()
    target = build_unet(convert(peer).config).double().eval()
    x = torch.randn(1, 1, 32, 32, dtype=torch.float64)
    copy_weights(peer, target, x)
    with torch.no_grad():
        assert float((peer(x) - target(x)).abs().max()) < 1e-10
