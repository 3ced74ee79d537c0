"""How tiles are computed (issue 20): the inference fast path by default (equal to the eager model
to float rounding, the user's model untouched), test-time mirroring (exact against the
whole-image average for valid padding), autocast (CUDA only; its mechanics on CPU through the
internal `run`), their checks, CLI flags and the resume fingerprint."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_tiling import local_configs, mirror_pad

from unetgen import UNet, UNetConfig, build_unet, load_unet, optimize_for_inference, predict_tiled, save_unet
from unetgen.analysis import shapes
from unetgen.cli import main
from unetgen.model.optimize import InferenceUNet
from unetgen.predict import run as predict_run
from unetgen.predict.inference import inference_model, mirror_flips

pytestmark = pytest.mark.usefixtures("one_thread")


def _trained_stats(model: UNet, size: tuple[int, ...]) -> UNet:
    """Non-trivial batch-norm running statistics, so that folding is tested for real; eval mode."""
    with torch.no_grad():
        model.train()
        for _ in range(3):
            model(torch.randn(2, model.config.in_channels, *size, dtype=next(model.parameters()).dtype) * 3 + 1)
    return model.eval()


def _snapshot(model: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("config", "image_size", "tile"),
    [
        ({"norm": "batch", "depth": 2, "base_channels": 3}, (45, 37), 60),  # 2D valid, several tiles
        ({"norm": "batch", "depth": 2, "base_channels": 3, "padding": "same", "block": "residual"}, (40, 29), 16),
        ({"norm": "batch", "depth": 1, "base_channels": 2, "spatial_dims": 3, "padding": "same"}, (9, 12, 10), 8),
        ({"norm": "batch", "depth": 2, "base_channels": 2, "spatial_dims": 1}, (150,), 60),  # no channels-last in 1D
    ],
)
def test_fast_path_equals_eager_and_leaves_the_model_alone(config: dict, image_size: tuple, tile: int) -> None:
    """float64: folding re-associates (x - mean) * scale * w into x * (w * scale) + b, a relative
    change of a few ulps (~1e-15) per layer; 1e-10 leaves five orders of margin and still fails
    on any wrong fold (errors of order 1). float32: the same within 1e-4 of outputs of order 1."""
    torch.manual_seed(0)
    model = build_unet(config).double()
    _trained_stats(model, shapes.min_input_shape(model.config))
    model.train()  # predict_tiled predicts in eval mode and gives the mode back
    before = _snapshot(model)
    params = [(p.data_ptr(), p.requires_grad, p.is_contiguous()) for p in model.parameters()]
    image = torch.randn(2, model.config.in_channels, *image_size, dtype=torch.float64)
    fast = predict_tiled(model, image, tile_size=tile, batch_size=2, progress=False)
    eager = predict_tiled(model, image, tile_size=tile, batch_size=2, progress=False, optimize=False)
    torch.testing.assert_close(fast, eager, rtol=0, atol=1e-10)
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert [(p.data_ptr(), p.requires_grad, p.is_contiguous()) for p in model.parameters()] == params
    assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    model.float()
    fast32 = predict_tiled(model, image.float(), tile_size=tile, batch_size=2, progress=False)
    torch.testing.assert_close(fast32, eager.float(), rtol=0, atol=1e-4 * max(1.0, eager.abs().max().item()))


def test_an_optimised_model_runs_as_given() -> None:
    """optimize_for_inference's copy (also the way to compile) is not optimised again."""
    model = build_unet({"norm": "batch", "depth": 1, "base_channels": 2}).eval()
    fast = optimize_for_inference(model)
    assert isinstance(fast, InferenceUNet) and inference_model(fast, True) is fast
    assert inference_model(model, False) is model
    image = torch.randn(1, 40, 40)
    torch.testing.assert_close(predict_tiled(fast, image, progress=False), predict_tiled(model, image, progress=False))


