"""Shape arithmetic: the paper's Figure 1, agreement with a brute-force simulator, and with real
models (meta device for any size, CPU for crop alignment)."""

from __future__ import annotations

import pytest
import torch
from brute import simulate
from conftest import configs, numel, valid_shapes
from hypothesis import assume, event, given
from hypothesis import strategies as st

from unetgen import (
    InputShapeError,
    UNet,
    UNetConfig,
    halo,
    input_size_for_output,
    is_valid_input_shape,
    nearest_valid_input_size,
    output_shape,
    skip_crops,
    trace,
    valid_input_sizes,
)
from unetgen.analysis import shapes
from unetgen.model import blocks

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: threads only add overhead

PAPER = UNetConfig()


def test_paper_figure_1() -> None:
    rows = {r.name: (r.channels, r.shape[0]) for r in trace(PAPER, (572, 572))}
    assert output_shape(PAPER, (572, 572)) == (388, 388)
    encoder = [rows[n][1] for n in ("enc0.conv2", "down0", "enc1.conv2", "down1", "enc2.conv2", "down2")]
    encoder += [rows[n][1] for n in ("enc3.conv2", "down3", "bottleneck.conv1", "bottleneck.conv2")]
    assert encoder == [568, 284, 280, 140, 136, 68, 64, 32, 30, 28]
    decoder = [(rows[f"up{i}"][1], rows[f"dec{i}.conv2"][1]) for i in (3, 2, 1, 0)]
    assert decoder == [(56, 52), (104, 100), (200, 196), (392, 388)]
    assert [rows[f"enc{i}.conv2"][0] for i in range(4)] + [rows["bottleneck.conv2"][0]] == [64, 128, 256, 512, 1024]
    assert [rows[f"up{i}"][0] for i in (3, 2, 1, 0)] == [512, 256, 128, 64]  # the up-conv halves
    assert rows["head"] == (2, 388)
    assert [c.offset for c in skip_crops(PAPER, (572, 572))] == [(88, 88), (40, 40), (16, 16), (4, 4)]
    assert halo(PAPER) == (92, 92)


def test_paper_sizes() -> None:
    assert nearest_valid_input_size(PAPER, 570, direction="down") == 556
    assert nearest_valid_input_size(PAPER, 570, direction="up") == 572
    assert nearest_valid_input_size(PAPER, 570) == 572
    assert input_size_for_output(PAPER, 388) == 572
    assert list(valid_input_sizes(PAPER, 600)[-3:]) == [556, 572, 588]
    with pytest.raises(InputShapeError, match=r"input size 570 .* depth=4, padding='valid'; nearest valid: 556, 572"):
        output_shape(PAPER, (570, 572))


@given(configs(), st.data())
def test_helpers_agree_with_brute_force(config: UNetConfig, data: st.DataObject) -> None:
    axis = data.draw(st.integers(0, config.spatial_dims - 1))
    rule = shapes.axis_rule(config, axis)
    full_resolution = all(shapes.axis_rule(config, a).stem == 1 for a in range(config.spatial_dims))
    top = rule.min_size + 4 * rule.period + 2
    brute = {s: simulate(config, s, axis) for s in range(1, top + 1)}
    valid = [s for s, o in brute.items() if o is not None]
    assert list(valid_input_sizes(config, top, axis=axis)) == valid
    lo = data.draw(st.integers(1, top))
    assert list(valid_input_sizes(config, top, min_size=lo, axis=axis)) == [s for s in valid if s >= lo]
    for s in valid:
        shape = [shapes.axis_rule(config, a).min_size for a in range(config.spatial_dims)]
        shape[axis] = s
        assert output_shape(config, shape)[axis] == brute[s]
        if full_resolution:
            assert (s - brute[s]) // 2 == halo(config)[axis]
    if not full_resolution:  # the output is at a lower resolution: no halo, no overlap-tile prediction
        with pytest.raises(ValueError, match=r"stem_stride=\d puts the output at 1/\d"):
            halo(config)
    size = data.draw(st.integers(1, valid[-1]))
    up = nearest_valid_input_size(config, size, direction="up", axis=axis)
    assert up == min(v for v in valid if v >= size)
    below = [v for v in valid if v <= size]
    if below:
        assert nearest_valid_input_size(config, size, direction="down", axis=axis) == max(below)
    else:
        with pytest.raises(ValueError, match="smallest is"):
            nearest_valid_input_size(config, size, direction="down", axis=axis)
    nearest = nearest_valid_input_size(config, size, axis=axis)
    assert nearest in valid and abs(nearest - size) == min(abs(v - size) for v in valid)
    want = data.draw(st.integers(1, brute[valid[-1]]))
    assert input_size_for_output(config, want, axis=axis) == min(v for v in valid if brute[v] >= want)


@given(configs(), st.data())
def test_output_shape_equals_real_model_meta(config: UNetConfig, data: st.DataObject) -> None:
    """Any depth, dims and size: the real network (meta device, no memory) gives `output_shape`."""
    shape = data.draw(valid_shapes(config, max_steps=20))
    with torch.device("meta"):
        model = UNet(config).eval()
        y = model(torch.empty(2, config.in_channels, *shape))
    assert tuple(y.shape) == (2, config.out_channels, *output_shape(config, shape))
    assert is_valid_input_shape(config, shape)


