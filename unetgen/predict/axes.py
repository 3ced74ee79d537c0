"""The axes of an image, never guessed: read from the file where it says them, given where it does
not (CLI ``--axes``, Python ``axes=``), and refused with the axes seen and the fix when they do not
fit the network.

Axes are spelled with bioimage.io's letters, one per stored axis: ``b`` (batch: images predicted
one by one), ``c`` (channel), ``z``, ``y``, ``x``. What the files say is mapped onto them:

- a TIFF series' axes (tifffile): ``X Y Z`` are space, ``C`` and ``S`` (samples: the colours of an
  RGB image) are channels, ``T`` (time) is a batch of images; any other letter (``Q``: unknown,
  ``I``: an image sequence, ...) means the file does not say, and the image is then read as if it
  said nothing;
- OME-Zarr (NGFF) axes by their type: ``space`` axes by name (``z``, ``y``, ``x``), ``channel``,
  and ``time`` as a batch of images;
- a PNG: ``yx``, or ``yxc`` with colour bands.

Given axes (`parse_axes`) are one of the layouts a `Preprocessing` spec takes (``yx``, ``zyx``,
``cyx``, ``czyx``, ``yxc``, ``zyxc``, ...: `unetgen.config.preprocessing.AXES`, the one list),
optionally led by ``b`` (``byx``, ``bczyx``); they override what the file says (a TIFF writer
may have stored a guess: tifffile stores a 4-slice stack as ``SYX``).

An image whose axes are known is read through a lazy view (`LaidOut`) in the layout prediction
takes: unetgen's ``(C, *spatial)`` (``(N, C, *spatial)`` with a batch axis; a channel axis of one
is added where the image has none), or the layout of the model's preprocessing spec when the spec
says its axes (the spec's normalisation then lays it out). An image whose axes are not known (a
``.npy``, a plain zarr array, a tensor) keeps unetgen's convention: ``(C, *spatial)``,
``(N, C, *spatial)``, or ``(*spatial)`` for a one-channel network.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..config.preprocessing import AXES
from ..reprs import short_repr

__all__ = [
    "Axes",
    "LaidOut",
    "check_fit",
    "lay_out",
    "model_layout",
    "ngff_axes",
    "parse_axes",
    "relay",
    "tiff_axes",
]

SPATIAL = "zyx"
_TIFF = {"X": "x", "Y": "y", "Z": "z", "C": "c", "S": "c", "T": "b"}
_UNITS = {  # OME and NGFF spell units alike for the ones a pixel size uses; "µm" is OME's default
    "µm": "micrometer",
    "um": "micrometer",
    "micron": "micrometer",
    "nm": "nanometer",
    "mm": "millimeter",
    "cm": "centimeter",
    "m": "meter",
    "Å": "angstrom",
}
_NGFF_UNITS = frozenset({"angstrom", "nanometer", "micrometer", "millimeter", "centimeter", "meter"})


@dataclass(frozen=True)
class Axes:
    """The axes of a stored image: one bioimage.io letter per stored axis, who says so, and the
    pixel size where it is known."""

    letters: str
    """One of ``b c z y x`` per stored axis, in stored order, each at most once (e.g. ``yxc``)."""
    said: str
    """Who says so, for messages: ``TIFF axes YXS (3 samples)``, ``--axes yxc``; `lay_out` puts
    the image's name first (``--input rgb.tif has TIFF axes YXS (3 samples)``)."""
    scale: tuple[tuple[str, float], ...] = ()
    """The pixel size along spatial axes, e.g. ``(("y", 0.5), ("x", 0.5))``; empty: not known."""
    unit: str | None = None
    """The unit of `scale` (an NGFF space unit: ``micrometer``, ``nanometer``, ...), or None."""
    time: bool = False
    """The batch axis ``b`` is the file's time axis."""

    @property
    def spatial(self) -> str:
        """The spatial letters in z, y, x order."""
        return "".join(a for a in SPATIAL if a in self.letters)

    def size(self, shape: Sequence[int], letter: str) -> int:
        """The length of the axis `letter` in `shape` (1 where the image has none)."""
        return int(shape[self.letters.index(letter)]) if letter in self.letters else 1


