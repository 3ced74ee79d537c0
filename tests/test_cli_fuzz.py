"""Property test of the command line: argv drawn from a grammar of plausible mistakes over every
subcommand (wrong, missing and odd files, huge, negative and zero numbers, sizes of the wrong
rank, devices that do not exist, unknown flags, pickles as weights, outputs into missing
folders, out-of-core outputs over folders and arrays unetgen did not make or over the input,
FIFOs inside zarr stores, scheduler addresses it cannot use; for `unetgen train` masks of another
shape, dtype or ids, NaN images, folders with nothing or with more masks than images, training
files with wrong fields, outputs inside the images or beside a log, a state or a symlink unetgen
did not write...) ends in exit 0, 1 or 2, never in a traceback, and every failure says `error:`;
no input, nor anything unetgen did not make, changes, and no temporary is left. The commands that
write (draw -o, import -o) also keep every file behind a symlink and leave no partial file."""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from cli_files import make_files, make_large_files, make_train_files, run, sacred
from hypothesis import event, given, settings
from hypothesis import strategies as st

from unetgen.train import Outputs, read_state

pytest.importorskip("PIL")
pytest.importorskip("tifffile")

# each pool: what a user means to pass, then the mistakes
CONFIGS = (["tiny.json", "tiny.safetensors", "tiny3d.json", "rgb.json", "aniso.json", "tiny3d.safetensors",
            "spec.safetensors"],
           ["typo.yaml", "empty.yaml", "octal.yaml", "corrupt.safetensors", "missing.yaml", "missing.safetensors",
            "fifo.yaml", "fifo.safetensors", "dir.yaml", "in.npy", "w.pt", "text.txt", "/dev/null", "/dev/full",
            "nul", "long", "empty", "dash", "nopreset"])  # fmt: skip
INPUTS = (["in.npy", "in.png", "in.tif", "batch.npy", "vol.npy", "rgb.png", "be.npy", "u16.npy", "in.zarr"],
          ["in3.npy", "obj.npy", "str.npy", "cplx.npy", "nan.npy", "huge.npy", "empty.npy", "scalar.npy", "lying.npy",
           "truncated.npy", "png.npy", "evil.npy", "palette.png", "text.png", "rgb.tiff", "vol.tif", "image.bmp",
           "text.txt", "fifo.npy", "dir.npy", "missing.npy", "/dev/null", "nul", "long", "empty",
           "tiny.safetensors", "fifo.zarr", "chunkfifo.zarr", "zero.npy", "negative.npy", "theirs.zarr",
           "notes.zarr"])  # fmt: skip
WEIGHTS = (["w.pt"], ["wrong.pt", "evil.pt", "tiny.safetensors", "tiny3d.safetensors", "corrupt.safetensors",
                      "fifo.pt", "missing.pt", "in.npy", "dir.npy", "/dev/null", "nul", "empty"])  # fmt: skip
# theirs.npy/.tif: files there already, which unetgen did not write (meant: the user did not know)
OUTPUTS = (["out.npy", "outdir/p.npy", "out2.npy", "out.zarr", "out.tif", "theirs.npy", "theirs.tif"],
           ["missing/out.npy", "dir.npy", "full.npy", "fifo.npy", "noext", "/dev/full",
            "nul", "long", "empty", "outdir", "notes.zarr", "theirs.zarr", "in.zarr", "in.npy", "missing/out.zarr",
            "fifo.zarr"])  # fmt: skip
SCHEDULERS = (["tcp://127.0.0.1:1"], ["ucx://h:1", "tls://h:8786", "inproc://x", "ws://h:1", "", "tcp://[::1", "::::",
                                      "tcp://h:99999", "long", "nul"])  # fmt: skip
SIZES = (["8", "12", "16", "13", "12x12", "16x16x16", "12x13", "12,12", "4_0"],
         ["1", "0", "-5", "abc", "1e3", "", "x", "8x8x8x8", " 12", "nan", "1" * 40, "1000000000000",
          "99999999999999999999999x1", "3x", "x3"])  # fmt: skip
