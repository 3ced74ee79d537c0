"""Schema features that make nnU-Net's and MONAI's U-Nets expressible: each checked on the built
model's layers and, where a property holds, on its function. Shapes, costs, export and
checkpoints of these options are covered by the property tests (tests/conftest.py draws them)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from unetgen import UNetConfig, build_unet, output_shape
from unetgen.analysis import shapes
from unetgen.analysis.costs import count_parameters
from unetgen.model import layers

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: threads only add overhead

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
    assert list(shapes.valid_input_sizes(config, 40)) == [8, 16, 24, 32, 40]
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


# ---------------------------------------------------------------------------------------------
# residual stages: blocks_per_level, shortcut, stem, decoder_block

RESENC = {
    **FIRST,
    "base_channels": 4,
    "blocks_per_level": [1, 3, 2],
    "block": {"type": "residual", "shortcut": "resnet_d"},
    "decoder_block": "plain",
    "decoder_convs_per_block": 1,
    "stem": True,
    "norm": "instance",
    "bias": True,
}


def test_residual_encoder_layers() -> None:
    model = build_unet(RESENC, device="meta")
    stem = model.encoder[0].stem
    assert [type(m).__name__ for m in stem] == ["Conv2d", "InstanceNorm2d", "ReLU"]
    assert (stem[0].in_channels, stem[0].out_channels, stem[0].kernel_size) == (1, 4, (3, 3))
    level1 = model.encoder[1].block
    assert isinstance(level1, nn.Sequential) and len(level1) == 3
    first, *rest = level1
    assert [type(m).__name__ for m in first.shortcut] == ["AvgPool2d", "Conv2d", "InstanceNorm2d"]
    pool, conv = first.shortcut[0], first.shortcut[1]
    assert pool.ceil_mode and pool.kernel_size == pool.stride == (2, 2)
    assert (conv.in_channels, conv.out_channels, conv.stride, conv.bias) == (4, 8, (1, 1), None)
    assert first.body[0].stride == (2, 2) and all(u.body[0].stride == (1, 1) for u in rest)
    assert all(len(u.shortcut) == 0 for u in rest)  # identity
    assert [len(level.block.body) for level in model.decoder] == [3, 3]  # plain: conv, norm, act
    assert not any(level.block.residual for level in model.decoder)
    assert len(model.encoder[0].block.shortcut) == 0  # level 0: no stride, 4 -> 4 channels: identity


def test_resnet_d_unit_computes_pool_conv_norm_shortcut() -> None:
    torch.manual_seed(0)
    config = {**RESENC, "norm": "batch", "blocks_per_level": 1, "stem": False, "in_channels": 4}
    model = build_unet(config, dtype=torch.float64).eval()
    unit = model.encoder[1].block
    for m in unit.modules():  # non-trivial norm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 2)
    x = torch.randn(2, 4, 6, 10, dtype=torch.float64)
    conv1, bn1, _, conv2, bn2 = unit.body
    body = bn2(conv2(torch.relu(bn1(conv1(x)))))
    _, short_conv, short_bn = unit.shortcut
    identity = short_bn(torch.nn.functional.conv2d(torch.nn.functional.avg_pool2d(x, 2), short_conv.weight))
    torch.testing.assert_close(unit(x), torch.relu(body + identity))
    assert conv1.stride == (2, 2) and conv1.padding == (1, 1)


def test_projection_shortcut_strides_even_when_channels_stay() -> None:
    model = build_unet({**FIRST, "channel_multiplier": 1, "block": "residual", "norm": "batch"}, device="meta")
    shortcut = model.encoder[1].block.shortcut
    assert [type(m).__name__ for m in shortcut] == ["Conv2d", "BatchNorm2d"]
    assert shortcut[0].stride == (2, 2) and shortcut[0].kernel_size == (1, 1)
    assert len(model.encoder[0].block.shortcut) == 2  # level 0: 1 -> 2 channels, no stride
    assert model.encoder[0].block.shortcut[0].stride == (1, 1)


def test_real_nnunet_stage_counts_fit_the_limits() -> None:
    config = UNetConfig(
        spatial_dims=3, depth=6, channels=[32, 64, 128, 256, 320, 320, 320], blocks_per_level=[1, 3, 4, 6, 6, 6, 6],
        block={"type": "residual", "shortcut": "resnet_d"}, decoder_block="plain", stem=True, down="first_conv",
        padding="same", norm="instance", decoder_convs_per_block=1,
    )  # fmt: skip
    assert [s.units for s in config.layout.encoder] == [1, 3, 4, 6, 6, 6, 6]
    assert count_parameters(config) == sum(p.numel() for p in build_unet(config, device="meta").parameters())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"blocks_per_level": [1, 2]}, r"blocks_per_level has 2 entries but needs 5"),
        ({"blocks_per_level": 17}, "blocks_per_level"),
        ({"convs_per_block": 17}, "convs_per_block"),
        ({"block": {"type": "residual", "shortcut": "pool"}}, "shortcut"),
        (  # the pre-activation encoder normalises the 1-channel input; the decoder block does not matter
            {
                "norm": {"type": "group", "num_groups": 2},
                "block": {"type": "plain", "preactivation": True},
                "decoder_block": "plain",
            },
            r"norm.num_groups=2 does not divide the channel count\(s\) \[1\]",
        ),
    ],
)
def test_stage_options_refused_with_the_field(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        UNetConfig.model_validate(fields)


def test_decoder_block_alone_can_be_preactivated() -> None:
    config = UNetConfig(norm={"type": "group", "num_groups": 2}, decoder_block={"type": "plain", "preactivation": True})
    model = build_unet(config, device="meta")
    assert isinstance(model.decoder[0].block.body[0], nn.GroupNorm)  # norm first
    assert isinstance(model.encoder[0].block.body[0], nn.Conv2d)


# ---------------------------------------------------------------------------------------------
# decoder_kernel


def test_decoder_kernel_level_below() -> None:
    fields = {"depth": 2, "base_channels": 2, "kernel_size": [3, 5, [1, 3]], "padding": "valid"}
    below = build_unet({**fields, "decoder_kernel": "level_below"}, device="meta")
    assert [level.block.body[0].kernel_size for level in below.decoder] == [(5, 5), (1, 3)]
    same = build_unet(fields, device="meta")
    assert [level.block.body[0].kernel_size for level in same.decoder] == [(3, 3), (5, 5)]
    rule = shapes.axis_rule(below.config, 0)  # the decoder's valid convs shrink by the level-below kernel
    assert rule.dec_shrink == (8, 0) and shapes.axis_rule(same.config, 0).dec_shrink == (4, 8)


# ---------------------------------------------------------------------------------------------
# up: transpose without bias


def test_transpose_bias_off() -> None:
    model = build_unet({"depth": 2, "base_channels": 2, "up": {"type": "transpose", "bias": False}}, device="meta")
    ups = [level.up for level in model.decoder]
    assert all(isinstance(u, nn.ConvTranspose2d) and u.bias is None for u in ups)
    with_bias = UNetConfig(depth=2, base_channels=2)
    assert count_parameters(with_bias) - count_parameters(model.config) == sum(u.out_channels for u in ups)


# ---------------------------------------------------------------------------------------------
# up_channels: half, explicit


def test_up_channels_half_and_list() -> None:
    basic = [32, 32, 64, 128, 256]  # MONAI BasicUNet's default features; upcat_1 keeps (halves=False)
    config = UNetConfig(depth=4, channels=basic, decoder_channels=[32, 32, 64, 128], up_channels=[32, 16, 32, 128])
    assert config.layout.coarse_channels == (32, 64, 128, 256)
    assert [s.in_channels for s in config.layout.decoder] == [64, 48, 96, 256]
    half = UNetConfig(depth=4, channels=basic, up_channels="half")
    assert half.layout.up_channels == (16, 32, 64, 128)
    model = build_unet(config, device="meta")
    assert [(u.in_channels, u.out_channels) for u in (lvl.up for lvl in model.decoder)] == [
        (32, 32), (64, 16), (128, 32), (256, 128)
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"up_channels": [1, 2]}, "up_channels has 2 entries but needs 4"),
        ({"up_channels": "halve"}, "up_channels"),
        ({"depth": 1, "channels": [1, 1], "up_channels": "half"}, "halves the 1 channel that decoder level 0"),
        ({"merge": "add", "up_channels": [64, 128, 256, 256]}, r"level 3 .* \(up_channels=\[64, 128, 256, 256\]\)"),
    ],
)
def test_up_channels_refused(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        UNetConfig.model_validate(fields)


# ---------------------------------------------------------------------------------------------
# up: interpolation without conv, align_corners, conv first


def test_interpolation_conv_only_where_channels_change() -> None:
    up = {"type": "linear", "conv": "when_channels_change", "align_corners": True}
    model = build_unet({"depth": 2, "channels": [2, 4, 4], "up": up, "padding": "same"}, device="meta")
    low, high = (level.up for level in model.decoder)
    assert len(high) == 1 and len(low) == 2  # level 1: 4 -> 4 channels, no conv; level 0: 4 -> 2
    assert low[0].align_corners and low[0].mode == "bilinear" and isinstance(low[1], nn.Conv2d)
    assert "decoder.0.up.1.weight" in model.state_dict()  # the same keys as before the conv ran first


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_interpolation_runs_the_conv_first_and_that_commutes(mode: str) -> None:
    torch.manual_seed(0)
    model = build_unet({"depth": 1, "channels": [2, 4], "up": mode, "padding": "same"}, dtype=torch.float64)
    up = model.decoder[0].up
    x = torch.randn(2, 4, 5, 7, dtype=torch.float64)
    calls: list[tuple[int, ...]] = []
    up[1].register_forward_hook(lambda m, i, y: calls.append(tuple(i[0].shape)))
    y = up(x)
    assert calls == [(2, 4, 5, 7)]  # the 1x1 conv saw the coarse map
    torch.testing.assert_close(y, up[1](up[0](x)), rtol=1e-12, atol=1e-12)  # interpolate first: the same


# ---------------------------------------------------------------------------------------------
# norm_position, PReLU


def test_norm_after_activation_order() -> None:
    fields = {"depth": 1, "base_channels": 2, "norm": "batch", "norm_position": "after_activation"}
    plain = build_unet(fields, device="meta")
    assert [type(m).__name__ for m in plain.encoder[0].block.body] == ["Conv2d", "ReLU", "BatchNorm2d"] * 2
    pre = build_unet({**fields, "block": {"type": "residual", "preactivation": True}}, device="meta")
    body = pre.encoder[0].block.body
    assert [type(m).__name__ for m in body][:3] == ["ReLU", "BatchNorm2d", "Conv2d"]
    assert not body[0].inplace  # it runs on the block's input (the identity): never in place
    res = build_unet({**fields, "block": "residual", "stem": True}, device="meta")
    assert [type(m).__name__ for m in res.encoder[0].block.body] == [
        "Conv2d",
        "ReLU",
        "BatchNorm2d",
        "Conv2d",
        "BatchNorm2d",
    ]
    assert [type(m).__name__ for m in res.encoder[0].stem] == ["Conv2d", "ReLU", "BatchNorm2d"]


def test_norm_after_activation_function() -> None:
    torch.manual_seed(0)
    fields = {"depth": 1, "base_channels": 2, "norm": "batch", "padding": "same", "init": "torch"}
    model = build_unet({**fields, "norm_position": "after_activation"}, dtype=torch.float64).eval()
    conv, _, bn = list(model.encoder[0].block.body)[:3]
    bn.running_mean.uniform_(1, 2)  # a norm after the ReLU can make outputs negative
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    want = (torch.relu(conv(x)) - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var + bn.eps)[
        None, :, None, None
    ]
    torch.testing.assert_close(model.encoder[0].block.body[:3](x), want)
    assert (want < 0).any()


@pytest.mark.parametrize(("count", "per_layer"), [("one", 1), ("channels", None)])
def test_prelu(count: str, per_layer: int | None) -> None:
    act = {"type": "prelu", "num_parameters": count, "init": 0.1}
    config = UNetConfig(depth=2, base_channels=3, activation=act, block="residual", merge="attention", stem=True)
    model = build_unet(config, device="meta")
    prelus = [m for m in model.modules() if isinstance(m, nn.PReLU)]
    assert prelus and all(p.weight.numel() == (per_layer or p.weight.numel()) for p in prelus)
    if per_layer is None:
        assert {p.weight.numel() for p in prelus} == {3, 6, 12, 1}  # channels of each map (gates: inter = 1)
    assert count_parameters(config) == sum(p.numel() for p in model.parameters())
    cpu = build_unet(config.model_copy(update={"depth": 1}))
    assert all(torch.all(m.weight == 0.1) for m in cpu.modules() if isinstance(m, nn.PReLU))


# ---------------------------------------------------------------------------------------------
# merge: concat order


def test_concat_up_first_equals_skip_first_with_permuted_weights() -> None:
    fields = {"depth": 2, "channels": [2, 3, 4], "padding": "same", "init": "torch"}
    torch.manual_seed(0)
    skip_first = build_unet(fields, dtype=torch.float64).eval()
    up_first = build_unet({**fields, "merge": {"type": "concat", "order": "up_first"}}, dtype=torch.float64).eval()
    state = skip_first.state_dict()
    for i in range(len(skip_first.decoder)):
        key = f"decoder.{i}.block.body.0.weight"  # (C_out, C_skip + C_up, k, k)
        skip = skip_first.config.layout.encoder[i].out_channels
        state[key] = torch.cat([state[key][:, skip:], state[key][:, :skip]], dim=1)
    up_first.load_state_dict(state)
    x = torch.randn(1, 1, 8, 12, dtype=torch.float64)
    torch.testing.assert_close(up_first(x), skip_first(x), rtol=1e-12, atol=1e-12)
    want = skip_first(x)
    skip_first.load_state_dict(state)  # the permuted weights in the skip-first order: another function
    assert not torch.allclose(skip_first(x), want)


# ---------------------------------------------------------------------------------------------
# up: transposed conv with its own kernel, norm and activation (MONAI UNet, AttentionUnet)


def test_transpose_kernel_3_with_norm_act() -> None:
    up = {"type": "transpose", "kernel_size": 3, "norm_act": True}
    fields = {"depth": 2, "base_channels": 2, "padding": "same", "norm": "instance", "strides": [[2, 1], 3]}
    model = build_unet({**fields, "up": up, "activation": "prelu", "norm_position": "after_activation"})
    low, high = (level.up for level in model.decoder)
    assert [type(m).__name__ for m in low] == ["ConvTranspose2d", "PReLU", "InstanceNorm2d"]
    conv = low[0]
    assert (conv.kernel_size, conv.stride, conv.padding, conv.output_padding) == ((3, 3), (2, 1), (1, 1), (1, 0))
    assert (high[0].padding, high[0].output_padding) == ((1, 1), (2, 2))
    assert tuple(high(torch.randn(2, 8, 5, 7)).shape) == (2, 4, 15, 21)  # exactly the stride
    assert tuple(low(torch.randn(2, 4, 5, 7)).shape) == (2, 2, 10, 7)
    assert count_parameters(model.config) == sum(p.numel() for p in model.parameters())
    plain = build_unet({**fields, "up": "transpose"}, device="meta")
    assert isinstance(plain.decoder[0].up, nn.ConvTranspose2d)  # unchanged keys by default


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"up": {"type": "transpose", "kernel_size": 4}}, "up.kernel_size=4 must be odd"),
        (
            {
                "norm": {"type": "group", "num_groups": 2},
                "channels": [2, 4, 6],
                "depth": 2,
                "up_channels": [3, 4],
                "up": {"type": "transpose", "norm_act": True},
            },
            r"norm.num_groups=2 does not divide the channel count\(s\) \[3\]",
        ),
    ],
)
def test_transpose_options_refused(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        UNetConfig.model_validate(fields)


def test_cli_sizes_says_why_there_is_no_halo(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from unetgen.cli import main

    path = tmp_path / "stem.yaml"
    path.write_text("depth: 2\nbase_channels: 2\ndown: first_conv\npadding: same\nstem_stride: [2, 1]\n")
    assert main(["sizes", str(path)]) == 0
    out = capsys.readouterr().out
    assert "axis 0: valid input sizes are 8 + 8*k; halo none (output at 1/2 resolution) per side" in out
    assert "axis 1: valid input sizes are 4 + 4*k; halo 0 per side" in out


# ---------------------------------------------------------------------------------------------
# up: pixelshuffle (MONAI BasicUNet's SubpixelUpsample)


@pytest.mark.parametrize("factors", [(2,), (3,), (2, 2), (2, 3), (1, 2), (2, 1, 3)])
def test_pixel_shuffle_moves_each_channel_to_its_offset(factors: tuple[int, ...]) -> None:
    """Channel c * prod(f) + j lands at offset j (row-major over the factors) of each output cell,
    element by element; in 2D with equal factors this is torch's pixel_shuffle."""
    n, c = len(factors), 2
    size = (3, 2, 2)[:n]
    x = torch.randn(1, c * math.prod(factors), *size)
    y = layers.pixel_shuffle(x, factors)
    assert y.shape == (1, c, *(s * f for s, f in zip(size, factors, strict=True)))
    for ch in range(c):
        for j, offset in enumerate(itertools.product(*(range(f) for f in factors))):
            for cell in itertools.product(*(range(s) for s in size)):
                at = tuple(p * f + o for p, f, o in zip(cell, factors, offset, strict=True))
                assert y[(0, ch, *at)] == x[(0, ch * math.prod(factors) + j, *cell)]
    if n == 2 and factors[0] == factors[1]:
        assert torch.equal(y, nn.functional.pixel_shuffle(x, factors[0]))


