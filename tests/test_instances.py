"""Instance labels (`output_type="instances"`): face-connected components of the predicted
foreground, uint32; out of core (a zarr output labelled block by block) equal to the in-memory
labelling, objects joined across blocks."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from unetgen import UNetConfig, build_unet, predict_tiled, save_unet
from unetgen.cli import main
from unetgen.predict.instances import ATTRIBUTE, label_instances, label_out_of_core, temporary_path

zarr = pytest.importorskip("zarr")
from unetgen.arrays import create_output  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions: one thread is fastest, and steady on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _blocks(shape, block):
    """Bounds per axis and the regions (C order) of `block`-sized blocks of `shape`."""
    bounds = [(*range(0, s, b), s) for s, b in zip(shape, block, strict=True)]

    def regions():
        for idx in itertools.product(*(range(len(b) - 1) for b in bounds)):
            yield tuple(slice(bounds[a][i], bounds[a][i + 1]) for a, i in enumerate(idx))

    return bounds, regions


def _out_of_core(classes: np.ndarray, block, min_size: int = 0) -> tuple[np.ndarray, int]:
    bounds, regions = _blocks(classes.shape, block)
    out = np.full(classes.shape, 7, np.uint32)  # every voxel is written
    return out, label_out_of_core(classes, out, regions, bounds, image=None, min_size=min_size)


@settings(max_examples=25)
@given(st.data())
def test_block_labelling_equals_whole_image_labelling(data: st.DataObject) -> None:
    """Random masks in 1D-3D, random blocks and min_size: the blockwise labelling gives the very
    ids of the in-memory one, which (min_size 0) are scipy.ndimage.label's with face connectivity."""
    dims = data.draw(st.integers(1, 3), label="dims")
    shape = tuple(data.draw(st.integers(1, {1: 60, 2: 24, 3: 10}[dims]), label=f"size{a}") for a in range(dims))
    block = tuple(data.draw(st.integers(1, s), label=f"block{a}") for a, s in enumerate(shape))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    classes = (rng.random(shape) < data.draw(st.floats(0.1, 0.8), label="p")) * rng.integers(1, 4, shape)
    min_size = data.draw(st.integers(0, 4), label="min_size")
    want = label_instances(classes.astype(np.uint8), min_size)
    got, count = _out_of_core(classes.astype(np.uint8), block, min_size)
    assert want.dtype == got.dtype == np.uint32
    np.testing.assert_array_equal(got, want)
    assert count == want.max(initial=0)
    if min_size <= 1:
        scipy_ids, n = ndimage.label(classes > 0, ndimage.generate_binary_structure(dims, 1))
        np.testing.assert_array_equal(want, scipy_ids)
        assert n == count
    else:
        sizes = np.bincount(want.ravel())[1:]
        assert sizes.min(initial=min_size) >= min_size  # the small ones are gone, ids 1..n stay consecutive
        assert (sizes > 0).all()


def test_u_shape_joins_two_parts_of_one_block_through_another() -> None:
    """A U whose arms are two separate parts of the top block and whose bar is in the bottom
    block is one object; objects that touch only at a corner (also across a block corner) are two."""
    classes = np.zeros((12, 12), np.uint8)
    classes[1:6, 2] = classes[1:6, 8] = 1  # the arms, rows 1-5 (top block: rows 0-5)
    classes[6:9, 2:9] = 1  # the bar, bottom block
    classes[4, 11] = classes[5, 10] = 1  # corner to corner, inside the top block
    classes[5, 0] = classes[6, 0] = 1  # two voxels face to face across the block border: one object
    classes[11, 4] = 2  # class 2 is foreground too
    classes[10, 5] = 1  # touches the class-2 voxel at a corner only
    got, count = _out_of_core(classes, (6, 12))
    np.testing.assert_array_equal(got, label_instances(classes))
    assert count == 6 == len(np.unique(got[classes > 0]))  # U, 2 corner voxels, the pair, 2 at the bottom
    assert got[1, 2] == got[1, 8] == got[7, 5] != 0  # the arms and the bar: one object
    assert got[5, 0] == got[6, 0] != 0
    assert got[4, 11] != got[5, 10] and got[11, 4] != got[10, 5]
    grid, grid_count = _out_of_core(classes, (6, 6))  # blocks on both axes: the U spans three blocks
    np.testing.assert_array_equal(grid, got)
    assert grid_count == count


