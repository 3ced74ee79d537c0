"""Issue 18, part D: what unetgen writes (diagrams, checkpoints, ONNX files) is never left half
written and never written through a planted symlink; a file that is not a checkpoint says what it
is; an example with its channels last says so.

Full disks are made two ways: `RLIMIT_FSIZE` (portable: a write past the limit fails with EFBIG,
Python ignores SIGXFSZ) and, where user namespaces allow it, a real 8 KiB tmpfs (ENOSPC)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from unetgen import CheckpointError, UNetConfig, build_unet, draw_unet, load_unet, save_unet
from unetgen.cli import main

resource = pytest.importorskip("resource")

TINY = UNetConfig(depth=1, base_channels=2, channel_multiplier=1)
ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past `limit` bytes fail with EFBIG (a disk that fills up), for this process only."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def leftovers(folder: Path, *expected: str) -> list[str]:
    """Names in `folder` other than `expected`: temporaries or partial files left behind."""
    return sorted(set(os.listdir(folder)) - set(expected))


# ---------------------------------------------------------------------------------------------
# writing: an exclusive temporary beside the target, renamed; nothing partial, nothing followed


def test_draw_on_a_full_disk_keeps_the_old_file_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "unet.svg"
    assert main(["draw", "ronneberger2015", "-o", str(out)]) == 0
    last_week = out.read_bytes()  # a diagram unetgen drew: it may replace it
    capsys.readouterr()
    assert len(draw_unet(UNetConfig(), 572)) > 8192
    with file_size_limit(8192):
        code = main(["draw", "ronneberger2015", "--input-size", "572", "-o", str(out)])
    assert code == 1
    assert out.read_bytes() == last_week  # not truncated to 8 KiB
    assert leftovers(tmp_path, "unet.svg") == []
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: -o {out}: cannot write the diagram: file too large"), line
    assert "no partial file" in line
    with file_size_limit(8192):  # a new file: none is left at all
        assert main(["draw", "ronneberger2015", "--input-size", "572", "-o", str(tmp_path / "new.svg")]) == 1
    assert leftovers(tmp_path, "unet.svg") == []


def test_draw_never_replaces_a_symlink_at_the_output_nor_writes_through_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = tmp_path / "thesis.txt"
    victim.write_text("years of work")
    (tmp_path / "unet.svg").symlink_to(victim)
    assert main(["draw", "ronneberger2015", "-o", str(tmp_path / "unet.svg")]) == 1
    assert "is a symbolic link" in capsys.readouterr().err
    assert victim.read_text() == "years of work"
    assert (tmp_path / "unet.svg").is_symlink()
    assert leftovers(tmp_path, "unet.svg", "thesis.txt") == []


class BytesPath:
    def __fspath__(self) -> bytes:
        return b"a.svg"


def test_write_diagram_refuses_what_it_cannot_write(tmp_path: Path) -> None:
    from unetgen.draw import write_diagram

    svg = draw_unet(TINY)
    (tmp_path / "dir.svg").mkdir()
    os.mkfifo(tmp_path / "fifo.svg")
    for path, words in [
        (tmp_path / "dir.svg", "is a directory"),
        (tmp_path / "fifo.svg", "not a regular file"),
        (tmp_path / "missing" / "a.svg", "does not exist; create it first"),
        (tmp_path / "a.gif", "unknown format '.gif'"),
        (tmp_path / ("x" * 300 + ".svg"), "file name is too long"),
        (str(tmp_path / "a\0.svg"), "NUL byte"),
        (b"a.svg", "must be a str or os.PathLike"),
        (BytesPath(), "must be text, not bytes"),
        (str(tmp_path / "a.svg") + "/", "names a folder, not a file"),
    ]:
        with pytest.raises(ValueError, match=words):
            write_diagram(svg, path)
    with pytest.raises(ValueError, match="the SVG text draw_unet returns"):
        write_diagram(b"<svg/>", tmp_path / "a.svg")
    assert write_diagram(svg, tmp_path / "a.svg").read_text(encoding="utf-8") == svg
    assert leftovers(tmp_path, "dir.svg", "fifo.svg", "a.svg") == []


def test_a_replaced_file_keeps_its_permissions_and_a_checkpoint_is_never_its_own_diagram(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private = tmp_path / "private.svg"
    assert main(["draw", "ronneberger2015", "-o", str(private)]) == 0
    private.chmod(0o600)
    assert main(["draw", "ronneberger2015", "--input-size", "572", "-o", str(private)]) == 0
    assert private.stat().st_mode & 0o777 == 0o600  # not widened to 0o644 by the rename
    checkpoint = save_unet(build_unet(TINY), tmp_path / "model.safetensors")
    checkpoint.chmod(0o640)
    save_unet(build_unet(TINY), checkpoint)
    assert checkpoint.stat().st_mode & 0o777 == 0o640
    disguised = tmp_path / "model.svg"  # a checkpoint is read by its content, whatever its suffix
    disguised.write_bytes(checkpoint.read_bytes())
    assert main(["draw", str(disguised), "-o", str(disguised)]) == 1
    assert "is the CONFIG file itself" in capsys.readouterr().err
    assert disguised.read_bytes() == checkpoint.read_bytes()
    assert main(["draw", "ronneberger2015", "-o", str(tmp_path / "d.svg") + "/"]) == 1
    assert "names a folder, not a file" in capsys.readouterr().err
    assert leftovers(tmp_path, "private.svg", "model.safetensors", "model.svg") == []


def test_a_planted_symlink_at_the_temporary_name_is_never_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even when the 'random' name is guessed (here: forced), the temporary is created with
    O_EXCL: the planted symlink is skipped, not written through."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    fixed = "0123456789abcdef"
    tokens = itertools.chain([fixed], iter(secrets.token_hex, None))
    monkeypatch.setattr(secrets, "token_hex", lambda n=None: next(tokens))
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(int=0))  # the base commit's temporary names
    target = tmp_path / "model.safetensors"
    for name in (f".{target.name}.{fixed}.tmp", f".{target.name}.{uuid.UUID(int=0).hex}.tmp"):
        (tmp_path / name).symlink_to(victim)
    save_unet(build_unet(TINY), target)
    assert victim.read_text() == "keep me"
    assert load_unet(target).config == TINY
    assert len(leftovers(tmp_path, "victim.txt", "model.safetensors")) == 2  # the planted links, untouched


def test_atomic_writes_clean_up_on_any_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from unetgen import atomic

    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    for error in (KeyboardInterrupt(), RuntimeError("boom"), OSError(28, "No space left on device")):
        with pytest.raises(type(error)) as info, atomic.replacing(target) as f:
            f.write(b"partial")
            raise error
        assert target.read_bytes() == b"old" and leftovers(tmp_path, "a.bin") == []
    assert info.value.filename == str(target) and info.value.strerror.startswith("no space left on device")
    assert atomic.reason(OSError("weird")) == "weird" and atomic.reason(OSError()) == "OSError"  # never None
    monkeypatch.setattr(secrets, "token_hex", lambda n=None: "same")
    (tmp_path / ".a.bin.same.tmp").write_bytes(b"someone else's")
    with pytest.raises(FileExistsError, match="no new temporary name"):
        atomic.write_bytes(target, b"new")
    assert (tmp_path / ".a.bin.same.tmp").read_bytes() == b"someone else's"
    assert target.read_bytes() == b"old"


def test_save_unet_on_a_full_disk_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    target = save_unet(build_unet(TINY, seed=0), tmp_path / "model.safetensors")
    before = target.read_bytes()
    bigger = build_unet(TINY.model_copy(update={"base_channels": 8}))
    with file_size_limit(len(before) + 100), pytest.raises(CheckpointError, match="file too large") as info:
        save_unet(bigger, target)
    assert str(target) in str(info.value)
    assert target.read_bytes() == before and leftovers(tmp_path, "model.safetensors") == []


def _fake_export(model, args, f, **kwargs) -> None:  # writes a little, then fails, as a crash would
    if isinstance(f, (str, os.PathLike)):
        with open(f, "wb") as out:
            out.write(b"partial onnx")
    else:
        f.write(b"partial onnx")
    raise RuntimeError("exporter crashed")


def test_to_onnx_failure_leaves_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnx")
    from unetgen.export import to_onnx

    target = to_onnx(build_unet(TINY), tmp_path / "unet.onnx")  # last week's model, which unetgen wrote
    before = target.read_bytes()
    monkeypatch.setattr(torch.onnx, "export", _fake_export)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        to_onnx(build_unet(TINY), target)
    assert target.read_bytes() == before and leftovers(tmp_path, "unet.onnx") == []


def test_to_onnx_never_replaces_a_symlink_nor_writes_through_it(tmp_path: Path) -> None:
    from unetgen.export import to_onnx

    victim = tmp_path / "thesis.txt"
    victim.write_text("years of work")
    (tmp_path / "unet.onnx").symlink_to(victim)
    with pytest.raises(ValueError, match="is a symbolic link"):
        to_onnx(build_unet(TINY), tmp_path / "unet.onnx")
    assert victim.read_text() == "years of work" and (tmp_path / "unet.onnx").is_symlink()
    assert leftovers(tmp_path, "unet.onnx", "thesis.txt") == []


def test_to_onnx_refuses_paths_it_cannot_write(tmp_path: Path) -> None:
    from unetgen.export import to_onnx

    model = build_unet(TINY)
    for path, words in [
        (tmp_path / "missing" / "a.onnx", "does not exist"),
        (tmp_path, "is a directory"),
        (None, "must be a str or os.PathLike"),
    ]:
        with pytest.raises(ValueError, match=words):
            to_onnx(model, path)
    with pytest.raises(ValueError, match="opset_version"):
        to_onnx(model, tmp_path / "a.onnx", opset_version="17")
    assert leftovers(tmp_path) == []


FULL_DISK = textwrap.dedent(
    """
    import json, os, sys
    from unetgen import UNetConfig, build_unet, save_unet
    from unetgen.cli import main
    from unetgen.export import to_onnx
    disk, report = sys.argv[1], {}
    report["draw"] = main(["draw", "ronneberger2015", "--input-size", "572", "-o", disk + "/unet.svg"])
    try:
        save_unet(build_unet(UNetConfig(base_channels=8)), disk + "/model.safetensors")
    except Exception as err:
        report["save_unet"] = f"{type(err).__name__}: {err}"
    try:
        to_onnx(build_unet(UNetConfig(depth=2, base_channels=8)), disk + "/unet.onnx")
    except Exception as err:
        report["to_onnx"] = f"{type(err).__name__}: {err}"
    report["left"] = os.listdir(disk)
    print(json.dumps(report))
    """
)


def _mount_namespaces() -> bool:
    if shutil.which("unshare") is None or not sys.platform.startswith("linux"):
        return False
    probe = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", "mount -t tmpfs -o size=16k tmpfs /mnt"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.skipif(not _mount_namespaces(), reason="needs unshare and unprivileged user and mount namespaces")
def test_a_real_full_disk_says_no_space_left_and_names_the_path(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    script = f'mount -t tmpfs -o size=8k tmpfs "$1" && exec "{sys.executable}" -c "$2" "$1"'
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", str(disk), FULL_DISK],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["left"] == [], report  # nothing partial, no temporary
    assert report["draw"] == 1
    assert f"error: -o {disk}/unet.svg: cannot write the diagram: no space left on device" in done.stderr
    assert report["save_unet"].startswith(f"CheckpointError: {disk}/model.safetensors: cannot write the checkpoint: ")
    assert "no space left on device" in report["save_unet"]
    assert report["to_onnx"].startswith("OSError: [Errno 28] no space left on device"), report
    assert f"{disk}/unet.onnx" in report["to_onnx"]


# ---------------------------------------------------------------------------------------------
# a file that is not a checkpoint says what it is, at every entry point that opens one


def _not_checkpoints(root: Path) -> dict[str, tuple[Path, str, str]]:
    """name -> (file, what the message must call it, a word of the advice)."""
    import gzip

    import numpy as np

    from unetgen.export import to_torchscript

    model = build_unet(TINY)
    files = {
        "yaml": ("good.yaml", "this is a YAML text file, likely a config", "build_unet(path)"),
        "json": ("good.json", "this is a JSON text file, likely a config", "build_unet(path)"),
        "torch-zip": ("model.pth", r"this is a torch pickle \(torch.save: .pth/.pt, zip format\)", "--weights"),
        "torch-legacy": ("legacy.pt", "this is a Python pickle", "never unpickles"),
        "torchscript": ("traced.pt", "this is a TorchScript archive", "torch.jit.load"),
        "zip": ("archive.zip", "this is a zip archive", "unzip it"),
        "hdf5": ("weights.h5", "this is an HDF5 file", "save_unet"),
        "npy": ("image.npy", r"this is a NumPy array \(.npy\)", "--input"),
        "empty": ("empty.safetensors", r"this is an empty file \(0 bytes\)", "interrupted"),
        "gzip": ("model.safetensors.gz", "this is a gzip-compressed file", "gunzip"),
    }
    paths = {name: root / file for name, (file, _, _) in files.items()}
    paths["yaml"].write_text("# a config\ndepth: 1\nbase_channels: 2\nchannel_multiplier: 1\n")
    paths["json"].write_text(TINY.model_dump_json())
    torch.save(model.state_dict(), paths["torch-zip"])
    torch.save(model.state_dict(), paths["torch-legacy"], _use_new_zipfile_serialization=False)
    torch.jit.save(to_torchscript(model), paths["torchscript"])
    import zipfile

    with zipfile.ZipFile(paths["zip"], "w") as z:
        z.writestr("readme.txt", "hello")
    paths["hdf5"].write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    np.save(paths["npy"], np.zeros((2, 3), np.float32))
    paths["empty"].write_bytes(b"")
    paths["gzip"].write_bytes(gzip.compress(bytes(100)))
    return {name: (paths[name], what, advice) for name, (_, what, advice) in files.items()}


@pytest.fixture(scope="module")
def not_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str, str]]:
    return _not_checkpoints(tmp_path_factory.mktemp("not-checkpoints"))


@pytest.mark.parametrize(
    "kind", ["yaml", "json", "torch-zip", "torch-legacy", "torchscript", "zip", "hdf5", "npy", "empty", "gzip"]
)
def test_a_file_that_is_not_a_checkpoint_says_what_it_is(
    not_checkpoints: dict[str, tuple[Path, str, str]], kind: str
) -> None:
    from unetgen import checkpoint_config, checkpoint_metadata

    path, what, advice = not_checkpoints[kind]
    for load in (load_unet, checkpoint_config, checkpoint_metadata):
        with pytest.raises(CheckpointError) as info:
            load(path)
        message = str(info.value)
        assert message.startswith(f"{path}: not a safetensors checkpoint: "), message
        assert re.search(what, message) and advice in message, message
        assert "claims" not in message and len(message) < 600


def test_a_plain_safetensors_state_dict_gets_advice_that_works(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    model = build_unet(TINY, seed=0)
    plain = tmp_path / "plain.safetensors"
    save_file(model.state_dict(), plain)
    with pytest.raises(CheckpointError, match="without unetgen's metadata") as info:
        load_unet(plain)
    assert "model.load_state_dict(safetensors.torch.load_file(path))" in str(info.value)
    fresh = build_unet(TINY, seed=1)
    fresh.load_state_dict(load_file(plain))  # the advice, followed
    assert load_unet(save_unet(fresh, tmp_path / "model.safetensors")).state_dict().keys() == model.state_dict().keys()


def test_the_cli_names_what_a_file_given_as_config_or_weights_is(
    not_checkpoints: dict[str, tuple[Path, str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    config = not_checkpoints["json"][0]
    image = tmp_path / "in.npy"
    np.save(image, np.zeros((1, 12, 12), np.float32))
    out = tmp_path / "out.npy"
    for kind in ("yaml", "json", "torchscript", "zip", "hdf5", "npy", "empty", "gzip"):
        path, what, _ = not_checkpoints[kind]
        argv = ["predict", str(config), "--weights", str(path), "--input", str(image), "--output", str(out)]
        assert main(argv) == 1
        [line] = capsys.readouterr().err.splitlines()
        assert line.startswith(f"error: --weights {path}: ") and re.search(what, line), line
        assert "pickle that needs code" not in line
    for kind in ("torch-zip", "torch-legacy", "torchscript", "hdf5", "npy", "gzip"):
        path, what, _ = not_checkpoints[kind]
        assert main(["summary", str(path)]) == 1
        [line] = capsys.readouterr().err.splitlines()
        assert line.startswith(f"error: CONFIG {path}: ") and re.search(what, line), line
    assert not out.exists()


def test_the_cli_reads_weights_and_checkpoints_by_their_content(
    not_checkpoints: dict[str, tuple[Path, str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A torch pickle named .safetensors is read as weights (torch.load(weights_only=True)); a
    checkpoint with another suffix is read as a checkpoint."""
    import numpy as np

    config = not_checkpoints["json"][0]
    image = tmp_path / "in.npy"
    np.save(image, np.zeros((1, 12, 12), np.float32))
    renamed = tmp_path / "weights.safetensors"
    renamed.write_bytes(not_checkpoints["torch-zip"][0].read_bytes())
    out = tmp_path / "out.npy"
    assert main(["predict", str(config), "--weights", str(renamed), "--input", str(image), "--output", str(out)]) == 0
    checkpoint = save_unet(build_unet(TINY), tmp_path / "model.safetensors")
    named = tmp_path / "model.bin"
    named.write_bytes(checkpoint.read_bytes())
    out = tmp_path / "out2.npy"  # a .npy is never replaced
    assert main(["predict", str(config), "--weights", str(named), "--input", str(image), "--output", str(out)]) == 0
    assert main(["sizes", str(named), "--max", "20"]) == 0
    capsys.readouterr()


