"""Issue 19: the preprocessing spec stored with a model is applied wherever the model predicts
(`predict_tiled` in memory and tile by tile, `unetgen predict` in memory and out of core,
`predict_distributed`) and trains (`PatchSampler`), with one set of measured numbers per image;
a model without a spec predicts as before. The new user's case: a raw uint16 TIFF stack gives
the labels of the hand-normalised stack."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

import unetgen
from unetgen.analysis.shapes import InputShapeError
from unetgen.cli import main
from unetgen.config.preprocessing import load_preprocessing
from unetgen.predict import preprocess as pre
from unetgen.predict.preprocess import EXACT_VOXELS, prepare_input, resolve, spec_of
from unetgen.predict.run import prepare
from unetgen.training import PatchSampler

pytestmark = pytest.mark.usefixtures("one_thread")
zarr = pytest.importorskip("zarr")
tifffile = pytest.importorskip("tifffile")

SPEC = {"axes": "zyx", "normalize": [{"type": "scale_range", "min_percentile": 1, "max_percentile": 99.8}]}
LABELS = {"output_type": "labels", "progress": False, "tile_size": 24}


def _stack(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A raw uint16 stack: bright blobs on a dim, noisy background (values in the thousands)."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float32)
    blobs = np.sin(grid[-1] / 3.0) * np.cos(grid[-2] / 4.0) * (np.sin(grid[0] / 2.5) if len(shape) == 3 else 1)
    return rng.poisson(400 + 2500 * (blobs > 0.3)).astype(np.uint16)


def _by_hand(raw: np.ndarray) -> np.ndarray:
    """The stack normalised by hand, in float32: (x - p1) / (p99.8 - p1 + 1e-6), with a channel axis."""
    x = raw.astype(np.float32)
    lo, hi = np.percentile(x, [1, 99.8])
    return ((x - np.float32(lo)) / np.float32(float(hi - lo) + 1e-6))[None]


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The new user's files: a 3D checkpoint saved with a scale_range spec, a raw uint16 TIFF."""
    tmp = tmp_path_factory.mktemp("user")
    model = unetgen.build_unet(spatial_dims=3, depth=1, base_channels=2, padding="same", dropout=0, seed=3).eval()
    ckpt = unetgen.save_unet(model, tmp / "model.safetensors", preprocessing=SPEC)
    raw = _stack((12, 40, 36), seed=1)
    tifffile.imwrite(tmp / "raw.tif", raw)
    model = unetgen.load_unet(ckpt)  # the weights as stored, with the spec
    want = unetgen.predict_tiled(model, torch.from_numpy(_by_hand(raw)), **LABELS, preprocessing=False)
    return {"tmp": tmp, "ckpt": ckpt, "raw": raw, "model": model, "want": want}


def test_checkpoint_spec_is_the_models_and_applied_in_memory(user: dict) -> None:
    model, raw, want = user["model"], user["raw"], user["want"]
    assert spec_of(model) == load_preprocessing(SPEC) and 0 < int(want.sum()) < want.numel()  # both classes
    assert torch.equal(unetgen.predict_tiled(model, torch.from_numpy(raw.astype(np.int32)), **LABELS), want)
    assert torch.equal(unetgen.predict_tiled(model, raw, **LABELS), want)  # an array-like, tile by tile
    as_is = unetgen.predict_tiled(model, raw[None].astype(np.float32), **LABELS, preprocessing=False)
    assert not torch.equal(as_is, want)  # the failure, still there when turned off
    # the spec given explicitly (a mapping) is the stored one
    assert torch.equal(unetgen.predict_tiled(model, raw, **LABELS, preprocessing=SPEC), want)