INTS = (["1", "2", "3"], ["0", "-1", "1000000000000", "9" * 30, "abc", "2.5", "", "1e3", "0x10"])
DEVICES = (["cpu", "cpu:0"], ["cuda", "cuda:7", "nonsense", "meta", "mps", "", "xpu", "cuda:-1"])
FRACTIONS = (["0", "0.25", "0.5"], ["0.99", "1", "1.5", "-0.1", "nan", "inf", "abc"])
GIBS = (["16", "0.5"], ["0.000001", "0", "-1", "1e30", "inf", "abc"])
BLENDS = (["gaussian", "constant"], ["linear", ""])
DRAWINGS = (["d.svg"], ["fifo.svg", "missing/d.svg", "dir.npy", "/dev/full", "noext", "nul", "empty", "long"])
PLANS = (["plans.json"], ["plans_v2.json", "tiny.json", "missing.yaml", "fifo.yaml", "dir.yaml", "nul", "empty"])
YAMLS = (["m.yaml", "outdir/m.yml"], ["m.json", "noext", "missing/m.yaml", "dir.npy", "/dev/full", "fifo.yaml", "nul"])
OUTPUT_TYPES = (["logits", "probabilities", "labels"], ["argmax", "LABELS"])
TTAS = (["flip"], ["rotate", "FLIP", ""])
TTA_AXES = (["0", "1", "0,1"], ["2", "0,0", "-1", "x", "", "1,0,2"])


Pool = tuple[list[str], list[str]]
# per subcommand: (flag, pool, required); "" is the positional argument
_SLOTS: dict[str, list[tuple[str, Pool, bool]]] = {
    "summary": [("", CONFIGS, True), ("--input-size", SIZES, False), ("--batch-size", INTS, False),
                ("--depth", INTS, False)],
    "sizes": [("", CONFIGS, True), ("--near", SIZES, False), ("--max", INTS, False)],
    "trace": [("", CONFIGS, True), ("--input-size", SIZES, False)],
    "draw": [("", CONFIGS, True), ("--input-size", SIZES, False), ("-o", DRAWINGS, True)],
    "import": [("", (["nnunet"], ["monai", ""]), True), ("", PLANS, True),
               ("--configuration", (["2d"], ["3d_fullres", "", "x" * 5000]), True), ("--in-channels", INTS, True),
               ("--out-channels", INTS, True), ("-o", YAMLS, True), ("--no-deep-supervision", ([""], [""]), False)],
    "plan": [("", CONFIGS, True), ("--memory", (["64MiB", "1GiB", "100000000"], ["0", "-1GiB", "8XB", "", "1e400"]),
             True), ("--image", SIZES, True), ("--batch", INTS, False),
             ("--optimizer", (["adam", "sgd"], ["lbfgs", ""]), False)],
    "validate": [("", CONFIGS, True), ("", CONFIGS, False), ("", CONFIGS, False)],
    "predict": [("", CONFIGS, True), ("--input", INPUTS, True), ("--output", OUTPUTS, True),
                ("--weights", WEIGHTS, True), ("--tile-size", SIZES, False), ("--batch-size", INTS, False),
                ("--overlap", FRACTIONS, False), ("--blend", BLENDS, False), ("--device", DEVICES, False),
                ("--memory-limit", GIBS, False), ("--output-type", OUTPUT_TYPES, False), ("--dry-run", ([""], [""]),
                False), ("--restart", ([""], [""]), False), ("--block-size", SIZES, False),
                ("--scheduler", SCHEDULERS, False), ("--no-preprocessing", ([""], [""]), False),
                ("--no-optimize", ([""], [""]), False), ("--tta", TTAS, False), ("--tta-axes", TTA_AXES, False)],
}  # fmt: skip
_SLOTS["predict_large"] = [  # `predict` out of core: a checkpoint, a .zarr output, the out-of-core options
    ("", (["tiny.safetensors", "spec.safetensors"],
          ["tiny3d.safetensors", "corrupt.safetensors", "fifo.safetensors", "tiny.json"]), True),
    ("--input", (["in.zarr", "in.npy", "in.tif"], INPUTS[1]), True),
    ("--output", (["out.zarr", "out2.zarr"], ["notes.zarr", "theirs.zarr", "in.zarr", "missing/out.zarr",
                                             "fifo.zarr", "in.npy", "dir.npy", "outdir", "long", "nul"]), True),
    ("--restart", ([""], [""]), True), ("--tile-size", SIZES, False),
    ("--block-size", SIZES, False), ("--batch-size", INTS, False), ("--output-type", OUTPUT_TYPES, False),
    ("--scheduler", SCHEDULERS, False), ("--memory-limit", GIBS, False), ("--dry-run", ([""], [""]), False),
    ("--no-preprocessing", ([""], [""]), False),
    ("--no-optimize", ([""], [""]), False), ("--tta", TTAS, False), ("--tta-axes", TTA_AXES, False),
]  # fmt: skip
# `train` (issue 22): the simple form and the training-file form; a few tiny steps per run
T_MODELS = (["tsame.json", "tiny.json", "tiny.safetensors"],
            ["typo.yaml", "corrupt.safetensors", "fifo.yaml", "fifo.safetensors", "dir.yaml", "missing.safetensors",
             "in.npy", "w.pt", "rgb.json", "tiny3d.json", "nopreset", "/dev/null", "nul", "long", "empty"])  # fmt: skip
