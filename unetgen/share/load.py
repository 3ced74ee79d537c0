"""`load_unet` for everything unetgen writes: a .safetensors checkpoint (`unetgen.checkpoint`),
a model folder (`unetgen.share.hub`) or a bioimage.io package, zipped or unpacked
(`unetgen.share.bioimageio`). It is the package's `unetgen.load_unet`; it lives here, above the
checkpoint module, so that the checkpoint module never imports the packages built on it."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from .. import checkpoint
from ..model.unet import UNet
from .bioimageio import RDF, load_package
from .hub import load_folder

__all__ = ["load_unet"]


def load_unet(path: str | Path, *, device: torch.device | str | None = None, strict: bool = True) -> UNet:
    """The model at `path`: a .safetensors checkpoint (`unetgen.checkpoint.load_unet`, whose
    documentation says what is checked), a model folder `unetgen.share.hub.save_folder` wrote, or a
    bioimage.io package unetgen wrote (a ``.zip`` or its unpacked folder with ``rdf.yaml``);
    `strict` applies to .safetensors files only."""
    if (package := _package_loader(path)) is not None:
        return package(path, device=device)
    return checkpoint.load_unet(path, device=device, strict=strict)


def _package_loader(path: Any) -> Any:
    """The loader for a .zip or a folder, None for anything else (a file)."""
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes) or "\0" in os.fspath(path):
        return None
    p = Path(path)
    is_dir = os.path.isdir(p)  # os.path: False, not an OSError, for a name too long or unreadable
    if p.suffix.lower() == ".zip" and os.path.isfile(p):  # else `_open` refuses it (missing, a FIFO, a device)
        # a zip without rdf.yaml (a torch.save archive, any other zip) is explained by `_open`
        return load_package if _zip_has(p, RDF) else None
    if is_dir:
        return load_package if os.path.isfile(p / RDF) else load_folder
    return None


def _zip_has(path: Path, name: str) -> bool:
    """Whether the regular file at `path` is a zip archive with an entry `name` (reads its directory only)."""
    try:
        with zipfile.ZipFile(path) as z:
            return name in z.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
