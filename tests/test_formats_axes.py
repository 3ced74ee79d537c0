"""Issue 20, formats and axes: OME-Zarr (NGFF) in and out, TIFF and OME-TIFF out, and axes that are
read from the file, given with --axes / axes=, or refused with what was seen and the fix - never
guessed, and the same in memory and out of core. Files are written with tifffile and zarr; the
NGFF metadata unetgen writes is validated with ome-zarr-models (the `ngff` extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from unetgen import UNetConfig, build_unet, predict_tiled, save_unet
from unetgen.cli import main
from unetgen.predict.axes import parse_axes

zarr = pytest.importorskip("zarr")
tifffile = pytest.importorskip("tifffile")
from unetgen.predict.arrays import create_output, open_image  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

GREY3D = UNetConfig(spatial_dims=3, depth=1, base_channels=2, out_channels=2, padding="same", init="torch")
GREY2D = UNetConfig(spatial_dims=2, depth=1, base_channels=2, out_channels=2, padding="same", init="torch")
RGB2D = GREY2D.model_copy(update={"in_channels": 3})


def _model(config: UNetConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_unet(config).eval()


def _errors(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]


def _predict(ckpt: Path, image: Path, output: Path, *extra: str) -> list[str]:
    return ["predict", str(ckpt), "--input", str(image), "--output", str(output), "--no-progress", *extra]


# ---------------------------------------------------------------------------------------------
# axes, never guessed


def test_an_rgb_tiff_for_a_grey_3d_network_is_refused_alike_in_memory_and_out_of_core(tmp_path, capsys) -> None:
    """The issue's case: read as a 3-slice volume in memory, 'has 64 channels' out of core. Now one
    message, from the file's axes (YXS), both ways, before any output is made."""
    ckpt = save_unet(_model(GREY3D), tmp_path / "m.safetensors")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((20, 24, 3), np.uint8))
    lines = []
    for output in ("out.npy", "out.zarr", "out.tif"):
        assert main(_predict(ckpt, tmp_path / "rgb.tif", tmp_path / output)) == 1
        [line] = _errors(capsys)
        lines.append(line)
        assert not (tmp_path / output).exists()
    assert len(set(lines)) == 1, lines
    assert "TIFF axes YXS (3 samples)" in lines[0] and "a 2D image (yx, 3 channels)" in lines[0]
    assert "network is 3D with 1 input channel" in lines[0] and "use a 2D network" in lines[0]
    with pytest.raises(ValueError, match=r"YXS \(3 samples\).*network is 3D"):
        predict_tiled(_model(GREY3D), open_image(tmp_path / "rgb.tif"), progress=False)


def test_a_stack_tifffile_stored_as_samples_is_read_as_a_volume_with_axes(tmp_path, capsys) -> None:
    """tifffile (2026.3, by default) stores a 4-slice stack as SYX (samples): refused with the fix, and --axes zyx reads
    it as the volume it is, the same in memory (.npy, .tif) and out of core (.zarr)."""
    model = _model(GREY3D)
    ckpt = save_unet(model, tmp_path / "m.safetensors")
    volume = np.random.default_rng(0).random((4, 12, 16), dtype=np.float32)
    tifffile.imwrite(tmp_path / "stack.tif", volume, photometric="minisblack", planarconfig="separate")  # as default
    with tifffile.TiffFile(tmp_path / "stack.tif") as tif:
        assert tif.series[0].axes == "SYX"
    assert main(_predict(ckpt, tmp_path / "stack.tif", tmp_path / "o.npy")) == 1
    [line] = _errors(capsys)
    assert "TIFF axes SYX (4 samples)" in line and "give --axes zyx" in line
    want = predict_tiled(model, torch.from_numpy(volume)[None], progress=False).numpy()
    assert main(_predict(ckpt, tmp_path / "stack.tif", tmp_path / "o.npy", "--axes", "zyx")) == 0
    assert "axes zyx (--input " in (err := capsys.readouterr().err) and "with --axes zyx (the file says cyx))" in err
    assert np.allclose(np.load(tmp_path / "o.npy"), want, atol=1e-6)
    assert main(_predict(ckpt, tmp_path / "stack.tif", tmp_path / "o.zarr", "--axes", "zyx")) == 0
    assert np.allclose(zarr.open_array(tmp_path / "o.zarr" / "0")[...], want, atol=1e-6)


