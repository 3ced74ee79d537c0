"""Data is sacred: every writer of a single output file replaces only a file unetgen can show it
wrote (its mark, read through the format's library: `unetgen.outputs`), never a foreign file,
never a .npy or .pdf (no place for a mark), never a symbolic link. The CLI says so in one
``error:`` line, exit 1, naming the option, the path and the fix; the file is left byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_files import PLANS, TINY, run

import unetgen
from unetgen.outputs import check_replaceable, written_by_unetgen

tifffile = pytest.importorskip("tifffile")
Image = pytest.importorskip("PIL.Image")

FIX = "give a new name, or remove it yourself"


@pytest.fixture(scope="module")
def model() -> unetgen.UNet:
    torch.manual_seed(0)
    return unetgen.build_unet(TINY.model_copy(update={"padding": "same"})).eval()


@pytest.fixture
def checkpoint(model: unetgen.UNet, tmp_path: Path) -> Path:
    path = unetgen.save_unet(model, tmp_path / "m.safetensors")
    tifffile.imwrite(tmp_path / "in.tif", np.random.default_rng(0).standard_normal((12, 12)).astype(np.float32))
    return path


def _refused(code: int, err: str, option: str, path: Path) -> bool:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    return code == 1 and len(lines) == 1 and option in lines[0] and str(path) in lines[0] and FIX in lines[0]


def _predict(checkpoint: Path, out: Path, *more: str) -> tuple[int, str, str]:
    return run(["predict", str(checkpoint), "--input", str(checkpoint.parent / "in.tif"), "--output", str(out),
                "--no-progress", *more])  # fmt: skip


def _foreign(path: Path) -> bytes:
    """A file of `path`'s kind that unetgen did not write (a real one, read by its library)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        np.save(path, np.arange(6.0))
    elif suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, np.ones((4, 5), np.uint8), software="ImageJ")
    elif suffix == ".png":
        Image.fromarray(np.ones((4, 5), np.uint8)).save(path)
    elif suffix == ".svg":
        path.write_text('<svg xmlns="http://www.w3.org/2000/svg"><metadata id="other">mine</metadata></svg>\n')
    elif suffix in (".yaml", ".yml"):
        path.write_text("# my config\ndepth: 3\n")
    else:
        path.write_bytes(b"years of work")
    return path.read_bytes()


@pytest.mark.parametrize("name", ["out.npy", "out.tif", "out.ome.tif"])
def test_predict_refuses_a_file_it_did_not_write(checkpoint: Path, name: str) -> None:
    out = checkpoint.parent / name
    before = _foreign(out)
    code, _, err = _predict(checkpoint, out)
    assert _refused(code, err, "--output", out), err
    assert out.read_bytes() == before
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == sorted(["m.safetensors", "in.tif", name])


def test_predict_replaces_its_own_tiff_never_a_npy(checkpoint: Path) -> None:
    tif, npy = checkpoint.parent / "out.tif", checkpoint.parent / "out.npy"
    assert _predict(checkpoint, tif)[0] == 0 and written_by_unetgen(tif)
    assert tifffile.imread(tif).dtype == np.float32
    code, _, err = _predict(checkpoint, tif, "--output-type", "labels")  # its own TIFF: replaced
    assert code == 0, err
    assert tifffile.imread(tif).dtype != np.float32 and written_by_unetgen(tif)
    assert _predict(checkpoint, npy)[0] == 0
    first = npy.read_bytes()
    code, _, err = _predict(checkpoint, npy, "--output-type", "labels")  # a .npy holds no mark: never replaced
    assert _refused(code, err, "--output", npy) and "no place for unetgen's mark" in err
    assert npy.read_bytes() == first


