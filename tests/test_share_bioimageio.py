"""bioimage.io packages (unetgen.share.bioimageio): what unetgen writes and reads back (always),
and bioimage.io's own checks, offline, where the `bioimageio` extra is installed: its model test
(every weight format, the test tensors, the declared sizes) for a valid-padding 2D net, a
same-padding 3D net and the paper's network, and its block-wise prediction against
`predict_tiled` away from the image border."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import unetgen
from unetgen.checkpoint import CheckpointError
from unetgen.config.preprocessing import load_preprocessing
from unetgen.predict.preprocess import preprocess
from unetgen.share import MirrorPadded
from unetgen.share.bioimageio import bioimageio_preprocessing, export_bioimageio, load_package, rdf_json
from unetgen.share.info import input_sizes

# bioimage.io collects garbage at every model unload; the networks are tiny but for the paper's
pytestmark = pytest.mark.usefixtures("frozen_heap", "one_thread")

INFO = {"name": "unetgen test net", "authors": [{"name": "A. Tester", "orcid": "0000-0001-2345-6789"}]}
SPEC_2D = {
    "axes": "yx",
    "pixel_size": {"y": 0.5, "x": 0.5},
    "normalize": ["scale_range", {"type": "clip", "min": -0.5, "max": 2.0}],
    "outputs": {"classes": ["background", "nucleus"], "description": "logits of two classes"},
}
VALID_2D = {"depth": 2, "base_channels": 4, "dropout": 0}
SAME_3D = {"spatial_dims": 3, "depth": 2, "base_channels": 4, "padding": "same", "norm": "batch", "dropout": 0}


def _net(fields: dict, seed: int = 0) -> unetgen.UNet:
    model = unetgen.build_unet(**fields, seed=seed).eval()
    with torch.no_grad():  # batch norm statistics that are not the identity
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module")
def valid_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bioimageio") / "valid2d.zip"
    return export_bioimageio(_net(VALID_2D), path, preprocessing=SPEC_2D, info=INFO)


@pytest.fixture(scope="module")
def same_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = {
        "axes": "czyx",
        "normalize": [{"type": "zero_mean_unit_variance", "mode": "per_dataset", "mean": 100, "std": 40}],
    }
    path = tmp_path_factory.mktemp("bioimageio") / "same3d.zip"
    return export_bioimageio(_net(SAME_3D), path, preprocessing=spec, info=INFO)


# ---------------------------------------------------------------------------------------------
# what unetgen writes (no bioimage.io library needed)


def test_package_files_and_rdf(valid_zip: Path) -> None:
    names = set(zipfile.ZipFile(valid_zip).namelist())
    assert names == {
        "rdf.yaml",
        "README.md",
        "cover.svg",
        "test_input.npy",
        "test_output.npy",
        "weights.pt",
        "weights_torchscript.pt",
        "weights.onnx",
    }
    rdf = rdf_json(valid_zip)
    assert rdf["format_version"].startswith("0.5.") and rdf["type"] == "model"
    arch = rdf["weights"]["pytorch_state_dict"]["architecture"]
    assert (arch["import_from"], arch["callable"]) == ("unetgen.share", "MirrorPadded")
    config = unetgen.load_config(arch["kwargs"]["config"])
    [space_y, _space_x] = rdf["inputs"][0]["axes"][2:]
    (min_y, step_y), (_min_x, _step_x) = input_sizes(config, mirror_padded=True)
    assert space_y["size"] == {"min": min_y, "step": step_y} and step_y == 4 and space_y["scale"] == 0.5
    assert min_y > 2 * unetgen.halo(config)[0]
    out_axes = rdf["outputs"][0]["axes"]
    assert out_axes[1]["channel_names"] == ["background", "nucleus"]
    assert out_axes[2]["halo"] == unetgen.halo(config)[0] == 20
    assert [s["id"] for s in rdf["inputs"][0]["preprocessing"]] == ["scale_range", "clip"]
    assert rdf["cite"][0]["doi"] == "10.1007/978-3-319-24574-4_28"
    readme = zipfile.ZipFile(valid_zip).read("README.md").decode()
    assert "## Validation" in readme and "bioimageio test" in readme and "A U-Net built with unetgen." in readme
    text = zipfile.ZipFile(valid_zip).read("rdf.yaml").decode()
    assert "id: 'y'" in text  # quoted: `y` is a boolean to YAML 1.1 readers


def test_package_loads_back_to_the_same_function(valid_zip: Path, tmp_path: Path) -> None:
    model = load_package(valid_zip)
    original = _net(VALID_2D)
    x = torch.randn(2, 1, 60, 52)
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), rtol=0, atol=0)
    assert model.preprocessing == load_preprocessing(SPEC_2D)
    assert model.metadata["name"] == INFO["name"]
    raw = np.load(zipfile.ZipFile(valid_zip).open("test_input.npy"))
    expected = np.load(zipfile.ZipFile(valid_zip).open("test_output.npy"))
    padded = MirrorPadded(model.config)
    padded.load_state_dict(model.state_dict())
    with torch.no_grad():
        got = padded.eval()(
            torch.from_numpy(preprocess(raw[0], model.preprocessing.model_copy(update={"axes": None})))[None]
        )
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)
    folder = export_bioimageio(original, tmp_path / "as_folder", weight_formats=("pytorch_state_dict",))
    assert (folder / "rdf.yaml").is_file() and load_package(folder).preprocessing is None


def test_load_package_refuses_what_unetgen_did_not_write(tmp_path: Path, valid_zip: Path) -> None:
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("rdf.yaml", "type: model\nweights: {}\n")
    with pytest.raises(CheckpointError, match=r"no config\.unetgen\.config"):
        load_package(bad)
    with pytest.raises(CheckpointError, match=r"not a readable bioimage\.io package"):
        load_package(tmp_path / "missing.zip")
    swapped = tmp_path / "swapped.zip"
    with zipfile.ZipFile(valid_zip) as src, zipfile.ZipFile(swapped, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "weights.pt":
                data = b"not a state dict"
            dst.writestr(item, data)
    with pytest.raises(CheckpointError, match=r"swapped\.zip"):
        load_package(swapped)


def test_preprocessing_maps_to_bioimageio_steps() -> None:
    config = unetgen.load_config({"in_channels": 2})
    spec = load_preprocessing(
        {
            "normalize": [
                {"type": "scale_range", "per_channel": False, "max_percentile": 99},
                {"type": "scale_range", "mode": "per_dataset", "low": [0, 10], "high": 110},
                {"type": "zero_mean_unit_variance", "mode": "per_dataset", "mean": [1, 2], "std": 3, "eps": 1e-3},
                {"type": "scale_linear"},  # a no-op: left out
                {"type": "clip", "min": 0},
            ]
        }
    )
    steps = bioimageio_preprocessing(spec, config)
    assert [s["id"] for s in steps] == ["scale_range", "scale_linear", "fixed_zero_mean_unit_variance", "clip"]
    assert steps[0]["kwargs"]["axes"] == ["channel", "y", "x"]
    gain, offset = steps[1]["kwargs"]["gain"], steps[1]["kwargs"]["offset"]
    assert steps[1]["kwargs"]["axis"] == "channel"
    np.testing.assert_allclose(gain, [1 / (110 + 1e-6), 1 / (100 + 1e-6)])
    np.testing.assert_allclose(offset, [0, -10 / (100 + 1e-6)])
    np.testing.assert_allclose(steps[2]["kwargs"]["std"], [3 + 1e-3 - 1e-6] * 2)
    assert steps[3] == {"id": "clip", "kwargs": {"min": 0.0}}


def test_export_refuses_what_bioimageio_cannot_say(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="weight_formats"):
        export_bioimageio(_net(VALID_2D), tmp_path / "m.zip", weight_formats=("keras",))
    with pytest.raises(ValueError, match=r"in_channels=1"):
        export_bioimageio(
            _net(VALID_2D),
            tmp_path / "m.zip",
            preprocessing={"normalize": [{"type": "scale_linear", "gain": [1, 2]}]},
        )


# ---------------------------------------------------------------------------------------------
# bioimage.io's own checks, offline


@pytest.fixture(scope="module")
def bioimageio_core():
    return pytest.importorskip("bioimageio.core", reason="the bioimageio extra is not installed")


def _passed(summary) -> None:
    failed = [d for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", "\n".join(f"{d.name}: {[e.msg for e in d.errors]}" for d in failed)


def test_bioimageio_model_test_valid_2d(bioimageio_core, valid_zip: Path) -> None:
    _passed(bioimageio_core.test_model(valid_zip))


def test_bioimageio_model_test_same_3d(bioimageio_core, same_zip: Path) -> None:
    _passed(bioimageio_core.test_model(same_zip))


def test_bioimageio_model_test_paper_geometry(bioimageio_core, tmp_path: Path) -> None:
    """bioimage.io's whole model test on the paper's geometry: its network (four poolings, two 3x3
    convs per level, 2x2 pooling, halo 92, inputs 196 + 16n) with 2 channels at the top instead
    of 64, so that the model test's seven runs (the test tensors; sizes 196, 212 and 228 at batch
    1 and 2) take a second, not a minute. The sizes and the mirror padding depend on the geometry
    only; the paper's 31 M-parameter weights are checked below."""
    paper = unetgen.UNetConfig()
    model = unetgen.build_unet(paper.model_copy(update={"base_channels": 2}), seed=0).eval()
    assert unetgen.halo(model.config) == unetgen.halo(paper) == (92, 92)
    assert input_sizes(model.config, mirror_padded=True) == input_sizes(paper, mirror_padded=True)
    path = export_bioimageio(model, tmp_path / "paper_geometry.zip", info=INFO, weight_formats=("torchscript",))
    assert rdf_json(path)["inputs"][0]["axes"][2]["size"] == {"min": 196, "step": 16}
    _passed(bioimageio_core.test_model(path))