def test_a_zyx_stack_for_a_2d_network_names_byx_which_predicts_slice_by_slice(tmp_path) -> None:
    model = _model(GREY2D)
    volume = np.random.default_rng(1).random((3, 12, 16), dtype=np.float32)
    tifffile.imwrite(tmp_path / "z.tif", volume, imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(ValueError, match=r"TIFF axes ZYX: a 3D image \(zyx\).*give --axes byx .*each z slice"):
        predict_tiled(model, open_image(tmp_path / "z.tif"), progress=False)
    got = predict_tiled(model, open_image(tmp_path / "z.tif", "byx"), progress=False)
    for k in range(3):
        assert torch.allclose(got[k], predict_tiled(model, torch.from_numpy(volume[k])[None], progress=False))


def test_channels_last_and_given_axes(tmp_path, capsys) -> None:
    model = _model(RGB2D)
    pixels = np.random.default_rng(2).random((14, 18, 3), dtype=np.float32)
    np.save(tmp_path / "rgb.npy", pixels)  # a .npy file says nothing: unetgen's (C, *spatial), or --axes
    want = predict_tiled(model, torch.from_numpy(pixels).permute(2, 0, 1), progress=False)
    with pytest.raises(ValueError, match=r"has 14 channels but in_channels=3.*axes= \(CLI: --axes, e.g. yxc\)"):
        predict_tiled(model, open_image(tmp_path / "rgb.npy"), progress=False)
    assert torch.allclose(predict_tiled(model, open_image(tmp_path / "rgb.npy", "yxc"), progress=False), want)
    assert torch.allclose(predict_tiled(model, open_image(pixels, axes="yxc"), progress=False), want)
    tifffile.imwrite(tmp_path / "rgb.tif", (pixels * 255).astype(np.uint8))  # YXS: channels, from the file
    laid = open_image(tmp_path / "rgb.tif")
    assert laid.shape == (3, 14, 18) and laid.chunks[0] == 3 and laid[1:2, 3, 2:5].shape == (1, 3)
    ckpt = save_unet(model, tmp_path / "m.safetensors")
    for bad in ("xyz", "bc"):
        with pytest.raises(SystemExit) as exit_:
            main(_predict(ckpt, tmp_path / "rgb.npy", tmp_path / "o.npy", "--axes", bad))
        assert exit_.value.code == 2 and "not an image layout" in capsys.readouterr().err
    assert main(_predict(ckpt, tmp_path / "rgb.npy", tmp_path / "o.npy", "--axes", "zyx")) == 1
    assert "read with --axes zyx: a 3D image (zyx), but the network is 2D" in _errors(capsys)[0]


@pytest.mark.parametrize("text", ["yx", "ZYX", "cyx", "yxc", "czyx", "zyxc", "byx", "bczyx", " yxc "])
def test_parse_axes_takes_the_preprocessing_layouts_and_a_batch(text) -> None:
    assert parse_axes(text) == text.strip().lower()


@pytest.mark.parametrize("bad", ["", "xy", "yxz", "ccyx", "bb", "b", "ycx", "tyx", 3, None, "yx\0"])
def test_parse_axes_refuses_anything_else_naming_the_valid_layouts(bad) -> None:
    with pytest.raises(ValueError, match=r"is not an image layout.*zyx.*byx") as info:
        parse_axes(bad, "--axes")
    assert len(str(info.value)) < 400


def test_spatial_only_input_is_one_channel_for_tensors_and_arrays_alike() -> None:
    model = _model(GREY2D)
    pixels = torch.rand(20, 22)
    want = predict_tiled(model, pixels[None], progress=False)
    assert torch.equal(predict_tiled(model, pixels, progress=False), want)  # raised before
    assert torch.equal(predict_tiled(model, pixels.numpy(), progress=False), want)


# ---------------------------------------------------------------------------------------------
# OME-Zarr in


def _ngff_v05(path: Path, pixels: np.ndarray, axes: list[dict], scale: list[float]) -> None:
    group = zarr.open_group(path, mode="w")
    group.create_array("s0", data=pixels, chunks=pixels.shape, dimension_names=[a["name"] for a in axes])
    half = pixels[..., ::2, ::2]
    group.create_array("s1", data=half, chunks=half.shape, dimension_names=[a["name"] for a in axes])
    levels = [[float(s) for s in scale], [s * (2 if i >= len(scale) - 2 else 1) for i, s in enumerate(scale)]]
    datasets = [
        {"path": f"s{k}", "coordinateTransformations": [{"type": "scale", "scale": level}]}
        for k, level in enumerate(levels)
    ]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": datasets}]}


CYX = [
    {"name": "c", "type": "channel"},
    {"name": "y", "type": "space", "unit": "micrometer"},
    {"name": "x", "type": "space", "unit": "micrometer"},
]


def test_an_ome_zarr_image_opens_at_full_resolution_with_axes_and_scale(tmp_path, capsys) -> None:
    """NGFF 0.5 (zarr v3) and 0.4 (zarr v2, .zattrs): no 'give path/0'; channels last in 0.4 too."""
    pytest.importorskip("ome_zarr_models")
    from ome_zarr_models.v05.image import Image

    model = _model(RGB2D)
    pixels = np.random.default_rng(3).random((3, 16, 20), dtype=np.float32)
    _ngff_v05(tmp_path / "in.zarr", pixels, CYX, [1.0, 0.25, 0.5])
    Image.from_zarr(zarr.open_group(tmp_path / "in.zarr", mode="r"))  # the fixture is valid NGFF 0.5
    image = open_image(tmp_path / "in.zarr")
    assert image.shape == (3, 16, 20) and image.axes.scale == (("y", 0.25), ("x", 0.5))
    assert image.axes.unit == "micrometer" and "NGFF axes c,y,x" in image.axes.said
    want = predict_tiled(model, torch.from_numpy(pixels), progress=False)
    assert torch.allclose(predict_tiled(model, image, progress=False), want)

    v04 = zarr.open_group(tmp_path / "v04.zarr", mode="w", zarr_format=2)
    v04.create_array("0", data=np.moveaxis(pixels, 0, -1), chunks=(8, 8, 3))
    v04.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}, {"name": "c", "type": "channel"}],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 2.0, 1.0]}]}],
        }
    ]
    image = open_image(tmp_path / "v04.zarr")
    assert image.axes.letters == "yxc" and image.shape == (3, 16, 20) and image.axes.scale == (("y", 2.0), ("x", 2.0))
    assert torch.allclose(predict_tiled(model, image, progress=False), want)

    ckpt = save_unet(model, tmp_path / "m.safetensors")
    assert main(_predict(ckpt, tmp_path / "v04.zarr", tmp_path / "out.zarr", "--output-type", "probabilities")) == 0
    assert "axes yxc" in capsys.readouterr().err
    out = zarr.open_group(tmp_path / "out.zarr", mode="r")
    Image.from_zarr(out)  # a valid NGFF 0.5 image, its scale the input's
    [level] = out.attrs["ome"]["multiscales"][0]["datasets"]
    assert level["coordinateTransformations"][0]["scale"] == [1.0, 2.0, 2.0]


