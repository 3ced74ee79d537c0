"""Which existing file unetgen may replace: only one it can show it wrote ("data is sacred").

Every writer of a single output file (`unetgen predict --output`, `draw -o`, `export bioimageio
-o`, `import -o`; `write_image`, `write_diagram`, `to_onnx`, `save_unet`, `export_bioimageio`) asks
`check_replaceable` before it writes: the path is new, or it holds a regular file that carries
unetgen's own mark, read back through the file format's library. The writers set the mark:

========================  =======================================================================
``.safetensors``          the header metadata ``format: unetgen`` (`unetgen.save_unet`; safetensors)
``.tif`` ``.tiff``        the TIFF Software tag ``unetgen ...`` (`write_image`; tifffile)
``.png``                  a PNG text chunk ``Software: unetgen ...`` (`write_diagram`; Pillow)
``.svg``                  ``<metadata id="unetgen">`` in the root ``<svg>`` (`draw_unet`; ElementTree)
``.onnx``                 the model's metadata entry ``unetgen`` (`to_onnx`; onnx)
``.yaml`` ``.yml``        the comment line `IMPORT_MARKER` near the top (`unetgen import`)
``.zip``                  a bioimage.io package whose rdf.yaml holds ``config: {unetgen: ...}``
========================  =======================================================================

A file of any other kind has no place for a mark unetgen can read back and is never replaced:
``.npy`` (NumPy's header holds only descr, fortran_order and shape), ``.pdf`` (cairosvg sets no
metadata), any other suffix. Neither is a symbolic link, wherever it points (it is not followed
either), nor anything that is not a regular file. The refusal is a `ValueError` naming the path
and the fix: give a new name, or remove the file yourself.

It imports only `atomic`, `reprs` and `_version` of unetgen (and `config.documents`, the lowest
layer, to read a package's rdf.yaml; the format libraries are imported when a file of theirs is
checked), so every layer may use it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from . import atomic
from ._version import __version__
from .reprs import short_path

__all__ = ["IMPORT_MARKER", "MARK", "SOFTWARE", "SVG_MARK_ID", "check_replaceable", "mark_of", "written_by_unetgen"]

MARK = "unetgen"
"""The word every mark starts with (or, for keyed marks, the key)."""
SOFTWARE = f"unetgen {__version__}"
"""What the writers put where a format names the software that wrote a file (TIFF, PNG)."""
SVG_MARK_ID = "unetgen"
"""The id of the ``<metadata>`` element `draw_unet` puts in every diagram."""
IMPORT_MARKER = "# imported by `unetgen import nnunet`"
"""The start of the comment line that marks a YAML file written by `unetgen import nnunet`."""

_MAX_MARKED_BYTES = 1 << 26  # a .svg/.yaml/rdf.yaml larger than this is not read to look for a mark
_MAX_ONNX_BYTES = 2**31  # one ONNX protobuf holds at most 2 GiB: a larger file is not one unetgen wrote
_YAML_MARK_LINES = 8  # the marker is on one of the first lines
_FIX = "give a new name, or remove it yourself"

_WHERE = {
    ".safetensors": "the header's format: unetgen",
    ".tif": "the TIFF Software tag",
    ".tiff": "the TIFF Software tag",
    ".png": "a PNG Software text chunk",
    ".svg": 'a <metadata id="unetgen"> element',
    ".onnx": "the ONNX metadata entry unetgen",
    ".yaml": f"the comment {IMPORT_MARKER!r}",
    ".yml": f"the comment {IMPORT_MARKER!r}",
    ".zip": "a bioimage.io rdf.yaml with config.unetgen",
}


def mark_of(path: str | os.PathLike[str]) -> str | None:
    """Where a file named `path` carries unetgen's mark (for messages), None for a kind of file
    that has no place for one (``.npy``, ``.pdf``, ...): such a file is never replaced."""
    return _WHERE.get(Path(path).suffix.lower())


def written_by_unetgen(path: str | os.PathLike[str]) -> bool:
    """The regular file at `path` (not a symbolic link) carries unetgen's mark for its kind (by
    suffix: the table in this module's docstring), read through its format's library. False for
    anything else: no file, a link, a FIFO, a kind with no mark, an unreadable or damaged file."""
    p = Path(path)
    try:
        st = os.lstat(p)
    except (OSError, ValueError):
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    check = _CHECKS.get(p.suffix.lower())
    if check is None:
        return False
    try:
        return bool(check(p, st.st_size))
    except Exception:  # each library raises its own types on a file it cannot read: not ours
        return False


def check_replaceable(path: Any, what: str = "the output") -> Path:
    """`path` as a `Path` that a writer may write: `unetgen.atomic.check_target` (an existing
    folder; not a directory, FIFO, device, read-only file), and, where something is there, a regular
    file unetgen wrote (`written_by_unetgen`). A `ValueError` naming `what`, the path and the fix
    otherwise: a symbolic link is never replaced nor followed; an existing file without unetgen's
    mark, or of a kind that has none (``.npy``), is left as it is."""
    p = atomic.check_target(path, what)
    if os.path.islink(p):
        raise ValueError(
            f"{what} {short_path(p)} is a symbolic link; unetgen never replaces a link nor writes through it: {_FIX}"
        )
    if not os.path.lexists(p) or written_by_unetgen(p):
        return p
    where = mark_of(p)
    why = (
        f"it lacks unetgen's mark, {where}"
        if where is not None
        else f"a {p.suffix.lower() or 'file without a suffix'} file has no place for unetgen's mark"
    )
    raise ValueError(
        f"{what} {short_path(p)} exists and unetgen cannot show it wrote it ({why}); unetgen never replaces "
        f"what it did not write: {_FIX}"
    )


# ---------------------------------------------------------------------------------------------
# the marks, read through each format's library


def _open(p: Path) -> Any:
    """`p` opened for binary reading without following a link or blocking on a FIFO swapped in."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(p, flags)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{p} is not a regular file")
    return open(os.fspath(p), "rb", opener=lambda _name, _flags: fd)  # named: libraries ask for its name


