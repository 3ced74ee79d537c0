"""Issue 18, part A: out-of-core prediction, resume records and Dask, tried as an adversary would.

Nothing lost (an output never removes what unetgen did not write, never is, contains or sits
inside its input, one run at a time writes it, temporaries are exclusive), nothing hung (every
file read goes through one regular-file check, a scheduler that never speaks is given up on),
nothing unbounded (records, chunks and TIFF strips are bounded before they are read, blocks are
never held one Python object each), and every failure is one clear message."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from unetgen import UNetConfig, build_unet, predict_tiled, save_unet
from unetgen.cli import main

zarr = pytest.importorskip("zarr")
from unetgen.predict.arrays import create_output, open_image, open_output  # noqa: E402

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
    (out / "0" / "c" / "README").write_text("mine")  # a file of the user's, inside unetgen's array
    assert main(_cli(ckpt, image, out, "--restart", "--no-progress")) == 1
    assert "holds" in _errors(capsys)[0] and (out / "0" / "c" / "README").read_text() == "mine"
    (out / "0" / "c" / "README").unlink()
    before = _snapshot(out)
    assert main(_cli(ckpt, image, out, "--restart", "--no-progress")) == 0  # its own array: recreated
    assert _snapshot(out).keys() == before.keys()
    want = predict_tiled(model, torch.from_numpy(zarr.open_array(image)[...]), tile_size=24, progress=False)
    assert np.array_equal(zarr.open_array(out / "0", mode="r")[...], want.numpy())


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
    record = zarr.open_array(tmp_path / "out.zarr" / "0", mode="r")
    assert np.array_equal(record[...], want.numpy())
    assert record.attrs["unetgen_progress"]["completed"] == record.attrs["unetgen_progress"]["blocks"]


_HOLD = """
import fcntl, json, os, socket, sys, time
fd = os.open(sys.argv[1] + ".lock", os.O_RDWR | os.O_CREAT)  # what output_lock does, without importing torch
fcntl.flock(fd, fcntl.LOCK_EX)
holder = {"unetgen_lock": 1, "pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
os.write(fd, json.dumps(holder).encode())
print("locked", flush=True)
sys.stdin.read()
os.unlink(sys.argv[1] + ".lock")
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
            other = zarr.open_array(tmp_path / "out.zarr" / "0", mode="r+")
            record = dict(other.attrs["unetgen_progress"], run="someone else", completed=0)
            other.attrs["unetgen_progress"] = record

    from unetgen.predict.journal import Journal

    with pytest.raises(ValueError, match="another run replaced"), pytest.MonkeyPatch.context() as mp:
        mp.setattr(Journal, "INTERVAL", 0.0)
        predict_tiled(model, open_image(image), out=out, tile_size=24, callback=other_writer, progress=False)
    assert zarr.open_array(tmp_path / "out.zarr" / "0", mode="r").attrs["unetgen_progress"]["run"] == "someone else"


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


# ---------------------------------------------------------------------------------------------
# hangs: one regular-file check for every file read; a scheduler that never speaks


def _unblock(*fifos: Path) -> None:
    """Let any reader left waiting on a FIFO go (so that a failure cannot hang the session)."""
    for fifo in fifos:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def test_no_fifo_blocks_out_of_core_prediction(model, ckpt, tmp_path, capsys) -> None:
    from test_hostile_inputs import finishes

    fifos = [tmp_path / name for name in ("fifo.npy", "fifo.tif", "fifo.json")]
    for fifo in fifos:
        os.mkfifo(fifo)
    meta = _image(tmp_path, "meta.zarr")  # a FIFO as the store's metadata
    (meta / "zarr.json").unlink()
    os.mkfifo(meta / "zarr.json")
    chunk = _image(tmp_path, "chunk.zarr")  # a FIFO as one of its chunks
    (chunk / "c" / "0" / "0" / "0").unlink()
    os.mkfifo(chunk / "c" / "0" / "0" / "0")
    out = create_output(tmp_path / "out.zarr", model, _image(tmp_path), tile_size=24)
    (tmp_path / "out.zarr" / "zarr.json").rename(tmp_path / "saved.json")
    os.mkfifo(tmp_path / "out.zarr" / "zarr.json")  # and in an existing output
    waiting = [*fifos, meta / "zarr.json", chunk / "c" / "0" / "0" / "0", tmp_path / "out.zarr" / "zarr.json"]
    try:
        for image, kind in [(fifos[0], "FIFO"), (fifos[1], "FIFO"), (meta, "FIFO"), (chunk, "FIFO")]:
            argv = _cli(ckpt, image, tmp_path / f"o-{image.stem}.zarr", "--no-progress")
            assert finishes(lambda argv=argv: main(argv)) == 1
            [line] = _errors(capsys)
            assert "not a regular file" in line and kind in line, line
        err = finishes(lambda: create_output(tmp_path / "out.zarr", model, np.zeros((1, 60, 50), np.float32)))
        assert isinstance(err, ValueError) and "not a regular file" in str(err)
        image, target = np.zeros((1, 30, 30), np.float32), np.zeros((2, 30, 30), np.float32)
        err = finishes(lambda: predict_tiled(model, image, out=target, journal=fifos[2], progress=False))
        assert isinstance(err, ValueError) and "journal" in str(err) and "FIFO" in str(err)
    finally:
        _unblock(*waiting)
    del out


def _silent_server(reply: bytes | None = None) -> tuple[str, socket.socket]:
    """A TCP server that accepts every connection and then says nothing (or only `reply`)."""
    server = socket.create_server(("127.0.0.1", 0))
    held = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
            if reply is not None:
                conn.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    return f"tcp://127.0.0.1:{server.getsockname()[1]}", server


def test_a_scheduler_that_accepts_and_never_speaks_is_given_up_on(ckpt, tmp_path, capsys, monkeypatch) -> None:
    pytest.importorskip("distributed")
    import time

    from test_hostile_inputs import finishes

    from unetgen.predict import distributed as unet_dask

    image = _image(tmp_path)
    monkeypatch.setattr(unet_dask, "SCHEDULER_TIMEOUT", 0.5, raising=False)  # (the base commit has none)
    for reply, why in [(None, "sent nothing in 0.5 s"), (b"HTTP/1.1 400 Bad Request\r\n\r\n", "Dask's protocol")]:
        address, server = _silent_server(reply)
        with server:
            start = time.monotonic()
            code = finishes(
                lambda address=address: main(_cli(ckpt, image, tmp_path / "o.zarr", "--scheduler", address))
            )
            assert code == 1 and time.monotonic() - start < 5
            [line] = _errors(capsys)
            assert f"tried {address}" in line and why in line and "memory" not in line, line


@pytest.mark.parametrize(
    "address, supported",
    [("ucx://host:1234", "ucx"), ("tls://host:8786", "certificates"), ("inproc://x", "this very process"),
     ("ws://h:1", "websocket"), ("tcp://h:99999", "Port out of range"), ("x" * 5000, "not an address"),
     ("tcp://[::1", "IPv6"), ("tcp://h:1/path", "not HOST:PORT"), ("", "not an address")],
)  # fmt: skip
def test_scheduler_addresses_unetgen_cannot_use_are_refused_saying_what_is_supported(
    ckpt, tmp_path, capsys, address, supported
) -> None:
    pytest.importorskip("distributed")
    assert main(_cli(ckpt, _image(tmp_path), tmp_path / "o.zarr", "--scheduler", address)) == 2
    line = [x for x in capsys.readouterr().err.splitlines() if "error:" in x][-1]
    assert supported in line and "tcp://HOST:PORT" in line and len(line) < 1000
    assert not (tmp_path / "o.zarr").exists()


# ---------------------------------------------------------------------------------------------
# unbounded work: records, chunks and strips are bounded before they are read


def _forge(out, **fields) -> None:
    record = dict(out.attrs["unetgen_progress"], **fields)
    out.attrs["unetgen_progress"] = record


def test_forged_progress_records_end_in_one_clear_error_without_inflating(model, tmp_path) -> None:
    import tracemalloc

    image = _image(tmp_path)
    out = create_output(tmp_path / "out.zarr", model, image, tile_size=24)
    predict_tiled(model, open_image(image), out=out, tile_size=24, progress=False)
    bomb = base64.b64encode(zlib.compress(bytes(64 << 20), 9)).decode()  # 64 MiB of zeros (2x the bound below), ~87 KB
    forged = {
        "a bomb": dict(done=bomb),
        "too short (IndexError)": dict(done=base64.b64encode(zlib.compress(b"")).decode()),
        "not a string (TypeError)": dict(done=5),
        "not zlib (zlib.error)": dict(done=base64.b64encode(b"garbage!").decode()),
        "not base64": dict(done="%%%"),
        "bits beyond the last block": dict(done=base64.b64encode(zlib.compress(b"\xff")).decode()),
    }
    for name, fields in forged.items():
        _forge(zarr.open_array(tmp_path / "out.zarr" / "0", mode="r+"), **fields)
        tracemalloc.start()
        with pytest.raises(ValueError, match="forged progress record") as info:
            predict_tiled(model, open_image(image), out=open_output(tmp_path / "out.zarr"), tile_size=24)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 32 << 20, (name, peak)
        assert "resume=False" in str(info.value) and len(str(info.value)) < 400, name
    zarr.open_array(tmp_path / "out.zarr" / "0", mode="r+").attrs["unetgen_progress"] = [1, 2, 3]
    with pytest.raises(ValueError, match="a list, not a JSON object"):
        predict_tiled(model, open_image(image), out=open_output(tmp_path / "out.zarr"), tile_size=24)
    predict_tiled(model, open_image(image), out=open_output(tmp_path / "out.zarr"), tile_size=24, resume=False)


def test_forged_journal_files_end_in_one_clear_error(model, tmp_path) -> None:
    image, out = np.ones((1, 30, 30), np.float32), np.zeros((2, 30, 30), np.float32)
    journal = tmp_path / "p.json"
    for text, match in [
        ("[" * 100_000 + "]" * 100_000, "not a unetgen progress record"),
        ("[1, 2]", "a list, not a JSON object"),
        ('"x"', "a str, not a JSON object"),
        ("x" * (1 << 20), "more than a progress record"),
        ("{", "not a unetgen progress record"),
    ]:
        journal.write_text(text)
        with pytest.raises(ValueError, match=match):
            predict_tiled(model, image, out=out, journal=journal, progress=False)


def test_chunks_are_checked_before_they_are_read(tmp_path, capsys, ckpt) -> None:
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"x" * 100)
    cases = {
        "zero.zarr": ("/dev/zero", "points outside the store"),
        "outside.zarr": (outside, "points outside the store"),
        "sparse.zarr": (None, "more than the"),
    }
    for name, (target, message) in cases.items():
        store = _image(tmp_path, name, shape=(1, 100, 100))
        chunk = store / "c" / "0" / "0" / "0"
        chunk.unlink()
        if target is None:
            with open(chunk, "wb") as f:
                f.truncate(8 << 30)  # 8 GiB on paper, nothing on disk
        else:
            chunk.symlink_to(target)
        with pytest.raises(ValueError, match=message):
            open_image(store)[...]
        assert main(_cli(ckpt, store, tmp_path / f"o-{name}", "--no-progress")) == 1
        assert message in _errors(capsys)[0]


