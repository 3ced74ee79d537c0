"""unetgen.interop against the real peers, as installed packages (the `peers` extra): MONAI's
`BasicUNet` and `DynUNet` over MONAI's own unit-test configurations, nnU-Net's `PlainConvUNet`
and `ResidualEncoderUNet` over plans written from nnU-Net's documented defaults. Each converted
model must have the peer's parameter count and compute the peer's outputs (and deep-supervision
heads) in float64 to round-off. Skipped only where the extra is not installed."""

from __future__ import annotations

import itertools
import math
import pydoc
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from unetgen import build_unet, count_parameters
from unetgen.interop import UnsupportedModelError, convert, copy_weights, from_nnunet_plans, to_nnunet_architecture

TOL = 1e-10  # float64 round-off over a few dozen layers


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny maps: threads only add overhead


# ---------------------------------------------------------------------------------------------
# helpers


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _seeded(peer: nn.Module) -> nn.Module:
    """Random weights (variance 1/fan-in, so that outputs stay near 1 and absolute differences
    mean something) and random norm parameters and statistics (peers init those to 1 and 0,
    which would hide a mis-paired norm)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in peer.modules():
            for name, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]:
                if not t.is_floating_point():
                    continue
                r = torch.rand(t.shape, generator=g, dtype=t.dtype) - 0.5
                if t.dim() > 1:  # conv weights: (out, in, *k) or transposed (in, out, *k)
                    fan_in = t[0].numel() if not getattr(m, "transposed", False) else t[:, 0].numel()
                    t.copy_(r * (12 / fan_in) ** 0.5)
                elif name in ("weight", "running_var"):
                    t.copy_(1 + r)
                else:
                    t.copy_(r)
    return peer


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).detach().abs().max())


def _check_eval(peer: nn.Module, shape: tuple[int, ...], **kw: Any) -> tuple[nn.Module, float]:
    peer = _seeded(peer).double().eval()
    ours = convert(peer, **kw)
    assert not ours.training
    assert next(ours.parameters()).dtype == torch.float64
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = _max_diff(peer(x), ours(x))
    assert diff < TOL, diff
    return ours, diff


# ---------------------------------------------------------------------------------------------
# MONAI BasicUNet: the cases of MONAI's tests/networks/nets/test_basic_unet.py, re-stated as
# data; input sizes made multiples of 16 (MONAI replicate-pads odd skips, which unetgen refuses
# as an invalid input rather than approximating)

BASIC_UNET = [
    *[({"spatial_dims": 1, "in_channels": 5, "out_channels": 8, **({"upsample": m} if m else {})}, (2, 5, 32))
      for m in ("pixelshuffle", "nontrainable", "deconv", None)],
    *[({"spatial_dims": 2, "in_channels": 2, "out_channels": 3, "features": (12, 12, 13, 14, 15, 16), "upsample": m},
       (2, 2, 48, 32)) for m in ("pixelshuffle", "nontrainable", "deconv")],
    ({"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "features": (16, 20, 21, 22, 23, 11),
      "upsample": "pixelshuffle"}, (1, 1, 32, 16, 16)),
    ({"spatial_dims": 3, "in_channels": 2, "out_channels": 7, "features": (14, 15, 16, 17, 18, 11),
      "upsample": "deconv"}, (1, 2, 32, 16, 16)),
    ({"spatial_dims": 3, "in_channels": 4, "out_channels": 2, "features": (14, 15, 16, 17, 18, 10),
      "upsample": "nontrainable"}, (1, 4, 16, 32, 16)),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "shape"), BASIC_UNET, ids=lambda v: str(v) if isinstance(v, tuple) else None)
def test_monai_basic_unet(kwargs: dict[str, Any], shape: tuple[int, ...]) -> None:
    nets = pytest.importorskip("monai.networks.nets")
    peer = nets.BasicUNet(**kwargs)
    ours, _ = _check_eval(peer, shape)
    assert _params(ours) == _params(peer) == count_parameters(ours.config)


@pytest.mark.parametrize(
    ("norm", "act"),
    [
        ("batch", "relu"),
        (("batch", {"affine": False}), "relu"),
        (("group", {"num_groups": 2}), "leakyrelu"),
        (None, ("elu", {"alpha": 0.5})),
        ("instance", "prelu"),
    ],
)
def test_monai_basic_unet_norms_and_activations(norm: Any, act: Any) -> None:
    nets = pytest.importorskip("monai.networks.nets")
    peer = nets.BasicUNet(spatial_dims=2, features=(4, 4, 6, 8, 10, 4), norm=norm, act=act, bias=norm is None)
    ours, _ = _check_eval(peer, (2, 1, 32, 16))
    assert _params(ours) == _params(peer)


# ---------------------------------------------------------------------------------------------
# MONAI DynUNet: the cases of MONAI's tests/networks/nets/test_dynunet.py (TEST_CASE_DYNUNET_2D,
# TEST_CASE_DYNUNET_3D, TEST_CASE_DEEP_SUPERVISION), with smaller inputs and, for the deep
# supervision cases, narrower filters


def _dynunet_cases() -> list[tuple[str, dict[str, Any], tuple[int, ...]]]:
    cases = []
    for kernel, strides, cin, res in itertools.product(
        [(3, 3, 3, 1), ((3, 1), 1, (3, 3), (1, 1))], [(1, 1, 1, 1), (2, 2, 2, 1)], [2, 3], [True, False]
    ):
        kw = {
            "spatial_dims": 2, "in_channels": cin, "out_channels": 2, "kernel_size": kernel, "strides": strides,
            "upsample_kernel_size": strides[1:], "norm_name": "batch",
            "act_name": ("leakyrelu", {"inplace": True, "negative_slope": 0.2}), "deep_supervision": False,
            "res_block": res, "dropout": None,
        }  # fmt: skip
        cases.append((f"2d-{kernel}-{strides}-{cin}-{res}", kw, (1, cin, 16, 16)))
    for cout, res in itertools.product([2, 3], [True, False]):
        kw = {
            "spatial_dims": 3, "in_channels": 1, "out_channels": cout, "kernel_size": (3, (1, 1, 3), 3, 3),
            "strides": ((1, 2, 1), 2, 2, 1), "upsample_kernel_size": (2, 2, 1), "filters": (64, 96, 128, 192),
            "norm_name": ("INSTANCE", {"affine": True}), "deep_supervision": True, "res_block": res,
            "dropout": ("alphadropout", {"p": 0.25}),
        }  # fmt: skip
        cases.append((f"3d-{cout}-{res}", kw, (1, 1, 8, 16, 8)))
    for dims, res, num, strides in itertools.product(
        [2, 3], [True, False], [1, 2], [(1, 2, 1, 2, 1), (2, 2, 2, 1), (2, 1, 1, 2, 2)]
    ):
        kw = {
            "spatial_dims": dims, "in_channels": 1, "out_channels": 2, "kernel_size": [3] * len(strides),
            "strides": strides, "upsample_kernel_size": strides[1:], "norm_name": ("group", {"num_groups": 16}),
            "deep_supervision": True, "deep_supr_num": num, "res_block": res,
            "filters": (16, 16, 32, 32, 48)[: len(strides)],  # narrower than the default 32 .. 320
        }  # fmt: skip
        size = 2 * math.prod(strides)  # the smallest input: 2 pixels per axis at the bottleneck
        cases.append((f"ds-{dims}d-{res}-{num}-{strides}", kw, (1, 1, *[size] * dims)))
    return cases


DYNUNET = _dynunet_cases()


@pytest.mark.parametrize(("kwargs", "shape"), [c[1:] for c in DYNUNET], ids=[c[0] for c in DYNUNET])
def test_monai_dynunet(kwargs: dict[str, Any], shape: tuple[int, ...]) -> None:
    nets = pytest.importorskip("monai.networks.nets")
    peer = nets.DynUNet(**kwargs)
    dropout = kwargs.get("dropout") is not None
    if dropout:
        with pytest.raises(UnsupportedModelError, match="dropout"):
            convert(peer)
    ours, _ = _check_eval(peer, shape, ignore_dropout=dropout)
    assert _params(ours) == _params(peer) == count_parameters(ours.config)
    if kwargs["deep_supervision"] and not dropout:  # heads: training mode (group norm: no running stats)
        peer.train(), ours.train()
        x = torch.randn(shape, dtype=torch.float64)
        stacked = peer(x)
        outs = ours(x)
        assert len(outs) == 1 + kwargs.get("deep_supr_num", 1)
        assert _max_diff(stacked[:, 0], outs[0]) < TOL
        for head, aux in zip(peer.heads, outs[1:], strict=True):
            assert _max_diff(head, aux) < TOL


def test_monai_dynunet_prelu_is_refused() -> None:
    nets = pytest.importorskip("monai.networks.nets")
    peer = nets.DynUNet(2, 1, 2, [3, 3, 3], [1, 2, 2], [2, 2], act_name="prelu")
    with pytest.raises(UnsupportedModelError, match="PReLU"):
        convert(peer)


# ---------------------------------------------------------------------------------------------
# nnU-Net: plans written from nnU-Net's documented defaults (instance norm with affine, leaky
# ReLU 0.01, conv bias, 3x3(x3) kernels, 2 convs per stage; ResEnc: 1,3,4,6,6,6 blocks and one
# decoder conv per stage), with `base`/`top` channels shrunk for speed


def _plans(cls: str, kernels: list[list[int]], strides: list[list[int]], base: int, top: int, **extra: Any) -> dict:
    n = len(kernels)
    dims = len(kernels[0])
    kw: dict[str, Any] = {
        "n_stages": n,
        "features_per_stage": [min(base * 2**i, top) for i in range(n)],
        "conv_op": f"torch.nn.modules.conv.Conv{dims}d",
        "kernel_sizes": kernels,
        "strides": strides,
        "n_conv_per_stage_decoder": [2] * (n - 1),
        "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    if cls == "PlainConvUNet":
        kw["n_conv_per_stage"] = [2] * n
    else:
        kw["n_blocks_per_stage"] = [1, 3, 4, 6, 6, 6, 6, 6][:n]
        kw["n_conv_per_stage_decoder"] = [1] * (n - 1)
    kw |= extra
    arch = {
        "network_class_name": f"dynamic_network_architectures.architectures.unet.{cls}",
        "arch_kwargs": kw,
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    return {"configurations": {"c": {"patch_size": [0] * dims, "architecture": arch}}}


ISO3 = ([[3, 3, 3]] * 6, [[1, 1, 1]] + [[2, 2, 2]] * 5)
ANISO3 = ([[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
          [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]])  # fmt: skip
TWO_D = ([[3, 3]] * 7, [[1, 1]] + [[2, 2]] * 6)
RESENC_L = ([[1, 3, 3]] + [[3, 3, 3]] * 6, [[1, 1, 1], [1, 2, 2]] + [[2, 2, 2]] * 5)

NNUNET = [  # name, class, kernels, strides, widest channels; stages and input for the float64 outputs
    ("2d", "PlainConvUNet", *TWO_D, 512, 5, (1, 2, 32, 32)),
    ("3d-isotropic", "PlainConvUNet", *ISO3, 320, 4, (1, 1, 16, 16, 16)),
    ("3d-anisotropic", "PlainConvUNet", *ANISO3, 320, 6, (1, 1, 4, 64, 64)),
    ("resenc-m", "ResidualEncoderUNet", *ISO3, 320, 4, (1, 1, 16, 16, 16)),
    ("resenc-l", "ResidualEncoderUNet", *RESENC_L, 320, 5, (1, 1, 16, 32, 32)),
]


def _build_nnunet(plans: dict, cin: int, cout: int, deep_supervision: bool) -> nn.Module:
    """The network as nnU-Net builds it from an architecture block (classes located by name)."""
    arch = plans["configurations"]["c"]["architecture"]
    kw = dict(arch["arch_kwargs"])
    for key in arch["_kw_requires_import"]:
        if kw[key] is not None:
            kw[key] = pydoc.locate(kw[key])
    cls = pydoc.locate(arch["network_class_name"])
    return cls(input_channels=cin, num_classes=cout, deep_supervision=deep_supervision, **kw)


@pytest.mark.parametrize(
    ("name", "cls", "kernels", "strides", "top", "stages", "shape"), NNUNET, ids=[c[0] for c in NNUNET]
)
def test_nnunet(
    name: str, cls: str, kernels: list, strides: list, top: int, stages: int, shape: tuple[int, ...]
) -> None:
    pytest.importorskip("dynamic_network_architectures.architectures.unet")
    # the documented widths (32 .. top): parameter counts on the meta device, no memory
    full = _plans(cls, kernels, strides, 32, top)
    with torch.device("meta"):
        peer_full = _build_nnunet(full, 1, 3, True)
    config = from_nnunet_plans(full, "c", in_channels=1, out_channels=3)
    assert count_parameters(config) == _params(peer_full)
    assert to_nnunet_architecture(config) == full["configurations"]["c"]["architecture"] | {
        "arch_kwargs": full["configurations"]["c"]["architecture"]["arch_kwargs"]
        | {"nonlin_kwargs": {"inplace": True, "negative_slope": 0.01}}
    }
    # narrow widths and the first `stages` stages (float64 is slow): outputs and every head
    plans = _plans(cls, kernels[:stages], strides[:stages], 2, 8)
    cin = shape[1]
    for ds in (True, False):
        peer = _seeded(_build_nnunet(plans, cin, 3, ds)).double()
        ours = convert(peer.train())
        assert ours.config == from_nnunet_plans(plans, "c", in_channels=cin, out_channels=3, deep_supervision=ds)
        unused = 0 if ds else sum(_params(h) for h in peer.decoder.seg_layers[:-1])  # nnU-Net keeps them
        assert _params(ours) == _params(peer) - unused
        x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            theirs, mine = peer(x), ours(x)  # training mode: instance norm needs no running stats
        theirs, mine = (theirs, mine) if ds else ([theirs], [mine])
        assert len(theirs) == len(mine)
        for a, b in zip(theirs, mine, strict=True):
            assert _max_diff(a, b) < TOL
        # the way back: nnU-Net's own class, built from to_nnunet_architecture, converts to the same config
        back = {"configurations": {"c": {"architecture": to_nnunet_architecture(ours.config)}}}
        assert convert(_build_nnunet(back, cin, 3, ds)).config == ours.config


@pytest.mark.parametrize(("nonlin_first", "affine"), [(False, True), (True, True), (False, False)])
def test_nnunet_batch_norm_relu_eval(nonlin_first: bool, affine: bool) -> None:
    """Batch norm running statistics are carried over (eval mode); nonlin_first = norm after the
    activation; affine=False (no learnable scale and shift) is carried over too."""
    unet = pytest.importorskip("dynamic_network_architectures.architectures.unet")
    peer = unet.PlainConvUNet(
        2, 4, [3, 4, 5, 6], nn.Conv2d, 3, [1, 2, 2, 2], 2, 3, 2, conv_bias=False, norm_op=nn.BatchNorm2d,
        norm_op_kwargs={"eps": 1e-3, "momentum": 0.05, "affine": affine}, nonlin=nn.ReLU,
        nonlin_kwargs={"inplace": True}, nonlin_first=nonlin_first,
    )  # fmt: skip
    ours, _ = _check_eval(peer, (2, 2, 32, 24))
    assert ours.config.norm.affine == affine
    assert ours.config.norm_position == ("after_activation" if nonlin_first else "before_activation")
    assert _params(ours) == _params(peer) - sum(_params(h) for h in peer.decoder.seg_layers[:-1])
    arch = to_nnunet_architecture(ours.config)["arch_kwargs"]
    assert arch.get("nonlin_first", False) == nonlin_first
    assert arch["norm_op_kwargs"].get("affine", True) == affine


def test_nnunet_refusals() -> None:
    unet = pytest.importorskip("dynamic_network_architectures.architectures.unet")
    peer = unet.ResidualEncoderUNet(
        1, 3, [2, 4, 8], nn.Conv2d, 3, [1, 2, 2], [1, 1, 1], 2, [1, 1], norm_op=nn.InstanceNorm2d, nonlin=nn.ReLU,
        dropout_op=nn.Dropout2d, dropout_op_kwargs={"p": 0.2},
    )  # fmt: skip
    with pytest.raises(UnsupportedModelError, match="dropout"):
        convert(peer)
    with pytest.raises(UnsupportedModelError, match="convert\\(\\) does not know"):
        convert(nn.Sequential(nn.Conv2d(1, 1, 3)))


def test_nnunet_strided_first_stage_round_trip() -> None:
    """strides[0] != 1 (output at reduced resolution): stem_stride, both ways."""
    unet = pytest.importorskip("dynamic_network_architectures.architectures.unet")
    peer = unet.PlainConvUNet(
        1, 3, [2, 4, 8], nn.Conv2d, [[3, 3], [3, 3], [1, 3]], [[1, 2], [2, 2], [2, 2]], 2, 2, 1,
        conv_bias=True, norm_op=nn.InstanceNorm2d, norm_op_kwargs={"affine": True}, nonlin=nn.ReLU,
    )  # fmt: skip
    ours, _ = _check_eval(peer, (1, 1, 16, 32))
    arch = to_nnunet_architecture(ours.config)["arch_kwargs"]
    assert arch["strides"] == [[1, 2], [2, 2], [2, 2]] and arch["kernel_sizes"] == [[3, 3], [3, 3], [1, 3]]


# ---------------------------------------------------------------------------------------------
# every config nnU-Net can build: config -> to_nnunet_architecture -> nnU-Net's own class ->
# convert -> the same config and the same function


@st.composite
def _nnunet_configs(draw: st.DrawFn) -> dict[str, Any]:
    dims = draw(st.sampled_from([2, 3]))
    depth = draw(st.integers(1, 3))
    axes = st.lists(st.sampled_from([1, 3]), min_size=dims, max_size=dims)
    steps = st.lists(st.sampled_from([1, 2]), min_size=dims, max_size=dims)
    residual = draw(st.booleans())
    norm = draw(st.sampled_from(["none", "batch", {"type": "instance", "affine": True}]))
    bias = draw(st.booleans())
    config: dict[str, Any] = {
        "spatial_dims": dims,
        "in_channels": draw(st.integers(1, 2)),
        "out_channels": draw(st.integers(1, 3)),
        "depth": depth,
        "channels": draw(st.lists(st.integers(1, 4), min_size=depth + 1, max_size=depth + 1)),
        "kernel_size": [draw(axes) for _ in range(depth + 1)],
        "strides": [draw(steps) for _ in range(depth)],
        "stem_stride": draw(steps),
        "padding": "same",
        "down": "first_conv",
        "up": {"type": "transpose", "bias": bias},
        "merge": {"type": "concat", "order": "up_first"},
        "bias": bias,
        "norm": norm,
        "activation": draw(
            st.sampled_from(["relu", {"type": "leaky_relu", "negative_slope": 0.2}, "elu", "gelu", "prelu"])
        ),
        "decoder_convs_per_block": draw(st.lists(st.integers(1, 2), min_size=depth, max_size=depth)),
        "deep_supervision": list(range(1, depth)) if draw(st.booleans()) else [],
        "dropout": {"rate": 0.0},
        "init": "torch",
    }
    if config["stem_stride"] == [1] * dims:
        del config["stem_stride"]  # the default, spelled 1
    if residual:
        blocks = draw(st.lists(st.integers(1, 2), min_size=depth + 1, max_size=depth + 1))
        config |= {"stem": True, "blocks_per_level": blocks, "convs_per_block": 2, "decoder_block": "plain"}
        config["block"] = {"type": "residual", "shortcut": "resnet_d"}
    else:
        config["convs_per_block"] = draw(st.lists(st.integers(1, 2), min_size=depth + 1, max_size=depth + 1))
        if norm != "none" and draw(st.booleans()):
            config["norm_position"] = "after_activation"
    return config


@given(data=_nnunet_configs())
def test_every_nnunet_config_round_trips_through_nnunet(data: dict[str, Any]) -> None:
    pytest.importorskip("dynamic_network_architectures.architectures.unet")
    from unetgen import UNetConfig
    from unetgen.analysis import shapes

    config = UNetConfig.model_validate(data)
    plans = {"configurations": {"c": {"architecture": to_nnunet_architecture(config)}}}
    ds = bool(config.deep_supervision)
    peer = _seeded(_build_nnunet(plans, config.in_channels, config.out_channels, ds)).double().train()
    ours = convert(peer)
    assert ours.config == config
    cin, cout = config.in_channels, config.out_channels
    assert from_nnunet_plans(plans, "c", in_channels=cin, out_channels=cout, deep_supervision=ds) == config
    shape = tuple(2 * s for s in shapes.min_input_shape(config))  # batch norm: more than one value
    x = torch.randn(2, config.in_channels, *shape, dtype=torch.float64)
    with torch.no_grad():
        theirs, mine = peer(x), ours(x)
    theirs, mine = (theirs, mine) if ds else ([theirs], [mine])
    for a, b in zip(theirs, mine, strict=True):
        assert _max_diff(a, b) < TOL


# ---------------------------------------------------------------------------------------------
# random MONAI models: converted exactly, or refused with the documented reason, never approximated


def _compare(peer: nn.Module, ours: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        assert _max_diff(peer.eval()(x), ours.eval()(x)) < TOL


@given(
    dims=st.integers(1, 3),
    features=st.lists(st.integers(2, 6), min_size=6, max_size=6),  # 1 // 2 == 0: MONAI's net breaks
    upsample=st.sampled_from(["deconv", "nontrainable", "pixelshuffle"]),
    norm=st.sampled_from(
        ["batch", ("batch", {"affine": False}), ("instance", {"affine": True}), ("group", {"num_groups": 1}), None]
    ),
    act=st.sampled_from(["relu", ("leakyrelu", {"negative_slope": 0.3}), "prelu", "elu"]),
    bias=st.booleans(),
)
def test_random_basic_unets(dims: int, features: list[int], upsample: str, norm: Any, act: Any, bias: bool) -> None:
    nets = pytest.importorskip("monai.networks.nets")
    peer = _seeded(
        nets.BasicUNet(spatial_dims=dims, in_channels=2, out_channels=3, features=features, act=act, norm=norm,
                       bias=bias, upsample=upsample)
    ).double()  # fmt: skip
    ours = convert(peer)
    assert _params(ours) == _params(peer)
    _compare(peer, ours, torch.randn(2, 2, 32, *[16] * (dims - 1), dtype=torch.float64))


@st.composite
def _dynunet_kwargs(draw: st.DrawFn) -> dict[str, Any]:
    dims = draw(st.integers(2, 3))
    n = draw(st.integers(3, 5))

    def per_axis(values: list[int]) -> st.SearchStrategy[Any]:
        return st.sampled_from(values) | st.lists(st.sampled_from(values), min_size=dims, max_size=dims).map(tuple)

    strides = [draw(per_axis([1, 2])) for _ in range(n)]
    kw = {
        "spatial_dims": dims, "in_channels": draw(st.integers(1, 2)), "out_channels": draw(st.integers(1, 3)),
        "kernel_size": [draw(per_axis([1, 3])) for _ in range(n)], "strides": strides,
        "upsample_kernel_size": strides[1:], "filters": draw(st.lists(st.integers(1, 5), min_size=n, max_size=n)),
        "norm_name": draw(st.sampled_from(["batch", ("instance", {"affine": True}), "instance"])),
        "act_name": draw(st.sampled_from(["relu", ("leakyrelu", {"negative_slope": 0.1}), "elu"])),
        "res_block": draw(st.booleans()), "trans_bias": draw(st.booleans()),
    }  # fmt: skip
    if draw(st.booleans()):
        kw |= {"deep_supervision": True, "deep_supr_num": draw(st.integers(1, n - 2))}
    return kw


@given(kw=_dynunet_kwargs())
def test_random_dynunets(kw: dict[str, Any]) -> None:
    nets = pytest.importorskip("monai.networks.nets")
    from unetgen.analysis import shapes

    peer = _seeded(nets.DynUNet(**kw)).double()
    ours = convert(peer)
    assert _params(ours) == _params(peer)
    x = torch.randn(2, kw["in_channels"], *[2 * s for s in shapes.min_input_shape(ours.config)], dtype=torch.float64)
    _compare(peer, ours, x)
    if kw.get("deep_supervision"):
        peer.train(), ours.train()
        with torch.no_grad():
            stacked, outs = peer(x), ours(x)
        assert _max_diff(stacked[:, 0], outs[0]) < TOL
        for head, aux in zip(peer.heads, outs[1:], strict=True):
            assert _max_diff(head, aux) < TOL


def test_nnunet_residual_unet() -> None:
    """ResidualUNet: residual encoder and residual decoder (one BasicBlockD per decoder stage)."""
    unet = pytest.importorskip("dynamic_network_architectures.architectures.unet")

    def build(decoder_units: int) -> nn.Module:
        return unet.ResidualUNet(
            1, 4, [2, 4, 6, 8], nn.Conv3d, 3, [1, 2, 2, 2], [1, 2, 2, 2], 3, decoder_units, conv_bias=True,
            norm_op=nn.InstanceNorm3d, norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU, deep_supervision=True,
        )  # fmt: skip

    peer = _seeded(build(1)).double().train()
    ours = convert(peer)
    assert ours.config.decoder_block_type.type == "residual" and _params(ours) == _params(peer)
    x = torch.randn(1, 1, 16, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        for a, b in zip(peer(x), ours(x), strict=True):
            assert _max_diff(a, b) < TOL
    with pytest.raises(UnsupportedModelError, match="2 residual units"):
        convert(build(2))


# ---------------------------------------------------------------------------------------------
# copy_weights pairs what convert pairs


@pytest.mark.parametrize("cls", ["ResidualEncoderUNet", "PlainConvUNet"])
def test_copy_weights_pairs_nnunet_as_convert_does(cls: str) -> None:
    """nnU-Net's residual units run their shortcut before their convs, and its deep-supervision
    heads run in eval mode: copy_weights pairs them as convert does (the converter's order). A
    target without the heads is refused at the first position where the two part."""
    unet = pytest.importorskip("dynamic_network_architectures.architectures.unet")
    common = {"conv_bias": True, "norm_op": nn.InstanceNorm2d, "norm_op_kwargs": {"affine": True},
              "nonlin": nn.LeakyReLU, "deep_supervision": True}  # fmt: skip
    if cls == "ResidualEncoderUNet":
        peer = unet.ResidualEncoderUNet(1, 3, [2, 4, 6], nn.Conv2d, 3, [1, 2, 2], [1, 2, 2], 3, [1, 1], **common)
    else:
        peer = unet.PlainConvUNet(1, 3, [2, 4, 6], nn.Conv2d, 3, [1, 2, 2], 2, 3, 2, **common)
    peer = _seeded(peer).double()
    config = convert(peer).config
    target = build_unet(config).double()
    x = torch.randn(1, 1, 16, 16, dtype=torch.float64)
    copy_weights(peer, target, x)
    peer.train(), target.train()
    with torch.no_grad():
        for a, b in zip(peer(x), target(x), strict=True):  # the output and every head
            assert _max_diff(a, b) < TOL
    with pytest.raises(UnsupportedModelError, match=r"part at layer \d+: cannot pair source layer 'decoder\.seg"):
        copy_weights(peer, build_unet(config.model_copy(update={"deep_supervision": []})).double(), x)


# ---------------------------------------------------------------------------------------------
# dropout after every conv (nnU-Net's dropout_op, MONAI's dropout): carried, the same in training


def _train_equal(peer: nn.Module, ours: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """Max abs difference of the (main) outputs in training mode with the same dropout seed, and
    of the input gradients after one backward."""
    peer.train(), ours.train()
    outs = []
    for m in (peer, ours):
        xi = x.clone().requires_grad_(True)
        torch.manual_seed(5)
        out = m(xi)
        out = out[0] if isinstance(out, (list, tuple)) else out
        out.sum().backward()
        outs.append((out.detach(), xi.grad))
    return _max_diff(outs[0][0], outs[1][0]), _max_diff(outs[0][1], outs[1][1])


@pytest.mark.parametrize("op", [nn.Dropout2d, nn.Dropout])
def test_nnunet_dropout_is_carried(op: type) -> None:
    unet = pytest.importorskip("dynamic_network_architectures.architectures.unet")
    peer = unet.PlainConvUNet(
        1, 3, [2, 4, 8], nn.Conv2d, 3, [1, 2, 2], 2, 2, 2, norm_op=nn.InstanceNorm2d,
        norm_op_kwargs={"affine": True}, nonlin=nn.ReLU, dropout_op=op, dropout_op_kwargs={"p": 0.2},
    )  # fmt: skip
    ours, _ = _check_eval(peer, (2, 1, 16, 16))
    d = ours.config.dropout
    assert (d.placement, d.after, d.rate, d.spatial) == ("every_conv", "conv", 0.2, op is nn.Dropout2d)
    assert max(_train_equal(peer, ours, torch.randn(2, 1, 16, 16, dtype=torch.float64))) < TOL
    assert convert(peer, ignore_dropout=True).config.dropout.rate == 0


@pytest.mark.parametrize("order", ["NDA", "DNA", "NAD"])
def test_monai_basic_unet_dropout_is_carried(order: str) -> None:
    nets = pytest.importorskip("monai.networks.nets")
    peer = nets.BasicUNet(spatial_dims=2, features=(4, 4, 6, 8, 10, 4), norm="batch", dropout=0.25)
    for m in peer.modules():  # MONAI's ADN order, as `adn_ordering` would build it
        if type(m).__name__ == "ADN":
            children = dict(m.named_children())
            for name in list(children):
                delattr(m, name)
            for name in order:
                m.add_module(name, children[name])
    ours, _ = _check_eval(peer, (2, 1, 32, 16))
    after = {"NDA": "norm", "DNA": "conv", "NAD": "activation"}[order]
    assert (ours.config.dropout.placement, ours.config.dropout.after) == ("every_conv", after)
    assert max(_train_equal(peer, ours, torch.randn(2, 1, 32, 16, dtype=torch.float64))) < TOL
