"""Image files by suffix: the one table of the formats unetgen reads and writes.

`FORMATS` maps a suffix (.npy, .png, .zarr, .tif/.tiff) to its `ImageFormat`, which says how to
`read` a whole image into memory (`read_image`: what `unetgen predict` does with an image that
fits), how to `open` one without reading its pixels (an array-like that `predict_tiled` reads one
tile window at a time: `unetgen.arrays.open_image`) and how to `write` a prediction
(`write_image`; zarr outputs, one chunk per block, are made by `unetgen.arrays.create_output`).

Reading is guarded: every file is opened through `open_regular_file` (one check: only regular
files, opened non-blocking and checked again once open, so a FIFO cannot block and a device cannot
be read endlessly); a .npy header is read and checked (shape, dtype, size against the file) before
the file is memory-mapped, and nothing is ever unpickled; a PNG's or TIFF's pixel count is checked
against the caller's memory limit from its header, before decoding, and a TIFF's tiles or strips
must not be larger on disk than their pixels allow; Pillow's decompression-bomb guard stays on.
Pillow and tifffile are optional (`pip install 'unetgen[images]'`), as are zarr and the lazy TIFF
store (`pip install 'unetgen[large]'`).
"""

from __future__ import annotations

import errno
import importlib.util
import math
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from ..config import documents
from ..reprs import short_arg, short_repr, short_text
from .ownership import exclusive_temp, remember_path

__all__ = [
    "FORMATS",
    "ImageFormat",
    "check_regular_file",
    "format_list",
    "image_format",
    "import_zarr",
    "open_regular_file",
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
    read: Callable[[str, str, int | None], np.ndarray] | None = None
    """`read(path, what, max_bytes)`: the whole image as a NumPy array, refused (before decoding)
    if it would take more than `max_bytes` (None: no limit); errors name `what` (e.g. --input)."""
    open: Callable[[Path], Any] | None = None
    """`open(path)`: a read-only array-like, its pixels read only when sliced."""
    write: Callable[[str, np.ndarray], None] | None = None
    """`write(path, array)`: the array written to `path` exactly, whole or not at all."""


def _named(what: str, path: str | os.PathLike[str]) -> str:
    return f"{what} {short_arg(str(path))}"


def open_regular_file(path: str | os.PathLike[str], what: str = "image") -> BinaryIO:
    """`path` opened for binary reading if it is a regular file; a ValueError naming `what`
    otherwise. The one check every file prediction reads goes through (images, weights, progress
    records, zarr metadata and chunks): `unetgen.config.documents.open_regular` refuses a FIFO
    (it would block), a device (it could be endless), a socket or a directory before opening,
    opens non-blocking and checks the open descriptor again."""
    named = _named(what, path)
    try:
        kind = documents.file_kind(os.stat(path).st_mode)
    except FileNotFoundError:
        raise ValueError(f"{named}: no such file") from None
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"{named}: cannot read it ({getattr(err, 'strerror', None) or err})") from None
    if kind == "a directory":
        raise ValueError(f"{named} is a directory; give a file")
    if kind is not None:
        raise ValueError(f"{named} is not a regular file ({kind}); give a file")
    try:
        fd = documents.open_regular(path)
    except documents.ParseError as err:
        raise ValueError(f"{named}: {err.message}") from None
    return open(os.fspath(path), "rb", opener=lambda _name, _flags: fd)  # the caller closes it


def check_regular_file(path: str | os.PathLike[str], what: str = "image") -> None:
    """`path` is a readable regular file (`open_regular_file`), or a ValueError naming `what`."""
    open_regular_file(path, what).close()


def import_zarr() -> Any:
    """The zarr module, or an ImportError that says how to install it."""
    try:
        import zarr
    except ImportError:
        raise ImportError("zarr arrays need zarr: pip install 'unetgen[large]'") from None
    return zarr


# ---------------------------------------------------------------------------------------------
# NumPy (.npy)


_MAX_DIM = 1 << 62  # no axis of an array is longer


