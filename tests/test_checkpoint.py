"""Checkpoints: round trips for every preset, tampered files, atomic writes, seeded builds,
Hydra-style instantiation, configs embedded in larger YAML files, and `unetgen summary`."""

from __future__ import annotations

import importlib
import json
import pickle
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import configs
from hypothesis import given
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from small import small_presets

import unetgen
from unetgen import (
    CheckpointError,
    ConfigError,
    UNetConfig,
    build_unet,
    checkpoint,
    checkpoint_config,
    load_config,
    load_unet,
    save_unet,
)
from unetgen.cli import main
from unetgen.export import example_input

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: threads only add overhead

TINY = UNetConfig(depth=2, base_channels=2, norm="batch", deep_supervision=(1,))


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    model = build_unet(TINY, seed=0)
    return model, save_unet(model, tmp_path / "tiny.safetensors")


def rewrite(src: Path, dst: Path, *, tensors=None, metadata=None) -> Path:
    """Write a copy of checkpoint `src` with replaced tensors and/or metadata."""
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
    save_file(tensors if tensors is not None else load_file(src), dst, metadata=metadata or meta)
    return dst


# ---------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("name", sorted(small_presets()))
def test_round_trip_every_preset(name: str, tmp_path: Path) -> None:
    config = small_presets()[name]
    model = build_unet(config, seed=1).eval()
    path = save_unet(model, tmp_path / f"{name}.safetensors")
    loaded = load_unet(path)
    assert loaded.config == config
    assert same_state(model, loaded)
    x = example_input(model)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert checkpoint_config(path) == config


def test_round_trip_with_explicit_channels(tmp_path: Path) -> None:
    config = UNetConfig(depth=2, channels=[[2, 3], 4, [5, 6]], decoder_channels=[3, 4])
    model = build_unet(config, seed=0)
    loaded = load_unet(save_unet(model, tmp_path / "channels.safetensors"))
    assert loaded.config == config and same_state(loaded, model)


def test_round_trip_keeps_dtype_and_unwraps_ddp_style_wrappers(tmp_path: Path) -> None:
    model = build_unet(TINY, seed=0, dtype=torch.float64)

    class Wrapper(torch.nn.Module):  # what DistributedDataParallel and torch.compile look like
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.module = inner

    loaded = load_unet(save_unet(Wrapper(model), tmp_path / "w.safetensors"))
    assert next(loaded.parameters()).dtype == torch.float64
    assert same_state(model, loaded)
    with pytest.raises(TypeError, match="needs a unetgen UNet"):
        save_unet(torch.nn.Linear(2, 2), tmp_path / "lin.safetensors")
    with pytest.raises(CheckpointError, match=r"must end in \.safetensors"):
        save_unet(model, tmp_path / "model.pt")


def test_metadata_holds_format_version_and_config(saved: tuple[torch.nn.Module, Path]) -> None:
    _, path = saved
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "unetgen"
    assert meta["unetgen_version"] == unetgen.__version__
    assert UNetConfig.model_validate(json.loads(meta["config"])) == TINY


# ---------------------------------------------------------------------------------------------
# tampered files


def test_swapped_weights_are_named(saved: tuple[torch.nn.Module, Path], tmp_path: Path) -> None:
    _, path = saved
    tensors = load_file(path)
    a, b = "encoder.0.block.body.0.weight", "encoder.1.block.body.0.weight"
    tensors[a], tensors[b] = tensors[b], tensors[a]
    bad = rewrite(path, tmp_path / "swapped.safetensors", tensors=tensors)
    with pytest.raises(CheckpointError, match="shape mismatch") as err:
        load_unet(bad)
    assert a in str(err.value) and b in str(err.value)
    assert "[4, 2, 3, 3]" in str(err.value)  # the stored shape of `a` is now that of `b`


def test_missing_and_unexpected_tensors(saved: tuple[torch.nn.Module, Path], tmp_path: Path) -> None:
    model, path = saved
    tensors = load_file(path)
    gone = "head.weight"
    tensors["extra.weight"] = tensors.pop(gone)
    bad = rewrite(path, tmp_path / "renamed.safetensors", tensors=tensors)
    with pytest.raises(CheckpointError, match=r"missing: head\.weight; unexpected: extra\.weight"):
        load_unet(bad)
    with pytest.warns(UserWarning, match=r"missing: head\.weight"):
        loose = load_unet(bad, strict=False)
    fresh, kept = loose.state_dict(), model.state_dict()
    assert all(torch.equal(fresh[k], kept[k]) for k in kept if k != gone)


