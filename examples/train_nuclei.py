"""Train a U-Net on real nuclei the way Ronneberger et al. 2015 do, with and without the border
weight map, and measure the paper's point: touching nuclei come out separated.

    pip install -e ".[plots]" torch==2.13.0 && python examples/train_nuclei.py

Data: one 512x512 fluorescence image of the 2018 Data Science Bowl with its instance labels
(examples/data/, see its README for origin and licence). The network trains on random valid
patches (mirrored context, the paper's elastic deformation) of the left three quarters, its
target the nuclei with a background gap opened between touching ones (`separate_touching`), then
`predict_tiled` predicts the held-out right quarter. Two runs with the same seed and steps: the
pixel-weighted cross-entropy with `border_weight_map` (w0=10, sigma=5, balanced class weights),
and the plain cross-entropy. Reported: foreground pixel IoU on the held-out quarter, and of the
ground-truth pairs of touching nuclei, the fraction that come out as separate connected
components: in the held-out quarter (only 3 pairs) and in the whole image (24 pairs, 21 of them
in the training region, so that column measures how well each loss fits the borders).
`--plot panel.png` draws image, truth, weight map and both predictions (matplotlib).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from unetgen import build_unet, predict_tiled, shapes
from unetgen.training import (
    PatchSampler,
    border_weight_map,
    elastic_deform,
    separate_touching,
    weighted_cross_entropy,
)

DATA = Path(__file__).parent / "data" / "nuclei_dsb2018.npz"
CONFIG = {
    "depth": 3,  # the paper's network, one level shallower and 8x narrower
    "base_channels": 8,
    "padding": "valid",
    "norm": "none",
    "dropout": {"rate": 0.0},
}


def touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of ids whose pixels touch (8-neighbourhood)."""
    pairs = set()
    h, w = labels.shape
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = labels[: h - dy, max(0, -dx) : w - max(0, dx)]
        b = labels[dy:, max(0, dx) : w - max(0, -dx)]
        hit = (a > 0) & (b > 0) & (a != b)
        pairs |= {(min(p, q), max(p, q)) for p, q in zip(a[hit].tolist(), b[hit].tolist(), strict=True)}
    return pairs


def separated_fraction(labels: np.ndarray, foreground: np.ndarray) -> tuple[float, int]:
    """Of the touching ground-truth pairs, the fraction whose nuclei fall into different predicted
    connected components (8-connectivity; a nucleus belongs to the component covering most of it,
    and a nucleus mostly predicted as background separates from nothing)."""
    components = ndimage.label(foreground, structure=np.ones((3, 3)))[0]
    owner = {}
    for k in np.unique(labels[labels > 0]):
        hits = components[labels == k]
        ids, counts = np.unique(hits[hits > 0], return_counts=True)
        owner[k] = ids[counts.argmax()] if len(ids) and counts.max() * 2 >= hits.size else None
    pairs = touching_pairs(labels)
    good = sum(owner[a] is not None and owner[b] is not None and owner[a] != owner[b] for a, b in pairs)
    return good / max(1, len(pairs)), len(pairs)


def train(image, labels, weights, steps: int, patch: int, batch: int, seed: int) -> torch.nn.Module:
    model = build_unet(CONFIG, seed=seed).train()
    sampler = PatchSampler(model.config, image, labels > 0, weights, patch_size=patch, seed=seed,
                           augment=elastic_deform)  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    bar = tqdm(range(steps), desc="weight map" if weights is not None else "plain", unit="step")
    for _ in bar:
        x, y, w = sampler.batch(batch)
        loss = weighted_cross_entropy(model(x), y, w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--patch", type=int, default=188, help="input patch size (rounded to a valid size)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None, help="write a PNG panel here (needs matplotlib)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's; use 1 on a busy machine)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    data = np.load(DATA)
    raw, labels = data["image"].astype(np.float32), data["labels"].astype(np.int64)
    image = (raw - raw.mean()) / raw.std()
    split = labels.shape[1] * 3 // 4
    train_image, train_labels = image[:, :split], labels[:, :split]
    test_labels = labels[:, split:]
    # the paper's target: touching nuclei split by a background gap, which the weight map stresses
    train_separated = separate_touching(train_labels)
    weights = border_weight_map(train_separated, w0=10.0, sigma=5.0)
    model = build_unet(CONFIG)
    patch = shapes.nearest_valid_input_size(model.config, args.patch)
    out = shapes.output_shape(model.config, (patch, patch))[0]
    params = sum(p.numel() for p in model.parameters())
    print(f"config {CONFIG}: {params:,} parameters, patch {patch} -> {out}, batch {args.batch}, {args.steps} steps")
    results = {}
    for name, w in (("with weight map", weights), ("without", None)):
        start, cpu = time.perf_counter(), time.process_time()
        net = train(train_image, train_separated, w, args.steps, patch, args.batch, args.seed)
        logits = predict_tiled(net, torch.from_numpy(image)[None], tile_size=252, progress=False)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        whole = (logits.argmax(0) == 1).numpy()
        fg, truth = whole[:, split:], test_labels > 0
        iou = (fg & truth).sum() / (fg | truth).sum()
        sep, pairs = separated_fraction(test_labels, fg)
        sep_all, pairs_all = separated_fraction(labels, whole)
        results[name] = (iou, sep, pairs, sep_all, pairs_all, seconds, cpu, fg)
    print("\n| loss | pixel IoU (held out) | touching pairs separated (held out) | (whole image) | time | CPU time |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (iou, sep, pairs, sep_all, pairs_all, seconds, cpu, _) in results.items():
        held, whole = (
            f"{sep:.2f} ({round(sep * pairs)}/{pairs})",
            f"{sep_all:.2f} ({round(sep_all * pairs_all)}/{pairs_all})",
        )
        print(f"| {name} | {iou:.3f} | {held} | {whole} | {seconds:.0f} s | {cpu:.0f} s |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        shown = [
            ("image (held-out quarter)", raw[:, split:], "gray"),
            ("truth", test_labels, "tab20"),
            ("weight map (of the truth)", border_weight_map(separate_touching(test_labels)), "magma"),
            ("with weight map", ndimage.label(results["with weight map"][-1], np.ones((3, 3)))[0], "tab20"),
            ("without", ndimage.label(results["without"][-1], np.ones((3, 3)))[0], "tab20"),
        ]

        def objects(a: np.ndarray) -> np.ndarray:  # background transparent, 20 colours for objects
            return np.ma.masked_equal(np.where(a > 0, a % 20 + 1, 0), 0)

        shown = [(t, objects(a) if c == "tab20" else a, c) for t, a, c in shown]
        fig, axes = plt.subplots(1, len(shown), figsize=(2.2 * len(shown), 6.2))
        for ax, (title, img, cmap) in zip(axes, shown, strict=True):
            ax.imshow(img, cmap=cmap, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=80)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