def parse_axes(value: Any, what: str = "axes") -> str:
    """`value` as given axes: a layout a preprocessing spec takes (`AXES`: ``yx``, ``zyx``,
    ``cyx``, ``yxc``, ...), optionally led by ``b`` (a batch of images); case is ignored. A
    ValueError naming `what` and the valid layouts otherwise."""
    text = value.strip().lower() if isinstance(value, str) else None
    body = text[1:] if text and text.startswith("b") else text
    if body not in AXES:
        valid = ", ".join(a for a in AXES if len(a) > 1)
        raise ValueError(
            f"{what}={short_repr(value)} is not an image layout: give one letter per stored axis, e.g. yx (2D), "
            f"zyx (3D), cyx or yxc (2D with channels first or last), czyx, zyxc; any of {valid}, optionally led "
            "by b for a batch of images (byx, bczyx)"
        )
    return text


def given_axes(value: Any, shape: Sequence[int], where: str, what: str = "--axes") -> Axes:
    """Axes given by the user for an image of `shape` (`where`: its name), checked against its dims."""
    letters = parse_axes(value, what)
    if len(letters) != len(shape):
        raise ValueError(
            f"{what} {letters} names {len(letters)} axes but {where} has {len(shape)} "
            f"(shape {'x'.join(map(str, shape))}): give one letter per stored axis"
        )
    return Axes(letters, f"{where} read with {what} {letters}")


def _scale(scale: Mapping[str, float] | None) -> tuple[tuple[str, float], ...]:
    if not scale:
        return ()
    return tuple((a, float(scale[a])) for a in SPATIAL if a in scale)


def _unit(text: Any) -> str | None:
    if not isinstance(text, str):
        return None
    unit = _UNITS.get(text.strip(), text.strip().lower())
    return unit if unit in _NGFF_UNITS else None


def tiff_axes(axes: str, shape: Sequence[int], physical: Mapping[str, Any] | None = None) -> Axes | None:
    """The axes of a TIFF series whose tifffile axes are `axes` (e.g. ``YXS``, ``CZYX``); None when
    the file does not say (a letter other than X Y Z C S T, such as Q or I, or two channel axes).
    `physical`: OME's ``PhysicalSizeX``... of the image, when the file has them."""
    if len(axes) != len(shape) or any(a not in _TIFF for a in axes):
        return None
    letters = "".join(_TIFF[a] for a in axes)
    if len(set(letters)) != len(letters) or not any(a in letters for a in SPATIAL):
        return None
    samples = f" ({shape[axes.index('S')]} samples)" if "S" in axes else ""
    scale, unit = {}, None
    for a in SPATIAL:
        value = (physical or {}).get(f"PhysicalSize{a.upper()}")
        if a in letters and isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
            scale[a] = float(value)
            unit = unit or _unit((physical or {}).get(f"PhysicalSize{a.upper()}Unit", "µm"))
    said = f"TIFF axes {axes}{samples}"
    return Axes(letters, said, _scale(scale) if unit else (), unit if scale else None, "T" in axes)


