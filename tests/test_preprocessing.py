"""The preprocessing spec (unetgen.config.preprocessing) and its application
(unetgen.predict.preprocess): validation with file positions, the committed JSON Schema, each
step against its formula, layouts, lazy windows of large images, and the bounded sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from jsonschema import Draft202012Validator
from scipy import ndimage

from unetgen.config.io import ConfigError
from unetgen.config.preprocessing import (
    SCHEMA_PATH,
    Preprocessing,
    check_channels,
    dump_preprocessing,
    load_preprocessing,
    schema_text,
)
from unetgen.predict.preprocess import (
    EXACT_VOXELS,
    prepare_image,
    preprocess,
    resolve,
    sample_values,
    to_model_layout,
)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")  # tiles of tiny networks: one thread is faster


def test_committed_schema_is_current_and_validates_a_spec() -> None:
    committed = (ROOT / SCHEMA_PATH).read_text()
    assert committed == schema_text(), f"{SCHEMA_PATH} is stale; regenerate it from schema_text()"
    schema = json.loads(committed)
    Draft202012Validator.check_schema(schema)
    spec = {"axes": "zyx", "normalize": [{"type": "scale_range", "max_percentile": 99.8}, "clip"]}
    assert not list(Draft202012Validator(schema).iter_errors(spec))
    assert list(Draft202012Validator(schema).iter_errors({"normalize": [{"min_percentile": 1}]}))  # no type
    assert "description" in schema["$defs"]["ScaleRange"]["properties"]["mode"]


def test_problems_have_file_line_column(tmp_path: Path) -> None:
    path = tmp_path / "pre.yaml"
    path.write_text(
        "axes: zyx\n"
        "normalize:\n"
        "  - type: scale_range\n"
        "    min_percentil: 1\n"
        "  - type: scale_rang\n"
        "  - type: zero_mean_unit_variance\n"
        "    mode: per_dataset\n"
        "    mean: 3\n"
        "units: micrometer\n"
    )
    with pytest.raises(ConfigError) as info:
        load_preprocessing(path)
    lines = [line.removeprefix(f"{path}:") for line in str(info.value).splitlines()]
    assert lines == [
        "4:5: normalize[0].min_percentil: unknown field 'min_percentil'; did you mean 'min_percentile'?",
        "5:5: normalize[1].type: unknown normalize type 'scale_rang'; did you mean 'scale_range'? "
        "(one of: scale_range, zero_mean_unit_variance, scale_linear, clip)",
        "6:5: normalize[2]: zero_mean_unit_variance with mode per_dataset needs the stored mean and std "
        "(missing: std); or use mode per_sample to measure each image",
        "9:1: units: unknown field 'units'; did you mean 'unit'?",
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"normalize": [{"type": "scale_range", "max_percentile": 0.998}]}, "greater than 1"),
        ({"normalize": [{"type": "scale_range", "min_percentile": 50, "max_percentile": 20}]}, "must be below"),
        ({"normalize": [{"type": "scale_range", "low": 3, "high": 9}]}, "mode per_sample measures each image"),
        ({"normalize": [{"type": "scale_range", "mode": "per_dataset", "low": 9, "high": 3}]}, "must be below"),
        ({"normalize": [{"type": "scale_linear", "gain": [1, 2], "offset": [0, 1, 2]}]}, "one entry per channel"),
        ({"normalize": [{"type": "clip"}]}, "needs min, max or both"),
        ({"axes": "yx", "pixel_size": {"z": 1.0}}, "does not have"),
        ({"outputs": {"classes": ["a", "a"]}}, "own name"),
        ({"axes": "xyz"}, "Input should be"),
    ],
)
def test_invalid_specs_name_the_field(spec: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_preprocessing(spec)


def test_round_trip_and_channel_check(tmp_path: Path) -> None:
    spec = load_preprocessing(
        {
            "axes": "cyx",
            "pixel_size": {"y": 0.2, "x": 0.2},
            "normalize": [{"type": "scale_linear", "gain": [2, 3], "offset": 1}],
            "outputs": {"classes": ["background", "cell"]},
        }
    )
    for name in ("p.json", "p.yaml"):
        dump_preprocessing(spec, tmp_path / name)
        assert load_preprocessing(tmp_path / name) == spec
    check_channels(spec, 2, 2)
    with pytest.raises(ValueError, match=r"normalize\[0\].gain has 2 values but the model has in_channels=3"):
        check_channels(spec, 3, 2)
    with pytest.raises(ValueError, match=r"outputs\.classes names 2 channels but the model has out_channels=3"):
        check_channels(spec, 2, 3)


# ---------------------------------------------------------------------------------------------
# application


def test_steps_follow_their_formulas() -> None:
    rng = np.random.default_rng(0)
    image = rng.gamma(2.0, 100.0, size=(2, 30, 40)).astype(np.float32)
    spec = load_preprocessing({"normalize": [{"type": "scale_range", "min_percentile": 2, "max_percentile": 98}]})
    lo, hi = np.percentile(image, [2, 98], axis=(1, 2))
    want = (image - lo[:, None, None]) / (hi - lo + 1e-6)[:, None, None]
    np.testing.assert_allclose(preprocess(image, spec), want, rtol=1e-5, atol=1e-6)

    joint = load_preprocessing({"normalize": [{"type": "scale_range", "per_channel": False}]})
    lo, hi = np.percentile(image, [1, 99.8])
    np.testing.assert_allclose(preprocess(image, joint), (image - lo) / (hi - lo + 1e-6), rtol=1e-5, atol=1e-6)

    stored = load_preprocessing(
        {"normalize": [{"type": "scale_range", "mode": "per_dataset", "low": [10, 20], "high": 500}]}
    )
    want = (image - np.array([10, 20])[:, None, None]) / (np.array([490, 480])[:, None, None] + 1e-6)
    np.testing.assert_allclose(preprocess(image, stored), want, rtol=1e-5)

    zmuv = load_preprocessing({"normalize": ["zero_mean_unit_variance", {"type": "clip", "min": -1, "max": 1.5}]})
    m, s = image.mean(axis=(1, 2), keepdims=True), image.std(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(preprocess(image, zmuv), np.clip((image - m) / (s + 1e-6), -1, 1.5), atol=1e-5)

    fixed = load_preprocessing(
        {"normalize": [{"type": "zero_mean_unit_variance", "mode": "per_dataset", "mean": 100, "std": [50, 25]}]}
    )
    want = (image - 100) / (np.array([50, 25])[:, None, None] + 1e-6)
    np.testing.assert_allclose(preprocess(image, fixed), want, rtol=1e-5)

    linear = load_preprocessing({"normalize": [{"type": "scale_linear", "gain": [2, 3], "offset": -1}]})
    np.testing.assert_allclose(preprocess(image, linear), image * np.array([2, 3])[:, None, None] - 1, rtol=1e-6)


def test_steps_chain_on_the_output_of_the_steps_before() -> None:
    image = np.arange(100, dtype=np.float32).reshape(1, 10, 10)
    spec = load_preprocessing({"normalize": [{"type": "clip", "max": 49}, "zero_mean_unit_variance"]})
    clipped = np.minimum(image, 49)
    np.testing.assert_allclose(preprocess(image, spec), (clipped - clipped.mean()) / (clipped.std() + 1e-6), atol=1e-5)


@pytest.mark.parametrize(("axes", "shape"), [("yxc", (20, 30, 3)), ("cyx", (3, 20, 30)), ("zyx", (4, 20, 30))])
def test_layouts_and_torch_match_numpy(axes: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 4000, size=shape).astype(np.uint16)
    spec = load_preprocessing({"axes": axes, "normalize": ["scale_range"]})
    out = preprocess(raw, spec)
    laid = to_model_layout(raw, spec)
    assert out.dtype == np.float32 and out.shape == laid.shape and laid.shape[0] == (1 if "c" not in axes else 3)
    torch_out = preprocess(torch.from_numpy(raw.astype(np.int32)), spec)
    assert isinstance(torch_out, torch.Tensor) and torch_out.dtype == torch.float32
    np.testing.assert_allclose(torch_out.numpy(), out, rtol=1e-6)
    lazy = prepare_image(raw, spec)  # small: exact statistics, windows equal the whole
    assert lazy.shape == out.shape and lazy.dtype == np.float32
    np.testing.assert_array_equal(lazy[:, 2:9, 5:17], out[:, 2:9, 5:17])
    with pytest.raises(ValueError, match="axes"):
        preprocess(raw[..., None], spec)


def test_no_spec_keeps_the_image() -> None:
    image = np.ones((1, 8, 8), dtype=np.uint8)
    assert preprocess(image, None).dtype == np.float32
    assert preprocess(image, Preprocessing()).tolist() == image.astype(np.float32).tolist()
    assert prepare_image(image, None)[:, :2, :2].shape == (1, 2, 2)


# ---------------------------------------------------------------------------------------------
# images larger than memory: the bounded sample


def _nuclei(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A uint16 stack of bright blobs (10 % of the volume) on a dim background, with shot noise."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), 4)
    mean = 300 + 3000 * (field > np.quantile(field, 0.9)) + 100 * field / field.std()
    return rng.poisson(np.clip(mean, 1, None)).astype(np.uint16)


def _rank(sorted_values: np.ndarray, value: float) -> tuple[float, float]:
    """The percentile ranks (lowest, highest) that `value` has among `sorted_values`."""
    n = sorted_values.size
    return (
        100 * np.searchsorted(sorted_values, value, "left") / n,
        100 * np.searchsorted(sorted_values, value, "right") / n,
    )


class _Counting:
    """An array-like that counts the voxels read."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.shape, self.dtype, self.reads, self.voxels = array, array.shape, array.dtype, 0, 0

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        out = self.array[key]
        self.reads, self.voxels = self.reads + 1, self.voxels + out.size
        return out


