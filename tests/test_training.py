"""unetgen.training: the weight map against hand-computed distances, patches and targets against
the real network's alignment, losses reaching every head, and a short training run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import config_dicts, configs, numel, valid_shapes
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from unetgen import InputShapeError, UNetConfig, build_unet, output_shape
from unetgen.analysis import shapes
from unetgen.model.blocks import center_crop
from unetgen.training import (
    FOREGROUND_POINTS,
    NEGLIGIBLE,
    PatchSampler,
    border_weight_map,
    class_weight_map,
    crop_target,
    deep_supervision_loss,
    deep_supervision_targets,
    elastic_deform,
    head_weights,
    separate_touching,
    soft_dice_loss,
    weighted_cross_entropy,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: threads only add overhead


def border(d1: float, d2: float, w0: float = 10.0, sigma: float = 5.0) -> float:
    return w0 * math.exp(-((d1 + d2) ** 2) / (2 * sigma**2))


# ---------------------------------------------------------------------------------------------
# weight map


def test_weight_map_1d_hand_computed() -> None:
    labels = np.array([1, 0, 0, 2, 0, 0, 0, 0, 3])
    w = border_weight_map(labels, class_weights=None)
    # pixel 1: 1 from object 1, 2 from object 2; pixels 4-7 lie between objects 2 and 3 (5 apart)
    want = [1, 1 + border(1, 2), 1 + border(2, 1), 1, *[1 + border(5 - k, k) for k in (4, 3, 2, 1)], 1]
    want[4:8] = [1 + border(1, 4), 1 + border(2, 3), 1 + border(3, 2), 1 + border(4, 1)]
    np.testing.assert_allclose(w, want, rtol=1e-6)


def test_weight_map_2d_hand_computed() -> None:
    labels = np.zeros((3, 3), int)
    labels[0, 0], labels[2, 2] = 1, 2
    w = border_weight_map(labels, class_weights=None, w0=4.0, sigma=2.0)
    r2, r5 = math.sqrt(2), math.sqrt(5)
    want = np.array(
        [
            [1, 1 + border(1, r5, 4, 2), 1 + border(2, 2, 4, 2)],
            [1 + border(1, r5, 4, 2), 1 + border(r2, r2, 4, 2), 1 + border(1, r5, 4, 2)],
            [1 + border(2, 2, 4, 2), 1 + border(1, r5, 4, 2), 1],
        ]
    )
    np.testing.assert_allclose(w, want, rtol=1e-6)


def test_weight_map_anisotropic_sampling() -> None:
    labels = np.array([[1, 0, 2]])
    w = border_weight_map(labels, class_weights=None, sampling=(1.0, 3.0))
    np.testing.assert_allclose(w[0, 1], 1 + border(3, 3), rtol=1e-6)


def test_class_weights() -> None:
    labels = np.array([1, 0, 0, 0])
    np.testing.assert_allclose(class_weight_map(labels), [2.0, 2 / 3, 2 / 3, 2 / 3])  # 4 / (2 classes * count)
    np.testing.assert_allclose(class_weight_map(labels, {0: 0.5, 1: 3.0}), [3.0, 0.5, 0.5, 0.5])
    np.testing.assert_allclose(class_weight_map(np.zeros(3, int)), [1.0, 1.0, 1.0])  # one class present
    one = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2])  # with balanced class weights on top
    bump = border_weight_map(one) - class_weight_map(one)
    np.testing.assert_allclose(bump, border_weight_map(one, class_weights=None) - 1, atol=1e-6)


def _naive(labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """One whole-image distance transform per object: the definition."""
    ids = [k for k in np.unique(labels) if k > 0]
    d = np.sort(np.stack([ndimage.distance_transform_edt(labels != k) for k in ids]), axis=0)
    d2 = d[1] if len(ids) > 1 else np.inf
    return 1 + np.where(labels == 0, w0 * np.exp(-((d[0] + d2) ** 2) / (2 * sigma**2)), 0)


@given(st.integers(0, 10_000), st.sampled_from([(40, 56), (12, 20, 18)]), st.sampled_from([(10.0, 5.0), (3.0, 8.0)]))
def test_weight_map_equals_one_transform_per_object(seed: int, shape: tuple[int, ...], params) -> None:
    rng = np.random.default_rng(seed)
    blobs = ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.53
    labels = ndimage.label(blobs)[0]
    w0, sigma = params
    fast = border_weight_map(labels, w0=w0, sigma=sigma, class_weights=None)
    if labels.max() > 0:
        np.testing.assert_allclose(fast, _naive(labels, w0, sigma), atol=NEGLIGIBLE + 1e-6, rtol=1e-6)


@given(st.integers(0, 10_000))
def test_weight_map_symmetric(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = ndimage.label(ndimage.gaussian_filter(rng.random((30, 40)), 1.5) > 0.53)[0]
    w = border_weight_map(labels)
    np.testing.assert_allclose(border_weight_map(labels[::-1, ::-1]), w[::-1, ::-1], rtol=1e-6)
    np.testing.assert_allclose(border_weight_map(labels.T), w.T, rtol=1e-6)
    relabelled = np.where(labels > 0, labels.max() + 1 - labels, 0)  # ids do not matter
    np.testing.assert_allclose(border_weight_map(relabelled), w, rtol=1e-6)


def test_touching_pairs_weighted_up_far_background_at_class_weight() -> None:
    labels = np.zeros((80, 80), int)
    labels[10:20, 10:20] = 1
    labels[10:20, 21:31] = 2  # one pixel gap: "touching"
    labels[60:70, 60:70] = 3  # isolated
    w = border_weight_map(labels)
    wc = class_weight_map(labels)
    gap = w[15, 20]
    np.testing.assert_allclose(gap, wc[15, 20] + border(1, 1), rtol=1e-6)
    assert gap > 2 * w[15, 5]  # the gap outweighs the background beside a single object
    assert w[40, 75] == wc[40, 75]  # far from any pair: exactly w_c
    assert (w[labels > 0] == wc[labels > 0]).all()  # objects: w_c only


def test_separate_touching_opens_a_gap_only_where_objects_touch() -> None:
    labels = np.zeros((6, 9), int)
    labels[1:5, 1:4], labels[1:5, 4:7] = 1, 2  # touching along a column
    labels[1:3, 8] = 3  # alone
    out = separate_touching(labels)
    assert (out[1:5, 3:5] == 0).all()  # both contact columns opened
    assert (out[1:5, 1:3] == 1).all() and (out[1:5, 5:7] == 2).all() and (out[1:3, 8] == 3).all()
    w = border_weight_map(out, class_weights=None)
    np.testing.assert_allclose(w[2, 3], 1 + border(1, 2), rtol=1e-6)  # the gap: d1 = 1, d2 = 2


@pytest.mark.parametrize(
    "labels, options, match",
    [
        (np.zeros((4, 4)), {}, "integer label image"),
        (np.zeros((4, 4), bool), {}, "integer label image"),
        (np.array([[-1, 0]]), {}, "negative ids"),
        (np.zeros((2, 2, 2, 2), int), {}, "1D, 2D or 3D"),
        (np.zeros((4, 4), int), {"sigma": 0}, "sigma"),
        (np.zeros((4, 4), int), {"w0": float("nan")}, "w0"),
        (np.zeros((4, 4), int), {"class_weights": "equal"}, "class_weights"),
        (np.zeros((4, 4), int), {"class_weights": {0: 1.0}}, "class_weights"),
        (np.zeros((4, 4), int), {"sampling": (1.0, -1.0)}, "sampling"),
    ],
)
def test_weight_map_bad_input(labels: np.ndarray, options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        border_weight_map(labels, **options)


# ---------------------------------------------------------------------------------------------
# crops and patches: aligned with the real network


@given(configs(), st.data())
def test_crop_target_matches_the_models_centre_crop(config: UNetConfig, data: st.DataObject) -> None:
    """A model that copies its centre crop (the real model's output shape, the network's own crop)
    matches crop_target pixel for pixel, for targets with and without leading axes."""
    shape = data.draw(valid_shapes(config, max_steps=2))
    assume(numel(shape) <= 200_000 and _one_to_one(config))
    model = build_unet(config, device="meta").eval()
    out_shape = tuple(model(torch.empty(1, config.in_channels, *shape, device="meta")).shape[2:])
    target = torch.arange(numel(shape) * 2).reshape(1, 2, *shape)
    assert torch.equal(crop_target(target, config, shape), center_crop(target, out_shape))
    assert crop_target(target[0, 0].numpy(), config, shape).shape == out_shape


def _one_to_one(config: UNetConfig) -> bool:
    """Whether output pixels correspond to input pixels (not with a strided stem)."""
    try:
        shapes.halo(config)
    except ValueError:
        return False
    return True


def _copy_weights_(model: torch.nn.Module, level: int) -> None:
    """Make a plain concat ReLU U-Net copy channel 0 of its input through level `level`: every
    conv of encoder levels 0..level and of decoder level `level` a centred delta from channel 0 to
    channel 0 (the decoder's first conv reads the skip, channel 0 of the concatenation), every
    other weight zero; the head of that level passes channel 0."""
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        blocks = [model.encoder[i].block for i in range(min(level + 1, len(model.encoder)))]
        blocks += [model.decoder[level].block]
        for block in blocks:
            for m in block.body:
                if isinstance(m, torch.nn.modules.conv._ConvNd):
                    m.weight[(0, 0, *(k // 2 for k in m.kernel_size))] = 1.0
        head = model.head if level == 0 else model.decoder[level].aux
        head.weight[(0, 0, *(0 for _ in head.kernel_size))] = 1.0


def _copyable(raw: dict) -> UNetConfig:
    raw = {
        **raw,
        "block": "plain",
        "merge": "concat",
        "norm": "none",
        "activation": "relu",
        "down": "avg",
        "up": "transpose",
    }
    for key in ("up_channels", "stem", "stem_stride", "blocks_per_level", "decoder_block", "norm_position", "head",
                "decoder_norm", "decoder_activation"):  # fmt: skip
        raw.pop(key, None)
    return UNetConfig.model_validate(raw)


@given(config_dicts(max_depth=3), st.data())
def test_targets_align_with_a_model_that_copies_its_input(raw: dict, data: st.DataObject) -> None:
    """The real network, with weights that copy its input through the level-0 path, outputs
    exactly crop_target(input); through an auxiliary head at level l (average pooling), each pixel
    is the mean of the block whose middle pixel deep_supervision_targets picks."""
    config = _copyable(raw)
    shape = data.draw(valid_shapes(config, max_steps=1))
    assume(numel(shape) <= 40_000)
    levels = [0, *sorted(config.deep_supervision)]
    model = build_unet(config).double().train()
    ramps = [torch.arange(n, dtype=torch.float64).reshape([-1 if a == b else 1 for b in range(len(shape))])
             for a, n in enumerate(shape)]  # fmt: skip
    image = sum(r * 1000**a for a, r in enumerate(ramps)) + 1  # positive: ReLU passes it
    x = torch.zeros(1, config.in_channels, *shape, dtype=torch.float64)
    x[0, 0] = image
    picks = deep_supervision_targets(image, config, shape)
    for h, level in enumerate(levels):
        _copy_weights_(model, level)
        with torch.no_grad():
            out = model(x)
        y = (out if isinstance(out, list) else [out])[h][0, 0]
        if level == 0:
            assert torch.equal(y, crop_target(image, config, shape))
        else:  # block mean = block start + (s-1)/2 per axis; the pick is block start + s//2
            steps = [math.prod(s[a] for s in config.layout.strides[:level]) for a in range(config.spatial_dims)]
            shift = sum(((s - 1) / 2 - s // 2) * 1000**a for a, s in enumerate(steps))
            torch.testing.assert_close(y, picks[h] + shift, rtol=0, atol=1e-6)


def _blobs(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = ndimage.label(ndimage.gaussian_filter(rng.random(shape), 2.0) > 0.52)[0]
    image = (labels > 0).astype(np.float32) + 0.3 * rng.standard_normal(shape).astype(np.float32)
    return image, labels


@given(configs(dims=(1, 2), max_depth=3), st.data())
def test_patches_have_valid_sizes_and_mirror_the_image(config: UNetConfig, data: st.DataObject) -> None:
    assume(_one_to_one(config))
    shape = data.draw(valid_shapes(config, max_steps=2))
    image_shape = tuple(data.draw(st.integers(1, 50)) for _ in shape)
    rng = np.random.default_rng(0)
    image = rng.standard_normal((config.in_channels, *image_shape)).astype(np.float32)
    labels = rng.integers(0, max(config.out_channels, 2), image_shape)  # class ids (issue 18: checked)
    sampler = PatchSampler(config, image, labels, labels * 2.0, patch_size=shape, seed=1)
    x, y, w = sampler.sample()
    assert tuple(x.shape) == (config.in_channels, *shape)
    assert tuple(y.shape) == tuple(w.shape) == output_shape(config, shape)
    assert torch.equal(w, y * 2.0)  # weights travel with the target
    # every input pixel is an image pixel; the target is the input's centre crop of the labels
    big = PatchSampler(config, image[:1].repeat(config.in_channels, 0), labels, patch_size=shape, seed=1,
                       target_size="input")  # fmt: skip
    xi, yi, _ = big.sample()
    assert tuple(yi.shape) == shape
    assert set(np.unique(xi[0].numpy())) <= set(np.unique(image[0]))


def test_patch_is_the_image_window_around_the_output() -> None:
    config = UNetConfig(depth=2, base_channels=2, out_channels=100 * 120)  # every pixel's index is a class id
    patch = shapes.nearest_valid_input_size(config, 60)
    image = np.arange(100 * 120, dtype=np.float32).reshape(100, 120)
    labels = np.arange(100 * 120).reshape(100, 120)
    sampler = PatchSampler(config, image, labels, patch_size=patch, seed=3)
    halo = shapes.halo(config)
    for _ in range(5):
        x, y, _ = sampler.sample()
        i, j = divmod(int(y[0, 0]), 120)  # where the output tile starts
        want = np.pad(image, [(h, h) for h in halo], mode="reflect")[i : i + patch, j : j + patch]
        np.testing.assert_array_equal(x[0].numpy(), want)
        assert torch.equal(y, crop_target(torch.from_numpy(want).long(), config, (patch, patch)))


@settings(max_examples=20)
@given(st.integers(1, 3), st.data())
def test_foreground_patches_hold_a_foreground_voxel(classes: int, data: st.DataObject) -> None:
    """With foreground=1 every output tile holds a voxel of one of the image's foreground classes
    (each a single voxel anywhere, even at the border), and the patch is still the image window."""
    config = UNetConfig(depth=2, base_channels=2, out_channels=classes + 1)
    patch = shapes.nearest_valid_input_size(config, 60)
    out = shapes.output_shape(config, (patch, patch))
    h, w = data.draw(st.integers(out[0], 90)), data.draw(st.integers(out[1], 90))
    labels = np.zeros((h, w), np.int64)
    for c in range(1, classes + 1):
        labels[data.draw(st.integers(0, h - 1)), data.draw(st.integers(0, w - 1))] = c
    present = set(np.unique(labels)) - {0}
    image = np.arange(h * w, dtype=np.float32).reshape(h, w)
    sampler = PatchSampler(config, image, labels, patch_size=patch, seed=data.draw(st.integers(0, 99)), foreground=1)
    halo = shapes.halo(config)
    seen = set()
    for _ in range(12):
        x, y, _ = sampler.sample()
        held = set(np.unique(y.numpy())) - {0}
        assert held, "a foreground patch without foreground"
        seen |= held
        start = np.unravel_index(int(x[0, halo[0], halo[1]]), (h, w))  # the output tile's first pixel
        padded = np.pad(image, [(k, k) for k in halo], mode="reflect")
        want = padded[start[0] : start[0] + patch, start[1] : start[1] + patch]
        np.testing.assert_array_equal(x[0].numpy(), want)
    assert seen <= present


def test_foreground_share_and_no_foreground() -> None:
    config = UNetConfig(depth=2, base_channels=2)
    patch = shapes.nearest_valid_input_size(config, 44)
    labels = np.zeros((400, 400), np.int64)
    labels[10, 390] = 1  # one voxel: a uniform tile holds it about 0.3 % of the time
    image = np.zeros((400, 400), np.float32)
    for share in (0.0, 0.3, 1.0):
        sampler = PatchSampler(config, image, labels, patch_size=patch, seed=0, foreground=share)
        hits = sum(bool(sampler.sample()[1].any()) for _ in range(300)) / 300
        assert abs(hits - share) < 0.08, (share, hits)
    # an image without foreground falls back to uniform patches
    empty = PatchSampler(config, image, np.zeros_like(labels), patch_size=patch, seed=0, foreground=1)
    assert not any(empty.sample()[1].any() for _ in range(5))
    # at most FOREGROUND_POINTS voxels are remembered per class, evenly spread
    full = PatchSampler(config, image, np.ones_like(labels), patch_size=patch, seed=0, foreground=1)
    points = full._points[0][0]
    assert len(points) == FOREGROUND_POINTS and tuple(points[0]) == (0, 0) and tuple(points[-1]) == (399, 399)


@pytest.mark.parametrize(
    "args, options, error, match",
    [
        ((np.zeros((10, 10)), np.zeros((10, 10), int)), {"patch_size": 61}, InputShapeError, "nearest valid"),
        ((np.zeros((10, 11)), np.zeros((10, 10), int)), {"patch_size": 60}, ValueError, "does not fit"),
        ((np.zeros((2, 10, 10)), np.zeros((10, 10), int)), {"patch_size": 60}, ValueError, "in_channels=1"),
        ((np.zeros((10, 10)), np.zeros((10, 10)), None), {"patch_size": 60}, ValueError, "must hold class ids"),
        ((np.zeros((10, 10)), np.zeros((10, 10), int), np.zeros((9, 10))), {"patch_size": 60}, ValueError, "weights"),
        (([np.zeros((10, 10))], [np.zeros((10, 10), int)] * 2), {"patch_size": 60}, ValueError, "2 targets"),
        (
            (np.zeros((10, 10)), np.zeros((10, 10), int)),
            {"patch_size": 60, "target_size": "x"},
            ValueError,
            "target_size",
        ),
        *[
            ((np.zeros((10, 10)), np.zeros((10, 10), int)), {"patch_size": 60, "foreground": b}, ValueError, "foregr")
            for b in (1.5, -0.1, float("nan"), True, "0.3", None)
        ],
    ],
)
def test_patch_sampler_bad_input(args: tuple, options: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        PatchSampler(UNetConfig(depth=2, base_channels=2), *args, **options)


def test_crop_target_refuses_targets_it_cannot_centre() -> None:
    config = UNetConfig(depth=2, base_channels=2)
    with pytest.raises(InputShapeError, match="cannot be centre-cropped"):
        crop_target(np.zeros((61, 60)), config, (60, 60))  # odd difference
    with pytest.raises(InputShapeError, match="cannot be centre-cropped"):
        crop_target(np.zeros((10, 10)), config, (60, 60))  # smaller than the output


def test_elastic_deform_moves_all_three_alike() -> None:
    image, labels = _blobs((64, 64))
    rng = np.random.default_rng(0)
    x, y, w = elastic_deform(image[None], labels, (labels > 0).astype(np.float32), rng)
    assert x.shape == (1, 64, 64) and y.shape == labels.shape and y.dtype == labels.dtype
    assert set(np.unique(y)) <= set(np.unique(labels))  # order 0: no new label values
    assert not np.array_equal(y, labels)  # it moved
    assert ((w > 0.5) == (y > 0)).mean() > 0.97  # the weight map moved with the labels
    x0, y0, _ = elastic_deform(image[None], labels, labels * 1.0, np.random.default_rng(0), sigma=0.0)
    np.testing.assert_allclose(x0[0], image, atol=1e-4)  # no displacement: the identity
    assert np.array_equal(y0, labels)


# ---------------------------------------------------------------------------------------------
# losses


def test_weighted_cross_entropy_and_dice() -> None:
    logits = torch.randn(2, 3, 5, 5)
    target = torch.randint(0, 3, (2, 5, 5))
    plain = torch.nn.functional.cross_entropy(logits, target)
    torch.testing.assert_close(weighted_cross_entropy(logits, target), plain)
    torch.testing.assert_close(weighted_cross_entropy(logits, target, torch.full((2, 5, 5), 2.0)), 2 * plain)
    perfect = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float() * 50
    assert soft_dice_loss(perfect, target) < 1e-6
    assert soft_dice_loss(-perfect, target) > 0.99
    with pytest.raises(ValueError, match="do not match"):
        weighted_cross_entropy(logits, target[:, :4])


def test_head_weights_halve_per_level_and_sum_to_one() -> None:
    config = UNetConfig(depth=4, base_channels=2, deep_supervision=[2, 1])
    assert head_weights(config) == pytest.approx([4 / 7, 2 / 7, 1 / 7])


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_deep_supervision_gradients_reach_every_head(padding: str) -> None:
    config = UNetConfig(depth=3, base_channels=2, deep_supervision=[1, 2], padding=padding, init="torch")
    size = shapes.min_input_shape(config)[0] + 8
    image, labels = _blobs((size + 20, size + 20))
    sampler = PatchSampler(config, image, labels > 0, border_weight_map(labels), patch_size=size, seed=0,
                           target_size="input")  # fmt: skip
    x, y, w = sampler.batch(2)
    model = build_unet(config, seed=0).train()
    out = model(x)
    assert len(out) == 3
    loss = deep_supervision_loss(out, y, config, (size, size), weight=w)
    loss.backward()
    for head in (model.head, model.decoder[1].aux, model.decoder[2].aux):
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())
    dice = deep_supervision_loss(model(x), y, config, (size, size), loss=soft_dice_loss)
    assert 0 <= dice.item() <= 1
    with pytest.raises(ValueError, match="3 heads"):
        deep_supervision_loss(out[:2], y, config, (size, size))
    if padding == "valid":
        with pytest.raises(InputShapeError, match="auxiliary head"):
            deep_supervision_loss(out, crop_target(y, config, (size, size)), config, (size, size))


def test_thirty_steps_reduce_the_loss() -> None:
    config = UNetConfig(depth=2, base_channels=4, dropout={"rate": 0.0}, norm="batch")
    image, labels = _blobs((80, 80))
    patch = shapes.nearest_valid_input_size(config, 52)
    sampler = PatchSampler(config, image, (labels > 0).astype(np.int64), border_weight_map(labels),
                           patch_size=patch, seed=0, augment=elastic_deform)  # fmt: skip
    model = build_unet(config, seed=0).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        x, y, w = sampler.batch(2)
        loss = weighted_cross_entropy(model(x), y, w)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