T_IMAGES = (["timgs", "timg.npy", "timg.png"],
            ["tnan.npy", "tempty", "tnotes", "fifo.npy", "dir.npy", "missing.npy", "in3.npy", "vol.npy", "cplx.npy",
             "lying.npy", "evil.npy", "text.png", "/dev/null", "nul", "long", "empty"])  # fmt: skip
T_MASKS = (["tmasks", "tmask.npy", "tmask.png"],
           ["tmask_shape.npy", "tmask_float.npy", "tmask_ids.npy", "tmask_neg.npy", "tmasks3", "tempty", "tnotes",
            "nan.npy", "str.npy", "obj.npy", "fifo.npy", "missing.npy", "truncated.npy", "/dev/null",
            "empty"])  # fmt: skip
T_OUTPUTS = (["new.safetensors", "new.safetensors", "t.safetensors", "t2.safetensors", "outdir/t.safetensors"],
             ["IMAGES/t.safetensors", "tiny.safetensors", "theirs.safetensors", "alien.safetensors",
              "forged.safetensors", "linked.safetensors", "lost.safetensors", "fifo.safetensors", "tdir.safetensors",
              "full.safetensors", "missing/t.safetensors", "in.npy", "/dev/full", "nul", "long", "empty",
              "noext"])  # fmt: skip
T_FILES = (["train.yaml", "train-inst.yaml", "train-none.yaml"],
           ["train-typo.yaml", "train-missing.yaml", "train-empty.yaml", "train-points.yaml", "train-sigma.yaml",
            "train-patch.yaml", "train-memory.yaml", "train-f1.yaml", "train-split.yaml", "train-masks.yaml",
            "train-model.yaml", "train-text.yaml", "fifo.yaml", "dir.yaml", "empty.yaml", "missing.yaml"])  # fmt: skip
