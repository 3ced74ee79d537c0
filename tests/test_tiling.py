"""Overlap-tile prediction: exact against one whole-image forward pass for valid padding, blend
weights that sum to one for same padding, plans that cover the image, and clear errors."""

from __future__ import annotations

import io
import itertools
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import config_dicts, valid_shapes
from hypothesis import event, given
from hypothesis import strategies as st

from unetgen import InputShapeError, UNet, UNetConfig, build_unet, plan_tiles, predict_tiled, save_unet
from unetgen.analysis import shapes
from unetgen.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def mirror_pad(x: torch.Tensor, pads: list[tuple[int, int]]) -> torch.Tensor:
    """Reference mirror padding of (N, C, *spatial), independent of unetgen.tiling: torch's reflect
    padding, repeated in steps of at most size - 1 so that every step reflects about a copy of the
    image's edge (as np.pad(mode="reflect") does); an axis of size 1 is repeated."""
    dims = x.dim() - 2
    for axis, (left, right) in enumerate(pads, start=2):
        size = x.shape[axis]
        if size == 1:
            x = x.expand(*x.shape[:axis], size + left + right, *x.shape[axis + 1 :])
            continue
        while left or right:
            step_l, step_r = min(left, size - 1), min(right, size - 1)
            widths = [0] * (2 * dims)
            widths[2 * (x.dim() - 1 - axis)] = step_l  # F.pad lists the last axis first
            widths[2 * (x.dim() - 1 - axis) + 1] = step_r
            x = F.pad(x, widths, mode="reflect")
            left, right = left - step_l, right - step_r
    return x


def whole_image_forward(model: UNet, image: torch.Tensor) -> torch.Tensor:
    """One forward pass over the whole image, mirror-padded by the halo and up to a valid size,
    cropped back to the image."""
    config, spatial = model.config, image.shape[2:]
    pads = []
    for axis, size in enumerate(spatial):
        full = shapes.input_size_for_output(config, size, axis=axis)
        halo = shapes.axis_rule(config, axis).halo
        pads.append((halo, full - size - halo))
    with torch.no_grad():
        out = model(mirror_pad(image, pads))
    return out[(slice(None), slice(None), *(slice(0, s) for s in spatial))]


def test_mirror_pad_reference_is_numpy_reflect() -> None:
    np = pytest.importorskip("numpy")
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    want = np.pad(x.numpy(), ((0, 0), (0, 0), (7, 5), (2, 9)), mode="reflect")
    assert torch.equal(mirror_pad(x, [(7, 5), (2, 9)]), torch.from_numpy(want))


@st.composite
def local_configs(draw: st.DrawFn) -> UNetConfig:
    """Tiny valid-padding configs whose output is local (no instance/group/layer norm, no linear
    up-sampling: see the unetgen.tiling docstring), in 1D, 2D and 3D with depth 1-4. In 3D the
    kernels are 3 wide on one to three axes (at most two when deep) and 1 wide on the others, so
    that the smallest tile stays small (every axis still has its pooling grid and its mirroring)."""
    dims = draw(st.sampled_from([1, 2, 2, 3, 3]))
    depth = draw(st.integers(1, 4))
    kernel = [3] * dims
    if dims == 3:  # 3-wide kernels on one to three axes; at most two when deep
        wide = draw(st.sets(st.integers(0, 2), min_size=1, max_size=2 if depth >= 3 else 3))
        kernel = [3 if a in wide else 1 for a in range(3)]
    raw = dict(
        spatial_dims=dims,
        in_channels=draw(st.integers(1, 2)),
        out_channels=draw(st.integers(1, 2)),
        depth=depth,
        base_channels=draw(st.integers(1, 2)),
        channel_multiplier=1,
        convs_per_block=draw(st.integers(1, 2)) if dims < 3 else 1,
        kernel_size=tuple([kernel] * (depth + 1)),
        norm=draw(st.sampled_from(["none", "batch"])),
        activation=draw(st.sampled_from(["relu", "leaky_relu", "gelu"])),
        block=draw(st.sampled_from(["plain", "residual"])),
        merge=draw(st.sampled_from(["concat", "add", "attention"])),
        down=draw(st.sampled_from(["max", "avg", "conv"])),
        up=draw(st.sampled_from(["transpose", "nearest"])),
        dropout={"rate": 0.0},
        init="torch",
    )
    return UNetConfig(**raw)