@pytest.mark.parametrize(
    ("shape", "options"),
    [
        ((4096, 2048), {}),  # the defaults: 8 Mi voxels > EXACT_VOXELS, 8 x 8 of 32 x 16 blocks read
        ((96, 256, 256), {"block": 64, "max_blocks": 8, "max_per_block": 4096}),  # 2 x 2 x 2 of 2 x 4 x 4
        ((64, 300, 300), {"block": 32, "max_blocks": 27, "max_per_block": 4096}),  # 3 x 3 x 3, edge blocks
    ],
)
def test_bounded_sample_approximates_the_exact_percentiles(shape: tuple[int, ...], options: dict) -> None:
    """Tolerance: the sampled 1st and 99.8th percentiles have a rank within 0.5 percentage points
    of the requested one in the whole image, and lie within 2 % of the exact (p99.8 - p1) of the
    exact value; the median within 2 points of rank. (With the defaults, on the 8 Mi-voxel image,
    the ranks are within 0.06 points and the values within 0.1 % of the span.)"""
    image = _nuclei(shape, seed=len(shape))
    block = options.get("block", 128)
    counting = _Counting(image[None])
    sample = sample_values(counting, **options)[0]
    max_blocks = options.get("max_blocks", 64)
    assert counting.reads <= max_blocks and counting.voxels <= max_blocks * block ** len(shape)
    assert sample.size <= max_blocks * options.get("max_per_block", 1 << 16) < image.size
    flat = np.sort(image.reshape(-1)).astype(np.float32)
    exact = np.percentile(flat, [1, 50, 99.8])
    approx = np.percentile(sample, [1, 50, 99.8])
    span = exact[2] - exact[0]
    for p, a, e, points in zip((1, 50, 99.8), approx, exact, (0.5, 2.0, 0.5), strict=True):
        lo, hi = _rank(flat, a)
        assert lo - points <= p <= hi + points, (p, a, e, lo, hi)
        if p != 50:
            assert abs(a - e) <= 0.02 * span, (p, a, e)


