"""`unetgen train` (issue 22): the training schema, the engine and the command. Tiny models (base
2), small images and few steps; the kill -9 / resume equality and the 2-process DDP equality run
real subprocesses (`python -m unetgen train`, `torchrun`)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from safetensors.torch import load_file

from unetgen import build_unet, load_unet, predict_tiled
from unetgen.checkpoint import checkpoint_metadata, checkpoint_preprocessing
from unetgen.cli import main
from unetgen.config.io import ConfigError
from unetgen.config.training import SCHEMA_PATH, LoadedTraining, TrainingConfig, load_training, schema_text
from unetgen.train import Outputs, read_state, train
from unetgen.train.metrics import class_scores, object_scores

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
TINY = {"depth": 2, "base_channels": 2, "dropout": 0, "init": "torch"}
SCHEMA = Draft202012Validator(json.loads(schema_text()))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def blobs(seed: int, shape: tuple[int, int] = (64, 64), count: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """A uint16 image of bright discs and their instance labels (two of them touching)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint16)
    centres = [(20, 20), (20, 29), (40, 54)] + [tuple(rng.integers(8, s - 8) for s in shape) for _ in range(count - 3)]
    for k, (cy, cx) in enumerate(centres, start=1):
        labels[((yy - cy) ** 2 + (xx - cx) ** 2 < 25) & (labels == 0)] = k
    image = (100 + 80 * (labels > 0) + rng.normal(0, 10, shape)).astype(np.uint16)
    return image, labels


def write_data(folder: Path, n: int = 2) -> tuple[Path, Path]:
    images, masks = folder / "images", folder / "masks"
    images.mkdir()
    masks.mkdir()
    for i in range(n):
        image, labels = blobs(i)
        np.save(images / f"cell{i}.npy", image)
        np.save(masks / f"cell{i}.npy", labels)
    return images, masks


def training_file(folder: Path, **fields: Any) -> Path:
    doc = {
        "data": {"images": "images", "masks": "masks", "validation": {"type": "region", "fraction": 0.25}},
        "model": TINY,
        "patches": {"size": 48, "batch": 2},
        "targets": "instances",
        "augmentation": {"elastic": {"sigma": 3, "points": 3}},
        "steps": 6,
        "validate_every": 3,
        "save_every": 2,
        **fields,
    }
    path = folder / "training.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


# ---------------------------------------------------------------------------------------------
# the schema


def test_committed_schema_is_current_and_validates_a_file(tmp_path: Path) -> None:
    committed = (ROOT / SCHEMA_PATH).read_text()
    assert committed == schema_text(), f"{SCHEMA_PATH} is stale; regenerate it from schema_text()"
    schema = json.loads(committed)
    Draft202012Validator.check_schema(schema)
    doc = yaml.safe_load(training_file(tmp_path).read_text())
    assert not list(Draft202012Validator(schema).iter_errors(doc))
    assert list(Draft202012Validator(schema).iter_errors({**doc, "loss": {"smooth": 1}}))  # no type
    assert "Ronneberger" in schema["$defs"]["WeightMap"]["description"]
    assert "momentum 0.99" in schema["$defs"]["SGD"]["description"]


