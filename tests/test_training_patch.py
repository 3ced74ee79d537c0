"""The training patch travels with the model: `save_unet(patch_size=...)` stores it, `load_unet`
gives it back, and prediction of a model whose output depends on the tile (instance/group/layer
norm, a global pool: `tile_dependence`) tiles with it unless told otherwise."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from unetgen import CheckpointError, InputShapeError, UNetConfig, build_unet, predict_tiled
from unetgen.analysis.ops import tile_dependence
from unetgen.checkpoint import load_unet, save_unet
from unetgen.predict.plan import model_tile, plan_tiles

INSTANCE = {"depth": 2, "base_channels": 2, "padding": "same", "norm": "instance"}


@pytest.mark.parametrize(
    "config, why",
    [
        ({"depth": 2, "base_channels": 2}, None),
        ({"depth": 2, "base_channels": 2, "norm": "batch"}, None),
        (INSTANCE, "instance norm"),
        ({"depth": 2, "base_channels": 4, "norm": {"type": "group", "num_groups": 2}}, "group norm"),
        ({"depth": 2, "base_channels": 2, "norm": "layer"}, "layer norm"),
        ({"depth": 2, "base_channels": 4, "block": {"type": "plain", "excitation": {"type": "cse"}}}, "averages"),
        ({"depth": 2, "base_channels": 2, "decoder_norm": "instance"}, "instance norm"),
    ],
)
def test_tile_dependence_names_the_first_op_over_the_tile(config: dict, why: str | None) -> None:
    found = tile_dependence(UNetConfig(**config))
    assert (found is None) if why is None else (why in found)


def test_the_patch_round_trips_and_bad_ones_are_refused(tmp_path) -> None:
    model = build_unet(INSTANCE, seed=0)
    path = save_unet(model, tmp_path / "m.safetensors", patch_size=(32, 48))
    assert load_unet(path).patch_size == (32, 48)
    assert load_unet(save_unet(model, tmp_path / "n.safetensors")).patch_size is None
    assert load_unet(save_unet(model, tmp_path / "o.safetensors", patch_size=32)).patch_size == (32, 32)
    with pytest.raises(InputShapeError, match="nearest valid"):
        save_unet(model, tmp_path / "p.safetensors", patch_size=33)
    with pytest.raises(ValueError, match="patch_size"):
        save_unet(model, tmp_path / "q.safetensors", patch_size=(32, 32, 32))
    assert not (tmp_path / "p.safetensors").exists() and not (tmp_path / "q.safetensors").exists()
    # a stored patch that is not a list of valid sizes is refused when the checkpoint is read
    with safe_open(str(path), "pt") as f:
        header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    for bad in ("[33, 32]", "[32]", '"32x32"', "[true, 32]", "[32, 32.0]", "not json", "[" * 5000, "[-32, 32]"):
        forged = tmp_path / "forged.safetensors"
        save_file(tensors, forged, metadata={**header, "patch_size": bad})
        with pytest.raises(CheckpointError, match="patch_size") as err:
            load_unet(forged)
        assert len(str(err.value)) < 400


def test_prediction_tiles_a_tile_dependent_model_with_its_training_patch(tmp_path) -> None:
    image = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 96, 80)).astype(np.float32))
    model = load_unet(save_unet(build_unet(INSTANCE, seed=1), tmp_path / "m.safetensors", patch_size=32))
    assert model_tile(model, None) == (32, 32)
    assert model_tile(model, 64) == 64 and model_tile(model, None, memory_budget=1 << 30) is None
    assert plan_tiles(model, (96, 80)).tile_input == (32, 32)
    with torch.no_grad():
        default = predict_tiled(model, image, progress=False)
        patch = predict_tiled(model, image, tile_size=32, progress=False)
        whole = predict_tiled(model, image, tile_size=(96, 80), progress=False)
    assert torch.equal(default, patch)
    assert not torch.allclose(default, whole, atol=1e-4)  # instance norm: the tile changes the result
    # a model whose output does not depend on the tile keeps the planner's tile
    plain = load_unet(save_unet(build_unet({"depth": 2, "base_channels": 2}, seed=1), tmp_path / "v.safetensors",
                                patch_size=60))  # fmt: skip
    assert model_tile(plain, None) is None and plan_tiles(plain, (300, 300)).tile_input != (60, 60)


def test_unetgen_predict_says_it_uses_the_training_patch(tmp_path) -> None:
    model = build_unet(INSTANCE, seed=1)
    ckpt = save_unet(model, tmp_path / "m.safetensors", patch_size=32)
    np.save(tmp_path / "in.npy", np.random.default_rng(0).standard_normal((1, 96, 80)).astype(np.float32))
    run = subprocess.run(
        [sys.executable, "-m", "unetgen", "predict", str(ckpt), "--input", str(tmp_path / "in.npy"),
         "--output", str(tmp_path / "out.npy")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "tile: the training patch 32x32 (" in run.stderr and "instance norm" in run.stderr
    with torch.no_grad():
        want = predict_tiled(load_unet(ckpt), torch.from_numpy(np.load(tmp_path / "in.npy")), progress=False)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), want.numpy())
    assert json.loads(json.dumps(list(load_unet(ckpt).patch_size))) == [32, 32]


def test_a_hub_folder_keeps_the_training_patch(tmp_path) -> None:
    from unetgen.share.hub import save_folder
    from unetgen.share.load import load_unet as load_any

    model = load_unet(save_unet(build_unet(INSTANCE, seed=0), tmp_path / "m.safetensors", patch_size=(32, 48)))
    folder = save_folder(model, tmp_path / "folder")
    assert load_any(folder).patch_size == (32, 48)
