"""Training pieces for the way Ronneberger et al. 2015 train a U-Net: the border weight map
(eq. 2), valid-size patches with mirrored context, targets cropped to the output, losses for
plain and deep-supervised models, and the paper's elastic deformation. Thin and composable:
the user keeps their own loop (plain PyTorch, MONAI, Lightning); see docs/training.md.

Sizes come from `unetgen.shapes`: nothing here computes where the output lies by itself.
Arrays: images are ``(C, *spatial)`` or ``(*spatial)`` for one channel, label images
``(*spatial)`` of integers (0 = background, each object its own positive id).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .analysis import shapes
from .analysis.arguments import as_count, as_flag, as_real
from .config.io import ConfigSource, resolve_config
from .config.preprocessing import Preprocessing, PreprocessingSource, load_preprocessing
from .config.unet_config import UNetConfig
from .reprs import int_text, short_repr

__all__ = [
    "PatchSampler",
    "border_weight_map",
    "class_weight_map",
    "crop_target",
    "deep_supervision_loss",
    "deep_supervision_targets",
    "elastic_deform",
    "head_weights",
    "separate_touching",
    "soft_dice_loss",
    "weighted_cross_entropy",
]

NEGLIGIBLE = 1e-8
"""`border_weight_map` leaves out border terms below this value (absolute), which lets it compute
each object's distances only near the object; the result differs from the exact map by less."""

Array = TypeVar("Array", np.ndarray, torch.Tensor)
ClassWeights = Literal["balanced"] | Mapping[int, float] | None


# ---------------------------------------------------------------------------------------------
# arrays and targets, checked


MAX_PATCH_BYTES = 4 * 2**30
"""Most bytes `PatchSampler` builds at once (a sample, or a `batch` of them: inputs, targets and
weight maps); a larger `patch_size` or `batch` is refused before anything is allocated. Assign a
larger value to raise it."""