def _whole_image_tta(model: UNet, image: torch.Tensor, axes: tuple[int, ...], output_type: str) -> torch.Tensor:
    """Reference, independent of unetgen.predict: the whole image mirror-padded by the halo and up
    to a valid size (as test_tiling.whole_image_forward), predicted once per flip of `axes` of the
    padded image, flipped back, averaged (probabilities, or logits for "logits"), cropped."""
    config, spatial = model.config, image.shape[2:]
    pads = []
    for axis, size in enumerate(spatial):
        full = shapes.input_size_for_output(config, size, axis=axis)
        halo = shapes.axis_rule(config, axis).halo
        pads.append((halo, full - size - halo))
    padded = mirror_pad(image, pads)
    flips = [c for k in range(len(axes) + 1) for c in itertools.combinations([2 + a for a in axes], k)]
    total = 0
    with torch.no_grad():
        for dims in flips:
            y = model(padded.flip(dims)).flip(dims)
            if output_type != "logits":
                y = y.sigmoid() if y.shape[1] == 1 else y.softmax(1)
            total = total + y
    return (total / len(flips))[(slice(None), slice(None), *(slice(0, s) for s in spatial))]


@settings(max_examples=12)
@given(local_configs(), st.data())
def test_valid_tta_equals_the_whole_image_average(config: UNetConfig, data: st.DataObject) -> None:
    torch.manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    model = build_unet(config).eval()
    dims = config.spatial_dims
    limit = {1: 200, 2: 50, 3: 16}[dims]
    spatial = tuple(data.draw(st.integers(1, limit), label=f"size{a}") for a in range(dims))
    axes = data.draw(st.none() | st.sets(st.integers(0, dims - 1), min_size=1).map(sorted), label="tta_axes")
    tile = data.draw(st.none() | st.integers(1, 80), label="tile_size")
    output_type = data.draw(st.sampled_from(["logits", "probabilities", "labels"]), label="output_type")
    image = torch.randn(1, config.in_channels, *spatial)
    options = dict(tile_size=tile, batch_size=data.draw(st.integers(1, 3)), tta="flip", tta_axes=axes, progress=False)
    got = predict_tiled(model, image, output_type=output_type, **options)
    flipped = tuple(range(dims)) if axes is None else tuple(axes)
    if output_type == "labels":  # the argmax (one channel: > 0.5) of the averaged probabilities
        p = predict_tiled(model, image, output_type="probabilities", **options)
        want = p.argmax(1) if p.shape[1] > 1 else p[:, 0] > 0.5
        assert torch.equal(got.long(), want.long())
        return
    want = _whole_image_tta(model, image, flipped, output_type)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_tta_averages_probabilities_or_logits_over_all_flips() -> None:
    """One same-padding tile (no blending): the result is the mean over the 4 flips of a 2D
    image, of the probabilities or of the logits (nnU-Net v2's choice for logits)."""
    torch.manual_seed(1)
    model = build_unet({"padding": "same", "depth": 2, "base_channels": 2, "out_channels": 3}).eval().double()
    image = torch.randn(1, 1, 32, 32, dtype=torch.float64)  # float64: the fast path rounds differently
    assert mirror_flips((0, 1)) == [(), (2,), (3,), (2, 3)]  # identity first, as nnU-Net
    with torch.no_grad():
        outs = [model(image.flip(d)).flip(d) for d in mirror_flips((0, 1))]
    options = dict(tile_size=32, tta="flip", progress=False)
    logits = predict_tiled(model, image, **options)
    probs = predict_tiled(model, image, output_type="probabilities", **options)
    torch.testing.assert_close(logits, sum(outs) / 4, rtol=0, atol=1e-12)
    torch.testing.assert_close(probs, sum(o.softmax(1) for o in outs) / 4, rtol=0, atol=1e-12)
    one_axis = predict_tiled(model, image, tile_size=32, tta="flip", tta_axes=[1], progress=False)
    torch.testing.assert_close(one_axis, (outs[0] + outs[2]) / 2, rtol=0, atol=1e-12)
    assert not torch.allclose(logits, outs[0], atol=1e-3)  # mirroring changed something


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"optimize": "yes"}, r"optimize='yes' must be True .* or False"),
        ({"optimize": 1}, "optimize=1 must be"),
        ({"amp": "bf16"}, r"amp='bf16' runs on CUDA only, the model is on cpu"),
        ({"amp": "int8"}, r"amp='int8' must be None, 'bf16' or 'fp16'"),
        ({"tta": "rotate"}, r"tta='rotate' must be None or 'flip'"),
        ({"tta_axes": (0,)}, r"tta_axes=\(0,\) needs tta='flip'"),
        ({"tta": "flip", "tta_axes": (2,)}, r"tta_axes=\(2,\) must be distinct spatial axes in 0..1"),
        ({"tta": "flip", "tta_axes": (0, 0)}, "must be distinct spatial axes"),
        ({"tta": "flip", "tta_axes": ()}, "must be distinct spatial axes"),
        ({"tta": "flip", "tta_axes": "01"}, "must be distinct spatial axes"),
        ({"tta": "flip", "tta_axes": (True,)}, "must be distinct spatial axes"),
        ({"tta": "flip", "tta_axes": (0.0,)}, "must be distinct spatial axes"),
        ({"tta": "flip", "tta_axes": 1}, "must be distinct spatial axes"),
    ],
)
def test_bad_options(options: dict, match: str) -> None:
    model = build_unet({"depth": 1, "base_channels": 1})
    with pytest.raises(ValueError, match=match):
        predict_tiled(model, torch.zeros(1, 30, 30), progress=False, **options)


