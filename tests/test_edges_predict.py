"""Issue 18, part A: out-of-core prediction, resume records and Dask, tried as an adversary would.

Nothing lost (an output never removes what unetgen did not write, never is, contains or sits
inside its input, one run at a time writes it, temporaries are exclusive), nothing hung (every
file read goes through one regular-file check, a scheduler that never speaks is given up on),
nothing unbounded (records, chunks and TIFF strips are bounded before they are read, blocks are
never held one Python object each), and every failure is one clear message."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from unetgen import UNetConfig, build_unet, predict_tiled, save_unet
from unetgen.cli import main

zarr = pytest.importorskip("zarr")
from unetgen.predict.arrays import create_output, open_image  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = UNetConfig(spatial_dims=2, depth=1, base_channels=1, out_channels=2, init="torch")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_unet(CONFIG).eval()


@pytest.fixture
def ckpt(model, tmp_path: Path) -> Path:
    return save_unet(model, tmp_path / "m.safetensors")


def _image(tmp_path: Path, name: str = "in.zarr", shape=(1, 60, 50)) -> Path:
    pixels = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    image = zarr.create_array(tmp_path / name, shape=pixels.shape, chunks=(1, 32, 32), dtype="float32")
    image[...] = pixels
    return tmp_path / name


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _cli(ckpt: Path, image: Path, output: Path, *extra: str) -> list[str]:
    return ["predict", str(ckpt), "--input", str(image), "--output", str(output), "--tile-size", "24", *extra]


def _errors(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]


# ---------------------------------------------------------------------------------------------
# data loss: only ever remove or write what unetgen made


def test_restart_never_removes_a_folder_unetgen_did_not_make(ckpt, tmp_path, capsys) -> None:
    image = _image(tmp_path)
    notes = tmp_path / "notes.zarr"
    notes.mkdir()
    (notes / "thesis.txt").write_text("four years of work")
    assert main(_cli(ckpt, image, notes, "--restart", "--no-progress")) == 1
    assert (notes / "thesis.txt").read_text() == "four years of work"
    [line] = _errors(capsys)
    assert "notes.zarr is a folder that holds no zarr array" in line and "remove it yourself" in line

    foreign = zarr.create_array(tmp_path / "theirs.zarr", shape=(2, 60, 50), chunks=(2, 24, 24), dtype="float32")
    foreign[...] = 7
    for flags in ([], ["--restart"]):  # neither resumed into nor removed: unetgen did not make it
        assert main(_cli(ckpt, image, tmp_path / "theirs.zarr", *flags, "--no-progress")) == 1
        assert "a zarr array that unetgen did not make" in _errors(capsys)[0]
        assert (zarr.open_array(tmp_path / "theirs.zarr", mode="r")[...] == 7).all()


def test_restart_removes_only_the_array_files_of_an_output_unetgen_made(model, ckpt, tmp_path, capsys) -> None:
    image = _image(tmp_path)
    out = tmp_path / "out.zarr"
    assert main(_cli(ckpt, image, out, "--no-progress")) == 0
    (out / "c" / "README").write_text("mine")  # a file of the user's, inside unetgen's array
    assert main(_cli(ckpt, image, out, "--restart", "--no-progress")) == 1
    assert "holds" in _errors(capsys)[0] and (out / "c" / "README").read_text() == "mine"
    (out / "c" / "README").unlink()
    before = _snapshot(out)
    assert main(_cli(ckpt, image, out, "--restart", "--no-progress")) == 0  # its own array: recreated
    assert _snapshot(out).keys() == before.keys()
    want = predict_tiled(model, torch.from_numpy(zarr.open_array(image)[...]), tile_size=24, progress=False)
    assert np.array_equal(zarr.open_array(out, mode="r")[...], want.numpy())


def test_create_output_overwrites_only_its_own_arrays(model, tmp_path) -> None:
    image = _image(tmp_path)
    theirs = zarr.create_array(tmp_path / "theirs.zarr", shape=(2, 60, 50), chunks=(2, 60, 50), dtype="float32")
    theirs[...] = 3
    for overwrite in (False, True):  # same layout as the prediction: still not resumed into
        with pytest.raises(ValueError, match="unetgen did not make"):
            create_output(tmp_path / "theirs.zarr", model, image, tile_size=24, block_shape=60, overwrite=overwrite)
    assert (zarr.open_array(tmp_path / "theirs.zarr", mode="r")[...] == 3).all()
    (tmp_path / "file.zarr").write_text("not a folder")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        create_output(tmp_path / "file.zarr", model, image, overwrite=True)
    assert (tmp_path / "file.zarr").read_text() == "not a folder"
    group = zarr.create_group(tmp_path / "group.zarr")
    group.create_array("x", shape=(2,), dtype="f4")
    with pytest.raises(ValueError, match="zarr group"):
        create_output(tmp_path / "group.zarr", model, image, overwrite=True)
    assert (tmp_path / "group.zarr" / "x" / "zarr.json").exists()
    mine = create_output(tmp_path / "mine.zarr", model, image, tile_size=24)
    mine[...] = 1
    again = create_output(tmp_path / "mine.zarr", model, image, tile_size=24, overwrite=True)
    assert (again[...] == 0).all()


@pytest.mark.parametrize("where", ["same", "inside", "contains", "symlink", "dotdot"])
def test_an_output_is_never_its_input_nor_inside_nor_around_it(ckpt, tmp_path, capsys, where) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    image = _image(folder)
    output = {
        "same": image,
        "inside": image / "pred.zarr",
        "contains": folder.with_suffix(".zarr"),
        "symlink": tmp_path / "link.zarr",
        "dotdot": folder / "x" / ".." / "in.zarr",
    }[where]
    if where == "contains":  # the input sits inside the output folder
        folder.rename(output)
        image, output = output / "in.zarr", output
    if where == "symlink":
        output.symlink_to(image)
    before = _snapshot(image)
    code = main(_cli(ckpt, image, output, "--restart", "--no-progress"))
    assert code == 1 and _snapshot(image) == before
    [line] = _errors(capsys)
    assert "--input" in line and "write the output elsewhere" in line


def test_an_npy_output_is_never_its_input(model, tmp_path, capsys) -> None:
    config = tmp_path / "c.json"
    config.write_text(CONFIG.model_dump_json())
    torch.save(model.state_dict(), tmp_path / "w.pt")
    np.save(tmp_path / "in.npy", np.ones((1, 30, 30), np.float32))
    os.link(tmp_path / "in.npy", tmp_path / "hard.npy")
    before = (tmp_path / "in.npy").read_bytes()
    for output in ("in.npy", "hard.npy"):
        argv = ["predict", str(config), "--weights", str(tmp_path / "w.pt"), "--input", str(tmp_path / "in.npy")]
        assert main([*argv, "--output", str(tmp_path / output)]) == 1
        assert "is --input" in _errors(capsys)[0]
    assert (tmp_path / "in.npy").read_bytes() == before


def test_predict_tiled_refuses_an_out_that_is_the_image(model, tmp_path) -> None:
    np.save(tmp_path / "in.npy", np.ones((1, 30, 30), np.float32))
    image = open_image(tmp_path / "in.npy")
    out = np.lib.format.open_memmap(tmp_path / "in2.npy", mode="w+", dtype="float32", shape=(2, 30, 30))
    with pytest.raises(ValueError, match=r"the journal .* is the input"):
        predict_tiled(model, image, out=out, journal=tmp_path / "in.npy", progress=False)
    x = torch.ones(2, 1, 30, 30)
    with pytest.raises(ValueError, match="shares its memory"):
        predict_tiled(model, x, out=x.expand(2, 2, 30, 30), progress=False)
    assert (np.load(tmp_path / "in.npy") == 1).all()


# ---------------------------------------------------------------------------------------------
# two runs, one output: a lock, and the record read back before it is written


def test_a_second_run_cannot_restart_an_output_being_written(model, tmp_path) -> None:
    image = _image(tmp_path)
    out = create_output(tmp_path / "out.zarr", model, image, tile_size=24)
    refused = []

    def second_run(n, tile):
        if not refused:  # another run starts while the first writes: from another thread
            errors = []

            def restart():
                try:
                    create_output(tmp_path / "out.zarr", model, image, tile_size=24, overwrite=True)
                except ValueError as err:
                    errors.append(str(err))

            t = threading.Thread(target=restart)
            t.start()
            t.join()
            refused.append(errors)

    predict_tiled(model, open_image(image), out=out, tile_size=24, callback=second_run, progress=False)
    assert refused and refused[0] and "is being written by" in refused[0][0]
    want = predict_tiled(model, torch.from_numpy(zarr.open_array(image)[...]), tile_size=24, progress=False)
    record = zarr.open_array(tmp_path / "out.zarr", mode="r")
    assert np.array_equal(record[...], want.numpy())
    assert record.attrs["unetgen_progress"]["completed"] == record.attrs["unetgen_progress"]["blocks"]


_HOLD = """
import sys
from unetgen.predict.ownership import output_lock
with output_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_the_lock_holds_across_processes_and_is_released_with_its_process(model, ckpt, tmp_path, capsys) -> None:
    image = _image(tmp_path)
    create_output(tmp_path / "out.zarr", model, image, tile_size=24)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path / "out.zarr")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert holder.stdout.readline().strip() == b"locked"
        assert main(_cli(ckpt, image, tmp_path / "out.zarr", "--restart", "--no-progress")) == 1
        [line] = _errors(capsys)
        assert f"is being written by unetgen process {holder.pid} on {socket.gethostname()}" in line
    finally:
        holder.communicate(b"", timeout=60)
    assert main(_cli(ckpt, image, tmp_path / "out.zarr", "--no-progress")) == 0
    assert not (tmp_path / "out.zarr.lock").exists()  # released by the run that took it


