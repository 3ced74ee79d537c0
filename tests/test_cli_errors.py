"""The command line never shows a traceback: a bad command line exits 2 (argparse), every other
failure prints one `error: ...` line naming the value and the fix and exits 1, a closed pipe ends
quietly, Ctrl-C exits 130; `predict` checks everything before it predicts."""

from __future__ import annotations

import contextlib
import io
import os
import re
import resource
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_files import ANISO, TINY, make_files, run

from unetgen import build_unet, predict_tiled
from unetgen.analysis import shapes
from unetgen.cli import app as cli_module  # the module whose build_parser wires the cmd_* handlers

pytest.importorskip("PIL")
pytest.importorskip("tifffile")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_files(tmp_path_factory.mktemp("cli"))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNETGEN_DEBUG", raising=False)


def _error_lines(err: str) -> list[str]:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert all(line.startswith(("error: ", "plan: ", "memory: ", "compute: ")) for line in lines), err
    return [line for line in lines if line.startswith("error: ")]


def _fill(files: dict[str, str], argv: list[str]) -> list[str]:
    """`{name}` arguments replaced by the path of that file."""
    return [files[a[1:-1]] if a.startswith("{") and a.endswith("}") else a for a in argv]


def _predict(files: dict[str, str], *extra: str, output: str = "out.npy") -> list[str]:
    return ["predict", files["tiny.json"], "--weights", files["w.pt"], "--input", files["in.npy"],
            "--output", files.get(output, output), "--no-progress", *extra]  # fmt: skip


# --- usage errors: exit 2, argparse's usage line and one error line -------------------------------


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["summary", "{tiny.json}", "--input-size", "12x12x12"], r"--input-size 12x12x12 has 3 axes but .*=2"),
        (["trace", "{tiny.json}", "--input-size", "12x12x12"], r"has 3 axes"),
        (["sizes", "{tiny.json}", "--near", "80x512x512"], r"--near 80x512x512 has 3 axes"),
        (["summary", "{tiny.json}", "--batch-size", "0"], r"--batch-size: 0 must be a positive integer"),
        (["summary", "{tiny.json}", "--batch-size", "-3"], r"--batch-size: -3 must be a positive integer"),
        (["summary", "{tiny.json}", "--input-size", "12xabc"], r"12xabc is not a size"),
        (["summary", "{tiny.json}", "--input-size", "0"], r"0 is not a size"),
        (["sizes", "{tiny.json}", "--max", "1e3"], r"1e3 is not an integer"),
        (["summary", "{tiny.json}", "--depth", "x" * 60_000], r"is not an integer"),
        (
            ["predict", "{tiny.json}", "--input", "{in.npy}", "--output", "{out.npy}", "--device", "nonsense"],
            r"nonsense is not a torch device",
        ),
        (
            ["predict", "{tiny.json}", "--input", "{in.npy}", "--output", "{out.npy}", "--device", "meta"],
            r"meta tensors hold no data",
        ),
        (["predict", "{tiny.json}", "--input", "{in.npy}", "--output", "{noext}"], r"noext must end in .npy"),
        (["predict", "{tiny.json}", "--input", "{in.npy}", "--output", "/dev/full"], r"/dev/full must end in .npy"),
        (["predict", "{tiny.json}", "--input", "{nul}", "--output", "{out.npy}"], r"contains a NUL byte"),
        (
            ["predict", "{tiny.json}", "--input", "{in.npy}", "--output", "{out.npy}", "--overlap", "1.5"],
            r"--overlap: 1.5 must be a number in \[0, 1\)",
        ),
        (
            ["predict", "{tiny.json}", "--input", "{in.npy}", "--output", "{out.npy}", "--tile-size", "-1"],
            r"-1 is not a size",
        ),
        (
            [
                "predict",
                "{tiny.json}",
                "--input",
                "{in.npy}",
                "--output",
                "{out.npy}",
                "--tile-size",
                "8x8x8",
                "--dry-run",
            ],
            r"--tile-size 8x8x8 has 3 axes",
        ),
        (
            ["predict", "{tiny.json}", "--input", "{in.npy}", "--output", "{out.npy}", "--memory-limit", "inf"],
            r"inf must be a positive number of GiB",
        ),
        (
            ["predict", "{tiny.json}", "--input", "{in.npy}", "--output", "{out.npy}", "--output-type", "argmax"],
            r"invalid choice: 'argmax'",
        ),
        (
            ["predict", "{tiny.safetensors}", "--weights", "{w.pt}", "--input", "{in.npy}", "--output", "{out.npy}"],
            r"is a checkpoint with its own weights; drop --weights",
        ),
        (["predict", "{tiny.json}", "--input", "{in.npy}", "--output", "{out.npy}"], r"--weights FILE is needed"),
        (["summary", "{tiny.json}", "--frobnicate"], r"unrecognized arguments: --frobnicate"),
        (["nonsense"], r"invalid choice: 'nonsense'"),
    ],
)
def test_bad_command_lines_exit_2(files: dict[str, str], argv: list[str], match: str) -> None:
    code, _, err = run(_fill(files, argv))
    assert code == 2
    assert "Traceback" not in err and len(err) < 2000
    errors = [line for line in err.splitlines() if "error: " in line]
    assert len(errors) == 1
    assert re.search(match, errors[0]), errors[0]