def test_large_image_windows_use_one_set_of_statistics() -> None:
    image = _nuclei((96, 256, 256), seed=5)
    spec = load_preprocessing({"axes": "zyx", "normalize": ["scale_range"]})
    options = {"block": 64, "max_blocks": 8, "max_per_block": 4096}
    lazy = prepare_image(image, spec, **options)
    normalizer = resolve(spec, sample_values(image[None], **options))
    assert lazy.normalizer == normalizer
    assert prepare_image(image, spec, normalizer=normalizer).normalizer is normalizer  # measured elsewhere
    window = lazy[:, 10:20, 100:140, 0:256]
    np.testing.assert_allclose(window, normalizer.apply(image[None, 10:20, 100:140].astype(np.float32)))
    exact = preprocess(image, spec)  # the whole image's statistics: close, not equal
    assert np.abs(window - exact[:, 10:20, 100:140]).max() < 0.02
    assert EXACT_VOXELS == 64 * 65536


def test_raw_uint16_stack_predicts_like_the_hand_normalised_one() -> None:
    """The new user's case: a raw uint16 stack through the spec (lazily, window by window, as for
    a stack larger than memory) gives the labels of the hand-normalised stack."""
    import unetgen

    model = unetgen.build_unet(spatial_dims=3, depth=1, base_channels=2, padding="same", dropout=0, seed=0).eval()
    raw = _nuclei((24, 40, 36), seed=2)
    spec = load_preprocessing({"axes": "zyx", "normalize": [{"type": "scale_range", "max_percentile": 99.8}]})
    lo, hi = np.percentile(raw.astype(np.float32), [1, 99.8])
    by_hand = ((raw.astype(np.float32) - lo) / (hi - lo + 1e-6))[None]
    options = {"tile_size": 16, "output_type": "labels", "progress": False}
    want = unetgen.predict_tiled(model, torch.from_numpy(by_hand), **options)
    got = unetgen.predict_tiled(model, prepare_image(raw, spec), **options)
    assert torch.equal(got, want)
    assert not torch.equal(unetgen.predict_tiled(model, raw[None].astype(np.float32), **options), want)
