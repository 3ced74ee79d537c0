"""Validation metrics: pixel IoU and Dice per class, and for instance masks the object F1 at IoU 0.5
(predicted connected components matched to the true objects) and the fraction of touching true
objects that come out apart (the paper's point about separation borders)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["class_scores", "combine_objects", "object_counts", "object_scores", "touching_pairs"]


def class_scores(pred: np.ndarray, truth: np.ndarray, classes: int) -> dict[str, float]:
    """IoU and Dice of every class c >= 1 (``iou_c``, ``dice_c``) and their means over the foreground
    classes (``iou``, ``dice``); a class absent from both counts as 1."""
    out: dict[str, float] = {}
    for c in range(1, max(classes, 2)):
        p, t = pred == c, truth == c
        inter, union, total = int((p & t).sum()), int((p | t).sum()), int(p.sum() + t.sum())
        out[f"iou_{c}"] = inter / union if union else 1.0
        out[f"dice_{c}"] = 2 * inter / total if total else 1.0
    fg = range(1, max(classes, 2))
    out["iou"] = float(np.mean([out[f"iou_{c}"] for c in fg]))
    out["dice"] = float(np.mean([out[f"dice_{c}"] for c in fg]))
    return out


def _components(foreground: np.ndarray) -> np.ndarray:
    return ndimage.label(foreground, structure=np.ones((3,) * foreground.ndim, bool))[0]


def touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of ids whose pixels touch (any of the 3^d - 1 neighbours)."""
    pairs: set[tuple[int, int]] = set()
    dims = labels.ndim
    for offset in np.ndindex(*(3,) * dims):
        shift = [o - 1 for o in offset]
        if [s for s in shift if s != 0][:1] != [1]:  # each neighbour direction once: first non-zero is +1
            continue
        a = labels[tuple(slice(0, n - s) if s > 0 else slice(-s, n) for s, n in zip(shift, labels.shape, strict=True))]
        b = labels[tuple(slice(s, n) if s > 0 else slice(0, n + s) for s, n in zip(shift, labels.shape, strict=True))]
        hit = (a > 0) & (b > 0) & (a != b)
        if hit.any():  # each pair once per direction (np.unique of one key per pair), not once per voxel
            p, q = a[hit].astype(np.int64), b[hit].astype(np.int64)
            low, high = np.minimum(p, q), np.maximum(p, q)
            base = int(high.max()) + 1
            if base <= 2**31:  # low * base + high fits an int64
                keys = np.unique(low * base + high)
                pairs |= set(zip((keys // base).tolist(), (keys % base).tolist(), strict=True))
            else:
                pairs |= set(zip(low.tolist(), high.tolist(), strict=True))
    return pairs


def object_counts(foreground: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, int]:
    """Objects of the predicted `foreground` (its connected components, 3^d - 1 neighbours) against
    the true instance `labels`: ``true`` and ``predicted`` objects, ``matched`` (a true object and a
    component match when their IoU exceeds `threshold`; at 0.5 each has at most one match),
    ``pairs`` of touching true objects and of those ``apart``: in different components (an object
    belongs to the component covering at least half of it; an object mostly predicted as background
    separates from nothing)."""
    comps = _components(foreground)
    n_pred = int(comps.max())
    t_ids, t_areas = np.unique(labels[labels > 0], return_counts=True)
    p_areas = np.bincount(comps.ravel(), minlength=n_pred + 1)
    true_area = dict(zip(t_ids.tolist(), t_areas.tolist(), strict=True))
    both = (labels > 0) & (comps > 0)
    pairs, inter = np.unique(np.stack([labels[both], comps[both]]), axis=1, return_counts=True)
    matched = 0
    owner: dict[int, int] = {}
    for (t, p), n in zip(pairs.T.tolist(), inter.tolist(), strict=True):
        if n / (true_area[t] + p_areas[p] - n) > threshold:
            matched += 1
        if 2 * n >= true_area[t]:
            owner[t] = p
    touching = touching_pairs(labels)
    apart = sum(a in owner and b in owner and owner[a] != owner[b] for a, b in touching)
    return {"true": len(t_ids), "predicted": n_pred, "matched": matched, "pairs": len(touching), "apart": apart}


def combine_objects(counts: list[dict[str, int]]) -> dict[str, float]:
    """The object metrics of several images' `object_counts` together: ``object_f1`` = 2 matched /
    (true + predicted) (1 when there are no objects at all), ``separated`` = apart / pairs (1
    without touching pairs) and ``pairs``."""
    total = {k: sum(c[k] for c in counts) for k in ("true", "predicted", "matched", "pairs", "apart")}
    objects = total["true"] + total["predicted"]
    return {
        "object_f1": 2 * total["matched"] / objects if objects else 1.0,
        "separated": total["apart"] / total["pairs"] if total["pairs"] else 1.0,
        "pairs": float(total["pairs"]),
    }


def object_scores(foreground: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """`combine_objects` of one image's `object_counts`."""
    return combine_objects([object_counts(foreground, labels, threshold)])