def test_devices_must_exist_in_this_build(files: dict[str, str]) -> None:
    argv = _predict(files, "--dry-run")
    assert run([*argv, "--device", "cpu"])[0] == 0
    if not torch.cuda.is_available():
        code, _, err = run([*argv, "--device", "cuda"])
        assert code == 2 and "--device cpu" in err and "Traceback" not in err
    code, _, err = run([*argv, "--device", f"cuda:{torch.cuda.device_count() + 7}"])
    assert code == 2 and "cuda" in err and "Traceback" not in err


# --- failures: exit 1, one `error:` line that names the value ------------------------------------


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["summary", "{missing.yaml}"], r"CONFIG .*missing.yaml: no such file"),
        (["summary", "{dir.yaml}"], r"dir.yaml is a directory"),
        (["sizes", "{fifo.yaml}"], r"fifo.yaml is not a regular file"),
        (["trace", "{fifo.safetensors}"], r"fifo.safetensors is not a regular file"),
        (["summary", "{corrupt.safetensors}"], r"corrupt.safetensors: not a complete safetensors file"),
        (["sizes", "{typo.yaml}"], r"typo.yaml:2:1: chanels: unknown field"),
        (["summary", "{nopreset}"], r"no-such-preset.*nor a preset"),
        (["trace", "{tiny.json}", "--input-size", "13"], r"input size 13 .* is not valid"),
        (
            ["predict", "{tiny.json}", "--weights", "{evil.pt}", "--input", "{in.npy}", "--output", "{out.npy}"],
            r"--weights .*evil.pt: not a state_dict of this config \(it is a pickle that needs code to load",
        ),
        (
            ["predict", "{tiny.json}", "--weights", "{wrong.pt}", "--input", "{in.npy}", "--output", "{out.npy}"],
            r"wrong.pt: not a state_dict of this config",
        ),
        (
            ["predict", "{tiny.json}", "--weights", "{fifo.pt}", "--input", "{in.npy}", "--output", "{out.npy}"],
            r"--weights .*fifo.pt is not a regular file",
        ),
        (
            ["predict", "{tiny.json}", "--weights", "{w.pt}", "--input", "{png.npy}", "--output", "{out.npy}"],
            r"png.npy is not a .npy file \(a PNG image: name it .png\)",
        ),
        (
            ["predict", "{tiny.json}", "--weights", "{w.pt}", "--input", "{evil.npy}", "--output", "{out.npy}"],
            r"evil.npy is not a .npy file",
        ),
        (
            ["predict", "{tiny.json}", "--weights", "{w.pt}", "--input", "{obj.npy}", "--output", "{out.npy}"],
            r"obj.npy: cannot read the .npy array: it holds Python objects",
        ),
        (
            ["predict", "{tiny.json}", "--weights", "{w.pt}", "--input", "{str.npy}", "--output", "{out.npy}"],
            r"str.npy holds <U1 values; give a numeric array",
        ),
        (
            ["predict", "{tiny.json}", "--weights", "{w.pt}", "--input", "{lying.npy}", "--output", "{out.npy}"],
            r"lying.npy: cannot read the .npy array",
        ),
        (
            ["predict", "{tiny.json}", "--weights", "{w.pt}", "--input", "{truncated.npy}", "--output", "{out.npy}"],
            r"truncated.npy: cannot read the .npy array",
        ),
        (
            ["predict", "{tiny.json}", "--weights", "{w.pt}", "--input", "{text.png}", "--output", "{out.npy}"],
            r"text.png: cannot read it as a PNG image",
        ),
        (
            ["predict", "{tiny.json}", "--weights", "{w.pt}", "--input", "{image.bmp}", "--output", "{out.npy}"],
            r"unknown image format .bmp; unetgen predict reads .npy \(NumPy\), .png \(Pillow\) and .tif",
        ),
        (
            ["predict", "{tiny.json}", "--weights", "{w.pt}", "--input", "{fifo.npy}", "--output", "{out.npy}"],
            r"fifo.npy is not a regular file",
        ),
        (
            ["predict", "{tiny.json}", "--weights", "{w.pt}", "--input", "{in.npy}", "--output", "{dir.npy}"],
            r"--output .*dir.npy is a directory",
        ),
        (
            ["predict", "{tiny.json}", "--weights", "{w.pt}", "--input", "{in.npy}", "--output", "{missing/out.npy}"],
            r"the folder .*missing does not exist; create it first",
        ),
        (
            ["predict", "{tiny.json}", "--weights", "{w.pt}", "--input", "{in.npy}", "--output", "{full.npy}"],
            r"full.npy exists and is not a regular file",
        ),
        (
            ["predict", "{tiny.json}", "--weights", "{w.pt}", "--input", "{in3.npy}", "--output", "{out.npy}"],
            r"has 3 channels but in_channels=1",
        ),
        (
            ["predict", "{tiny.json}", "--weights", "{w.pt}", "--input", "{vol.npy}", "--output", "{out.npy}"],
            r"image of shape \(9, 10, 11\) has 9 channels but in_channels=1",
        ),
        (
            ["predict", "{tiny.json}", "--weights", "{w.pt}", "--input", "{cplx.npy}", "--output", "{out.npy}"],
            r"is complex",
        ),
        (
            ["predict", "{tiny.json}", "--weights", "{w.pt}", "--input", "{huge.npy}", "--output", "{out.npy}"],
            r"infinite values once cast to the model's torch.float32",
        ),
        (
            ["predict", "{tiny.json}", "--weights", "{w.pt}", "--input", "{empty.npy}", "--output", "{out.npy}"],
            r"is empty|cannot read",
        ),
        (
            [
                "predict",
                "{tiny.json}",
                "--weights",
                "{w.pt}",
                "--input",
                "{in.npy}",
                "--output",
                "{out.npy}",
                "--memory-limit",
                "0.000001",
            ],
            r"predicting needs about .* more than memory_limit=1073 bytes",
        ),
        (
            [
                "predict",
                "{tiny.json}",
                "--weights",
                "{tiny3d.safetensors}",
                "--input",
                "{in.npy}",
                "--output",
                "{out.npy}",
            ],
            r"the config stored in .*tiny3d.safetensors differs from",
        ),
    ],
)
def test_failures_are_one_error_line_exit_1(files: dict[str, str], argv: list[str], match: str, monkeypatch) -> None:
    def never(*args, **kwargs):
        raise AssertionError("predict_tiled ran although a check should have failed first")

    monkeypatch.setattr("unetgen.predict.run.predict_tiled", never)
    code, _, err = run(_fill(files, argv))
    errors = _error_lines(err)
    assert code == 1 and len(errors) == 1 and len(errors[0]) < 1200, err
    assert re.search(match, errors[0]), errors[0]
    assert not Path(files["out.npy"]).exists()


