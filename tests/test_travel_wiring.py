"""Issue 19, wiring: the preprocessing spec inside the checkpoint, `load_unet`/`build_unet` on
packages and folders, `save_folder` storing the spec, and `unetgen export`."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

import unetgen
from unetgen.checkpoint import CheckpointError, checkpoint_preprocessing
from unetgen.config.io import ConfigError
from unetgen.config.preprocessing import load_preprocessing

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: threads only add overhead

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


# -- 2. load_unet and build_unet on packages and folders ------------------------------------------


def _same_function(a: torch.nn.Module, b: torch.nn.Module, spatial: tuple[int, ...] = (16, 16)) -> None:
    x = torch.randn(1, 1, *spatial, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def test_load_unet_reads_a_bioimageio_package(model: unetgen.UNet, tmp_path: Path) -> None:
    from unetgen.share.bioimageio import export_bioimageio

    zipped = export_bioimageio(model, tmp_path / "model.zip", preprocessing=SPEC, weight_formats=["pytorch_state_dict"])
    unpacked = export_bioimageio(model, tmp_path / "unpacked", weight_formats=["pytorch_state_dict"])
    for path in (zipped, str(zipped), unpacked):
        loaded = unetgen.load_unet(path)
        assert loaded.config == model.config and not loaded.training
        _same_function(model, loaded)
    assert unetgen.load_unet(zipped).preprocessing == load_preprocessing(SPEC)
    assert unetgen.load_unet(unpacked).preprocessing is None
    (tmp_path / "broken.zip").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match=r"broken\.zip: not a safetensors checkpoint"):
        unetgen.load_unet(tmp_path / "broken.zip")
    import zipfile

    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("rdf.yaml", "format_version: 0.5.4\n")
    with pytest.raises(CheckpointError, match=r"other\.zip: .*not a package unetgen wrote"):
        unetgen.load_unet(tmp_path / "other.zip")


def test_load_unet_and_build_unet_read_a_model_folder(model: unetgen.UNet, tmp_path: Path) -> None:
    from unetgen.share.hub import load_folder, save_folder

    root = save_folder(model, tmp_path / "folder", preprocessing=SPEC, metadata={"epoch": 2})
    loaded = unetgen.load_unet(root)
    assert loaded.preprocessing == load_preprocessing(SPEC) and loaded.metadata == {"epoch": 2}
    _same_function(model, loaded)
    assert unetgen.build_unet(root).config == model.config
    assert unetgen.build_unet(str(root)).config == model.config
    # 3. model.safetensors carries the spec itself
    assert checkpoint_preprocessing(root / "model.safetensors") == load_preprocessing(SPEC)
    assert unetgen.load_unet(root / "model.safetensors").preprocessing == load_preprocessing(SPEC)
    (root / "preprocessing.json").write_text(json.dumps({"axes": "yx"}))
    with pytest.raises(CheckpointError, match=r"preprocessing\.json differs"):
        load_folder(root)
    (root / "preprocessing.json").unlink()
    assert unetgen.load_unet(root).preprocessing == load_preprocessing(SPEC)
    with pytest.raises(CheckpointError, match=r"a folder without model\.safetensors"):
        unetgen.load_unet(tmp_path)


def test_build_unet_prefers_a_preset_to_a_folder_of_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = next(iter(unetgen.PRESETS))
    (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path)
    assert unetgen.build_unet(name, device="meta").config == unetgen.get_preset(name)
    with pytest.raises(ConfigError, match=r"config\.json"):
        unetgen.build_unet(tmp_path / name)


def test_load_unet_never_opens_a_fifo_named_zip(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "model.zip"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match=r"not a regular file|FIFO"):
        unetgen.load_unet(fifo)
    with pytest.raises(CheckpointError, match=r"(?i)no such file"):
        unetgen.load_unet(tmp_path / "missing.zip")


# -- 4. unetgen export ----------------------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    from unetgen.cli import main

    try:
        code = main(list(argv))
    except SystemExit as done:  # argparse: usage errors
        code = int(done.code or 0)
    return code, capsys.readouterr().err


@pytest.fixture
def checkpoint(model: unetgen.UNet, tmp_path: Path) -> Path:
    return unetgen.save_unet(model, tmp_path / "m.safetensors", preprocessing=SPEC)


def test_export_bioimageio_cli(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from unetgen.share.bioimageio import rdf_json

    out = tmp_path / "model.zip"
    args = ("export", "bioimageio", str(checkpoint), "-o", str(out), "--weight-formats", "pytorch_state_dict")
    code, err = _cli(capsys, *args, "--name", "tiny nuclei net")
    assert (code, err.strip()) == (0, f"wrote {out}")
    assert rdf_json(out)["name"] == "tiny nuclei net"
    loaded = unetgen.load_unet(out)
    assert loaded.preprocessing == load_preprocessing(SPEC)  # the checkpoint's own spec travelled
    _same_function(unetgen.load_unet(checkpoint), loaded)
    assert _cli(capsys, *args)[0] == 0  # a package unetgen wrote is replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "model.zip"]  # no temporaries left


@pytest.mark.parametrize(
    ("argv", "code", "words"),
    [
        (["-o", "{tmp}/other.zip"], 1, "exists and unetgen cannot show it wrote it"),
        (["-o", "{tmp}/model.npy"], 2, "must end in .zip"),
        (["-o", "{tmp}/missing/model.zip"], 1, "does not exist"),
        (["-o", "{tmp}/link.zip"], 1, "symbolic link"),
        (["-o", "{tmp}/model.zip", "--weight-formats", "pickle"], 2, "give one or more of"),
        (["-o", "{tmp}/model.zip", "--name", "x/"], 1, "--name"),
        (["-o", "{tmp}/model.zip", "--preprocessing", "{tmp}/bad.json"], 1, "normalize"),
    ],
)
def test_export_bioimageio_cli_errors(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, words: str
) -> None:
    (tmp_path / "other.zip").write_bytes(b"mine")
    (tmp_path / "bad.json").write_text('{"normalize": ["nope"]}')
    (tmp_path / "link.zip").symlink_to(tmp_path / "other.zip")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    got, err = _cli(capsys, "export", "bioimageio", str(checkpoint), *(a.format(tmp=tmp_path) for a in argv))
    assert got == code and words in err and "Traceback" not in err
    assert err.count("error:") == 1 or code == 2
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before  # nothing touched


def test_export_monai_bundle_cli(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bundle"
    code, err = _cli(capsys, "export", "monai-bundle", str(checkpoint), "-o", str(out))
    assert (code, err.strip()) == (0, f"wrote {out}")
    inference = json.loads((out / "configs" / "inference.json").read_text())
    assert inference["network_def"]["config"] == unetgen.checkpoint_config(checkpoint).model_dump(mode="json")
    assert (out / "models" / "model.pt").is_file()
    (out / "models" / "model.pt").write_bytes(b"stale")
    assert _cli(capsys, "export", "monai-bundle", str(checkpoint), "-o", str(out))[0] == 0  # its own bundle: replaced
    assert (out / "models" / "model.pt").read_bytes() != b"stale"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "m.safetensors"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    code, err = _cli(capsys, "export", "monai-bundle", str(checkpoint), "-o", str(mine))
    assert code == 1 and "holds files and no bundle unetgen wrote" in err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("keep")
    code, err = _cli(capsys, "export", "monai-bundle", str(checkpoint), "-o", str(tmp_path / "file"))
    assert code == 1 and "not a folder" in err and (tmp_path / "file").read_text() == "keep"
    code, err = _cli(capsys, "export", "monai-bundle", str(tmp_path / "missing.safetensors"), "-o", str(out / "x"))
    assert code == 1 and err.startswith("error: ") and "Traceback" not in err


# -- the export command lines as a small argv property test (the grammar of tests/test_cli_fuzz.py) --

E_CHECKPOINTS = (["tiny.safetensors", "tiny3d.safetensors"],
                 ["tiny.json", "corrupt.safetensors", "missing.safetensors", "fifo.safetensors", "dir.yaml", "w.pt",
                  "in.npy", "nul", "empty", "/dev/null"])  # fmt: skip
E_ZIPS = (["model.zip", "outdir/model.zip"], ["in.npy", "missing/model.zip", "dir.yaml", "fifo.npy", "full.npy", "nul"])
E_DIRS = (["bundle", "outdir/bundle"], ["in.npy", "missing/bundle", "dir.yaml", "outdir", "fifo.npy", "nul", "empty"])
E_NAMES = (["tiny net", "nuclei (3d)"], ["", "x", "a/b", "n" * 200, "\n"])
E_FORMATS = (["pytorch_state_dict", "pytorch_state_dict,torchscript"], ["", "pickle", ",", "onnx;torchscript"])
E_SPECS = (["spec.json"], ["typo.yaml", "tiny.json", "missing.yaml", "fifo.yaml", "dir.yaml", "in.npy"])


@st.composite
def export_argvs(draw: st.DrawFn, files: dict[str, str]) -> list[str]:
    """`unetgen export ...` with 0, 1 or 2 wrong values, now and then a wrong format word."""
    kind = draw(st.sampled_from(["bioimageio", "bioimageio", "monai-bundle", "tensorflow"]))
    slots: list[tuple[str, tuple[list[str], list[str]]]] = [("", E_CHECKPOINTS)]
    slots.append(("-o", E_DIRS if kind == "monai-bundle" else E_ZIPS))
    if kind == "bioimageio":
        slots.append(("--weight-formats", E_FORMATS))  # onnx and torchscript are slow: sampled rarely
    slots += [opt for opt in [("--name", E_NAMES), ("--preprocessing", E_SPECS)] if draw(st.booleans())]
    wrong = set(draw(st.permutations(range(len(slots))))[: draw(st.sampled_from([0, 1, 1, 2]))])
    argv = ["export", kind]
    for i, (flag, pool) in enumerate(slots):
        value = draw(st.sampled_from(pool[1] if i in wrong else pool[0]))
        argv += [files.get(value, value)] if not flag else [flag, files.get(value, value)]
    return argv


@pytest.fixture(scope="module")
def fuzz_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    from cli_files import make_files

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("UNETGEN_DEBUG", raising=False)
        mp.chdir(tmp_path_factory.mktemp("cwd"))
        files = make_files(tmp_path_factory.mktemp("fuzz"))
        spec = Path(files["tiny.json"]).with_name("spec.json")
        spec.write_text(json.dumps({"axes": "yx", "normalize": ["scale_range"]}))
        files["spec.json"] = str(spec)
        for name in ("model.zip", "outdir/model.zip", "missing/model.zip", "bundle", "outdir/bundle", "missing/bundle"):
            files[name] = str(spec.parent / name)
        yield files


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_export_command_lines_end_in_0_1_or_2(fuzz_files: dict[str, str], data: st.DataObject) -> None:
    from cli_files import run

    argv = data.draw(export_argvs(fuzz_files), label="argv")
    code, _out, err = run(argv)
    event(f"{argv[1]} exit {code}")
    assert code in (0, 1, 2), (code, err)
    assert "Traceback" not in err and "internal error" not in err, err
    assert not os.listdir("."), f"wrote into the working directory: {os.listdir('.')}"
    lines = [line for line in err.splitlines() if line.strip()]
    if code == 0:
        assert lines == [f"wrote {argv[argv.index('-o') + 1]}"]
    elif code == 2:
        assert sum("error: " in line for line in lines) == 1, err
    else:
        assert lines and all(line.startswith("error: ") for line in lines), err
    leftovers = [
        p for p in Path(fuzz_files["tiny.json"]).parent.rglob(".*") if "unetgen-export" in p.name or ".tmp" in p.name
    ]
    assert not leftovers