def test_new_user_case_cli_in_memory_and_out_of_core(user: dict, capsys: pytest.CaptureFixture[str]) -> None:
    tmp, ckpt = user["tmp"], str(user["ckpt"])
    base = ["predict", ckpt, "--input", str(tmp / "raw.tif"), "--output-type", "labels", "--tile-size", "24"]
    assert main([*base, "--output", str(tmp / "labels.npy"), "--no-progress"]) == 0
    assert np.array_equal(np.load(tmp / "labels.npy"), user["want"].numpy())
    assert main([*base, "--output", str(tmp / "labels.zarr"), "--no-progress"]) == 0
    assert np.array_equal(zarr.open_array(tmp / "labels.zarr" / "0", mode="r")[...], user["want"].numpy())
    err = capsys.readouterr().err
    assert err.count("preprocessing: axes zyx, scale_range measured on all 17,280 voxels") == 2, err
    # --no-preprocessing: the raw values as they are
    assert main([*base, "--output", str(tmp / "raw_labels.npy"), "--no-progress", "--no-preprocessing"]) == 0
    as_is = unetgen.predict_tiled(user["model"], user["raw"][None].astype(np.float32), **LABELS, preprocessing=False)
    assert np.array_equal(np.load(tmp / "raw_labels.npy"), as_is.numpy())
    assert "preprocessing:" not in capsys.readouterr().err


