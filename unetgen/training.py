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
from .config.diagnostics import short_repr
from .config.unet_config import UNetConfig

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
# the weight map of the paper (eq. 2)


def _label_image(labels: Any, name: str = "labels") -> np.ndarray:
    a = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(
            f"{name} must be an integer label image (0 = background, one positive id per object), "
            f"got dtype {a.dtype}; for a binary mask use scipy.ndimage.label(mask)[0]"
        )
    if not 1 <= a.ndim <= 3 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1D, 2D or 3D label image, got shape {a.shape}")
    if a.min() < 0:
        raise ValueError(f"{name} holds negative ids (min {a.min()}); use 0 for background and positive ids")
    return a


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
            w_bg, w_fg = float(class_weights[0]), float(class_weights[1])
            if not (math.isfinite(w_bg) and math.isfinite(w_fg) and w_bg >= 0 and w_fg >= 0):
                raise ValueError(f"class_weights={short_repr(class_weights)} must be finite and >= 0")
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
    if not (w0 >= 0 and math.isfinite(w0)):
        raise ValueError(f"w0={w0!r} must be a finite number >= 0")
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma={sigma!r} must be a finite number > 0")
    step = (1.0,) * a.ndim if sampling is None else tuple(np.broadcast_to(np.asarray(sampling, float), (a.ndim,)))
    if not all(s > 0 and math.isfinite(s) for s in step):
        raise ValueError(f"sampling={short_repr(sampling)} must be positive finite spacings, one per axis")
    weights = class_weight_map(a, class_weights)
    if w0 == 0 or a.max() == 0:
        return weights
    ids, dense = np.unique(a, return_inverse=True)  # dense ids 1..K (0 stays background)
    dense = dense.reshape(a.shape) + (0 if ids[0] == 0 else 1)
    reach = sigma * math.sqrt(2 * math.log(w0 / NEGLIGIBLE)) if w0 > NEGLIGIBLE else 0.0
    margin = [math.ceil(reach / s) + 1 for s in step]
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
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    return (weights + np.where(a == 0, border, 0.0)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# targets on the output grid, patches


def crop_target(target: Array, config: UNetConfig, input_shape: Sequence[int]) -> Array:
    """`target` (a label image, weight map, or any array whose last `spatial_dims` axes are spatial)
    centre-cropped to the output of `input_shape`: for a target of the input's size, the pixels the
    network predicts (the output lies `shapes.halo` pixels inside the input on every side). A
    target of any other size is cropped around its centre; it must cover the output."""
    out = shapes.output_shape(config, tuple(input_shape))
    shapes.halo(config)  # refuses networks whose output pixels do not map one to one to input pixels
    dims = config.spatial_dims
    spatial = tuple(target.shape[-dims:]) if target.ndim >= dims else ()
    if len(spatial) != dims or any(s < o or (s - o) % 2 for s, o in zip(spatial, out, strict=True)):
        raise shapes.InputShapeError(
            f"target of shape {tuple(target.shape)} cannot be centre-cropped to the output {out} of input "
            f"{tuple(input_shape)}: its last {dims} axes must be at least the output and differ from it by an "
            f"even number (the input's own size {tuple(input_shape)} always works)"
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


class PatchSampler:
    """Random training patches from whole images, the way the paper trains a valid-padding U-Net.

    Each sample picks an image and an output tile uniformly inside it, and returns
    ``(input, target, weights)`` as torch tensors: the input ``(C, *patch_size)`` is the output
    tile plus `shapes.halo` on every side, context beyond the image mirrored (as in
    `predict_tiled`); `target` (int64) and `weights` (float32, ones without a weight map) are
    ``(*output)`` (`target_size="output"`, for the main head) or ``(*patch_size)``
    (`target_size="input"`, the mirrored labels of the whole input, for
    `deep_supervision_loss` with valid padding, whose auxiliary heads see beyond the output).

    `patch_size` must be a valid input size (`shapes.nearest_valid_input_size` finds one;
    `plan_training` picks the largest that fits a memory budget). `augment(image, target,
    weights, rng)` runs on the input-sized patch before cropping, e.g. `elastic_deform`.
    Iterate for endless samples, or call `batch(n)` for stacked ``(n, ...)`` tensors.
    """

    def __init__(
        self,
        config: UNetConfig,
        images: Any,
        targets: Any,
        weights: Any = None,
        *,
        patch_size: int | Sequence[int],
        target_size: Literal["output", "input"] = "output",
        augment: Augment | None = None,
        seed: int | None = None,
    ) -> None:
        dims = config.spatial_dims
        single = not isinstance(targets, (list, tuple))
        images = [images] if single else list(images)
        targets = [targets] if single else list(targets)
        weights = [None] * len(targets) if weights is None else [weights] if single else list(weights)
        if not (len(images) == len(targets) == len(weights)) or not targets:
            raise ValueError(
                f"got {len(images)} images, {len(targets)} targets and {len(weights)} weight maps; "
                "give one target (and optionally one weight map) per image"
            )
        self.images: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        self.weights: list[np.ndarray | None] = []
        for i, (img, tgt, w) in enumerate(zip(images, targets, weights, strict=True)):
            img = np.asarray(img.cpu() if isinstance(img, torch.Tensor) else img, dtype=np.float32)
            img = img[None] if img.ndim == dims else img
            tgt = np.asarray(tgt.cpu() if isinstance(tgt, torch.Tensor) else tgt)
            tgt = _label_image(tgt.astype(np.uint8) if tgt.dtype == bool else tgt, f"targets[{i}]")
            if img.ndim != dims + 1 or img.shape[0] != config.in_channels or img.shape[1:] != tgt.shape:
                raise ValueError(
                    f"images[{i}] of shape {img.shape} does not fit targets[{i}] of shape {tgt.shape}: need "
                    f"(in_channels={config.in_channels}, *spatial) with the target's spatial shape, {dims} axes"
                )
            if w is not None:
                w = np.asarray(w.cpu() if isinstance(w, torch.Tensor) else w, dtype=np.float32)
                if w.shape != tgt.shape:
                    raise ValueError(f"weights[{i}] of shape {w.shape} differs from targets[{i}] {tgt.shape}")
            self.images.append(img)
            self.targets.append(tgt)
            self.weights.append(w)
        size = (patch_size,) * dims if isinstance(patch_size, int) else tuple(patch_size)
        self.output_size = shapes.output_shape(config, size)  # raises InputShapeError with the nearest valid sizes
        if target_size not in ("output", "input"):
            raise ValueError(f"target_size={target_size!r} must be 'output' or 'input'")
        self.config, self.patch_size, self.target_size = config, size, target_size
        self.halo = shapes.halo(config)
        self.augment = augment
        self.rng = np.random.default_rng(seed)

    def sample(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One ``(input, target, weights)`` patch."""
        k = int(self.rng.integers(len(self.images)))
        img, tgt, w = self.images[k], self.targets[k], self.weights[k]
        index = []
        for size, out, halo, patch in zip(tgt.shape, self.output_size, self.halo, self.patch_size, strict=True):
            # output tile anywhere inside the image (centred when the image is smaller than the tile)
            start = int(self.rng.integers(0, size - out + 1)) if size >= out else -((out - size) // 2)
            index.append(_reflect(start - halo, patch, size))
        grid = np.ix_(*index)
        x, y = img[(slice(None), *grid)], tgt[grid]
        wx = w[grid] if w is not None else np.ones(y.shape, np.float32)
        if self.augment is not None:
            x, y, wx = self.augment(x, y, wx, self.rng)
        if self.target_size == "output":
            y, wx = crop_target(y, self.config, self.patch_size), crop_target(wx, self.config, self.patch_size)
        as_t = torch.from_numpy
        return as_t(np.ascontiguousarray(x, np.float32)), as_t(y.astype(np.int64)), as_t(np.ascontiguousarray(wx))

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`n` patches stacked: ``(n, C, *patch_size)``, ``(n, *target)``, ``(n, *target)``."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r} must be a positive int")
        xs, ys, ws = zip(*(self.sample() for _ in range(n)), strict=True)
        return torch.stack(xs), torch.stack(ys), torch.stack(ws)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        while True:
            yield self.sample()


def elastic_deform(
    image: np.ndarray,
    target: np.ndarray,
    weights: np.ndarray,
    rng: np.random.Generator,
    *,
    sigma: float = 10.0,
    points: int = 3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The paper's augmentation: random displacement vectors on a coarse `points` x `points` grid,
    drawn from a Gaussian with `sigma` pixels standard deviation, interpolated to every pixel with
    cubic B-splines (bicubic); the image is resampled with cubic, the label image with nearest
    (order 0) and the weight map with linear interpolation, all with the same displacement and
    mirrored borders. `image` is (C, *spatial), `target` and `weights` (*spatial)."""
    spatial = target.shape
    coarse = rng.normal(0.0, sigma, size=(len(spatial), *(points,) * len(spatial)))
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


def _check_pair(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> None:
    if logits.dim() < 3 or tuple(target.shape) != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"logits of shape {tuple(logits.shape)} and target of shape {tuple(target.shape)} do not match: "
            "need logits (N, classes, *spatial) and target (N, *spatial); crop the target with crop_target"
        )
    if weight is not None and weight.shape != target.shape:
        raise ValueError(f"weight of shape {tuple(weight.shape)} differs from target of shape {tuple(target.shape)}")


def weighted_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """The paper's energy: pixel-wise softmax cross-entropy, each pixel weighted by `weight` (e.g.
    `border_weight_map`), averaged over pixels. logits (N, classes, *S), target (N, *S) class ids."""
    _check_pair(logits, target, weight)
    ce = F.cross_entropy(logits, target.long(), reduction="none")  # (N, *S)
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
    `include_background`). `weight` (N, *S), if given, weighs each pixel's contribution."""
    _check_pair(logits, target, weight)
    classes = logits.shape[1]
    probs = logits.softmax(1)
    onehot = F.one_hot(target.long(), classes).movedim(-1, 1).to(probs.dtype)
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


def head_weights(config: UNetConfig) -> list[float]:
    """The loss weight of each head in `forward`'s order (main, then auxiliary levels ascending):
    halved per level below full resolution and normalised to sum to 1, as nnU-Net weighs them."""
    raw = [0.5**level for level in (0, *sorted(config.deep_supervision))]
    return [w / sum(raw) for w in raw]


def deep_supervision_targets(target: Array, config: UNetConfig, input_shape: Sequence[int]) -> list[Array]:
    """`target` brought to the grid of every head of the model, in `forward`'s order.

    `target` (*, *S) is centred on the input of spatial shape `input_shape` (its own size, or any
    size covering every head: with valid padding the auxiliary heads see beyond the main output,
    so pass the input-sized target, e.g. `PatchSampler(target_size="input")`). A head at decoder
    level l has the shape `shapes.aux_shapes` gives; each of its pixels stands for a block of
    ``prod(strides[:l])`` pixels at full resolution, centred on the input like every map of the
    network: the target is centre-cropped to those blocks and down-sampled by nearest neighbour
    (the middle pixel of each block). The main head gets `crop_target`."""
    dims = config.spatial_dims
    out = [crop_target(target, config, input_shape)]
    spatial = tuple(target.shape[-dims:])
    for level, shape in zip(sorted(config.deep_supervision), shapes.aux_shapes(config, input_shape), strict=True):
        step = [math.prod(s[a] for s in config.layout.strides[:level]) for a in range(dims)]
        span = [n * s for n, s in zip(shape, step, strict=True)]
        if any(t < p or (t - p) % 2 for t, p in zip(spatial, span, strict=True)):
            raise shapes.InputShapeError(
                f"target of spatial shape {spatial} does not cover the auxiliary head of level {level} "
                f"({'x'.join(map(str, shape))} pixels of {'x'.join(map(str, step))} each = {tuple(span)} at full "
                f"resolution); pass the target at the input size {tuple(input_shape)}"
            )
        index = (
            ...,
            *(slice((t - p) // 2 + s // 2, (t - p) // 2 + p, s) for t, p, s in zip(spatial, span, step, strict=True)),
        )
        out.append(target[index])
    return out


Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def deep_supervision_loss(
    outputs: torch.Tensor | Sequence[torch.Tensor],
    target: torch.Tensor,
    config: UNetConfig,
    input_shape: Sequence[int],
    *,
    weight: torch.Tensor | None = None,
    loss: Loss = weighted_cross_entropy,
    level_weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """The loss of every head of a model in training mode, weighted by `head_weights` (or
    `level_weights`): ``sum_h level_weight[h] * loss(outputs[h], target_h, weight_h)``, the target
    and `weight` (N, *S), centred on the input, brought to each head with `deep_supervision_targets`.
    A single tensor (a model without deep supervision, or in eval mode) gets the main head's loss."""
    outs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
    heads = deep_supervision_targets(target, config, input_shape)
    w_heads = deep_supervision_targets(weight, config, input_shape) if weight is not None else [None] * len(heads)
    factors = list(level_weights) if level_weights is not None else head_weights(config)
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
