"""`unetgen export`: a checkpoint as a package other tools run (issue 19).

    unetgen export bioimageio CKPT -o model.zip     a bioimage.io model package (format 0.5)
    unetgen export monai-bundle CKPT -o DIR         a MONAI bundle folder

CKPT is anything `load_unet` reads: a .safetensors checkpoint, a model folder or a bioimage.io
package unetgen wrote. The preprocessing stored with the model goes into the package, unless
`--preprocessing FILE` gives another. Nothing is written until the package is complete: it is
built in a temporary place and then moved onto the output. An existing output is replaced only
when unetgen wrote it (a bioimage.io package with unetgen's config inside, a bundle whose
metadata names unetgen); a symbolic link is never followed or replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .. import atomic
from ..config.preprocessing import load_preprocessing
from ..share.load import load_unet
from .args import check_output, file_path, regular_file
from .errors import note, show

_FORMATS = ("pytorch_state_dict", "torchscript", "onnx")


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    """`unetgen export {bioimageio,monai-bundle}`."""
    p = sub.add_parser("export", help="write a checkpoint as a bioimage.io package or a MONAI bundle")
    kinds = p.add_subparsers(dest="format", required=True)
    q = kinds.add_parser("bioimageio", help="a bioimage.io model package (.zip) for Fiji, ilastik, QuPath, napari")
    _common(q)
    q.add_argument("-o", "--output", type=zip_path, required=True, help="the package to write, e.g. model.zip")
    q.add_argument(
        "--weight-formats",
        type=weight_formats,
        default=_FORMATS,
        help=f"comma-separated, any of {','.join(_FORMATS)} (default: all; onnx needs the `export` extra)",
    )
    q.set_defaults(func=cmd_export_bioimageio)
    q = kinds.add_parser("monai-bundle", help="a MONAI bundle folder (configs/, models/model.pt, docs/)")
    _common(q)
    q.add_argument("-o", "--output", type=file_path, required=True, help="the bundle folder to write")
    q.set_defaults(func=cmd_export_monai_bundle)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=file_path, help="a .safetensors checkpoint, a model folder or a package")
    p.add_argument("--name", default=None, help="the model's name (letters, digits, spaces, _+-() only)")
    p.add_argument(
        "--preprocessing", type=file_path, default=None, help="a .json/.yaml spec (default: the model's own)"
    )


def zip_path(text: str) -> str:
    file_path(text)
    if Path(text).suffix.lower() != ".zip":
        raise argparse.ArgumentTypeError(f"{show(text)} must end in .zip, e.g. {show(text)}.zip")
    return text


def weight_formats(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names or any(n not in _FORMATS for n in names):
        raise argparse.ArgumentTypeError(f"{show(text)}: give one or more of {','.join(_FORMATS)}, comma-separated")
    return names


def _model_and_spec(args: argparse.Namespace) -> tuple[Any, Any]:
    model = load_unet(args.checkpoint)
    if args.preprocessing is None:
        return model, model.preprocessing
    regular_file(args.preprocessing, "--preprocessing")
    return model, load_preprocessing(args.preprocessing)


def _info(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from ..share.info import model_info

    try:
        return model_info(None if args.name is None else {"name": args.name})
    except ValidationError as err:
        why = err.errors()[0]["msg"]
        raise ValueError(
            f"--name {show(args.name)}: {why}; a name is 5 to 128 letters, digits, spaces or _+-() characters"
        ) from None


def cmd_export_bioimageio(args: argparse.Namespace) -> int:
    from ..share.bioimageio import export_bioimageio

    check_output(args.output)  # new, or a package unetgen wrote (unetgen.outputs); never a link
    out = Path(args.output)
    model, spec = _model_and_spec(args)
    with tempfile.TemporaryDirectory(prefix=".unetgen-export-", dir=out.parent) as tmp:
        built = export_bioimageio(
            model, Path(tmp) / "model.zip", preprocessing=spec, info=_info(args), weight_formats=args.weight_formats
        )
        with atomic.replacing(out) as f, open(built, "rb") as src:
            shutil.copyfileobj(src, f, 1 << 20)
    note(f"wrote {show(args.output)}")
    return 0


def cmd_export_monai_bundle(args: argparse.Namespace) -> int:
    from ..share.monai_bundle import export_monai_bundle

    out = Path(args.output)
    _refuse_link(out)
    _check_bundle_target(out, args.output)
    model, spec = _model_and_spec(args)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        export_monai_bundle(model, staging / "bundle", preprocessing=spec, info=_info(args))
        _swap_in(staging / "bundle", out, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    note(f"wrote {show(args.output)}")
    return 0


def _refuse_link(out: Path) -> None:
    if out.is_symlink():
        raise ValueError(
            f"--output {show(str(out))} is a symbolic link; unetgen does not replace links: give the output's own path"
        )


def _check_bundle_target(out: Path, shown: str) -> None:
    """`out` is new, an empty folder, or a bundle unetgen wrote, in an existing writable folder."""
    parent = out.parent
    if not parent.is_dir():
        raise ValueError(f"--output {show(shown)}: the folder {show(str(parent))} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--output {show(shown)}: cannot write into the folder {show(str(parent))}")
    if not os.path.lexists(out):
        return
    if not out.is_dir():
        raise ValueError(f"--output {show(shown)} exists and is not a folder; a bundle is a folder: give a new name")
    if any(out.iterdir()) and not _is_unetgen_bundle(out):
        raise ValueError(
            f"--output {show(shown)} is a folder that holds files and no bundle unetgen wrote; unetgen replaces only "
            "what it wrote: choose another name, or empty the folder first"
        )


def _is_unetgen_bundle(root: Path) -> bool:
    meta = root / "configs" / "metadata.json"
    try:
        if meta.is_symlink() or not meta.is_file() or meta.stat().st_size > 1 << 20:
            return False
        doc = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and "unetgen" in (doc.get("required_packages_version") or {})


def _swap_in(new: Path, out: Path, staging: Path) -> None:
    """Move the finished bundle `new` onto `out`; an old one (checked by `_check_bundle_target`)
    is moved into `staging` first and removed with it."""
    if os.path.lexists(out):
        os.rename(out, staging / "old")
    os.rename(new, out)