@given(local_configs(), st.data())
def test_valid_tiling_equals_whole_image_forward(config: UNetConfig, data: st.DataObject) -> None:
    torch.manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    model = build_unet(config).eval()
    rules = [shapes.axis_rule(config, a) for a in range(config.spatial_dims)]
    limit = {1: 300, 2: 100, 3: 30}[config.spatial_dims]
    spatial = tuple(data.draw(st.integers(1, limit), label=f"size{a}") for a in range(config.spatial_dims))
    tile = data.draw(
        st.none()
        | st.integers(1, 3 * max(r.min_size for r in rules))
        | st.tuples(*(st.integers(1, 200) for _ in rules)),
        label="tile_size",
    )
    batch_size = data.draw(st.integers(1, 3), label="batch_size")
    images = data.draw(st.sampled_from([0, 1, 2]), label="images")  # 0: a (C, *spatial) image
    image = torch.randn(max(images, 1), config.in_channels, *spatial)
    plan = plan_tiles(config, spatial, tile_size=tile, batch_size=batch_size)
    event(f"tiles: {'one' if plan.num_tiles == 1 else 'several'}")
    event(f"image smaller than the halo: {any(s <= r.halo for s, r in zip(spatial, rules, strict=True))}")
    event(f"valid image size: {shapes.is_valid_input_shape(config, spatial)}")
    got = predict_tiled(model, image if images else image[0], tile_size=tile, batch_size=batch_size, progress=False)
    want = whole_image_forward(model, image)
    assert got.shape == (want.shape if images else want.shape[1:])
    torch.testing.assert_close(got if images else got[None], want, rtol=0, atol=1e-5)


def _valid_padding_possible(d: dict) -> bool:
    """`down: first_conv` and residual units after up-sampling or in the head need same padding."""
    units = [isinstance(d.get(k), dict) and d[k].get("residual_unit") for k in ("up", "head")]
    down = d["down"] if isinstance(d["down"], str) else d["down"]["type"]
    return down != "first_conv" and not any(units)


@given(st.sampled_from([1, 2, 3]), st.data())
def test_valid_plan_covers_the_image_on_the_pooling_grid(dims: int, data: st.DataObject) -> None:
    raw = config_dicts(dims=(dims,), full_resolution=True).filter(_valid_padding_possible)
    config = data.draw(raw.map(lambda d: UNetConfig(**{**d, "padding": "valid"})))
    spatial = tuple(data.draw(st.integers(1, 3000)) for _ in range(dims))
    tile = data.draw(st.integers(1, 3000))
    plan = plan_tiles(config, spatial, tile_size=tile)
    assert shapes.is_valid_input_shape(config, plan.tile_input)
    assert plan.tile_output == shapes.output_shape(config, plan.tile_input)
    for axis, (size, starts) in enumerate(zip(spatial, plan.starts, strict=True)):
        rule, t_in, t_out = shapes.axis_rule(config, axis), plan.tile_input[axis], plan.tile_output[axis]
        asked = shapes.nearest_valid_input_size(config, tile, axis=axis)
        assert starts[0] == 0 and all(s % rule.period == 0 for s in starts)  # on the pooling grid
        assert all(0 < b - a <= t_out for a, b in itertools.pairwise(starts))  # no gaps
        assert starts[-1] < size <= starts[-1] + t_out  # covered, no useless tile
        if len(starts) == 1:
            assert t_in == shapes.input_size_for_output(config, size, axis=axis)
        else:
            assert t_in <= max(asked, shapes.input_size_for_output(config, rule.period, axis=axis))
    assert plan.computed_ratio == plan.num_tiles * math.prod(plan.tile_input) / math.prod(spatial)


