"""Image files by suffix: the one table of the formats unetgen reads and writes.

`FORMATS` maps a suffix (.npy, .png, .zarr, .tif/.tiff) to its `ImageFormat`, which says how to
`read` a whole image into memory (`read_image`: what `unetgen predict` does with an image that
fits), how to `open` one without reading its pixels (an array-like that `predict_tiled` reads one
tile window at a time: `unetgen.arrays.open_image`) and how to `write` a prediction
(`write_image`; zarr outputs, one chunk per block, are made by `unetgen.arrays.create_output`).

Reading is guarded: only regular files are read (a FIFO would block, a device could be endless);
a .npy file is memory-mapped and never unpickled; Pillow's decompression-bomb guard stays on (it
refuses images of more than twice its pixel limit). Pillow and tifffile are optional (`pip install
'unetgen[images]'`), as are zarr and the lazy TIFF store (`pip install 'unetgen[large]'`).
"""

from __future__ import annotations

import importlib.util
import os
import stat
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..reprs import short_arg

__all__ = [
    "FORMATS",
    "ImageFormat",
    "check_regular_file",
    "format_list",
    "image_format",
    "import_zarr",
    "read_image",
    "write_image",
]


@dataclass(frozen=True)
class ImageFormat:
    """One image file format: what reads it, and the functions that read, open and write it (None
    where unetgen does not: a zarr array is never read whole, only .npy predictions are written)."""

    suffixes: tuple[str, ...]
    """The file suffixes, lower case, e.g. (".tif", ".tiff")."""
    library: str
    """What reads it, as messages name it: NumPy, Pillow, tifffile, zarr."""
    module: str | None
    """The optional module `read` needs (None: NumPy, always installed)."""
    read: Callable[[str, str], np.ndarray] | None = None
    """`read(path, what)`: the whole image as a NumPy array; errors name `what` (e.g. --input)."""
    open: Callable[[Path], Any] | None = None
    """`open(path)`: a read-only array-like, its pixels read only when sliced."""
    write: Callable[[str, np.ndarray], None] | None = None
    """`write(path, array)`: the array written to `path` exactly, whole or not at all."""


def _named(what: str, path: str | os.PathLike[str]) -> str:
    return f"{what} {short_arg(str(path))}"


def check_regular_file(path: str | os.PathLike[str], what: str = "image") -> None:
    """`path` is a readable regular file, or a ValueError naming `what`: a FIFO would block a
    reader and a device could be endless."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ValueError(f"{_named(what, path)}: no such file") from None
    except (OSError, ValueError) as err:
        raise ValueError(f"{_named(what, path)}: cannot read it ({getattr(err, 'strerror', err)})") from None
    if stat.S_ISDIR(mode):
        raise ValueError(f"{_named(what, path)} is a directory; give a file")
    if not stat.S_ISREG(mode):
        raise ValueError(f"{_named(what, path)} is not a regular file (a FIFO, device or socket); give a file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{_named(what, path)}: permission denied")


def import_zarr() -> Any:
    """The zarr module, or an ImportError that says how to install it."""
    try:
        import zarr
    except ImportError:
        raise ImportError("zarr arrays need zarr: pip install 'unetgen[large]'") from None
    return zarr


# ---------------------------------------------------------------------------------------------
# NumPy (.npy)


def _read_npy(path: str, what: str) -> np.ndarray:
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":
        kinds = {b"\x89PNG": " (a PNG image: name it .png)", b"PK": " (a zip or .npz archive: save one array)"}
        kinds |= {b"II*\0": " (a TIFF image: name it .tif)", b"MM\0*": " (a TIFF image: name it .tif)"}
        kind = next((k for m, k in kinds.items() if magic.startswith(m)), "")
        raise ValueError(f"{_named(what, path)} is not a .npy file{kind}; write arrays with numpy.save")
    try:
        return np.load(path, mmap_mode="c", allow_pickle=False)  # mapped: read tile by tile, never pickled
    except (ValueError, OSError, EOFError) as err:
        objects = "object" in str(err).lower() or "pickle" in str(err).lower()
        why = "it holds Python objects (a pickled array), which are never loaded" if objects else str(err)
        raise ValueError(f"{_named(what, path)}: cannot read the .npy array: {why}") from None


def _open_npy(path: Path) -> Any:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read a NumPy array (.npy): {err}") from None


def _write_npy(path: str, array: np.ndarray) -> None:
    """Write `array` to `path` exactly (no suffix added) via a temporary file and a rename, so a
    full disk leaves no half-written prediction behind."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array)
        os.replace(tmp, p)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# PNG (Pillow), zarr, TIFF (tifffile)


