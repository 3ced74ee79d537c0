"""Out-of-core overlap-tile prediction: from array-likes (NumPy, memmap, zarr, TIFF) into writable
arrays, block by block. Equal to the in-memory prediction (valid padding: to one whole-image
forward), resumable after an interruption, memory bounded by the tiles in flight."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_tiling import local_configs, whole_image_forward

from unetgen import UNetConfig, build_unet, predict_tiled, save_unet
from unetgen.cli import main
from unetgen.predict.plan import plan_tiles

zarr = pytest.importorskip("zarr")
from unetgen.predict.arrays import create_output, open_image  # noqa: E402  (needs zarr to be useful)

pytestmark = pytest.mark.usefixtures("one_thread")


@st.composite
def same_configs(draw: st.DrawFn) -> UNetConfig:
    """Tiny same-padding configs with a local output (no instance/group/layer norm)."""
    dims = draw(st.sampled_from([1, 2, 2, 3]))
    return UNetConfig(
        spatial_dims=dims,
        in_channels=draw(st.integers(1, 2)),
        out_channels=draw(st.integers(1, 3)),
        depth=draw(st.integers(1, 2 if dims == 3 else 3)),
        base_channels=1,
        channel_multiplier=1,
        convs_per_block=1,
        padding="same",
        norm=draw(st.sampled_from(["none", "batch"])),
        dropout={"rate": 0.0},
        init="torch",
    )


def _store(kind: str, array: np.ndarray, tmp: Path, name: str):
    """`array` as the array-like `kind`: numpy, a memory-mapped .npy, or a chunked zarr array."""
    match kind:
        case "numpy":
            return array
        case "memmap":
            np.save(tmp / f"{name}.npy", array)
            return open_image(tmp / f"{name}.npy")
        case "zarr":
            z = zarr.create_array(tmp / f"{name}.zarr", shape=array.shape, chunks=(7,) * array.ndim, dtype=array.dtype)
            z[...] = array
            return open_image(tmp / f"{name}.zarr")
    raise AssertionError(kind)


def _assert_same(got, model, image: torch.Tensor, output_type: str, **options) -> None:
    """`got` equals the in-memory `predict_tiled` of `image` as `output_type`, to float round-off;
    labels may differ only where the two best probabilities tie to round-off."""
    want = predict_tiled(model, image, output_type=output_type, **options, progress=False)
    got = torch.from_numpy(np.asarray(got))
    if output_type != "labels":
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        return
    p = predict_tiled(model, image, output_type="probabilities", **options, progress=False)
    axis = p.dim() - model.config.spatial_dims - 1
    margin = (p - 0.5).abs().select(axis, 0) if p.shape[axis] == 1 else p.topk(2, dim=axis).values.diff(dim=axis).abs()
    margin = margin.squeeze(axis) if margin.dim() == p.dim() else margin
    assert got.shape == want.shape and not ((got.long() != want.long()) & (margin > 1e-4)).any()


@settings(max_examples=15)
@given(st.one_of(local_configs(), same_configs()), st.data())
def test_out_of_core_equals_in_memory(tmp_path_factory, config: UNetConfig, data: st.DataObject) -> None:
    tmp = tmp_path_factory.mktemp("ooc")
    torch.manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    model = build_unet(config).eval()
    dims = config.spatial_dims
    limit = {1: 200, 2: 60, 3: 20}[dims]
    spatial = tuple(data.draw(st.integers(1, limit), label=f"size{a}") for a in range(dims))
    tile = data.draw(st.none() | st.integers(1, 80), label="tile_size")
    block = data.draw(st.none() | st.integers(1, 60), label="block_shape")
    batch_size = data.draw(st.integers(1, 3), label="batch_size")
    output_type = data.draw(st.sampled_from(["logits", "probabilities", "labels"]), label="output_type")
    kind = data.draw(st.sampled_from(["numpy", "memmap", "zarr"]), label="storage")
    batched = data.draw(st.booleans(), label="batched")
    image = torch.randn(2 if batched else 1, config.in_channels, *spatial)
    options = dict(tile_size=tile, batch_size=batch_size)
    source = _store(kind, (image if batched else image[0]).numpy(), tmp, "image")
    if kind == "zarr":
        out = create_output(tmp / "out.zarr", model, source, output_type=output_type, block_shape=block, **options)
    else:
        shape = (*((2,) if batched else ()), *(() if output_type == "labels" else (config.out_channels,)), *spatial)
        dtype = np.uint8 if output_type == "labels" else np.float32
        out = np.lib.format.open_memmap(tmp / "out.npy", mode="w+", dtype=dtype, shape=shape)
    got = predict_tiled(model, source, out=out, **options, output_type=output_type, block_shape=block, progress=False)
    assert got is out
    _assert_same(out[...], model, image if batched else image[0], output_type, **options)
    if config.padding == "valid" and output_type != "labels":  # and the whole-image forward itself
        forward = whole_image_forward(model, image)
        if output_type == "probabilities":
            forward = forward.sigmoid() if forward.shape[1] == 1 else forward.softmax(1)
        torch.testing.assert_close(
            torch.from_numpy(np.asarray(out[...])), forward if batched else forward[0], atol=1e-5, rtol=0
        )


def test_blocks_of_same_padding_blend_exactly_like_the_whole_image(tmp_path) -> None:
    """Same padding: tiles on a block border are computed for both blocks, with the same weights
    and the same order of sums, so many small blocks give the in-memory result bit for bit."""
    torch.manual_seed(0)
    config = UNetConfig(spatial_dims=2, depth=2, base_channels=2, padding="same", out_channels=2, dropout={"rate": 0})
    model = build_unet(config).eval()
    image = torch.randn(1, 90, 70)
    want = predict_tiled(model, image, tile_size=24, progress=False)
    out = np.zeros((2, 90, 70), np.float32)
    plan = plan_tiles(model, (90, 70), tile_size=24)
    counted = []
    predict_tiled(
        model, image.numpy(), tile_size=24, out=out, block_shape=(25, 16), callback=lambda n, t: counted.append(t)
    )
    assert np.array_equal(out, want.numpy())
    assert len(counted) > plan.num_tiles  # border tiles were computed once per block they meet
    assert set(counted) == {(i, j) for i in range(plan.tiles_per_axis[0]) for j in range(plan.tiles_per_axis[1])}


class Stop(Exception):
    pass


def _stop_after(count: int):
    seen = []

    def callback(n: int, tile: tuple[int, ...]) -> None:
        seen.append((n, tile))
        if len(seen) == count:
            raise Stop

    return callback, seen


@settings(max_examples=6)
@given(st.sampled_from(["valid", "same"]), st.sampled_from(["logits", "labels"]), st.data())
def test_resume_after_an_exception_gives_the_uninterrupted_result(tmp_path_factory, padding, output_type, data) -> None:
    tmp = tmp_path_factory.mktemp("resume")
    torch.manual_seed(1)
    config = UNetConfig(spatial_dims=2, depth=2, base_channels=2, out_channels=3, padding=padding, dropout={"rate": 0})
    model = build_unet(config).eval()
    image = np.random.default_rng(0).standard_normal((2, 1, 70, 90), dtype=np.float32)
    batch_size = data.draw(st.integers(1, 3), label="batch_size")
    options = dict(tile_size=48, output_type=output_type, block_shape=(24, 40), batch_size=batch_size)
    whole = create_output(tmp / "whole.zarr", model, image, **options)
    full, seen = _stop_after(-1)
    predict_tiled(model, image, out=whole, **options, callback=full, progress=False)
    stop = data.draw(st.integers(1, len(seen) - 1), label="stop after tiles")
    out = create_output(tmp / "out.zarr", model, image, **options)
    interrupted, _ = _stop_after(stop)
    with pytest.raises(Stop):
        predict_tiled(model, image, out=out, **options, callback=interrupted, progress=False)
    record = out.attrs["unetgen_progress"]
    assert 0 <= record["completed"] < record["blocks"]
    again = create_output(tmp / "out.zarr", model, image, **options)  # opened as it is
    rest: list = []
    predict_tiled(model, image, out=again, **options, callback=lambda n, t: rest.append(t), progress=False)
    assert np.array_equal(again[...], whole[...])
    # blocks complete in order; groups of batch_size blocks are skipped when all are recorded
    assert (len(rest) < len(seen)) == (record["completed"] >= batch_size)
    assert again.attrs["unetgen_progress"]["completed"] == record["blocks"]
    none: list = []
    predict_tiled(model, image, out=again, **options, callback=lambda n, t: none.append(t), progress=False)
    assert none == []  # a complete output is not computed again


def test_resume_refuses_other_arguments_unless_restarted(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_unet(UNetConfig(spatial_dims=1, depth=1, base_channels=1, out_channels=2)).eval()
    image = np.random.default_rng(0).standard_normal((1, 300)).astype(np.float32)
    out = zarr.create_array(tmp_path / "o.zarr", shape=(2, 300), chunks=(2, 64), dtype="float32")
    predict_tiled(model, image, out=out, tile_size=64, progress=False)
    other = build_unet(UNetConfig(spatial_dims=1, depth=1, base_channels=1, out_channels=2)).eval()  # other weights
    with pytest.raises(ValueError, match=r"other arguments.*resume=False"):
        predict_tiled(other, image, out=out, tile_size=64, progress=False)
    predict_tiled(other, image, out=out, tile_size=64, progress=False, resume=False)
    want = predict_tiled(other, torch.from_numpy(image), tile_size=64, progress=False)
    assert np.array_equal(out[...], want.numpy())


def test_journal_file_makes_a_memmap_output_resumable(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_unet(UNetConfig(spatial_dims=2, depth=1, base_channels=1, out_channels=1)).eval()
    image = np.random.default_rng(0).standard_normal((40, 50)).astype(np.float32)  # (*spatial), in_channels=1
    out = np.lib.format.open_memmap(tmp_path / "o.npy", mode="w+", dtype=np.float32, shape=(1, 40, 50))
    callback, _ = _stop_after(3)
    journal = tmp_path / "o.progress.json"
    with pytest.raises(Stop):
        predict_tiled(model, image, out=out, tile_size=16, journal=journal, callback=callback, progress=False)
    assert json.loads(journal.read_text())["completed"] == 3  # one tile per block; the callback runs after its write
    predict_tiled(model, image, out=out, tile_size=16, journal=journal, progress=False)
    want = predict_tiled(model, torch.from_numpy(image)[None], tile_size=16, progress=False)
    assert np.array_equal(out, want.numpy())


def test_tiff_input(tmp_path) -> None:
    tifffile = pytest.importorskip("tifffile")
    torch.manual_seed(0)
    model = build_unet(UNetConfig(spatial_dims=2, depth=2, base_channels=1, out_channels=2)).eval()
    pixels = np.random.default_rng(0).integers(0, 60000, (130, 150), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "image.tif", pixels, tile=(32, 32))
    image = open_image(tmp_path / "image.tif")
    assert image.shape == (1, 130, 150) and not isinstance(image, np.ndarray)  # TIFF axes YX: laid out (C, H, W)
    out = create_output(tmp_path / "out.zarr", model, image, output_type="labels", tile_size=64)
    predict_tiled(model, image, out=out, output_type="labels", tile_size=64, progress=False)
    _assert_same(out[...], model, torch.from_numpy(pixels.astype(np.float32))[None], "labels", tile_size=64)


@pytest.mark.parametrize(
    ("image", "out", "match"),
    [
        (np.zeros((1, 20, 20), complex), None, "dtype complex128 cannot be predicted"),
        (np.zeros((3, 20, 20), np.float32), None, "3 channels but in_channels=1"),
        (np.zeros((1, 20, 0), np.float32), None, "is empty"),
        (np.zeros((1, 20, 20), np.float32), np.zeros((2, 20, 20), np.float32), r"out of shape \(2, 20, 20\)"),
        (np.zeros((1, 20, 20), np.float32), np.zeros((1, 20, 20), np.uint8), "cannot hold logits"),
    ],
)
def test_bad_array_likes_fail_before_any_compute(image, out, match) -> None:
    model = build_unet(UNetConfig(spatial_dims=2, depth=1, base_channels=1, out_channels=1))

    def never(n, t):
        raise AssertionError("computed a tile")

    with pytest.raises(ValueError, match=match):
        predict_tiled(model, image, out=out, callback=never, progress=False)


def test_nan_in_a_window_is_named() -> None:
    model = build_unet(UNetConfig(spatial_dims=2, depth=1, base_channels=1, out_channels=1))
    image = np.zeros((1, 100, 100), np.float64)
    image[0, 90, 5] = 1e300  # finite in float64, infinite in the model's float32
    with pytest.raises(ValueError, match=r"window \[.*\] contains NaN or infinite values \(after the cast"):
        predict_tiled(model, image, tile_size=40, out=np.zeros((1, 100, 100), np.float32), progress=False)


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, numpy as np, torch
    from unetgen import UNetConfig, build_unet, predict_tiled
    from unetgen.predict.arrays import create_output

    class Pattern:  # an array-like image computed on the fly: never whole in memory
        def __init__(self, size):
            self.shape, self.dtype = (1, size, size), np.dtype(np.float32)
        def __getitem__(self, index):
            _, rows, cols = index  # (channels, rows, cols): one tile window
            r, c = np.ogrid[rows, cols]
            return (np.sin(r * 0.05) * np.cos(c * 0.07)).astype(np.float32)[None]

    torch.manual_seed(0)
    torch.set_num_threads(1)
    size, path = int(sys.argv[1]), sys.argv[2]
    config = UNetConfig(spatial_dims=2, depth=1, base_channels=2, out_channels=16, dropout={"rate": 0})
    model = build_unet(config).eval()
    options = dict(tile_size=256, block_shape=256, progress=False)

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    small = create_output(path + ".small", model, Pattern(size // 2), tile_size=256, block_shape=256)
    predict_tiled(model, Pattern(size // 2), out=small, **options)  # fixed costs, allocator caches
    out = create_output(path, model, Pattern(size), tile_size=256, block_shape=256)
    before = peak()
    predict_tiled(model, Pattern(size), out=out, **options)
    after = peak()
    check = float(np.abs(out[:, -16:, -16:]).sum())
    more = out.nbytes - small.nbytes
    print(json.dumps(dict(before=before, after=after, out_bytes=out.nbytes, more=more, check=check)))
    """
)