def test_other_config_in_metadata_does_not_fit_the_weights(saved, tmp_path: Path) -> None:
    _, path = saved
    other = TINY.model_copy(update={"base_channels": 3})
    meta = {"format": "unetgen", "unetgen_version": "0", "state_format": "2", "config": other.model_dump_json()}
    with pytest.raises(CheckpointError, match="weights do not fit the stored config; shape mismatch: "):
        load_unet(rewrite(path, tmp_path / "other.safetensors", metadata=meta))


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"format": "unetgen", "config": "{not json"}, "'config' is not valid JSON"),
        ({"format": "unetgen", "config": json.dumps({"depth": 0})}, r"not a valid UNetConfig:\n.*depth"),
        ({"format": "unetgen", "config": json.dumps({"dpeth": 2})}, r"not a valid UNetConfig:\n.*dpeth"),
        ({"format": "unetgen"}, "no 'config' entry"),
        ({"format": "timm", "config": "{}"}, "not a unetgen checkpoint .*format='timm'"),
        ({"hello": "world"}, "not a unetgen checkpoint: this is a safetensors file without unetgen's metadata"),
    ],
)
def test_edited_metadata(saved, tmp_path: Path, meta: dict[str, str], message: str) -> None:
    _, path = saved
    bad = rewrite(path, tmp_path / "edited.safetensors", metadata=meta)
    with pytest.raises(CheckpointError, match=message):
        load_unet(bad)
    with pytest.raises(CheckpointError, match=message):
        checkpoint_config(bad)


def test_metadata_edited_in_place_on_disk(saved, tmp_path: Path) -> None:
    """A byte-level edit of the header (same length, so the file stays well-formed)."""
    _, path = saved
    data = path.read_bytes()
    old, new = b'\\"depth\\": 2', b'\\"depth\\": 3'  # JSON inside the JSON header: quotes escaped
    assert data.count(old) == 1
    bad = tmp_path / "hexedit.safetensors"
    bad.write_bytes(data.replace(old, new))
    with pytest.raises(CheckpointError, match=r"missing: .*decoder\.2"):
        load_unet(bad)


def test_plain_safetensors_file_is_not_a_checkpoint(saved, tmp_path: Path) -> None:
    model, _ = saved
    plain = tmp_path / "plain.safetensors"
    save_file(model.state_dict(), plain)
    with pytest.raises(CheckpointError, match="not a unetgen checkpoint"):
        load_unet(plain)


@pytest.mark.parametrize("keep", [0, 7, 100, "header", "half", "all_but_one"])
def test_truncated_file(saved, tmp_path: Path, keep: int | str) -> None:
    _, path = saved
    data = path.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    cut = {"header": header, "half": len(data) // 2, "all_but_one": len(data) - 1}.get(keep, keep)
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[:cut])
    words = {0: "this is an empty file", 7: "this is a file of 7 bytes, too short"}.get(keep, "not a complete")
    with pytest.raises(CheckpointError, match=words):
        load_unet(bad)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        load_unet(tmp_path / "nothing.safetensors")


class Payload:
    """Unpickling this creates a marker file: proof that a loader ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_pickle_renamed_to_safetensors_runs_nothing(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.safetensors"
    if how == "pickle":
        evil.write_bytes(pickle.dumps({"weight": Payload(marker)}))
    else:
        torch.save({"weight": torch.zeros(2), "payload": Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match=r"not a safetensors checkpoint: this is a (Python|torch) pickle"):
        load_unet(evil)
    with pytest.raises(CheckpointError):
        checkpoint_config(evil)
    assert not marker.exists()
    # the payload is live: unpickling it does create the marker
    if how == "pickle":
        pickle.loads(evil.read_bytes())
    else:
        torch.load(evil.rename(tmp_path / "evil.pt"), weights_only=False)
    assert marker.exists()


# ---------------------------------------------------------------------------------------------
# atomic writes


def test_crash_mid_save_keeps_the_old_checkpoint(saved, tmp_path: Path, monkeypatch) -> None:
    model, path = saved
    before = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_unet(build_unet(TINY, seed=5), path)
    assert path.read_bytes() == before
    assert same_state(load_unet(path), model)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left


def test_overwrite_replaces_and_leaves_no_temporary(saved, tmp_path: Path) -> None:
    _, path = saved
    other = build_unet(TINY, seed=5)
    save_unet(other, path)
    assert same_state(load_unet(path), other)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


# ---------------------------------------------------------------------------------------------
# seeded builds


@given(configs(max_depth=3))
def test_seeded_builds_are_bit_identical(config: UNetConfig) -> None:
    a, b = build_unet(config, seed=7), build_unet(config, seed=7)
    assert same_state(a, b)


@pytest.mark.parametrize("init", ["paper", "torch"])
def test_seed_changes_weights_and_leaves_global_rng_alone(init: str) -> None:
    config = TINY.model_copy(update={"init": init})
    state = torch.get_rng_state()
    a = build_unet(config, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert not same_state(a, build_unet(config, seed=2))
    build_unet(config)  # unseeded builds do draw from the global RNG
    assert not torch.equal(torch.get_rng_state(), state)
    meta = build_unet(config, seed=1, device="meta")
    assert next(meta.parameters()).is_meta


# ---------------------------------------------------------------------------------------------
# Hydra-style instantiation and embedded configs


class FrozenMapping(Mapping):
    """Stands in for OmegaConf's DictConfig, which Hydra passes with its default `_convert_: none`."""

    def __init__(self, data: Mapping) -> None:
        self._data = dict(data)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


class FrozenSequence(Sequence):
    """Stands in for OmegaConf's ListConfig."""

    def __init__(self, data: Sequence) -> None:
        self._data = list(data)

    def __getitem__(self, i):
        return self._data[i]

    def __len__(self) -> int:
        return len(self._data)