def test_tta_axes_take_numpy_and_torch_integers() -> None:
    model = build_unet({"depth": 1, "base_channels": 1, "padding": "same"}).eval()
    image = torch.randn(1, 16, 16)
    want = predict_tiled(model, image, tta="flip", tta_axes=[1, 0], progress=False)
    got = predict_tiled(model, image, tta="flip", tta_axes=(np.int64(0), torch.tensor(1)), progress=False)
    assert torch.equal(got, want)


def test_fingerprint_names_the_computation() -> None:
    model = build_unet({"depth": 1, "base_channels": 1}).eval()
    image = torch.zeros(1, 30, 30)
    prints = {
        repr(o): predict_run.prepare(model, image, **o)[0].fingerprint(model)
        for o in ({}, {"optimize": False}, {"tta": "flip"}, {"tta": "flip", "tta_axes": [1]})
    }
    assert len(set(prints.values())) == 4
    job = predict_run.prepare(model, image)[0]
    assert job.fingerprint(model) != dataclasses.replace(job, amp="bf16").fingerprint(model)


def test_autocast_mechanics_on_cpu() -> None:
    """amp is refused on CPU (slow there), so its path is run through the internal `run` with a
    job that says bf16: outputs come back in the model's dtype, within bf16 error of float32 (8
    mantissa bits: ~0.4% per op; 5% of the output range for this 3-conv-deep network)."""
    torch.manual_seed(0)
    model = build_unet({"padding": "same", "depth": 1, "base_channels": 2}).eval()
    image = torch.randn(1, 1, 24, 24)
    job, source, sink = predict_run.prepare(model, image, tile_size=16, overlap=0.25)
    want = predict_tiled(model, image[0], tile_size=16, overlap=0.25, progress=False)
    predict_run.run(model, dataclasses.replace(job, amp="bf16"), source, sink, progress=False)
    got = sink.target[0]
    assert got.dtype == torch.float32 and not torch.equal(got, want)
    torch.testing.assert_close(got, want, rtol=0, atol=0.05 * want.abs().max().item())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="autocast is for CUDA; needs a CUDA device")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_on_cuda(amp: str) -> None:
    torch.manual_seed(0)
    model = build_unet({"padding": "same", "depth": 2, "base_channels": 4, "norm": "batch"}).eval().cuda()
    image = torch.randn(1, 1, 100, 100)
    want = predict_tiled(model, image, tile_size=48, progress=False)
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    got = predict_tiled(model, image, tile_size=48, amp=amp, progress=False)
    assert got.dtype == torch.float32 and got.device == image.device
    torch.testing.assert_close(got, want, rtol=0, atol=0.05 * want.abs().max().item())