def _read_png(path: str, what: str) -> np.ndarray:
    from PIL import Image

    try:
        with warnings.catch_warnings():  # Pillow warns of big images; it refuses them at twice the size
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                if image.mode not in ("1", "L", "LA", "I", "I;16", "F", "RGB", "RGBA"):  # palette, CMYK, ...
                    image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
                array = np.array(image)  # a writable copy
    except Exception as err:  # Pillow raises many types: UnidentifiedImageError, DecompressionBombError, ...
        raise ValueError(f"{_named(what, path)}: cannot read it as a PNG image: {err}") from None
    return np.moveaxis(array, -1, 0) if array.ndim == 3 else array  # (H, W, C) -> (C, H, W)


def _open_zarr(path: Path) -> Any:
    zarr = import_zarr()
    try:
        array = zarr.open(str(path), mode="r")
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path}: cannot open a zarr array: {err}") from None
    if not hasattr(array, "shape"):
        raise ValueError(f"{path} is a zarr group: give the path of one array in it (e.g. {path}/0)")
    return array


def _read_tiff(path: str, what: str) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            array, axes = series.asarray(), series.axes
    except Exception as err:  # tifffile raises TiffFileError, ValueError, IndexError, ... on a bad file
        raise ValueError(f"{_named(what, path)}: cannot read it as a TIFF image: {err}") from None
    return np.moveaxis(array, axes.index("S"), 0) if "S" in axes else array  # samples (RGB) first


def _open_tiff(path: Path) -> Any:
    """The first series' full resolution, through tifffile's zarr store."""
    try:
        import tifffile
    except ImportError:
        raise ImportError("TIFF images need tifffile: pip install 'unetgen[large]'") from None
    zarr = import_zarr()
    try:
        store = tifffile.imread(path, aszarr=True, series=0, level=0)
        return zarr.open(store, mode="r")
    except (OSError, ValueError, tifffile.TiffFileError) as err:
        raise ValueError(f"{path}: cannot read a TIFF image: {err}") from None


_NPY = ImageFormat((".npy",), "NumPy", None, read=_read_npy, open=_open_npy, write=_write_npy)
_PNG = ImageFormat((".png",), "Pillow", "PIL", read=_read_png)
_ZARR = ImageFormat((".zarr",), "zarr", "zarr", open=_open_zarr)
_TIFF = ImageFormat((".tif", ".tiff"), "tifffile", "tifffile", read=_read_tiff, open=_open_tiff)

FORMATS: dict[str, ImageFormat] = {suffix: f for f in (_NPY, _PNG, _ZARR, _TIFF) for suffix in f.suffixes}
"""Every image format unetgen knows, by file suffix (lower case)."""


def format_list(can: str, last: str, libraries: bool = False) -> str:
    """The suffixes of the formats that `can` ("read", "open" or "write"), for messages:
    ``.npy, .zarr or .tif/.tiff``; with `libraries`, each followed by what reads it."""
    formats = [f for f in dict.fromkeys(FORMATS.values()) if getattr(f, can) is not None]
    names = ["/".join(f.suffixes) + (f" ({f.library})" if libraries else "") for f in formats]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}"


def image_format(path: str | os.PathLike[str], what: str = "image") -> ImageFormat:
    """The format that reads `path` whole, once it is known that `path` is a readable regular
    file of a format with a reader whose module is installed; a ValueError naming `what` (e.g.
    the option that gave the path) otherwise. Reads nothing: check before the expensive steps."""
    check_regular_file(path, what)
    suffix = Path(path).suffix.lower()
    f = FORMATS.get(suffix)
    if f is None or f.read is None:
        raise ValueError(
            f"{_named(what, path)}: unknown image format {short_arg(suffix or '(no suffix)')}; "
            f"unetgen predict reads {format_list('read', 'and', libraries=True)}"
        )
    if f.module is not None and importlib.util.find_spec(f.module) is None:
        raise ValueError(f"{_named(what, path)}: reading {suffix} needs {f.module}: pip install 'unetgen[images]'")
    return f


def read_image(path: str | os.PathLike[str], what: str = "image") -> torch.Tensor:
    """The whole image in `path` as its reader gives it (a .npy file memory-mapped copy-on-write;
    a PNG or TIFF with its colour samples first: (C, H, W)), as a tensor; a ValueError naming
    `what` if it cannot be read or holds no numbers."""
    array = image_format(path, what).read(str(path), what)
    if array.dtype.kind not in "biufc":
        raise ValueError(f"{_named(what, path)} holds {array.dtype} values; give a numeric array")
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    try:
        return torch.from_numpy(array)
    except TypeError as err:
        raise ValueError(f"{_named(what, path)} holds {array.dtype} values, which torch cannot read: {err}") from None


def write_image(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write `array` to `path` in the format of its suffix, whole or not at all."""
    suffix = Path(path).suffix.lower()
    f = FORMATS.get(suffix)
    if f is None or f.write is None:
        raise ValueError(
            f"{short_arg(str(path))}: cannot write {short_arg(suffix or '(no suffix)')} images; "
            f"unetgen writes {format_list('write', 'and')} (and .zarr with unetgen.arrays.create_output)"
        )
    f.write(str(path), array)