T_STEPS = (["1", "2"], ["0", "-1", "1000000000000", "9" * 30, "abc", "1e3", ""])
T_PATCHES = (["16", "20", "24x16"], ["17", "1", "0", "16x16x16", "99999", "abc", ""])
T_MEMORY = (["64MiB", "1GiB"], ["0", "1B", "-1GiB", "1e30GiB", "99999999999999999999TiB", "8XB", "nan", ""])
T_BATCH = (["1", "2"], ["0", "-1", "99999", "abc"])
T_DEVICES = (["cpu", "cpu:0"], ["cuda:7", "cuda:-1", "cpu:1", "meta", "nonsense", "mps", ""])
_TRAIN_COMMON: list[tuple[str, Pool, bool]] = [
    ("--steps", T_STEPS, False), ("--memory", T_MEMORY, False), ("--patch", T_PATCHES, False),
    ("--batch", T_BATCH, False), ("--seed", (["0", "7"], ["-1", "9" * 30, "abc"]), False),
    ("--device", T_DEVICES, False), ("--resume", ([""], [""]), False), ("--restart", ([""], [""]), False),
    ("--no-plot", ([""], [""]), True), ("--no-progress", ([""], [""]), True),
]  # fmt: skip
_SLOTS["train"] = [
    ("", T_MODELS, True), ("--images", T_IMAGES, True), ("--masks", T_MASKS, True), ("--output", T_OUTPUTS, True),
    ("--steps", T_STEPS, True), ("--targets", (["classes", "instances"], ["objects", ""]), False),
    ("--axes", (["yx"], ["zyx", "yxc", "qq", ""]), False),
    ("--pairing", (["auto", "name", "order"], ["random", ""]), False),
    ("--validation", (["0", "0.25"], ["1", "-0.1", "nan", "0.99", "abc"]), False),
    *_TRAIN_COMMON[1:],
]  # fmt: skip
_SLOTS["train_file"] = [("", T_FILES, True), ("--output", T_OUTPUTS, True), *_TRAIN_COMMON]
_SWITCHES = {"--dry-run", "--no-deep-supervision", "--restart", "--no-preprocessing", "--no-optimize", "--resume",
             "--no-plot", "--no-progress"}  # fmt: skip
_KEEP = {"-o", "--steps", "--no-progress"}  # never left out: a default in the cwd, 1000 steps, a progress bar
_JUNK = [["--frobnicate"], ["--help"], ["-h"], ["--"], ["-"], ["--input-size"], ["extra"], ["--batch-size"],
         ["--batch-size", "2"], ["--weights", "w.pt"], ["--near", "12"]]  # fmt: skip
_FRESH = itertools.count()
_MASKS_OF = {"timgs": "tmasks", "timg.npy": "tmask.npy", "timg.png": "tmask.png"}
_WEIGHTS_OF = {"tiny.json": "w.pt", "tiny3d.json": "tiny3d.pt", "rgb.json": "rgb.pt", "aniso.json": "aniso.pt"}


@st.composite
def argvs(draw: st.DrawFn, files: dict[str, str]) -> list[str]:
    """One command line with 0, 1 or 2 mistakes: a subcommand (or a wrong one), its arguments
    (required ones, some optional ones) each meant well or, for the chosen mistakes, wrong or
    missing; now and then a flag of another command or an unknown one, or options before
    positionals. Few mistakes at a time, so that the checks behind the first one are reached."""

    def one_in(n: int) -> bool:  # hypothesis favours 0 from st.integers: sample instead
        return draw(st.sampled_from([False] * (n - 1) + [True]))

    commands = ["summary", "sizes", "trace", "validate", "schema", "presets", "draw", "import", "plan",
                "predict", "predict", "predict", "predict_large", "predict_large", "train", "train_file",
                "bad"]  # fmt: skip
    command = draw(st.sampled_from(commands))
    slots = [slot for slot in _SLOTS.get(command, []) if slot[2] or one_in(3)]
    mistakes = draw(st.sampled_from([0, 1, 1, 1, 2]))
    wrong = set(draw(st.permutations(range(len(slots))))[:mistakes])
    groups: list[list[str]] = []
    config = None
    for i, (flag, pool, required) in enumerate(slots):
        if i in wrong and required and flag not in _KEEP and one_in(4):
            continue  # a required argument left out (not: draw's -o, whose default would land in the cwd; train's
            # --steps, whose default is 1000 steps, and --no-progress: a bar would mix with the error lines)
        value = draw(st.sampled_from(pool[1] if i in wrong else pool[0]))
        if (flag == "" and command == "predict") or flag == "--images":
            config = value
        if flag == "--masks" and i not in wrong and config in _MASKS_OF:  # the masks that pair with the images
            value = _MASKS_OF[config]
        if flag == "--weights" and i not in wrong:  # the weights that fit the config, none for a checkpoint
            if config not in _WEIGHTS_OF:
                continue
            value = _WEIGHTS_OF[config]
        if value == "new.safetensors":  # a name no run has used (the others hold a run: --resume, --restart)
            value = str(Path(files["t.safetensors"]).with_name(f"new{next(_FRESH)}.safetensors"))
        if value == "IMAGES/t.safetensors":  # inside the folder of images (else the model checkpoint)
            inside = Path(files.get(str(config), "")) / "t.safetensors"
            value = str(inside) if config and os.path.isdir(inside.parent) else "tiny.safetensors"
        value = files.get(value, value)
        groups.append([value] if not flag else [flag] if flag in _SWITCHES else [flag, value])
    if one_in(8):
        groups.append([files.get(v, v) for v in draw(st.sampled_from(_JUNK))])
    if one_in(5):  # options before positionals
        groups = draw(st.permutations(groups))
    name = {"predict_large": "predict", "train_file": "train"}.get(command, command)
    return [name, *(arg for group in groups for arg in group)]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread avoids thread start-up per op
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("UNETGEN_DEBUG", raising=False)
        mp.chdir(tmp_path_factory.mktemp("cwd"))  # a relative path the grammar forgot to map lands here
        root = tmp_path_factory.mktemp("fuzz")
        files = make_files(root) | make_large_files(root)
        yield files | make_train_files(root)
    torch.set_num_threads(threads)