def test_paper_plans() -> None:
    paper = UNetConfig()
    plan = plan_tiles(paper, (2048, 2048), tile_size=572)
    # 6 tiles per axis are needed at 572; 540 (-> 356, on the 16-pixel grid every 352) suffices
    assert (plan.tile_input, plan.tile_output, plan.tiles_per_axis) == ((540, 540), (356, 356), (6, 6))
    assert plan.halo == (92, 92) and tuple(plan.starts[0]) == (0, 352, 704, 1056, 1408, 1760)
    small = plan_tiles(paper, (5, 300))
    assert small.tile_input == (204, 492) and small.num_tiles == 1  # the smallest outputs >= 5 and >= 300
    budgets = [2**26, 2**28, 2**30, 2**32]
    plans = [plan_tiles(paper, (2048, 2048), memory_budget=b) for b in budgets]
    for budget, p in zip(budgets, plans, strict=True):
        assert p.memory_bytes <= budget and p.memory_budget == budget
    ratios = [p.computed_ratio for p in plans]
    assert ratios == sorted(ratios, reverse=True) and ratios[0] > ratios[-1]
    assert plan_tiles(paper, (2048, 2048), batch_size=4).memory_bytes <= 2**30


def test_auto_plan_uses_the_smallest_tile_when_nothing_fits() -> None:
    paper = UNetConfig()
    plan = plan_tiles(paper, (1000, 1000), memory_budget=1)
    assert plan.tile_input == (204, 204)  # the smallest tile that outputs a whole period (20 >= 16)
    assert plan.memory_bytes > 1


def test_auto_plan_of_a_long_signal_is_quick_and_whole() -> None:
    config = UNetConfig(spatial_dims=1, depth=1, base_channels=4)
    plan = plan_tiles(config, (100_000,))  # 50_000 valid tile sizes: a few hundred are compared
    assert plan.num_tiles == 1 and plan.tile_output == (100_000,)
    with pytest.raises(ValueError, match=r"image_shape=\(0,\) must be 1 positive ints"):
        plan_tiles(config, (0,))


def _constant_model(config: UNetConfig) -> UNet:
    """A model whose output is 1 everywhere: blended tiles then show the sum of the weights."""
    model = build_unet(config)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.head.bias.fill_(1.0)
    return model


@given(st.sampled_from([1, 2, 3]), st.data())
def test_same_padding_blend_weights_sum_to_one(dims: int, data: st.DataObject) -> None:
    config = UNetConfig(
        spatial_dims=dims, depth=data.draw(st.integers(1, 3)), base_channels=1, channel_multiplier=1,
        convs_per_block=1, padding="same", out_channels=2, init="torch", dropout={"rate": 0.0},
    )  # fmt: skip
    limit = {1: 300, 2: 60, 3: 20}[dims]
    spatial = tuple(data.draw(st.integers(1, limit)) for _ in range(dims))
    tile = data.draw(st.integers(limit // 6 if dims == 1 else limit // 2, limit))
    overlap = data.draw(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9] if dims == 1 else [0.0, 0.1, 0.25, 0.5]))
    blend = data.draw(st.sampled_from(["gaussian", "constant"]))
    plan = plan_tiles(config, spatial, tile_size=tile, overlap=overlap)
    for size, starts, t in zip(spatial, plan.starts, plan.tile_input, strict=True):
        steps = [b - a for a, b in itertools.pairwise(starts)]
        assert starts[0] == 0 and starts[-1] + t >= size
        assert all(0 < s <= max(1, math.floor(t * (1 - overlap))) for s in steps)
    image = torch.randn(config.in_channels, *spatial)
    options = dict(
        tile_size=tile, overlap=overlap, blend=blend, batch_size=data.draw(st.integers(1, 8)), progress=False
    )
    ones = predict_tiled(_constant_model(config), image, **options)
    torch.testing.assert_close(ones, torch.ones(2, *spatial), rtol=0, atol=1e-5)
    model = build_unet(config.model_copy(update={"init": "paper"})).eval()
    out = predict_tiled(model, image, **options)
    assert out.shape == (2, *spatial) and torch.isfinite(out).all()