@pytest.mark.parametrize(
    ("multiscales", "match"),
    [
        ("no", r"multiscales 'no' is not a list"),
        ([{"axes": CYX, "datasets": []}], r"datasets \[\] must list 1 to 64 levels"),
        ([{"axes": CYX, "datasets": [{"path": "../elsewhere"}]}], r"must be a relative path inside the group"),
        ([{"axes": CYX, "datasets": [{"path": "nothing"}]}], r"the group has no array nothing"),
        (
            [
                {
                    "axes": CYX,
                    "datasets": [{"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [0]}]}],
                }
            ],
            r"scale \[0\] must be 3 positive numbers",
        ),
        ([{"axes": CYX[1:], "datasets": [{"path": "s0"}]}], r"names 2 axes but level s0 has 3 dims"),
    ],
)
def test_damaged_ome_zarr_metadata_is_one_clear_error(tmp_path, multiscales, match) -> None:
    _ngff_v05(tmp_path / "in.zarr", np.zeros((3, 8, 8), np.float32), CYX, [1, 1, 1])
    group = zarr.open_group(tmp_path / "in.zarr", mode="r+")
    group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    with pytest.raises(ValueError, match=match) as info:
        open_image(tmp_path / "in.zarr")
    assert str(info.value).startswith("image ") and len(str(info.value)) < 500


def test_a_group_without_an_image_still_says_to_give_an_array(tmp_path) -> None:
    zarr.open_group(tmp_path / "g.zarr", mode="w").create_array("a", shape=(4, 4), dtype="f4")
    with pytest.raises(ValueError, match=r"zarr group without an OME-Zarr image.*give the path of one array"):
        open_image(tmp_path / "g.zarr")


# ---------------------------------------------------------------------------------------------
# OME-Zarr out


def test_outputs_are_valid_ome_zarr_label_and_image_groups_that_resume(tmp_path) -> None:
    pytest.importorskip("ome_zarr_models")
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel

    from unetgen.config.preprocessing import Preprocessing

    model = _model(GREY3D)
    volume = np.random.default_rng(4).random((2, 6, 10, 12), dtype=np.float32)  # (N, C=1... no: b, z, y, x)
    np.save(tmp_path / "v.npy", volume[:, None])  # (N, C, *spatial): a batch of two volumes
    labels = create_output(tmp_path / "labels.zarr", model, tmp_path / "v.npy", output_type="labels")
    predict_tiled(model, open_image(tmp_path / "v.npy"), out=labels, output_type="labels", progress=False)
    group = zarr.open_group(tmp_path / "labels.zarr", mode="r")
    ImageLabel.from_zarr(group)
    axes = group.attrs["ome"]["multiscales"][0]["axes"]
    assert [a["name"] for a in axes] == ["b", "z", "y", "x"] and axes[0]["type"] == "batch"
    assert labels.metadata.dimension_names == ("b", "z", "y", "x")
    want = predict_tiled(model, torch.from_numpy(volume[:, None]), output_type="labels", progress=False)
    assert np.array_equal(labels[...], want.numpy())
    again = create_output(tmp_path / "labels.zarr", model, tmp_path / "v.npy", output_type="labels")
    assert again.attrs["unetgen_progress"]["completed"] == again.attrs["unetgen_progress"]["blocks"]  # resumable

    model.preprocessing = Preprocessing(axes="zyx", pixel_size={"z": 2.0, "y": 0.5, "x": 0.5}, unit="nanometer")
    probs = create_output(tmp_path / "p.zarr", model, volume[0], output_type="probabilities")
    image = Image.from_zarr(zarr.open_group(tmp_path / "p.zarr", mode="r"))
    multiscale = image.attributes.ome.multiscales[0]
    assert [a.name for a in multiscale.axes] == ["c", "z", "y", "x"] and multiscale.axes[1].unit == "nanometer"
    assert list(multiscale.datasets[0].coordinateTransformations[0].scale) == [1.0, 2.0, 0.5, 0.5]
    assert probs.shape == (2, 6, 10, 12)


def test_an_output_of_an_earlier_unetgen_a_bare_array_is_resumed_as_it_is(tmp_path) -> None:
    model = _model(GREY2D)
    image = np.random.default_rng(5).random((1, 20, 20), dtype=np.float32)
    bare = create_output(tmp_path / "old.zarr", model, image, ome_zarr=False)
    predict_tiled(model, image, out=bare, progress=False)
    again = create_output(tmp_path / "old.zarr", model, image)
    assert again.path == "" and again.attrs["unetgen_progress"]["completed"] == 1
    assert np.array_equal(again[...], predict_tiled(model, torch.from_numpy(image), progress=False).numpy())


def test_restart_removes_only_an_output_groups_own_files(tmp_path, capsys) -> None:
    model = _model(GREY2D)
    ckpt = save_unet(model, tmp_path / "m.safetensors")
    np.save(tmp_path / "in.npy", np.zeros((1, 20, 20), np.float32))
    assert main(_predict(ckpt, tmp_path / "in.npy", tmp_path / "o.zarr")) == 0
    (tmp_path / "o.zarr" / "notes.txt").write_text("mine")
    assert main(_predict(ckpt, tmp_path / "in.npy", tmp_path / "o.zarr", "--restart")) == 1
    assert "notes.txt, which is not part of a zarr array" in _errors(capsys)[0]
    assert (tmp_path / "o.zarr" / "notes.txt").read_text() == "mine"
    (tmp_path / "o.zarr" / "notes.txt").unlink()
    assert main(_predict(ckpt, tmp_path / "in.npy", tmp_path / "o.zarr", "--restart")) == 0
    assert sorted(p.name for p in (tmp_path / "o.zarr").iterdir()) == ["0", "zarr.json"]
    theirs = zarr.open_group(tmp_path / "theirs.zarr", mode="w")
    theirs.attrs["ome"] = {"version": "0.5", "multiscales": []}
    assert main(_predict(ckpt, tmp_path / "in.npy", tmp_path / "theirs.zarr", "--restart")) == 1
    assert "is a zarr group that unetgen did not make" in _errors(capsys)[0]


# ---------------------------------------------------------------------------------------------
# TIFF out


def test_tiff_and_ome_tiff_outputs_carry_axes_and_the_inputs_pixel_size(tmp_path, capsys) -> None:
    model = _model(GREY3D)
    ckpt = save_unet(model, tmp_path / "m.safetensors")
    volume = np.random.default_rng(6).random((5, 12, 14), dtype=np.float32)
    meta = {"axes": "ZYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25, "PhysicalSizeZ": 1.5}
    tifffile.imwrite(tmp_path / "in.ome.tif", volume, ome=True, metadata=meta)
    want = predict_tiled(model, torch.from_numpy(volume)[None], output_type="labels", progress=False).numpy()
    for name in ("out.tif", "out.ome.tif"):
        assert main(_predict(ckpt, tmp_path / "in.ome.tif", tmp_path / name, "--output-type", "labels")) == 0
        with tifffile.TiffFile(tmp_path / name) as tif:
            assert np.array_equal(tif.asarray(), want) and tif.series[0].axes == "ZYX"
            if name == "out.ome.tif":
                pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
                assert (pixels["PhysicalSizeX"], pixels["PhysicalSizeZ"]) == (0.25, 1.5)
    assert "pixel size 1.5 x 0.25 x 0.25 micrometer" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.ome.tif", "m.safetensors", "out.ome.tif", "out.tif"]