def _alarm(signum, frame):
    raise TimeoutError("the command did not finish in 60 s (blocked on a FIFO?)")


@settings(max_examples=max(200, settings().max_examples), deadline=None)
@given(data=st.data())
def test_any_command_line_ends_in_0_1_or_2_without_a_traceback(files: dict[str, str], data: st.DataObject) -> None:
    argv = data.draw(argvs(files), label="argv")
    before = sacred(files)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(60)
    try:
        code, out, err = run(argv)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    event(f"{argv[0]} exit {code}" + (" (wrote)" if "wrote " in err else ""))
    assert code in (0, 1, 2), (code, err)
    assert not os.listdir("."), f"wrote into the working directory: {os.listdir('.')}"
    after = sacred(files)  # the files there before the run (a .npy written now is sacred from the next run on)
    assert {k: after.get(k) for k in before} == before, "changed an input, a .npy or something unetgen did not make"
    assert "Traceback" not in err and "Traceback" not in out
    lines = [line for line in err.splitlines() if line.strip()]
    assert all(len(line) <= 1200 for line in lines), "an unbounded message"
    if code == 2:
        assert sum("error: " in line for line in lines) == 1, err
    elif code == 1 and lines:
        notes = ("error: ", "plan: ", "memory: ", "resuming: ", "preprocessing: ", "axes ", "instances: ", "compute: ")
        assert all(line.startswith(notes) for line in lines), err
        assert any(line.startswith("error: ") for line in lines)
        assert "internal error" not in err, err
    elif code == 1:  # an answer, not a failure: an invalid size (summary) or problems (validate) on stdout
        assert argv[0] in ("summary", "validate") and out
    if code == 0 and argv[0] == "predict" and "--dry-run" not in argv and not {"-h", "--help"} & set(argv):
        assert "wrote " in err
    if code == 0 and argv[0] == "train" and not {"-h", "--help"} & set(argv):
        assert "wrote " in err or "has done its" in err, err
        written = Outputs.of(argv[argv.index("--output") + 1]) if "--output" in argv else None
        if written is not None:  # a complete run: its state reads back, its log holds a row per step
            state = read_state(written.state)
            assert state is not None and written.log.read_text().count("\n") == 1 + state["step"], err
    root = Path(files["in.npy"]).parent  # temporaries are made beside their target: in the folders written to
    assert not [n for d in (root, root / "outdir") for n in os.listdir(d) if n.endswith(".tmp")], "a temporary was left"
    for name in ("out.npy", "out2.npy", "outdir/p.npy"):  # .npy predictions unetgen wrote: removed now and then
        remove = data.draw(st.booleans(), label=f"remove {name}")  # (never replaced); drawn whatever is there
        if remove and os.path.isfile(files[name]):
            os.unlink(files[name])