def _safetensors(p: Path, size: int) -> bool:
    from safetensors import safe_open

    with safe_open(os.fspath(p), framework="numpy") as f:
        return (f.metadata() or {}).get("format") == MARK


def _tiff(p: Path, size: int) -> bool:
    import tifffile

    with _open(p) as f, tifffile.TiffFile(f, _multifile=False) as tif:
        software = tif.pages.first.software
    return isinstance(software, str) and software.startswith(MARK)


def _png(p: Path, size: int) -> bool:
    from PIL import Image

    with _open(p) as f, Image.open(f, formats=["PNG"]) as image:
        software = image.info.get("Software")  # text chunks before the pixels: nothing decoded
    return isinstance(software, str) and software.startswith(MARK)


def _svg(p: Path, size: int) -> bool:
    import xml.etree.ElementTree as ET

    if size > _MAX_MARKED_BYTES:
        return False
    with _open(p) as f:
        data = f.read(_MAX_MARKED_BYTES + 1)
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:  # draw_unet writes neither: no entity expansion
        return False
    root = ET.fromstring(data)
    ns = "{http://www.w3.org/2000/svg}"
    return root.tag == f"{ns}svg" and any(m.get("id") == SVG_MARK_ID for m in root.findall(f"{ns}metadata"))


def _onnx(p: Path, size: int) -> bool:
    import onnx

    if size > _MAX_ONNX_BYTES:
        return False
    model = onnx.load(os.fspath(p), load_external_data=False)
    return any(entry.key == MARK for entry in model.metadata_props)


def _yaml(p: Path, size: int) -> bool:
    with _open(p) as f:
        head = f.read(4096).decode("utf-8", "replace")
    return any(line.startswith(IMPORT_MARKER) for line in head.splitlines()[:_YAML_MARK_LINES])


def _zip(p: Path, size: int) -> bool:
    import zipfile

    from .config import documents  # YAML read with its limits (aliases, depth, size)

    with _open(p) as f, zipfile.ZipFile(f) as z:
        info = z.getinfo("rdf.yaml")
        if info.file_size > _MAX_MARKED_BYTES:
            return False
        doc = documents.parse(z.read(info).decode("utf-8"), "yaml").value
    config = doc.get("config") if isinstance(doc, dict) else None
    return isinstance(config, dict) and isinstance(config.get(MARK), dict)


_CHECKS = {
    ".safetensors": _safetensors,
    ".tif": _tiff,
    ".tiff": _tiff,
    ".png": _png,
    ".svg": _svg,
    ".onnx": _onnx,
    ".yaml": _yaml,
    ".yml": _yaml,
    ".zip": _zip,
}