def test_predict_never_replaces_a_link(checkpoint: Path) -> None:
    victim = checkpoint.parent / "victim.npy"
    before = _foreign(victim)
    for name, to in (("link.npy", victim), ("dangling.tif", checkpoint.parent / "nowhere.tif")):
        (checkpoint.parent / name).symlink_to(to)
        code, _, err = _predict(checkpoint, checkpoint.parent / name)
        assert _refused(code, err, "--output", checkpoint.parent / name) and "symbolic link" in err, err
        assert (checkpoint.parent / name).is_symlink()
    assert victim.read_bytes() == before


@pytest.mark.parametrize("suffix", [".svg", ".png", ".pdf"])
def test_draw_replaces_only_its_own_diagram(tmp_path: Path, suffix: str) -> None:
    if suffix != ".svg":
        pytest.importorskip("cairosvg")
    theirs, ours = tmp_path / f"theirs{suffix}", tmp_path / f"ours{suffix}"
    before = _foreign(theirs)
    code, _, err = run(["draw", "ronneberger2015", "-o", str(theirs)])
    assert _refused(code, err, "-o", theirs) and theirs.read_bytes() == before
    assert run(["draw", "ronneberger2015", "-o", str(ours)])[0] == 0
    code, _, err = run(["draw", "ronneberger2015", "--input-size", "572", "-o", str(ours)])
    if suffix == ".pdf":  # no mark: never replaced
        assert _refused(code, err, "-o", ours) and "no place for unetgen's mark" in err
    else:
        assert code == 0 and written_by_unetgen(ours), err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([theirs.name, ours.name])


def test_import_replaces_only_its_own_config(tmp_path: Path) -> None:
    plans = tmp_path / "plans.json"
    plans.write_text(json.dumps(PLANS))
    theirs, ours = tmp_path / "theirs.yaml", tmp_path / "ours.yaml"
    before = _foreign(theirs)
    argv = ["import", "nnunet", str(plans), "--configuration", "2d", "--in-channels", "1", "--out-channels", "2"]
    code, _, err = run([*argv, "-o", str(theirs)])
    assert _refused(code, err, "--output", theirs) and theirs.read_bytes() == before
    assert run([*argv, "-o", str(ours)])[0] == 0
    code, _, err = run([*argv, "--no-deep-supervision", "-o", str(ours)])
    assert code == 0 and "deep_supervision" in ours.read_text(), err


def test_export_replaces_only_its_own_package(checkpoint: Path) -> None:
    pytest.importorskip("bioimageio.spec")
    theirs, ours = checkpoint.parent / "theirs.zip", checkpoint.parent / "ours.zip"
    before = _foreign(theirs)
    argv = ["export", "bioimageio", str(checkpoint), "--weight-formats", "pytorch_state_dict"]
    code, _, err = run([*argv, "-o", str(theirs)])
    assert _refused(code, err, "--output", theirs) and theirs.read_bytes() == before
    assert run([*argv, "-o", str(ours)])[0] == 0 and written_by_unetgen(ours)
    assert run([*argv, "-o", str(ours), "--name", "second run"])[0] == 0
    from unetgen.share.bioimageio import rdf_json

    assert rdf_json(ours)["name"] == "second run"


def test_python_writers_follow_the_same_rule(model: unetgen.UNet, tmp_path: Path) -> None:
    from unetgen.draw import draw_unet, write_diagram
    from unetgen.predict.formats import write_image

    array = np.zeros((2, 4, 4), np.float32)
    writers = {
        "a.tif": lambda p: write_image(p, array, "cyx"),
        "a.ome.tif": lambda p: write_image(p, array, "cyx"),
        "a.npy": lambda p: write_image(p, array, "cyx"),
        "a.svg": lambda p: write_diagram(draw_unet(TINY), p),
        "a.safetensors": lambda p: unetgen.save_unet(model, p),
    }
    try:
        import onnx  # noqa: F401  (the `export` extra)
    except ImportError:
        pass
    else:
        from unetgen.export import to_onnx

        writers["a.onnx"] = lambda p: to_onnx(model, p)
    for name, write in writers.items():
        ours, theirs, link = tmp_path / name, tmp_path / f"theirs-{name}", tmp_path / f"link-{name}"
        before = _foreign(theirs)
        link.symlink_to(theirs)
        for target in (theirs, link):
            with pytest.raises(ValueError, match="give a new name, or remove it yourself"):
                write(target)
        assert theirs.read_bytes() == before and link.is_symlink()
        write(ours)
        if name.endswith(".npy"):
            with pytest.raises(ValueError, match="no place for unetgen's mark"):
                write(ours)
        else:
            assert written_by_unetgen(ours), name
            write(ours)  # its own file: replaced
    assert not list(tmp_path.glob(".*.tmp"))