def ngff_axes(axes: Any, scale: Sequence[float] | None, level: str) -> Axes | None:
    """The axes of an OME-Zarr image from its multiscale `axes` (dicts with ``name`` and ``type``,
    or names in NGFF 0.3) and the full-resolution level's `scale`; None when they do not map onto
    b c z y x (a space axis named otherwise, two channel axes, an unknown type)."""
    if not isinstance(axes, list) or not axes:
        return None
    letters, names, units = "", [], []
    for axis in axes:
        name, kind, unit = (axis, None, None) if isinstance(axis, str) else (None, None, None)
        if isinstance(axis, dict):
            name, kind, unit = axis.get("name"), axis.get("type"), axis.get("unit")
        if not isinstance(name, str):
            return None
        kind = kind if isinstance(kind, str) else {"c": "channel", "t": "time"}.get(name.lower(), "space")
        match kind:
            case "space" if name.lower() in SPATIAL:
                letters += name.lower()
                units.append(unit)
            case "channel":
                letters += "c"
            case "time":
                letters += "b"
            case _:
                return None
        names.append(name)
    if len(set(letters)) != len(letters):
        return None
    pixel = {}
    if scale is not None and len(scale) == len(letters):
        pixel = {a: float(s) for a, s in zip(letters, scale, strict=True) if a in SPATIAL}
    unit = _unit(next((u for u in units if u), None))
    said = f"NGFF axes {','.join(names)} (OME-Zarr level {level})"
    return Axes(letters, said, _scale(pixel), unit, "b" in letters)


def model_layout(letters: str) -> str:
    """unetgen's layout of an image with `letters`: ``b`` (if any), ``c``, then z, y, x."""
    return ("b" if "b" in letters else "") + "c" + "".join(a for a in SPATIAL if a in letters)


def _valid(letters: str) -> bool:
    try:
        parse_axes(letters)
    except ValueError:
        return False
    return True


def check_fit(config: Any, image: LaidOut) -> None:
    """The laid-out `image` fits the network (`config`: spatial_dims, in_channels), or a ValueError
    that names the axes seen and the fix."""
    axes, shape = image.axes, tuple(int(s) for s in image.array.shape)
    dims, channels = config.spatial_dims, config.in_channels
    spatial, has = axes.spatial, axes.size(shape, "c")
    net = f"the network is {dims}D with {channels} input channel{'s' if channels != 1 else ''}"
    seen = f"a {len(spatial)}D image ({spatial}{f', {has} channels' if 'c' in axes.letters else ''})"
    fixes = []
    if len(spatial) == dims + 1 and "b" not in axes.letters:
        first = next(a for a in axes.letters if a in SPATIAL)
        if _valid(mine := axes.letters.replace(first, "b")):
            fixes.append(f"give --axes {mine} (Python: axes=) to predict each {first} slice on its own")
    if len(spatial) + 1 == dims and "c" in axes.letters and has != channels:
        if _valid(mine := axes.letters.replace("c", "z")):
            fixes.append(f"give --axes {mine} (Python: axes=) if its {has} channels are z slices")
    if len(spatial) != dims:
        fixes.append(f"or use a {len(spatial)}D network" if fixes else f"use a {len(spatial)}D network")
        raise ValueError(f"{axes.said}: {seen}, but {net}; {'; '.join(fixes)}")
    if has != channels:
        if channels == 1:
            fix = f"convert it to one channel (e.g. grey levels), or use a network with in_channels={has}"
        else:
            fix = f"give it {channels} channels, or name its channel axis with --axes (Python: axes=), e.g. yxc or cyx"
        raise ValueError(f"{axes.said}: {seen}, but {net}; {fix}")