# --- predict over outputs that exist: replaced only when unetgen wrote them and their format holds its mark


@settings(max_examples=40, deadline=None)
@given(
    source=st.sampled_from(["in.npy", "in.tif", "in.png", "batch.npy"]),
    output=st.sampled_from(["out.npy", "out2.npy", "out.tif", "outdir/p.tif", "theirs.npy", "theirs.tif"]),
    kind=st.sampled_from(["logits", "labels"]),
    remove=st.booleans(),
)
def test_predict_replaces_only_its_own_marked_outputs(
    files: dict[str, str], source: str, output: str, kind: str, remove: bool
) -> None:
    out = Path(files.get(output, str(Path(files["in.npy"]).parent / output)))
    before = out.read_bytes() if out.exists() else None
    argv = ["predict", files["tiny.safetensors"], "--input", files[source], "--output", str(out), "--no-progress"]
    code, _, err = run([*argv, "--output-type", kind])
    if before is None:
        assert code == 0 and "wrote " in err, err
    elif output.startswith("out") and out.suffix == ".tif":  # a TIFF unetgen wrote: its Software tag says so
        assert code == 0 and "wrote " in err, err
    else:  # a .npy (no place for a mark), or a file unetgen did not write: left as it was
        assert code == 1 and "give a new name, or remove it yourself" in err and out.read_bytes() == before, err
    if remove and output.startswith("out"):
        out.unlink(missing_ok=True)


# --- the commands that write a file (draw -o, import -o) and plan: outputs over symlinks, folders,
# FIFOs, devices, read-only and existing files, odd names; the config read by its content (issue 18)

W_CONFIGS = (["tiny.json", "tiny.safetensors", "tiny3d.json", "preset", "model.bin"],
             ["w.pt", "in.npy", "model.svg", "text.txt", "empty.safetensors", "corrupt.safetensors", "fifo.yaml",
              "dir.yaml", "missing.yaml", "nopreset", "nul", "long", "empty"])  # fmt: skip
W_DRAWINGS = (["d.svg", "d.png", "d.pdf", "outdir/d.svg", "ours.svg"],
              ["keep.svg", "link.svg", "dangling.svg", "model.svg", "dir.svg", "fifo.svg", "missing/d.svg", "/dev/full",
               "/dev/null", "slash.svg/", "noext", ".svg", "d.gif", "d.SVG", "longname.svg", "newline.svg", "ro.svg",
               "nul", "empty"])  # fmt: skip
W_SIZES = (["12", "20", "12x12", "16x16x16", "572"], ["0", "-3", "13", "12x", "1x1", "abc", "9" * 30, "8x8x8x8"])
W_MEMORY = (["64MiB", "1GiB", "100000000", "0.5GiB", "16GB"],
            ["0", "-1GiB", "8XB", "", "1e400", "nan", "inf", "1 GiB", "GiB", "9" * 40, "1e-9GiB", "0x10"])  # fmt: skip
W_IMAGES = (["64", "572", "1024x1024", "16x16x16", "12x13"], ["0", "-1", "abc", "12x", "1x1", "3", "1" * 30])
W_PLANS = (["plans.json"], ["plans_v2.json", "tiny.json", "text.txt", "in.npy", "dir.yaml", "missing.yaml", "empty"])
W_YAMLS = (["m.yaml", "outdir/m.yml"], ["m.json", "noext", "missing/m.yaml", "dir.yaml", "/dev/full", "nul"])
W_SCHEMAS = (["schemas/unet-config.schema.json", "https://example.org/s.json"],
             ["", "a\nb: 1", "x" * 5000, "#", "'quoted'"])  # fmt: skip
