"""MONAI bundles (unetgen.share.monai_bundle), checked with MONAI's own bundle tools where MONAI is
installed (the `peers` extra), offline: `verify_metadata` against a local schema (MONAI's own
schema is a download, so the test writes one from the bundle specification's mandatory keys),
`verify_net_in_out` on `network_def`, and the preprocessing transforms against unetgen's."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import unetgen
from unetgen.config.preprocessing import load_preprocessing
from unetgen.predict.preprocess import preprocess
from unetgen.share.monai_bundle import export_monai_bundle, monai_transforms

INFO = {"name": "unetgen bundle test", "authors": [{"name": "A. Tester"}], "license": "Apache-2.0"}
SPEC = {
    "axes": "cyx",
    "normalize": [
        "scale_range",
        {"type": "zero_mean_unit_variance", "mode": "per_dataset", "mean": [0.5, 0.4], "std": 0.2},
        {"type": "scale_linear", "gain": 2.0, "offset": [1, -1]},
        {"type": "clip", "min": -3},
    ],
    "outputs": {"classes": ["background", "nucleus", "border"]},
}

# The mandatory keys of metadata.json and of its tensor format specifiers, as MONAI's bundle
# specification (docs/source/mb_specification.rst) lists them.
TENSOR = {
    "type": "object",
    "required": [
        "type",
        "format",
        "modality",
        "num_channels",
        "spatial_shape",
        "dtype",
        "value_range",
        "is_patch_data",
        "channel_def",
    ],
    "properties": {
        "num_channels": {"type": "integer", "minimum": 1},
        "spatial_shape": {"type": "array", "items": {"type": ["integer", "string"]}},
        "value_range": {"type": "array"},
        "is_patch_data": {"type": "boolean"},
        "channel_def": {"type": "object"},
    },
}
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": [
        "version",
        "monai_version",
        "pytorch_version",
        "numpy_version",
        "required_packages_version",  # the specification's optional_packages_version, renamed in MONAI 1.4
        "task",
        "description",
        "authors",
        "copyright",
        "network_data_format",
    ],
    "properties": {
        "network_data_format": {
            "type": "object",
            "required": ["inputs", "outputs"],
            "properties": {
                "inputs": {"type": "object", "additionalProperties": TENSOR, "required": ["image"]},
                "outputs": {"type": "object", "additionalProperties": TENSOR, "required": ["pred"]},
            },
        }
    },
}


@pytest.fixture(scope="module")
def monai_bundle():
    return pytest.importorskip("monai.bundle", reason="MONAI (the peers extra) is not installed")


@pytest.mark.parametrize(
    "fields",
    [
        {"in_channels": 2, "out_channels": 3, "depth": 2, "base_channels": 4, "dropout": 0},  # valid: MirrorPadded
        {"spatial_dims": 3, "in_channels": 2, "out_channels": 3, "depth": 2, "base_channels": 4, "padding": "same"},
    ],
)
def test_bundle_passes_monai_checks(monai_bundle, fields: dict, tmp_path: Path) -> None:
    model = unetgen.build_unet(**fields, seed=0).eval()
    spec = SPEC if fields.get("spatial_dims", 2) == 2 else {**SPEC, "axes": "czyx"}
    root = export_monai_bundle(model, tmp_path / "bundle", preprocessing=spec, info=INFO)
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "LICENSE",
        "configs/inference.json",
        "configs/metadata.json",
        "docs/README.md",
        "docs/license.txt",
        "models/model.pt",
    ]
    meta, config = root / "configs" / "metadata.json", root / "configs" / "inference.json"
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    digest = hashlib.md5(schema.read_bytes()).hexdigest()  # the file is there: MONAI checks it, downloads nothing
    monai_bundle.verify_metadata(meta_file=str(meta), filepath=str(schema), hash_val=digest)
    monai_bundle.verify_net_in_out(
        net_id="network_def", meta_file=str(meta), config_file=str(config), device="cpu", n=2
    )
    inference = json.loads(config.read_text())
    target = inference["network_def"]["_target_"]
    assert target == ("unetgen.share.MirrorPadded" if model.config.padding == "valid" else "unetgen.build_unet")
    parser = monai_bundle.ConfigParser()
    parser.read_config(str(config))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
    x = torch.randn(1, 2, *(s for s, _ in _sizes(json.loads(meta.read_text()))))
    with torch.no_grad():
        y = net.eval()(x)
    assert y.shape == (1, 3, *x.shape[2:])
    channel_def = json.loads(meta.read_text())["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert channel_def == {"0": "background", "1": "nucleus", "2": "border"}


def _sizes(metadata: dict) -> list[tuple[int, int]]:
    shape = metadata["network_data_format"]["inputs"]["image"]["spatial_shape"]
    return [tuple(int(v) for v in s.replace("*n", "").split("+")) for s in shape]


def test_bundle_preprocessing_equals_unetgens(monai_bundle) -> None:
    spec = load_preprocessing(SPEC)
    rng = np.random.default_rng(0)
    image = rng.gamma(2.0, 100.0, size=(2, 40, 36)).astype(np.float32)
    x = torch.from_numpy(image)
    for entry in monai_transforms(spec, 2):
        parser = monai_bundle.ConfigParser({"t": entry})
        x = parser.get_parsed_content("t")({"image": x})["image"]
    ours = preprocess(image, spec)
    # MONAI's percentile scaling has no eps: 1e-6 of the range apart at most
    np.testing.assert_allclose(np.asarray(x), ours, rtol=1e-4, atol=1e-4)