def test_memory_stays_bounded_by_the_tiles_in_flight(tmp_path) -> None:
    """Peak RSS does not grow with the image: predicting 2048 x 2048 into 256 MiB of float32
    logits (16 channels, from an image computed on the fly) after a 1024 x 1024 prediction (64 MiB)
    raises the process's peak RSS by less than a quarter of the 192 MiB more output: one tile's
    activations, one 256 x 256 block and its encoding are in flight, whatever the image size.
    benchmarks/large_images.py measures larger images."""
    script = tmp_path / "memory.py"
    script.write_text(MEMORY_SCRIPT)
    root = str(Path(__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, str(script), "2048", str(tmp_path / "out.zarr")]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["out_bytes"] == 16 * 2048 * 2048 * 4
    assert result["more"] == 192 * 2**20
    assert result["after"] - result["before"] < result["more"] / 4, result
    assert result["check"] > 0  # the last block was written


def test_cli_predicts_a_zarr_image_and_resumes(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    model = build_unet(UNetConfig(spatial_dims=2, depth=2, base_channels=1, out_channels=3)).eval()
    ckpt = save_unet(model, tmp_path / "m.safetensors")
    pixels = np.random.default_rng(0).standard_normal((1, 1, 120, 100)).astype(np.float32)
    image = zarr.create_array(tmp_path / "in.zarr", shape=pixels.shape, chunks=(1, 1, 64, 64), dtype="float32")
    image[...] = pixels
    base = ["predict", str(ckpt), "--input", str(tmp_path / "in.zarr"), "--output", str(tmp_path / "out.zarr")]
    argv = [*base, "--tile-size", "64", "--output-type", "labels", "--no-progress"]
    assert main(argv) == 0
    out = zarr.open_array(tmp_path / "out.zarr" / "0", mode="r")
    _assert_same(out[...], model, torch.from_numpy(pixels), "labels", tile_size=64)
    assert main(argv) == 0  # everything recorded: nothing to do
    err = capsys.readouterr().err
    assert err.count("blocks complete") == 2 and "error" not in err
    assert main([*base, "--tile-size", "48", "--no-progress"]) == 1  # another plan: other chunks
    assert "error: " in capsys.readouterr().err
    assert main([*argv, "--restart"]) == 0
    npy = ["predict", str(ckpt), "--input", str(tmp_path / "in.zarr"), "--output", str(tmp_path / "o.npy")]
    assert main([*npy, "--workers", "1"]) == 2  # refused before a cluster starts
    assert "writes a .zarr array" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", [">f4", "<u2", "?", ">i8"])
def test_array_likes_of_any_real_dtype_and_byte_order(dtype) -> None:
    torch.manual_seed(0)
    model = build_unet(UNetConfig(spatial_dims=2, depth=1, base_channels=1, out_channels=2)).eval()
    pixels = (np.random.default_rng(0).random((1, 50, 40)) * 3).astype(dtype)
    got = predict_tiled(model, pixels, tile_size=32, progress=False)
    want = predict_tiled(model, torch.from_numpy(pixels.astype(np.float32)), tile_size=32, progress=False)
    assert torch.equal(got, want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_reads_and_writes_cpu_arrays(tmp_path) -> None:
    torch.manual_seed(0)
    for padding in ("valid", "same"):
        model = build_unet(UNetConfig(spatial_dims=2, depth=2, base_channels=2, out_channels=2, padding=padding))
        model = model.eval()
        pixels = np.random.default_rng(0).standard_normal((1, 130, 110)).astype(np.float32)
        want = predict_tiled(model, torch.from_numpy(pixels), tile_size=64, progress=False)
        out = create_output(tmp_path / f"{padding}.zarr", model, pixels, tile_size=64, block_shape=50)
        predict_tiled(model.cuda(), pixels, out=out, tile_size=64, block_shape=50, progress=False)
        np.testing.assert_allclose(out[...], want.numpy(), rtol=0, atol=1e-4)


def test_unwritable_journal_fails_before_any_compute(tmp_path) -> None:
    model = build_unet(UNetConfig(spatial_dims=1, depth=1, base_channels=1, out_channels=1))
    image, out = np.zeros((1, 100), np.float32), np.zeros((1, 100), np.float32)

    def never(n, t):
        raise AssertionError("computed a tile")

    with pytest.raises(ValueError, match="cannot write the progress record"):
        predict_tiled(model, image, out=out, journal=tmp_path / "missing" / "p.json", callback=never)


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, numpy as np, torch, zarr
    from unetgen import load_unet, predict_tiled
    from unetgen.predict.journal import Journal

    Journal.INTERVAL = 0  # record every block: the kill then leaves a record to resume from
    torch.set_num_threads(1)
    model = load_unet(sys.argv[1])
    image, out, after = np.load(sys.argv[2]), zarr.open_array(sys.argv[3] + "/0", mode="r+"), int(sys.argv[4])
    seen = []

    def kill(n, tile):
        seen.append(tile)
        if len(seen) == after:
            os.kill(os.getpid(), signal.SIGKILL)

    predict_tiled(model, image, out=out, tile_size=48, batch_size=2, callback=kill, progress=False)
    """
)


@pytest.mark.skipif(not hasattr(os, "kill") or sys.platform == "win32", reason="needs SIGKILL")
def test_resume_after_the_process_was_killed(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_unet(UNetConfig(spatial_dims=2, depth=2, base_channels=2, out_channels=2, dropout={"rate": 0}))
    checkpoint = save_unet(model, tmp_path / "model.safetensors")
    image = np.random.default_rng(0).standard_normal((1, 150, 140)).astype(np.float32)
    np.save(tmp_path / "image.npy", image)
    options = dict(tile_size=48, batch_size=2)
    out = create_output(tmp_path / "out.zarr", model, image, **options)
    (tmp_path / "kill.py").write_text(KILL_SCRIPT)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    argv = [sys.executable, str(tmp_path / "kill.py"), str(checkpoint), str(tmp_path / "image.npy")]
    done = subprocess.run(
        [*argv, str(tmp_path / "out.zarr"), "13"], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == -9, done.stderr[-2000:]  # killed: no finally, no flush
    record = zarr.open_array(tmp_path / "out.zarr" / "0").attrs["unetgen_progress"]
    assert 0 < record["completed"] < record["blocks"]
    predict_tiled(model, image, out=out, **options, progress=False)  # resumes
    whole = np.zeros(out.shape, np.float32)
    predict_tiled(model, image, out=whole, **options, block_shape=out.chunks[-2:], progress=False)  # uninterrupted
    assert np.array_equal(out[...], whole)


def test_preallocated_tensor_out_and_bad_block_shapes() -> None:
    torch.manual_seed(0)
    model = build_unet(UNetConfig(spatial_dims=2, depth=1, base_channels=1, out_channels=3)).eval()
    image = torch.randn(2, 1, 40, 30)
    out = torch.full((2, 40, 30), 255, dtype=torch.uint8)
    assert predict_tiled(model, image, out=out, output_type="labels", tile_size=24, progress=False) is out
    assert torch.equal(out, predict_tiled(model, image, tile_size=24, progress=False).argmax(1).to(torch.uint8))
    for bad in (0, (5, -1), (1, 2, 3)):
        with pytest.raises(ValueError, match="block_shape"):
            predict_tiled(model, image, block_shape=bad, progress=False)
