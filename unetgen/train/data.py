"""The training data of a `TrainingConfig`: files found and paired, read, normalised with the
preprocessing spec the model keeps, split for validation, and turned into targets and weight maps
with `unetgen.training`'s pieces."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config.preprocessing import AXES, Preprocessing
from ..config.training import FileSplit, InstanceMasks, LoadedTraining, RegionSplit
from ..config.unet_config import UNetConfig
from ..predict.formats import read_view
from ..predict.preprocess import preprocess
from ..reprs import short_path
from ..training import border_weight_map, separate_touching

__all__ = ["IMAGE_SUFFIXES", "MAX_IMAGE_BYTES", "Sample", "TrainingData", "find_pairs", "load_data"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".npy", ".zarr")
"""What a folder of images or masks is searched for."""
MAX_IMAGE_BYTES = 16 * 2**30
"""The largest image or mask read into memory (as stored); a larger one is refused from its header."""
_SHOWN = 5


@dataclass
class Sample:
    """One image for training or validation: the normalised image (C, *spatial) float32, the class
    target (*spatial) int64, the weight map (float32, or None) and, for instance masks, the
    instance labels (for the object metrics)."""

    name: str
    image: np.ndarray
    target: np.ndarray
    weights: np.ndarray | None = None
    labels: np.ndarray | None = None
    offset: int = 0
    """For a region split: where, along the split axis, the validation region starts in `image`
    (the part before it is context for the prediction, not scored)."""


@dataclass
class TrainingData:
    """What the loop trains and validates on."""

    train: list[Sample]
    validation: list[Sample]
    split_axis: int | None
    """The spatial axis of a region split (None otherwise)."""
    pairs: list[tuple[Path, Path]]
    spec: Preprocessing
    """The preprocessing as applied: with the images' axes (inferred from the first image, ``(C,
    *spatial)`` or ``(*spatial)``, when `data.axes` does not give them), as the checkpoint stores it."""


def _listing(entries: Sequence[str], loaded: LoadedTraining, key: str) -> list[Path]:
    """The files of `data.<key>`: files as given, folders listed (sorted by name)."""
    found: list[Path] = []
    for i, entry in enumerate(entries):
        where = ("data", key, i) if len(entries) > 1 else ("data", key)
        path = loaded.resolve(entry)
        if path.is_dir() and path.suffix.lower() != ".zarr":
            inside = sorted(
                p for p in path.iterdir() if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not inside:
                raise loaded.problem(
                    where,
                    f"the folder {short_path(path)} holds no {', '.join(IMAGE_SUFFIXES)} files; give a folder of "
                    "images or the files themselves",
                )
            found += inside
        elif path.exists():
            found.append(path)
        else:
            raise loaded.problem(where, f"{short_path(path)}: no such file or folder")
    return found


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", *IMAGE_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def find_pairs(loaded: LoadedTraining) -> list[tuple[Path, Path]]:
    """(image, mask) paths, paired by name or by order as `data.pairing` says."""
    data = loaded.config.data
    images, masks = _listing(data.images, loaded, "images"), _listing(data.masks, loaded, "masks")
    files_only = not any(loaded.resolve(e).is_dir() for e in (*data.images, *data.masks))
    if data.pairing == "auto":
        named = {_stem(p) for p in images} == {_stem(p) for p in masks} and len(images) == len(masks)
        if not named and files_only and len(images) == len(masks):
            return list(zip(images, masks, strict=True))
    if data.pairing == "order":
        if len(images) != len(masks):
            raise loaded.problem(
                ("data", "masks"),
                f"{len(images)} images but {len(masks)} masks; pairing by order needs one mask per image",
            )
        return list(zip(images, masks, strict=True))
    by_name: dict[str, Path] = {}
    for path in masks:
        if (stem := _stem(path)) in by_name:
            raise loaded.problem(
                ("data", "masks"),
                f"two masks are named {stem!r} ({short_path(by_name[stem])}, {short_path(path)}); pairing by name "
                "needs one mask per name (or set data.pairing: order)",
            )
        by_name[stem] = path
    pairs, alone = [], []
    for path in images:
        mask = by_name.pop(_stem(path), None)
        if mask is None:
            alone.append(path.name)
        else:
            pairs.append((path, mask))
    if alone or by_name:
        parts = []
        if alone:
            parts.append(f"images without a mask of the same name: {', '.join(alone[:_SHOWN])}")
        if by_name:
            parts.append(f"masks without an image: {', '.join(p.name for p in list(by_name.values())[:_SHOWN])}")
        raise loaded.problem(
            ("data", "pairing"),
            "; ".join(parts) + "; name each mask as its image (in another folder), or set data.pairing: order",
        )
    return pairs


def _read(path: Path, what: str, layout: str | None = None) -> tuple[np.ndarray, str | None]:
    """The file's array: laid out as `layout` (a spec's axes) or as unetgen's ``(C, *spatial)``
    where the file says its axes (a TIFF's, a PNG's, OME-Zarr's), else as stored; and the axes
    the file says (None when it says none)."""
    if path.is_dir() or path.suffix.lower() == ".zarr":
        from ..predict.arrays import open_image

        array = open_image(path, layout=layout, what=what)
        need = math.prod(array.shape) * np.dtype(array.dtype).itemsize
        if need > MAX_IMAGE_BYTES:
            raise ValueError(f"{what} {short_path(path)}: {need / 2**30:.1f} GiB is more than training reads whole")
        return np.asarray(array[tuple(slice(None) for _ in array.shape)]), _letters(array)
    view = read_view(path, what, MAX_IMAGE_BYTES, layout=layout)
    return np.asarray(view), _letters(view)


def _letters(view: object) -> str | None:
    letters = getattr(getattr(view, "axes", None), "letters", None)
    return letters if isinstance(letters, str) else None


def _labels(mask: np.ndarray, path: Path, spatial: tuple[int, ...]) -> np.ndarray:
    if mask.shape != spatial:
        raise ValueError(
            f"mask {short_path(path)} has shape {mask.shape} but its image's spatial shape is {spatial}; a mask has "
            "the image's spatial axes only"
        )
    if mask.dtype.kind == "b":
        return mask.astype(np.int64)
    if mask.dtype.kind not in "iu":
        whole = mask.dtype.kind == "f" and np.isfinite(mask).all() and (mask == np.round(mask)).all()
        if not whole:
            raise ValueError(f"mask {short_path(path)} holds {mask.dtype} values; a mask holds integer ids")
    if mask.size and mask.min() < 0:
        raise ValueError(f"mask {short_path(path)} holds the negative id {mask.min()}; ids are 0 (background) and up")
    return mask.astype(np.int64)


def _region(a: np.ndarray, axis: int, start: int, stop: int | None) -> np.ndarray:
    index = [slice(None)] * a.ndim
    index[axis] = slice(start, stop)
    return a[tuple(index)]


def load_data(loaded: LoadedTraining, model: UNetConfig, spec: Preprocessing) -> TrainingData:
    """Read, normalise, split and prepare every pair. A region split's validation sample is the
    whole image with the `offset` where the scored region starts (the engine keeps a patch of
    context in front of it, so that it is predicted as in the whole image)."""
    cfg = loaded.config
    pairs = find_pairs(loaded)
    split, targets = cfg.data.validation, cfg.targets
    dims = model.spatial_dims
    axis = None
    if isinstance(split, RegionSplit):
        spatial_axes = spec.spatial_axes or "zyx"[-dims:]
        if split.axis not in spatial_axes[-dims:]:
            raise loaded.problem(
                ("data", "validation", "axis"),
                f"axis {split.axis!r} is not a spatial axis of the {dims}D images ({spatial_axes[-dims:]})",
            )
        axis = spatial_axes[-dims:].index(split.axis)
    held = 0
    if isinstance(split, FileSplit):
        if len(pairs) < 2:
            raise loaded.problem(
                ("data", "validation"),
                f"a split by files needs at least 2 pairs, found {len(pairs)}; use type: region to hold out part of "
                "each image, or none",
            )
        held = split.count if split.count is not None else math.ceil(split.fraction * len(pairs))
        if held >= len(pairs):
            raise loaded.problem(
                ("data", "validation", "count"),
                f"holding out {held} of {len(pairs)} pairs leaves none to train on; hold out fewer",
            )
    train, validation = [], []
    sampling = None
    if spec.pixel_size is not None:
        named = (spec.spatial_axes or "zyx"[-dims:])[-dims:]
        sampling = tuple(spec.pixel_size.get(a, 1.0) for a in named)  # type: ignore[call-overload]
    for k, (image_path, mask_path) in enumerate(pairs):
        raw, said = _read(image_path, "image", spec.axes)
        if spec.axes is None and said in AXES:  # the axes the first file says (a TIFF's, a PNG's)
            spec = spec.model_copy(update={"axes": said})
            raw, _ = _read(image_path, "image", said)  # read again in its own layout (the first file only)
        if spec.axes is None and raw.ndim in (dims, dims + 1):  # else guessed from its rank
            spec = spec.model_copy(update={"axes": ("c" if raw.ndim == dims + 1 else "") + "zyx"[-dims:]})
        _check_finite(raw, image_path, "")
        try:
            image = preprocess(raw, spec)
        except ValueError as err:
            raise ValueError(f"image {short_path(image_path)}: {err}") from None
        _check_finite(image, image_path, " once normalised")
        if image.ndim != dims + 1 or image.shape[0] != model.in_channels:
            raise ValueError(
                f"image {short_path(image_path)} of shape {raw.shape} is not (in_channels={model.in_channels}, "
                f"{dims} spatial axes) once laid out (data.axes={cfg.data.axes!r}); set data.axes to its layout, "
                "e.g. zyx, cyx or yxc"
            )
        mask, _ = _read(mask_path, "mask")
        if mask.ndim == dims + 1 and mask.shape[0] == 1:  # a file that says its axes comes as (1, *spatial)
            mask = mask[0]
        labels = _labels(mask, mask_path, tuple(image.shape[1:]))
        _check_ids(labels, mask_path, model, isinstance(targets, InstanceMasks))
        name = image_path.name
        if isinstance(split, FileSplit) and k >= len(pairs) - held:
            validation.append(_validation_sample(name, image, labels, targets))
            continue
        if isinstance(split, RegionSplit):
            assert axis is not None
            size = labels.shape[axis]
            cut = size - math.ceil(split.fraction * size)
            if cut < 1 or cut >= size:
                raise loaded.problem(
                    ("data", "validation", "fraction"),
                    f"image {short_path(image_path)} has {size} pixels along {split.axis}: a fraction of "
                    f"{split.fraction} leaves {'nothing to train on' if cut < 1 else 'nothing to validate on'}",
                )
            sample = _validation_sample(name, image, labels, targets)
            sample.offset = cut
            validation.append(sample)
            image, labels = _region(image, axis + 1, 0, cut), _region(labels, axis, 0, cut)
        train.append(_training_sample(name, image, labels, targets, sampling))
    return TrainingData(train, validation, axis, pairs, spec)


def _check_finite(image: np.ndarray, path: Path, when: str) -> None:
    if image.dtype.kind in "fc" and not (finite := np.isfinite(image)).all():
        bad = image.size - int(np.count_nonzero(finite))
        raise ValueError(
            f"image {short_path(path)} holds {bad:,} NaN or infinite values{when}; replace them (np.nan_to_num) or "
            "leave the image out"
        )


def _check_ids(labels: np.ndarray, path: Path, model: UNetConfig, instances: bool) -> None:
    if instances:
        if model.out_channels != 2:
            raise ValueError(
                f"instance masks are trained as background and foreground, so the model needs out_channels=2, "
                f"not {model.out_channels}; or use targets: classes"
            )
        return
    top = int(labels.max()) if labels.size else 0
    if top >= max(model.out_channels, 2):
        raise ValueError(
            f"mask {short_path(path)} holds the class id {top}, but the model has out_channels="
            f"{model.out_channels} (ids 0..{max(model.out_channels, 2) - 1}); if it holds one id per object, set "
            "targets: instances"
        )


def _validation_sample(name: str, image: np.ndarray, labels: np.ndarray, targets: object) -> Sample:
    if isinstance(targets, InstanceMasks):
        return Sample(name, image, (labels > 0).astype(np.int64), None, labels)
    return Sample(name, image, labels)


def _training_sample(
    name: str, image: np.ndarray, labels: np.ndarray, targets: object, sampling: tuple[float, ...] | None
) -> Sample:
    if not isinstance(targets, InstanceMasks):
        return Sample(name, image, labels)
    separated = separate_touching(labels) if targets.separate else labels
    weights = None
    if (w := targets.weight_map) is not None:
        class_weights = "balanced" if w.class_weights == "balanced" else None
        weights = border_weight_map(separated, w0=w.w0, sigma=w.sigma, class_weights=class_weights, sampling=sampling)
    return Sample(name, image, (separated > 0).astype(np.int64), weights, labels)


def data_paths(loaded: LoadedTraining) -> list[Path]:
    """Every path the data names (files and folders), for the output checks."""
    data = loaded.config.data
    return [loaded.resolve(p) for p in (*data.images, *data.masks)]
