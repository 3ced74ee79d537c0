"""Files for the command-line tests: tiny configs, checkpoints, weights and images, and the
hostile or careless ones a user passes by mistake (a FIFO, a directory, a pickle, a PNG named
.npy, an array of Python objects, a header that lies about its shape...)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import torch

from unetgen import UNetConfig, build_unet, save_unet
from unetgen.cli import main

TINY = UNetConfig(depth=1, base_channels=2, channel_multiplier=1, in_channels=1, out_channels=3, init="torch")
TINY3D = TINY.model_copy(update={"spatial_dims": 3, "padding": "same", "norm": "instance"})
RGB = TINY.model_copy(update={"in_channels": 3, "padding": "same"})
ANISO = UNetConfig(spatial_dims=3, depth=2, base_channels=2, strides=[[1, 2, 2], [2, 2, 2]], kernel_size=3)


PLANS = {  # an nnU-Net v2.3+ plans file with one small 2D configuration
    "dataset_name": "Dataset999_Fuzz",
    "plans_name": "nnUNetPlans",
    "configurations": {
        "2d": {
            "patch_size": [32, 32],
            "architecture": {
                "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                "arch_kwargs": {
                    "n_stages": 3,
                    "features_per_stage": [2, 4, 8],
                    "conv_op": "torch.nn.modules.conv.Conv2d",
                    "kernel_sizes": [[3, 3], [3, 3], [3, 3]],
                    "strides": [[1, 1], [2, 2], [2, 2]],
                    "n_conv_per_stage": [2, 2, 2],
                    "n_conv_per_stage_decoder": [2, 2],
                    "conv_bias": True,
                    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                    "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                    "dropout_op": None,
                    "dropout_op_kwargs": None,
                    "nonlin": "torch.nn.LeakyReLU",
                    "nonlin_kwargs": {"inplace": True},
                },
                "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
            },
        }
    },
}


def make_files(root: Path) -> dict[str, str]:
    """Write every file once; returns name -> path (absolute), including paths that do not exist."""
    files: dict[str, Path] = {}

    def path(name: str) -> Path:
        files[name] = root / name
        return files[name]

    for name, config in [("tiny.json", TINY), ("tiny3d.json", TINY3D), ("rgb.json", RGB), ("aniso.json", ANISO)]:
        path(name).write_text(config.model_dump_json())
    path("typo.yaml").write_text("depth: 3\nchanels: 4\n")
    path("plans.json").write_text(json.dumps(PLANS))
    path("plans_v2.json").write_text(json.dumps({"configurations": {"2d": {"UNet_class_name": "Unknown"}}}))
    path("empty.yaml").write_text("")
    path("octal.yaml").write_text("base_channels: 064\n")
    torch.manual_seed(0)
    model = build_unet(TINY).eval()
    torch.save(model.state_dict(), path("w.pt"))
    torch.save({"nope": torch.zeros(1)}, path("wrong.pt"))
    save_unet(model, path("tiny.safetensors"))
    # the same model with a preprocessing spec (unetgen predict applies it; --no-preprocessing does not)
    save_unet(model, path("spec.safetensors"), preprocessing={"normalize": ["scale_range", {"type": "clip", "min": 0}]})
    save_unet(build_unet(TINY3D), path("tiny3d.safetensors"))
    for name, config in [("tiny3d.pt", TINY3D), ("rgb.pt", RGB), ("aniso.pt", ANISO)]:
        torch.save(build_unet(config).state_dict(), path(name))
    path("corrupt.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    path("evil.pt").write_bytes(pickle.dumps(os.system))
    path("evil.npy").write_bytes(pickle.dumps(os.system))
    rng = np.random.default_rng(0)
    np.save(path("in.npy"), rng.standard_normal((12, 13)).astype(np.float32))
    np.save(path("in3.npy"), rng.standard_normal((3, 12, 13)).astype(np.float32))
    np.save(path("batch.npy"), rng.standard_normal((2, 1, 12, 13)).astype(np.float32))
    np.save(path("vol.npy"), rng.standard_normal((9, 10, 11)).astype(np.float32))
    np.save(path("be.npy"), rng.standard_normal((12, 13)).astype(">f8"))
    np.save(path("u16.npy"), rng.integers(0, 65535, (12, 13)).astype(np.uint16))
    np.save(path("obj.npy"), np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(path("str.npy"), np.array([["a", "b"]]))
    np.save(path("cplx.npy"), np.zeros((12, 13), np.complex64))
    np.save(path("nan.npy"), np.full((12, 13), np.nan, np.float32))
    np.save(path("huge.npy"), np.full((12, 13), 1e300))
    np.save(path("empty.npy"), np.zeros((0, 13), np.float32))
    np.save(path("scalar.npy"), np.float32(3))
    with open(path("lying.npy"), "wb") as f:  # claims 4 TB of data
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)})
    path("truncated.npy").write_bytes(files["in.npy"].read_bytes()[:-40])
    from PIL import Image

    Image.fromarray(rng.integers(0, 255, (12, 13), dtype=np.uint8)).save(path("in.png"))
    Image.fromarray(rng.integers(0, 255, (12, 13, 3), dtype=np.uint8)).save(path("rgb.png"))
    Image.fromarray(rng.integers(0, 255, (12, 13), dtype=np.uint8)).convert("P").save(path("palette.png"))
    path("png.npy").write_bytes(files["in.png"].read_bytes())
    path("text.png").write_text("not an image")
    import tifffile

    tifffile.imwrite(path("in.tif"), rng.standard_normal((12, 13)).astype(np.float32))
    tifffile.imwrite(path("rgb.tiff"), rng.integers(0, 255, (12, 13, 3), dtype=np.uint8), photometric="rgb")
    tifffile.imwrite(path("vol.tif"), rng.standard_normal((9, 10, 11)).astype(np.float32))
    # outputs that exist and that unetgen did not write: never replaced (data is sacred)
    np.save(path("theirs.npy"), np.arange(12.0))
    tifffile.imwrite(path("theirs.tif"), np.ones((12, 13), np.uint8), software="ImageJ")
    path("text.txt").write_text("hello")
    path("image.bmp").write_bytes(b"BM" + bytes(60))
    os.mkfifo(path("fifo.yaml"))
    os.mkfifo(path("fifo.npy"))
    os.mkfifo(path("fifo.safetensors"))
    os.mkfifo(path("fifo.pt"))
    os.mkfifo(path("fifo.svg"))
    path("dir.yaml").mkdir()
    path("dir.npy").mkdir()
    path("outdir").mkdir()
    (root / "full.npy").symlink_to("/dev/full")
    files["full.npy"] = root / "full.npy"
    for name in (
        "missing.yaml",
        "missing.npy",
        "missing.safetensors",
        "missing.pt",
        "out.npy",
        "out2.npy",
        "out.tif",
        "d.svg",
        "m.yaml",
        "m.json",
    ):
        path(name)
    files["missing/out.npy"] = root / "missing" / "out.npy"
    files["outdir/p.npy"] = root / "outdir" / "p.npy"
    files["missing/d.svg"] = root / "missing" / "d.svg"
    files["missing/m.yaml"] = root / "missing" / "m.yaml"
    files["outdir/m.yml"] = root / "outdir" / "m.yml"
    files["noext"] = root / "noext"
    out = {k: str(v) for k, v in files.items()}
    out |= {"/dev/null": "/dev/null", "/dev/full": "/dev/full", "nul": str(root / "a\0b.npy"), "long": "x" * 5000}
    out |= {"empty": "", "dash": "-", "preset": "ronneberger2015", "nopreset": "no-such-preset"}
    return out


def run(argv: list[str]) -> tuple[int, str, str]:
    """`main(argv)` with stdout and stderr captured: (exit status, stdout, stderr). Anything
    but a return or a SystemExit propagates (and fails the calling test)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit:
            code = 0 if exit.code is None else exit.code
    return code, out.getvalue(), err.getvalue()