def _sparse_tiff(path: Path, size: int, tile: int = 512, **options) -> None:
    """A zlib TIFF of size x size zeros, written tile by tile (never whole in memory)."""
    import tifffile

    tiles = (np.zeros((tile, tile), np.uint8) for _ in range((-(-size // tile)) ** 2))
    tifffile.imwrite(path, tiles, shape=(size, size), dtype="uint8", tile=(tile, tile), compression="zlib", **options)


def test_a_small_tiff_of_many_pixels_is_refused_from_its_header(model, tmp_path, capsys) -> None:
    import tracemalloc

    pytest.importorskip("tifffile")
    _sparse_tiff(tmp_path / "big.tif", 6000)  # 36 MB of pixels in ~150 KB
    config = tmp_path / "c.json"
    config.write_text(CONFIG.model_dump_json())
    torch.save(model.state_dict(), tmp_path / "w.pt")
    argv = ["predict", str(config), "--weights", str(tmp_path / "w.pt"), "--input", str(tmp_path / "big.tif")]
    tracemalloc.start()
    code = main([*argv, "--output", str(tmp_path / "o.npy"), "--memory-limit", "0.01"])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert code == 1 and peak < 16 << 20, peak
    [line] = _errors(capsys)
    assert "holds 6000x6000 uint8 values" in line and "memory limit" in line and "out of core" in line


def test_a_tiff_tile_larger_on_disk_than_its_pixels_is_refused(tmp_path) -> None:
    tifffile = pytest.importorskip("tifffile")
    from unetgen.predict.formats import read_image

    tifffile.imwrite(tmp_path / "t.tif", np.zeros((512, 512), np.uint8), tile=(256, 256))
    data = bytearray((tmp_path / "t.tif").read_bytes())
    with tifffile.TiffFile(tmp_path / "t.tif") as tif:
        tag = tif.pages[0].tags["TileByteCounts"]
        assert tag.dtype == 4  # LONG: 4 bytes per count
        offset, count = tag.valueoffset, tag.count
    for k in range(count):  # every tile claims 4 GiB on disk, for 64 KiB of pixels
        data[offset + 4 * k : offset + 4 * k + 4] = (2**32 - 1).to_bytes(4, "little")
    (tmp_path / "t.tif").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged or forged"):
        open_image(tmp_path / "t.tif")
    with pytest.raises(ValueError, match="damaged or forged"):
        read_image(tmp_path / "t.tif")


def test_input_chunks_decoded_per_tile_count_against_the_memory_limit(model, tmp_path) -> None:
    image = zarr.create_array(tmp_path / "one.zarr", shape=(1, 2000, 2000), chunks=(1, 2000, 2000), dtype="float32")
    out = np.zeros((2, 2000, 2000), np.float32)
    with pytest.raises(ValueError, match=r"input chunks decoded per tile: 15 MiB.*smaller chunks"):
        predict_tiled(model, image, out=out, tile_size=24, memory_limit=8 << 20, progress=False)


class _Huge:
    """An image of any shape that reads as zeros, and a sink that discards: planning and the
    block loop on them show what is held per block."""

    def __init__(self, shape, dtype="float32") -> None:
        self.shape, self.dtype = shape, np.dtype(dtype)

    def __getitem__(self, index):
        return np.zeros([1, *(s.stop - s.start for s in index[1:])], self.dtype)  # (C=1, *window)

    def __setitem__(self, index, value) -> None:
        pass


def test_blocks_are_never_held_one_object_each(model) -> None:
    import tracemalloc

    from unetgen.predict.run import prepare, run

    side = 2**13 * 3  # 3,072 x 3,072 = 9.4 M blocks of one tile
    image, out = _Huge((1, side, side)), _Huge((2, side, side))
    tracemalloc.start()
    job, source, sink = prepare(model, image, out, tile_size=24)
    seen = []

    def stop(n, tile):
        seen.append(tile)
        raise StopIteration

    with pytest.raises(StopIteration):
        run(model, job, source, sink, callback=stop, progress=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert job.num_blocks > 5_000_000 and seen == [(0, 0)]
    assert peak < 64 << 20, peak


# ---------------------------------------------------------------------------------------------
# messages: each failure says what it is


def _npy_header(path: Path, shape) -> None:
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
        f.write(bytes(64))


def _in_memory(model, tmp_path: Path, image: Path, output: Path) -> list[str]:
    config = tmp_path / "c.json"
    config.write_text(CONFIG.model_dump_json())
    torch.save(model.state_dict(), tmp_path / "w.pt")
    return ["predict", str(config), "--weights", str(tmp_path / "w.pt"), "--input", str(image), "--output", str(output)]


@pytest.mark.parametrize("shape", [(-5, 30), (10**30,), (1, 10**30, 10**30), (2**62, 2**62), ("a", 3)])
def test_npy_headers_that_lie_say_so(model, ckpt, tmp_path, capsys, shape) -> None:
    from unetgen.predict.formats import read_image

    path = tmp_path / "bad.npy"
    _npy_header(path, shape)
    for read in (open_image, read_image):
        with pytest.raises(ValueError, match=r"cannot read the \.npy array: its header") as info:
            read(path)
        assert len(str(info.value)) < 400
    for argv in (_cli(ckpt, path, tmp_path / "o.zarr"), _in_memory(model, tmp_path, path, tmp_path / "o.npy")):
        assert main(argv) == 1
        [line] = _errors(capsys)
        assert "bad.npy: cannot read the .npy array: its header" in line


def test_a_device_named_npy_is_not_a_regular_file(model, ckpt, tmp_path, capsys) -> None:
    (tmp_path / "zero.npy").symlink_to("/dev/zero")
    for argv in (
        _cli(ckpt, tmp_path / "zero.npy", tmp_path / "o.zarr"),
        _in_memory(model, tmp_path, tmp_path / "zero.npy", tmp_path / "o.npy"),
    ):
        assert main(argv) == 1
        [line] = _errors(capsys)
        assert "zero.npy is not a regular file (a character device)" in line and "pickle" not in line


def test_a_full_disk_says_so_names_the_path_and_leaves_nothing(model, tmp_path, capsys, monkeypatch) -> None:
    import shutil

    np.save(tmp_path / "in.npy", np.ones((1, 30, 30), np.float32))
    (tmp_path / "out").mkdir()
    argv = _in_memory(model, tmp_path, tmp_path / "in.npy", tmp_path / "out" / "p.npy")

    def short_write(file, array, **kwargs):  # what numpy raises when the disk fills up mid-write
        file.write(b"\x93NUMPY")
        raise OSError(f"{array.nbytes} requested and 0 written")

    with monkeypatch.context() as mp:
        mp.setattr(np, "save", short_write)
        assert main(argv) == 1
    [line] = _errors(capsys)
    assert line.startswith(f"error: {tmp_path / 'out' / 'p.npy'}: No space left on device") and "None" not in line
    assert list((tmp_path / "out").iterdir()) == []
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=100))
    assert main(argv) == 1  # refused before writing
    [line] = _errors(capsys)
    assert "No space left on device: the prediction takes 11,296 bytes, 100 are free" in line
    assert list((tmp_path / "out").iterdir()) == []


def test_both_branches_refuse_a_missing_output_folder_naming_it(model, ckpt, tmp_path, capsys) -> None:
    np.save(tmp_path / "in.npy", np.ones((1, 30, 30), np.float32))
    for argv in (
        _cli(ckpt, tmp_path / "in.npy", tmp_path / "no" / "such" / "o.zarr"),
        _in_memory(model, tmp_path, tmp_path / "in.npy", tmp_path / "no" / "such" / "o.npy"),
    ):
        assert main(argv) == 1
        [line] = _errors(capsys)
        assert f"the folder {tmp_path / 'no'}" in line and "does not exist; create it first" in line
    with pytest.raises(ValueError, match="does not exist; create it first"):
        create_output(tmp_path / "no" / "o.zarr", model, np.ones((1, 30, 30), np.float32))
    assert not (tmp_path / "no").exists()


def test_a_resumed_run_says_so(model, ckpt, tmp_path, capsys) -> None:
    image = _image(tmp_path)
    out = create_output(tmp_path / "out.zarr", model, image, tile_size=24)
    tiles = []

    def stop(n, tile):
        tiles.append(tile)
        if len(tiles) == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_tiled(model, open_image(image), out=out, tile_size=24, callback=stop, progress=False)
    done = zarr.open_array(tmp_path / "out.zarr" / "0", mode="r").attrs["unetgen_progress"]["completed"]
    assert main(_cli(ckpt, image, tmp_path / "out.zarr", "--no-progress")) == 0
    err = capsys.readouterr().err
    assert f"resuming: {done} of 56 blocks done" in err and "56/56 blocks complete" in err


def test_an_ome_tiff_naming_other_files_is_read_alone(tmp_path) -> None:
    """tifffile follows an OME-TIFF's references to other files by name, past the regular-file
    check: a FIFO named there would block. unetgen reads the file it was given, alone."""
    tifffile = pytest.importorskip("tifffile")
    from test_hostile_inputs import finishes

    from unetgen.predict.formats import read_image

    plane = '<TiffData FirstZ="{z}" IFD="0" PlaneCount="1"><UUID FileName="{name}">urn:uuid:{u}</UUID></TiffData>'
    ome = (
        '<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" '
        'UUID="urn:uuid:11111111-1111-1111-1111-111111111111"><Image ID="Image:0"><Pixels ID="Pixels:0" '
        'DimensionOrder="XYZCT" Type="uint8" SizeX="16" SizeY="16" SizeZ="2" SizeC="1" SizeT="1">'
        '<Channel ID="Channel:0:0" SamplesPerPixel="1"/>'
        + plane.format(z=0, name="a.ome.tif", u="11111111-1111-1111-1111-111111111111")
        + plane.format(z=1, name="b.ome.tif", u="22222222-2222-2222-2222-222222222222")
        + "</Pixels></Image></OME>"
    )
    tifffile.imwrite(tmp_path / "a.ome.tif", np.ones((16, 16), np.uint8), description=ome, metadata=None)
    os.mkfifo(tmp_path / "b.ome.tif")
    try:
        assert tuple(finishes(lambda: open_image(tmp_path / "a.ome.tif")).shape) == (1, 16, 16)  # YX: (C, H, W)
        assert tuple(finishes(lambda: read_image(tmp_path / "a.ome.tif")).shape) == (1, 16, 16)
    finally:
        _unblock(tmp_path / "b.ome.tif")


def test_damaged_zarr_metadata_and_chunks_end_in_one_clear_error(ckpt, tmp_path, capsys) -> None:
    from unetgen.predict.plan import plan_tiles

    def forge(name: str, change) -> Path:
        store = _image(tmp_path, name)
        meta = json.loads((store / "zarr.json").read_text())
        change(meta)
        (store / "zarr.json").write_text(json.dumps(meta))
        return store

    cases = {
        "huge.zarr": (lambda m: m.__setitem__("shape", [1, 10**30, 50]), "more than 2\\*\\*62 pixels"),
        "zero.zarr": (lambda m: m["chunk_grid"]["configuration"].__setitem__("chunk_shape", [1, 0, 32]), "chunks"),
    }
    for name, (change, message) in cases.items():
        assert main(_cli(ckpt, forge(name, change), tmp_path / f"o-{name}", "--no-progress")) == 1
        [line] = _errors(capsys)
        assert "internal error" not in line and re.search(message, line), line
    garbage = _image(tmp_path, "garbage.zarr")
    (garbage / "c" / "0" / "0" / "0").write_bytes(b"garbage" * 10)  # within size, not zstd
    assert main(_cli(ckpt, garbage, tmp_path / "o-garbage.zarr", "--no-progress")) == 1
    [line] = _errors(capsys)
    assert "image window [0:16, 0:16] cannot be read" in line and "damaged" in line
    with pytest.raises(ValueError, match="image_shape"):
        plan_tiles(CONFIG, (10**30, 5))


def test_a_record_of_too_many_blocks_is_refused_before_it_is_allocated() -> None:
    from unetgen.predict.journal import Journal

    with pytest.raises(ValueError, match=r"blocks; a progress record holds at most.*use larger blocks"):
        Journal({}, "x", 10**15)  # a 125 TB bitmap


def test_the_out_of_core_memory_estimate_comes_before_the_output_is_created(ckpt, tmp_path, capsys) -> None:
    image = _image(tmp_path)
    assert main(_cli(ckpt, image, tmp_path / "o.zarr", "--memory-limit", "0.000001")) == 1
    assert "input chunks decoded per tile" in _errors(capsys)[0]
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "o.zarr.lock").exists()


def test_a_link_planted_in_an_output_redirects_no_write(tmp_path: Path) -> None:
    """A resumable output with its chunk folder replaced by a symbolic link to a folder unetgen did
    not make: resuming refuses before writing through the link, and that folder stays as it was."""
    model = build_unet({"spatial_dims": 2, "depth": 2, "base_channels": 2, "dropout": 0})
    image = np.random.default_rng(0).random((1, 64, 64), dtype=np.float32)
    out = create_output(tmp_path / "o.zarr", model, image, tile_size=44)

    def stop(n: int, tile: tuple[int, ...]) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_tiled(model, image, out=out, tile_size=44, callback=stop, progress=False)
    victim = tmp_path / "theirs"
    victim.mkdir()
    (victim / "keep.txt").write_text("not unetgen's")
    chunks = tmp_path / "o.zarr" / "0" / "c"
    for entry in sorted(chunks.rglob("*"), reverse=True):
        entry.rmdir() if entry.is_dir() else entry.unlink()
    chunks.rmdir()
    chunks.symlink_to(victim, target_is_directory=True)
    again = create_output(tmp_path / "o.zarr", model, image, tile_size=44)
    with pytest.raises(ValueError, match=r"is a symbolic link; unetgen writes only files of its own"):
        predict_tiled(model, image, out=again, tile_size=44, progress=False)
    assert [p.name for p in victim.iterdir()] == ["keep.txt"] and (victim / "keep.txt").read_text() == "not unetgen's"