@pytest.mark.usefixtures("all_threads")  # 31 M parameters: big convs, unlike the other tests here
def test_bioimageio_paper_network_reproduces_its_test_output(bioimageio_core, tmp_path: Path) -> None:
    """The paper's network itself (31 M parameters, 124 MB of TorchScript) at its smallest package
    input: bioimage.io validates the package (the rdf and the files' hashes) and its prediction
    pipeline reproduces the packaged test output within bioimage.io's own tolerance (one run;
    the model test's other sizes and batches are the geometry's, tested above)."""
    from bioimageio.core import create_prediction_pipeline, load_description
    from bioimageio.core.digest_spec import get_test_input_sample, get_test_output_sample
    from bioimageio.spec.model.v0_5 import ReproducibilityTolerance

    model = unetgen.build_unet(seed=0).eval()
    assert sum(p.numel() for p in model.parameters()) > 31_000_000
    path = export_bioimageio(model, tmp_path / "paper.zip", info=INFO, weight_formats=("torchscript",))
    assert rdf_json(path)["inputs"][0]["axes"][2]["size"] == {"min": 196, "step": 16}
    descr = load_description(path, perform_io_checks=True)
    assert descr.validation_summary.status == "valid-format", descr.validation_summary.format()
    # what the model test's "Reproduce test outputs from test inputs" runs, once
    with create_prediction_pipeline(bioimageio_model=descr, weight_format="torchscript") as pipeline:
        sample = pipeline.predict_sample_without_blocking(
            get_test_input_sample(descr), skip_input_padding=True, skip_output_cropping=True
        )
    theirs = sample.members["output"].data.values
    expected = get_test_output_sample(descr).members["output"].data.values
    assert theirs.shape == expected.shape == (1, 2, 196, 196)
    tolerance = ReproducibilityTolerance()
    np.testing.assert_allclose(theirs, expected, rtol=tolerance.relative_tolerance, atol=tolerance.absolute_tolerance)


def test_bioimageio_blockwise_equals_predict_tiled(bioimageio_core, valid_zip: Path) -> None:
    from bioimageio.core import load_description, predict
    from bioimageio.core.tensor import Tensor

    model = load_package(valid_zip)
    rng = np.random.default_rng(3)
    raw = rng.gamma(2.0, 100.0, size=(1, 1, 124, 108)).astype(np.float32)
    descr = load_description(valid_zip)
    sample = predict(
        model=descr,
        inputs={"input": Tensor.from_numpy(raw, dims=("batch", "channel", "y", "x"))},
        blocksize_parameter=12,
    )
    theirs = sample.members["output"].data.values[0]
    ours = unetgen.predict_tiled(model, raw[0, 0], progress=False)  # the package's spec, applied by predict_tiled
    hand = torch.from_numpy(preprocess(raw[0, 0], model.preprocessing))
    torch.testing.assert_close(ours, unetgen.predict_tiled(model, hand, progress=False, preprocessing=False))
    h = unetgen.halo(model.config)[0]
    inner = (slice(None), slice(h, -h), slice(h, -h))
    assert theirs.shape == tuple(ours.shape)
    np.testing.assert_allclose(theirs[inner], ours.numpy()[inner], rtol=0, atol=1e-4)