def make_large_files(root: Path) -> dict[str, str]:
    """Files for out-of-core prediction (a .zarr image, and the folders and arrays unetgen must
    leave alone); empty when zarr is not installed. Returns name -> path, as `make_files`."""
    try:
        import zarr
    except ImportError:
        return {}
    files: dict[str, Path] = {name: root / name for name in ("in.zarr", "theirs.zarr", "notes.zarr", "out.zarr")}
    image = zarr.create_array(files["in.zarr"], shape=(1, 12, 13), chunks=(1, 8, 8), dtype="float32")
    image[...] = np.random.default_rng(0).standard_normal((1, 12, 13)).astype(np.float32)
    theirs = zarr.create_array(files["theirs.zarr"], shape=(3, 12, 13), chunks=(3, 12, 13), dtype="float32")
    theirs[...] = 7
    files["notes.zarr"].mkdir()
    (files["notes.zarr"] / "thesis.txt").write_text("four years of work")
    for name, broken in (("fifo.zarr", "zarr.json"), ("chunkfifo.zarr", "c/0/0/0")):
        files[name] = root / name
        shutil.copytree(files["in.zarr"], files[name])
        (files[name] / broken).unlink()
        os.mkfifo(files[name] / broken)
    files["zero.npy"] = root / "zero.npy"
    files["zero.npy"].symlink_to("/dev/zero")
    files["negative.npy"] = root / "negative.npy"
    with open(files["negative.npy"], "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (-12, 10**30)})
    files["missing/out.zarr"] = root / "missing" / "out.zarr"
    files["out2.zarr"] = root / "out2.zarr"
    return {k: str(v) for k, v in files.items()}


# for `unetgen train`: the inputs and the files beside an output that unetgen did not write
TRAIN_SACRED = ("timgs", "tmasks", "timg.npy", "tmask.npy", "tsame.json", "tiny.json", "tiny.safetensors", "train.yaml",
                "train-inst.yaml", "train-none.yaml", "theirs.log.csv", "alien.state.pt", "forged.state.pt",
                "linked.curves.png", "lost.last.safetensors")  # fmt: skip
TSAME = UNetConfig(depth=1, base_channels=2, channel_multiplier=1, out_channels=2, padding="same", init="torch")


def make_train_files(root: Path) -> dict[str, str]:
    """Files for `unetgen train`: tiny image and mask pairs (24x24; as files, folders, PNG and
    TIFF), a tiny same-padded model, training files of 2 steps; and the mistakes: masks of
    another shape, of fractions or of ids the model lacks, NaN images, folders with nothing or
    with more masks than images, training files with unknown or impossible fields, and outputs
    beside files unetgen did not write (a log, a state that is not unetgen's, a forged one, a
    dangling symlink, a symlink to /dev/full, a directory). Returns name -> path, as `make_files`."""
    import yaml
    from PIL import Image

    files: dict[str, Path] = {}

    def path(name: str) -> Path:
        files[name] = root / name
        return files[name]

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:24, :24]
    for folder in ("timgs", "tmasks", "tempty", "tnotes", "tmasks3"):
        path(folder).mkdir()
    (files["tnotes"] / "readme.txt").write_text("not an image")
    for k, name in enumerate(("a", "b")):
        mask = (((yy - 8 - 6 * k) ** 2 + (xx - 9) ** 2) < 20).astype(np.uint8)
        mask[16:21, 14:22] = 1
        image = (50 + 100 * (mask > 0) + rng.normal(0, 10, mask.shape)).astype(np.float32)
        np.save(files["timgs"] / f"{name}.npy", image)
        np.save(files["tmasks"] / f"{name}.npy", mask)
        np.save(files["tmasks3"] / f"{name}.npy", mask)
        if k == 0:
            np.save(path("timg.npy"), image)
            np.save(path("tmask.npy"), mask)
            Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(path("timg.png"))
            Image.fromarray(mask).save(path("tmask.png"))
            np.save(path("tmask_shape.npy"), mask[:20])
            np.save(path("tmask_float.npy"), mask + np.float32(0.5))
            np.save(path("tmask_ids.npy"), mask * 4)
            np.save(path("tmask_neg.npy"), mask.astype(np.int8) - 1)
            np.save(path("tnan.npy"), np.where(mask > 0, np.nan, image).astype(np.float32))
    np.save(files["tmasks3"] / "c.npy", mask)
    path("tsame.json").write_text(TSAME.model_dump_json())
    small = {"elastic": {"sigma": 2, "points": 2}}
    train = {"data": {"images": "timgs", "masks": "tmasks"}, "model": "tsame.json", "patches": {"size": 16, "batch": 2},
             "augmentation": small, "steps": 2, "validate_every": 2, "save_every": 2}  # fmt: skip
    docs = {
        "train.yaml": train,
        "train-inst.yaml": {**train, "targets": {"type": "instances", "weight_map": {"w0": 5, "sigma": 2}},
                            "data": {**train["data"], "validation": {"type": "files", "count": 1}}},
        "train-none.yaml": {**train, "data": {**train["data"], "validation": "none"}, "loss": "dice_cross_entropy",
                            "optimizer": {"type": "sgd", "lr": 0.01}, "schedule": "poly", "augmentation": {}},
        "train-typo.yaml": {**train, "stepz": 2, "loss": "dicee"},
        "train-missing.yaml": {**train, "data": {"images": "nowhere", "masks": "tmasks"}},
        "train-empty.yaml": {**train, "data": {"images": "tempty", "masks": "tmasks"}},
        "train-points.yaml": {**train, "augmentation": {"elastic": {"points": 32}}},
        "train-sigma.yaml": {**train, "augmentation": {"elastic": {"sigma": [1, 2, 3]}}},
        "train-patch.yaml": {**train, "patches": {"size": 17}},
        "train-memory.yaml": {**train, "patches": {"size": 20000, "memory": "1GiB"}},
        "train-f1.yaml": {**train, "best_metric": "object_f1"},
        "train-split.yaml": {**train, "data": {"images": "timg.npy", "masks": "tmask.npy", "validation": "files"}},
        "train-masks.yaml": {**train, "data": {"images": "timg.npy", "masks": "tmask_float.npy"}},
        "train-model.yaml": {**train, "model": "tiny3d.json"},
    }  # fmt: skip
    for name, doc in docs.items():
        path(name).write_text(yaml.safe_dump(doc))
    path("train-text.yaml").write_text("data: [1, 2\nmodel: {")
    # outputs beside what unetgen did not write
    path("theirs.log.csv").write_text("step,loss\n1,0.5\n")
    path("alien.state.pt").write_bytes(b"my own notes, not a torch file")
    torch.save({"format": "unetgen-train-state", "step": "3", "files": 7, "model": {}}, path("forged.state.pt"))
    path("linked.curves.png").symlink_to(root / "nowhere.png")  # dangling: not unetgen's to replace
    path("lost.last.safetensors").symlink_to(root / "tiny.safetensors")
    path("tdir.safetensors").mkdir()
    path("full.safetensors").symlink_to("/dev/full")
    for name in ("t.safetensors", "t2.safetensors", "theirs.safetensors", "alien.safetensors", "forged.safetensors",
                 "linked.safetensors", "lost.safetensors"):  # fmt: skip
        path(name)
    files["outdir/t.safetensors"] = root / "outdir" / "t.safetensors"
    files["missing/t.safetensors"] = root / "missing" / "t.safetensors"
    return {k: str(v) for k, v in files.items()}


def sacred(files: dict[str, str]) -> dict[str, bytes]:
    """The contents of the files no command may change: the inputs, what unetgen did not make (a
    symlink by where it points), and every .npy file there is (a .npy has no place for unetgen's
    mark, so no command replaces one, not even one it wrote: `unetgen.outputs`)."""
    names = ("in.npy", "in.zarr", "theirs.zarr", "notes.zarr", "theirs.npy", "theirs.tif", *TRAIN_SACRED)
    keep = [Path(files[n]) for n in names if n in files]
    if "in.npy" in files:
        root = Path(files["in.npy"]).parent
        keep += [p for d in (root, root / "outdir") if d.is_dir() for p in sorted(d.glob("*.npy")) if p not in keep]
    out = {}
    for root in keep:
        for p in sorted([root, *root.rglob("*")]):
            if p.is_symlink():
                out[str(p)] = os.readlink(p).encode()
            elif p.is_file():
                out[str(p)] = p.read_bytes()
    return out