def _array(value: Any, name: str) -> np.ndarray:
    """`value` (a NumPy array, a torch tensor or nested sequences) as a NumPy array of real numbers
    or booleans, or `ValueError` naming it."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
    try:
        a = np.asarray(value)
    except (ValueError, TypeError) as err:  # ragged nested lists
        raise ValueError(f"{name} is not an array: {short_repr(str(err))}") from None
    if a.dtype.kind not in "biuf":
        hint = " (pass .real, abs() or np.angle())" if a.dtype.kind == "c" else ""
        raise ValueError(f"{name} must hold real numbers, got dtype {a.dtype}{hint}")
    return a


def _real_image(value: Any, name: str) -> np.ndarray:
    """`value` as a finite float32 array."""
    a = _array(value, name).astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        bad = int(a.size - np.isfinite(a).sum())
        raise ValueError(
            f"{name} holds {bad:,} NaN or infinite values (after conversion to float32); "
            "replace them (np.nan_to_num) or leave those images out"
        )
    return a


def _label_image(labels: Any, name: str = "labels") -> np.ndarray:
    """An instance label image: integers, 0 = background, one positive id per object."""
    a = _array(labels, name)
    if a.dtype.kind in "bf":
        if a.dtype.kind == "f" and a.size and np.isfinite(a).all() and (a == np.round(a)).all():
            fix = f"its values are whole numbers: pass {name}.astype(np.int64)"
        else:
            fix = "for a binary mask, give each object its own id with scipy.ndimage.label(mask > 0)[0]"
        raise ValueError(
            f"{name} must be an integer label image (0 = background, one positive id per object), "
            f"got dtype {a.dtype}; {fix}"
        )
    if not 1 <= a.ndim <= 3 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1D, 2D or 3D label image, got shape {a.shape}")
    if a.min() < 0:
        raise ValueError(f"{name} holds negative ids (min {a.min()}); use 0 for background and positive ids")
    return a


def _class_advice(name: str, found: int, classes: int, limit: int) -> str:
    """Why `found` is not a class id below `limit`, and what to do."""
    valid = f"one per output channel, out_channels={classes}" if limit == classes else "a one-channel output"
    return (
        f"{name} holds class id {found}, but class ids must be 0..{limit - 1} ({valid}). If it is an instance "
        "label image (one id per object), train on its classes: labels > 0 (as int64) for foreground and "
        "background, with border_weight_map(labels) as the weight map that keeps touching objects apart; "
        f"otherwise give the model out_channels={found + 1}"
    )


def _class_target(target: Any, name: str, classes: int) -> np.ndarray:
    """A target of class ids: integers (or booleans, read as 0 and 1) in 0..classes-1 (0..1 when
    `classes` is 1: a binary target for a one-channel output)."""
    a, limit = _array(target, name), max(classes, 2)
    if a.dtype.kind == "b":
        a = a.astype(np.uint8)
    if a.dtype.kind == "f":
        whole = a.size > 0 and bool(np.isfinite(a).all() and (a == np.round(a)).all())
        fix = f"its values are whole numbers: pass {name}.astype(np.int64)" if whole else (
            f"for a mask of probabilities pass ({name} > 0.5).astype(np.int64)"
        )  # fmt: skip
        raise ValueError(
            f"{name} must hold class ids (integers 0..{limit - 1}), got dtype {a.dtype}; {fix}; "
            "for an instance label image (one id per object) train on (labels > 0) with border_weight_map(labels)"
        )
    if a.size and a.min() < 0:
        raise ValueError(f"{name} holds the negative class id {a.min()}; class ids are 0..{limit - 1}")
    if a.size and a.max() >= limit:
        raise ValueError(_class_advice(name, int(a.max()), classes, limit))
    return a


# ---------------------------------------------------------------------------------------------
# the weight map of the paper (eq. 2)


def class_weight_map(labels: Any, class_weights: ClassWeights = "balanced") -> np.ndarray:
    """w_c of the paper: one weight per pixel for its class, background (label 0) or foreground
    (label > 0). `"balanced"`: ``pixels / (classes present * pixels of the class)``, so that both
    classes contribute equally; None: 1 everywhere; a mapping ``{0: w_background, 1: w_foreground}``."""
    a = _label_image(labels)
    fg = a > 0
    match class_weights:
        case None:
            return np.ones(a.shape, np.float32)
        case "balanced":
            n_fg = int(fg.sum())
            n_bg = a.size - n_fg
            present = (n_fg > 0) + (n_bg > 0)
            w_bg = a.size / (present * n_bg) if n_bg else 0.0
            w_fg = a.size / (present * n_fg) if n_fg else 0.0
        case Mapping() if set(class_weights) == {0, 1}:
            w_bg = as_real("class_weights[0]", class_weights[0], minimum=0)
            w_fg = as_real("class_weights[1]", class_weights[1], minimum=0)
        case _:
            raise ValueError(
                f"class_weights={short_repr(class_weights)} must be 'balanced', None or a mapping "
                "{0: background weight, 1: foreground weight}"
            )
    return np.where(fg, np.float32(w_fg), np.float32(w_bg))


def separate_touching(labels: Any) -> np.ndarray:
    """`labels` with a background gap between touching objects, the paper's "small separation
    borders that we introduce between touching cells": every object pixel with a pixel of another
    object among its 3^d neighbours becomes background (0). Train on ``separate_touching(labels) > 0``
    with the weight map of the separated labels, so that the network learns the gaps."""
    a = _label_image(labels)
    ids, dense = np.unique(a, return_inverse=True)  # small ids: the filters go through float64
    dense = dense.reshape(a.shape).astype(np.int64) + (0 if ids[0] == 0 else 1)
    footprint = np.ones((3,) * a.ndim, bool)
    highest = ndimage.maximum_filter(dense, footprint=footprint, mode="nearest")
    lowest = ndimage.minimum_filter(np.where(dense > 0, dense, len(ids) + 1), footprint=footprint, mode="nearest")
    return np.where((a > 0) & ((highest != dense) | (lowest != dense)), 0, a)


def _sampling(sampling: Any, dims: int) -> tuple[float, ...]:
    """`sampling` as one positive finite spacing per axis (None: 1; one number: every axis)."""
    if sampling is None:
        return (1.0,) * dims
    if isinstance(sampling, (str, bytes)) or not hasattr(sampling, "__len__") or getattr(sampling, "ndim", 1) == 0:
        return (as_real("sampling", sampling, positive=True),) * dims
    if len(sampling) != dims:
        raise ValueError(
            f"sampling={short_repr(sampling)} has {len(sampling)} values but labels has {dims} axes; "
            f"give one spacing per axis ({dims} numbers) or one number for every axis"
        )
    return tuple(as_real(f"sampling[{i}]", s, positive=True) for i, s in enumerate(sampling))


def border_weight_map(
    labels: Any,
    *,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: ClassWeights = "balanced",
    sampling: float | Sequence[float] | None = None,
) -> np.ndarray:
    """The weight map of Ronneberger et al. 2015, eq. 2, for an instance label image (1D to 3D):

        w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

    d1, d2 are the Euclidean distances (in pixels, or in `sampling` units per axis, as
    `scipy.ndimage.distance_transform_edt` measures them) from background pixel x to the nearest
    pixel of the nearest and of the second-nearest object; the border term applies to background
    pixels only, so that the thin gaps between touching objects weigh most. `class_weights` gives
    w_c (see `class_weight_map`). Returns float32 of the labels' shape.

    Fast for many objects: each object's distances are computed only in its bounding box grown by
    the distance beyond which the border term is below `NEGLIGIBLE` (both d1 and d2 exceed it, so
    d1 + d2 does too); outside, the term is left out. The result equals the one-transform-per-object
    map to within `NEGLIGIBLE`.
    """
    a = _label_image(labels)
    w0, sigma = as_real("w0", w0, minimum=0), as_real("sigma", sigma, positive=True)
    step = _sampling(sampling, a.ndim)
    weights = class_weight_map(a, class_weights)
    if w0 == 0 or a.max() == 0:
        return weights
    ids, dense = np.unique(a, return_inverse=True)  # dense ids 1..K (0 stays background)
    dense = dense.reshape(a.shape) + (0 if ids[0] == 0 else 1)
    reach = sigma * math.sqrt(2 * math.log(w0 / NEGLIGIBLE)) if w0 > NEGLIGIBLE else 0.0
    margin = [n if reach / s >= n else math.ceil(reach / s) + 1 for s, n in zip(step, a.shape, strict=True)]
    d1 = np.full(a.shape, np.inf)
    d2 = np.full(a.shape, np.inf)
    for k, box in enumerate(ndimage.find_objects(dense), start=1):
        if box is None:
            continue
        window = tuple(
            slice(max(0, b.start - m), min(n, b.stop + m)) for b, m, n in zip(box, margin, a.shape, strict=True)
        )
        dist = ndimage.distance_transform_edt(dense[window] != k, sampling=step)
        n1, n2 = d1[window], d2[window]  # views: updated in place
        np.minimum(n2, np.where(dist < n1, n1, dist), out=n2)
        np.minimum(n1, dist, out=n1)
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma * sigma))  # sigma * sigma: inf, not OverflowError
    return (weights + np.where(a == 0, border, 0.0)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# targets on the output grid, patches


def _is_array(value: Any, name: str) -> None:
    """`value` is a NumPy array or a torch tensor (what the croppers index), or `ValueError`."""
    if not isinstance(value, (np.ndarray, torch.Tensor)):
        raise ValueError(
            f"{name} must be a NumPy array or a torch tensor, got {type(value).__name__}; "
            f"wrap it with np.asarray({name})"
        )


def crop_target(target: Array, config: ConfigSource, input_shape: Sequence[int]) -> Array:
    """`target` (a label image, weight map, or any array whose last `spatial_dims` axes are spatial)
    centre-cropped to the output of `input_shape`: for a target of the input's size, the pixels the
    network predicts (the output lies `shapes.halo` pixels inside the input on every side). A
    target of any other size is cropped around its centre; it must cover the output."""
    config = resolve_config(config)
    shape = shapes.as_shape(config, input_shape, "input_shape")
    out = shapes.output_shape(config, shape)
    shapes.halo(config)  # refuses networks whose output pixels do not map one to one to input pixels
    _is_array(target, "target")
    dims = config.spatial_dims
    spatial = tuple(target.shape[-dims:]) if target.ndim >= dims else ()
    if len(spatial) != dims or any(s < o or (s - o) % 2 for s, o in zip(spatial, out, strict=True)):
        raise shapes.InputShapeError(
            f"target of shape {tuple(target.shape)} cannot be centre-cropped to the output {out} of input "
            f"{shape}: its last {dims} axes must be at least the output and differ from it by an "
            f"even number (the input's own size {shape} always works)"
        )
    index = (..., *(slice((s - o) // 2, (s - o) // 2 + o) for s, o in zip(spatial, out, strict=True)))
    return target[index]


def _reflect(start: int, length: int, size: int) -> np.ndarray:
    """Indices start .. start+length-1 mirrored into [0, size) without repeating the edge pixel
    (NumPy's ``reflect``), periodically when the window is larger than the image."""
    p = np.arange(start, start + length)
    if size == 1:
        return np.zeros_like(p)
    p = np.mod(p, 2 * (size - 1))
    return np.where(p >= size, 2 * (size - 1) - p, p)


Augment = Callable[[np.ndarray, np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray, np.ndarray]]


def _as_list(value: Any, single: bool) -> list[Any]:
    return [value] if single else list(value)


class PatchSampler:
    """Random training patches from whole images, the way the paper trains a valid-padding U-Net.

    Each sample picks an image and an output tile uniformly inside it (with `foreground` > 0, that
    share of the samples instead puts the tile over a random voxel of a random foreground class the
    image holds: nnU-Net's ``oversample_foreground_percent``, MONAI's ``RandCropByPosNegLabel``,
    for targets that cover little of the image), and returns
    ``(input, target, weights)`` as torch tensors: the input ``(C, *patch_size)`` is the output
    tile plus `shapes.halo` on every side, context beyond the image mirrored (as in
    `predict_tiled`); `target` (int64) and `weights` (float32, ones without a weight map) are
    ``(*output)`` (`target_size="output"`, for the main head) or ``(*patch_size)``
    (`target_size="input"`, the mirrored labels of the whole input, for
    `deep_supervision_loss` with valid padding, whose auxiliary heads see beyond the output).

    `config` is anything `build_unet` takes. Images are ``(in_channels, *spatial)`` (or
    ``(*spatial)`` with one channel) of finite real values; targets ``(*spatial)`` class ids,
    integers 0..out_channels-1 (booleans are 0 and 1; with one output channel 0 and 1); weight maps
    finite and >= 0. `patch_size` must be a valid input size (an int for every axis, or one per
    axis; `shapes.nearest_valid_input_size` finds one; `plan_training` picks the largest that fits
    a memory budget), and a sample at most `MAX_PATCH_BYTES`. `augment(image, target, weights,
    rng)` runs on the input-sized patch before cropping, e.g. `elastic_deform`, and returns the
    three arrays in the same shapes. `seed` is None or an int >= 0. `foreground` is a probability
    from 0 (the default: uniform, as the paper) to 1; a class's voxels are remembered as at most
    `FOREGROUND_POINTS` evenly spaced ones per image.

    `preprocessing` (a `Preprocessing` spec, a mapping or a .json/.yaml file; None: the images as
    they are): the images are raw, in the spec's `axes` layout, and each is normalised once,
    up front, with the numbers `predict_tiled` would measure on it
    (`unetgen.predict.preprocess.prepare_input`: exact up to `EXACT_VOXELS` voxels per channel, a
    bounded sample beyond), so that a model trained here and saved with
    ``save_unet(..., preprocessing=spec)`` sees its inputs at prediction as it saw them in
    training. Targets and weight maps keep the spatial layout of the spec's axes. Iterate for endless samples,
    or call `batch(n)` for stacked ``(n, ...)`` tensors. Every argument is checked: a
    `ValueError` (`InputShapeError` for sizes) names it.
    """

    def __init__(
        self,
        config: ConfigSource,
        images: Any,
        targets: Any,
        weights: Any = None,
        *,
        patch_size: int | Sequence[int],
        target_size: Literal["output", "input"] = "output",
        augment: Augment | None = None,
        seed: int | None = None,
        preprocessing: PreprocessingSource | None = None,
        foreground: float = 0.0,
    ) -> None:
        config = resolve_config(config)
        if isinstance(foreground, bool) or not isinstance(foreground, (int, float)) or not 0 <= foreground <= 1:
            raise ValueError(
                f"foreground={short_repr(foreground)} must be a probability from 0 to 1 (0: uniform patches)"
            )
        size = shapes.valid_input_shape(config, patch_size, "patch_size")
        if not isinstance(target_size, str) or target_size not in ("output", "input"):
            raise ValueError(f"target_size={short_repr(target_size)} must be 'output' or 'input'")
        if augment is not None and not callable(augment):
            raise ValueError(f"augment={short_repr(augment)} must be None or a function (image, target, weights, rng)")
        self.config, self.patch_size, self.target_size = config, size, target_size
        self.output_size = shapes.output_shape(config, size)
        self.halo = shapes.halo(config)
        self.sample_bytes = math.prod(size) * (4 * config.in_channels + 8 + 4)  # input, int64 target, weights
        self._check_bytes(1)
        if preprocessing is not None:
            images = _preprocessed(config, images, load_preprocessing(preprocessing))
        self.images, self.targets, self.weights = self._data(images, targets, weights)
        self.augment = augment
        self.foreground = float(foreground)
        self._points = [_class_points(t) for t in self.targets] if self.foreground else []
        self.rng = np.random.default_rng(None if seed is None else as_count("seed", seed, minimum=0))

    def _check_bytes(self, n: int) -> None:
        """Refuse `n` samples above `MAX_PATCH_BYTES`, before anything is allocated."""
        if n * self.sample_bytes > MAX_PATCH_BYTES:
            need = n * self.sample_bytes
            size = f"{need / 2**30:,.1f}" if need.bit_length() <= 80 else int_text(need >> 30)
            raise ValueError(
                f"{n:,} patch(es) of patch_size={'x'.join(map(int_text, self.patch_size))} need "
                f"{size} GiB, more than MAX_PATCH_BYTES ({MAX_PATCH_BYTES / 2**30:g} GiB); use a smaller patch_size "
                "or batch (plan_training finds the largest that fits a memory budget), or raise "
                "unetgen.training.MAX_PATCH_BYTES"
            )

    def _data(
        self, images: Any, targets: Any, weights: Any
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray | None]]:
        """The images, targets and weight maps as checked arrays, one of each per image."""
        single = not isinstance(targets, (list, tuple))
        images, targets = _as_list(images, single), _as_list(targets, single)
        weights = [None] * len(targets) if weights is None else _as_list(weights, single)
        if not (len(images) == len(targets) == len(weights)) or not targets:
            raise ValueError(
                f"got {len(images)} images, {len(targets)} targets and {len(weights)} weight maps; "
                "give one target (and optionally one weight map) per image"
            )
        dims, config = len(self.patch_size), self.config
        checked: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray | None]] = ([], [], [])
        for i, (img, tgt, w) in enumerate(zip(images, targets, weights, strict=True)):
            tgt = _class_target(tgt, f"targets[{i}]", config.out_channels)
            if tgt.ndim != dims or 0 in tgt.shape:
                raise ValueError(f"targets[{i}] of shape {tgt.shape} must have {dims} non-empty spatial axes")
            img = _real_image(img, f"images[{i}]")
            img = img[None] if img.ndim == dims else img
            if img.ndim != dims + 1 or img.shape[0] != config.in_channels or img.shape[1:] != tgt.shape:
                raise ValueError(
                    f"images[{i}] of shape {img.shape} does not fit targets[{i}] of shape {tgt.shape}: need "
                    f"(in_channels={config.in_channels}, *spatial) with the target's spatial shape, {dims} axes"
                )
            if w is not None:
                w = _real_image(w, f"weights[{i}]")
                if w.shape != tgt.shape:
                    raise ValueError(f"weights[{i}] of shape {w.shape} differs from targets[{i}] {tgt.shape}")
                if w.size and w.min() < 0:
                    raise ValueError(f"weights[{i}] holds the negative weight {w.min()}; weights must be >= 0")
            for kept, value in zip(checked, (img, tgt, w), strict=True):
                kept.append(value)
        return checked

    def sample(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One ``(input, target, weights)`` patch."""
        k = int(self.rng.integers(len(self.images)))
        img, tgt, w = self.images[k], self.targets[k], self.weights[k]
        point = self._foreground_point(k)
        index = []
        for axis, (size, out, halo, patch) in enumerate(
            zip(tgt.shape, self.output_size, self.halo, self.patch_size, strict=True)
        ):
            if size < out:  # centred when the image is smaller than the tile
                start = -((out - size) // 2)
            elif point is None:  # output tile anywhere inside the image
                start = int(self.rng.integers(0, size - out + 1))
            else:  # anywhere inside the image such that the tile holds the point
                v = int(point[axis])
                start = int(self.rng.integers(max(0, v - out + 1), min(v, size - out) + 1))
            index.append(_reflect(start - halo, patch, size))
        grid = np.ix_(*index)
        x, y = img[(slice(None), *grid)], tgt[grid]
        wx = w[grid] if w is not None else np.ones(y.shape, np.float32)
        if self.augment is not None:
            x, y, wx = self._augmented(x, y, wx)
        if self.target_size == "output":
            y, wx = crop_target(y, self.config, self.patch_size), crop_target(wx, self.config, self.patch_size)
        as_t = torch.from_numpy
        return as_t(np.ascontiguousarray(x, np.float32)), as_t(y.astype(np.int64)), as_t(np.ascontiguousarray(wx))

    def _foreground_point(self, k: int) -> np.ndarray | None:
        """A random remembered voxel of a random foreground class of image `k`, with probability
        `foreground` (None otherwise, or when the image holds no foreground)."""
        if not self.foreground or self.rng.random() >= self.foreground or not self._points[k]:
            return None
        points = self._points[k][int(self.rng.integers(len(self._points[k])))]
        return points[int(self.rng.integers(len(points)))]

    def _augmented(self, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`augment` applied, its result checked: the three arrays in their shapes."""
        assert self.augment is not None
        out = self.augment(x, y, w, self.rng)
        shapes_ = tuple(getattr(a, "shape", None) for a in out) if isinstance(out, tuple) and len(out) == 3 else None
        if shapes_ != (x.shape, y.shape, w.shape):
            raise ValueError(
                f"augment returned {short_repr(shapes_ or type(out).__name__)}; it must return (image, target, "
                f"weights) as arrays of shapes {x.shape}, {y.shape} and {w.shape}, as it was given them"
            )
        return out

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`n` patches stacked: ``(n, C, *patch_size)``, ``(n, *target)``, ``(n, *target)``."""
        n = as_count("n", n)
        self._check_bytes(n)
        xs, ys, ws = zip(*(self.sample() for _ in range(n)), strict=True)
        return torch.stack(xs), torch.stack(ys), torch.stack(ws)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        while True:
            yield self.sample()


FOREGROUND_POINTS = 10_000
"""The most voxels `PatchSampler(foreground=...)` remembers per class and image (as nnU-Net does)."""


def _class_points(target: np.ndarray) -> list[np.ndarray]:
    """For each foreground class (id > 0) present in `target`: at most `FOREGROUND_POINTS` of its
    voxels' coordinates, evenly spaced in scan order, as an ``(n, ndim)`` int64 array."""
    points = []
    for c in np.unique(target):
        if c <= 0:
            continue
        flat = np.flatnonzero(target == c)
        if flat.size > FOREGROUND_POINTS:
            flat = flat[np.linspace(0, flat.size - 1, FOREGROUND_POINTS).astype(np.int64)]
        points.append(np.stack(np.unravel_index(flat, target.shape), axis=1))
    return points


def _preprocessed(config: UNetConfig, images: Any, spec: Preprocessing) -> Any:
    """`images` (one, or a list or tuple) laid out and normalised as `predict_tiled` does."""
    from .predict.preprocess import prepare_input, spec_of

    applied = spec_of(None, spec)
    if applied is None:
        return images

    def one(image: Any, name: str) -> np.ndarray:
        try:
            return np.asarray(prepare_input(config, image, applied)[:])
        except (ValueError, TypeError) as err:
            raise ValueError(f"{name}: {err}") from None

    if isinstance(images, (list, tuple)):
        return [one(image, f"images[{i}]") for i, image in enumerate(images)]
    return one(images, "images")


def _grid_limit(pixels: int, dims: int) -> int:
    """The largest p with p**dims <= pixels (at least 1)."""
    p = max(1, round(pixels ** (1 / dims)))
    while p**dims > pixels and p > 1:
        p -= 1
    while (p + 1) ** dims <= pixels:
        p += 1
    return p


def elastic_deform(
    image: np.ndarray,
    target: np.ndarray,
    weights: np.ndarray,
    rng: np.random.Generator,
    *,
    sigma: float | Sequence[float] = 10.0,
    points: int = 3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The paper's augmentation: random displacement vectors on a coarse `points` x `points` grid,
    drawn from a Gaussian with `sigma` pixels standard deviation, interpolated to every pixel with
    cubic B-splines (bicubic); the image is resampled with cubic, the label image with nearest
    (order 0) and the weight map with linear interpolation, all with the same displacement and
    mirrored borders. `image` is (C, *spatial), `target` and `weights` (*spatial), 1D to 3D;
    `rng` a `numpy.random.Generator`; `sigma` a finite number >= 0, or one per spatial axis (for
    anisotropic data: smaller along a coarsely sampled axis); `points` an int >= 1 whose
    grid (``points**dims``) has at most as many points as the image has pixels. A bad argument is
    a `ValueError` naming it."""
    image, target, weights = _array(image, "image"), _array(target, "target"), _array(weights, "weights")
    spatial = target.shape
    if not 1 <= target.ndim <= 3 or target.size == 0 or image.shape[1:] != spatial or weights.shape != spatial:
        raise ValueError(
            f"image {image.shape}, target {spatial} and weights {weights.shape} do not fit: need image "
            "(C, *spatial) and target and weights (*spatial), 1 to 3 non-empty spatial axes"
        )
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng={short_repr(rng)} must be a numpy.random.Generator, e.g. np.random.default_rng(0)")
    per_axis = not (isinstance(sigma, (str, bytes)) or not hasattr(sigma, "__len__") or getattr(sigma, "ndim", 1) == 0)
    if per_axis and len(sigma) != len(spatial):
        raise ValueError(
            f"sigma={short_repr(sigma)} has {len(sigma)} values but the image has {len(spatial)} spatial axes; "
            "give one number for every axis or one per axis"
        )
    sigmas = [as_real(f"sigma[{i}]", s, minimum=0) for i, s in enumerate(sigma)] if per_axis else None
    sigma = 0.0 if per_axis else as_real("sigma", sigma, minimum=0)
    points = as_count("points", points, minimum=1, maximum=_grid_limit(target.size, target.ndim))
    grid = (len(spatial), *(points,) * len(spatial))
    if sigmas is None:
        coarse = rng.normal(0.0, sigma, size=grid)
    else:  # numpy's normal(0, s) is s * standard normal: per-axis sigmas scale one draw
        coarse = rng.normal(0.0, 1.0, size=grid) * np.asarray(sigmas).reshape(-1, *(1,) * len(spatial))
    at = np.meshgrid(*(np.linspace(0, points - 1, n) for n in spatial), indexing="ij")
    shift = [ndimage.map_coordinates(c, at, order=3, mode="nearest") for c in coarse]
    coords = [np.arange(n, dtype=float).reshape([-1 if a == b else 1 for b in range(len(spatial))]) + d
              for a, (n, d) in enumerate(zip(spatial, shift, strict=True))]  # fmt: skip
    coords = np.broadcast_arrays(*coords)

    def warp(a: np.ndarray, order: int) -> np.ndarray:
        return ndimage.map_coordinates(a, coords, order=order, mode="mirror")

    return np.stack([warp(c, 3) for c in image]), warp(target, 0), warp(weights, 1)


# ---------------------------------------------------------------------------------------------
# losses


def _check_pair(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Check a loss's arguments: logits (N, classes, *S) floating point, target (N, *S) class ids
    0..classes-1 (integers or booleans), weight (N, *S) finite and >= 0. The target as int64."""
    for name, t in (("logits", logits), ("target", target), ("weight", weight)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch tensor, got {type(t).__name__}; convert it with torch.as_tensor")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point (the model's output), got dtype {logits.dtype}")
    if logits.dim() < 3 or tuple(target.shape) != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"logits of shape {tuple(logits.shape)} and target of shape {tuple(target.shape)} do not match: "
            "need logits (N, classes, *spatial) and target (N, *spatial); crop the target with crop_target"
        )
    if target.is_floating_point() or target.is_complex():
        raise ValueError(
            f"target must hold class ids (an integer or bool tensor), got dtype {target.dtype}; if its values "
            "are whole class ids pass target.long(), for probabilities (target > 0.5).long()"
        )
    target, classes = target.long(), logits.shape[1]
    if target.numel():
        low, high = (int(v) for v in torch.aminmax(target))
        if low < 0:
            raise ValueError(f"target holds the negative class id {low}; class ids are 0..{classes - 1}")
        if high >= classes:
            raise ValueError(_class_advice("target", high, classes, classes))
    if weight is not None:
        if weight.shape != target.shape:
            raise ValueError(
                f"weight of shape {tuple(weight.shape)} differs from target of shape {tuple(target.shape)}"
            )
        if weight.is_complex() or bool((~torch.isfinite(weight) | (weight < 0)).any()):
            raise ValueError(
                "weight must hold finite real numbers >= 0 (it holds NaN, infinite, negative or complex ones)"
            )
    return target


def weighted_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """The paper's energy: pixel-wise softmax cross-entropy, each pixel weighted by `weight` (e.g.
    `border_weight_map`), averaged over pixels. logits (N, classes, *S), target (N, *S) class ids."""
    target = _check_pair(logits, target, weight)
    ce = F.cross_entropy(logits, target, reduction="none")  # (N, *S)
    return (ce * weight).mean() if weight is not None else ce.mean()


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    smooth: float = 1e-5,
    include_background: bool = False,
) -> torch.Tensor:
    """1 - soft Dice of the softmax probabilities against the one-hot target, per class over the
    whole batch (nnU-Net's batch Dice), averaged over the classes (without class 0 unless
    `include_background`). `weight` (N, *S), if given, weighs each pixel's contribution; `smooth`
    (a finite number >= 0) is added to the numerator and denominator of every class's Dice."""
    target = _check_pair(logits, target, weight)
    smooth, include_background = as_real("smooth", smooth, minimum=0), as_flag("include_background", include_background)
    classes = logits.shape[1]
    probs = logits.softmax(1)
    onehot = F.one_hot(target, classes).movedim(-1, 1).to(probs.dtype)
    if weight is not None:
        w = weight.unsqueeze(1).to(probs.dtype)
        probs, onehot_w = probs * w, onehot * w
    else:
        onehot_w = onehot
    axes = [0, *range(2, logits.dim())]
    inter = (probs * onehot).sum(axes)
    denom = probs.sum(axes) + onehot_w.sum(axes)
    dice = (2 * inter + smooth) / (denom + smooth)
    first = 0 if include_background or classes == 1 else 1
    return 1 - dice[first:].mean()