def test_marks_are_read_by_content_not_name(tmp_path: Path) -> None:
    """A file renamed to another kind, an empty or damaged one, a forged header: not marked."""
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "p.png")
    (tmp_path / "p.png").rename(tmp_path / "p.tif")
    (tmp_path / "e.svg").write_bytes(b"")
    (tmp_path / "bomb.svg").write_text('<!DOCTYPE svg [<!ENTITY a "aaaa">]><svg xmlns="http://www.w3.org/2000/svg"/>')
    (tmp_path / "c.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    (tmp_path / "z.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    (tmp_path / "d.yaml").mkdir()
    for p in tmp_path.iterdir():
        assert not written_by_unetgen(p), p.name
    assert check_replaceable(tmp_path / "new.npy") == tmp_path / "new.npy"


def test_a_npy_that_appears_while_it_is_written_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check comes first, the rename last: a .npy created between them is still not replaced
    (`unetgen.atomic.move_new` links, which never replaces)."""
    from unetgen.predict import formats

    out = tmp_path / "out.npy"
    save = np.save

    def racing_save(f, array):  # another program writes the same name meanwhile
        save(f, array)
        out.write_bytes(b"theirs")

    monkeypatch.setattr(formats.np, "save", racing_save)
    with pytest.raises(OSError, match="appeared"):
        formats.write_image(out, np.zeros((2, 2), np.float32))
    assert out.read_bytes() == b"theirs" and sorted(p.name for p in tmp_path.iterdir()) == ["out.npy"]


def test_export_bioimageio_replaces_only_its_own_package(model: unetgen.UNet, tmp_path: Path) -> None:
    pytest.importorskip("bioimageio.spec")
    from unetgen.share.bioimageio import export_bioimageio

    def export(path: Path) -> Path:
        return export_bioimageio(model, path, weight_formats=("pytorch_state_dict",))

    theirs, folder, victim = tmp_path / "theirs.zip", tmp_path / "project", tmp_path / "victim.txt"
    before = _foreign(theirs)
    folder.mkdir()
    (folder / "README.md").write_text("my project")
    victim.write_text("years of work")
    (tmp_path / "link.zip").symlink_to(victim)
    for target in (theirs, folder, tmp_path / "link.zip"):
        with pytest.raises(ValueError, match="give a new name, or remove it yourself"):
            export(target)
    assert theirs.read_bytes() == before and (folder / "README.md").read_text() == "my project"
    assert victim.read_text() == "years of work"
    for ours in (tmp_path / "ours.zip", tmp_path / "ours"):  # its own package, file or folder: replaced
        export(ours)
        export(ours)


def test_a_hub_folder_with_foreign_weights_is_refused_before_anything_is_written(
    model: unetgen.UNet, tmp_path: Path
) -> None:
    from unetgen.share.hub import save_folder

    (tmp_path / "model.safetensors").write_bytes(b"their weights")
    with pytest.raises(ValueError, match="give a new name, or remove it yourself"):
        save_folder(model, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    assert (tmp_path / "model.safetensors").read_bytes() == b"their weights"
    save_folder(model, tmp_path / "ours")
    save_folder(model, tmp_path / "ours")  # its own folder: replaced
