"""Measure the numbers of the sharing table in docs/sharing.md: each package format checked by its
own ecosystem's tool, offline, and the largest difference of what that tool computes to
`unetgen.predict_tiled` on the same raw image (the model's preprocessing applied by both).

    python -m benchmarks.share_table            # the small networks (about a minute on 2 cores)
    python -m benchmarks.share_table --paper    # also the paper's 31 M-parameter network (minutes)

Needs the `bioimageio`, `hub` and `peers` extras (bioimageio.core, huggingface_hub, MONAI). The
networks and specs are those of tests/test_share_*.py. Prints one markdown row per check.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

import unetgen
from unetgen.config.preprocessing import load_preprocessing
from unetgen.predict.preprocess import preprocess

INFO = {"name": "unetgen share table", "authors": [{"name": "A. Tester"}], "license": "Apache-2.0"}
SPEC_2D = {"axes": "yx", "normalize": ["scale_range", {"type": "clip", "min": -0.5, "max": 2.0}]}
SPEC_3D = {
    "axes": "czyx",
    "normalize": [{"type": "zero_mean_unit_variance", "mode": "per_dataset", "mean": 100, "std": 40}],
}
VALID_2D = {"depth": 2, "base_channels": 4, "dropout": 0}
SAME_3D = {"spatial_dims": 3, "depth": 2, "base_channels": 4, "padding": "same", "norm": "batch", "dropout": 0}
ROWS: list[str] = []


def _net(fields: dict[str, Any], seed: int = 0) -> unetgen.UNet:
    model = unetgen.build_unet(**fields, seed=seed).eval()
    with torch.no_grad():  # batch norm statistics that are not the identity
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


def _row(*cells: Any) -> None:
    ROWS.append("| " + " | ".join(str(c) for c in cells) + " |")
    print(ROWS[-1], flush=True)


def _max(a: Any, b: Any, inner: tuple[slice, ...] = ()) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a[inner] - b[inner]).max()) if a.size else 0.0


def bioimageio(tmp: Path, paper: bool) -> None:
    import bioimageio.core as core
    from bioimageio.core import create_prediction_pipeline, load_description, predict
    from bioimageio.core.digest_spec import get_test_input_sample
    from bioimageio.core.tensor import Tensor

    from unetgen.share.bioimageio import export_bioimageio, load_package

    paper_config = unetgen.UNetConfig()
    nets = {
        "valid 2D (depth 2, 3 weight formats)": (_net(VALID_2D), SPEC_2D, None),
        "same 3D (batch norm, 3 weight formats)": (_net(SAME_3D), SPEC_3D, None),
        "the paper's geometry, 2 channels at the top (TorchScript)": (
            unetgen.build_unet(paper_config.model_copy(update={"base_channels": 2}), seed=0).eval(),
            None,
            ("torchscript",),
        ),
    }
    if paper:
        nets["the paper's network, 31 M parameters (TorchScript)"] = (
            unetgen.build_unet(seed=0).eval(),
            None,
            ("torchscript",),
        )
    for name, (model, spec, formats) in nets.items():
        path = tmp / f"{hashlib.md5(name.encode()).hexdigest()[:8]}.zip"
        options = {} if formats is None else {"weight_formats": formats}
        start = time.perf_counter()
        export_bioimageio(model, path, preprocessing=spec, info=INFO, **options)
        if "31 M" in name:  # validated, and bioimage.io's pipeline on the test input (one run), as the test does
            descr = load_description(path, perform_io_checks=True)
            check = descr.validation_summary.status
        else:
            summary = core.test_model(path)
            failed = [d.name for d in summary.details if d.status == "failed"]
            check = summary.status + (f" ({failed})" if failed else "")
            descr = load_description(path)
        with zipfile.ZipFile(path) as z:
            raw = np.load(io.BytesIO(z.read("test_input.npy")))
        if formats is None:  # the package loaded back; predict_tiled applies the package's spec
            ours = unetgen.predict_tiled(load_package(path), _raw(raw, spec), progress=False)
        else:  # TorchScript only: load_package reads pytorch_state_dict weights; the model it was made of
            ours = unetgen.predict_tiled(model, _raw(raw, spec), progress=False, preprocessing=spec or False)
        diffs = []
        for wf in [w for w, entry in descr.weights if entry is not None]:
            with create_prediction_pipeline(bioimageio_model=descr, weight_format=wf) as pipeline:
                sample = pipeline.predict_sample_without_blocking(
                    get_test_input_sample(descr), skip_input_padding=True, skip_output_cropping=True
                )
            diffs.append(f"{wf} {_max(sample.members['output'].data.values[0], ours):.1e}")
        seconds = time.perf_counter() - start
        diff = "bioimage.io's pipeline on the test input (its preprocessing), per weight format: " + ", ".join(diffs)
        tool = f"bioimageio.core {core.__version__} " + ("load_description" if "31 M" in name else "test_model")
        _row("bioimage.io 0.5", tool, name, check, diff, f"{seconds:.0f} s")
    # block-wise prediction of bioimage.io against predict_tiled, away from the border
    model, spec, _ = nets["valid 2D (depth 2, 3 weight formats)"]
    path = tmp / "blockwise.zip"
    export_bioimageio(model, path, preprocessing=spec, info=INFO)
    raw = np.random.default_rng(3).gamma(2.0, 100.0, size=(1, 1, 124, 108)).astype(np.float32)
    sample = predict(
        model=load_description(path), inputs={"input": Tensor.from_numpy(raw, dims=("batch", "channel", "y", "x"))},
        blocksize_parameter=12,
    )  # fmt: skip
    theirs = sample.members["output"].data.values[0]
    ours = unetgen.predict_tiled(load_package(path), raw[0, 0], progress=False)  # the spec applied by predict_tiled
    h = unetgen.halo(model.config)[0]
    inner = (slice(None), slice(h, -h), slice(h, -h))
    diff = f"away from the border (halo {h}): {_max(theirs, ours.numpy(), inner):.1e}; "
    diff += f"whole image: {_max(theirs, ours.numpy()):.1e}"
    _row("bioimage.io 0.5", "bioimageio.core predict, block-wise (blocksize_parameter 12)", "valid 2D", "ran", diff, "")


def _raw(test_input: np.ndarray, spec: dict[str, Any] | None) -> np.ndarray:
    """The package's raw test input (1, C, *spatial) in the spec's layout."""
    x = test_input[0]
    if spec is None or spec.get("axes") is None:
        return x
    axes = spec["axes"]
    return x[0] if "c" not in axes else np.moveaxis(x, 0, axes.index("c"))


def hub(tmp: Path) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import huggingface_hub

    from unetgen.share.hf import UNetHub
    from unetgen.share.hub import save_folder

    spec = {"axes": "zyx", "pixel_size": {"z": 1.0, "y": 0.25, "x": 0.25}, "normalize": ["scale_range"]}
    model = unetgen.build_unet(spatial_dims=3, depth=2, base_channels=4, padding="same", dropout=0, seed=1).eval()
    root = save_folder(model, tmp / "folder", preprocessing=spec, info=INFO)
    raw = np.random.default_rng(0).poisson(300, (20, 40, 36)).astype(np.uint16)
    want = unetgen.predict_tiled(model, raw, progress=False, preprocessing=spec)
    for name, loaded in (("from_pretrained", UNetHub.from_pretrained(root)), ("load_unet", unetgen.load_unet(root))):
        got = unetgen.predict_tiled(loaded, raw, progress=False)  # the folder's spec, applied
        tool = f"huggingface_hub {huggingface_hub.__version__} {name} (offline)" if name == "from_pretrained" else name
        kept = "kept" if loaded.preprocessing == load_preprocessing(spec) else "LOST"
        _row("Hub-style folder", tool, "same 3D", f"loaded, spec {kept}", f"{_max(got, want):.1e}", "")


def monai(tmp: Path) -> None:
    import monai
    from monai import bundle

    from unetgen.share.monai_bundle import export_monai_bundle, monai_transforms

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_share_monai import SCHEMA, SPEC, _sizes

    spec = load_preprocessing(SPEC)
    for name, fields in (
        (
            "valid 2D (as MirrorPadded)",
            {"in_channels": 2, "out_channels": 3, "depth": 2, "base_channels": 4, "dropout": 0},
        ),
        (
            "same 3D",
            {"spatial_dims": 3, "in_channels": 2, "out_channels": 3, "depth": 2, "base_channels": 4, "padding": "same"},
        ),
    ):
        model = unetgen.build_unet(**fields, seed=0).eval()
        this = SPEC if model.config.spatial_dims == 2 else {**SPEC, "axes": "czyx"}
        folder = tmp / f"bundle{model.config.spatial_dims}d"
        folder.mkdir()
        root = export_monai_bundle(model, folder / "bundle", preprocessing=this, info=INFO)
        meta, config = root / "configs" / "metadata.json", root / "configs" / "inference.json"
        schema = tmp / "schema.json"
        schema.write_text(json.dumps(SCHEMA))
        bundle.verify_metadata(
            meta_file=str(meta), filepath=str(schema), hash_val=hashlib.md5(schema.read_bytes()).hexdigest()
        )
        bundle.verify_net_in_out(net_id="network_def", meta_file=str(meta), config_file=str(config), device="cpu", n=2)
        parser = bundle.ConfigParser()
        parser.read_config(str(config))
        net = parser.get_parsed_content("network_def")
        net.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
        sizes = _sizes(json.loads(meta.read_text()))
        spatial = [lo + 2 * step for lo, step in sizes]
        raw = np.random.default_rng(0).gamma(2.0, 100.0, size=(2, *spatial)).astype(np.float32)
        x = torch.from_numpy(raw)
        for entry in monai_transforms(spec, model.config.in_channels):
            x = bundle.ConfigParser({"t": entry}).get_parsed_content("t")({"image": x})["image"]
        pre = _max(np.asarray(x), preprocess(raw, load_preprocessing(this)))
        with torch.no_grad():
            theirs = net.eval()(torch.as_tensor(np.asarray(x))[None])[0]
        ours = unetgen.predict_tiled(model, raw, progress=False, preprocessing=this, tile_size=spatial)
        tool = f"MONAI {monai.__version__} verify_metadata (local schema), verify_net_in_out, ConfigParser"
        diff = f"network_def on MONAI's preprocessing, whole image: {_max(theirs, ours):.1e} (preprocessing: {pre:.1e})"
        _row("MONAI bundle", tool, name, "passed", diff, "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paper", action="store_true", help="also the paper's 31 M-parameter network (minutes)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print("| format | checked with | network | result | largest difference to predict_tiled | time |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        hub(Path(tmp))
        monai(Path(tmp))
        bioimageio(Path(tmp), args.paper)


if __name__ == "__main__":
    main()
