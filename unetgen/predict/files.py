"""Opening the files prediction reads: only regular files (a FIFO would block, a device could be
endless), checked before and after opening (`unetgen.config.documents.open_regular`)."""

from __future__ import annotations

import os
from typing import BinaryIO

from ..config import documents
from ..reprs import short_arg

__all__ = ["check_regular_file", "open_regular_file"]


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