def test_new_user_case_on_dask_measures_once(user: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    distributed = pytest.importorskip("distributed")
    from unetgen.predict.distributed import predict_distributed

    tmp = user["tmp"]
    measured = []
    sample = pre.sample_values
    monkeypatch.setattr(pre, "sample_values", lambda image, **kw: measured.append(image.shape) or sample(image, **kw))
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None, silence_logs=40
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        out = predict_distributed(
            user["ckpt"], tmp / "raw.tif", tmp / "dask.zarr", client=client, output_type="labels", tile_size=24,
            block_shape=(12, 16, 16), progress=False,
        )  # fmt: skip
    assert np.array_equal(out[...], user["want"].numpy())
    assert measured == [(1, 12, 40, 36)]  # on the client, once; 9 tasks of workers measured nothing


def test_no_spec_behaves_as_before(tmp_path: Path) -> None:
    model = unetgen.build_unet(spatial_dims=2, depth=1, base_channels=2, dropout=0, seed=0).eval()
    model = unetgen.load_unet(unetgen.save_unet(model, tmp_path / "m.safetensors"))
    assert model.preprocessing is None and spec_of(model) is None
    image = np.random.default_rng(0).standard_normal((1, 30, 28)).astype(np.float32)
    got = unetgen.predict_tiled(model, image, progress=False)
    assert torch.equal(got, unetgen.predict_tiled(model, torch.from_numpy(image), progress=False, preprocessing=False))
    job, _, _ = prepare(model, image)
    assert job.preprocessing is None
    off, _, _ = prepare(model, image)
    assert job.fingerprint(model) == off.fingerprint(model)
    # a spec that neither lays out nor normalises changes nothing
    assert spec_of(model, {"outputs": {"classes": ["a", "b"]}}) is None


def test_fingerprint_holds_the_spec_and_the_numbers(user: dict, tmp_path: Path) -> None:
    model, raw = user["model"], user["raw"]
    cfg = model.config
    prints = {}
    for name, spec in {
        "p1": SPEC,
        "p2": {"axes": "zyx", "normalize": [{"type": "scale_range", "min_percentile": 2}]},
        "zmuv": {"axes": "zyx", "normalize": ["zero_mean_unit_variance"]},
    }.items():
        job, _, _ = prepare(model, prepare_input(cfg, raw, load_preprocessing(spec)))
        prints[name] = job.fingerprint(model)
        assert job.preprocessing["normalizers"][0] and job.preprocessing["raw_dtype"] == "uint16"
    brighter = prepare(model, prepare_input(cfg, raw + np.uint16(100), load_preprocessing(SPEC)))[0]
    prints["brighter"] = brighter.fingerprint(model)  # same spec, other numbers
    assert len(set(prints.values())) == 4
    # resuming into the same output with another normalisation is refused, with the same one resumes
    out = zarr.create_array(tmp_path / "o.zarr", shape=raw.shape, chunks=(12, 16, 16), dtype="uint8")

    def stop(n: int, tile: tuple[int, ...]) -> None:
        raise KeyboardInterrupt

    options = dict(LABELS, out=out)
    with pytest.raises(KeyboardInterrupt):
        unetgen.predict_tiled(model, raw, **options, callback=stop)
    with pytest.raises(ValueError, match="made with other arguments"):
        other = {"axes": "zyx", "normalize": [{"type": "scale_range", "min_percentile": 2}]}
        unetgen.predict_tiled(model, raw, **options, preprocessing=other)
    unetgen.predict_tiled(model, raw, **options)
    assert np.array_equal(out[...], user["want"].numpy())


def test_large_image_in_memory_and_out_of_core_use_one_sample(tmp_path: Path, capsys) -> None:
    """Beyond EXACT_VOXELS the numbers come from the bounded sample, the same for a tensor in
    memory, a NumPy array, a zarr array and a TIFF read tile by tile, and the CLI's two paths."""
    rng = np.random.default_rng(4)
    rows, cols = np.sin(np.arange(2112) / 3.0), np.cos(np.arange(2048) / 4.0)
    raw = (rng.integers(300, 700, (2112, 2048), dtype=np.uint16) + 2500 * (np.outer(rows, cols) > 0.3)).astype(
        np.uint16
    )
    assert raw.size > EXACT_VOXELS
    model = unetgen.build_unet(depth=1, base_channels=2, dropout=0, seed=0).eval()
    # percentiles of integers often fall on the same integer in the sample and the whole image;
    # the standardisation after them shows the sample
    spec = load_preprocessing({"axes": "yx", "normalize": ["scale_range", "zero_mean_unit_variance"]})
    ckpt = unetgen.save_unet(model, tmp_path / "m.safetensors", preprocessing=spec)
    stored = zarr.create_array(tmp_path / "raw.zarr", shape=raw.shape, chunks=(512, 512), dtype="uint16")
    stored[...] = raw
    tifffile.imwrite(tmp_path / "raw.tif", raw, tile=(256, 256))
    from unetgen.predict.arrays import open_image

    found = {
        "tensor": prepare_input(model.config, torch.from_numpy(raw.astype(np.int32)), spec).normalizer,
        "array": prepare_input(model.config, raw, spec).normalizer,
        "zarr": prepare_input(model.config, open_image(tmp_path / "raw.zarr"), spec).normalizer,
        "tiff": prepare_input(model.config, open_image(tmp_path / "raw.tif"), spec).normalizer,
    }
    assert len(set(found.values())) == 1
    exact = resolve(spec, [raw.reshape(-1)])
    assert exact.ops[1] != found["tensor"].ops[1]  # the sample, not every voxel
    assert np.allclose(exact.ops[1].div, found["tensor"].ops[1].div, rtol=0.02)
    base = ["predict", str(ckpt), "--input", str(tmp_path / "raw.tif"), "--dry-run"]
    assert main([*base, "--output", str(tmp_path / "o.npy")]) == 0
    assert main([*base, "--output", str(tmp_path / "o.zarr")]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("preprocessing:")]
    assert (
        len(notes) == 2 and notes[0] == notes[1] and "a sample (at most 64 blocks) of its 4,325,376 voxels" in notes[0]
    ), notes
    sub, div = found["tensor"].ops[1].sub[0], found["tensor"].ops[1].div[0]
    assert f"then (x - {sub:.9g}) / {div:.9g}" in notes[0]


def test_training_uses_the_numbers_prediction_uses() -> None:
    raw = _stack((40, 36), seed=2)
    spec = {"axes": "yx", "normalize": ["scale_range", {"type": "clip", "min": 0, "max": 1}]}
    target = (raw > 1500).astype(np.int64)
    config = {"depth": 1, "base_channels": 2, "dropout": 0}
    options = dict(patch_size=20, seed=7)
    sampler = PatchSampler(config, raw, target, preprocessing=spec, **options)
    cfg = unetgen.build_unet(**config).config
    normalised = prepare_input(cfg, raw, load_preprocessing(spec))[:]
    by_hand = PatchSampler(config, normalised, target, **options)
    for a, b in zip(sampler.batch(3), by_hand.batch(3), strict=True):
        assert torch.equal(a, b)
    assert float(sampler.images[0].max()) <= 1.0
    with pytest.raises(ValueError, match=r"images\[1\]:.*axes"):
        PatchSampler(config, [raw, raw[None, None]], [target, target], preprocessing=spec, **options)


def test_memory_estimate_bounds_a_normalised_window() -> None:
    """`read_bytes` of a prepared image (what `check_memory` adds per tile) bounds the memory one
    window read takes: the raw window, its float32 copy and the normalisation's temporaries."""
    cfg = unetgen.build_unet(spatial_dims=3, in_channels=2, depth=1, base_channels=2).config
    raw = np.random.default_rng(0).integers(0, 4000, (20, 64, 64, 2)).astype(np.uint16)
    spec = load_preprocessing({"axes": "zyxc", "normalize": ["zero_mean_unit_variance", {"type": "clip", "min": -3}]})
    prepared = prepare_input(cfg, raw, spec)
    tile = (20, 48, 48)
    tracemalloc.start()
    window = prepared[:, 0:20, 8:56, 8:56]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert window.shape == (2, *tile) and window.dtype == np.float32
    assert 4 * window.size < peak <= prepared.read_bytes(tile), (peak, prepared.read_bytes(tile))
    # check_memory counts it, through the source's read_bytes
    from unetgen.predict.sources import open_source

    source, _, _ = open_source(cfg, prepared, torch.float32)
    assert source.read_bytes(tile) == prepared.read_bytes(tile)


def test_bad_specs_and_images_are_clear_errors(user: dict, tmp_path: Path, capsys) -> None:
    model, raw = user["model"], user["raw"]
    with pytest.raises(ValueError, match="preprocessing=True is not a spec"):
        unetgen.predict_tiled(model, raw, **LABELS, preprocessing=True)
    with pytest.raises(ValueError, match=r"axes='yx' has 2 spatial axes but the model has spatial_dims=3"):
        unetgen.predict_tiled(model, raw, **LABELS, preprocessing={"axes": "yx", "normalize": ["scale_range"]})
    with pytest.raises(InputShapeError, match=r"axes='zyx' needs 3 \(or 4 with a leading image axis\)"):
        unetgen.predict_tiled(model, raw[0], **LABELS)
    with pytest.raises(ValueError, match="has 2 channels but in_channels=1"):
        unetgen.predict_tiled(model, np.stack([raw, raw], -1), **LABELS, preprocessing={"axes": "zyxc"})
    with pytest.raises(ValueError, match="NaN or infinite values"):
        unetgen.predict_tiled(model, np.where(raw > 3000, np.nan, raw).astype(np.float32), **LABELS)
    with pytest.raises(ValueError, match=r"normalize\[0\].low has 2 values but the model has in_channels=1"):
        bad = {"normalize": [{"type": "scale_range", "mode": "per_dataset", "low": [0, 1], "high": [5, 6]}]}
        unetgen.predict_tiled(model, raw, **LABELS, preprocessing=bad)
    other = unetgen.build_unet(spatial_dims=3, depth=1, base_channels=2)
    other.preprocessing = {"axes": "zyx"}  # not a spec
    with pytest.raises(ValueError, match=r"model\.preprocessing is a dict, not a Preprocessing spec"):
        unetgen.predict_tiled(other, raw, **LABELS)
    # the CLI: one error line, exit 1
    np.save(tmp_path / "flat.npy", raw[0])
    argv = ["predict", str(user["ckpt"]), "--input", str(tmp_path / "flat.npy"), "--output", str(tmp_path / "o.npy")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "axes='zyx'" in err and "--no-preprocessing" in err