def test_validate_refuses_what_it_cannot_read(files: dict[str, str]) -> None:
    code, out, err = run(["validate", files["fifo.yaml"], files["dir.yaml"], "/dev/null", files["missing.yaml"]])
    assert code == 1 and not err
    lines = out.splitlines()
    assert len(lines) == 4 and all(":1:1: (file): " in line for line in lines)
    assert "not a regular file" in lines[0] and "is a directory" in lines[1] and "no such file" in lines[3]


# --- predict ------------------------------------------------------------------------------------


def test_dry_run_needs_no_weights_and_writes_nothing(files: dict[str, str]) -> None:
    argv = ["predict", files["tiny.json"], "--input", files["in.npy"], "--output", files["out2.npy"], "--dry-run"]
    code, _, err = run(argv)
    assert code == 0 and "plan: 12x13 image" in err and "memory: " in err
    assert not Path(files["out2.npy"]).exists()
    code, _, err = run([*argv, "--weights", files["evil.pt"]])  # weights given are still checked
    assert code == 1 and "evil.pt: not a state_dict" in err


def test_output_is_written_where_it_says_and_nowhere_else(files: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "pred.npy"
    code, _, err = run(_predict(files, "--tile-size", "8", output=str(out)))
    assert code == 0 and err.strip().endswith(f"wrote {out}: logits, shape (3, 12, 13), float32")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.npy"]  # no temporary file left
    model = build_unet(TINY)
    model.load_state_dict(torch.load(files["w.pt"], weights_only=True))
    want = predict_tiled(model, torch.from_numpy(np.load(files["in.npy"]))[None], tile_size=8, progress=False)
    assert np.array_equal(np.load(out), want.numpy())


def test_a_full_disk_is_one_error_line_and_leaves_no_file(files: dict[str, str], tmp_path: Path, monkeypatch) -> None:
    def full(file, array, **kwargs):
        file.write(b"\x93NUMPY")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", full)
    code, _, err = run(_predict(files, output=str(tmp_path / "pred.npy")))
    assert code == 1 and _error_lines(err) == [f"error: {tmp_path / 'pred.npy'}: No space left on device"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("output_type", ["logits", "probabilities", "labels"])
def test_output_types(files: dict[str, str], tmp_path: Path, output_type: str) -> None:
    out = tmp_path / "pred.npy"
    assert run(_predict(files, "--output-type", output_type, output=str(out)))[0] == 0
    got = np.load(out)
    assert run(_predict(files, output=str(tmp_path / "logits.npy")))[0] == 0
    logits = torch.from_numpy(np.load(tmp_path / "logits.npy"))
    want = {"logits": logits, "probabilities": logits.softmax(0), "labels": logits.argmax(0).to(torch.uint8)}
    torch.testing.assert_close(torch.from_numpy(got), want[output_type], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("config", "image"),
    [
        ("tiny.json", "in.png"),
        ("rgb.json", "palette.png"),
        ("rgb.json", "rgb.png"),
        ("tiny.json", "in.tif"),
        ("rgb.json", "rgb.tiff"),
        ("tiny.json", "be.npy"),
        ("tiny.json", "u16.npy"),
        ("tiny.json", "batch.npy"),
    ],
)
def test_image_readers(files: dict[str, str], tmp_path: Path, config: str, image: str) -> None:
    """PNG (Pillow), TIFF (tifffile) and .npy in any byte order and dtype: every file holds 12x13
    images; RGB samples, last in the file, become the 3 channels of the rgb config (in_channels=3)."""
    code, _, err = run(["predict", files[config], "--input", files[image], "--output", str(tmp_path / "p.npy"),
                        "--dry-run"])  # fmt: skip
    assert code == 0, err
    assert "plan: 12x13 image" in err


def test_everything_is_checked_before_the_model_runs(files: dict[str, str], monkeypatch) -> None:
    """The output folder, the device, the weights and the image are checked before any forward
    pass: a bad one never costs a prediction."""
    calls = []
    monkeypatch.setattr(torch.nn.Module, "__call__", lambda self, *a, **k: calls.append(1))
    for output in ("missing/out.npy", "dir.npy", "full.npy"):
        assert run(_predict(files, output=output))[0] == 1
    argv = _predict(files)
    assert run([*argv[:5], files["in3.npy"], *argv[6:]])[0] == 1
    assert run([*argv[:3], files["wrong.pt"], *argv[4:]])[0] == 1
    assert run([*argv, "--device", "nonsense"])[0] == 2
    assert not calls


# --- the process: pipes, disks, Ctrl-C, bugs --------------------------------------------------


def test_a_closed_pipe_ends_quietly() -> None:
    """`unetgen sizes ... | head -1`: a real pipe, closed after one line, in a real process."""
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "UNETGEN_DEBUG"} | {"PYTHONPATH": str(root)}
    argv = [sys.executable, "-m", "unetgen", "sizes", "ronneberger2015", "--max", "100000000"]
    proc = subprocess.Popen(argv, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # what `head -1` does
    err = proc.stderr.read()
    assert proc.wait(timeout=120) in (0, 1)
    assert first.startswith(b"axis 0: valid input sizes are 188 + 16*k") and err == b""


class _Failing(io.StringIO):
    """A stdout whose writes fail like a closed pipe or a full disk (`> /dev/full`)."""

    def __init__(self, error: OSError) -> None:
        super().__init__()
        self.error = error

    def write(self, text: str) -> int:
        raise self.error

    def flush(self) -> None:
        raise self.error


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (BrokenPipeError(32, "Broken pipe"), 1, ""),
        (OSError(28, "No space left on device"), 1, "error: writing the output: No space left on device\n"),
    ],
)
def test_stdout_that_cannot_be_written(error: OSError, code: int, message: str) -> None:
    for argv in (["presets"], ["schema"], ["sizes", "ronneberger2015"]):
        err = io.StringIO()
        with contextlib.redirect_stdout(_Failing(error)), contextlib.redirect_stderr(err):
            assert cli_module.main(argv) == code
        assert err.getvalue() == message


