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

from ..atomic import move_new, replacing
from ..outputs import SOFTWARE, check_replaceable
from ..reprs import short_arg, short_repr, short_text
from .axes import Axes, lay_out, tiff_axes
from .files import _named, check_regular_file, open_regular_file
from .ownership import exclusive_temp, remember_path

__all__ = [
    "FORMATS",
    "ImageFormat",
    "check_regular_file",
    "format_list",
    "image_format",
    "import_zarr",
    "open_regular_file",
    "as_tensor",
    "is_ome_tiff",
    "read_image",
    "read_view",
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
    read: Callable[[str, str, int | None], tuple[np.ndarray, Axes | None]] | None = None
    """`read(path, what, max_bytes)`: the whole image as a NumPy array as stored, and its axes
    where the file says them (`unetgen.predict.axes`), refused (before decoding) if it would take
    more than `max_bytes` (None: no limit); errors name `what` (e.g. --input)."""
    open: Callable[[Path], tuple[Any, Axes | None]] | None = None
    """`open(path)`: a read-only array-like, its pixels read only when sliced, and its axes."""
    write: Callable[[str, np.ndarray, str | None, Axes | None], None] | None = None
    """`write(path, array, letters, axes)`: the array written to `path` exactly, whole or not at
    all; `letters` (unetgen's layout, e.g. ``cyx``) and `axes` (the input's, for its pixel size)
    describe it where the format can say so (TIFF)."""


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


def _read_npy(path: str, what: str, max_bytes: int | None) -> tuple[np.ndarray, None]:
    array = _map_npy(path, what, "c")  # mapped: read tile by tile, never pickled
    if not array.dtype.isnative and max_bytes is not None and array.nbytes > max_bytes:
        raise ValueError(_too_large(_named(what, path), array.shape, array.dtype, max_bytes, " in native byte order"))
    return array, None  # a .npy file does not say its axes


def _open_npy(path: Path) -> tuple[Any, None]:
    return _map_npy(path, "image", "r"), None


def _too_large(named: str, shape: Any, dtype: Any, max_bytes: int, how: str = "") -> str:
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    return (
        f"{named} holds {'x'.join(map(str, shape))} {dtype} values: {nbytes:,} bytes{how}, more than the memory "
        f"limit of {max_bytes:,} bytes (CLI: --memory-limit); predict it out of core instead (CLI: --output "
        "OUT.zarr; Python: unetgen.arrays.open_image, docs/large-images.md) or raise the limit"
    )


def _write_npy(path: str, array: np.ndarray, letters: str | None = None, axes: Axes | None = None) -> None:
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
        move_new(tmp, p)  # a .npy is never replaced (unetgen.outputs): not even one that appeared meanwhile
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


def _read_png(path: str, what: str, max_bytes: int | None) -> tuple[np.ndarray, Axes]:
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
    bands = f" with {array.shape[2]} bands" if array.ndim == 3 else ""
    return array, Axes("yxc" if array.ndim == 3 else "yx", f"PNG axes YX{bands}")


def _open_zarr(path: Path) -> tuple[Any, Axes | None]:
    """A zarr array, or the full-resolution level of an OME-Zarr image (with its axes and scale)."""
    import_zarr()  # an ImportError that says how to install it
    from .zarr_store import open_image_array

    return open_image_array(path, "image")


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


_MAX_OME_XML = 16 << 20  # an OME-XML description longer than this is not read for pixel sizes


def _physical(tif: Any) -> dict[str, Any]:
    """OME's PhysicalSizeX... of the first image of an OME-TIFF (empty for other TIFFs)."""
    try:
        text = tif.ome_metadata if tif.is_ome else None
        if not text or len(text) > _MAX_OME_XML:
            return {}
        import tifffile

        image = tifffile.xml2dict(text).get("OME", {}).get("Image")
        image = image[0] if isinstance(image, list) and image else image
        pixels = image.get("Pixels") if isinstance(image, dict) else None
        return {k: v for k, v in pixels.items() if k.startswith("PhysicalSize")} if isinstance(pixels, dict) else {}
    except Exception:  # damaged OME-XML: the pixel size is not known
        return {}


def _tiff_axes(tif: Any, series: Any) -> Axes | None:
    return tiff_axes(series.axes, tuple(series.shape), _physical(tif))


def _read_tiff(path: str, what: str, max_bytes: int | None) -> tuple[np.ndarray, Axes | None]:
    import tifffile

    named = _named(what, path)
    try:
        with open_regular_file(path, what) as f, tifffile.TiffFile(f, _multifile=_ONE_FILE) as tif:
            series = tif.series[0]
            _check_tiff(series, named, max_bytes)
            array, axes = series.asarray(), _tiff_axes(tif, series)
    except ValueError as err:
        if str(err).startswith(named):
            raise
        raise ValueError(f"{named}: cannot read it as a TIFF image: {err}") from None
    except Exception as err:  # tifffile raises TiffFileError, ValueError, IndexError, ... on a bad file
        raise ValueError(f"{named}: cannot read it as a TIFF image: {err}") from None
    return array, axes


def _open_tiff(path: Path) -> tuple[Any, Axes | None]:
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
            level = tif.series[0].levels[0]
            _check_tiff(level, named, None)
            axes = _tiff_axes(tif, level)
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
    return array, axes


_OME_UNITS = {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm", "centimeter": "cm", "meter": "m"}
_OME_UNITS |= {"angstrom": "Å"}


def is_ome_tiff(path: str | os.PathLike[str]) -> bool:
    """`path` names an OME-TIFF (``.ome.tif``, ``.ome.tiff``)."""
    return Path(path).name.lower().endswith((".ome.tif", ".ome.tiff"))


def _write_tiff(path: str, array: np.ndarray, letters: str | None = None, axes: Axes | None = None) -> None:
    """Write `array` to `path` through tifffile, through an exclusive temporary beside it renamed
    over it (`unetgen.atomic.replacing`): an OME-TIFF (``.ome.tif``) with its axes and the pixel size
    of `axes` when known, any other name a TIFF whose description records its axes (tifffile's)."""
    try:
        import tifffile
    except ImportError:
        raise ImportError("TIFF outputs need tifffile: pip install 'unetgen[images]'") from None
    names = None
    if letters is not None and len(letters) == array.ndim:
        names = "".join({"b": "T"}.get(a, a.upper()) for a in letters)
    metadata: dict[str, Any] = {} if names is None else {"axes": names}
    ome = is_ome_tiff(path)
    if ome and axes is not None and axes.scale and names is not None:
        for a, size in axes.scale:
            if a.upper() in names:
                metadata[f"PhysicalSize{a.upper()}"] = size
                metadata[f"PhysicalSize{a.upper()}Unit"] = _OME_UNITS.get(axes.unit or "", "µm")
    options = dict(photometric="minisblack", bigtiff=array.nbytes > (1 << 31), metadata=metadata or None)
    options["software"] = SOFTWARE  # unetgen's mark: the only TIFF `write_image` may replace (unetgen.outputs)
    with replacing(path) as f:  # tifffile's handle, named as the target (not the temporary's descriptor)
        handle = tifffile.FileHandle(f, mode="wb", name=Path(path).name)
        tifffile.imwrite(handle, np.ascontiguousarray(array), ome=ome, **options)


_NPY = ImageFormat((".npy",), "NumPy", None, read=_read_npy, open=_open_npy, write=_write_npy)
_PNG = ImageFormat((".png",), "Pillow", "PIL", read=_read_png)
_ZARR = ImageFormat((".zarr",), "zarr", "zarr", open=_open_zarr)
_TIFF = ImageFormat((".tif", ".tiff"), "tifffile", "tifffile", read=_read_tiff, open=_open_tiff, write=_write_tiff)

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


def read_view(
    path: str | os.PathLike[str],
    what: str = "image",
    max_bytes: int | None = None,
    *,
    axes: Any = None,
    layout: str | None = None,
) -> Any:
    """The whole image in `path`, read into memory: a `unetgen.predict.axes.LaidOut` view in
    unetgen's layout ``(C, *spatial)`` (or a preprocessing spec's `layout`) when its axes are
    known (`axes`: given, CLI --axes; else what the file says: a TIFF's, a PNG's), else the array
    as stored (a .npy file memory-mapped copy-on-write). A ValueError naming `what` if it cannot
    be read, or (checked from its header, before decoding) if its pixels would take more than
    `max_bytes` bytes of memory."""
    array, found = image_format(path, what).read(str(path), what, max_bytes)
    return lay_out(array, found, given=axes, where=_named(what, path), layout=layout)


def read_image(
    path: str | os.PathLike[str],
    what: str = "image",
    max_bytes: int | None = None,
    *,
    axes: Any = None,
    layout: str | None = None,
) -> torch.Tensor:
    """The whole image in `path` as a tensor (`read_view`: in unetgen's layout ``(C, *spatial)``
    when its axes are known, e.g. an RGB TIFF (YXS) as (3, H, W), a grey one (YX) as (1, H, W);
    else as stored); a ValueError naming `what` if it cannot be read or holds no numbers, or
    (checked from its header, before decoding) if its pixels would take more than `max_bytes`
    bytes of memory."""
    return as_tensor(read_view(path, what, max_bytes, axes=axes, layout=layout), what, path)


def as_tensor(image: Any, what: str, path: str | os.PathLike[str]) -> torch.Tensor:
    """`image` (a NumPy array or `read_view`'s view, in memory) as a tensor in native byte order; a
    ValueError naming `what` and `path` if it holds no numbers torch can read."""
    array = np.asarray(image)
    if array.dtype.kind not in "biufc":
        raise ValueError(f"{_named(what, path)} holds {array.dtype} values; give a numeric array")
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    try:
        return torch.from_numpy(array)
    except TypeError as err:
        raise ValueError(f"{_named(what, path)} holds {array.dtype} values, which torch cannot read: {err}") from None


def write_image(
    path: str | os.PathLike[str], array: np.ndarray, letters: str | None = None, axes: Axes | None = None
) -> None:
    """Write `array` to `path` in the format of its suffix, whole or not at all: `.npy`, or a TIFF
    (`.tif`, `.tiff`; `.ome.tif` an OME-TIFF) that records its axes `letters` (unetgen's layout,
    e.g. ``cyx``) and, as an OME-TIFF, the pixel size of the input's `axes` where known.

    An existing file at `path` is replaced only if unetgen wrote it (`unetgen.outputs`): a TIFF
    whose Software tag unetgen set; an existing ``.npy`` file (no place for a mark) or a symbolic
    link is never replaced: a `ValueError` says to give a new name or remove the file first."""
    suffix = Path(path).suffix.lower()
    f = FORMATS.get(suffix)
    if f is None or f.write is None:
        raise ValueError(
            f"{short_arg(str(path))}: cannot write {short_arg(suffix or '(no suffix)')} images; "
            f"unetgen writes {format_list('write', 'and')} (and .zarr with unetgen.arrays.create_output)"
        )
    check_replaceable(path, "the output")
    f.write(str(path), array, letters, axes)