@given(configs(), st.data())
def test_invalid_sizes_refused_by_helpers_and_model(config: UNetConfig, data: st.DataObject) -> None:
    axis = data.draw(st.integers(0, config.spatial_dims - 1))
    shape = list(data.draw(valid_shapes(config)))
    bad = data.draw(st.integers(1, shape[axis] + 40).filter(lambda s: simulate(config, s, axis) is None))
    shape[axis] = bad
    assert not is_valid_input_shape(config, shape)
    with pytest.raises(InputShapeError) as err:
        output_shape(config, shape)
    up = nearest_valid_input_size(config, bad, direction="up", axis=axis)
    assert str(up) in str(err.value) and f"input size {bad}" in str(err.value)
    with torch.device("meta"):
        model = UNet(config)
        with pytest.raises(InputShapeError, match=f"nearest valid: .*{up}"):
            model(torch.empty(1, config.in_channels, *shape))


def _symmetrize_(model: torch.nn.Module) -> None:
    """Make every conv kernel mirror-symmetric along every spatial axis."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.conv._ConvNd):
                w = m.weight
                for d in range(2, w.dim()):
                    w.copy_((w + w.flip(d)) / 2)


@given(configs(max_depth=4), st.data())
def test_crops_centred_flip_equivariance(config: UNetConfig, data: st.DataObject) -> None:
    """With mirror-symmetric kernels the network commutes with flipping any axis, which fails as
    soon as one crop is off-centre; and the model crops exactly where `shapes` says.
    Not for `down: first_conv`: a strided conv samples from the left edge (nnU-Net's and
    DynUNet's choice), so flipping moves its sampling grid (what holds instead is checked by
    `test_first_conv_samples_from_the_left_edge`); nor for a transposed conv with its own
    `kernel_size`, whose output padding is on the right (MONAI's choice). For `pixelshuffle` only
    the crops are checked: each output cell's offsets take different channels of the conv, and
    the pad-and-pool pads the leading side, so flipping is not a symmetry."""
    assume(config.down.type != "first_conv")
    assume(config.up.type != "transpose" or config.up.kernel_size is None)
    shape = data.draw(valid_shapes(config, max_steps=2))
    assume(numel(shape) <= 100_000)
    if config.activation.type == "relu":  # tiny ReLU nets can die to a constant, which hides crops
        config = config.model_copy(update={"activation": {"type": "leaky_relu", "negative_slope": 0.2}})
    torch.manual_seed(0)
    model = UNet(config).double().eval()
    _symmetrize_(model)
    offsets: list[tuple[int, ...]] = []
    crop, merging = blocks.center_crop, [False]

    def spy(x: torch.Tensor, out: tuple[int, ...]) -> torch.Tensor:
        if merging[0]:  # skip crops only (residual blocks crop their identity path too)
            offsets.append(tuple((a - b) // 2 for a, b in zip(x.shape[2:], out, strict=True)))
        return crop(x, out)

    for m in model.modules():
        if isinstance(m, blocks.SkipMerge):
            m.register_forward_pre_hook(lambda *_: merging.__setitem__(0, True))
            m.register_forward_hook(lambda *_: merging.__setitem__(0, False))

    x = torch.randn(1, config.in_channels, *shape, dtype=torch.float64)
    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(blocks, "center_crop", spy)
        y = model(x)
        assert offsets == [c.offset for c in reversed(skip_crops(config, shape))]
        mp.undo()
        for axis in range(2, 2 + config.spatial_dims) if config.up.type != "pixelshuffle" else ():
            if y.shape[axis] > 1:
                event("flip check on a non-trivial axis")
            torch.testing.assert_close(model(x.flip(axis)), y.flip(axis), rtol=1e-9, atol=1e-9)


def test_off_centre_crop_is_caught(monkeypatch) -> None:
    """The flip test has teeth: a crop from the corner breaks it."""
    config = UNetConfig(depth=2, base_channels=2, channel_multiplier=1, activation="leaky_relu")
    model = UNet(config).double().eval()
    _symmetrize_(model)
    monkeypatch.setattr(blocks, "center_crop", lambda x, s: x[(..., *(slice(0, n) for n in s))] if x.dim() == 4 else x)
    x = torch.randn(1, 1, *(shapes.axis_rule(config).min_size + 4,) * 2, dtype=torch.float64)
    with torch.no_grad():
        assert not torch.allclose(model(x.flip(2)), model(x).flip(2))


def test_output_shape_per_axis_non_square() -> None:
    cfg = UNetConfig(spatial_dims=3, depth=2, base_channels=2)
    sizes = [shapes.axis_rule(cfg, a).min_size for a in range(3)]
    shape = (sizes[0], sizes[1] + 4, sizes[2] + 8)
    out = output_shape(cfg, shape)
    assert out[1] - out[0] == 4 and out[2] - out[0] == 8
    with pytest.raises(InputShapeError, match="on axis 1"):
        output_shape(cfg, (sizes[0], sizes[1] + 1, sizes[2]))
    with pytest.raises(InputShapeError, match="has 2 spatial axes but spatial_dims=3"):
        output_shape(cfg, (sizes[0], sizes[1]))