_WRITER_SLOTS: dict[str, list[tuple[str, Pool, bool]]] = {
    "draw": [("", W_CONFIGS, True), ("--input-size", W_SIZES, False), ("-o", W_DRAWINGS, True)],
    "import": [("", (["nnunet"], ["monai"]), True), ("", W_PLANS, True),
               ("--configuration", (["2d"], ["3d_fullres", "", "2d\n"]), True), ("--in-channels", INTS, True),
               ("--out-channels", INTS, True), ("-o", W_YAMLS, True), ("--schema", W_SCHEMAS, False),
               ("--no-deep-supervision", ([""], [""]), False)],
    "plan": [("", W_CONFIGS, True), ("--memory", W_MEMORY, True), ("--image", W_IMAGES, True),
             ("--batch", INTS, False), ("--optimizer", (["adam", "adamw", "momentum", "sgd"], ["lbfgs", ""]), False)],
}  # fmt: skip


@st.composite
def writer_argvs(draw: st.DrawFn, files: dict[str, str]) -> list[str]:
    """A draw, import or plan command line with 0, 1 or 2 wrong values (each slot drawn from its
    pool of meant values or of mistakes), its options in any order now and then."""
    command = draw(st.sampled_from(["draw", "draw", "draw", "import", "plan"]))
    slots = [slot for slot in _WRITER_SLOTS[command] if slot[2] or draw(st.booleans())]
    wrong = set(draw(st.permutations(range(len(slots))))[: draw(st.sampled_from([0, 1, 1, 2]))])
    groups = []
    for i, (flag, pool, _) in enumerate(slots):
        value = files.get(v := draw(st.sampled_from(pool[1] if i in wrong else pool[0])), v)
        groups.append([value] if not flag else [flag] if flag == "--no-deep-supervision" else [flag, value])
    if draw(st.sampled_from([False, False, False, True])):
        groups = draw(st.permutations(groups))
    return [command, *(arg for group in groups for arg in group)]


def _writer_files(root: Path) -> dict[str, str]:
    """make_files, and outputs that must survive: a victim behind a symlink, an existing diagram,
    a read-only one, a checkpoint named .svg (read as CONFIG by its content)."""
    files = make_files(root)
    victim = root / "victim.txt"
    victim.write_text("years of work")
    extra = {
        "keep.svg": "<svg>last week</svg>\n",
        "ro.svg": "<svg>read-only</svg>\n",
        "empty.safetensors": "",
    }
    for name, text in extra.items():
        (root / name).write_text(text)
    (root / "ro.svg").chmod(0o444)
    (root / "link.svg").symlink_to(victim)
    (root / "dangling.svg").symlink_to(root / "nowhere.txt")
    (root / "dir.svg").mkdir()
    checkpoint = Path(files["tiny.safetensors"]).read_bytes()
    (root / "model.svg").write_bytes(checkpoint)
    (root / "model.bin").write_bytes(checkpoint)
    assert run(["draw", "ronneberger2015", "-o", str(root / "ours.svg")])[0] == 0
    names = ["keep.svg", "ro.svg", "empty.safetensors", "link.svg", "dangling.svg", "dir.svg", "model.svg", "model.bin"]
    names += ["ours.svg"]
    files |= {name: str(root / name) for name in names}
    files |= {name: str(root / name) for name in ("d.png", "d.pdf", "d.gif", "d.SVG", ".svg", "outdir/d.svg")}
    files |= {"slash.svg/": str(root / "slash.svg") + "/", "newline.svg": str(root / "new\nline.svg")}
    files |= {"longname.svg": str(root / ("x" * 252 + ".svg")), "victim.txt": str(victim)}
    return files


_WROTE: set[str] = set()  # the outputs the writer runs (and the fixture) wrote: the only ones they may replace


@pytest.fixture(scope="module")
def writer_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("UNETGEN_DEBUG", raising=False)
        mp.chdir(tmp_path_factory.mktemp("cwd-writers"))
        files = _writer_files(tmp_path_factory.mktemp("writers"))
        _WROTE.add(files["ours.svg"])
        yield files


