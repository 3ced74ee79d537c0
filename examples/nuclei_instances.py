"""Instance labels on the shipped nuclei (examples/data): objects found vs the truth (125 nuclei).

    python examples/nuclei_instances.py --threads 1            # both parts, ~2-5 min on one core
    python examples/nuclei_instances.py --steps 0              # the labelling of the truth only

1. The labelling itself, on the ground truth: the truth's foreground, with and without the
   paper's separation gaps between touching nuclei (`separate_touching`), labelled by the path
   `output_type="instances"` uses (`label_instances` in memory, `label_out_of_core` block by
   block from a zarr array), no network involved.
2. A tiny network trained briefly the paper's way (examples/train_nuclei.py's `train`: the
   separated target, the border weight map, elastic deformation) on the left three quarters,
   then `predict_tiled(..., output_type="instances")` over the whole image, in memory and out of
   core into a zarr array (the two must be equal).

Reported: objects found, truth objects matched one to one (IoU > 0.5, which makes a match
unique), for the whole image and for the held-out right quarter (objects meeting it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_nuclei import CONFIG, DATA, train

from unetgen import build_unet, predict_tiled, shapes
from unetgen.predict.instances import label_instances, label_out_of_core
from unetgen.training import border_weight_map, separate_touching


def matched(truth: np.ndarray, found: np.ndarray) -> int:
    """Truth objects with a found object of IoU > 0.5."""
    both = (truth > 0) & (found > 0)
    pairs, inter = np.unique(np.stack([truth[both], found[both]]), axis=1, return_counts=True)
    t_size = np.bincount(truth.ravel())
    f_size = np.bincount(found.ravel())
    iou = inter / (t_size[pairs[0]] + f_size[pairs[1]] - inter)
    return int((iou > 0.5).sum())


def count(labels: np.ndarray, region: tuple[slice, ...] = (slice(None),)) -> int:
    ids = np.unique(labels[region])
    return int((ids > 0).sum())


def blockwise(classes: np.ndarray, block: int) -> np.ndarray:
    """`label_out_of_core` from a zarr array of `classes` into a zarr array, in blocks of `block`."""
    import zarr

    with tempfile.TemporaryDirectory() as tmp:
        source = zarr.create_array(f"{tmp}/c.zarr", shape=classes.shape, chunks=(block, block), dtype="uint8")
        source[...] = classes
        out = zarr.create_array(f"{tmp}/o.zarr", shape=classes.shape, chunks=(block, block), dtype="uint32")
        bounds = [(*range(0, s, block), s) for s in classes.shape]

        def regions():
            for i in range(len(bounds[0]) - 1):
                for j in range(len(bounds[1]) - 1):
                    yield slice(bounds[0][i], bounds[0][i + 1]), slice(bounds[1][j], bounds[1][j + 1])

        label_out_of_core(source, out, regions, bounds, image=None)
        return out[...]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600, help="training steps (0: the truth only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = np.load(DATA)
    raw, truth = data["image"].astype(np.float32), data["labels"].astype(np.int64)
    split = truth.shape[1] * 3 // 4
    held = (slice(None), slice(split, None))
    n_truth, n_held = count(truth), count(truth, held)
    print(f"truth: {n_truth} nuclei in the image, {n_held} meeting the held-out right quarter\n")
    print("| foreground | labelled | objects (whole) | matched IoU>0.5 | objects (held out) | matched (held out) |")
    print("|---|---|---:|---:|---:|---:|")
    for name, fg in (("truth", truth > 0), ("truth, separated (paper's target)", separate_touching(truth) > 0)):
        found = label_instances(fg.astype(np.uint8))
        assert np.array_equal(found, blockwise(fg.astype(np.uint8), 64))  # 8 x 8 blocks: the same ids
        m_held = matched(truth[held], found[held])
        print(f"| {name} | in memory = 64^2 blocks | {count(found)} | {matched(truth, found)} | "
              f"{count(found, held)} | {m_held} |")  # fmt: skip
    if args.steps <= 0:
        return
    image = (raw - raw.mean()) / raw.std()
    separated = separate_touching(truth[:, :split])
    weights = border_weight_map(separated, w0=10.0, sigma=5.0)
    patch = shapes.nearest_valid_input_size(build_unet(CONFIG).config, 188)
    start = time.perf_counter()
    model = train(image[:, :split], separated, weights, args.steps, patch, 2, args.seed).eval()
    trained = time.perf_counter() - start
    x = torch.from_numpy(image)[None]
    import zarr

    from unetgen.arrays import create_output

    for min_size in (0, 20):
        found = predict_tiled(model, x, output_type="instances", tile_size=252, min_size=min_size, progress=False)
        found = found.numpy()
        with tempfile.TemporaryDirectory() as tmp:
            out = create_output(f"{tmp}/n.zarr", model, image[None], output_type="instances", tile_size=252,
                                block_shape=64)  # fmt: skip
            predict_tiled(model, image[None], out=out, output_type="instances", tile_size=252, block_shape=64,
                          min_size=min_size, progress=False)  # fmt: skip
            blocks = int(np.prod(out.cdata_shape))
            assert np.array_equal(zarr.open_array(f"{tmp}/n.zarr", mode="r")[...], found)
        whole, part = (
            f"{count(found)} | {matched(truth, found)}",
            f"{count(found, held)} | {matched(truth[held], found[held])}",
        )
        print(f"| network ({args.steps} steps, {trained:.0f} s), min_size {min_size} | in memory = {blocks} blocks | "
              f"{whole} | {part} |")  # fmt: skip


if __name__ == "__main__":
    main()
