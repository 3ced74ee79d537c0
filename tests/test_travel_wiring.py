"""Issue 19, wiring: the preprocessing spec inside the checkpoint, `load_unet`/`build_unet` on
packages and folders, `save_folder` storing the spec, and `unetgen export`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

import unetgen
from unetgen.checkpoint import CheckpointError, checkpoint_preprocessing
from unetgen.config.io import ConfigError
from unetgen.config.preprocessing import load_preprocessing

FIELDS = {"spatial_dims": 2, "depth": 2, "base_channels": 4, "padding": "same", "dropout": 0, "out_channels": 1}
SPEC = {
    "axes": "yx",
    "pixel_size": {"y": 0.25, "x": 0.25},
    "normalize": [{"type": "scale_range", "mode": "per_dataset", "low": 100.0, "high": 4000.0}],
    "outputs": {"classes": ["nucleus"]},
}


@pytest.fixture
def model() -> unetgen.UNet:
    return unetgen.build_unet(**FIELDS, seed=0).eval()


def _rewrite_header(path: Path, **changes: str) -> None:
    """Rewrite the checkpoint at `path` with some metadata entries replaced (a hostile file)."""
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta.update(changes)
    save_file(tensors, str(path), metadata=meta)


# -- 1. the spec in the checkpoint ---------------------------------------------------------------


@pytest.mark.parametrize("form", ["spec", "dict", "json", "yaml"])
def test_save_unet_stores_the_spec(model: unetgen.UNet, tmp_path: Path, form: str) -> None:
    spec = load_preprocessing(SPEC)
    source: object = {"spec": spec, "dict": SPEC}.get(form)
    if source is None:
        source = tmp_path / f"spec.{form}"
        source.write_text(json.dumps(SPEC))  # JSON is YAML too
    path = unetgen.save_unet(model, tmp_path / "m.safetensors", preprocessing=source, metadata={"epoch": 3})
    loaded = unetgen.load_unet(path)
    assert loaded.preprocessing == spec
    assert checkpoint_preprocessing(path) == spec
    assert unetgen.checkpoint_metadata(path) == {"epoch": 3}
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["preprocessing"]) == spec.model_dump(mode="json")


def test_checkpoint_without_spec_behaves_as_before(model: unetgen.UNet, tmp_path: Path) -> None:
    path = unetgen.save_unet(model, tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert "preprocessing" not in f.metadata()
    assert unetgen.load_unet(path).preprocessing is None
    assert checkpoint_preprocessing(path) is None


def test_save_unet_refuses_bad_specs(model: unetgen.UNet, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="normalize"):
        unetgen.save_unet(model, tmp_path / "m.safetensors", preprocessing={"normalize": ["nope"]})
    with pytest.raises(CheckpointError, match="out_channels=1"):
        unetgen.save_unet(model, tmp_path / "m.safetensors", preprocessing={"outputs": {"classes": ["a", "b"]}})
    with pytest.raises(CheckpointError, match="reserved"):
        unetgen.save_unet(model, tmp_path / "m.safetensors", metadata={"preprocessing": {}})
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize(
    ("stored", "words"),
    [
        ("[1, 2]", "not an object"),
        ('"spec.yaml"', "not an object"),
        ("{", "not valid JSON"),
        ('{"normalize": ["nope"]}', "not a valid spec"),
        ('{"outputs": {"classes": ["a", "b"]}}', "out_channels=1"),
        ('{"axes": "yx", "axes": "zyx"}', "not valid JSON"),
        ('{"a": "' + "x" * (2 << 20) + '"}', "limit"),
        ("[" * 10_000 + "]" * 10_000, "'preprocessing'"),
    ],
)
def test_hostile_stored_spec_is_an_error(model: unetgen.UNet, tmp_path: Path, stored: str, words: str) -> None:
    path = unetgen.save_unet(model, tmp_path / "m.safetensors")
    _rewrite_header(path, preprocessing=stored)
    for read in (unetgen.load_unet, checkpoint_preprocessing):
        with pytest.raises(CheckpointError, match="'preprocessing'") as err:
            read(path)
        assert words in str(err.value)
        assert len(str(err.value)) < 3000