def head_weights(config: ConfigSource) -> list[float]:
    """The loss weight of each head in `forward`'s order (main, then auxiliary levels ascending):
    halved per level below full resolution and normalised to sum to 1, as nnU-Net weighs them."""
    config = resolve_config(config)
    raw = [0.5**level for level in (0, *sorted(config.deep_supervision))]
    return [w / sum(raw) for w in raw]


def deep_supervision_targets(target: Array, config: ConfigSource, input_shape: Sequence[int]) -> list[Array]:
    """`target` brought to the grid of every head of the model, in `forward`'s order.

    `target` (*, *S) is centred on the input of spatial shape `input_shape` (its own size, or any
    size covering every head: with valid padding the auxiliary heads see beyond the main output,
    so pass the input-sized target, e.g. `PatchSampler(target_size="input")`). A head at decoder
    level l has the shape `shapes.aux_shapes` gives; each of its pixels stands for a block of
    ``prod(strides[:l])`` pixels at full resolution, centred on the input like every map of the
    network: the target is centre-cropped to those blocks and down-sampled by nearest neighbour
    (the middle pixel of each block). The main head gets `crop_target`."""
    config = resolve_config(config)
    dims = config.spatial_dims
    input_shape = shapes.as_shape(config, input_shape, "input_shape")
    out = [crop_target(target, config, input_shape)]
    spatial = tuple(target.shape[-dims:])
    for level, shape in zip(sorted(config.deep_supervision), shapes.aux_shapes(config, input_shape), strict=True):
        step = [math.prod(s[a] for s in config.layout.strides[:level]) for a in range(dims)]
        span = [n * s for n, s in zip(shape, step, strict=True)]
        if any(t < p or (t - p) % 2 for t, p in zip(spatial, span, strict=True)):
            raise shapes.InputShapeError(
                f"target of spatial shape {spatial} does not cover the auxiliary head of level {level} "
                f"({'x'.join(map(str, shape))} pixels of {'x'.join(map(str, step))} each = {tuple(span)} at full "
                f"resolution); pass the target at the input size {input_shape}"
            )
        index = (
            ...,
            *(slice((t - p) // 2 + s // 2, (t - p) // 2 + p, s) for t, p, s in zip(spatial, span, step, strict=True)),
        )
        out.append(target[index])
    return out


def _level_weights(value: Any) -> list[float]:
    """`level_weights` as finite numbers >= 0."""
    value = value.tolist() if isinstance(value, torch.Tensor) else value
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence | np.ndarray | torch.Tensor):
        raise ValueError(f"level_weights={short_repr(value)} must be a sequence of numbers, one per head")
    return [as_real(f"level_weights[{i}]", v, minimum=0) for i, v in enumerate(value)]


Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def deep_supervision_loss(
    outputs: torch.Tensor | Sequence[torch.Tensor],
    target: torch.Tensor,
    config: ConfigSource,
    input_shape: Sequence[int],
    *,
    weight: torch.Tensor | None = None,
    loss: Loss = weighted_cross_entropy,
    level_weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """The loss of every head of a model in training mode, weighted by `head_weights` (or
    `level_weights`): ``sum_h level_weight[h] * loss(outputs[h], target_h, weight_h)``, the target
    and `weight` (N, *S), centred on the input, brought to each head with `deep_supervision_targets`.
    A single tensor (a model without deep supervision, or in eval mode) gets the main head's loss.
    `level_weights` are finite numbers >= 0, one per head; `loss` is called as
    ``loss(logits, target, weight)``."""
    config = resolve_config(config)
    outs = [outputs] if isinstance(outputs, torch.Tensor) else outputs
    if not isinstance(outs, (list, tuple)) or not outs or not all(isinstance(o, torch.Tensor) for o in outs):
        raise ValueError(
            f"outputs={short_repr(outputs)} must be the model's output: a tensor, or in training mode with "
            "deep supervision a list of tensors (main head first)"
        )
    if not callable(loss):
        raise ValueError(f"loss={short_repr(loss)} must be a function (logits, target, weight) -> tensor")
    heads = deep_supervision_targets(target, config, input_shape)
    w_heads = deep_supervision_targets(weight, config, input_shape) if weight is not None else [None] * len(heads)
    factors = head_weights(config) if level_weights is None else _level_weights(level_weights)
    if len(outs) == 1:
        heads, w_heads, factors = heads[:1], w_heads[:1], [1.0]
    if not len(outs) == len(heads) == len(factors):
        raise ValueError(
            f"got {len(outs)} outputs and {len(factors)} level weights for a model with {len(heads)} heads "
            f"(main + deep_supervision={list(config.deep_supervision)}); pass model(x) in training mode"
        )
    total = outs[0].new_zeros(())
    for out, tgt, w, f in zip(outs, heads, w_heads, factors, strict=True):
        total = total + f * loss(out, tgt, w)
    return total