# ---------------------------------------------------------------------------------------------
# export's example input: checked before tracing (traced calls skip UNet's own check)

RGB = UNetConfig(depth=1, base_channels=2, channel_multiplier=1, in_channels=3, padding="same")


@pytest.mark.parametrize("export", ["to_torchscript", "to_onnx"])
def test_an_example_with_its_channels_last_says_so(export: str, tmp_path: Path) -> None:
    import numpy as np

    from unetgen import InputShapeError
    from unetgen import export as module

    model = build_unet(RGB)
    run = (
        (lambda x: module.to_onnx(model, tmp_path / "a.onnx", example=x))
        if export == "to_onnx"
        else (lambda x: module.to_torchscript(model, x))
    )
    with pytest.raises(
        ValueError, match=r"the channels look last \(512, 512, 3\): move them first with np.moveaxis\(x, -1, 0\)"
    ):
        run(np.zeros((512, 512, 3), np.float32))
    with pytest.raises(InputShapeError, match=r"the channels look last \(1, 16, 16, 3\): .*x.movedim\(-1, 1\)"):
        run(torch.zeros(1, 16, 16, 3))
    with pytest.raises(InputShapeError, match=r"the channels look last \(16, 16, 3\).*then add the batch axis"):
        run(torch.zeros(16, 16, 3))
    with pytest.raises(InputShapeError, match=r"add the batch axis with x\[None\]"):
        run(torch.zeros(3, 16, 16))
    with pytest.raises(InputShapeError, match=r"in_channels=3"):
        run(torch.zeros(1, 2, 16, 16))
    assert leftovers(tmp_path) == []


def test_export_checks_the_example_and_its_arguments(tmp_path: Path) -> None:
    from unetgen import InputShapeError
    from unetgen.export import example_input, to_onnx, to_torchscript

    model = build_unet(TINY)  # valid padding: not every size is valid
    with pytest.raises(InputShapeError, match="nearest valid"):
        to_torchscript(model, torch.zeros(1, 1, 19, 19))
    with pytest.raises(InputShapeError, match="holds no image"):
        to_torchscript(model, torch.zeros(0, 1, 18, 18))
    with pytest.raises(ValueError, match="float64 on cpu but the model is float32"):
        to_torchscript(model, torch.zeros(1, 1, 18, 18, dtype=torch.float64))
    with pytest.raises(ValueError, match="needs a unetgen UNet"):
        to_torchscript(torch.nn.Conv2d(1, 1, 3))
    with pytest.raises(ValueError, match="needs a unetgen UNet"):
        to_onnx(torch.nn.Conv2d(1, 1, 3), tmp_path / "a.onnx")
    for kwargs in ({"batch": 0}, {"batch": -1}, {"batch": True}, {"periods": -1}, {"periods": 2.0}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            example_input(model, **kwargs)
    assert leftovers(tmp_path) == []