def wrap(node: Any) -> Any:
    if isinstance(node, Mapping):
        return FrozenMapping({k: wrap(v) for k, v in node.items()})
    if isinstance(node, list):
        return FrozenSequence([wrap(v) for v in node])
    return node


def instantiate(node: Any) -> Any:
    """A minimal `hydra.utils.instantiate`: import `_target_` and call it with the other keys as
    keyword arguments (recursively instantiated), passing containers as DictConfig/ListConfig-like."""
    if isinstance(node, Mapping) and "_target_" in node:
        module, _, name = node["_target_"].rpartition(".")
        target = getattr(importlib.import_module(module), name)
        kwargs = {k: instantiate(v) for k, v in node.items() if not (k.startswith("_") and k.endswith("_"))}
        return target(**kwargs)
    if isinstance(node, Mapping):
        return FrozenMapping({k: instantiate(v) for k, v in node.items()})
    return wrap(node)


FIELDS = {"depth": 2, "channels": [2, 4, 8], "norm": {"type": "group", "num_groups": 2}, "deep_supervision": [1]}


@pytest.mark.parametrize(
    "node",
    [
        {"_target_": "unetgen.build_unet", **FIELDS},
        {"_target_": "unetgen.build_unet", "config": FIELDS},
        {"_target_": "unetgen.build_unet", "config": {**FIELDS, "depth": 3, "channels": [2, 4, 8, 16]}, **FIELDS},
        {"_target_": "unetgen.build_unet", "seed": 3, **FIELDS},
    ],
    ids=["flat", "config", "config+overrides", "seed"],
)
def test_hydra_style_instantiate(node: dict[str, Any]) -> None:
    model = instantiate(node)
    assert isinstance(model, unetgen.UNet)
    assert model.config == UNetConfig.model_validate(FIELDS)
    if "seed" in node:
        assert same_state(model, build_unet(FIELDS, seed=3))


def test_config_embedded_in_a_larger_yaml(tmp_path: Path) -> None:
    doc = {
        "trainer": {"epochs": 3, "lr": 0.01},
        "model": {"_target_": "unetgen.build_unet", "_convert_": "all", "seed": 4, **FIELDS},
        "experiment": {"seed": 1, "net": {"config": FIELDS}, "plain": FIELDS},
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    want = UNetConfig.model_validate(FIELDS)
    assert load_config(path, key="model") == want
    assert load_config(path, key="experiment.plain") == want
    built = instantiate(yaml.safe_load(path.read_text())["model"])
    assert built.config == want and same_state(built, build_unet(want, seed=4))
    assert load_config(doc, key="experiment.plain") == want
    with pytest.raises(ConfigError, match=r"no key 'modle' at the top level \(found: trainer, model, experiment\)"):
        load_config(path, key="modle")
    with pytest.raises(ConfigError, match=r"cannot look up 'lr': experiment.seed is a int, not a mapping"):
        load_config(path, key="experiment.seed.lr")
    with pytest.raises(ConfigError, match=r"experiment\.yaml: experiment\.net:\d+:5: config: unknown field 'config'"):
        load_config(path, key="experiment.net")
    doc["model"]["_target_"] = "monai.networks.nets.UNet"
    with pytest.raises(ConfigError, match=r"model\._target_ is 'monai.networks.nets.UNet'"):
        load_config(doc, key="model")


def test_build_unet_fields_override_a_config(tmp_path: Path) -> None:
    path = tmp_path / "base.json"
    path.write_text(json.dumps(FIELDS), encoding="utf-8")
    model = build_unet(path, out_channels=3, device="meta")
    assert model.config == UNetConfig.model_validate({**FIELDS, "out_channels": 3})
    with pytest.raises(ConfigError, match="depth"):
        build_unet(path, depth=0, device="meta")


# ---------------------------------------------------------------------------------------------
# command line


def test_summary_reads_a_checkpoint(saved, capsys, tmp_path: Path) -> None:
    _, path = saved
    assert main(["summary", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"config: {path}" in out and "output shape:" in out and "aux1" in out
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 16)
    assert main(["summary", str(bad)]) == 1  # a failure, not a usage error
    assert "not a complete safetensors file" in capsys.readouterr().err


def test_old_module_layout_is_refused_clearly(saved, tmp_path: Path) -> None:
    """A checkpoint written before one-module-per-level (no `state_format`) fails with a message
    saying so, rather than a list of missing and unexpected keys or a silent partial load."""
    _, path = saved
    with safe_open(str(path), framework="pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k != "state_format"}
    old = {k.replace(".block.", ".", 1) if k.startswith("encoder.") else k: v for k, v in load_file(path).items()}
    old_path = tmp_path / "old.safetensors"
    save_file(old, old_path, metadata=meta)
    with pytest.raises(CheckpointError, match=r"module layout of unetgen 0\.1.*re-save"):
        load_unet(old_path)
    with pytest.raises(CheckpointError, match="module layout"):
        load_unet(old_path, strict=False)
    assert checkpoint_config(old_path) == load_unet(path).config  # the config is still readable