def _npy_header(f: BinaryIO, named: str) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """Shape, dtype, Fortran order and data offset of the .npy file `f`, or a ValueError."""
    magic = f.read(6)
    if magic != b"\x93NUMPY":
        kinds = {b"\x89PNG": " (a PNG image: name it .png)", b"PK": " (a zip or .npz archive: save one array)"}
        kinds |= {b"II*\0": " (a TIFF image: name it .tif)", b"MM\0*": " (a TIFF image: name it .tif)"}
        kind = next((k for m, k in kinds.items() if magic.startswith(m)), "")
        raise ValueError(f"{named} is not a .npy file{kind}; write arrays with numpy.save")
    f.seek(0)
    try:
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(f)
    except (ValueError, OverflowError, TypeError, SyntaxError, EOFError, RecursionError, MemoryError) as err:
        why = short_text(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
        raise ValueError(f"{named}: cannot read the .npy array: its header is not valid ({why})") from None
    if dtype.hasobject:
        raise ValueError(
            f"{named}: cannot read the .npy array: it holds Python objects (a pickled array), which are never loaded"
        )
    if not all(isinstance(n, int) and 0 <= n <= _MAX_DIM for n in shape):
        raise ValueError(
            f"{named}: cannot read the .npy array: its header claims the shape {short_repr(shape)}; "
            "every size must be an int from 0 to 2**62"
        )
    return shape, dtype, fortran, f.tell()


def _map_npy(path: str | os.PathLike[str], what: str, mode: str) -> np.ndarray:
    """The .npy array at `path` memory-mapped (`mode` "r" or "c": copy-on-write), its header
    checked against the file first; never unpickled."""
    named = _named(what, path)
    with open_regular_file(path, what) as f:
        shape, dtype, fortran, offset = _npy_header(f, named)
        held = os.fstat(f.fileno()).st_size - offset
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > held:
            raise ValueError(
                f"{named}: cannot read the .npy array: its header claims {short_repr(shape)} {dtype} values "
                f"({nbytes:,} bytes) but the file holds {held:,} bytes after the header: it is truncated or damaged"
            )
        if nbytes == 0:
            return np.zeros(shape, dtype)
        try:
            return np.memmap(f, dtype=dtype, mode=mode, offset=offset, shape=shape, order="F" if fortran else "C")
        except (ValueError, OSError, OverflowError, MemoryError) as err:
            raise ValueError(f"{named}: cannot read the .npy array: {short_text(str(err))}") from None


def _read_npy(path: str, what: str, max_bytes: int | None) -> np.ndarray:
    array = _map_npy(path, what, "c")  # mapped: read tile by tile, never pickled
    if not array.dtype.isnative and max_bytes is not None and array.nbytes > max_bytes:
        raise ValueError(_too_large(_named(what, path), array.shape, array.dtype, max_bytes, " in native byte order"))
    return array


def _open_npy(path: Path) -> Any:
    return _map_npy(path, "image", "r")


def _too_large(named: str, shape: Any, dtype: Any, max_bytes: int, how: str = "") -> str:
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    return (
        f"{named} holds {'x'.join(map(str, shape))} {dtype} values: {nbytes:,} bytes{how}, more than the memory "
        f"limit of {max_bytes:,} bytes (CLI: --memory-limit); predict it out of core instead (CLI: --output "
        "OUT.zarr; Python: unetgen.arrays.open_image, docs/large-images.md) or raise the limit"
    )


def _write_npy(path: str, array: np.ndarray) -> None:
    """Write `array` to `path` exactly (no suffix added) through an exclusive temporary file
    beside it and a rename: a full disk (checked first) or any failure leaves nothing behind and
    the previous file, if any, as it was."""
    p = Path(path)
    need = array.nbytes + 4096
    try:
        free = shutil.disk_usage(p.parent).free
    except OSError:
        free = need
    if free < need:
        why = f"No space left on device: the prediction takes {need:,} bytes, {free:,} are free"
        raise OSError(errno.ENOSPC, why, path)
    fd, tmp = exclusive_temp(p)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, p)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno is None and "requested and" in str(err):  # numpy's short write: the disk filled up
            raise OSError(errno.ENOSPC, f"No space left on device ({err})", path) from None
        raise OSError(err.errno, err.strerror or str(err) or type(err).__name__, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# PNG (Pillow), zarr, TIFF (tifffile)


_PNG_BYTES = {"I": 4, "F": 4, "I;16": 2}  # bytes per pixel and band; 1 for the others


def _read_png(path: str, what: str, max_bytes: int | None) -> np.ndarray:
    from PIL import Image

    named = _named(what, path)
    try:
        with warnings.catch_warnings(), open_regular_file(path, what) as f:  # Pillow warns of big images
            warnings.simplefilter("ignore")
            with Image.open(f) as image:
                shape = (image.size[1], image.size[0], len(image.getbands()))
                if max_bytes is not None and math.prod(shape) * _PNG_BYTES.get(image.mode, 1) > max_bytes:
                    raise ValueError(_too_large(named, shape, f"{image.mode} (Pillow mode)", max_bytes))
                if image.mode not in ("1", "L", "LA", "I", "I;16", "F", "RGB", "RGBA"):  # palette, CMYK, ...
                    image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
                array = np.array(image)  # a writable copy
    except ValueError as err:
        if str(err).startswith(named):
            raise
        raise ValueError(f"{named}: cannot read it as a PNG image: {err}") from None
    except Exception as err:  # Pillow raises many types: UnidentifiedImageError, DecompressionBombError, ...
        raise ValueError(f"{named}: cannot read it as a PNG image: {err}") from None
    return np.moveaxis(array, -1, 0) if array.ndim == 3 else array  # (H, W, C) -> (C, H, W)


def _open_zarr(path: Path) -> Any:
    import_zarr()  # an ImportError that says how to install it
    from .zarr_store import open_checked

    return open_checked(path, "image")


_SLACK = 1 << 20  # bytes a chunk may hold beyond twice its pixels (headers, an incompressible tile)
_ONE_FILE = False  # tifffile's _multifile: an OME-TIFF's references to other files are not followed
# (tifffile would open them by name, past the regular-file check: a FIFO there would block)


def _check_tiff(series: Any, named: str, max_bytes: int | None) -> None:
    """The series' pixels fit `max_bytes`, and none of its tiles or strips is larger on disk than
    its pixels allow (they are read whole): checked from the file's header, before decoding."""
    if max_bytes is not None and math.prod(series.shape) * series.dtype.itemsize > max_bytes:
        raise ValueError(_too_large(named, series.shape, series.dtype, max_bytes))
    key = series.keyframe
    limit = 2 * math.prod(key.chunks) * key.dtype.itemsize + _SLACK
    for page in series.pages:
        counts = getattr(page, "databytecounts", None) or ()
        if counts and max(counts) > limit:
            raise ValueError(
                f"{named}: a tile or strip of {max(counts):,} bytes on disk holds {math.prod(key.chunks):,} pixels "
                f"({limit:,} bytes at most): the file is damaged or forged; unetgen does not read it"
            )


def _read_tiff(path: str, what: str, max_bytes: int | None) -> np.ndarray:
    import tifffile

    named = _named(what, path)
    try:
        with open_regular_file(path, what) as f, tifffile.TiffFile(f, _multifile=_ONE_FILE) as tif:
            series = tif.series[0]
            _check_tiff(series, named, max_bytes)
            array, axes = series.asarray(), series.axes
    except ValueError as err:
        if str(err).startswith(named):
            raise
        raise ValueError(f"{named}: cannot read it as a TIFF image: {err}") from None
    except Exception as err:  # tifffile raises TiffFileError, ValueError, IndexError, ... on a bad file
        raise ValueError(f"{named}: cannot read it as a TIFF image: {err}") from None
    return np.moveaxis(array, axes.index("S"), 0) if "S" in axes else array  # samples (RGB) first


def _open_tiff(path: Path) -> Any:
    """The first series' full resolution, through tifffile's zarr store (reading the open file)."""
    try:
        import tifffile
    except ImportError:
        raise ImportError("TIFF images need tifffile: pip install 'unetgen[large]'") from None
    zarr = import_zarr()
    named = _named("image", path)
    f = open_regular_file(path, "image")
    try:
        with tifffile.TiffFile(f, _multifile=_ONE_FILE) as tif:
            _check_tiff(tif.series[0].levels[0], named, None)
        f.seek(0)
        store = tifffile.imread(f, aszarr=True, series=0, level=0, _multifile=_ONE_FILE)
        array = zarr.open(store, mode="r")
    except ValueError as err:
        f.close()
        if str(err).startswith(named):
            raise
        raise ValueError(f"{named}: cannot read it as a TIFF image: {err}") from None
    except Exception as err:  # tifffile raises TiffFileError, IndexError, KeyError, struct.error, ... on a bad file
        f.close()
        raise ValueError(
            f"{named}: cannot read it as a TIFF image: {short_text(str(err) or type(err).__name__)}"
        ) from None
    remember_path(store, path)
    return array


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


def read_image(path: str | os.PathLike[str], what: str = "image", max_bytes: int | None = None) -> torch.Tensor:
    """The whole image in `path` as its reader gives it (a .npy file memory-mapped copy-on-write;
    a PNG or TIFF with its colour samples first: (C, H, W)), as a tensor; a ValueError naming
    `what` if it cannot be read or holds no numbers, or (checked from its header, before decoding)
    if its pixels would take more than `max_bytes` bytes of memory."""
    array = image_format(path, what).read(str(path), what, max_bytes)
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