def _model(out_channels: int = 2, padding: str = "valid", seed: int = 0) -> torch.nn.Module:
    """A tiny random network whose head is shifted so that every class takes a share of the
    pixels (blobs of foreground, several objects)."""
    config = UNetConfig(spatial_dims=2, depth=2, base_channels=4, out_channels=out_channels, padding=padding,
                        dropout={"rate": 0})  # fmt: skip
    model = build_unet(config, seed=seed).eval()
    sample = torch.randn(1, 1, 60, 60, generator=torch.Generator().manual_seed(seed)) * 3
    with torch.no_grad():
        model.head.weight *= 1000  # the logits of a tiny random network hardly vary
        model.head.bias.zero_()
        logits = model(sample).transpose(0, 1).reshape(out_channels, -1)
        if out_channels == 1:
            model.head.bias -= logits.median()
        else:  # each class beats class 0 on about half of the pixels
            model.head.bias[1:] -= (logits[1:] - logits[0]).median(dim=1).values
    return model


@pytest.mark.parametrize("out_channels,padding", [(2, "valid"), (1, "valid"), (3, "same")])
def test_in_memory_and_out_of_core_instances(tmp_path: Path, out_channels: int, padding: str) -> None:
    """The predicted labels' instances: in memory (a uint32 tensor) and into a zarr output larger
    than one block (labelled block by block, then the temporary removed): the same ids."""
    model = _model(out_channels, padding)
    image = torch.randn(1, 70, 57, generator=torch.Generator().manual_seed(1)) * 3
    options = dict(tile_size=60, block_shape=24 if padding == "same" else None)
    labels = predict_tiled(model, image, output_type="labels", **options, progress=False)
    whole = predict_tiled(model, image, output_type="instances", **options, progress=False)
    assert whole.dtype == torch.uint32 and whole.shape == (70, 57)
    np.testing.assert_array_equal(whole.numpy(), label_instances(labels))
    assert whole.long().max() > 3  # several objects
    out = create_output(tmp_path / "out.zarr", model, image.numpy(), output_type="instances", **options)
    assert out.dtype == np.uint32 and out.shape == (70, 57) and np.prod(out.cdata_shape) > 4
    got = predict_tiled(model, image.numpy(), out=out, output_type="instances", **options, progress=False)
    np.testing.assert_array_equal(got[...], whole.numpy())
    assert got.attrs[ATTRIBUTE] == {"objects": int(whole.long().max()), "min_size": 0, "connectivity": "face"}
    assert sorted(os.listdir(tmp_path)) == ["out.zarr"]  # no temporary, no lock left
    if out_channels != 2:
        return
    again = predict_tiled(model, image.numpy(), out=out, output_type="instances", **options, progress=False)
    np.testing.assert_array_equal(again[...], whole.numpy())  # complete: a second run changes nothing
    small = predict_tiled(model, image.numpy(), out=out, output_type="instances", min_size=5, resume=False,
                          **options, progress=False)  # fmt: skip
    np.testing.assert_array_equal(small[...], label_instances(labels, 5))
    assert np.bincount(small[...].ravel())[1:].min() >= 5 and small.attrs[ATTRIBUTE]["min_size"] == 5