def test_a_stale_lock_is_taken_over_and_said_so_and_a_foreign_lock_file_is_left_alone(model, tmp_path, caplog) -> None:
    image = _image(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / "out.zarr.lock"
    lock.write_text(json.dumps({"unetgen_lock": 1, "pid": dead.pid, "host": socket.gethostname(), "since": 1.0}))
    with caplog.at_level(logging.WARNING, logger="unetgen.predict"):
        create_output(tmp_path / "out.zarr", model, image, tile_size=24)
    assert f"left by unetgen process {dead.pid}" in caplog.text and not lock.exists()
    lock.write_text("my shopping list")
    with pytest.raises(ValueError, match="not a unetgen lock file"):
        create_output(tmp_path / "out.zarr", model, image, tile_size=24)
    assert lock.read_text() == "my shopping list"


def test_a_record_replaced_by_another_writer_stops_the_run(model, tmp_path) -> None:
    image = _image(tmp_path)
    out = create_output(tmp_path / "out.zarr", model, image, tile_size=24)
    calls = []

    def other_writer(n, tile):  # a writer that ignores the lock (another machine): it resets the record
        calls.append(tile)
        if len(calls) == 2:
            other = zarr.open_array(tmp_path / "out.zarr", mode="r+")
            record = dict(other.attrs["unetgen_progress"], run="someone else", completed=0)
            other.attrs["unetgen_progress"] = record

    from unetgen.predict.journal import Journal

    with pytest.raises(ValueError, match="another run replaced"), pytest.MonkeyPatch.context() as mp:
        mp.setattr(Journal, "INTERVAL", 0.0)
        predict_tiled(model, open_image(image), out=out, tile_size=24, callback=other_writer, progress=False)
    assert zarr.open_array(tmp_path / "out.zarr", mode="r").attrs["unetgen_progress"]["run"] == "someone else"


def test_the_journal_temporary_never_follows_a_planted_symlink(model, tmp_path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in (".p.json.tmp", ".p.json.tmp.tmp", "p.json.tmp"):
        (tmp_path / name).symlink_to(victim)
    out = np.zeros((2, 30, 30), np.float32)
    predict_tiled(model, np.ones((1, 30, 30), np.float32), out=out, journal=tmp_path / "p.json", progress=False)
    assert victim.read_text() == "precious"
    assert json.loads((tmp_path / "p.json").read_text())["completed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".p.json.tmp", ".p.json.tmp.tmp", "p.json.tmp", "p.json", "victim.txt"]
    )


def test_a_journal_that_is_not_a_record_is_never_overwritten(model, tmp_path) -> None:
    notes = tmp_path / "notes.json"
    notes.write_text(json.dumps({"my": "data"}))
    out = np.zeros((2, 30, 30), np.float32)
    with pytest.raises(ValueError, match="not a unetgen progress record"):
        predict_tiled(model, np.ones((1, 30, 30), np.float32), out=out, journal=notes, resume=False, progress=False)
    assert json.loads(notes.read_text()) == {"my": "data"}