def test_ctrl_c_exits_130_and_bugs_are_one_line(monkeypatch) -> None:
    def interrupted(args):
        raise KeyboardInterrupt

    def buggy(args):
        raise RuntimeError("boom\nsecond line of a long torch message")

    monkeypatch.setattr(cli_module, "cmd_presets", interrupted)
    code, _, err = run(["presets"])
    assert code == 130 and err == "error: interrupted\n"
    monkeypatch.setattr(cli_module, "cmd_presets", buggy)
    code, _, err = run(["presets"])
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("error: internal error: RuntimeError: boom (a bug in unetgen: set UNETGEN_DEBUG=1")
    monkeypatch.setenv("UNETGEN_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        cli_module.main(["presets"])


# --- sizes and summary: per axis, bounded -----------------------------------------------------


def test_sizes_near_works_per_axis_on_anisotropic_configs(files: dict[str, str]) -> None:
    for near in ("100", "80x100x100", "80,100,100"):
        code, out, err = run(["sizes", files["aniso.json"], "--near", near])
        assert code == 0 and not err
        sizes = [int(v) for v in near.replace(",", "x").split("x")] * (3 if "x" not in near and "," not in near else 1)
        for axis, n in enumerate(sizes):
            rule = shapes.axis_rule(ANISO, axis)
            lo = shapes.nearest_valid_input_size(ANISO, n, direction="down", axis=axis)
            hi = shapes.nearest_valid_input_size(ANISO, n, direction="up", axis=axis)
            assert f"  near {n}: below {lo}, above {hi} (-> output {rule.output(hi)})" in out.splitlines()
    assert shapes.axis_rule(ANISO, 0).period != shapes.axis_rule(ANISO, 1).period  # really anisotropic


def test_sizes_and_summary_build_nothing_big(files: dict[str, str], monkeypatch) -> None:
    tracemalloc.start()
    try:
        code, out, _ = run(["sizes", "ronneberger2015", "--max", str(10**9)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 0 and peak < 1 << 20
    assert out.count("->") == 2 * (cli_module.LISTED_SIZES + 1)  # 64 listed per axis, then the last one
    assert "... and 62499925 more up to 999999996 (-> 999999812)" in out

    real = torch.empty

    def small(*size, **kwargs):
        dims = size[0] if len(size) == 1 and isinstance(size[0], (tuple, list)) else size
        device = kwargs.get("device") or torch.get_default_device()
        assert str(device) == "meta" or np.prod(dims) < 10**7, f"allocated {dims} on {device}"
        return real(*size, **kwargs)

    monkeypatch.setattr(torch, "empty", small)
    monkeypatch.setattr(torch, "rand", lambda *a, **k: pytest.fail("torchinfo built a random input"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, out, err = run(["summary", files["tiny.json"], "--input-size", "40004", "--batch-size", "3"])
    assert code == 0, err
    assert "Input size (MB)" in out and "output shape: (39988, 39988)" in out
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB: no 19 GB input
    code, _, err = run(["summary", files["tiny.json"], "--input-size", str(10**12)])
    assert code == 1 and "more than torch can index" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("image", "config", "weights"), [("rgb.png", "rgb.json", "rgb.pt"), ("in.tif", "tiny.json", "w.pt")]
)
def test_images_are_read_as_their_readers_give_them(files: dict[str, str], tmp_path: Path, image: str, config: str,
                                                    weights: str) -> None:  # fmt: skip
    """The prediction of a PNG (Pillow) or TIFF (tifffile) equals predict_tiled on the array the
    reader gives, colour samples moved first."""
    import tifffile
    from PIL import Image

    from unetgen import load_config

    out = tmp_path / "p.npy"
    code, _, err = run(["predict", files[config], "--weights", files[weights], "--input", files[image],
                        "--output", str(out), "--tile-size", "8"])  # fmt: skip
    assert code == 0, err
    array = np.array(Image.open(files[image])) if image.endswith(".png") else tifffile.imread(files[image])
    x = torch.from_numpy(np.moveaxis(array, -1, 0) if array.ndim == 3 else array[None])
    model = build_unet(load_config(files[config]))
    model.load_state_dict(torch.load(files[weights], weights_only=True))
    want = predict_tiled(model.eval(), x, tile_size=8, progress=False)
    np.testing.assert_array_equal(np.load(out), want.numpy())