def test_batched_images_numpy_out_and_resume_after_interruption(tmp_path: Path) -> None:
    """(N, C, H, W): each image labelled on its own (ids 1..n each). A run stopped while the class
    labels are predicted keeps the temporary and resumes it."""
    model = _model()
    image = torch.randn(2, 1, 50, 41, generator=torch.Generator().manual_seed(2)) * 3
    options = dict(tile_size=60, progress=False)
    want = predict_tiled(model, image, output_type="instances", **options)
    assert want.shape == (2, 50, 41)
    for n in range(2):
        np.testing.assert_array_equal(want[n].numpy(), predict_tiled(model, image[n], output_type="instances",
                                                                     **options).numpy())  # fmt: skip
    into = np.zeros((2, 50, 41), np.uint32)
    assert predict_tiled(model, image, out=into, output_type="instances", **options) is into
    np.testing.assert_array_equal(into, want.numpy())
    out = create_output(tmp_path / "out.zarr", model, image.numpy(), output_type="instances", tile_size=60)
    calls = []

    def stop(n, tile):
        calls.append(tile)
        if len(calls) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_tiled(model, image.numpy(), out=out, output_type="instances", callback=stop, **options)
    assert temporary_path(tmp_path / "out.zarr").is_dir()
    got = predict_tiled(model, image.numpy(), out=out, output_type="instances", **options)
    np.testing.assert_array_equal(got[...], want.numpy())
    assert not temporary_path(tmp_path / "out.zarr").exists()
    assert got.attrs[ATTRIBUTE]["objects"] == [int(want[n].long().max()) for n in range(2)]


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    model = _model()
    image = torch.randn(1, 40, 40)
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match=r"min_size=.* must be a non-negative int"):
            predict_tiled(model, image, output_type="instances", min_size=bad, progress=False)
    with pytest.raises(ValueError, match="min_size=3 applies to output_type='instances' only"):
        predict_tiled(model, image, output_type="labels", min_size=3, progress=False)
    with pytest.raises(ValueError, match="cannot hold instance labels: use uint32"):
        predict_tiled(model, image, output_type="instances", out=np.zeros((40, 40), np.uint8), progress=False)
    with pytest.raises(ValueError, match="instance labelling"):  # estimated before anything is allocated
        predict_tiled(model, torch.zeros(1, 1000, 1000), output_type="instances", memory_limit=4 << 20)
    temp = temporary_path(tmp_path / "out.zarr")
    temp.mkdir()
    (temp / "thesis.txt").write_text("mine")
    out = create_output(tmp_path / "out.zarr", model, image.numpy(), output_type="instances", tile_size=60)
    with pytest.raises(ValueError, match="unetgen writes and removes only"):
        predict_tiled(model, image.numpy(), out=out, output_type="instances", tile_size=60, progress=False)
    assert (temp / "thesis.txt").read_text() == "mine"


def test_cli_instances(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _model()
    checkpoint = save_unet(model, tmp_path / "model.safetensors")
    image = np.random.default_rng(3).standard_normal((1, 60, 50)).astype(np.float32) * 3
    np.save(tmp_path / "image.npy", image)
    base = [str(checkpoint), "--input", str(tmp_path / "image.npy"), "--tile-size", "60", "--no-progress"]
    assert main(["predict", *base, "--output", str(tmp_path / "a.npy"), "--output-type", "instances",
                 "--min-size", "2"]) == 0  # fmt: skip
    want = predict_tiled(model, torch.from_numpy(image), output_type="instances", min_size=2, tile_size=60)
    a = np.load(tmp_path / "a.npy")
    assert a.dtype == np.uint32
    np.testing.assert_array_equal(a, want.numpy())
    assert f"instances: {a.max()} objects" in capsys.readouterr().err
    assert main(["predict", *base, "--output", str(tmp_path / "b.zarr"), "--output-type", "instances",
                 "--min-size", "2"]) == 0  # fmt: skip
    assert f"instances: {a.max()} objects" in capsys.readouterr().err
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "b.zarr" / "0", mode="r")[...], a)
    assert main(["predict", *base, "--output", str(tmp_path / "c.npy"), "--min-size", "2"]) == 2
    assert "error: --min-size applies to --output-type instances only" in capsys.readouterr().err