@given(config_dicts(dims=(1, 2, 3), max_depth=3, full_resolution=True), st.data())
def test_same_padding_one_tile_without_overlap_equals_forward(raw: dict, data: st.DataObject) -> None:
    config = UNetConfig(**{**raw, "padding": "same"})
    spatial = data.draw(valid_shapes(config, max_steps=1 if config.spatial_dims == 3 else 2))
    model = build_unet(config).eval()
    image = torch.randn(2, config.in_channels, *spatial)
    tile = data.draw(st.sampled_from([None, max(spatial), 10_000]))
    # both images in one batch, as in the forward pass (group norm needs 2 values per channel)
    got = predict_tiled(model, image, tile_size=tile, batch_size=2, overlap=0, blend="constant", progress=False)
    with torch.no_grad():
        want = model(image)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


TINY = UNetConfig(depth=2, base_channels=2, channel_multiplier=1, in_channels=2, init="torch")


@pytest.mark.parametrize(
    ("image", "error", "match"),
    [
        (torch.zeros(1, 40, 40), ValueError, r"has 1 channels but in_channels=2"),
        (torch.zeros(40, 40), InputShapeError, r"has 2 dims but spatial_dims=2 needs \(C, \*spatial\)"),
        (torch.zeros(1, 2, 3, 40, 40), InputShapeError, r"has 5 dims"),
        (torch.zeros(2, 0, 40), ValueError, r"is empty"),
        (torch.zeros(2, 40, 40).index_fill_(2, torch.tensor([39]), math.nan), ValueError, r"contains NaN"),
    ],
)
def test_bad_images_fail_before_any_compute(image: torch.Tensor, error: type, match: str) -> None:
    model = build_unet(TINY)
    calls = []
    model.register_forward_pre_hook(lambda m, args: calls.append(1))
    with pytest.raises(error, match=match):
        predict_tiled(model, image, progress=False)
    assert not calls


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"overlap": 0.5}, r"overlap=0.5 applies to padding='same' only"),
        ({"blend": "linear"}, r"blend='linear' must be 'gaussian' or 'constant'"),
        ({"tile_size": (100, 100, 100)}, r"tile_size=\(100, 100, 100\) must be a positive int or 2 positive"),
        ({"tile_size": 100.5}, r"tile_size=100.5 must be a positive int or 2 positive ints"),
        ({"tile_size": 0}, r"tile_size=0 must be"),
        ({"batch_size": 0}, r"batch_size=0 must be a positive int"),
        ({"tile_size": 100, "memory_budget": 2**20}, r"give tile_size or memory_budget, not both"),
    ],
)
def test_bad_options(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        predict_tiled(build_unet(TINY), torch.zeros(2, 30, 30), progress=False, **options)


def test_training_mode_restored_and_result_is_a_normal_tensor() -> None:
    config = TINY.model_copy(update={"deep_supervision": (1,), "norm": "batch"})
    model = build_unet(config).train()
    out = predict_tiled(model, torch.randn(2, 50, 30), tile_size=60, progress=True)
    assert model.training and out.shape == (2, 50, 30)
    out += 1  # not an inference tensor: in-place updates work outside inference mode
    model.eval()
    predict_tiled(model, torch.randn(2, 10, 10), progress=False)
    assert not model.training


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("stream", "progress", "shown"), [(_Terminal, True, True), (_Terminal, False, False), (io.StringIO, True, False)]
)
def test_progress_bar_counts_tiles_on_a_terminal_only(monkeypatch, stream: type, progress: bool, shown: bool) -> None:
    monkeypatch.setattr(sys, "stderr", stream())
    predict_tiled(build_unet(TINY), torch.randn(2, 33, 71), tile_size=60, batch_size=3, progress=progress)
    assert ("8/8" in sys.stderr.getvalue()) == shown