def test_worker_model_is_optimised_once(tmp_path) -> None:
    """A Dask task (run here in-process) predicts with its worker's cached fast path and gives
    the in-memory result, with test-time mirroring too."""
    pytest.importorskip("zarr")
    pytest.importorskip("distributed")
    from unetgen.predict import distributed as unet_dask
    from unetgen.predict.arrays import create_output

    torch.manual_seed(0)
    model = _trained_stats(build_unet({"norm": "batch", "depth": 2, "base_channels": 2}), (44, 44))
    checkpoint = save_unet(model, tmp_path / "m.safetensors")
    model = load_unet(checkpoint)
    pixels = np.random.default_rng(0).standard_normal((1, 50, 70), dtype=np.float32)
    options = dict(output_type="probabilities", block_shape=None, blend="gaussian", tta="flip")
    out = create_output(tmp_path / "out.zarr", model, pixels, output_type="probabilities", tile_size=80)
    job, _, _ = predict_run.prepare(model, pixels, out, tile_size=80, output_type="probabilities", tta="flip")
    loads = unet_dask.loads
    for blocks in ([0, 1], list(range(2, job.num_blocks))):
        unet_dask._predict_blocks(str(checkpoint), pixels, out, job.plan, options, None, blocks, "cpu")
    assert unet_dask.loads == loads + 1
    assert isinstance(unet_dask.worker_model(checkpoint, "cpu", optimize=True), InferenceUNet)
    want = predict_tiled(model, torch.from_numpy(pixels), tile_size=80, output_type="probabilities", tta="flip")
    torch.testing.assert_close(torch.from_numpy(np.asarray(out[...])), want, rtol=0, atol=1e-5)


def test_cli_flags(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    model = _trained_stats(build_unet({"norm": "batch", "depth": 1, "base_channels": 2, "padding": "same"}), (16, 16))
    checkpoint = save_unet(model, tmp_path / "m.safetensors")
    model = load_unet(checkpoint)
    image = np.random.default_rng(1).random((1, 30, 20), dtype=np.float32)
    np.save(tmp_path / "in.npy", image)
    base = ["predict", str(checkpoint), "--input", str(tmp_path / "in.npy"), "--tile-size", "16", "--no-progress"]
    assert main([*base, "--output", str(tmp_path / "a.npy"), "--tta", "flip", "--tta-axes", "1"]) == 0
    assert "test-time mirroring over axes [1]" in capsys.readouterr().err
    want = predict_tiled(model, torch.from_numpy(image), tile_size=16, tta="flip", tta_axes=[1], progress=False)
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "a.npy")), want, rtol=0, atol=1e-6)
    assert main([*base, "--output", str(tmp_path / "b.npy"), "--no-optimize", "--output-type", "labels"]) == 0
    assert "compute: the model as it is" in capsys.readouterr().err
    for flags, message in [
        (["--tta-axes", "0"], "--tta-axes needs --tta flip"),
        (["--tta", "flip", "--tta-axes", "0,2"], "the config has 2 spatial axes, numbered 0 to 1"),
        (["--amp", "bf16"], "--amp bf16 runs on CUDA only"),
        (["--tta", "flip", "--tta-axes", "0,0"], "not a list of spatial axes"),
    ]:
        with pytest.raises(SystemExit) if "0,0" in flags else contextlib.nullcontext():
            assert main([*base, "--output", str(tmp_path / "c.npy"), *flags]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "c.npy").exists() and math.isfinite(float(np.load(tmp_path / "b.npy").sum()))


def test_instances_are_labelled_from_the_mirrored_prediction() -> None:
    torch.manual_seed(3)
    model = build_unet({"depth": 1, "base_channels": 2, "out_channels": 2, "padding": "same"}).eval()
    image = torch.randn(1, 32, 32)
    mirrored = predict_tiled(model, image, output_type="labels", tta="flip", progress=False)
    plain = predict_tiled(model, image, output_type="labels", progress=False)
    assert not torch.equal(mirrored, plain)  # so that the check below tells them apart
    instances = predict_tiled(model, image, output_type="instances", tta="flip", progress=False)
    assert torch.equal(instances.long() > 0, mirrored.long() > 0)