def _snapshot(files: dict[str, str], output: str | None) -> dict[str, bytes]:
    """The bytes of the inputs and of the files that must survive a write: all but the output."""
    keep = ["victim.txt", "tiny.json", "tiny.safetensors", "model.svg", "model.bin", "plans.json", "w.pt", "in.npy"]
    return {name: Path(files[name]).read_bytes() for name in keep if files[name] != output}


def _complete(path: Path) -> bool:
    data = path.read_bytes()
    if path.suffix.lower() == ".svg":
        return data.startswith(b"<svg") and data.endswith(b"</svg>\n")
    if path.suffix.lower() == ".png":
        return data.startswith(b"\x89PNG") and data.endswith(b"IEND\xaeB`\x82")
    if path.suffix.lower() == ".pdf":
        return data.startswith(b"%PDF") and b"%%EOF" in data[-32:]
    return path.suffix.lower() in (".yaml", ".yml")


@settings(max_examples=max(150, settings().max_examples), deadline=None)
@given(data=st.data())
def test_writing_commands_keep_their_inputs_and_leave_nothing_partial(
    writer_files: dict[str, str], data: st.DataObject
) -> None:
    argv = data.draw(writer_argvs(writer_files), label="argv")
    root = Path(writer_files["victim.txt"]).parent
    output = argv[argv.index("-o") + 1] if "-o" in argv[:-1] else None
    before = _snapshot(writer_files, output)
    keep, disguised = Path(writer_files["keep.svg"]).read_bytes(), Path(writer_files["model.svg"]).read_bytes()
    existing = None  # an output there before the run that no run wrote, or a .pdf (no mark): never replaced
    foreign = output not in _WROTE or str(output).lower().endswith(".pdf")
    if output is not None and foreign and os.path.isfile(output) and not os.path.islink(output):
        existing = Path(output).read_bytes()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(60)
    try:
        code, out, err = run(argv)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    event(f"{argv[0]} exit {code}")
    assert code in (0, 1, 2), (code, err)
    assert "Traceback" not in err + out and "internal error" not in err, err
    assert all(len(line) <= 1200 for line in err.splitlines()), "an unbounded message"
    if code == 1:
        assert err.startswith("error: ") and all(line.startswith("error: ") for line in err.splitlines()), err
    assert _snapshot(writer_files, output) == before, "an input, or the file behind a symlink, was changed"
    assert not [p for p in root.rglob("*.tmp")], "a temporary was left behind"
    assert not os.listdir("."), f"wrote into the working directory: {os.listdir('.')}"
    if existing is not None:
        assert code != 0 and Path(output).read_bytes() == existing, "replaced a file unetgen did not write"
    if code == 0 and output is not None:
        _WROTE.add(output)
    assert Path(writer_files["keep.svg"]).read_bytes() == keep, "replaced a diagram unetgen did not write"
    if argv[0] == "draw" and output is not None:
        target = Path(output)
        if code == 0:
            assert target.is_file() and not target.is_symlink() and _complete(target), output
    remove = data.draw(st.booleans(), label="remove d.pdf")  # a .pdf is never replaced; drawn whatever is there
    if remove and os.path.isfile(writer_files["d.pdf"]):
        os.unlink(writer_files["d.pdf"])
    if os.geteuid() != 0:  # root writes anyway: os.access says yes
        assert Path(writer_files["ro.svg"]).read_text() == "<svg>read-only</svg>\n"
    Path(writer_files["keep.svg"]).write_bytes(keep)  # what a successful draw replaced, back for the next one
    Path(writer_files["model.svg"]).write_bytes(disguised)
    for link, to in (("link.svg", writer_files["victim.txt"]), ("dangling.svg", str(root / "nowhere.txt"))):
        if not Path(writer_files[link]).is_symlink():  # replaced by a diagram: a symlink again
            Path(writer_files[link]).unlink()
            Path(writer_files[link]).symlink_to(to)