def test_pixelshuffle_up_layers_and_pad_pool() -> None:
    fields = {"depth": 2, "base_channels": 2, "padding": "same", "strides": [[2, 1], 3], "init": "torch"}
    model = build_unet({**fields, "up": {"type": "pixelshuffle", "kernel_size": 5}})
    low, high = (level.up for level in model.decoder)
    assert [type(m).__name__ for m in low] == ["Conv2d", "PixelShuffle", "ConstantPad2d", "AvgPool2d"]
    assert (low[0].in_channels, low[0].out_channels, low[0].kernel_size, low[0].padding) == (4, 2 * 2, (5, 5), (2, 2))
    assert high[0].out_channels == 4 * 9 and low[2].padding == (0, 0, 1, 0)  # (last axis..., first axis): leading
    assert tuple(high(torch.randn(2, 8, 5, 7)).shape) == (2, 4, 15, 21)  # exactly the stride
    assert tuple(low(torch.randn(2, 4, 5, 7)).shape) == (2, 2, 10, 7)
    x = torch.randn(1, 4, 3, 4)
    shuffled = layers.pixel_shuffle(low[0](x), (2, 1))
    mean = (shuffled + torch.cat([torch.zeros_like(shuffled[:, :, :1]), shuffled[:, :, :-1]], dim=2)) / 2
    torch.testing.assert_close(low(x), mean)  # zero before the first row, mean of each pair along the strided axis
    assert count_parameters(model.config) == sum(p.numel() for p in model.parameters())
    bare = build_unet({**fields, "up": {"type": "pixelshuffle", "pad_pool": False}}, device="meta")
    assert [type(m).__name__ for m in bare.decoder[0].up] == ["Conv2d", "PixelShuffle"]


def test_pixelshuffle_even_kernel_refused() -> None:
    with pytest.raises(ValidationError, match=r"up\.kernel_size=2 must be odd so that the conv keeps the size; use 3"):
        UNetConfig.model_validate({"up": {"type": "pixelshuffle", "kernel_size": 2}})