def test_every_problem_at_once_with_file_line_column(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        "data:\n  images: a\n  masks: b\n  validation: {type: region, fraction: 2}\n"
        "model: {depth: 3, base_channel: 8}\nloss: dicee\noptimizer: {type: sgd, momentum: 1.5}\nsteps: '10'\n"
    )
    with pytest.raises(ConfigError) as info:
        load_training(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 5
    assert lines[0].startswith(f"{path}:4:") and "data.validation.fraction" in lines[0]
    assert "model.base_channel: unknown field 'base_channel'; did you mean 'base_channels'?" in lines[1]
    assert "did you mean 'dice'?" in lines[2] and lines[2].startswith(f"{path}:6:1:")
    assert "optimizer.momentum" in lines[3] and "steps" in lines[4]
    path.write_text(
        "data: {images: a, masks: b, axes: yx}\nmodel: unet\npreprocessing: {axes: zyx}\nbest_metric: object_f1\n"
    )
    with pytest.raises(ConfigError) as info:
        load_training(path)
    assert [line.split(": ")[1] for line in str(info.value).splitlines()] == ["preprocessing.axes", "best_metric"]


def test_validate_checks_training_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`unetgen validate` reads a file with a data: section as a training file: its problems as
    FILE:LINE:COL lines (exit 1), a good one beside a model config passes (exit 0)."""
    good = training_file(tmp_path)
    assert main(["validate", str(good), str(ROOT / "examples" / "ronneberger2015.yaml")]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {images: a, masks: b}\nmodel: unet\nstepz: 3\nloss: dicee\n")
    assert main(["validate", str(bad)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{bad}:3:1: stepz: unknown field 'stepz'; did you mean 'steps'?"), lines
    assert lines[1].startswith(f"{bad}:4:") and "did you mean 'dice'?" in lines[1]


NAMES = st.sampled_from(["a.tif", "images", "x/y.npy"])
OPTIONS = {
    "validation": st.sampled_from(
        ["none", "files", "region", {"type": "files", "count": 2}, {"type": "region", "fraction": 0.5, "axis": "y"}]
    ),
    "targets": st.sampled_from(["classes", "instances", {"type": "instances", "separate": False, "weight_map": None},
                                {"type": "instances", "weight_map": {"w0": 0, "sigma": 2, "class_weights": "none"}}]),
    "loss": st.sampled_from(["cross_entropy", "dice", {"type": "dice_cross_entropy", "dice": 0.5}]),
    "optimizer": st.sampled_from(["sgd", "adam", "adamw", {"type": "sgd", "lr": 0.1, "nesterov": True}]),
    "schedule": st.sampled_from(["constant", "poly", {"type": "poly", "exponent": 2}]),
    "augmentation": st.sampled_from([{}, {"flips": False, "rot90": False, "intensity": None, "elastic": None},
                                     {"elastic": {"sigma": [1, 4, 4], "points": 2, "probability": 0.5}}]),
    "patches": st.sampled_from([{}, {"size": 188}, {"size": [16, 64, 64], "batch": 3}, {"memory": "512MiB"},
                                {"foreground": 0.33}]),
}  # fmt: skip


@settings(max_examples=25)
@given(st.fixed_dictionaries({"images": NAMES, "masks": NAMES}), st.fixed_dictionaries({}, optional=OPTIONS))
def test_drawn_files_validate_round_trip_and_match_the_schema(data: dict, options: dict) -> None:
    """Every option as a file writes it: pydantic accepts it strictly, the JSON Schema agrees, and
    the dumped config reads back equal."""
    validation = options.pop("validation", None)
    doc = {
        "data": {**data, **({"validation": validation} if validation else {})},
        "model": "ronneberger2015",
        **options,
    }
    assert not list(SCHEMA.iter_errors(doc))
    config = TrainingConfig.model_validate_json(json.dumps(doc), strict=True)
    again = TrainingConfig.model_validate_json(config.model_dump_json(), strict=True)
    assert again == config


# ---------------------------------------------------------------------------------------------
# metrics


def test_metrics_by_hand() -> None:
    truth = np.zeros((8, 8), np.int64)
    truth[1:3, 1:3], truth[1:3, 3:5], truth[5:7, 5:7] = 1, 2, 3  # 1 and 2 touch
    pred = np.zeros((8, 8), bool)
    pred[1:3, 1:3] = pred[1:3, 4:5] = True  # 1 exact, 2 half (IoU 0.5: no match), 3 missed
    scores = object_scores(pred, truth)
    assert scores["object_f1"] == pytest.approx(2 * 1 / (3 + 2))
    assert scores["separated"] == 1.0 and scores["pairs"] == 1  # 2 is owned by a component (half of it)
    merged = object_scores(truth > 0, truth)
    assert merged["separated"] == 0.0 and merged["object_f1"] == pytest.approx(2 * 1 / (3 + 2))
    c = class_scores(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 3)
    assert c["iou_1"] == pytest.approx(1 / 2) and c["dice_2"] == pytest.approx(2 / 3)
    assert c["iou"] == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------
# the command


def test_cli_simple_form_trains_and_writes_everything(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image, labels = blobs(0)
    np.save(tmp_path / "img.npy", image)
    np.save(tmp_path / "lab.npy", labels)
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    out = tmp_path / "run" / "m.safetensors"
    out.parent.mkdir()
    args = ["train", str(tmp_path / "tiny.json"), "--images", str(tmp_path / "img.npy"), "--masks",
            str(tmp_path / "lab.npy"), "--targets", "instances", "--output", str(out), "--steps", "3",
            "--patch", "48", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    paths = Outputs.of(out)
    assert all(p.exists() for p in (paths.best, paths.last, paths.state, paths.log))
    spec = checkpoint_preprocessing(paths.last)
    assert spec is not None and spec.axes == "yx" and spec.normalize[0].type == "scale_range"
    assert checkpoint_metadata(paths.best)["unetgen_train"]["step"] == 3
    log = paths.log.read_text().splitlines()
    assert log[0] == "step,loss,lr,seconds,iou,dice,object_f1,separated" and len(log) == 4
    assert read_state(paths.state)["step"] == 3
    # the validation of the held-out quarter scores what the whole image's prediction gives there
    net = load_unet(paths.last)
    with torch.no_grad():
        whole = predict_tiled(net, image, progress=False).argmax(0).numpy()  # applies the stored spec
    cut = 64 - 16
    fg, truth = whole[:, cut:] == 1, labels[:, cut:] > 0
    iou = (fg & truth).sum() / (fg | truth).sum() if (fg | truth).any() else 1.0
    assert float(log[-1].split(",")[4]) == pytest.approx(iou, abs=1e-5)
    assert float(log[-1].split(",")[6]) == pytest.approx(
        object_scores(fg, labels[:, cut:].astype(np.int64))["object_f1"]
    )
    # the same again: refused, --resume has nothing left to do, --restart replaces only its own files
    capsys.readouterr()
    assert main(args) == 1
    assert "--resume to continue it or --restart" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0
    (tmp_path / "run" / "m.curves.png").unlink(missing_ok=True)
    (tmp_path / "run" / "m.log.csv").write_text("mine")
    paths.state.unlink()
    assert main([*args, "--restart"]) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "was not written by this training run" in err
    assert (tmp_path / "run" / "m.log.csv").read_text() == "mine"


def test_cli_refuses_outputs_among_inputs_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images, masks = write_data(tmp_path)
    cfg = training_file(tmp_path)
    for output, words in [
        (images / "m.safetensors", "sits inside the input"),
        (tmp_path / "m.txt", "NAME.safetensors"),
    ]:
        assert main(["train", str(cfg), "--output", str(output), "--no-progress", "--no-plot"]) == 1
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and words in err, err
    assert main(["train", str(cfg), "--images", "x.npy"]) == 2
    assert "go with a MODEL" in capsys.readouterr().err
    np.save(masks / "cell1.npy", np.full((64, 64), 0.5))
    assert main(["train", str(cfg), "--output", str(tmp_path / "m.safetensors"), "--no-progress", "--no-plot"]) == 1
    assert "holds float64 values" in capsys.readouterr().err
    np.save(masks / "cell1.npy", blobs(1)[1])
    bad = training_file(tmp_path, patches={"size": 50})
    assert main(["train", str(bad), "--output", str(tmp_path / "m.safetensors"), "--no-progress", "--no-plot"]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:" in err and "patches.size" in err and "nearest valid: 48x48 or 52x52" in err


# ---------------------------------------------------------------------------------------------
# resume after kill -9, and DDP


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_kill_9_then_resume_ends_with_the_uninterrupted_weights(tmp_path: Path) -> None:
    write_data(tmp_path)
    cfg = training_file(tmp_path, steps=12, save_every=1, validate_every=6)
    killed = tmp_path / "killed.safetensors"
    proc = subprocess.Popen(
        [sys.executable, "-m", "unetgen", "train", str(cfg), "--output", str(killed), "--no-progress", "--no-plot"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    state, at = Outputs.of(killed).state, None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if state.exists() and (s := read_state(state)) is not None and s["step"] >= 3:
                proc.send_signal(signal.SIGKILL)
                at = s["step"]
                break
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    assert at is not None and 3 <= at < 12, f"not killed mid-run: {proc.stderr.read().decode()[-2000:]}"
    assert read_state(state)["step"] < 12
    loaded = load_training(cfg)  # the in-process runs save at the end only (save_every may differ)
    quick = LoadedTraining(loaded.config.model_copy(update={"save_every": 12}), loaded.source, loaded.base)
    train(quick, killed, resume=True, progress=False, plot=False)
    reference = tmp_path / "whole.safetensors"
    train(quick, reference, progress=False, plot=False)
    for name in ("last", "best"):
        got, want = _weights(getattr(Outputs.of(killed), name)), _weights(getattr(Outputs.of(reference), name))
        assert got.keys() == want.keys()
        for key in want:
            assert torch.equal(got[key], want[key]), f"{name}: {key}"
    got_log = [line.split(",")[:3] for line in Outputs.of(killed).log.read_text().splitlines()]
    want_log = [line.split(",")[:3] for line in Outputs.of(reference).log.read_text().splitlines()]
    assert got_log == want_log  # step, loss, lr of every step: the same run


def test_torchrun_two_processes_match_one_process(tmp_path: Path) -> None:
    write_data(tmp_path)
    cfg = training_file(tmp_path, steps=3, save_every=3, validate_every=3, patches={"size": 48, "batch": 4},
                        augmentation={"intensity": None})  # fmt: skip
    ddp = tmp_path / "ddp.safetensors"
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "unetgen", "train", str(cfg), "--output", str(ddp), "--no-progress", "--no-plot"],
        env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    one = tmp_path / "one.safetensors"
    train(cfg, one, progress=False, plot=False)
    got, want = _weights(Outputs.of(ddp).last), _weights(Outputs.of(one).last)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=key)
    initial = build_unet(TINY, seed=0).state_dict()
    assert any(not torch.equal(initial[k], want[k]) for k in want)  # it trained


# ---------------------------------------------------------------------------------------------
# what the command-line fuzz found (tests/test_cli_fuzz.py): each kind of bug, once


SMALL = {"depth": 1, "base_channels": 2, "channel_multiplier": 1, "padding": "same", "init": "torch"}


def small_file(folder: Path, name: str = "small.yaml", **fields: Any) -> Path:
    """A training file of two 24x24 pairs, a same-padded model of base 2, patches 16 and a few steps."""
    if not (folder / "images").exists():
        images, masks = folder / "images", folder / "masks"
        images.mkdir()
        masks.mkdir()
        for i in range(2):
            image, labels = blobs(i, (24, 24), count=3)
            np.save(images / f"c{i}.npy", image)
            np.save(masks / f"c{i}.npy", (labels > 0).astype(np.uint8))
    doc = {
        "data": {"images": "images", "masks": "masks", "validation": "none"},
        "model": SMALL, "patches": {"size": 16, "batch": 2}, "augmentation": {"elastic": None},
        "steps": 2, "save_every": 1, **fields,
    }  # fmt: skip
    path = folder / name
    path.write_text(yaml.safe_dump(doc))
    return path


def _written(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix not in (".yaml", ".npy"))


def test_checks_against_the_patch_come_before_any_file(tmp_path: Path) -> None:
    """An elastic grid finer than the patch, and a given patch and batch whose step needs more than
    patches.memory, are the training file's errors (field, FILE:LINE), found before anything is
    written (they failed in the loop, or allocated the patches, after the state was written)."""
    cases = [
        ({"augmentation": {"elastic": {"points": 32}}}, "augmentation.elastic.points", "fewer points"),
        ({"augmentation": {"elastic": {"sigma": [1, 2, 3]}}}, "augmentation.elastic.sigma", "one or 2"),
        ({"patches": {"size": 20000, "memory": "1GiB"}}, "patches.size", "more than patches.memory 1GiB"),
        ({"patches": {"size": 1}}, "patches.size", "nearest valid: 2x2"),
        ({"patches": {"size": 16, "memory": "8XB"}}, "patches.memory", "not a size"),
        ({"device": "meta"}, "device", "'meta' is not a device unetgen trains on; give cpu"),
    ]
    small_file(tmp_path)
    image = np.load(tmp_path / "images" / "c1.npy").astype(np.float32)  # a NaN in an image of a folder
    image[3, 4] = np.nan
    np.save(tmp_path / "images" / "c1.npy", image)
    with pytest.raises(ValueError, match=r"image .*c1.npy holds 1 NaN or infinite values; replace them"):
        train(small_file(tmp_path), tmp_path / "m.safetensors", progress=False, plot=False)
    assert _written(tmp_path) == []
    np.save(tmp_path / "images" / "c1.npy", blobs(1, (24, 24), count=3)[0])
    for fields, where, words in cases:
        path = small_file(tmp_path, **fields)
        with pytest.raises(ConfigError) as info:
            train(path, tmp_path / "m.safetensors", progress=False, plot=False)
        message = str(info.value)
        assert message.startswith(f"{path}:") and f": {where}: " in message and words in message, message
        assert _written(tmp_path) == [], message


def test_a_run_that_fails_in_its_first_step_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing is written until the first step has gone through (a state at step 0 left behind
    made the same command refuse to run again without --restart)."""
    path = small_file(tmp_path)

    def boom(self: Any) -> Any:
        raise ValueError("the sampler failed")

    monkeypatch.setattr("unetgen.train.engine.PatchSampler.sample", boom)
    with pytest.raises(ValueError, match="the sampler failed"):
        train(path, tmp_path / "m.safetensors", progress=False, plot=False)
    assert _written(tmp_path) == []
    monkeypatch.undo()
    train(path, tmp_path / "m.safetensors", progress=False, plot=False)  # the same command runs
    assert _written(tmp_path) == ["m.last.safetensors", "m.log.csv", "m.safetensors", "m.state.pt"]


def test_the_planned_batch_of_a_small_image_stays_small(tmp_path: Path) -> None:
    """Where the whole image fits, the planner raises the batch (up to 4096: 25 s per step of a
    24x24 image); the engine keeps it to 5 % of the training pixels per step, at least 2."""
    path = small_file(tmp_path, patches={"memory": "1GiB"}, steps=1)
    notes: list[str] = []
    result = train(path, tmp_path / "m.safetensors", progress=False, plot=False, note=notes.append)
    assert result.batch == 2 and result.patch == (24, 24), notes
    assert notes[0].startswith("plan: patch 24x24 -> 24x24, batch 2:")


def test_outputs_beside_what_unetgen_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A state file that names the format but holds other fields (forged), a symlink among the
    outputs (dangling or not), a model path that is a FIFO or a folder: one error line, exit 1,
    nothing changed (a forged state was an internal error; a dangling symlink was replaced)."""
    path = small_file(tmp_path)
    args = ["train", str(path), "--no-progress", "--no-plot", "--output"]
    torch.save({"format": "unetgen-train-state", "step": "3", "files": 7}, tmp_path / "forged.state.pt")
    (tmp_path / "linked.curves.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "victim.txt").write_text("years of work")
    (tmp_path / "lost.last.safetensors").symlink_to(tmp_path / "victim.txt")
    (tmp_path / "sym.state.pt").symlink_to(tmp_path / "forged.state.pt")
    for name, words in [
        ("forged", "forged.state.pt exists and is not a unetgen training state (its fields version, step"),
        ("linked", "linked.curves.png exists and was not written by this training run"),
        ("lost", "lost.last.safetensors exists and was not written by this training run"),
        ("sym", "sym.state.pt exists and is not a unetgen training state (it is a symbolic link)"),
    ]:
        assert main([*args, str(tmp_path / f"{name}.safetensors")]) == 1
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and words in err, err
    assert os.readlink(tmp_path / "linked.curves.png") == str(tmp_path / "nowhere.png")
    assert (tmp_path / "lost.last.safetensors").is_symlink()
    assert (tmp_path / "victim.txt").read_text() == "years of work"
    assert read_state(tmp_path / "forged.state.pt") is None
    os.mkfifo(tmp_path / "fifo.safetensors")
    (tmp_path / "dir.yaml").mkdir()
    for model, words in [("fifo.safetensors", "is not a regular file"), ("dir.yaml", "is a directory")]:
        argv = ["train", model, "--images", "images", "--masks", "masks", "--output", str(tmp_path / "m.safetensors")]
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(tmp_path)
            assert main([*argv, "--steps", "1", "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and f"model: {model} {words}" in err, err


def test_command_line_values_are_refused_in_words(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--seed and --steps out of range are usage errors naming the option (a 30-digit number was
    "(config): a number has about 31 digits"); an option over a training file is named as the
    command line, not as "<training>"; device and memory are refused in words, not as a regex."""
    path = small_file(tmp_path)
    base = ["train", str(path), "--output", str(tmp_path / "m.safetensors"), "--no-progress"]
    for option, value, words in [
        ("--seed", "9" * 30, "argument --seed: " + "9" * 30 + " is too large"),
        ("--steps", "9" * 30, "argument --steps: " + "9" * 30 + " is too many"),
        ("--seed", "-1", "argument --seed: -1 must be a non-negative integer"),
    ]:
        with pytest.raises(SystemExit) as exit:
            main([*base, option, value])
        assert exit.value.code == 2 and words in capsys.readouterr().err
    assert main([*base, "--device", "gpu"]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"error: the command line (over {path}): device: 'gpu' is not a device unetgen trains on; give cpu, "
        "cuda, cuda:N (the GPU's index), mps or auto\n"
    )
    assert main([*base, "--memory", "1e30GiB"]) == 1
    assert "patches.memory: '1e30GiB' is not a memory size; write e.g. 2GiB" in capsys.readouterr().err
    assert _written(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# the CSV log: appended, and cut back to the saved state at resume


def _rows(path: Path) -> list[list[str]]:
    return [line.split(",")[:3] for line in path.read_text().splitlines()]  # step, loss, lr


def test_the_log_is_appended_not_rewritten_per_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opened once: the same file (inode) at every save, each save's rows after the last ones; a
    resumed run appends to the same file when it holds the saved state's rows."""
    from unetgen.train import engine

    path = small_file(tmp_path, steps=3)
    out = tmp_path / "m.safetensors"
    log = Outputs.of(out).log
    seen: list[tuple[int, bytes]] = []
    real = engine.atomic.write_bytes

    def spy(target: Any, data: Any) -> Path:
        if Path(target) == Outputs.of(out).state and log.exists():
            seen.append((log.stat().st_ino, log.read_bytes()))
        return real(target, data)

    monkeypatch.setattr(engine.atomic, "write_bytes", spy)
    train(path, out, progress=False, plot=False)
    assert len(seen) == 3 and len({ino for ino, _ in seen}) == 1  # one file for the whole run
    assert all(b.startswith(a) and b.count(b"\n") == a.count(b"\n") + 1 for (_, a), (_, b) in itertools.pairwise(seen))
    train(small_file(tmp_path, steps=5), out, resume=True, progress=False, plot=False)
    assert log.stat().st_ino == seen[0][0] and log.read_bytes().startswith(seen[-1][1])
    assert [r[0] for r in _rows(log)] == ["step", "1", "2", "3", "4", "5"]


def test_a_resumed_log_drops_the_rows_after_the_saved_state(tmp_path: Path) -> None:
    """Rows logged after the last saved state (a run killed between the log and the state) are
    dropped once, at resume, by a renamed temporary: the log reads as the uninterrupted run's,
    every loss bit for bit (floats written as repr)."""
    whole = tmp_path / "whole.safetensors"
    train(small_file(tmp_path, steps=4), whole, progress=False, plot=False)
    cut = tmp_path / "cut.safetensors"
    train(small_file(tmp_path, steps=2), cut, progress=False, plot=False)
    log = Outputs.of(cut).log
    with open(log, "a") as f:
        f.write("3,0.123,0.001,9.9\n")  # logged, then killed before the state of step 3 was written
    inode = log.stat().st_ino
    train(small_file(tmp_path, steps=4), cut, resume=True, progress=False, plot=False)
    assert log.stat().st_ino != inode  # replaced once, not written over
    assert _rows(log) == _rows(Outputs.of(whole).log) and len(_rows(log)) == 5
    assert [float(r[1]) for r in _rows(log)[1:]] == [r["loss"] for r in read_state(Outputs.of(whole).state)["history"]]


def test_a_state_that_does_not_fit_and_a_gpu_that_is_not_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A state of this format and configuration whose tensors do not fit the model (torch's
    RuntimeError was an internal error) and a GPU index past the machine's GPUs (it failed in
    torch on first use) are ValueErrors naming the file or the device and the fix."""
    path = small_file(tmp_path, steps=1)
    out = tmp_path / "m.safetensors"
    train(path, out, progress=False, plot=False)
    state = torch.load(Outputs.of(out).state, weights_only=True)
    state["model"] = {name: t[..., :1] for name, t in state["model"].items()}
    torch.save(state, Outputs.of(out).state)
    with pytest.raises(ValueError, match=r"m.state.pt does not fit the model of this configuration \(.*--restart"):
        train(small_file(tmp_path, steps=2), out, resume=True, progress=False, plot=False)
    with pytest.raises(ValueError, match="pass one of them"):
        train(path, out, resume=True, restart=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"device 'cuda:7': this machine has 2 CUDA GPUs \(cuda:0 to cuda:1\)"):
        train(small_file(tmp_path, device="cuda:7"), tmp_path / "g.safetensors", progress=False, plot=False)
    assert not Outputs.of(tmp_path / "g.safetensors").state.exists()


def test_touching_pairs_against_a_loop_over_voxels() -> None:
    """`touching_pairs` (one key per pair and np.unique, no Python set of every touching voxel:
    4 s for a 40x128x128 stack of small objects before, 0.5 s now) finds the pairs a plain loop
    over each voxel's 26 neighbours finds."""
    from unetgen.train.metrics import touching_pairs

    labels = np.random.default_rng(0).integers(0, 6, (5, 6, 7))
    want = set()
    for z, y, x in np.ndindex(*labels.shape):
        for dz, dy, dx in np.ndindex(3, 3, 3):
            n = (z + dz - 1, y + dy - 1, x + dx - 1)
            if all(0 <= c < s for c, s in zip(n, labels.shape, strict=True)):
                a, b = int(labels[z, y, x]), int(labels[n])
                if a and b and a != b:
                    want.add((min(a, b), max(a, b)))
    assert touching_pairs(labels) == want and len(want) == 10  # every pair of the ids 1..5
    assert touching_pairs(labels.astype(np.uint16) * 1000) == {(a * 1000, b * 1000) for a, b in want}
