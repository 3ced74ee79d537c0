"""Hub-style model folders (unetgen.share.hub) and huggingface_hub's from_pretrained on them
(unetgen.share.hf, where the `hub` extra is installed), offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import unetgen
from unetgen.checkpoint import CheckpointError
from unetgen.config.preprocessing import load_preprocessing
from unetgen.share.hub import load_folder, save_folder

SPEC = {"axes": "zyx", "pixel_size": {"z": 1.0, "y": 0.25, "x": 0.25}, "normalize": ["scale_range"]}
FIELDS = {"spatial_dims": 3, "depth": 2, "base_channels": 4, "padding": "same", "dropout": 0}


@pytest.fixture
def folder(tmp_path: Path) -> tuple[unetgen.UNet, Path]:
    model = unetgen.build_unet(**FIELDS, seed=1).eval()
    info = {"name": "tiny 3d net", "license": "Apache-2.0", "tags": ["nuclei"], "authors": [{"name": "A. Tester"}]}
    return model, save_folder(model, tmp_path / "model", preprocessing=SPEC, info=info, metadata={"epoch": 7})


def test_folder_files_and_model_card(folder: tuple[unetgen.UNet, Path]) -> None:
    model, root = folder
    assert sorted(p.name for p in root.iterdir()) == [
        "README.md",
        "config.json",
        "diagram.svg",
        "model.safetensors",
        "preprocessing.json",
    ]
    assert unetgen.load_config(root / "config.json") == model.config
    assert unetgen.build_unet(root / "config.json").config == model.config
    card = (root / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: unetgen\nlicense: apache-2.0\n")
    for words in ("![network](diagram.svg)", "valid input sizes", "parameters: ", "scale_range", "Ronneberger"):
        assert words in card
    assert unetgen.checkpoint_metadata(root / "model.safetensors") == {"epoch": 7}


def test_folder_loads_back(folder: tuple[unetgen.UNet, Path]) -> None:
    model, root = folder
    loaded = load_folder(root)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded.preprocessing == load_preprocessing(SPEC) and loaded.metadata == {"epoch": 7}
    (root / "config.json").write_text(json.dumps({**FIELDS, "depth": 1}))
    with pytest.raises(CheckpointError, match="another network"):
        load_folder(root)
    with pytest.raises(CheckpointError, match="not a folder"):
        load_folder(root / "README.md")


def test_from_pretrained_offline(folder: tuple[unetgen.UNet, Path], tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("huggingface_hub", reason="the hub extra is not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from unetgen.share.hf import UNetHub

    model, root = folder
    hub = UNetHub.from_pretrained(root)
    assert isinstance(hub, unetgen.UNet) and not hub.training
    assert hub.preprocessing == load_preprocessing(SPEC)
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(hub(x), model(x), rtol=0, atol=0)
    hub.save_pretrained(tmp_path / "again")
    again = load_folder(tmp_path / "again")  # save_pretrained writes a unetgen checkpoint too
    assert again.config == model.config and again.preprocessing == hub.preprocessing