class LaidOut:
    """A lazy view of an array-like with stored `axes`, in the layout `target` (letters: the
    stored ones in another order, plus axes of length 1 the image has none of, e.g. ``c``, less
    stored axes of length 1 the layout has none of). Reading a window reads that window of the
    stored array only; `chunks` (when the array has them) follow the axes."""

    def __init__(self, array: Any, axes: Axes, target: str) -> None:
        stored = tuple(int(s) for s in array.shape)
        dropped = [a for a in axes.letters if a not in target]
        assert len(set(target)) == len(target) and all(axes.size(stored, a) == 1 for a in dropped), (axes, target)
        self.array, self.axes, self.target = array, axes, target
        self.shape = tuple(axes.size(stored, a) for a in target)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(array.dtype)
        chunks = getattr(array, "chunks", None)
        if isinstance(chunks, tuple) and len(chunks) == len(stored) and all(isinstance(c, int) for c in chunks):
            self.chunks = tuple(chunks[axes.letters.index(a)] if a in axes.letters else 1 for a in target)

    def __repr__(self) -> str:
        return f"LaidOut({self.axes.letters}->{self.target}, shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (self.ndim - len(key))
        if len(key) != self.ndim or not all(isinstance(k, (slice, int, np.integer)) for k in key):
            raise IndexError(f"a laid-out image is read by slices and ints, one per axis ({self.ndim}), got {key!r}")
        by_letter = dict(zip(self.target, key, strict=True))
        data = np.asarray(self.array[tuple(by_letter.get(a, 0) for a in self.axes.letters)])
        kept = [a for a in self.axes.letters if isinstance(by_letter.get(a, 0), slice)]  # data's axes, stored order
        order = [a for a in self.target if a in kept]
        data = np.transpose(data, [kept.index(a) for a in order]) if order != kept else data
        for position, a in enumerate(x for x in self.target if isinstance(by_letter[x], slice)):
            if a not in self.axes.letters:  # an added axis of length 1
                data = np.expand_dims(data, position)[(slice(None),) * position + (by_letter[a],)]
        return data

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[(slice(None),) * self.ndim]
        return data if dtype is None else data.astype(dtype)


def lay_out(
    array: Any, found: Axes | None, *, given: Any = None, where: str = "the image", layout: str | None = None
) -> Any:
    """`array` read in the layout prediction takes: the `given` axes (CLI --axes) or else those the
    file says (`found`) decide what each stored axis is, and the result is a `LaidOut` view in
    `layout` (a preprocessing spec's axes; default unetgen's ``(C, *spatial)`` or
    ``(N, C, *spatial)``). `array` itself when no axes are known. A ValueError when the axes
    cannot be arranged into `layout` (a spatial axis it lacks, channels it has none of)."""
    shape = tuple(int(s) for s in array.shape)
    if found is not None:
        found = replace(found, said=f"{where} has {found.said}")
    axes = given_axes(given, shape, where) if given is not None else found
    if axes is None:
        return array
    if given is not None and found is not None:
        said = axes.said if found.letters == axes.letters else f"{axes.said} (the file says {found.letters})"
        axes = replace(axes, said=said, scale=found.scale, unit=found.unit, time=found.time and "b" in axes.letters)
    if layout is None:
        return LaidOut(array, axes, model_layout(axes.letters))
    target = ("b" if "b" in axes.letters else "") + layout
    lost = [a for a in axes.letters if a not in target and axes.size(shape, a) != 1]
    if lost or any(a in SPATIAL and a not in axes.letters for a in layout):
        raise ValueError(
            f"{axes.said}, but the model's preprocessing spec takes images laid out {layout}: give --axes "
            "(Python: axes=) if the file's axes are wrong, or use a model trained on such images"
        )
    return LaidOut(array, axes, target)


def relay(image: Any, layout: str | None) -> Any:
    """`image` in `layout` (a preprocessing spec's axes; None: unetgen's) when it is a `LaidOut`
    view (from `unetgen.arrays.open_image`), so that a spec's normalisation, which takes images
    in its own layout, never reads unetgen's layout as its own; any other image as it is."""
    if not isinstance(image, LaidOut) or image.target == (layout or model_layout(image.axes.letters)):
        return image
    return lay_out(image.array, image.axes, layout=layout)


def describe(image: Any) -> str | None:
    """How the axes of `image` were decided, for the CLI's notes (None when no axes are known)."""
    if not isinstance(image, LaidOut):
        return None
    size = ", pixel size " + " x ".join(f"{v:g}" for _, v in image.axes.scale) if image.axes.scale else ""
    unit = f" {image.axes.unit}" if size and image.axes.unit else ""
    return f"axes {image.axes.letters} ({image.axes.said}), read as {image.target}{size}{unit}"
