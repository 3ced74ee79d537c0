"""OME-Zarr (OME-NGFF) metadata: the full-resolution level of a multiscale image with its axes and
scale (read), and the metadata of the image or label group a prediction is written as (write).

Read: NGFF 0.4 and earlier keep ``multiscales`` in a zarr v2 group's ``.zattrs``; NGFF 0.5 keeps
it under ``ome`` in a zarr v3 group's ``zarr.json`` attributes; a bioformats2raw layout holds its
first image in the group ``0``. The full-resolution level is ``datasets[0]`` (NGFF orders the
levels from the highest resolution), its pixel size the product of its ``scale`` and the
multiscale's own. The metadata is read as hostile: every field is checked before it is used, and
a level's path must stay inside the group.

Write: NGFF 0.5 (zarr v3), one level (``0``) whose array names its dimensions, axes in NGFF's
order (time or batch, channel, then z, y, x), a ``scale`` (the input's pixel size where known, 1
otherwise), and ``image-label`` for labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..reprs import short_repr
from .axes import SPATIAL, Axes, ngff_axes

__all__ = ["NGFF_VERSION", "find_image", "image_attributes"]

NGFF_VERSION = "0.5"
"""The OME-NGFF version unetgen writes (zarr v3)."""
_MAX_LEVELS = 64


def _ome(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    """The NGFF attributes of a group: under ``ome`` (0.5) or at the top (0.4 and earlier)."""
    ome = attrs.get("ome")
    return ome if isinstance(ome, Mapping) else attrs


def _scale(transforms: Any, n: int, where: str) -> list[float] | None:
    if transforms is None:
        return None
    if not isinstance(transforms, list):
        raise ValueError(f"{where}: coordinateTransformations {short_repr(transforms)} is not a list")
    for t in transforms:
        if isinstance(t, Mapping) and t.get("type") == "scale":
            scale = t.get("scale")
            if (
                not isinstance(scale, list)
                or len(scale) != n
                or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0 for s in scale)
            ):
                raise ValueError(f"{where}: scale {short_repr(scale)} must be {n} positive numbers, one per axis")
            return [float(s) for s in scale]
    return None


def _level_path(path: Any, where: str) -> str:
    parts = path.split("/") if isinstance(path, str) else []
    if not parts or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{where}: the level path {short_repr(path)} must be a relative path inside the group")
    return path


def find_image(group: Any, where: str) -> tuple[str, Axes | None] | None:
    """The path (inside `group`) of the full-resolution array of the OME-Zarr image in `group`,
    and its axes and pixel size; None when the group holds no multiscale image; a ValueError
    naming `where` when its metadata is damaged."""
    attrs = _ome(dict(group.attrs))
    prefix = ""
    if "multiscales" not in attrs and attrs.get("bioformats2raw.layout") == 3 and "0" in group:
        attrs, prefix = _ome(dict(group["0"].attrs)), "0/"
    multiscales = attrs.get("multiscales")
    if multiscales is None:
        return None
    if not isinstance(multiscales, list) or not multiscales or not isinstance(multiscales[0], Mapping):
        raise ValueError(f"{where}: its OME-Zarr multiscales {short_repr(multiscales)} is not a list of images")
    image = multiscales[0]
    datasets = image.get("datasets")
    if not isinstance(datasets, list) or not datasets or len(datasets) > _MAX_LEVELS:
        raise ValueError(f"{where}: its OME-Zarr datasets {short_repr(datasets)} must list 1 to 64 levels")
    level = datasets[0]
    if not isinstance(level, Mapping):
        raise ValueError(f"{where}: its OME-Zarr level {short_repr(level)} is not an object")
    path = _level_path(level.get("path"), where)
    axes = image.get("axes")
    n = len(axes) if isinstance(axes, list) else 0
    scale = None
    if n:
        scale = _scale(level.get("coordinateTransformations"), n, where)
        outer = _scale(image.get("coordinateTransformations"), n, where)
        if scale is not None and outer is not None:
            scale = [a * b for a, b in zip(scale, outer, strict=True)]
    return prefix + path, ngff_axes(axes, scale, prefix + path)


def _axis(letter: str, axes: Axes | None, unit: str | None) -> dict[str, Any]:
    match letter:
        case "b":
            time = axes is not None and axes.time
            return {"name": "t", "type": "time"} if time else {"name": "b", "type": "batch"}
        case "c":
            return {"name": "c", "type": "channel"}
    return {"name": letter, "type": "space", **({"unit": unit} if unit else {})}


def image_attributes(
    letters: str,
    *,
    axes: Axes | None = None,
    pixel_size: Mapping[str, float] | None = None,
    unit: str | None = None,
    labels: bool = False,
    name: str | None = None,
) -> dict[str, Any]:
    """The NGFF 0.5 attributes (``{"ome": ...}``) of a one-level image (or, with `labels`, label)
    group whose array ``0`` has the axes `letters` (unetgen's layout: b, c, then z y x). The pixel
    size comes from the input's `axes` when they have one, else from `pixel_size` (a preprocessing
    spec's, in `unit`), else 1."""
    assert 2 <= sum(a in SPATIAL for a in letters) <= 3, letters
    sizes: Mapping[str, float] = dict(axes.scale) if axes is not None and axes.scale else (pixel_size or {})
    unit = (axes.unit if axes is not None and axes.scale else unit) if sizes else None
    scale = [float(sizes.get(a, 1.0)) if a in SPATIAL else 1.0 for a in letters]
    multiscale: dict[str, Any] = {
        "axes": [_axis(a, axes, unit) for a in letters],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
    }
    if name:
        multiscale["name"] = name
    ome: dict[str, Any] = {"version": NGFF_VERSION, "multiscales": [multiscale]}
    if labels:
        ome["image-label"] = {}
    return {"ome": ome}


def dimension_names(letters: Sequence[str], axes: Axes | None = None) -> list[str]:
    """The names of the array's dimensions, as the group's axes name them (NGFF 0.5 requires both)."""
    return [_axis(a, axes, None)["name"] for a in letters]