def test_integer_images_and_float64_models() -> None:
    model = build_unet(TINY, dtype=torch.float64).eval()
    image = torch.randint(0, 255, (2, 33, 47), dtype=torch.uint8)
    out = predict_tiled(model, image, tile_size=52, batch_size=4, progress=False)
    assert out.dtype == torch.float64
    want = whole_image_forward(model, image[None].double())[0]
    torch.testing.assert_close(out, want, rtol=0, atol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tiles_of_a_cpu_image() -> None:
    torch.manual_seed(0)
    model = build_unet(TINY).eval()
    image = torch.randn(3, 2, 70, 45)
    want = predict_tiled(model, image, tile_size=60, progress=False)
    model.cuda()
    got = predict_tiled(model, image, tile_size=60, batch_size=5, progress=False)
    assert got.device == image.device
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    on_gpu = predict_tiled(model, image.cuda(), tile_size=60, batch_size=5, progress=False)
    assert on_gpu.is_cuda
    torch.testing.assert_close(on_gpu.cpu(), want, rtol=0, atol=1e-4)
    back = predict_tiled(model, image.cuda(), tile_size=60, device="cpu", progress=False)
    assert back.device.type == "cpu"
    torch.testing.assert_close(back, want, rtol=0, atol=1e-4)
    config = TINY.model_copy(update={"padding": "same"})
    same = build_unet(config).eval()
    want = predict_tiled(same, image, tile_size=32, overlap=0.5, progress=False)
    got = predict_tiled(same.cuda(), image, tile_size=32, overlap=0.5, batch_size=4, progress=False)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_cli_predict(tmp_path, capsys) -> None:
    np = pytest.importorskip("numpy")
    config = TINY.model_copy(update={"in_channels": 1})
    path = tmp_path / "tiny.json"
    path.write_text(config.model_dump_json())
    model = build_unet(config).eval()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    image = np.random.default_rng(0).standard_normal((33, 71)).astype(np.float32)
    np.save(tmp_path / "in.npy", image)
    args = [str(path), "--weights", str(tmp_path / "w.pt"), "--input", str(tmp_path / "in.npy")]
    assert main(["predict", *args, "--output", str(tmp_path / "out.npy"), "--tile-size", "60", "--no-progress"]) == 0
    want = predict_tiled(model, torch.from_numpy(image)[None], tile_size=60, progress=False)
    assert np.array_equal(np.load(tmp_path / "out.npy"), want.numpy())
    assert "plan: 33x71 image, valid padding: 2x4 = 8 tiles of 60x60 -> 20x20" in capsys.readouterr().err
    assert main(["predict", *args, "--output", str(tmp_path / "x.npy"), "--dry-run"]) == 0
    assert not (tmp_path / "x.npy").exists()
    np.save(tmp_path / "bad.npy", np.zeros((3, 33, 71), np.float32))
    bad = [*args[:3], "--input", str(tmp_path / "bad.npy"), "--output", str(tmp_path / "x.npy")]
    assert main(["predict", *bad]) == 1
    assert "has 3 channels but in_channels=1" in capsys.readouterr().err
    torch.save({"nope": torch.zeros(1)}, tmp_path / "w2.pt")
    assert main(["predict", *args[:1], "--weights", str(tmp_path / "w2.pt"), *args[3:], "--output", "x.npy"]) == 1
    assert "not a state_dict of this config" in capsys.readouterr().err
    save_unet(model, tmp_path / "m.safetensors")  # a checkpoint as CONFIG, or as --weights
    out = ["--input", str(tmp_path / "in.npy"), "--tile-size", "60", "--no-progress"]
    assert main(["predict", str(tmp_path / "m.safetensors"), *out, "--output", str(tmp_path / "c.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "c.npy"), want.numpy())
    ckpt = ["--weights", str(tmp_path / "m.safetensors")]
    assert main(["predict", str(path), *ckpt, *out, "--output", str(tmp_path / "d.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "d.npy"), want.numpy())
    other = tmp_path / "other.json"
    other.write_text(config.model_copy(update={"out_channels": 3}).model_dump_json())
    assert main(["predict", str(other), *ckpt, *out, "--output", str(tmp_path / "e.npy")]) == 1
    assert "differs from" in capsys.readouterr().err


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
